"""End-to-end validity: generate with the embedded model for JSONSchemaBench schemas under fixed budgets.

    python benchmarks/validity.py --pattern 'JME_*' --pattern 'Glaiveai2K---*' --sample 15 \
        --max-tokens 256 --max-tokens 128 [--engine structgen --engine xgrammar ...] [--threads 1]

(those are the defaults; ``--quick``: 2 files per pattern, max_tokens 64, written to validity_quick.*)

For each schema file (MaskBench layout, see shared/jsonschemabench/README.md) and each engine
(``--engine``, repeatable, default all):

- ``structgen``: compile the schema with structgen (a schema that cannot be compiled must fail with
  a typed StructgenError), then generate under each budget with the budget guarantee;
- ``outlines-core``, ``xgrammar``, ``llguidance``: outlines' ``Generator(model,
  JsonSchema(<schema as a JSON string>), backend=...)`` on the same transformers model and tokenizer;
- ``unconstrained``: the prompt alone, decoded by plain ``hf_model.generate`` (the Hermes JSON-mode
  reference setting: the schema is only in the system prompt).

Every engine gets the same prompt: structgen's Hermes JSON-mode system prompt holding the schema and
the same user turn, rendered by the tokenizer's chat template; greedy decoding. Every answer is
checked with ``jsonschema`` (with format checking), independently of the engines.

Time limits: structgen compiles in its own killable worker process (structgen's default limit).
outlines' constructions cannot be interrupted by ``signal.alarm`` (outlines-core and xgrammar compile
inside one native call that never returns to the interpreter), so the outlines engines run in a
worker subprocess holding its own copy of the model: a construction that exceeds
``--compile-timeout`` seconds (or a generation exceeding ``--generate-timeout``) gets the worker
killed and restarted, and is recorded as ``Timeout``; a worker that dies is ``WorkerCrashed``.

The budget: structgen gets each ``--max-tokens`` as its budget (it steers to a closed answer). The
other engines do not know the budget, so with greedy decoding the answer under a budget B is the
first B tokens of the answer under the largest budget: they generate once, at the largest budget,
and smaller budgets are that answer cut at B tokens (``--rerun-budgets`` generates each for real).

Writes benchmarks/results/validity.md, validity.jsonl (one line per schema and engine) and
validity.png.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

from _plotting import pyplot

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "jsonschemabench" / "dev"
ENGINES = ["structgen", "outlines-core", "xgrammar", "llguidance", "unconstrained"]
OUTLINES_BACKENDS = {"outlines-core": "outlines_core", "xgrammar": "xgrammar", "llguidance": "llguidance"}
DEFAULT_PATTERNS = ["JME_*", "Glaiveai2K---*"]


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


def one_line(error: BaseException | str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else ""


def greedy(pad_token_id: int, max_new_tokens: int) -> dict:
    return dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None,
                top_p=None, top_k=None, pad_token_id=pad_token_id)


def answer_length(ids: list[int], eos_token_id: int) -> int:
    """Tokens of one generated row up to and including its EOS (the rest is padding)."""
    return ids.index(eos_token_id) + 1 if eos_token_id in ids else len(ids)


# --- structgen --------------------------------------------------------------------------------


def run_structgen(structgen, model, schema, budgets: list[int]) -> dict:
    record = {"compile": "ok"}
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
    return record


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


# --- engines that do not know the budget: one generation, cut per budget ---------------------------


def outcomes_by_budget(generations: dict, budgets: list[int], schema, eos_token_id: int, decode) -> dict:
    """``generations``: budget -> ("ok", ids, seconds) or ("error", kind, message). Each budget
    gets its own generation if there is one, else the largest one's first ``budget`` tokens."""
    largest = max(generations)
    outcomes = {}
    for budget in budgets:
        source = budget if budget in generations else largest
        generation = generations[source]
        if generation[0] != "ok":
            outcomes[str(budget)] = {"status": "error", "error": generation[1], "message": generation[2]}
            continue
        ids = generation[1][:budget]
        kept = ids[:answer_length(ids, eos_token_id)]
        text = decode(kept)
        parses, valid = check(schema, text)
        outcome = {"status": "generated", "parses": parses, "valid": valid, "tokens": len(kept),
                   "seconds": generation[2] if source == budget else None,
                   "stop": "eos" if eos_token_id in kept else "max_tokens", "text": text[:2000]}
        if source != budget:
            outcome["cut_from"] = source
        outcomes[str(budget)] = outcome
    return outcomes


