"""Function calling on BFCL tool sets: do constrained calls validate, is the right tool picked, and
are the arguments the ones asked for, in each whitespace mode of the call payload?

    python benchmarks/tool_calls.py --sample 100 --max-tokens 256 [--modes compact,spaced,indented]

Each BFCL_* file of shared/jsonschemabench/dev is turned into a tool set: every `anyOf` branch is
one tool, its single property name the tool name and that property's schema the parameters. The
user prompt is built from the test data's arguments (humanised parameter names and values, never
the tool name), so the model has to pick the tool from what is asked. Each call is decoded on the
embedded model with tool_choice="required" and max_calls=1 through
``structgen.call_tools_with_details(..., whitespace=<mode>)`` (every argument but the mode at
call_tools' defaults), then checked independently with jsonschema against the chosen tool's
parameters. "Arguments as asked" means the right tool with arguments equal to the test data's;
"argument values right" counts the test data's arguments one by one. A call the parser refuses
after decoding (a key written twice inside an object the parameters leave free, which the regex
cannot rule out) counts as refused. The modes run interleaved
(each tool set in every mode before the next set). Writes benchmarks/results/tool_calls.md/.jsonl/.png.
"""

from __future__ import annotations

import argparse
import inspect
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


def default_whitespace() -> str:
    """The payload whitespace a user gets from ``call_tools`` without the argument."""
    import structgen

    return inspect.signature(structgen.call_tools).parameters["whitespace"].default


def run(files: list[Path], max_tokens: int, modes: list[str]) -> list[dict]:
    import structgen

    model = structgen.load_model()
    records = []
    for number, path in enumerate(files, 1):
        document = json.loads(path.read_text())
        expected_name, expected_arguments = next(iter(document["tests"][0]["data"].items()))
        tools = tool_set(document["schema"])
        for mode in modes:
            record = {"file": path.name, "whitespace": mode, "tools": len(tools),
                      "expected": expected_name, "expected_arguments": expected_arguments}
            started = time.perf_counter()
            try:
                turn = structgen.call_tools_with_details(
                    tools, prompt_from(expected_arguments), model=model, tool_choice="required",
                    max_calls=1, max_tokens=max_tokens, whitespace=mode)
            except structgen.StructgenError as error:
                record.update(status=type(error).__name__, message=str(error)[:300])
            else:
                record.update(_called(turn, tools))
            record["seconds"] = time.perf_counter() - started
            records.append(record)
            shown = record.get("message", record["status"]) if record["status"] != "called" else (
                f"{record['name']} ({'valid' if record['valid'] else 'INVALID'}, "
                f"{'right' if record['name'] == expected_name else 'other'} tool, "
                f"{'as asked' if as_asked(record) else 'other arguments'})")
            print(f"[{number}/{len(files)}] {path.name} {mode}: {shown}", flush=True)
    return records


def _called(turn, tools: list[dict]) -> dict:
    """A decoded turn's fields of the record: its call, checked independently with jsonschema, or
    the parser's refusal of the one call it wrote (a key written twice)."""
    import jsonschema

    if not turn.calls:
        return dict(status="refused after decoding", tokens=turn.completion_tokens,
                    message="; ".join(str(call.error) for call in turn.rejected)[:300])
    call = turn.calls[0]
    parameters = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.name)
    return dict(status="called", name=call.name, arguments=call.arguments,
                valid=jsonschema.Draft202012Validator(parameters).is_valid(call.arguments),
                tokens=turn.completion_tokens, compile_seconds=turn.compile_seconds,
                decode_seconds=turn.seconds)


def as_asked(record: dict) -> bool:
    """The right tool, called with exactly the test data's arguments."""
    return (record["status"] == "called" and record["name"] == record["expected"]
            and record["arguments"] == record["expected_arguments"])


def values_right(record: dict) -> tuple[int, int]:
    """How many of the test data's arguments the call has with the same value, out of how many."""
    expected = record["expected_arguments"]
    if record["status"] != "called" or record["name"] != record["expected"]:
        return 0, len(expected)
    return sum(record["arguments"].get(key, object()) == value for key, value in expected.items()), \
        len(expected)


