"""JSON mode on the embedded model: load time, compile time, and ms/token constrained vs not.

    python benchmarks/json_mode.py [--rounds 5]

Everything is measured side by side in one run: model loads in fresh subprocesses (cold: an empty
cache, so the GGUF is converted; cached: the converted directory), compiles of the Character
schema (cold without any cache, from the disk cache, from memory), and decoding of the Character
example with and without the constraint, interleaved round by round, both greedy and both producing
the same number of tokens. Writes benchmarks/results/json_mode.md and json_mode.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from _plotting import pyplot
from pydantic import BaseModel, Field

RESULTS = Path(__file__).parent / "results"
PROMPT = "Describe Goku from Dragon Ball Z."


class Character(BaseModel):
    name: str
    species: Literal["human", "saiyan", "namekian"]
    age: int = Field(ge=0)
    attacks: list[str]


def timed_load(cache: str) -> float:
    """Seconds for `structgen.load_model()` in a fresh interpreter (imports included)."""
    code = ("import time; t = time.perf_counter(); import structgen; structgen.load_model(); "
            "print(time.perf_counter() - t)")
    env = dict(os.environ, STRUCTGEN_CACHE=cache)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def compile_times(model) -> dict:
    from structgen.constraint.compiler import ConstraintCompiler
    from structgen.schema import schema_to_regex
    from structgen.types import as_output_type

    spec = as_output_type(Character)
    regex = schema_to_regex(spec.schema)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["STRUCTGEN_CACHE"] = cache
        cold_compiler = ConstraintCompiler()
        started = time.perf_counter()
        cold = cold_compiler.compile_regex(regex, model.tokenizer_info, output_type=spec)
        cold_seconds = time.perf_counter() - started
        started = time.perf_counter()
        cold_compiler.compile_regex(regex, model.tokenizer_info, output_type=spec)
        memory_seconds = time.perf_counter() - started
        cold_compiler.close()
        disk_compiler = ConstraintCompiler()
        started = time.perf_counter()
        disk_compiler.compile_regex(regex, model.tokenizer_info, output_type=spec)
        disk_seconds = time.perf_counter() - started
        disk_compiler.close()
        del os.environ["STRUCTGEN_CACHE"]
    return {"cold_s": cold_seconds, "disk_s": disk_seconds, "memory_s": memory_seconds,
            "states": cold.num_states, "regex_chars": len(regex)}


def decode_round(model, constraint) -> tuple[float, float, int, str]:
    """One constrained and one unconstrained greedy run of the same length, through the same
    decoding loop; ms/token of each."""
    import structgen
    from structgen.decoding.generate import chat_ids, messages_for
    from structgen.decoding.loop import Row, Sampling, Unconstrained, decode_rows

    result = structgen.generate_with_details(constraint, PROMPT, model=model, max_tokens=256)
    n = result.completion_tokens
    ids = chat_ids(model, messages_for(constraint, PROMPT))
    # EOS id -1: the unconstrained run writes exactly n tokens, like the constrained one
    row = Row(prompt_ids=ids, matcher=Unconstrained(eos_token_id=-1, max_tokens=n))
    started = time.perf_counter()
    decode_rows(model, [row], Sampling())
    unconstrained = time.perf_counter() - started
    return 1000 * result.seconds / n, 1000 * unconstrained / n, n, result.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import structgen

    with tempfile.TemporaryDirectory() as empty:
        load_cold = timed_load(empty)
        load_cached = timed_load(empty)
    model = structgen.load_model()
    compiles = compile_times(model)
    constraint = structgen.compile_constraint(Character, model.tokenizer_info)
    decode_round(model, constraint)  # warm-up: first-visit masks, allocator, kernels
    rounds = [decode_round(model, constraint) for _ in range(args.rounds)]
    constrained = statistics.median(r[0] for r in rounds)
    unconstrained = statistics.median(r[1] for r in rounds)

    rows = [
        ("load embedded model, cold (GGUF conversion, fresh process)", f"{load_cold:.1f} s"),
        ("load embedded model, cached (fresh process)", f"{load_cached:.1f} s"),
        ("compile Character, cold (no cache)", f"{1000 * compiles['cold_s']:.0f} ms"),
        ("compile Character, disk cache", f"{1000 * compiles['disk_s']:.1f} ms"),
        ("compile Character, memory cache", f"{1000 * compiles['memory_s']:.2f} ms"),
        ("decode, unconstrained (median ms/token)", f"{unconstrained:.1f}"),
        ("decode, constrained (median ms/token)", f"{constrained:.1f}"),
        ("constrained / unconstrained", f"{constrained / unconstrained:.3f}"),
    ]
    versions = _versions()
    lines = [
        "# JSON mode on the embedded model",
        "",
        f"Command: `python benchmarks/json_mode.py --rounds {args.rounds}`  ",
        f"Model: SmolLM2-135M-Instruct (embedded), CPU, greedy; {rounds[0][2]} tokens per run, "
        f"{args.rounds} interleaved rounds.  ",
        f"Schema: Character ({compiles['regex_chars']} regex chars, {compiles['states']} index states).  ",
        f"Versions: {versions}",
        "",
        "| measure | value |",
        "|---|--:|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        f"Answer: `{rounds[0][3]}`",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "json_mode.md").write_text("\n".join(lines))
    print("\n".join(lines))
    _plot(rounds)


def _versions() -> str:
    from importlib.metadata import version

    names = ["structgen", "outlines-core", "transformers", "torch"]
    return ", ".join(f"{n} {version(n)}" for n in names)


def _plot(rounds) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r[1] for r in rounds], "o-", label="unconstrained")
    axis.plot([r[0] for r in rounds], "s-", label="structgen constrained")
    axis.set_xlabel("round")
    axis.set_ylabel("ms / token")
    axis.set_title("Character example, SmolLM2-135M, CPU")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "json_mode.png", dpi=120)


if __name__ == "__main__":
    main()
