"""Answer quality: field-level accuracy of extraction on a labelled set, per decoding path.

    python benchmarks/extraction.py [--modes compact,flexible] [--max-tokens 96] [--threads 1] [--quick]

The cases are ``benchmarks/data/extraction.jsonl``: one short text each, the name of one of the
small pydantic models below, and the gold value of every field (null for an optional field the
text does not give). Every row answers every case with the same prompt (structgen's Hermes
JSON-mode system prompt holding the model's schema, then ``PROMPT`` with the text as the user
turn, rendered by the tokenizer's chat template), greedy, with the same ``--max-tokens``:

- ``structgen whitespace=<mode>``: ``structgen.generate_with_details(Model, prompt,
  max_tokens=N, whitespace=<mode>)``, one row per whitespace mode structgen has
  (``structgen.schema.WHITESPACE_MODES``, else compact and flexible; ``--modes`` picks);
- ``unconstrained``: the Hermes JSON-mode reference setting: the same prompt decoded by plain
  ``hf_model.generate``, then the first JSON object found in the text;
- ``outlines``: ``outlines.Generator(outlines.from_transformers(hf_model, tokenizer), Model)``
  called on ``outlines.inputs.Chat(messages)`` (outlines' default backend and whitespace).

Scoring (``score``): every answer is parsed with ``json`` and checked with ``jsonschema`` (format
checking on) against the schema in the prompt, independently of every engine. A field is a key of
the gold value; keys of nested objects are fields of their own (``headquarters.city``). An answer
that does not parse or does not validate has all its fields wrong. Otherwise a field is right when
its value, normalised, equals the gold's: strings casefolded with runs of whitespace made one space
and ends stripped; numbers exactly (4 == 4.0, a string "4" is not 4); enums and dates are strings
(dates ISO 8601, as the schema requires), so exactly up to case; lists as multisets (order ignored,
every item counts); null and an absent key are the same (an optional field that should stay empty
is right only when it is empty).

Writes benchmarks/results/extraction.md, extraction.jsonl (one line per case and row) and
extraction.png (``--quick``: two cases per family, extraction_quick.*).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import random
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Literal, Optional

from _plotting import pyplot
from pydantic import BaseModel

HERE = Path(__file__).parent
DATA = HERE / "data" / "extraction.jsonl"
RESULTS = HERE / "results"
PROMPT = "Extract the data from this text as JSON.\n\nText: {text}"
BOOTSTRAP_ROUNDS = 2000


class Person(BaseModel):
    first_name: str
    last_name: str


class Purchase(BaseModel):
    quantity: int
    unit_price: float


class Feedback(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    topic: Literal["delivery", "price", "quality", "support"]


class Stay(BaseModel):
    check_in: date
    check_out: date


class Shopping(BaseModel):
    items: list[str]


class Languages(BaseModel):
    languages: list[str]


class Address(BaseModel):
    city: str
    country: str


class Company(BaseModel):
    name: str
    employees: int
    headquarters: Address


class Contact(BaseModel):
    name: str
    email: Optional[str] = None
    phone: Optional[str] = None


MODELS = {m.__name__: m for m in (Person, Purchase, Feedback, Stay, Shopping, Languages, Company, Contact)}


# --- scoring (no model needed; tests/test_extraction_scoring.py runs it) ------------------------------


def load_cases(path: Path = DATA) -> list[dict]:
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for case in cases:
        if case["model"] not in MODELS:
            raise ValueError(f"{case['id']}: unknown model {case['model']!r}")
        MODELS[case["model"]].model_validate(case["gold"])  # the gold itself must be a valid answer
    return cases


def normalise(value):
    """A hashable canonical form: see the module docstring for the rules."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("string", " ".join(value.split()).casefold())
    if isinstance(value, list):
        return ("list", frozenset(Counter(normalise(item) for item in value).items()))
    if isinstance(value, dict):
        return ("object", frozenset((k, normalise(v)) for k, v in value.items() if v is not None))
    raise TypeError(f"not a JSON value: {value!r}")


def gold_fields(gold: dict, prefix: str = "") -> dict:
    """Field path -> gold value; a nested object's keys are fields of their own."""
    fields = {}
    for key, value in gold.items():
        if isinstance(value, dict):
            fields.update(gold_fields(value, f"{prefix}{key}."))
        else:
            fields[f"{prefix}{key}"] = value
    return fields


