"""Function calling on BFCL tool sets: do constrained calls validate, and is the right tool picked?

    python benchmarks/tool_calls.py --sample 100 --max-tokens 256

Each BFCL_* file of shared/jsonschemabench/dev is turned into a tool set: every `anyOf` branch is
one tool, its single property name the tool name and that property's schema the parameters. The
user prompt is built from the test data's arguments (humanised parameter names and values, never
the tool name), so the model has to pick the tool from what is asked. Each call is decoded on the
embedded model with tool_choice="required" and max_calls=1, then checked independently with
jsonschema against the chosen tool's parameters. Writes benchmarks/results/tool_calls.md/.jsonl/.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

from _plotting import pyplot

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "jsonschemabench" / "dev"


def tool_set(schema: dict) -> list[dict]:
    """OpenAI-style tool dicts from a BFCL schema's anyOf branches."""
    tools = []
    for branch in schema.get("anyOf", [schema]):
        (name, parameters), = branch["properties"].items()
        tools.append({"type": "function", "function": {"name": name, "parameters": parameters}})
    return tools


def prompt_from(arguments: dict) -> str:
    parts = [f"{key.replace('_', ' ')} {json.dumps(value, ensure_ascii=False)}"
             for key, value in arguments.items()]
    return "Please help me with this request, using: " + "; ".join(parts) + "."


def run(files: list[Path], max_tokens: int) -> list[dict]:
    import jsonschema

    import structgen

    model = structgen.load_model()
    records = []
    for number, path in enumerate(files, 1):
        document = json.loads(path.read_text())
        expected_name, expected_arguments = next(iter(document["tests"][0]["data"].items()))
        tools = tool_set(document["schema"])
        record = {"file": path.name, "tools": len(tools), "expected": expected_name}
        started = time.perf_counter()
        try:
            turn = structgen.call_tools_with_details(
                tools, prompt_from(expected_arguments), model=model, tool_choice="required",
                max_calls=1, max_tokens=max_tokens)
        except structgen.StructgenError as error:
            record.update(status=type(error).__name__, message=str(error)[:300])
        else:
            call = turn.calls[0]
            parameters = next(t["function"]["parameters"] for t in tools
                              if t["function"]["name"] == call.name)
            record.update(status="called", name=call.name, arguments=call.arguments,
                          valid=jsonschema.Draft202012Validator(parameters).is_valid(call.arguments),
                          tokens=turn.completion_tokens, compile_seconds=turn.compile_seconds,
                          decode_seconds=turn.seconds)
        record["seconds"] = time.perf_counter() - started
        records.append(record)
        shown = record["status"] if record["status"] != "called" else (
            f"{record['name']} ({'valid' if record['valid'] else 'INVALID'}, "
            f"{'right' if record['name'] == expected_name else 'other'} tool)")
        print(f"[{number}/{len(files)}] {path.name}: {shown}", flush=True)
    return records


def report(records: list[dict], command: str) -> str:
    called = [r for r in records if r["status"] == "called"]
    valid = sum(r["valid"] for r in called)
    right = sum(r["name"] == r["expected"] for r in called)
    multi = [r for r in called if r["tools"] > 1]
    right_multi = sum(r["name"] == r["expected"] for r in multi)
    errors = Counter(r["status"] for r in records if r["status"] != "called")
    tokens = [r["tokens"] for r in called]
    lines = [
        "# Function calling on BFCL tool sets (embedded SmolLM2-135M, greedy)",
        "",
        f"Command: `{command}`",
        "",
        "| measure | value |",
        "|---|--:|",
        f"| tool sets | {len(records)} |",
        f"| constrained turns decoded | {len(called)} |",
        f"| typed errors before decoding | {sum(errors.values())} ({_counts(errors)}) |",
        f"| calls whose arguments validate (jsonschema) | {valid} / {len(called)} |",
        f"| right tool picked, all sets | {_share(right, len(called))} |",
        f"| right tool picked, sets with 2+ tools | {_share(right_multi, len(multi))} |",
        f"| mean tokens per turn | {sum(tokens) / max(1, len(tokens)):.1f} |",
        "",
    ]
    return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{part} / {whole} ({100 * part / max(1, whole):.0f}%)"


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items()) or "none"


def plot(records: list[dict]) -> None:
    plt = pyplot()
    if plt is None:
        return
    called = [r for r in records if r["status"] == "called"]
    by_size: dict[int, list[bool]] = {}
    for r in called:
        by_size.setdefault(r["tools"], []).append(r["name"] == r["expected"])
    sizes = sorted(by_size)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar([str(s) for s in sizes], [100 * sum(by_size[s]) / len(by_size[s]) for s in sizes])
    axis.set_xlabel("tools in the set")
    axis.set_ylabel("right tool picked (%)")
    axis.set_title("BFCL tool sets, SmolLM2-135M (all calls validate)")
    figure.tight_layout()
    figure.savefig(RESULTS / "tool_calls.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    files = sorted(args.data.glob("BFCL_*.json"))
    if len(files) > args.sample:
        files = sorted(random.Random(args.seed).sample(files, args.sample))
    records = run(files, args.max_tokens)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "tool_calls.jsonl", "w") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    text = report(records, "python benchmarks/tool_calls.py " + " ".join(sys.argv[1:]))
    (RESULTS / "tool_calls.md").write_text(text)
    plot(records)
    print(text)


if __name__ == "__main__":
    main()
