"""Decode overhead of constraints: structgen vs outlines' Generator on each of its backends.

    python benchmarks/decode_overhead.py [--rounds 2] [--max-new-tokens 32] [--threads 1] [--quick]

(``--quick``: 1 round of 16 tokens, written to decode_overhead_quick.md/.png instead.)

On the embedded SmolLM2-135M, CPU, greedy, for the Character example of the README with the Hermes
JSON-mode prompt (built by structgen, the same token ids for every engine), at batch 1 (one prompt)
and batch 8 (eight different prompts), it measures ms/token of

- structgen: ``generate_with_details`` (batch 1) and ``generate_batch_with_details`` (batch 8), vs
  structgen's own decoding loop with no constraint (``Unconstrained``, as json_mode.py does);
- outlines' ``Generator(model, JsonSchema(...), backend=B)`` for B in outlines_core, xgrammar,
  llguidance, called with the chat (batch 1) or ``.batch`` (batch 8), vs plain ``hf_model.generate``
  with the same greedy settings (outlines' unconstrained path).

ms/token is wall time of the whole call (prompt rendering and tokenisation included) divided by the
tokens in the answers (EOS included). Every baseline does the same forward work as the constrained
run it is paired with in that round: the same prompts and the same number of decode steps per row
(structgen's loop drops rows as they end, so each baseline row writes exactly that row's tokens;
``hf_model.generate`` keeps every row until the longest ends, so its baseline runs all rows for the
longest row's length, like the constrained call does; backends that took the same number of steps
in a round share one baseline call). The ratio is constrained / baseline wall time.

Compiles are excluded: constraints and Generators are built first (their times are reported), then
every variant and baseline makes one full warm-up call before the timed rounds, which are
interleaved (all variants once per round) and summarised by medians. torch runs on ``--threads``
CPU threads (1 by default, for stable timings on a shared 2-core machine). Writes
benchmarks/results/decode_overhead.md and .png.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Literal

from _plotting import pyplot
from pydantic import BaseModel, Field

RESULTS = Path(__file__).parent / "results"
NAMES = ["Goku", "Vegeta", "Piccolo", "Gohan", "Krillin", "Bulma", "Trunks", "Frieza"]
PROMPTS = [f"Describe {name} from Dragon Ball Z." for name in NAMES]
BACKENDS = ["outlines_core", "xgrammar", "llguidance"]
BATCHES = [1, 8]


class Character(BaseModel):
    name: str
    species: Literal["human", "saiyan", "namekian"]
    age: int = Field(ge=0)
    attacks: list[str]


class Measurement:
    """One timed call: wall seconds, tokens kept in the answers, and the per-row token counts."""

    def __init__(self, seconds: float, row_tokens: list[int], texts: list[str] | None = None):
        self.seconds = seconds
        self.row_tokens = row_tokens
        self.texts = texts or []

    @property
    def tokens(self) -> int:
        return sum(self.row_tokens)

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.seconds / max(1, self.tokens)


# --- structgen --------------------------------------------------------------------------------


class StructgenVariant:
    name = "structgen"

    def __init__(self, model, max_new_tokens: int):
        import structgen

        self.model, self.max_new_tokens = model, max_new_tokens
        started = time.perf_counter()
        self.constraint = structgen.compile_constraint(Character, model.tokenizer_info)
        self.construct_seconds = time.perf_counter() - started

    def constrained(self, prompts: list[str]) -> Measurement:
        import structgen

        started = time.perf_counter()
        if len(prompts) == 1:
            results = [structgen.generate_with_details(self.constraint, prompts[0], model=self.model,
                                                       max_tokens=self.max_new_tokens)]
        else:
            results = structgen.generate_batch_with_details(self.constraint, prompts, model=self.model,
                                                            batch_size=len(prompts),
                                                            max_tokens=self.max_new_tokens)
        seconds = time.perf_counter() - started
        for result in results:
            if isinstance(result, Exception):
                raise result
        return Measurement(seconds, [r.completion_tokens for r in results], [r.text for r in results])

    def baseline(self, prompts: list[str], reference: Measurement, shared: dict) -> Measurement:
        """structgen's decoding loop with no constraint, each row writing exactly its reference
        row's token count (EOS id -1 so it never stops early)."""
        from structgen.decoding.generate import chat_ids, messages_for
        from structgen.decoding.loop import Row, Sampling, Unconstrained, decode_rows

        started = time.perf_counter()
        rows = [Row(prompt_ids=chat_ids(self.model, messages_for(self.constraint, prompt)),
                    matcher=Unconstrained(eos_token_id=-1, max_tokens=n))
                for prompt, n in zip(prompts, reference.row_tokens)]
        decode_rows(self.model, rows, Sampling())
        seconds = time.perf_counter() - started
        return Measurement(seconds, [len(row.tokens) for row in rows])