def answer_at(answer, path: str):
    """The answer's value at a field path; None where it is absent."""
    for key in path.split("."):
        if not isinstance(answer, dict):
            return None
        answer = answer.get(key)
    return answer


def score(gold: dict, answer, valid: bool) -> dict:
    """Field path -> right or not. An invalid (or missing) answer has every field wrong."""
    return {path: valid and normalise(answer_at(answer, path)) == normalise(value)
            for path, value in gold_fields(gold).items()}


def first_json_object(text: str):
    """The first JSON object in free text (as a JSON-mode answer checked afterwards is read), or None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def is_valid(schema: dict, value) -> bool:
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER).is_valid(value)


def judge(case: dict, schema: dict, value) -> dict:
    """The scored outcome of one answer (``value``: the parsed JSON, None when nothing parsed)."""
    parsed = value is not None
    valid = parsed and is_valid(schema, value)
    fields = score(case["gold"], value, valid)
    return {"parsed": parsed, "valid": valid, "fields": fields, "right": sum(fields.values()),
            "total": len(fields),
            # what an invalid answer would have scored as written (reported, never counted)
            "right_as_written": sum(score(case["gold"], value, parsed).values())}


def bootstrap_interval(per_case: list[tuple[float, int]], seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of sum(a) / sum(total) over cases resampled with replacement.

    ``per_case``: (fields right, or a difference of fields right; fields) per case."""
    if not per_case:
        return (0.0, 0.0)
    rng = random.Random(seed)
    values = []
    for _ in range(BOOTSTRAP_ROUNDS):
        sample = [per_case[rng.randrange(len(per_case))] for _ in per_case]
        values.append(sum(a for a, _ in sample) / max(1, sum(n for _, n in sample)))
    values.sort()
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


# --- rows ---------------------------------------------------------------------------------------


def whitespace_modes() -> tuple[str, ...]:
    from structgen import schema

    return tuple(getattr(schema, "WHITESPACE_MODES", ("compact", "flexible")))


def default_whitespace() -> str:
    """The whitespace a user gets from ``generate`` without the argument (compile_constraint's
    default where generate leaves it to compile_constraint)."""
    import structgen

    default = inspect.signature(structgen.generate).parameters["whitespace"].default
    if not isinstance(default, str):
        default = inspect.signature(structgen.compile_constraint).parameters["whitespace"].default
    return default


def greedy(pad_token_id: int, max_new_tokens: int) -> dict:
    return dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None,
                top_p=None, top_k=None, pad_token_id=pad_token_id)


def kept_tokens(ids: list[int], eos_token_id: int) -> list[int]:
    """A generated row up to and including its EOS (the rest is padding)."""
    return ids[:ids.index(eos_token_id) + 1] if eos_token_id in ids else ids


class Rows:
    """Answers one case for one row: (text, parsed value or None, tokens, seconds, stop)."""

    def __init__(self, model, max_tokens: int):
        self.model, self.max_tokens = model, max_tokens
        self.outlines_model = None
        self.generators = {}
        self.captured = {}

    def structgen(self, mode: str, output_type, prompt: str):
        import structgen

        try:
            result = structgen.generate_with_details(output_type, prompt, model=self.model,
                                                     max_tokens=self.max_tokens, whitespace=mode)
        except structgen.OutputError as error:  # cannot happen by design; scored as invalid if it does
            return error.text, first_json_object(error.text), None, None, "output-error"
        return (result.text, json.loads(result.text), result.completion_tokens, result.seconds,
                result.stop_reason)

    def unconstrained(self, messages: list[dict]):
        import torch

        from structgen.prompts import render_chat

        tokenizer = self.model.tokenizer
        ids = tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]
        input_ids = torch.tensor([ids], device=self.model.device)
        started = time.perf_counter()
        output = self.model.hf_model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                              **greedy(tokenizer.pad_token_id, self.max_tokens))
        seconds = time.perf_counter() - started
        return self._finish(output[0, len(ids):].tolist(), seconds)

    def outlines(self, output_type, messages: list[dict]):
        import outlines
        from outlines.inputs import Chat

        if self.outlines_model is None:
            self.outlines_model = outlines.from_transformers(self.model.hf_model, self.model.tokenizer)
            original = self.outlines_model._generate_output_seq

            def keep_ids(prompts, inputs, **kwargs):  # outlines returns text only; keep the token ids
                self.captured["ids"] = original(prompts, inputs, **kwargs)
                return self.captured["ids"]

            self.outlines_model._generate_output_seq = keep_ids
        if output_type not in self.generators:  # construction (its compile) is not timed
            self.generators[output_type] = outlines.Generator(self.outlines_model, output_type)
        started = time.perf_counter()
        self.generators[output_type](Chat(messages), **greedy(self.model.tokenizer.pad_token_id,
                                                              self.max_tokens))
        seconds = time.perf_counter() - started
        return self._finish(self.captured["ids"].reshape(-1).tolist(), seconds)

    def _finish(self, ids: list[int], seconds: float):
        kept = kept_tokens(ids, self.model.eos_token_id)
        text = self.model.tokenizer.decode(kept, skip_special_tokens=True)
        stop = "eos" if self.model.eos_token_id in kept else "max_tokens"
        return text, first_json_object(text), len(kept), seconds, stop


