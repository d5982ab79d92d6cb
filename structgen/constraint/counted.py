"""Long counted strings: found in a regex, so the automaton build can splice them in.

A string with ``maxLength: 2000`` is ``"(?:CHAR){0,2000}"`` in the regex. Its DFA has one state per
count and per place inside a character (a UTF-8 sequence, a ``\\uXXXX`` escape): about 14 × 2,000
states, which outlines-core takes seconds to build (``maxLength`` 8,192 ran past 25 s). The
states themselves are cheap; determinising them is not. So the build replaces each long counted
string by a placeholder byte that no JSON text contains, lets outlines-core determinise the
rest, and then writes the string's states into the table directly, in numpy: copy ``i`` of the
one-character automaton is the ``i``-th character, its final state is the start of copy ``i + 1``,
and the closing quote leaves from the start of every copy at or past ``minLength``.

The result is the same language as the original regex, in an ordinary ``ByteAutomaton``: the
walker, distances and caches read it as any other. Splicing is only done where it is provably
the same: the placeholder bytes can be matched nowhere else in the regex (checked here), and a
state that may open a counted string may not also start anything else with ``"`` (checked by
``automaton.splice_counted``; else the build falls back to the plain regex). The build runs all
of it, so the scan counts against its time budget; this module imports nothing of the schema
compiler (the character regex comes with the request).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from structgen._sre import sre_constants
from structgen.constraint.automaton import END_MARK, START_MARK
from structgen.constraint.regex_nfa import literal_uses

#: Counted strings whose larger bound is at least this are spliced; smaller ones determinise fast.
MIN_COUNT = 64
#: Control bytes no JSON text holds (``\t``, ``\n`` and ``\r`` are whitespace; the automaton's
#: end and start marks are taken): one per distinct (minLength, maxLength).
PLACEHOLDERS = tuple(b for b in range(0x20) if b not in (0x09, 0x0A, 0x0D, END_MARK, START_MARK))


@functools.lru_cache(maxsize=4)
def _counted(character: str) -> re.Pattern:
    """A counted string of ``character``s as the schema compiler writes it: ``"(?:C){m,n}"``."""
    return re.compile(re.escape(f'"{character}') + r"\{(\d+)(,(\d*))?\}\"(?![?*+{])")


def with_placeholders(regex: str, character: str, min_count: int = MIN_COUNT,
                      free_bytes: Callable[[str, list[int]], list[int]] | None = None,
                      ) -> tuple[str, dict[int, tuple]]:
    """(``regex`` with each long counted string of ``character`` (the schema compiler's
    ``STRING_CHAR``) replaced by a placeholder byte, {byte: (fewest, most or None)}); the regex
    unchanged and {} where there is none to replace, or where a placeholder byte could be
    matched by something else in the regex. That is read from the replaced regex
    (``regex_nfa.literal_uses``: each placeholder written, and nothing else) or, given
    ``free_bytes`` (``repeated.free_bytes`` over the compiled loops; regex, candidates -> the
    candidates nothing in it matches), from the regex itself: where it matches none of them,
    the replaced one matches them only where they were written (one Python pass over a 55k
    regex cost 22 ms). The build runs it, inside its time budget."""
    kinds: dict[tuple, int] = {}
    written = []  # one entry per placeholder written

    def replace(match: re.Match) -> str:
        fewest = int(match[1])
        most = fewest if match[2] is None else (int(match[3]) if match[3] else None)
        if max(fewest, most or 0) < min_count:
            return match[0]
        kind = (fewest, most)
        if kind not in kinds:
            if len(kinds) == len(PLACEHOLDERS):
                return match[0]
            kinds[kind] = PLACEHOLDERS[len(kinds)]
        written.append(kinds[kind])
        return f"\\x{kinds[kind]:02x}"

    replaced = _counted(character).sub(replace, regex)
    if not kinds:
        return regex, {}
    used = sorted(kinds.values())
    if free_bytes is not None:
        if free_bytes(regex, used) != used:
            return regex, {}
    elif _may_match_placeholders(replaced, set(used), len(written)):
        return regex, {}
    return replaced, {byte: kind for kind, byte in kinds.items()}


def _may_match_placeholders(regex: str, placeholders: set[int], written: int) -> bool:
    """Whether anything but the ``written`` placeholders can match a placeholder byte (a literal
    of its own, a class, ``.``); a regex outside the schema compiler's dialect counts as
    matching."""
    return literal_uses(regex, frozenset(placeholders)) != written


def class_covers(items, candidates: set[int]) -> set[int] | None:
    """Which ``candidates`` (control bytes) the items of a parsed ``[...]`` class match; None
    where it may match any of them (``\\s``, ``\\D``, ``\\W`` and the like hold control bytes)."""
    negate, covered = False, set()
    for op, av in items:
        if op is sre_constants.NEGATE:
            negate = True
        elif op is sre_constants.LITERAL:
            covered |= {av} & candidates
        elif op is sre_constants.RANGE:
            covered |= {c for c in candidates if av[0] <= c <= av[1]}
        elif not (op is sre_constants.CATEGORY and av in (sre_constants.CATEGORY_DIGIT,
                                                          sre_constants.CATEGORY_WORD)):
            return None
    return candidates - covered if negate else covered