# --- outlines ---------------------------------------------------------------------------------


class OutlinesVariant:
    """outlines' Generator on one backend; baseline: hf_model.generate with the same settings."""

    def __init__(self, model, outlines_model, backend: str, max_new_tokens: int):
        import json

        import outlines
        from outlines.types import JsonSchema

        self.model, self.om, self.backend = model, outlines_model, backend
        self.name = f"outlines {backend}"
        self.max_new_tokens = max_new_tokens
        schema = json.dumps(Character.model_json_schema())
        started = time.perf_counter()
        self.generator = outlines.Generator(outlines_model, JsonSchema(schema), backend=backend)
        self.construct_seconds = time.perf_counter() - started
        self.schema = Character.model_json_schema()

    def chats(self, prompts: list[str]):
        from outlines.inputs import Chat

        from structgen.prompts import json_mode_messages

        return [Chat(json_mode_messages(prompt, self.schema)) for prompt in prompts]

    def constrained(self, prompts: list[str]) -> Measurement:
        settings = greedy(self.model, self.max_new_tokens)
        started = time.perf_counter()
        if len(prompts) == 1:
            texts = [self.generator(self.chats(prompts)[0], **settings)]
        else:
            texts = self.generator.batch(self.chats(prompts), **settings)
        seconds = time.perf_counter() - started
        ids = self.om.last_generated_ids
        if ids.dim() == 1:
            ids = ids[None, :]
        return Measurement(seconds, [answer_length(row.tolist(), self.model.eos_token_id) for row in ids],
                           list(texts))

    def baseline(self, prompts: list[str], reference: Measurement, shared: dict) -> Measurement:
        """Plain hf generate, greedy, every row forced to the longest reference row's length (the
        number of steps the constrained call took); credited with the reference's tokens. Backends
        that took the same number of steps in a round share one baseline call (``shared``)."""
        steps = max(reference.row_tokens)
        if steps not in shared:
            shared[steps] = self._hf_generate(prompts, steps)
        return Measurement(shared[steps], list(reference.row_tokens))

    def _hf_generate(self, prompts: list[str], steps: int) -> float:
        self.model.tokenizer.padding_side = "left"  # as outlines sets it
        started = time.perf_counter()
        texts = [self.om.type_adapter.format_input(chat) for chat in self.chats(prompts)]
        encoded = self.model.tokenizer(texts, padding=True, return_tensors="pt")
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        output = self.model.hf_model.generate(**encoded, **greedy(self.model, steps), min_new_tokens=steps)
        seconds = time.perf_counter() - started
        generated = output.shape[1] - encoded["input_ids"].shape[1]
        if generated != steps:
            raise RuntimeError(f"hf generate wrote {generated} tokens, expected {steps}")
        return seconds


def greedy(model, max_new_tokens: int) -> dict:
    """The greedy settings both outlines and the plain hf baseline get."""
    return dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None,
                top_p=None, top_k=None, pad_token_id=model.tokenizer.pad_token_id)


def answer_length(ids: list[int], eos_token_id: int) -> int:
    """Tokens of one generated row up to and including its EOS (the rest is padding)."""
    return ids.index(eos_token_id) + 1 if eos_token_id in ids else len(ids)


def outlines_model(model):
    """outlines' Transformers wrapper around structgen's hf objects, keeping the generated ids of
    each call (outlines only returns text) so answers can be counted in tokens."""
    import outlines

    om = outlines.from_transformers(model.hf_model, model.tokenizer)
    original = om._generate_output_seq

    def keep_ids(prompts, inputs, **kwargs):
        om.last_generated_ids = original(prompts, inputs, **kwargs)
        return om.last_generated_ids

    om._generate_output_seq = keep_ids
    return om


# --- the run ----------------------------------------------------------------------------------