def generation_budgets(budgets: list[int], rerun: bool) -> list[int]:
    return sorted(set(budgets)) if rerun else [max(budgets)]


def run_unconstrained(model, messages, schema, budgets: list[int], rerun: bool) -> dict:
    """Hermes JSON mode without a constraint: the prompt only, plain hf generate, greedy."""
    import torch

    from structgen.prompts import render_chat

    ids = model.tokenizer(render_chat(model.tokenizer, messages), add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([ids], device=model.device)
    generations = {}
    for budget in generation_budgets(budgets, rerun):
        started = time.perf_counter()
        output = model.hf_model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         **greedy(model.tokenizer.pad_token_id, budget))
        generations[budget] = ("ok", output[0, len(ids):].tolist(), time.perf_counter() - started)
    record = {"compile": "ok", "compile_seconds": 0.0}
    record.update(outcomes_by_budget(generations, budgets, schema, model.eos_token_id, decoder(model)))
    return record


def decoder(model):
    """Token ids -> text the way outlines returns it (``batch_decode(skip_special_tokens=True)``)."""
    return lambda ids: model.tokenizer.decode(ids, skip_special_tokens=True)


# --- outlines' Generator, in a killable worker process ----------------------------------------------


def _outlines_worker(conn, threads: int | None) -> None:
    """Holds the model wrapped by outlines; builds Generators and generates on request."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    import outlines
    from outlines.inputs import Chat
    from outlines.types import JsonSchema

    import structgen

    model = structgen.load_model()
    om = outlines.from_transformers(model.hf_model, model.tokenizer)
    original = om._generate_output_seq
    captured = {}

    def keep_ids(prompts, inputs, **kwargs):  # outlines returns text only; keep the token ids
        captured["ids"] = original(prompts, inputs, **kwargs)
        return captured["ids"]

    om._generate_output_seq = keep_ids
    generator = None
    conn.send(("ready",))
    while True:
        message = conn.recv()
        started = time.perf_counter()
        if message[0] == "construct":
            _, backend, schema_text = message
            generator = None
            try:
                generator = outlines.Generator(om, JsonSchema(schema_text), backend=backend)
                if backend == "llguidance":
                    _check_llguidance(generator)
                conn.send(("ok", time.perf_counter() - started))
            except Exception as error:
                conn.send((type(error).__name__, one_line(error), time.perf_counter() - started))
        elif message[0] == "generate":
            _, messages, max_new_tokens = message
            try:
                generator(Chat(messages), **greedy(model.tokenizer.pad_token_id, max_new_tokens))
                conn.send(("ok", captured["ids"].reshape(-1).tolist(), time.perf_counter() - started))
            except Exception as error:
                conn.send((type(error).__name__, one_line(error), time.perf_counter() - started))
        else:
            return


class LLGuidanceGrammarError(Exception):
    """llguidance reports a grammar it cannot build as an errored matcher, not an exception."""


def _check_llguidance(generator) -> None:
    """outlines builds llguidance's matchers only at the first token (where an error becomes a
    warning); build one now, as that first step would, so a grammar error counts as a compile error."""
    import llguidance

    processor = generator.logits_processor
    matcher = llguidance.LLMatcher(processor.llg_tokenizer, processor.grammar)
    if matcher.is_error():
        raise LLGuidanceGrammarError(matcher.get_error())


class OutlinesRunner:
    """The worker process from the main side: every request has a time limit."""

    def __init__(self, threads: int | None, compile_timeout: float, generate_timeout: float):
        self.threads = threads
        self.compile_timeout, self.generate_timeout = compile_timeout, generate_timeout
        self.process = None
        self.conn = None
        self.restarts = 0

    def _start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_outlines_worker, args=(child, self.threads), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(600):
            self._stop()
            raise RuntimeError("the outlines worker did not start within 600 s")
        self.conn.recv()

    def _stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.conn.close()
            self.restarts += 1
        self.process = self.conn = None

    def close(self) -> None:
        if self.process is not None:
            try:
                self.conn.send(("stop",))
                self.process.join(timeout=10)
            finally:
                if self.process.is_alive():
                    self.process.kill()
                    self.process.join()
            self.process = self.conn = None

    def call(self, message: tuple, timeout: float) -> tuple:
        if self.process is None:
            self._start()
        self.conn.send(message)
        if not self.conn.poll(timeout):
            self._stop()
            return ("Timeout", f"no answer within {timeout:g} s: worker killed", timeout)
        try:
            return self.conn.recv()
        except EOFError:
            code = self.process.exitcode
            self._stop()
            return ("WorkerCrashed", f"the worker died (exit code {code})", None)

    def run(self, engine: str, schema, messages, budgets: list[int], rerun: bool, model) -> dict:
        reply = self.call(("construct", OUTLINES_BACKENDS[engine], json.dumps(schema)), self.compile_timeout)
        record = {"compile": reply[0], "compile_seconds": reply[-1]}
        if reply[0] != "ok":
            record["compile_message"] = reply[1]
            return record
        generations = {}
        for budget in generation_budgets(budgets, rerun):
            generations[budget] = self.call(("generate", messages, budget), self.generate_timeout)
        record.update(outcomes_by_budget(generations, budgets, schema, model.eos_token_id, decoder(model)))
        return record


# --- the run ------------------------------------------------------------------------------------


def run(files: list[Path], budgets: list[int], engines: list[str] | None = None, *,
        threads: int | None = None, compile_timeout: float = 60.0, generate_timeout: float = 600.0,
        rerun: bool = False) -> list[dict]:
    import warnings

    import torch
    import transformers

    import structgen
    from structgen.prompts import json_mode_messages

    engines = engines or ["structgen"]
    warnings.filterwarnings("ignore", module="transformers")
    transformers.logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    model = structgen.load_model()
    runner = None
    if any(engine in OUTLINES_BACKENDS for engine in engines):
        runner = OutlinesRunner(threads, compile_timeout, generate_timeout)
    records = []
    try:
        for number, path in enumerate(files, 1):
            schema = json.loads(path.read_text())["schema"]
            messages = json_mode_messages(prompt_for(schema), schema)  # the same prompt for every engine
            for engine in engines:
                if engine == "structgen":
                    outcome = run_structgen(structgen, model, schema, budgets)
                elif engine == "unconstrained":
                    outcome = run_unconstrained(model, messages, schema, budgets, rerun)
                else:
                    outcome = runner.run(engine, schema, messages, budgets, rerun, model)
                record = {"file": path.name, "engine": engine, **outcome}
                records.append(record)
                print(f"[{number}/{len(files)}] {path.name} {engine}: {summary_line(record, budgets)}",
                      flush=True)
    finally:
        if runner is not None:
            runner.close()
    return records


def summary_line(record: dict, budgets: list[int]) -> str:
    if record["compile"] != "ok":
        return f"compile error {record['compile']}"
    parts = []
    for budget in budgets:
        outcome = record[str(budget)]
        if outcome["status"] != "generated":
            parts.append(f"{budget}: {outcome['status']}")
        else:
            verdict = "valid" if outcome["valid"] else ("INVALID" if outcome["parses"] else "NO PARSE")
            parts.append(f"{budget}: {verdict} ({outcome['tokens']} tok)")
    return ", ".join(parts)


def percent(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.0f}%)" if total else f"{count} (-)"


def engine_rows(records: list[dict], budgets: list[int], engine: str) -> list[dict]:
    """Per budget: the counts of the table for one engine."""
    mine = [r for r in records if r.get("engine", "structgen") == engine]
    compiled = [r for r in mine if r["compile"] == "ok"]
    rows = []
    for budget in budgets:
        outcomes = [r[str(budget)] for r in compiled]
        generated = [o for o in outcomes if o["status"] == "generated"]
        tokens = [o["tokens"] for o in generated if o["tokens"] is not None]
        rows.append(dict(
            engine=engine, budget=budget, attempted=len(mine), compiled=len(compiled),
            answers=len(generated), parses=sum(o["parses"] for o in generated),
            valid=sum(o["valid"] for o in generated),
            mean_tokens=sum(tokens) / len(tokens) if tokens else 0.0,
            by_budget=sum(o["stop"] == "max_tokens" for o in generated),
            too_small=sum(o["status"] == "budget-too-small" for o in outcomes),
            errors=sum(o["status"] == "error" for o in outcomes)))
    return rows


def report(records: list[dict], budgets: list[int], command: str, engines: list[str] | None = None,
           header: list[str] | None = None) -> str:
    engines = engines or ["structgen"]
    lines = [
        "# End-to-end validity on JSONSchemaBench schemas (embedded SmolLM2-135M, greedy)",
        "",
        f"Command: `{command}`  ",
        *(header or []),
        "",
    ]
    for engine in engines:
        mine = [r for r in records if r.get("engine", "structgen") == engine]
        errors = Counter(r["compile"] for r in mine if r["compile"] != "ok")
        listed = ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"
        lines.append(f"- {engine}: schemas {len(mine)}; compiled {sum(r['compile'] == 'ok' for r in mine)}; "
                     f"compile errors: {listed}")
    lines += [
        "",
        "| engine | max_tokens | attempted | compiled | answers | parses (of compiled) | schema-valid "
        "| valid / attempted | valid / compiled | mean tokens | stopped by budget | budget below minimum "
        "| generation errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for engine in engines:
        for row in engine_rows(records, budgets, engine):
            compiled = "n/a" if engine == "unconstrained" else str(row["compiled"])
            lines.append(
                f"| {engine} | {row['budget']} | {row['attempted']} | {compiled} | {row['answers']} "
                f"| {percent(row['parses'], row['compiled'])} | {row['valid']} "
                f"| {100 * row['valid'] / max(1, row['attempted']):.0f}% "
                f"| {100 * row['valid'] / max(1, row['compiled']):.0f}% | {row['mean_tokens']:.1f} "
                f"| {row['by_budget']} | {row['too_small']} | {row['errors']} |")
    lines.append("")
    for engine in engines:
        mine = [r for r in records if r.get("engine", "structgen") == engine]
        compiled = [r for r in mine if r["compile"] == "ok"]
        invalid = [f"{r['file']}@{b}" + ("" if r[str(b)]["parses"] else " (no parse)")
                   for r in compiled for b in budgets
                   if r[str(b)]["status"] == "generated" and not r[str(b)]["valid"]]
        lines += [f"Invalid answers, {engine} ({len(invalid)}): " + (", ".join(invalid) or "none"), ""]
        failed = [r for r in mine if r["compile"] != "ok"]
        if failed:
            typed = " (typed)" if engine == "structgen" else ""
            lines += [f"Compile errors, {engine}{typed}:", ""]
            lines += [f"- `{r['file']}`: {r['compile']}: {r.get('compile_message', '')}" for r in failed]
            lines.append("")
        generation_errors = [(r["file"], b, r[str(b)]) for r in compiled for b in budgets
                             if r[str(b)]["status"] == "error"]
        if generation_errors:
            lines += [f"Generation errors, {engine}:", ""]
            lines += [f"- `{f}`@{b}: {o['error']}: {o['message']}" for f, b, o in generation_errors]
            lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], budgets: list[int], name: str, engines: list[str] | None = None) -> None:
    plt = pyplot()
    if plt is None:
        return
    engines = engines or ["structgen"]
    figure, (bars, histogram) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(budgets)
    for i, budget in enumerate(budgets):
        rows = [engine_rows(records, [budget], engine)[0] for engine in engines]
        rates = [100 * r["valid"] / max(1, r["attempted"]) for r in rows]
        bars.bar([j + i * width for j in range(len(engines))], rates, width=width,
                 label=f"max_tokens={budget}")
    bars.set_xticks([j + width * (len(budgets) - 1) / 2 for j in range(len(engines))], engines, fontsize=8)
    bars.set_ylabel("schema-valid answers, % of attempted")
    bars.set_ylim(0, 105)
    bars.legend(fontsize=8)
    bars.set_title("schema-valid (jsonschema) per engine")
    first = "structgen" if "structgen" in engines else engines[0]
    compiled = [r for r in records if r.get("engine", "structgen") == first and r["compile"] == "ok"]
    for budget in budgets:
        tokens = sorted(r[str(budget)]["tokens"] for r in compiled
                        if r[str(budget)]["status"] == "generated" and r[str(budget)]["tokens"])
        histogram.hist(tokens, bins=20, alpha=0.6, label=f"max_tokens={budget}")
    histogram.set_xlabel("tokens per answer")
    histogram.set_ylabel("schemas")
    histogram.set_title(f"{first} answers")
    histogram.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(RESULTS / f"{name}.png", dpi=120)


def header_lines(args, files: list[Path], patterns: list[str], engines: list[str], seconds: float,
                 load: tuple) -> list[str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    import structgen

    names = ["structgen", "outlines", "outlines-core", "xgrammar", "llguidance", "transformers", "torch"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    tokenizer = structgen.load_model().tokenizer
    outlines_note = ""
    if any(engine in OUTLINES_BACKENDS for engine in engines):
        outlines_note = (f" outlines engines: `outlines.Generator(model, JsonSchema(json.dumps(schema)), "
                         f"backend=...)` in a killable worker process, construction limit "
                         f"{args.compile_timeout:g} s, generation limit {args.generate_timeout:g} s.")
    cut = ("each budget generated for real" if args.rerun_budgets else
           "outlines and unconstrained answers for smaller budgets are the "
           f"max_tokens={max(args.max_tokens)} "
           "answer cut at the budget (greedy, so identical to a real run; `--rerun-budgets` generates each)")
    return [
        f"Schemas: {len(files)} files ({', '.join(patterns)}; at most {args.sample} per pattern, seed "
        f"{args.seed}). Engines: {', '.join(engines)}.  ",
        f"Versions: {', '.join(found)}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} thread(s); "
        f"load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
        f"whole run {seconds / 60:.1f} min.  ",
        f"Tokenizer: SmolLM2-135M-Instruct's ({type(tokenizer).__name__}, {len(tokenizer)} tokens).  ",
        "Prompt: structgen's Hermes JSON-mode system prompt with the schema + the same user turn, for "
        "every engine; greedy. structgen compiles in its own worker (default 60 s limit)." + outlines_note
        + f" Budgets: {cut}.  ",
        "Schema-valid is judged by `jsonschema` with format checking, independently of every engine; "
        "a schema an engine cannot compile counts as attempted but not valid.",
    ]


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pattern", action="append", default=None,
                        help="file-name glob, repeatable (default: JME_* and Glaiveai2K---*)")
    parser.add_argument("--sample", type=int, default=None,
                        help="at most this many files per pattern (default 15; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, action="append", default=None,
                        help="budget, repeatable (default 256 and 128; 64 with --quick)")
    parser.add_argument("--engine", action="append", choices=ENGINES, default=None,
                        help="repeatable (default: all)")
    parser.add_argument("--compile-timeout", type=float, default=60.0,
                        help="seconds for one outlines Generator construction (structgen's default: 60)")
    parser.add_argument("--generate-timeout", type=float, default=600.0,
                        help="seconds for one outlines generation")
    parser.add_argument("--rerun-budgets", action="store_true",
                        help="generate every budget for real for the engines that do not know the budget")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine two threads stall "
                        "each other and run several times slower; 0: torch's default)")
    parser.add_argument("--quick", action="store_true",
                        help="2 files per pattern, max_tokens 64, results in validity_quick.* (make bench)")
    parser.add_argument("--name", default=None,
                        help="results file name stem (default: validity, or validity_quick with --quick)")
    args = parser.parse_args()
    patterns = args.pattern or DEFAULT_PATTERNS
    if args.sample is None:
        args.sample = 2 if args.quick else 15
    args.max_tokens = args.max_tokens or ([64] if args.quick else [256, 128])
    args.name = args.name or ("validity_quick" if args.quick else "validity")
    engines = [e for e in ENGINES if e in (args.engine or ENGINES)]
    budgets = args.max_tokens

    started, load = time.perf_counter(), os.getloadavg()
    files = select_files(args.data, patterns, args.sample, args.seed)
    records = run(files, budgets, engines, threads=args.threads, compile_timeout=args.compile_timeout,
                  generate_timeout=args.generate_timeout, rerun=args.rerun_budgets)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{args.name}.jsonl", "w") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    command = "python benchmarks/validity.py " + " ".join(
        f"'{a}'" if any(c in a for c in "*?[ ") else a for a in sys.argv[1:])
    header = header_lines(args, files, patterns, engines, time.perf_counter() - started, load)
    text = report(records, budgets, command.strip(), engines, header)
    (RESULTS / f"{args.name}.md").write_text(text)
    plot(records, budgets, args.name, engines)
    print(text)


if __name__ == "__main__":
    main()
