"""What each whitespace mode costs to compile: the path generate takes (``compile_constraint`` at
its defaults but ``whitespace``, then the first mask), per mode, on the same MaskBench schemas.

    python benchmarks/whitespace_modes.py --data ../shared/jsonschemabench/dev --sample 500 --seed 0

One process, Llama-3 tokenizer, an empty cache folder, the compile worker and the tokenizer's
arrays up before the first schema (as in maskbench.py). Every schema is compiled once in each
mode, the modes one after the other in an order that rotates from schema to schema, so a slow
stretch of the machine falls on every mode alike. Each (schema, mode) is a regex never compiled
before (the mode is part of it), so every compile is cold. The ratio column is the median over
schemas, compiled by the finite-state engine in both modes, of the mode's TTFM over
``compact``'s. Writes benchmarks/results/whitespace_modes.md and whitespace_modes.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from _plotting import provenance, pyplot, save  # noqa: E402
from maskbench import add_sample_arguments, load_tokenizer, stratified_sample  # noqa: E402

MODES = ("compact", "spaced", "indented", "flexible")


def measure(paths: list[Path], timeout: float) -> list[dict]:
    """The records of every (schema, mode), compiled into a cold cache folder that is removed
    afterwards (the automata of 2,000 compiles take over a gigabyte)."""
    with tempfile.TemporaryDirectory(prefix="whitespace-modes-") as cache:
        os.environ["STRUCTGEN_CACHE"] = cache
        try:
            return _measure(paths, timeout)
        finally:
            del os.environ["STRUCTGEN_CACHE"]


def _measure(paths: list[Path], timeout: float) -> list[dict]:
    import structgen.constraint.compiler as compiler_module
    from structgen.constraint.compiled_loops import COMPILED_LOOPS
    from structgen.constraint.vocabulary import TokenizerInfo
    from structgen.errors import StructgenError

    info = TokenizerInfo.from_huggingface(load_tokenizer("llama3"))
    compiler = compiler_module.ConstraintCompiler(timeout=timeout)
    compiler_module._default_compiler = compiler
    compiler.compile_regex("a", info)  # the worker is up, the tokenizer's arrays built
    COMPILED_LOOPS.start()  # as load_model does while the model loads (5 s here; these 0.5 s)
    COMPILED_LOOPS.wait()
    bitmask = np.zeros((info.vocab_size + 31) // 32, dtype=np.int32)
    records = []
    for number, path in enumerate(paths):
        schema = json.loads(path.read_text())["schema"]
        for shift in range(len(MODES)):
            mode = MODES[(number + shift) % len(MODES)]
            record = {"schema": path.name, "mode": mode}
            started = time.perf_counter_ns()
            try:
                constraint = compiler_module.compile_constraint(schema, info, whitespace=mode,
                                                                timeout=timeout)
                constraint.matcher().fill_bitmask(bitmask)
            except StructgenError as error:
                record["error"] = type(error).__name__
            else:
                record["ttfm_ns"] = time.perf_counter_ns() - started
                record["engine"] = constraint.engine
                automaton = getattr(constraint, "automaton", None)
                if automaton is not None:
                    record["states"] = int(automaton.table.shape[0])
                    record["regex_chars"] = len(constraint.regex)
            records.append(record)
        print(f"{number + 1}/{len(paths)} {path.name}", file=sys.stderr, flush=True)
    compiler.close()
    return records


def _ms(values) -> str:
    return f"{np.percentile(values, 50) / 1e6:.1f} / {np.percentile(values, 90) / 1e6:.1f} / " \
           f"{np.percentile(values, 99) / 1e6:.1f}" if len(values) else "–"


def report(records: list[dict], command: str, count: int) -> str:
    by = {(r["schema"], r["mode"]): r for r in records}
    schemas = sorted({r["schema"] for r in records})
    finite = {mode: [s for s in schemas if by[s, mode].get("engine") == "outlines-core"]
              for mode in MODES}
    lines = [
        "# What each whitespace mode costs to compile",
        "",
        f"Command: `{command}`",
        "",
        f"Provenance: {provenance()}, on this project's 2-core CPU machine.",
        "",
        f"{count} MaskBench dev schemas, Llama-3 tokenizer, one process, cold caches; each schema "
        "compiled in every mode, the order rotating per schema. TTFM = `compile_constraint(schema, "
        "tokenizer, whitespace=mode)` + the first `fill_bitmask`, the path `generate` takes with "
        "that mode (`indented` is the default). Ratio: the median over schemas compiled by the "
        "finite-state engine in both modes of the mode's TTFM over `compact`'s.",
        "",
        "| mode | compiled | finite-state | llguidance | refused | TTFM p50 / p90 / p99 (ms), "
        "finite-state | median ratio to compact | states p50 / p90 | regex chars p50 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for mode in MODES:
        rows = [by[s, mode] for s in schemas]
        ok = [r for r in rows if "ttfm_ns" in r]
        fsm = [r for r in ok if r["engine"] == "outlines-core"]
        both = [s for s in finite[mode] if s in finite["compact"]]
        ratio = np.median([by[s, mode]["ttfm_ns"] / by[s, "compact"]["ttfm_ns"] for s in both]) \
            if both else float("nan")
        states = [r["states"] for r in fsm]
        chars = [r["regex_chars"] for r in fsm]
        lines.append(
            f"| {mode} | {len(ok)} | {len(fsm)} | {len(ok) - len(fsm)} | {len(rows) - len(ok)} | "
            f"{_ms([r['ttfm_ns'] for r in fsm])} | {ratio:.2f} ({len(both)} schemas) | "
            + (f"{np.percentile(states, 50):.0f} / {np.percentile(states, 90):.0f} | "
               f"{np.percentile(chars, 50):,.0f} |" if fsm else "– | – |"))
    import importlib.metadata as md

    lines += ["", "Versions: " + ", ".join(f"{name} {md.version(name)}" for name in
                                            ("structgen", "outlines_core", "numpy")), ""]
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axis = plt.subplots(figsize=(7, 4))
    for mode in MODES:
        values = np.sort([r["ttfm_ns"] / 1e6 for r in records
                          if r["mode"] == mode and r.get("engine") == "outlines-core"])
        if len(values):
            axis.plot(values, np.arange(1, len(values) + 1) / len(values), label=mode)
    axis.set_xscale("log")
    axis.set_xlabel("TTFM (ms, log), finite-state engine")
    axis.set_ylabel("fraction of schemas")
    axis.set_title("Compile + first mask per whitespace mode (Llama-3)")
    axis.legend()
    save(plt, fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, sample=500)
    parser.add_argument("--timeout", type=float, default=30.0, help="per compile, seconds")
    parser.add_argument("--name", default="whitespace_modes")
    args = parser.parse_args(argv)
    paths = stratified_sample(sorted(args.data.glob("*.json")), args.sample, args.seed)
    records = measure(paths, args.timeout)
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/whitespace_modes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(records, command, len(paths))
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot(records, RESULTS / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()
