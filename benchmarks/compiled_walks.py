"""First visits walked in numpy and by the compiled loops, side by side, on the same states.

    python benchmarks/compiled_walks.py --data ../shared/jsonschemabench/dev --sample 250 --seed 0

The path ``generate`` takes (``compile_constraint`` at its defaults but ``whitespace``, which is
``flexible`` here as in maskbench.py), Llama-3 tokenizer, one process. Every test instance of
each schema on the finite-state engine is walked token by token, and each state's first visit
is recorded. Those states are then walked again with ``Walker.walk_parts``, on a fresh walker per
schema (as a new constraint has), once in numpy and once by the compiled loops, the order
alternating per state; the two walks must give the same tokens and next states. A first round
is not timed: it makes the tokenizer's string splits, of which the last 16 are kept, so a split
evicted since is made again in a timed round (``--rounds``), by whichever path walks its state
first. Writes benchmarks/results/<name>.md and <name>.png.
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


def first_visits(paths: list[Path], whitespace: str, timeout: float):
    """(tokenizer's TokenBytes, [(schema, automaton, states first visited, in order)])."""
    import structgen.constraint.compiler as compiler_module
    import structgen.constraint.token_masks as token_masks
    from structgen.constraint.vocabulary import TokenizerInfo

    tokenizer = load_tokenizer("llama3")
    info = TokenizerInfo.from_huggingface(tokenizer)
    visited: list[int] = []
    walk = token_masks.MaskStore._walk

    def recorded(store, state):
        visited.append(state)
        return walk(store, state)

    token_masks.MaskStore._walk = recorded
    bitmask = np.zeros((info.vocab_size + 31) // 32, dtype=np.int32)
    found, tokens = [], None
    try:
        for path in paths:
            doc = json.loads(path.read_text())
            try:
                constraint = compiler_module.compile_constraint(doc["schema"], info,
                                                                whitespace=whitespace,
                                                                timeout=timeout)
            except Exception:  # refused: not on the finite-state engine
                continue
            if constraint.engine != "outlines-core":
                continue
            visited.clear()
            constraint.matcher().fill_bitmask(bitmask)
            for test in doc.get("tests", []):
                ids = tokenizer.encode(json.dumps(test["data"], ensure_ascii=False),
                                       add_special_tokens=False)
                matcher = constraint.matcher()
                for token in ids + [constraint.eos_token_id]:
                    matcher.fill_bitmask(bitmask)
                    if not (int(bitmask[token >> 5]) >> (token & 31)) & 1:
                        break
                    if token != constraint.eos_token_id and not matcher.advance(token):
                        break
            tokens = constraint.masks.tokens
            found.append((path.name, constraint.automaton, list(dict.fromkeys(visited))))
    finally:
        token_masks.MaskStore._walk = walk
    return tokens, found


def replay(tokens, found, rounds: int) -> list[dict]:
    """One record per state and round: its kind and both walks' nanoseconds."""
    from structgen.constraint.token_masks import Walker

    records = []
    for round_number in range(rounds + 1):  # round 0 makes the string splits, untimed
        for name, automaton, states in found:
            walker = Walker(automaton, tokens)
            for number, state in enumerate(states):
                times, results = {}, {}
                for compiled in ((False, True) if (number + round_number) % 2 else (True, False)):
                    walker.use_compiled = compiled
                    started = time.perf_counter_ns()
                    placed, ids, following = walker.walk_parts(state)
                    times[compiled] = time.perf_counter_ns() - started
                    walked = dict(zip(ids.tolist(), following.tolist()))
                    if placed is not None:
                        walked.update(zip(placed.ids.tolist(),
                                          placed.chain[placed.counts].tolist()))
                    results[compiled] = walked
                if results[False] != results[True]:
                    raise SystemExit(f"{name}: state {state}: the compiled walk differs")
                if round_number:
                    records.append({"string": placed is not None, "numpy": times[False],
                                    "compiled": times[True]})
    return records


def report(records: list[dict], schemas: int, command: str, rounds: int) -> str:
    lines = [
        "# First visits: numpy walks and the compiled loops, side by side",
        "",
        f"Command: `{command}`",
        "",
        f"Provenance: {provenance()}, on this project's 2-core CPU machine.",
        "",
        f"{schemas} MaskBench dev schemas on the finite-state engine (the path `generate` takes, "
        "`flexible` whitespace as in maskbench.py), Llama-3 tokenizer; every state first visited "
        f"by their test instances, walked again {rounds} time(s) by `Walker.walk_parts` on a "
        "fresh walker per schema, in numpy and by the compiled loops, the order alternating per "
        "state. Both gave the same tokens and next states for every state. An untimed round "
        "came first; a string split evicted since (the last 16 are kept) is made again by "
        "whichever path walks its state first. Times in µs.",
        "",
        "| states | walks | numpy p50 | p90 | p99 | summed ms | compiled p50 | p90 | p99 | "
        "summed ms | median ratio |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label, chosen in (("all", records), ("in a string", [r for r in records if r["string"]]),
                          ("structural", [r for r in records if not r["string"]])):
        if not chosen:
            continue
        numpy_ns = np.array([r["numpy"] for r in chosen]) / 1e3
        compiled_ns = np.array([r["compiled"] for r in chosen]) / 1e3
        cells = []
        for values in (numpy_ns, compiled_ns):
            cells += [f"{np.percentile(values, q):,.0f}" for q in (50, 90, 99)]
            cells.append(f"{values.sum() / 1e3:,.0f}")
        ratio = np.median(compiled_ns / numpy_ns)
        lines.append(f"| {label} | {len(chosen):,} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axis = plt.subplots(figsize=(7, 4.5))
    groups = [("structural", False), ("in a string", True)]
    data, labels = [], []
    for label, string in groups:
        for key in ("numpy", "compiled"):
            values = [r[key] / 1e3 for r in records if r["string"] == string]
            if values:
                data.append(values)
                labels.append(f"{label}\n{key}")
    axis.boxplot(data, tick_labels=labels, showfliers=False)
    axis.set_yscale("log")
    axis.set_ylabel("µs per first visit (log)")
    axis.set_title("first visits: numpy vs compiled loops")
    save(plt, fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, sample=250)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--whitespace", default="flexible")
    parser.add_argument("--timeout", type=float, default=25.0, help="per compile, seconds")
    parser.add_argument("--name", default="compiled_walks")
    args = parser.parse_args(argv)
    from structgen.constraint.compiled_loops import COMPILED_LOOPS

    COMPILED_LOOPS.start()
    if not COMPILED_LOOPS.wait():
        raise SystemExit(f"the compiled walks did not load: {COMPILED_LOOPS.error}")
    paths = stratified_sample(sorted(args.data.glob("*.json")), args.sample, args.seed)
    with tempfile.TemporaryDirectory(prefix="compiled-walks-") as cache:
        os.environ["STRUCTGEN_CACHE"] = cache
        tokens, found = first_visits(paths, args.whitespace, args.timeout)
        records = replay(tokens, found, max(1, args.rounds))
    command = "python benchmarks/compiled_walks.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = report(records, len(found), command, max(1, args.rounds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    plot(records, RESULTS / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()
