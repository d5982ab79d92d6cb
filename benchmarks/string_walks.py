"""A state's first mask, by kind of state: what string runs save (the constraint layer alone).

    python benchmarks/string_walks.py --repeat 50

For one schema compiled by ``compile_constraint`` at its defaults (``indented``), a state in each
of: a free string, a ``maxLength`` string, the UTF-8 continuation of a string, a counted string
with a pattern (``[A-Za-z0-9]{1,40}``), and a structural
state (after ``{``). Each is walked the way ``MaskStore`` does on a state's first visit
(``Walker.walk_parts``) and, side by side, by stepping the whole vocabulary in place (what ``walk`` did
before string runs, still its path for wide states that are not strings). CPU time
(``time.process_time``), median and minimum of ``--repeat`` interleaved runs, Llama-3 and SmolLM2
tokenizers. Both must return the same tokens and next states; the script stops if they do not.
The split of the vocabulary for a string, made once per byte set, character verdicts and
process (and kept), is made before the timing starts.
Writes benchmarks/results/string_walks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from maskbench import load_tokenizer

import structgen

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "bio": {"type": "string", "maxLength": 300},
    "code": {"type": "string", "pattern": "^[A-Za-z0-9]{1,40}$"}},
    "required": ["name", "bio", "code"]}
STATES = {
    "free string": b'{\n  "name": "ab',
    "maxLength string": b'{\n  "name": "x",\n  "bio": "ab',
    "UTF-8 continuation in a string": b'{\n  "name": "ab\xc3',
    "patterned counted string": b'{\n  "name": "x",\n  "bio": "y",\n  "code": "ab',
    "structural (after `{`)": b"{\n  ",
}


def whole_vocabulary(walker, state: int):
    row = walker.table[state * walker.width:(state + 1) * walker.width]
    return walker._walk_in_place(row, walker.classes, walker.tokens.going, walker.tokens.ids)


def same(a, b) -> bool:
    return dict(zip(a[0].tolist(), a[1].tolist())) == dict(zip(b[0].tolist(), b[1].tolist()))


def cpu_ms(function, *args) -> float:
    started = time.process_time()
    function(*args)
    return (time.process_time() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    lines = ["# A state's first mask, by kind of state (the constraint layer alone)", "",
             f"`python benchmarks/string_walks.py --repeat {args.repeat}`: `Walker.walk_parts` "
             "(what `MaskStore` runs on a state's first visit) against stepping the whole vocabulary "
             "in place, interleaved, CPU ms, for a schema compiled by `compile_constraint` at its "
             "defaults. Both return the same tokens and next states (checked). The vocabulary's "
             "split for a string (once per byte set, character verdicts and process) is made "
             "before timing.",
             "",
             "| tokenizer | state | tokens allowed | walk median | walk min | whole vocabulary "
             "median | whole vocabulary min | speed-up (medians) |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    for name in ("llama3", "smollm2"):
        constraint = structgen.compile_constraint(SCHEMA, load_tokenizer(name))
        walker = constraint.masks.walker
        for kind, prefix in STATES.items():
            state = constraint.automaton.step(constraint.initial_state, prefix)
            fast, slow = walker.walk(state), whole_vocabulary(walker, state)
            if not same(fast, slow):
                raise SystemExit(f"{name} {kind}: walk and the whole-vocabulary walk disagree")
            walks, wholes = [], []
            for _ in range(args.repeat):
                walks.append(cpu_ms(walker.walk_parts, state))
                wholes.append(cpu_ms(whole_vocabulary, walker, state))
            lines.append(f"| {name} | {kind} | {len(fast[0]):,} | {statistics.median(walks):.2f} | "
                         f"{min(walks):.2f} | {statistics.median(wholes):.2f} | {min(wholes):.2f} | "
                         f"{statistics.median(wholes) / max(statistics.median(walks), 1e-9):.1f}x |")
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "string_walks.md").write_text(report)


if __name__ == "__main__":
    main()