def report(records: list[dict], command: str, modes: list[str], default: str) -> str:
    columns = [f"**{m}** (default)" if m == default else m for m in modes]
    rows = {name: [] for name in ("constrained turns decoded", "typed errors before decoding",
                                  "calls refused after decoding (a key written twice)",
                                  "calls whose arguments validate (jsonschema)",
                                  "right tool picked, all sets", "right tool picked, sets with 2+ tools",
                                  "calls with the arguments as asked", "argument values right",
                                  "mean tokens per turn")}
    for mode in modes:
        mine = [r for r in records if r["whitespace"] == mode]
        called = [r for r in mine if r["status"] == "called"]
        multi = [r for r in called if r["tools"] > 1]
        errors = Counter(r["status"] for r in mine if r["status"] != "called")
        tokens = [r["tokens"] for r in called]
        right_values = [values_right(r) for r in mine]
        rows["constrained turns decoded"].append(
            f"{sum(r['status'] in ('called', 'refused after decoding') for r in mine)} / {len(mine)}")
        refused = errors.pop("refused after decoding", 0)
        rows["typed errors before decoding"].append(f"{sum(errors.values())} ({_counts(errors)})")
        rows["calls refused after decoding (a key written twice)"].append(f"{refused} / {len(mine)}")
        rows["calls whose arguments validate (jsonschema)"].append(
            f"{sum(r['valid'] for r in called)} / {len(called)}")
        rows["right tool picked, all sets"].append(
            _share(sum(r["name"] == r["expected"] for r in called), len(called)))
        rows["right tool picked, sets with 2+ tools"].append(
            _share(sum(r["name"] == r["expected"] for r in multi), len(multi)))
        rows["calls with the arguments as asked"].append(_share(sum(map(as_asked, mine)), len(mine)))
        rows["argument values right"].append(
            _share(sum(p for p, _ in right_values), sum(w for _, w in right_values)))
        rows["mean tokens per turn"].append(f"{sum(tokens) / max(1, len(tokens)):.1f}")
    sets = len({r["file"] for r in records})
    lines = [
        "# Function calling on BFCL tool sets (embedded SmolLM2-135M, greedy), per payload whitespace",
        "",
        "Code path: `structgen.call_tools_with_details(tools, prompt, tool_choice=\"required\", "
        "max_calls=1, max_tokens=N, whitespace=<mode>)`, everything else at call_tools' defaults; "
        f"`call_tools`' default whitespace is `{default}` (the bold column).",
        "",
        f"Command: `{command}`  ",
        f"Tool sets: {sets}; each decoded once per mode, the modes interleaved per set.",
        "",
        "| measure | " + " | ".join(columns) + " |",
        "|---|" + "--:|" * len(columns),
        *(f"| {name} | " + " | ".join(values) + " |" for name, values in rows.items()),
        "",
    ]
    return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{part} / {whole} ({100 * part / max(1, whole):.0f}%)"


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items()) or "none"


def plot(records: list[dict], modes: list[str]) -> None:
    plt = pyplot()
    if plt is None:
        return
    measures = {"right tool": lambda r: r["status"] == "called" and r["name"] == r["expected"],
                "arguments as asked": as_asked}
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    width = 0.8 / len(modes)
    for offset, mode in enumerate(modes):
        mine = [r for r in records if r["whitespace"] == mode]
        shares = [100 * sum(map(test, mine)) / max(1, len(mine)) for test in measures.values()]
        axis.bar([i + offset * width for i in range(len(measures))], shares, width, label=mode)
    axis.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(measures))], list(measures))
    axis.set_ylabel("% of tool sets")
    axis.set_ylim(0, 100)
    axis.set_title("BFCL tool sets, SmolLM2-135M, per payload whitespace")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(modes), frameon=False)
    figure.tight_layout()
    figure.savefig(RESULTS / "tool_calls.png", dpi=120)


def main() -> None:
    from structgen.schema import WHITESPACE_MODES

    bounded = [m for m in WHITESPACE_MODES if m != "flexible"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--modes", default=",".join(bounded),
                        help="comma-separated payload whitespace modes (default: %(default)s)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := set(modes) - set(WHITESPACE_MODES):
        parser.error(f"structgen has no whitespace mode {', '.join(sorted(unknown))} "
                     f"(it has {', '.join(WHITESPACE_MODES)})")
    files = sorted(args.data.glob("BFCL_*.json"))
    if not files:
        parser.error(f"no BFCL_*.json files in {args.data}")
    if len(files) > args.sample:
        files = sorted(random.Random(args.seed).sample(files, args.sample))
    records = run(files, args.max_tokens, modes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "tool_calls.jsonl", "w") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    text = report(records, "python benchmarks/tool_calls.py " + " ".join(sys.argv[1:]), modes,
                  default_whitespace())
    (RESULTS / "tool_calls.md").write_text(text)
    plot(records, modes)
    print(text)


if __name__ == "__main__":
    main()
