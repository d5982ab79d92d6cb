"""Token-mask time in a batch job over one schema: structgen's shared lazy masks vs llguidance.

    python benchmarks/batch_masks.py --rows 200 --tokenizer llama3

Measures the constraint layer alone, not decoding: a batch job's rows are stood in for by
``--rows`` answers to one extraction schema (``Person`` of batch_throughput.py: name, age, job,
city), laid out as the default whitespace writes them (``json.dumps(indent=2)``) and tokenised
with the model's tokenizer. structgen compiles the schema once with ``compile_constraint`` at its
defaults (what ``generate_batch`` and ``structgen batch`` do, after ``load_model`` has loaded the
compiled walks) and walks every row with a fresh matcher of that one constraint, timing
``fill_bitmask`` per step: a state's mask is computed the first time any row reaches it and
copied afterwards. llguidance walks the same rows with one
``LLMatcher`` per row over its own JSON-schema grammar (structgen's options for ``indented``),
timing ``compute_mask`` per step, as it computes every mask. Reported: per-step time over the
first 10 rows and over the rows after them, side by side in one run. Writes
benchmarks/results/batch_masks.{md,png}.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from _plotting import pyplot
from batch_throughput import CITIES, JOBS, NAMES, Person
from maskbench import load_tokenizer, percentiles

RESULTS = Path(__file__).parent / "results"
WARM_AFTER = 10


def rows_of(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [json.dumps({"name": rng.choice(NAMES), "age": rng.randint(0, 120),
                        "job": rng.choice(JOBS), "city": rng.choice(CITIES)}, indent=2)
            for _ in range(count)]


def walk_structgen(constraint, token_rows: list[list[int]]) -> list[list[int]]:
    bitmask = np.zeros((constraint.vocab_size + 31) // 32, dtype=np.int32)
    times = []
    for ids in token_rows:
        matcher, row = constraint.matcher(), []
        for token in ids + [constraint.eos_token_id]:
            started = time.perf_counter_ns()
            matcher.fill_bitmask(bitmask)
            row.append(time.perf_counter_ns() - started)
            if not bitmask[token >> 5] >> (token & 31) & 1 or not matcher.advance(token):
                raise SystemExit(f"structgen refused token {token} of a valid row")
        times.append(row)
    return times


def walk_llguidance(grammar: str, ll_tokenizer, vocab_size: int, eos: int,
                    token_rows: list[list[int]]) -> list[list[int]]:
    import llguidance

    bitmask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
    times = []
    for ids in token_rows:
        matcher, row = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0), []
        for token in ids + [eos]:
            started = time.perf_counter_ns()
            matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)
            row.append(time.perf_counter_ns() - started)
            if not bitmask[token >> 5] >> (token & 31) & 1:
                raise SystemExit(f"llguidance refused token {token} of a valid row")
            matcher.consume_token(token)
        times.append(row)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--tokenizer", default="llama3", choices=("llama3", "smollm2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="batch_masks")
    args = parser.parse_args()

    import structgen
    from structgen.constraint.compiled_loops import COMPILED_LOOPS
    from structgen.constraint.llguidance_backend import JSON_OPTIONS, ll_tokenizer
    from structgen.constraint.vocabulary import TokenizerInfo

    COMPILED_LOOPS.start()  # as load_model does while the model loads (5 s here; these 0.5 s)
    tokenizer = load_tokenizer(args.tokenizer)
    info = TokenizerInfo.from_huggingface(tokenizer)
    COMPILED_LOOPS.wait()
    texts = rows_of(args.rows, args.seed)
    token_rows = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    started = time.perf_counter()
    constraint = structgen.compile_constraint(Person, info)
    compile_s = time.perf_counter() - started
    structgen_times = walk_structgen(constraint, token_rows)
    states = constraint.masks.walks

    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(Person.model_json_schema()), defaults=JSON_OPTIONS["indented"])
    ll_times = walk_llguidance(grammar, ll_tokenizer(info), info.vocab_size, info.eos_token_id,
                               token_rows)

    table = {}
    for name, times in (("structgen", structgen_times), ("llguidance", ll_times)):
        for part, rows in (("first", times[:WARM_AFTER]), ("after", times[WARM_AFTER:])):
            steps = [t for row in rows for t in row]
            table[(name, part)] = dict(percentiles(steps), steps=len(steps))  # µs
    ratio = table[("llguidance", "after")]["p50"] / table[("structgen", "after")]["p50"]
    lines = [
        f"# Token masks in a batch job over one schema ({args.rows} rows, `{args.tokenizer}`)", "",
        "Measures the constraint layer alone (`fill_bitmask` / llguidance `compute_mask` per "
        "step over tokenised answers), not decoding: `python benchmarks/batch_masks.py "
        f"--rows {args.rows} --tokenizer {args.tokenizer}`. structgen: one "
        "`compile_constraint(Person, tokenizer)` at the defaults, a fresh matcher per row; "
        "llguidance: its JSON grammar with structgen's `indented` options, a fresh `LLMatcher` "
        "per row. Same rows, one run.", "",
        "| engine | rows | steps | p50 µs | p99 µs | avg µs | max µs |",
        "|---|---|--:|--:|--:|--:|--:|"]
    for (name, part), p in table.items():
        label = f"first {WARM_AFTER}" if part == "first" else f"after the first {WARM_AFTER}"
        lines.append(f"| {name} | {label} | {p['steps']} | {p['p50']:.2f} | {p['p99']:.2f} | "
                     f"{p['avg']:.2f} | {p['max']:.1f} |")
    lines += ["", f"llguidance p50 / structgen p50 after the first {WARM_AFTER} rows: "
              f"{ratio:.1f}x. structgen computed {states} state masks for all {args.rows} rows "
              f"(compile {compile_s * 1000:.0f} ms: automaton, tokenizer arrays).", ""]
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(report)
    plt = pyplot()
    if plt is not None:
        fig, axis = plt.subplots(figsize=(7, 4))
        for name, times in (("structgen", structgen_times), ("llguidance", ll_times)):
            axis.plot([np.median(row) / 1000 for row in times], label=name)
        axis.set_yscale("log")
        axis.set_xlabel("row")
        axis.set_ylabel("median µs per step (log)")
        axis.set_title(f"Token-mask time per row, one schema, {args.tokenizer}")
        axis.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / f"{args.name}.png", dpi=120)


if __name__ == "__main__":
    main()
