"""The first compile_constraint in a fresh Python process, Llama-3 tokenizer (the path generate takes).

    python benchmarks/first_compile.py --runs 5

Each run is a new interpreter that does what ``load_model`` does before ``generate`` compiles
anything: it imports the compiler and starts the compile worker and the loading of the compiled
loops, then loads the tokenizer (from its folder, as a hub model's is; not timed: a model load
does that) and waits for the compiled loops (about 0.5 s here; ``load_model`` of the embedded
model takes about 5 s, and they are loaded before it returns). It then times
``compile_constraint(schema, tokenizer)`` at its defaults plus the first ``fill_bitmask``: the
tokenizer's byte map, schema -> regex, the byte automaton, the tokenizer arrays, the token
distances and the first mask. Four cases: ``cold`` starts from an empty cache folder, ``disk``
from one the previous run filled (a script run twice: the tokenizer's map, and the schema's
regex and automaton where making them took ``STORE_AFTER_SECONDS`` or more), ``new schema``
from a folder holding only the tokenizer's map (a schema never seen, a model used before),
``cold, no load_model`` a cold run
that calls ``compile_constraint`` without starting the worker first (a user with their own
tokenizer), so it also waits for the worker's start, has the worker build the automaton
(outlines-core) and walks in numpy. The imports are timed
apart. The schema is the extraction ``Person`` of batch_throughput.py. Writes
benchmarks/results/first_compile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
began = time.perf_counter()
import numpy as np
import structgen
from structgen.constraint.compiler import compile_constraint, default_compiler
from structgen.constraint.compiled_loops import COMPILED_LOOPS
imported = time.perf_counter()
if {start_worker!r}:
    default_compiler().start()  # what load_model does while the model loads
    COMPILED_LOOPS.start()
from batch_throughput import Person
from maskbench import load_tokenizer
tokenizer = load_tokenizer("llama3")
if {start_worker!r}:
    COMPILED_LOOPS.wait()  # loaded before the model is (0.5 s here, the embedded model 5 s)
started = time.perf_counter()
constraint = compile_constraint(Person, tokenizer)
compiled = time.perf_counter()
constraint.matcher().fill_bitmask(np.zeros((constraint.vocab_size + 31) // 32, dtype=np.int32))
done = time.perf_counter()
print(json.dumps({{"import_s": imported - began, "compile_s": compiled - started,
                  "ttfm_s": done - started, "from_cache": constraint.from_cache,
                  "engine": constraint.engine, "compiled": COMPILED_LOOPS.walks is not None}}))
"""


def run(cache: str, start_worker: bool = True) -> dict:
    env = dict(os.environ, STRUCTGEN_CACHE=cache)
    child = CHILD.format(here=str(HERE), start_worker=start_worker)
    out = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cases = {"cold (empty cache folder)": [], "disk (filled by a run before)": [],
             "new schema (only the tokenizer's map on disk)": [],
             "cold, no load_model (the worker starts in the timed call and builds; numpy walks)": []}
    cold, disk, new_schema, bare = cases.values()
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(run(cache))
            disk.append(run(cache))
            # (absent where nothing took STORE_AFTER_SECONDS to make: then as the disk case)
            shutil.rmtree(Path(cache) / "constraints", ignore_errors=True)
            new_schema.append(run(cache))
        with tempfile.TemporaryDirectory() as cache:
            bare.append(run(cache, start_worker=False))
    lines = ["# First compile_constraint in a fresh process (Llama-3 tokenizer)", "",
             f"`python benchmarks/first_compile.py --runs {args.runs}`: in a new interpreter, "
             "import the compiler and start the compile worker and the compiled loops (as "
             "`load_model` does), load the tokenizer from its folder and wait for the compiled "
             "loops (not timed), then time `compile_constraint(Person, "
             "tokenizer)` at its defaults and the first `fill_bitmask`: the tokenizer's byte "
             "map, schema -> regex, the automaton, the tokenizer arrays, the first mask (the "
             "token distances wait for a budget that needs them).", "",
             "| case | runs | compile median ms | + first mask median ms | min | max | "
             "imports median ms | from_cache |", "|---|--:|--:|--:|--:|--:|--:|---|"]
    for name, records in cases.items():
        ttfm = [r["ttfm_s"] * 1000 for r in records]
        lines.append(f"| {name} | {len(records)} | "
                     f"{statistics.median(r['compile_s'] * 1000 for r in records):.0f} | "
                     f"{statistics.median(ttfm):.0f} | {min(ttfm):.0f} | {max(ttfm):.0f} | "
                     f"{statistics.median(r['import_s'] * 1000 for r in records):.0f} | "
                     f"{', '.join(sorted({r['from_cache'] for r in records}))} |")
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "first_compile.md").write_text(report)


if __name__ == "__main__":
    main()
