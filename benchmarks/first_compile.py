"""The first compile_constraint in a fresh Python process, Llama-3 tokenizer (the path generate takes).

    python benchmarks/first_compile.py --runs 5

Each run is a new interpreter that imports structgen, loads the tokenizer (not timed: a model
load does that), then times ``compile_constraint(schema, tokenizer)`` at its defaults plus the
first ``fill_bitmask``: the tokenizer's byte map, the compile worker's start, schema -> regex, the
byte automaton, the tokenizer arrays and the first mask. ``cold`` starts from an empty cache
folder, ``disk`` from one the previous run filled (a script run twice). The schema is the
extraction ``Person`` of batch_throughput.py. Writes benchmarks/results/first_compile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
import numpy as np
import structgen
from batch_throughput import Person
from maskbench import load_tokenizer
tokenizer = load_tokenizer("llama3")
started = time.perf_counter()
constraint = structgen.compile_constraint(Person, tokenizer)
compiled = time.perf_counter()
constraint.matcher().fill_bitmask(np.zeros((constraint.vocab_size + 31) // 32, dtype=np.int32))
done = time.perf_counter()
print(json.dumps({{"compile_s": compiled - started, "ttfm_s": done - started,
                  "from_cache": constraint.from_cache, "engine": constraint.engine}}))
"""


def run(cache: str) -> dict:
    env = dict(os.environ, STRUCTGEN_CACHE=cache)
    out = subprocess.run([sys.executable, "-c", CHILD.format(here=str(HERE))], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cold, disk = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run(cache))
            disk.append(run(cache))
    lines = ["# First compile_constraint in a fresh process (Llama-3 tokenizer)", "",
             f"`python benchmarks/first_compile.py --runs {args.runs}`: `compile_constraint(Person, "
             "tokenizer)` at its defaults, then the first `fill_bitmask`, each in a new "
             "interpreter (tokenizer already loaded; the time includes its byte map, the compile "
             "worker's start, schema -> regex, the automaton, the tokenizer arrays, the first mask).",
             "", "| cache | runs | compile median ms | + first mask median ms | min | max | from_cache |",
             "|---|--:|--:|--:|--:|--:|---|"]
    for name, records in (("cold (empty cache folder)", cold), ("disk (filled by a run before)", disk)):
        ttfm = [r["ttfm_s"] * 1000 for r in records]
        lines.append(f"| {name} | {len(records)} | "
                     f"{statistics.median(r['compile_s'] * 1000 for r in records):.0f} | "
                     f"{statistics.median(ttfm):.0f} | {min(ttfm):.0f} | {max(ttfm):.0f} | "
                     f"{', '.join(sorted({r['from_cache'] for r in records}))} |")
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "first_compile.md").write_text(report)


if __name__ == "__main__":
    main()
