"""`structgen batch` on the embedded model, killed with SIGKILL half way, then resumed.

    python benchmarks/batch_kill_resume.py --rows 200

Writes 200 extraction prompts to a JSONL file, starts `structgen batch` on them, sends kill -9
once about half the rows are written, reruns the same command, and checks that the output has
exactly one line per input id. Writes benchmarks/results/batch_kill_resume.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from batch_throughput import Person, prompts  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "rows.jsonl"), Path(folder, "results.jsonl")
        schema = Path(folder, "person.json")
        schema.write_text(json.dumps(Person.model_json_schema()))
        source.write_text("".join(json.dumps({"id": f"row-{i}", "text": t}) + "\n"
                                  for i, t in enumerate(prompts(args.rows, seed=1))))
        command = [sys.executable, "-m", "structgen.cli", "batch", "--schema", str(schema),
                   "--input", str(source), "--output", str(target), "--id-field", "id",
                   "--batch-size", str(args.batch_size), "--max-tokens", "96"]
        started = time.perf_counter()
        first = subprocess.Popen(command)
        while not target.exists() or len(target.read_text().splitlines()) < args.rows // 2:
            if first.poll() is not None:
                raise SystemExit("the first run ended before it could be killed")
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        at_kill = len(target.read_text().splitlines())
        second = subprocess.run(command)
        seconds = time.perf_counter() - started
        records = [json.loads(line) for line in target.read_text().splitlines()]
    ids = [r["id"] for r in records]
    lines = [
        "# `structgen batch`: kill -9 half way, then resume",
        "",
        "Command: `python benchmarks/batch_kill_resume.py "
        f"--rows {args.rows} --batch-size {args.batch_size}`",
        "",
        "| measure | value |",
        "|---|--:|",
        f"| input rows | {args.rows} |",
        f"| lines written when SIGKILL was sent | {at_kill} |",
        f"| exit status of the rerun | {second.returncode} |",
        f"| output lines after the rerun | {len(records)} |",
        f"| distinct ids | {len(set(ids))} |",
        f"| rows ok | {sum(r['ok'] for r in records)} |",
        f"| total wall time, both runs | {seconds:.0f} s |",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch_kill_resume.md").write_text(text)
    print(text)
    if len(records) != args.rows or len(set(ids)) != args.rows:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
