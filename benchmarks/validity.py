"""End-to-end validity: generate with the embedded model for JSONSchemaBench schemas under fixed budgets.

    python benchmarks/validity.py --pattern 'JME_*' --pattern 'Glaiveai2K---*' --sample 50 \
        --max-tokens 256 --max-tokens 64

For each schema file (MaskBench layout, see shared/jsonschemabench/README.md): compile the schema
with structgen (a schema that cannot be compiled must fail with a typed StructgenError), then for
each budget generate greedily with the Hermes JSON-mode prompt and check the answer with
`jsonschema` (with format checking), independently of the engine. Writes
benchmarks/results/validity.md, validity.jsonl and validity.png.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import random
import time
from collections import Counter
from pathlib import Path

from _plotting import pyplot

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "jsonschemabench" / "dev"


def select_files(data: Path, patterns: list[str], sample: int | None, seed: int) -> list[Path]:
    """Files matching each pattern; patterns with more than ``sample`` files are sampled (seeded)."""
    chosen: list[Path] = []
    files = sorted(data.glob("*.json"))
    for pattern in patterns:
        matching = [f for f in files if fnmatch.fnmatch(f.name, pattern)]
        if sample is not None and len(matching) > sample:
            matching = sorted(random.Random(seed).sample(matching, sample))
        chosen.extend(matching)
    return chosen


def prompt_for(schema: dict) -> str:
    title = schema.get("title") if isinstance(schema, dict) else None
    what = f"a {title}" if isinstance(title, str) and title else "an object"
    return f"Generate a realistic example of {what} that follows the schema."


def check(schema, text: str) -> tuple[bool, bool]:
    """(parses as JSON, validates against the schema) — judged by jsonschema, not by structgen."""
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False, False
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return True, validator.is_valid(value)


def run(files: list[Path], budgets: list[int]) -> list[dict]:
    import structgen

    model = structgen.load_model()
    records = []
    for number, path in enumerate(files, 1):
        schema = json.loads(path.read_text())["schema"]
        record = {"file": path.name, "compile": "ok"}
        started = time.perf_counter()
        try:
            constraint = structgen.compile_constraint(schema, model.tokenizer_info)
        except structgen.StructgenError as error:
            record["compile"] = type(error).__name__
            record["compile_message"] = str(error)[:300]
        except Exception as error:  # an untyped error is a bug in structgen: record it as such
            record["compile"] = f"UNTYPED {type(error).__name__}"
            record["compile_message"] = str(error)[:300]
        record["compile_seconds"] = time.perf_counter() - started
        if record["compile"] == "ok":
            for budget in budgets:
                record[str(budget)] = generate_one(structgen, model, constraint, schema, budget)
        records.append(record)
        print(f"[{number}/{len(files)}] {path.name}: {summary_line(record, budgets)}", flush=True)
    return records


def generate_one(structgen, model, constraint, schema, budget: int) -> dict:
    try:
        result = structgen.generate_with_details(constraint, prompt_for(schema), model=model,
                                                 max_tokens=budget)
        text, tokens = result.text, result.completion_tokens
        seconds, stop = result.seconds, result.stop_reason
    except structgen.BudgetTooSmallError as error:
        return {"status": "budget-too-small", "min_tokens": error.min_tokens}
    except structgen.OutputError as error:  # structgen's own parse refused it: count it as invalid
        text, tokens, seconds, stop = error.text, None, None, "output-error"
    parses, valid = check(schema, text)
    return {"status": "generated", "parses": parses, "valid": valid, "tokens": tokens,
            "seconds": seconds, "stop": stop, "text": text[:2000]}


def summary_line(record: dict, budgets: list[int]) -> str:
    if record["compile"] != "ok":
        return f"compile error {record['compile']}"
    parts = []
    for budget in budgets:
        outcome = record[str(budget)]
        if outcome["status"] != "generated":
            parts.append(f"{budget}: {outcome['status']}")
        else:
            parts.append(f"{budget}: {'valid' if outcome['valid'] else 'INVALID'} ({outcome['tokens']} tok)")
    return ", ".join(parts)


def report(records: list[dict], budgets: list[int], command: str) -> str:
    compiled = [r for r in records if r["compile"] == "ok"]
    errors = Counter(r["compile"] for r in records if r["compile"] != "ok")
    lines = [
        "# End-to-end validity on JSONSchemaBench schemas (embedded SmolLM2-135M, greedy)",
        "",
        f"Command: `{command}`",
        "",
        f"Schemas: {len(records)}; compiled: {len(compiled)}; compile errors: "
        + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"),
        "",
        "| max_tokens | generated | parses | schema-valid | budget below minimum | mean tokens "
        "| stopped by budget |",
        "|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for budget in budgets:
        outcomes = [r[str(budget)] for r in compiled]
        generated = [o for o in outcomes if o["status"] == "generated"]
        too_small = sum(o["status"] == "budget-too-small" for o in outcomes)
        parses = sum(o["parses"] for o in generated)
        valid = sum(o["valid"] for o in generated)
        tokens = [o["tokens"] for o in generated if o["tokens"] is not None]
        by_budget = sum(o["stop"] == "max_tokens" for o in generated)
        mean = sum(tokens) / len(tokens) if tokens else 0
        lines.append(f"| {budget} | {len(generated)} | {parses} | {valid} | {too_small} | {mean:.1f} "
                     f"| {by_budget} |")
    invalid = [(r["file"], b) for r in compiled for b in budgets
               if r[str(b)]["status"] == "generated" and not r[str(b)]["valid"]]
    lines += ["", "Invalid answers: " + (", ".join(f"{f}@{b}" for f, b in invalid) or "none"), ""]
    if errors:
        lines += ["Compile errors (typed):", ""]
        lines += [f"- `{r['file']}`: {r['compile']}: {r['compile_message']}" for r in records
                  if r["compile"] != "ok"]
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], budgets: list[int], name: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    compiled = [r for r in records if r["compile"] == "ok"]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for budget in budgets:
        tokens = sorted(r[str(budget)]["tokens"] for r in compiled
                        if r[str(budget)]["status"] == "generated" and r[str(budget)]["tokens"])
        axis.hist(tokens, bins=20, alpha=0.6, label=f"max_tokens={budget}")
    axis.set_xlabel("tokens per answer")
    axis.set_ylabel("schemas")
    axis.set_title("structgen answers (all schema-valid checks in the table)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / f"{name}.png", dpi=120)


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pattern", action="append", default=None,
                        help="file-name glob, repeatable (default: JME_* and Glaiveai2K---*)")
    parser.add_argument("--sample", type=int, default=50, help="at most this many files per pattern")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, action="append", default=None)
    parser.add_argument("--name", default="validity", help="results file name stem")
    args = parser.parse_args()
    patterns = args.pattern or ["JME_*", "Glaiveai2K---*"]
    budgets = args.max_tokens or [256, 64]

    files = select_files(args.data, patterns, args.sample, args.seed)
    records = run(files, budgets)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{args.name}.jsonl", "w") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    command = "python benchmarks/validity.py " + " ".join(sys.argv[1:])
    text = report(records, budgets, command.strip())
    (RESULTS / f"{args.name}.md").write_text(text)
    plot(records, budgets, args.name)
    print(text)


if __name__ == "__main__":
    main()