def run(cases: list[dict], rows: list[str], max_tokens: int) -> list[dict]:
    import structgen
    from structgen.prompts import json_mode_messages
    from structgen.types import as_output_type

    model = structgen.load_model()
    answer = Rows(model, max_tokens)
    records = []
    for row in rows:
        started = time.perf_counter()
        for case in cases:
            output_type = MODELS[case["model"]]
            schema = as_output_type(output_type).schema  # what structgen puts in the prompt
            prompt = PROMPT.format(text=case["text"])
            messages = json_mode_messages(prompt, schema)
            if row.startswith("structgen "):
                outcome = answer.structgen(row.split("=", 1)[1], output_type, prompt)
            elif row == "unconstrained":
                outcome = answer.unconstrained(messages)
            else:
                outcome = answer.outlines(output_type, messages)
            text, value, tokens, seconds, stop = outcome
            record = {"id": case["id"], "family": case["family"], "row": row, "text": text,
                      "tokens": tokens, "seconds": seconds, "stop": stop, **judge(case, schema, value)}
            records.append(record)
            wrong = [path for path, right in record["fields"].items() if not right]
            print(f"{row} {case['id']}: {record['right']}/{record['total']}"
                  f"{'' if record['valid'] else ' INVALID' if record['parsed'] else ' NO PARSE'}"
                  f"{' wrong: ' + ', '.join(wrong) if wrong and record['valid'] else ''} "
                  f"({tokens} tok) {text!r}", flush=True)
        print(f"-- {row}: {time.perf_counter() - started:.0f} s", flush=True)
    return records


# --- the report ---------------------------------------------------------------------------------


def summarise(records: list[dict], row: str, default_row: str, subset: set[str] | None) -> dict:
    mine = [r for r in records if r["row"] == row]
    base = {r["id"]: r for r in records if r["row"] == default_row}
    in_subset = [r for r in mine if subset is None or r["id"] in subset]
    tokens = [r["tokens"] for r in mine if r["tokens"] is not None]
    seconds = [r["seconds"] for r in mine if r["seconds"] is not None]
    right, total = sum(r["right"] for r in mine), sum(r["total"] for r in mine)
    paired = [(r["right"] - base[r["id"]]["right"], r["total"]) for r in mine if r["id"] in base]
    return dict(
        row=row, cases=len(mine), right=right, total=total,
        interval=bootstrap_interval([(r["right"], r["total"]) for r in mine]),
        difference=sum(a for a, _ in paired) / max(1, sum(n for _, n in paired)),
        difference_interval=bootstrap_interval(paired),
        cases_all_right=sum(r["right"] == r["total"] for r in mine),
        parsed=sum(r["parsed"] for r in mine), valid=sum(r["valid"] for r in mine),
        subset_right=sum(r["right"] for r in in_subset), subset_total=sum(r["total"] for r in in_subset),
        tokens=sum(tokens) / max(1, len(tokens)), seconds=sum(seconds) / max(1, len(seconds)),
        by_budget=sum(r["stop"] == "max_tokens" for r in mine),
        as_written=sum(r["right_as_written"] for r in mine if r["parsed"] and not r["valid"]))


def pct(count: int, total: int) -> str:
    return f"{count}/{total} ({100 * count / total:.0f}%)" if total else f"{count}/{total}"


