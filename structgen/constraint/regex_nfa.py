"""RegexNFA: the regex text structgen's schema compiler writes, as a byte-level Thompson NFA.

structgen determinises its own regexes (``compiled_automaton``) instead of asking outlines-core
for an ``Index`` over the 256 single bytes. The NFA is the front half, built by a compiled loop
(``compiled_regex.thompson``) from the one regex dialect the schema compiler writes
(``schema.regex_text``: literal text, ``\\x``/``\\u``/``\\U`` and single-character escapes,
``[...]`` classes, ``(?:...)`` groups, ``|``, and the quantifiers ``* + ? {m} {m,} {m,n}``).
Anything else raises ``UnsupportedRegex``, and the regex goes to outlines-core.

A character class becomes the UTF-8 byte sequences of its code points (surrogates have none,
as in outlines-core), with the shared tails of those sequences built once, so the states after
a multi-byte character's lead byte are the same whichever lead byte it was. Each NFA state is
one of: a byte set (``BYTES``: ``arg`` is the set's number, ``out`` the next state), a split
(``SPLIT``: epsilon moves to ``out`` and ``arg``) or the final state (``MATCH``).

``literal_uses`` reads the same dialect in Python, for the compile worker (which has no numba).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from structgen.code_points import MAX_CODE, complement, merged


class UnsupportedRegex(ValueError):
    """The regex is not one structgen determinises: syntax outside the schema compiler's
    dialect, or no text to match (outlines-core builds it, or names the problem)."""


_CODE = r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)"
_TOKEN = re.compile(
    r"(?P<spaces>\[ \\t\\n\\r\]\*)"  # flexible whitespace: the dialect's commonest atom
    r"|(?P<text>[^\\.^$|?*+()\[\]{}]+)"
    r"|(?P<class>\[\^?(?:" + _CODE + r"|[^\]\\])+\])"
    r"|(?P<escape>" + _CODE + ")"
    r"|(?P<open>\((?:\?:)?)"
    r"|(?P<close>\))"
    r"|(?P<bar>\|)"
    r"|(?P<quantifier>[*+?]|\{\d+(?:,\d*)?\})"
    r"|(?P<dot>\.)"
    r"|(?P<other>.)", re.S)
_CLASS_ITEM = re.compile(r"(" + _CODE + r"|[^\\])(?:-(" + _CODE + r"|[^\\]))?", re.S)
_CONTROL = {"t": 9, "n": 10, "r": 13, "f": 12, "v": 11, "a": 7, "0": 0}


def _code_point(text: str) -> int:
    if text[0] != "\\":
        return ord(text)
    escaped = text[1]
    if escaped in "xuU":
        code = int(text[2:], 16)
        if 0xD800 <= code <= 0xDFFF or code > MAX_CODE:  # no character: outlines-core refuses it
            raise UnsupportedRegex(f"the escape {text!r} is no Unicode scalar value")
        return code
    if escaped in _CONTROL:
        return _CONTROL[escaped]
    if escaped.isalnum():  # \d, \w, \b, \1...: not in the dialect
        raise UnsupportedRegex(f"the escape {text!r}")
    return ord(escaped)


@functools.lru_cache(maxsize=4096)
def _class(text: str) -> tuple:
    """A ``[...]`` class's code points as sorted, disjoint ranges."""
    negated = text[1] == "^"
    body = text[2 if negated else 1:-1]
    ranges, position = [], 0
    for item in _CLASS_ITEM.finditer(body):
        if item.start() != position:
            raise UnsupportedRegex(f"the class {text!r}")
        position = item.end()
        low = _code_point(item.group(1))
        high = _code_point(item.group(2)) if item.group(2) else low
        if high < low:
            raise UnsupportedRegex(f"the class {text!r} has a backward range")
        ranges.append((low, high))
    return tuple(complement(ranges) if negated else merged(ranges))


def literal_uses(regex: str, candidates: frozenset[int]) -> int | None:
    """How many times ``regex`` writes one of the ASCII ``candidates`` as a character of its own
    (plain or escaped); None where a class or ``.`` may match one, or outside the dialect."""
    written = re.compile("[" + re.escape("".join(map(chr, sorted(candidates)))) + "]")
    uses = 0
    try:
        for token in _TOKEN.finditer(regex):
            kind, text = token.lastgroup, token.group()
            if kind == "text":
                uses += len(written.findall(text))
            elif kind == "escape":
                uses += _code_point(text) in candidates
            elif kind == "class":
                if any(low <= c <= high for low, high in _class(text) for c in candidates):
                    return None
            elif kind == "dot" or kind == "other":
                return None
    except UnsupportedRegex:
        return None
    return uses


@dataclass(frozen=True)
class RegexNFA:
    """The NFA's arrays: ``kind``, ``arg`` and ``out`` per state (see the module), ``start``,
    and its byte sets as inclusive ranges: range ``i`` of set ``range_set[i]`` is
    ``low[i]..high[i]`` (``sets`` of them; ``compiled_automaton.byte_columns`` reads them)."""

    kind: np.ndarray
    arg: np.ndarray
    out: np.ndarray
    start: int
    range_set: np.ndarray
    low: np.ndarray
    high: np.ndarray
    sets: int

    @classmethod
    def from_regex(cls, regex: str, loops) -> "RegexNFA":
        """The NFA of ``regex``, built by the compiled loops (``loops``: ``compiled_automaton``,
        which offers ``compiled_regex.thompson``). ``UnsupportedRegex`` outside the dialect;
        ``NFATooLarge`` past ``compiled_regex.MAX_NFA_STATES`` (counted repeats multiply)."""
        text = np.frombuffer(regex.encode("utf-32-le", "surrogatepass"), np.uint32)
        status, at, kind, arg, out, start, range_set, low, high, sets = loops.thompson(text)
        if status == loops.NFA_TOO_LARGE:
            raise NFATooLarge(f"the regex's NFA would pass {loops.MAX_NFA_STATES:,} states")
        if status != loops.NFA_BUILT:
            raise UnsupportedRegex(f"{regex[at:at + 20]!r} at {at}")
        return cls(kind, arg, out, int(start), range_set, low, high, int(sets))


class NFATooLarge(Exception):
    """A regex whose NFA alone passes the bound on states (no determinisation here would finish
    within its own bounds; the compile worker builds it, killable)."""

