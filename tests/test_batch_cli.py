"""`structgen batch`: JSONL in and out, malformed rows as records, resume after kill -9, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    assert len(out) == 11 and len({r["id"] for r in out}) == 11
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
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 rows" in out and "3 to run, 1 malformed" in out and "line 4" in out
    assert not target.exists()


@pytest.mark.parametrize(("schema", "message"), [
    ("no_such_module:Model", "cannot import"),
    ("missing.json", "cannot read"),
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