def report(records: list[dict], rows: list[str], default_row: str, cases: list[dict],
           header: list[str]) -> str:
    unconstrained_parsed = ({r["id"] for r in records if r["row"] == "unconstrained" and r["parsed"]}
                            if "unconstrained" in rows else None)
    summaries = [summarise(records, row, default_row, unconstrained_parsed) for row in rows]
    families = sorted({c["family"] for c in cases}, key=[c["family"] for c in cases].index)
    subset_note = (f"the {len(unconstrained_parsed)} cases where unconstrained parsed"
                   if unconstrained_parsed is not None else "all cases (no unconstrained row)")
    lines = [
        *header,
        "",
        "| row | fields right | 95% CI | vs default (95% CI) | cases all right | parsed | valid "
        f"| fields right on {subset_note} | tokens/answer | s/answer | closed by budget |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        name = f"**{s['row']}** (`generate`'s default)" if s["row"] == default_row else s["row"]
        low, high = s["interval"]
        versus = ("-" if s["row"] == default_row or default_row not in rows else
                  f"{100 * s['difference']:+.1f} pts ({100 * s['difference_interval'][0]:+.1f}, "
                  f"{100 * s['difference_interval'][1]:+.1f})")
        lines.append(
            f"| {name} | {pct(s['right'], s['total'])} | {100 * low:.0f}-{100 * high:.0f}% | {versus} "
            f"| {s['cases_all_right']}/{s['cases']} | {s['parsed']}/{s['cases']} | {s['valid']}/{s['cases']} "
            f"| {pct(s['subset_right'], s['subset_total'])} | {s['tokens']:.1f} | {s['seconds']:.2f} "
            f"| {s['by_budget']} |")
    lines += ["", "Fields right per family:", "",
              "| row | " + " | ".join(f"{f} ({fields_in(cases, f)})" for f in families) + " |",
              "|---|" + "--:|" * len(families)]
    for row in rows:
        cells = []
        for family in families:
            mine = [r for r in records if r["row"] == row and r["family"] == family]
            cells.append(pct(sum(r["right"] for r in mine), sum(r["total"] for r in mine)))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    for s in summaries:
        if s["parsed"] > s["valid"]:
            lines.append(f"- {s['row']}: {s['parsed'] - s['valid']} answers parsed but failed validation "
                         f"(counted all wrong); scored as written they would have had {s['as_written']} "
                         "fields right.")
    lines += ["", "Answers that are not all right (row: case: fields wrong: text):", ""]
    for row in rows:
        for r in records:
            if r["row"] == row and r["right"] < r["total"]:
                wrong = "all (no parse)" if not r["parsed"] else "all (invalid)" if not r["valid"] else \
                    ", ".join(p for p, ok in r["fields"].items() if not ok)
                lines.append(f"- {row}: {r['id']}: {wrong}: `{json.dumps(r['text'])[1:-1][:200]}`")
    lines.append("")
    return "\n".join(lines)


def fields_in(cases: list[dict], family: str) -> int:
    return sum(len(gold_fields(c["gold"])) for c in cases if c["family"] == family)


def plot(records: list[dict], rows: list[str], cases: list[dict], name: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    families = sorted({c["family"] for c in cases}, key=[c["family"] for c in cases].index)
    groups = ["all", *families]
    figure, axis = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        rates = []
        for group in groups:
            mine = [r for r in records if r["row"] == row and group in ("all", r["family"])]
            rates.append(100 * sum(r["right"] for r in mine) / max(1, sum(r["total"] for r in mine)))
        axis.bar([j + i * width for j in range(len(groups))], rates, width=width, label=row)
    axis.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(groups))], groups)
    axis.set_ylabel("fields right, %")
    axis.set_ylim(0, 105)
    axis.set_title(f"Extraction accuracy, SmolLM2-135M, greedy ({len(cases)} cases)")
    axis.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    figure.tight_layout()
    figure.savefig(RESULTS / f"{name}.png", dpi=120)