def build_variants(model, max_new_tokens: int) -> tuple[list, dict]:
    """Every variant that could be built, and the construction error of those that could not."""
    variants: list = [StructgenVariant(model, max_new_tokens)]
    failed: dict[str, str] = {}
    try:
        om = outlines_model(model)
    except Exception as error:  # outlines missing or incompatible: every backend is n/a
        return variants, {f"outlines {b}": one_line(error) for b in BACKENDS}
    for backend in BACKENDS:
        try:
            variants.append(OutlinesVariant(model, om, backend, max_new_tokens))
        except Exception as error:
            failed[f"outlines {backend}"] = one_line(error)
    return variants, failed


def one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0][:200] if message else ''}".rstrip(": ")


def pair(variant, prompts: list[str], shared: dict) -> tuple[Measurement, Measurement]:
    constrained = variant.constrained(prompts)
    return constrained, variant.baseline(prompts, constrained, shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine two threads that "
                        "wait on each other at every op make timings several times slower and noisy)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 16 tokens, written to decode_overhead_quick.* (for make bench)")
    parser.add_argument("--name", default=None, help="results file name stem (default: decode_overhead)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.max_new_tokens = 1, 16
    args.name = args.name or ("decode_overhead_quick" if args.quick else "decode_overhead")
    started_all = time.perf_counter()
    load_before = os.getloadavg()

    import torch

    import structgen

    torch.set_num_threads(args.threads)
    model = structgen.load_model()
    variants, failed = build_variants(model, args.max_new_tokens)
    batches = {1: PROMPTS[:1], 8: PROMPTS}
    samples: dict[tuple[str, int], list[tuple[Measurement, Measurement]]] = {}
    errors: dict[tuple[str, int], str] = {}

    # round 0 is the warm-up: one call of every variant and baseline, not recorded; a variant that
    # fails there is n/a (with its exception in the table)
    for number in range(args.rounds + 1):
        for batch, prompts in batches.items():
            shared: dict = {}  # hf generate baselines of this round, by number of steps
            for variant in variants:
                key = (variant.name, batch)
                if number > 0 and key not in samples:
                    continue
                try:
                    measured = pair(variant, prompts, shared)
                except Exception as error:  # keep the run going; the table says what failed
                    errors[key] = (f"round {number}: " if number else "") + one_line(error)
                    samples.pop(key, None)
                    continue
                if number == 0:
                    samples[key] = []
                else:
                    samples[key].append(measured)
        label = "warm-up" if number == 0 else f"round {number}/{args.rounds}"
        print(f"{label} done ({time.perf_counter() - started_all:.0f} s)", flush=True)

    names = ["structgen", *(f"outlines {b}" for b in BACKENDS)]
    construct = {v.name: v.construct_seconds for v in variants}
    rows = []
    for batch in BATCHES:
        for name in names:
            key = (name, batch)
            if name in failed:
                rows.append(dict(name=name, batch=batch, error=f"construct failed: {failed[name]}"))
            elif key in errors:
                rows.append(dict(name=name, batch=batch, error=errors[key]))
            else:
                runs = samples[key]
                rows.append(dict(
                    name=name, batch=batch,
                    tokens=statistics.median(c.tokens for c, _ in runs),
                    constrained=statistics.median(c.ms_per_token for c, _ in runs),
                    baseline=statistics.median(b.ms_per_token for _, b in runs),
                    ratio=statistics.median(c.seconds / b.seconds for c, b in runs),
                    answer=runs[-1][0].texts[0] if runs[-1][0].texts else ""))
    total = time.perf_counter() - started_all
    text = report(args, rows, construct, model, load_before, total)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)
    plot(rows, args.name)


