"""Fault injection for `structgen batch`: real runs killed with SIGKILL at seeded random points,
second runs on the same output while one is running, and input edited between runs.

Whatever happens, the output must never hold two records of one row, every complete line must be
JSON, and once the job has run to the end every input line has exactly one record, written for
the content the line has now. Sized for CI: five runs of the command, about a minute on 2 idle
cores. STRUCTGEN_FAULT_SEED picks
another sequence of faults.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
          "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]}
SEED = int(os.environ.get("STRUCTGEN_FAULT_SEED", "7"))
TIMEOUT = 180  # seconds any one command may take before the test fails instead of hanging


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    from structgen.testing import tiny_random_model

    directory = tmp_path_factory.mktemp("tiny-model")
    tiny_random_model(smollm2_tokenizer, seed=0).hf_model.save_pretrained(directory)
    smollm2_tokenizer.save_pretrained(directory)
    return str(directory)


class Job:
    """One input file, one output file, and the command that runs the job over them."""

    def __init__(self, folder: Path, model_dir: str, rng: random.Random):
        self.source, self.target = folder / "in.jsonl", folder / "out.jsonl"
        (folder / "schema.json").write_text(json.dumps(SCHEMA))
        self.command = [sys.executable, "-m", "structgen.cli", "batch", "--schema",
                        str(folder / "schema.json"), "--input", str(self.source), "--output",
                        str(self.target), "--model", model_dir, "--max-tokens", "30", "--batch-size",
                        "2", "--id-field", "id", "--no-progress"]
        self.rng = rng
        self.lines = [json.dumps({"id": f"r{i}", "text": f"Person {i} is {20 + i}."}).encode()
                      for i in range(12)]
        self.lines[4:4] = [b'{"id": "r2", "text": "a second r2"}', b"not json", b'{"id": "c\xff"}']
        self.new = 0
        self.write()

    def write(self) -> None:
        self.source.write_bytes(b"".join(line + b"\n" for line in self.lines))

    def edit(self) -> str:
        """One random edit of the input, as a user might make between runs."""
        kind = self.rng.choice(["insert", "change", "malformed", "reformat"])
        at = self.rng.randrange(len(self.lines))
        if kind == "insert":
            self.new += 1
            self.lines.insert(at, json.dumps({"id": f"n{self.new}", "text": f"New {self.new}."}).encode())
        elif kind == "malformed":
            self.lines.insert(at, self.rng.choice([b'{"text": "no id"}', b"\xfe\xfe", b'{"id": [1]}']))
        else:
            try:
                row = json.loads(self.lines[at])
            except ValueError:
                return "none"
            if kind == "change" and isinstance(row, dict):
                row["text"] = f"{row.get('text')} (edited)"
            self.lines[at] = json.dumps(row, indent=1).replace("\n", "").encode()
        self.write()
        return kind

    def start(self, *more: str) -> subprocess.Popen:
        return subprocess.Popen(self.command + list(more), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def run(self, *more: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command + list(more), capture_output=True, timeout=TIMEOUT)

    def records(self, *, finished: bool) -> list[dict]:
        """The output's records; a killed run may leave one cut last line, a finished one none.
        Fails on any other invalid line and on two records of one row."""
        if not self.target.exists():
            return []
        *complete, cut = self.target.read_bytes().split(b"\n")
        assert not (finished and cut), f"a finished run left a cut line: {cut!r}"
        records = [json.loads(line) for line in complete]
        keys = [key(record) for record in records]
        assert len(keys) == len(set(keys)), f"two records of one row: {sorted(keys)}"
        return records

    def expected(self) -> dict[tuple, str]:
        """Every input line's key (its id, or its line without a usable one) and fingerprint."""
        wanted, seen = {}, set()
        for number, raw in enumerate(self.lines, 1):
            try:
                row = json.loads(raw.decode())
            except ValueError:
                wanted[("line", number)] = hashlib.sha256(raw).hexdigest()
                continue
            canonical = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            row_id = row.get("id")
            usable = isinstance(row_id, str) and row_id not in seen
            seen.add(row_id if usable else None)
            wanted[("id", row_id) if usable else ("line", number)] = hashlib.sha256(
                canonical.encode()).hexdigest()
        return wanted


def key(record: dict) -> tuple:
    return ("id", record["id"]) if record["id"] is not None else ("line", record["line"])


def wait_for(condition, process: subprocess.Popen, what: str) -> bool:
    """Poll until ``condition()``; False if the process ended first."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return True


def holder_pid(job: Job) -> int | None:
    try:
        return json.loads(job.target.with_name("out.jsonl.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_kill_9_concurrent_runs_and_edits_never_duplicate_or_drop_a_row(tiny_model_dir, tmp_path):
    rng = random.Random(SEED)
    job = Job(tmp_path, tiny_model_dir, rng)
    log = []
    for _ in range(3):
        first = job.start(*rng.choice([(), (), ("--retry-failed",), ("--rerun-changed",)]))
        try:
            if wait_for(lambda: holder_pid(job) == first.pid, first, "the lock"):
                second = job.run()
                # first releases the lock only by ending: while it is still running after second
                # ended, it held the lock through second's whole attempt, which must be refused
                # with nothing written (a first run with no rows left may end before second
                # tries; second then takes the lock as any run would)
                if first.poll() is None:
                    assert second.returncode == 2, second.stderr.decode()
                    assert f"is locked by another structgen batch run (pid {first.pid} on host " \
                        in second.stderr.decode()
            before = len(job.records(finished=False))
            target = rng.randint(0, 6)
            wait_for(lambda: len(job.target.read_bytes().splitlines()) >= before + target, first,
                     "records")
            time.sleep(rng.uniform(0, 0.3))
            first.send_signal(signal.SIGKILL)  # (not to a run that ended and was reaped)
        finally:
            first.kill()
            first.communicate(timeout=TIMEOUT)
        log.append(f"killed after {len(job.records(finished=False)) - before} new records")
        if rng.random() < 0.5:  # a kill in the middle of a write leaves part of a line
            with open(job.target, "ab") as handle:
                handle.write(b'{"id": "r1", "line": 2, "sha256": "0a1b')
        log.append(job.edit())

    racers = [job.start(), job.start()]  # two runs at once: one gets the lock, one exits 2
    try:
        statuses = sorted(racer.wait(timeout=TIMEOUT) for racer in racers)
    finally:
        for racer in racers:
            racer.kill()
            racer.communicate(timeout=TIMEOUT)
    assert statuses == [1, 2], (statuses, log)
    finished = job.run("--retry-failed")  # changed rows became failures; now they run
    assert finished.returncode == 1, finished.stderr.decode()  # the malformed lines still fail

    out = job.records(finished=True)
    wanted = job.expected()
    by_key = {key(record): record for record in out}
    assert sorted(by_key) == sorted(wanted), log  # every input line exactly one record, no other
    assert {k: r["sha256"] for k, r in by_key.items()} == wanted, log  # for what the line holds now
    for k, record in by_key.items():
        assert record["ok"] == (k[0] == "id"), (record, log)  # only rows without a usable id fail
        if record["ok"]:
            assert set(record["result"]) == {"name", "age"}