def header_lines(args, rows, default_row, cases, seconds, load, commit) -> list[str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    names = ["structgen", "outlines", "outlines-core", "transformers", "torch"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    paths = []
    for row in rows:
        if row.startswith("structgen "):
            mode = row.split("=", 1)[1]
            paths.append(f"`{row}` = `structgen.generate_with_details(Model, prompt, "
                         f"max_tokens={args.max_tokens}, whitespace=\"{mode}\")`")
        elif row == "unconstrained":
            paths.append("`unconstrained` = the same prompt through `hf_model.generate` (greedy), first JSON "
                         "object in the text")
        else:
            paths.append("`outlines` = `outlines.Generator(outlines.from_transformers(hf_model, tokenizer), "
                         "Model)(Chat(messages))` (greedy, outlines' default backend and whitespace)")
    families = Counter(c["family"] for c in cases)
    return [
        "Code paths: " + "; ".join(paths)
        + f". `generate`'s default whitespace is `{default_row.split('=')[1]}` (the bold row).",
        "",
        "# Extraction accuracy on the embedded model (SmolLM2-135M-Instruct, greedy)",
        "",
        f"Command: `{' '.join(['python benchmarks/extraction.py', *sys.argv[1:]])}`  ",
        f"Code: structgen commit {commit}; whitespace modes in structgen: {', '.join(whitespace_modes())}.  ",
        f"Cases: {len(cases)} from `benchmarks/data/extraction.jsonl` ("
        + ", ".join(f"{f} {n}" for f, n in families.items())
        + f"), {sum(len(gold_fields(c['gold'])) for c in cases)} fields.  ",
        f"Prompt: structgen's Hermes JSON-mode system prompt with the model's schema, user turn "
        f"`{json.dumps(PROMPT)[1:-1]}`; the same for every row; greedy; max_tokens {args.max_tokens} "
        "for every row.  ",
        f"Versions: {', '.join(found)}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} thread(s); "
        f"load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
        f"whole run {seconds / 60:.1f} min.",
        "",
        "Scoring: an answer that does not parse or fails `jsonschema` validation has all its fields wrong; "
        "strings compare casefolded with whitespace collapsed, numbers exactly, enums and ISO dates as "
        "strings, lists as multisets, null = absent (the rules are in the script's docstring). "
        f"95% CI: percentile bootstrap over cases ({BOOTSTRAP_ROUNDS} resamples, seed 0). "
        "\"vs default\": fields right minus the default row's on the same cases, in points of all fields. "
        "Tokens per answer count the end-of-turn token; s/answer is the decoding call alone (compiles and "
        "outlines' Generator construction excluded). \"Closed by budget\": structgen rows, answers the "
        "budget guarantee closed; other rows, answers cut off at max_tokens.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--modes", default=None,
                        help="comma-separated structgen whitespace modes (default: all structgen has)")
    parser.add_argument("--rows", default="structgen,unconstrained,outlines",
                        help="comma-separated: structgen (one row per mode), unconstrained, outlines")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: two threads stall each other on a shared 2-core "
                        "machine; 0: torch's default)")
    parser.add_argument("--quick", action="store_true",
                        help="two cases per family, results in extraction_quick.*")
    parser.add_argument("--name", default=None,
                        help="results file stem (default extraction, or extraction_quick)")
    args = parser.parse_args()

    import subprocess
    import warnings

    import torch
    import transformers

    warnings.filterwarnings("ignore", module="transformers")
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",") if args.modes else list(whitespace_modes())
    unknown = set(modes) - set(whitespace_modes())
    if unknown:
        parser.error(f"structgen has no whitespace mode {', '.join(sorted(unknown))} "
                     f"(it has {', '.join(whitespace_modes())})")
    wanted = args.rows.split(",")
    rows = ([f"structgen whitespace={m}" for m in modes] if "structgen" in wanted else [])
    rows += [r for r in ("unconstrained", "outlines") if r in wanted]
    default_row = f"structgen whitespace={default_whitespace()}"
    cases = load_cases(args.data)
    if args.quick:
        seen = Counter()
        cases = [c for c in cases if (seen.update([c["family"]]) or seen[c["family"]]) <= 2]
    name = args.name or ("extraction_quick" if args.quick else "extraction")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip() or "unknown"
    diff = subprocess.run(["git", "diff", "HEAD", "--", "../structgen"], capture_output=True, cwd=HERE).stdout
    if diff:
        digest = hashlib.sha256(diff).hexdigest()[:12]
        commit += f" plus uncommitted changes to structgen/ (diff sha256 {digest})"

    started, load = time.perf_counter(), os.getloadavg()
    records = run(cases, rows, args.max_tokens)
    header = header_lines(args, rows, default_row, cases, time.perf_counter() - started, load, commit)
    text = report(records, rows, default_row, cases, header)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    with open(RESULTS / f"{name}.jsonl", "w") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    plot(records, rows, cases, name)
    print(text)


if __name__ == "__main__":
    main()