def report(args, rows, construct, model, load_before, total) -> str:
    command = "python benchmarks/decode_overhead.py " + " ".join(sys.argv[1:])
    baseline_name = {"structgen": "structgen loop, no constraint"}
    table = [
        "| engine | batch | tokens per call (median) | constrained ms/token | unconstrained baseline "
        "| baseline ms/token | constrained / baseline |",
        "|---|--:|--:|--:|---|--:|--:|",
    ]
    for row in rows:
        baseline = baseline_name.get(row["name"], "hf generate, greedy")
        if "error" in row:
            table.append(f"| {row['name']} | {row['batch']} | n/a | n/a | {baseline} | n/a "
                         f"| n/a: {row['error'].replace('|', '/')} |")
        else:
            table.append(f"| {row['name']} | {row['batch']} | {row['tokens']:.0f} | {row['constrained']:.1f} "
                         f"| {baseline} | {row['baseline']:.1f} | {row['ratio']:.3f} |")
    answers = [f"- {row['name']}: `{row['answer'][:300]}`" for row in rows
               if row["batch"] == 1 and row.get("answer")]
    load_after = os.getloadavg()
    lines = [
        "# Decode overhead: structgen vs outlines' Generator backends (embedded SmolLM2-135M, CPU)",
        "",
        f"Command: `{command.strip()}`  ",
        f"Versions: {versions()}  ",
        f"Machine: {machine()}; load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at end "
        "(the CPU is shared: compare ratios within this run, not absolute times across runs).  ",
        f"Tokenizer: {tokenizer_note(model)}.  ",
        f"Settings: Character schema, Hermes JSON-mode prompt (structgen's, identical token ids for every "
        f"engine), greedy, max_new_tokens={args.max_new_tokens}; batch 1 = \"{PROMPTS[0]}\", batch 8 = "
        f"the same for {', '.join(NAMES)}; {args.rounds} interleaved round(s) after one warm-up call per "
        f"variant and baseline (compile/construct excluded); medians. Whole run: {total:.0f} s.",
        "",
        *table,
        "",
        "How to read it: *constrained / baseline* is the wall time of the constrained call over that of its "
        "unconstrained baseline doing the same forward work (same prompts, same decode steps per row), "
        "so 1.00 means the constraint costs nothing (outlines backends that took the same number of steps "
        "in a round share one baseline call). It is the median of the per-round ratios of calls made side by "
        "side, so when the shared machine's speed drifts between rounds it can differ from the quotient of "
        "the two median ms/token columns; trust the ratio. structgen's baseline is its own decoding loop "
        "with no constraint; the outlines backends' baseline is plain `hf_model.generate` (outlines' "
        "unconstrained path). ms/token = wall time / tokens in the answers (EOS included); at batch 8 "
        "`hf_model.generate` keeps decoding rows that have ended until the longest ends, so its ms/token "
        "counts that padding as cost while structgen's loop drops finished rows. Answers differ in length "
        "between engines (outlines' JSON whitespace defaults differ from structgen's compact JSON), so "
        "absolute ms/token across engines compares slightly different sequence lengths.",
        "",
        "Construction (excluded above): "
        + ", ".join(f"{name} {1000 * s:.0f} ms" for name, s in construct.items())
        + " (structgen: compile_constraint, disk/memory cache may apply; outlines: Generator(...) incl. "
        "backend set-up).",
        "",
        "Batch-1 answers (last round):",
        "",
        *answers,
        "",
    ]
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ["structgen", "outlines", "outlines-core", "xgrammar", "llguidance", "transformers", "torch"]:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.get_num_threads()} thread(s), "
            f"Python {platform.python_version()}")


def tokenizer_note(model) -> str:
    tokenizer = model.tokenizer
    return (f"SmolLM2-135M-Instruct's ({type(tokenizer).__name__}, {len(tokenizer)} tokens, "
            f"EOS {tokenizer.eos_token!r} = pad)")


def plot(rows: list[dict], name: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, batch in zip(axes, BATCHES):
        chosen = [r for r in rows if r["batch"] == batch]
        labels = [r["name"].replace("outlines ", "outlines\n") for r in chosen]
        x = range(len(chosen))
        baseline = [r.get("baseline", 0) for r in chosen]
        constrained = [r.get("constrained", 0) for r in chosen]
        axis.bar([i - 0.2 for i in x], baseline, width=0.4, label="unconstrained baseline")
        axis.bar([i + 0.2 for i in x], constrained, width=0.4, label="constrained")
        for i, r in zip(x, chosen):
            note = f"{r['ratio']:.2f}x" if "ratio" in r else "n/a"
            axis.annotate(note, (i + 0.2, constrained[i]), ha="center", va="bottom", fontsize=8)
        axis.set_xticks(list(x), labels, fontsize=8)
        axis.set_title(f"batch {batch}")
    axes[0].set_ylabel("ms / token (median)")
    axes[0].legend(fontsize=8)
    figure.suptitle("Character, SmolLM2-135M, CPU, greedy: constrained vs own unconstrained baseline")
    figure.tight_layout()
    figure.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
