"""The automaton build alone, two ways on the same regexes: outlines-core's ``Index`` over the
256 single bytes (what the compile worker runs, its regex read in Python) and structgen's own
determinisation (what a process with the compiled loops loaded runs, as after ``load_model``:
the regex read by the compiled scans too).

    python benchmarks/determinize.py --data ../shared/jsonschemabench/dev --sample 250 --seed 0

The regexes are those ``compile_constraint`` builds for the sampled schemas (its defaults but
``whitespace``, which is ``flexible`` here as in maskbench.py). Each is built by two
``AutomatonBuilder``s, one per determinisation, kept across schemas as the worker and the
compiler keep theirs (counted strings and repeated groups are spliced the same way around
either; the string character from two places for outlines-core, as the worker shares it, from
``compiler.SHARE_CHARACTER_HERE`` for structgen's, as the compiler does), the order alternating
per regex; both run in this process, so neither time holds the
worker's round trip. The two automata must agree on acceptance, on the bytes that lead on and on
the distance to acceptance from every state pair one input reaches. A regex structgen hands to
the worker (outside the dialect, or past the bounds) is counted and left out of the times.
Writes benchmarks/results/<name>.md and <name>.png.
"""

from __future__ import annotations

import argparse
import functools
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


def regexes_of(paths: list[Path], whitespace: str, timeout: float) -> list[str]:
    """The regexes ``compile_constraint`` builds automata for, in order, once each (with an
    empty cache folder, removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="determinize-") as cache:
        os.environ["STRUCTGEN_CACHE"] = cache
        return _regexes_of(paths, whitespace, timeout)


def _regexes_of(paths: list[Path], whitespace: str, timeout: float) -> list[str]:
    import structgen.constraint.compiler as compiler_module
    from structgen.constraint.vocabulary import TokenizerInfo

    info = TokenizerInfo.from_huggingface(load_tokenizer("llama3"))
    compiler = compiler_module.ConstraintCompiler(timeout=timeout, disk_cache=False)
    compiler_module._default_compiler = compiler
    built: list[str] = []
    build = compiler._build

    def recorded(key, regex, *args, **kwargs):
        built.append(regex)
        return build(key, regex, *args, **kwargs)

    compiler._build = recorded
    for path in paths:
        try:
            compiler_module.compile_constraint(json.loads(path.read_text())["schema"], info,
                                               whitespace=whitespace, timeout=timeout)
        except Exception:  # refused by the schema compiler, or on llguidance: no automaton
            pass
    compiler.close()
    return list(dict.fromkeys(built))


def measure(regexes: list[str]) -> tuple[list[dict], int]:
    from structgen.constraint.automaton import (
        BuildTooLarge,
        ByteAutomaton,
        build_arrays,
        determinized_arrays,
    )
    from structgen.constraint.automaton_builder import AutomatonBuilder
    from structgen.constraint.compiled_loops import COMPILED_LOOPS
    from structgen.constraint.compiler import SHARE_CHARACTER_HERE
    from structgen.constraint.regex_nfa import UnsupportedRegex
    from structgen.schema.layout import STRING_CHAR

    COMPILED_LOOPS.start()
    if not COMPILED_LOOPS.wait():
        raise SystemExit(f"the compiled loops did not load: {COMPILED_LOOPS.error}")
    loops = COMPILED_LOOPS.automaton
    builders = {
        "outlines-core": AutomatonBuilder(build_arrays),
        # the compiled scans and distances, and the string character shared from as many
        # places, as the compiler's
        "structgen": AutomatonBuilder(functools.partial(determinized_arrays, loops=loops), loops,
                                      share_character_from=SHARE_CHARACTER_HERE),
    }
    records, handed_over = [], 0
    for number, regex in enumerate(regexes):
        order = list(builders) if number % 2 else list(reversed(builders))
        arrays, seconds = {}, {}
        try:
            for name in order:
                started = time.perf_counter()
                arrays[name] = builders[name].build(regex, STRING_CHAR)
                seconds[name] = time.perf_counter() - started
        except (UnsupportedRegex, BuildTooLarge):
            handed_over += 1
            continue
        except ValueError:  # outlines-core refuses it: the compile reports it either way
            continue
        difference = ByteAutomaton.from_arrays(arrays["outlines-core"]).first_difference(
            ByteAutomaton.from_arrays(arrays["structgen"]))
        if difference is not None:
            raise SystemExit(f"the automata differ ({difference}) for the regex {regex[:200]!r}")
        records.append({"chars": len(regex), **{f"{n}_s": seconds[n] for n in builders},
                        **{f"{n}_states": len(arrays[n]["table"]) for n in builders}})
    return records, handed_over


def report(records: list[dict], handed_over: int, command: str, schemas: int) -> str:
    ms = {n: np.array([r[f"{n}_s"] for r in records]) * 1e3 for n in ("outlines-core", "structgen")}
    lines = [
        "# The automaton build alone (`AutomatonBuilder`, not `generate`'s whole path): "
        "outlines-core's `Index` against structgen's own determinisation, on the same regexes",
        "",
        f"Command: `{command}`",
        "",
        f"Provenance: {provenance()}, on this project's 2-core CPU machine.",
        "",
        f"{schemas} MaskBench dev schemas sampled; the {len(records)} regexes "
        "`compile_constraint` built automata for (whitespace `flexible`), each built by both, "
        "the order alternating, in one process (no worker round trip in either time). Every "
        "pair of automata agreed on acceptance, the bytes that lead on and the distances. "
        f"{handed_over} regexes went to the worker (outside the dialect or past the bounds) "
        "and are not in the table. Times in ms.",
        "",
        "| determinisation | p50 | p90 | p99 | max | summed | states p50 | states summed |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, values in ms.items():
        states = np.array([r[f"{name}_states"] for r in records])
        lines.append(f"| {name} | {np.percentile(values, 50):.2f} | "
                     f"{np.percentile(values, 90):.2f} | {np.percentile(values, 99):.1f} | "
                     f"{values.max():.1f} | {values.sum():,.0f} | {np.median(states):,.0f} | "
                     f"{states.sum():,} |")
    ratio = ms["structgen"] / ms["outlines-core"]
    lines += ["", f"Median per-regex ratio, structgen over outlines-core: {np.median(ratio):.2f} "
              f"(p90 {np.percentile(ratio, 90):.2f}); structgen was faster on "
              f"{(ratio < 1).sum()} of {len(ratio)}."]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axis = plt.subplots(figsize=(6, 5))
    index = [r["outlines-core_s"] * 1e3 for r in records]
    ours = [r["structgen_s"] * 1e3 for r in records]
    axis.scatter(index, ours, s=8, alpha=0.6)
    low, high = min(index + ours), max(index + ours)
    axis.plot([low, high], [low, high], color="grey", linewidth=1)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("outlines-core Index build, ms (log)")
    axis.set_ylabel("structgen determinisation, ms (log)")
    axis.set_title("automaton build per regex")
    save(plt, fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, sample=250)
    parser.add_argument("--whitespace", default="flexible")
    parser.add_argument("--timeout", type=float, default=25.0, help="per compile, seconds")
    parser.add_argument("--name", default="determinize")
    args = parser.parse_args(argv)
    paths = stratified_sample(sorted(args.data.glob("*.json")), args.sample, args.seed)
    regexes = regexes_of(paths, args.whitespace, args.timeout)
    records, handed_over = measure(regexes)
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/determinize.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = report(records, handed_over, command, len(paths))
    (RESULTS / f"{args.name}.md").write_text(text)
    plot(records, RESULTS / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()
