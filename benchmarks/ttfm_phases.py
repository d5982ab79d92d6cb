"""Where a cold TTFM goes, phase by phase, and what each kind of first mask costs: the path
``generate`` takes (``compile_constraint`` at its defaults but ``whitespace``, which is
``flexible`` here as in maskbench.py), then the first mask and every test instance walked.

    python benchmarks/ttfm_phases.py --data ../shared/jsonschemabench/dev --sample 250 --seed 0

One process, Llama-3 tokenizer, an empty cache folder, the compile worker, the tokenizer's
arrays and the compiled loops up before the first schema (as in maskbench.py). Per schema on the
finite-state engine: schema -> regex (with its cache entry where it took
``STORE_AFTER_SECONDS`` or more), the automaton's build (in this process: structgen's
determinisation of each piece, and the splices and distances around it; the compile worker's
round trip for a regex outside the dialect or past the bounds; the tables file written where the
build took ``STORE_AFTER_SECONDS`` or more), the rest of ``compile_constraint`` (cache lookups,
``CompiledConstraint``) and the first ``fill_bitmask``.
Then each test instance is walked token by token; a mask computed on a state's first visit is
a cold walk, counted by the walker's path (a string run, the tokens surviving a byte pair, or
the whole vocabulary in place). Writes benchmarks/results/<name>.md and <name>.png.
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

PHASES = ("ttfm", "regex", "build", "determinise", "worker", "rest", "first_mask")
PHASE_NAMES = {
    "ttfm": "TTFM (compile_constraint + first mask)",
    "regex": "schema -> regex (its cache entry written if it took 5 ms or more)",
    "build": ("automaton build (pieces determinised and spliced, distances; tables file "
              "written if it took 5 ms or more)"),
    "determinise": "of which structgen's determinisation (regex -> NFA -> DFA, per piece)",
    "worker": "of which the compile worker's round trip (outlines-core)",
    "rest": "rest of compile_constraint (cache lookups, CompiledConstraint)",
    "first_mask": "first fill_bitmask",
}
WALKS = ("_walk_string", "_walk_pairs_compiled", "_walk_few", "_walk_in_place")
WALK_NAMES = {"_walk_string": "string run (characters placed, the rest walked)",
              "_walk_pairs_compiled": "tokens by byte pair, compiled loop",
              "_walk_few": "tokens surviving their first byte pair (numpy)",
              "_walk_in_place": "whole vocabulary stepped in place"}


def measure(paths: list[Path], whitespace: str, timeout: float) -> tuple[list[dict], list[dict]]:
    """(one record per schema on the finite-state engine, one per cold walk)."""
    with tempfile.TemporaryDirectory(prefix="ttfm-phases-") as cache:
        os.environ["STRUCTGEN_CACHE"] = cache
        import structgen.constraint.compiler as compiler_module
        import structgen.constraint.token_masks as token_masks
        from structgen.constraint.compiled_loops import COMPILED_LOOPS
        from structgen.constraint.vocabulary import TokenizerInfo

        tokenizer = load_tokenizer("llama3")
        info = TokenizerInfo.from_huggingface(tokenizer)
        compiler = compiler_module.ConstraintCompiler(timeout=timeout)
        compiler_module._default_compiler = compiler
        compiler.compile_regex("a", info)  # the worker up, the tokenizer's arrays built
        COMPILED_LOOPS.start()  # as load_model does while the model loads (5 s here; these 0.5 s)
        COMPILED_LOOPS.wait()
        compiler_module._schema_compiler_revision()
        phase: dict[str, float] = {}
        _time(compiler_module, "_schema_regex", phase, "regex")
        _time(compiler, "_build", phase, "build")
        _time(compiler._worker, "compile", phase, "worker")
        _time(compiler_module, "determinized_arrays", phase, "determinise")  # before 1st build
        paths_taken: list[str] = []
        for name in WALKS:
            _note(token_masks.Walker, name, paths_taken)
        bitmask = np.zeros((info.vocab_size + 31) // 32, dtype=np.int32)
        schemas, walks = [], []
        for path in paths:
            doc = json.loads(path.read_text())
            phase.clear()
            started = time.perf_counter()
            try:
                constraint = compiler_module.compile_constraint(doc["schema"], info,
                                                                whitespace=whitespace,
                                                                timeout=timeout)
            except Exception:  # refused: not on the finite-state engine
                continue
            compiled = time.perf_counter()
            constraint.matcher().fill_bitmask(bitmask)
            done = time.perf_counter()
            if constraint.engine != "outlines-core" or "build" not in phase:
                continue  # llguidance, or an automaton this process built before
            record = {"schema": path.name, "ttfm": done - started, "first_mask": done - compiled,
                      "states": constraint.num_states, **phase}
            record["rest"] = compiled - started - phase.get("regex", 0.0) - phase["build"]
            schemas.append(record)
            for test in doc.get("tests", []):
                walks += _walk(constraint, tokenizer, test, bitmask, paths_taken, path.name)
        return schemas, walks


def _time(owner, name: str, phase: dict, key: str, after=None) -> None:
    """Wrap ``owner.name`` so that each call adds its time to ``phase[key]``."""
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = inner(*args, **kwargs)
        phase[key] = phase.get(key, 0.0) + time.perf_counter() - started
        if after is not None:
            after(result)
        return result

    setattr(owner, name, timed)


def _note(cls, name: str, taken: list[str]) -> None:
    """Wrap the walker method ``name`` so that each call records that path was taken."""
    inner = getattr(cls, name)

    def noted(self, *args, **kwargs):
        taken.append(name)
        return inner(self, *args, **kwargs)

    setattr(cls, name, noted)


def _walk(constraint, tokenizer, test: dict, bitmask, taken: list[str], schema: str) -> list[dict]:
    """The cold walks of one instance, walked token by token until it ends or is refused."""
    ids = tokenizer.encode(json.dumps(test["data"], ensure_ascii=False), add_special_tokens=False)
    matcher, cold = constraint.matcher(), []
    for token in ids + [constraint.eos_token_id]:
        taken.clear()
        walked = constraint.masks.walks
        started = time.perf_counter_ns()
        matcher.fill_bitmask(bitmask)
        elapsed = time.perf_counter_ns() - started
        if constraint.masks.walks > walked:
            cold.append({"schema": schema, "ns": elapsed,
                         "path": taken[0] if taken else "other"})
        if not (int(bitmask[token >> 5]) >> (token & 31)) & 1:
            break
        if token != constraint.eos_token_id and not matcher.advance(token):
            break
    return cold


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1e3:.2f}"


def report(schemas: list[dict], walks: list[dict], command: str, count: int,
           whitespace: str) -> str:
    lines = [
        f"# Where a cold TTFM goes: `compile_constraint` (the path `generate` takes, whitespace "
        f"`{whitespace}`) + the first mask, phase by phase; then each state's first mask by kind",
        "",
        f"Command: `{command}`",
        "",
        f"Provenance: {provenance()}, on this project's 2-core CPU machine.",
        "",
        f"{count} MaskBench dev schemas sampled, {len(schemas)} compiled by the finite-state "
        "engine; Llama-3 tokenizer, one process, an empty cache folder, the compile worker, "
        "the tokenizer's arrays and the compiled loops up before the first schema (as after "
        f"`load_model`). {sum('worker' in r for r in schemas)} of them went to the compile "
        "worker. Times in ms.",
        "",
        "| phase | p50 | p90 | p99 | summed |",
        "|---|--:|--:|--:|--:|",
    ]
    for key in PHASES:
        values = [r.get(key, 0.0) for r in schemas]
        lines.append(f"| {PHASE_NAMES[key]} | {_ms(values, 50)} | {_ms(values, 90)} | "
                     f"{_ms(values, 99)} | {sum(values) * 1e3:,.0f} |")
    states = [r["states"] for r in schemas]
    lines += ["", f"Automaton states: p50 {np.percentile(states, 50):,.0f}, p90 "
              f"{np.percentile(states, 90):,.0f}, max {max(states):,}.", "",
              f"Each state's first mask (a cold walk), over every test instance walked token by "
              f"token: {len(walks):,} cold walks. Times in µs.", "",
              "| walker path | walks | p50 | p90 | p99 | max | summed ms |",
              "|---|--:|--:|--:|--:|--:|--:|"]
    for path in (*WALKS, "other"):
        values = np.array([w["ns"] for w in walks if w["path"] == path]) / 1e3
        if len(values):
            lines.append(f"| {WALK_NAMES.get(path, 'no walk of these (a one-state answer)')} | "
                         f"{len(values):,} | {np.percentile(values, 50):.0f} | "
                         f"{np.percentile(values, 90):.0f} | {np.percentile(values, 99):.0f} | "
                         f"{values.max():,.0f} | {values.sum() / 1e3:,.0f} |")
    values = np.array([w["ns"] for w in walks]) / 1e3
    if len(values):
        cut = np.percentile(values, 99)
        top = [w for w in walks if w["ns"] / 1e3 >= cut]
        by_path = {path: sum(w["path"] == path for w in top) for path in (*WALKS, "other")}
        lines += ["", f"All cold walks: p50 {np.percentile(values, 50):.0f}, p90 "
                  f"{np.percentile(values, 90):.0f}, p99 {cut:.0f} µs. The slowest 1% "
                  f"({len(top)}) by path: " + ", ".join(f"{WALK_NAMES.get(p, p)} {n}"
                                                        for p, n in by_path.items() if n) + "."]
    return "\n".join(lines) + "\n"


def plot(schemas: list[dict], walks: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = [k for k in PHASES if k != "ttfm"]
    left.boxplot([[max(r.get(k, 0.0) * 1e3, 1e-3) for r in schemas] for k in keys],
                 tick_labels=[k.replace("_", " ") for k in keys], showfliers=False)
    left.set_yscale("log")
    left.set_ylabel("ms per schema (log)")
    left.set_title("cold TTFM by phase")
    paths = [p for p in WALKS if any(w["path"] == p for w in walks)]
    right.boxplot([[w["ns"] / 1e3 for w in walks if w["path"] == p] for p in paths],
                  tick_labels=[p.strip("_").replace("walk_", "") for p in paths], showfliers=False)
    right.set_yscale("log")
    right.set_ylabel("µs per first mask (log)")
    right.set_title("cold walks by walker path")
    save(plt, fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_arguments(parser, sample=250)
    parser.add_argument("--whitespace", default="flexible",
                        help="compile_constraint's whitespace (flexible: what maskbench.py uses)")
    parser.add_argument("--timeout", type=float, default=25.0, help="per compile, seconds")
    parser.add_argument("--name", default="ttfm_phases")
    args = parser.parse_args(argv)
    paths = stratified_sample(sorted(args.data.glob("*.json")), args.sample, args.seed)
    schemas, walks = measure(paths, args.whitespace, args.timeout)
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/ttfm_phases.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(schemas, walks, command, len(paths), args.whitespace)
    (RESULTS / f"{args.name}.md").write_text(text)
    plot(schemas, walks, RESULTS / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()
