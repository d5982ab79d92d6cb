"""`structgen batch`: JSONL in and out, malformed rows as records, resume after kill -9, the
output's lock, changed input, retries, exit statuses, Ray."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import structgen
from structgen.batch.io import OutputFile, record_key
from structgen.cli import main

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
          "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    from structgen.testing import tiny_random_model

    directory = tmp_path_factory.mktemp("tiny-model")
    model = tiny_random_model(smollm2_tokenizer, seed=0)
    model.hf_model.save_pretrained(directory)
    smollm2_tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture
def files(tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMA))
    return tmp_path, str(schema)


def write_rows(path: Path, count: int, extra_lines: tuple[str, ...] = ()) -> None:
    lines = [json.dumps({"id": f"r{i}", "text": f"Person number {i} is {20 + i} years old."})
             for i in range(count)]
    path.write_text("\n".join(lines + list(extra_lines)) + "\n")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_cli(model_dir, schema, source, target, *more) -> int:
    return main(["batch", "--schema", schema, "--input", str(source), "--output", str(target),
                 "--model", model_dir, "--max-tokens", "40", "--batch-size", "4", "--no-progress",
                 "--id-field", "id", *more])


def test_every_row_gets_one_record_and_malformed_lines_name_their_line(tiny_model_dir, files):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    write_rows(source, 6, ('{"id": "bad-json", "text": ', '{"id": "no-text"}', '[1, 2]',
                           '{"id": "blank", "text": "   "}', '{"id": "r0", "text": "duplicate"}'))
    assert run_cli(tiny_model_dir, schema, source, target) == 1  # some rows failed
    out = records(target)
    assert len(out) == 11 and len({record_key(r) for r in out}) == 11
    assert [r["id"] for r in out if r["id"] is None] == [None] * 3  # no usable id: keyed by line
    good = [r for r in out if r["ok"]]
    assert sorted(r["id"] for r in good) == [f"r{i}" for i in range(6)]
    assert all(set(r["result"]) >= {"name", "age"} for r in good)
    failures = {r["line"]: r["error"] for r in out if not r["ok"]}
    assert set(failures) == {7, 8, 9, 10, 11}
    assert "line 7" in failures[7]["message"] and "not valid JSON" in failures[7]["message"]
    assert "'text'" in failures[8]["message"] and "not an object" in failures[9]["message"]
    assert "empty" in failures[10]["message"] and "duplicate id 'r0'" in failures[11]["message"]
    assert [r["line"] for r in out] == sorted(r["line"] for r in out)  # input order


def test_a_rerun_skips_what_is_done(tiny_model_dir, files):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    write_rows(source, 5)
    assert run_cli(tiny_model_dir, schema, source, target) == 0
    before = target.read_text()
    assert run_cli(tiny_model_dir, schema, source, target) == 0
    assert target.read_text() == before


def test_resume_after_kill_9(tiny_model_dir, files):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    write_rows(source, 40)
    command = [sys.executable, "-m", "structgen.cli", "batch", "--schema", schema, "--input",
               str(source), "--output", str(target), "--model", tiny_model_dir, "--max-tokens",
               "60", "--batch-size", "2", "--no-progress", "--id-field", "id"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if target.exists() and len(target.read_text().splitlines()) >= 6:
            break
        if process.poll() is not None:
            pytest.fail("the job finished before it could be killed")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(target.read_text().splitlines())
    assert 6 <= written < 40
    with open(target, "a") as handle:  # what a kill in the middle of a write leaves behind
        handle.write('{"id": "r39", "line": 40, "ok": tr')
    assert subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    ids = [r["id"] for r in records(target)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))  # each exactly once


def test_dry_run_checks_and_changes_nothing(tiny_model_dir, files, capsys):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    write_rows(source, 3, ("not json",))
    assert main(["batch", "--schema", schema, "--input", str(source), "--output", str(target),
                 "--dry-run"]) == 1  # a run would end with a failed row
    out = capsys.readouterr().out
    assert "4 rows" in out and "3 to run, 1 malformed" in out and "line 4" in out
    assert not target.exists()


@pytest.mark.parametrize(("schema", "message"), [
    ("no_such_module:Model", "cannot import"),
    ("missing.json", "no such file"),
    ("structgen.types:NotThere", "has no"),
])
def test_a_bad_schema_reference_is_a_clear_error(files, capsys, schema, message):
    folder, _ = files
    write_rows(folder / "in.jsonl", 1)
    code = main(["batch", "--schema", schema, "--input", str(folder / "in.jsonl"), "--output",
                 str(folder / "out.jsonl"), "--dry-run"])
    assert code == 2 and message in capsys.readouterr().err


def test_a_pydantic_model_reference_and_a_prompt_template(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "models_for_job.py").write_text(
        "from pydantic import BaseModel\nclass City(BaseModel):\n    name: str\n    country: str\n")
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"city": "Paris"}) + "\n" + json.dumps({"town": "Lyon"}) + "\n")
    code = main(["batch", "--schema", "models_for_job:City", "--input", str(source), "--output",
                 str(tmp_path / "out.jsonl"), "--model", tiny_model_dir, "--max-tokens", "30",
                 "--prompt-template", "Where is {city}?", "--no-progress"])
    out = records(tmp_path / "out.jsonl")
    assert code == 1 and out[0]["ok"] and set(out[0]["result"]) == {"name", "country"}
    assert not out[1]["ok"] and "'city'" in out[1]["error"]["message"]


def test_the_same_job_on_a_local_ray_cluster(tiny_model_dir, files):
    ray = pytest.importorskip("ray")
    from structgen.batch import BatchJob, run_job

    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    write_rows(source, 10, ("oops",))
    job = BatchJob(schema=schema, id_field="id", model=tiny_model_dir, batch_size=3, max_tokens=40)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_job(job, str(source), str(target), engine="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    out = records(target)
    assert summary.ok == 10 and summary.failed == 1
    assert sorted(r["id"] for r in out if r["ok"]) == sorted(f"r{i}" for i in range(10))
    assert all(set(r["result"]) >= {"name", "age"} for r in out if r["ok"])


def test_vllm_requests_carry_structgens_prompt_and_constraint(smollm2_tokenizer):
    """The GPU path needs vLLM; what can be checked here is that it asks for what structgen does."""
    import structgen
    from structgen.backends.vllm import generate_with_vllm, vllm_requests
    from structgen.decoding.generate import messages_for
    from structgen.prompts import render_chat

    texts, structured = vllm_requests(SCHEMA, ["Alice is 31."], smollm2_tokenizer)
    constraint = structgen.compile_constraint(SCHEMA, smollm2_tokenizer)
    assert structured == {"regex": constraint.regex}
    assert texts == [render_chat(smollm2_tokenizer, messages_for(constraint, "Alice is 31."))]
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(structgen.ModelError, match="pip install vllm"):
            generate_with_vllm(object(), SCHEMA, ["x"])


def fingerprint(data: dict) -> str:
    """docs/batch.md: the sha256 of the row's canonical JSON."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dry_run(schema, source, target, *more) -> int:
    return main(["batch", "--schema", schema, "--input", str(source), "--output", str(target),
                 "--dry-run", "--id-field", "id", *more])


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the job loads a model."""
    def refuse(*args, **kwargs):
        pytest.fail("the job loaded a model")
    monkeypatch.setattr(structgen, "load_model", refuse)


def test_a_second_run_on_a_locked_output_exits_2_naming_the_holder(files, capsys, no_model):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    write_rows(source, 3)
    with OutputFile.open_locked(target):  # another run, as far as the lock can tell
        for command in (run_cli, lambda model, *rest: dry_run(*rest)):
            assert command("unused", schema, source, target) == 2
            err = capsys.readouterr().err
            assert "Traceback" not in err and "is locked by another structgen batch run" in err
            assert f"pid {os.getpid()} on host {socket.gethostname()!r}, started " in err
        assert target.read_bytes() == b""
    assert not (folder / "out.jsonl.lock").exists()  # the holder note goes with the lock


def test_the_lock_survives_a_rewrite(files):
    """Dropping records renames a new file over the output; the lock must come along."""
    folder, _ = files
    target = folder / "out.jsonl"
    target.write_text("".join(json.dumps({"id": f"r{i}", "line": i + 1, "ok": i != 1}) + "\n"
                              for i in range(3)))
    with OutputFile.open_locked(target) as output:
        output.rewrite({1})
        with pytest.raises(structgen.BatchInputError, match="is locked"):
            OutputFile.open_locked(target)
        output.append([{"id": "r1", "line": 2, "ok": True}])
    assert [r["id"] for r in records(target)] == ["r0", "r2", "r1"]
    with OutputFile.open_locked(target) as output:  # free again once closed
        assert len(output.records) == 3


def test_an_explicit_id_like_a_default_one_is_its_own_row(tiny_model_dir, files):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    source.write_text('{"id": "line-2", "text": "Ann is 30."}\n{"text": "no id here"}\n'
                      '{"id": "line-2", "text": "Bo is 40."}\n')
    assert run_cli(tiny_model_dir, schema, source, target) == 1
    out = records(target)
    assert [(r["id"], r["line"], r["ok"]) for r in out] == [("line-2", 1, True), (None, 2, False),
                                                             (None, 3, False)]
    assert "no id field 'id'" in out[1]["error"]["message"]
    assert out[2]["error"]["message"] == "line 3: duplicate id 'line-2': line 1 has it too"
    before = target.read_text()
    assert run_cli(tiny_model_dir, schema, source, target) == 1  # the failures stand, nothing runs
    assert target.read_text() == before


def test_lines_inserted_before_done_ones_never_get_their_results(tiny_model_dir, files, capsys):
    """Default ids are line numbers: after an insertion every later line holds other content."""
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    rows = [{"text": f"Person {i} is {20 + i}."} for i in range(3)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["batch", "--schema", schema, "--input", str(source), "--output", str(target), "--model",
            tiny_model_dir, "--max-tokens", "40", "--no-progress"]
    assert main(base) == 0
    rows.insert(0, {"text": "A new first row."})
    source.write_text("".join(json.dumps(r, indent=None, separators=(", ", ": ")) + "\n" for r in rows))
    assert main(base) == 1
    assert "rows changed since their result was written: 3" in capsys.readouterr().err
    out = {r["id"]: r for r in records(target)}
    assert sorted(out) == ["line-1", "line-2", "line-3", "line-4"]
    assert all("changed since its result was written" in out[f"line-{n}"]["error"]["message"]
               for n in (1, 2, 3))
    assert out["line-4"]["ok"] and out["line-4"]["sha256"] == fingerprint(rows[3])
    assert main(base + ["--retry-failed"]) == 0
    out = records(target)
    assert len(out) == 4 and all(r["ok"] for r in out)
    assert [r["sha256"] for r in sorted(out, key=lambda r: r["line"])] == [fingerprint(r) for r in rows]
    rows[0]["text"] = "Edited again."
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(base + ["--rerun-changed"]) == 0
    out = {r["id"]: r for r in records(target)}
    assert len(out) == 4 and out["line-1"]["ok"] and out["line-1"]["sha256"] == fingerprint(rows[0])


def test_reformatting_a_row_is_not_a_change(tiny_model_dir, files, no_model):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    row = {"id": "r0", "text": "Ann is 30.", "meta": {"b": 1, "a": [1, 2]}}
    target.write_text(json.dumps({"id": "r0", "line": 1, "sha256": fingerprint(row), "ok": True,
                                  "result": {}, "tokens": 3}) + "\n")
    source.write_text('  {"meta": {"a": [1,2], "b": 1},   "text": "Ann is 30.", "id": "r0"}\r\n')
    assert run_cli(tiny_model_dir, schema, source, target) == 0


def test_a_non_utf8_line_is_an_error_record_and_the_other_rows_run(tiny_model_dir, files, capsys):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    source.write_bytes(b'{"id": "a", "text": "Ann is 30."}\n{"id": "b", "text": "caf\xe9"}\n'
                       b'{"id": "c", "text": "Cy is 5."}\n')
    assert dry_run(schema, source, target) == 1
    assert "line 2: not UTF-8: byte 0xe9 at byte 25 of the line" in capsys.readouterr().out
    assert run_cli(tiny_model_dir, schema, source, target) == 1
    out = records(target)
    assert [(r["id"], r["ok"]) for r in out] == [("a", True), (None, False), ("c", True)]
    assert out[1]["error"] == {"type": "BatchInputError",
                               "message": "line 2: not UTF-8: byte 0xe9 at byte 25 of the line"}
    assert out[1]["sha256"] == hashlib.sha256(b'{"id": "b", "text": "caf\xe9"}').hexdigest()


@pytest.mark.parametrize("where", ["a-file/out.jsonl", "a-folder"])
def test_an_unwritable_output_exits_2_before_the_model_loads(files, capsys, no_model, where):
    folder, schema = files
    (folder / "a-file").write_text("")
    (folder / "a-folder").mkdir()
    write_rows(folder / "in.jsonl", 2)
    assert run_cli("unused", schema, folder / "in.jsonl", folder / where) == 2
    err = capsys.readouterr().err
    assert f"structgen: error: cannot write output file {str(folder / where)!r}: " in err
    assert dry_run(schema, folder / "in.jsonl", folder / where) == 2
    assert f"structgen: error: cannot read output file {str(folder / where)!r}: " in capsys.readouterr().err


def test_the_input_file_is_not_an_output(files, capsys, no_model):
    folder, schema = files
    write_rows(folder / "in.jsonl", 2)
    assert run_cli("unused", schema, folder / "in.jsonl", folder / "in.jsonl") == 2
    assert "is the input file" in capsys.readouterr().err


def test_failed_rows_are_kept_counted_and_retried(tiny_model_dir, files, capsys):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    write_rows(source, 3, ('{"id": "bad"}',))
    assert run_cli(tiny_model_dir, schema, source, target, "--max-tokens", "3") == 1  # budget too small
    assert [r["ok"] for r in records(target)] == [False] * 4
    capsys.readouterr()
    assert run_cli(tiny_model_dir, schema, source, target) == 1
    assert "failed in earlier runs and kept: 4 (--retry-failed runs them again)" in capsys.readouterr().err
    assert dry_run(schema, source, target, "--retry-failed") == 1  # the bad row would still fail
    assert "3 to run, 1 malformed" in capsys.readouterr().out
    assert run_cli(tiny_model_dir, schema, source, target, "--retry-failed") == 1
    out = records(target)
    assert len(out) == 4 and [r["id"] for r in out if r["ok"]] == ["r0", "r1", "r2"]
    assert "rows ok: 3, failed: 1, " in capsys.readouterr().err


def test_exit_statuses_follow_the_work_and_idle_jobs_load_no_model(files, capsys, no_model):
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    source.write_text("oops\n[1]\n")
    assert dry_run(schema, source, target) == 1  # every row malformed
    assert run_cli("unused", schema, source, target) == 1  # recorded without loading the model
    assert len(records(target)) == 2
    write_rows(source, 2)
    target.write_text("".join(json.dumps({"id": f"r{i}", "line": i + 1, "sha256": fingerprint(
        {"id": f"r{i}", "text": f"Person number {i} is {20 + i} years old."}), "ok": True,
        "result": {}, "tokens": 1}) + "\n" for i in range(2)))
    assert dry_run(schema, source, target) == 0
    assert "nothing to decode" in capsys.readouterr().out
    assert run_cli("unused", schema, source, target) == 0
    source.write_text("")
    assert run_cli("unused", schema, source, target) == 0


def test_records_of_an_older_structgen_are_reused_and_said_so(tiny_model_dir, files, capsys):
    """Records without a fingerprint cannot be checked: reused by id, counted, --rerun-changed runs them."""
    folder, schema = files
    source, target = folder / "in.jsonl", folder / "out.jsonl"
    write_rows(source, 2, ('{"no": "id"}',))
    old = [{"id": "r0", "line": 1, "ok": True, "result": {"name": "x", "age": 1}, "tokens": 5},
           {"id": "r1", "line": 2, "ok": True, "result": {"name": "y", "age": 2}, "tokens": 5},
           {"id": "r1", "line": 2, "ok": True, "result": {"name": "y", "age": 2}, "tokens": 5},
           {"id": "line-3", "line": 3, "ok": False, "error": {"type": "BatchInputError", "message": "x"}}]
    target.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert run_cli(tiny_model_dir, schema, source, target) == 1
    err = capsys.readouterr().err
    assert "without a fingerprint (older structgen): 2" in err and "removed from the output: 1" in err
    out = records(target)
    assert out[:2] == old[:2] and len(out) == 3  # the old id of the malformed line is gone
    assert (out[2]["id"], out[2]["line"], out[2]["ok"]) == (None, 3, False)
    assert run_cli(tiny_model_dir, schema, source, target, "--rerun-changed") == 1
    assert [(r["id"], "sha256" in r) for r in records(target)] == [(None, True), ("r0", True), ("r1", True)]


@pytest.mark.parametrize(("template", "message"), [
    ("Where is {city.name}?", "does not fit this row"),
    ("Where is {city:d}?", "does not fit this row"),
])
def test_a_template_that_does_not_fit_a_row_is_that_rows_error(tmp_path, no_model, template, message):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    source.write_text('{"city": "Paris"}\n')
    assert main(["batch", "--schema", str(schema), "--input", str(source), "--output", str(target),
                 "--prompt-template", template, "--no-progress"]) == 1
    assert message in records(target)[0]["error"]["message"]


@pytest.mark.parametrize(("template", "message"), [("{", "not a format string"), ("{}", "has no {field}")])
def test_a_broken_template_stops_the_job(files, capsys, template, message):
    folder, schema = files
    write_rows(folder / "in.jsonl", 1)
    assert main(["batch", "--schema", schema, "--input", str(folder / "in.jsonl"), "--output",
                 str(folder / "out.jsonl"), "--prompt-template", template]) == 2
    assert message in capsys.readouterr().err
