"""RegexNFA: the regex text structgen's schema compiler writes, as a byte-level Thompson NFA.

structgen determinises its own regexes (``compiled_automaton``) instead of asking outlines-core
for an ``Index`` over the 256 single bytes. This module is the front half: it parses the one
regex dialect the schema compiler writes (``schema.regex_text``: literal text, ``\\x``/``\\u``/
``\\U`` and single-character escapes, ``[...]`` classes, ``(?:...)`` groups, ``|``, and the
quantifiers ``* + ? {m} {m,} {m,n}``) and compiles it into arrays a compiled loop can
determinise. Anything else raises ``UnsupportedRegex``, and the regex goes to outlines-core.

A character class becomes the UTF-8 byte sequences of its code points (surrogates have none,
as in outlines-core), with the shared tails of those sequences built once, so the states after
a multi-byte character's lead byte are the same whichever lead byte it was. Each NFA state is
one of: a byte set (``BYTES``: ``arg`` is the set's number, ``out`` the next state), a split
(``SPLIT``: epsilon moves to ``out`` and ``arg``) or the final state (``MATCH``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from structgen.code_points import MAX_CODE, complement, merged

BYTES, SPLIT, MATCH = 0, 1, 2


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
_QUANTIFIERS = {"*": (0, None), "+": (1, None), "?": (0, 1)}

# The syntax tree: ("text", bytes), ("class", code point ranges, its one-byte encodings, its
# longer ones: ``_class_sequences``), ("seq", [nodes]),
# ("alt", [nodes]), ("repeat", node, fewest, most or None), and ("group", its text, node) for a
# parenthesised group of ``MIN_TEMPLATE`` characters or more: the NFA of a group whose text
# recurs (a string's character, a shared definition, each copy of a counted repeat) is built
# once and copied.
MIN_TEMPLATE = 16


def utf8_sequences(low: int, high: int) -> list[tuple[tuple[int, int], ...]]:
    """The UTF-8 encodings of the code points ``low..high`` (surrogates excluded) as sequences
    of byte ranges: each sequence matches exactly the encodings of one sub-range."""
    sequences, pending = [], [(low, high)]
    while pending:
        low, high = pending.pop()
        if low > high:
            continue
        if low <= 0xDFFF and high >= 0xD800:  # no encoding
            pending += [(low, 0xD7FF), (0xE000, high)]
            continue
        bound = next((b for b in (0x7F, 0x7FF, 0xFFFF) if low <= b < high), None)
        if bound is not None:  # split where the encoding grows a byte
            pending += [(low, bound), (bound + 1, high)]
            continue
        for trailing in (1, 2, 3):  # split until each byte's range is independent
            mask = (1 << (6 * trailing)) - 1
            if low & ~mask != high & ~mask:
                if low & mask:
                    pending += [(low, low | mask), ((low | mask) + 1, high)]
                    break
                if high & mask != mask:
                    pending += [(low, (high & ~mask) - 1), (high & ~mask, high)]
                    break
        else:
            sequences.append(tuple(zip(chr(low).encode(), chr(high).encode())))
    return sequences


@functools.lru_cache(maxsize=4096)
def _class_sequences(ranges: tuple) -> tuple[tuple, tuple]:
    """(a class's one-byte encodings as one set of byte ranges, its longer byte sequences)."""
    sequences = [s for low, high in ranges for s in utf8_sequences(low, high)]
    return (tuple(s[0] for s in sequences if len(s) == 1),
            tuple(s for s in sequences if len(s) > 1))


def _class_node(ranges: tuple) -> tuple:
    """A class's node, its UTF-8 byte sequences found once (``_class_sequences``)."""
    return ("class", ranges, *_class_sequences(ranges))


_DOT = _class_node(((0, 9), (11, MAX_CODE)))  # what "." matches in outlines-core: all but "\n"


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
    """A ``[...]`` class's node: its code points as sorted, disjoint ranges."""
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
    return _class_node(tuple(complement(ranges) if negated else merged(ranges)))


_SPACES = ("repeat", _class("[ \\t\\n\\r]"), 0, None)


@functools.lru_cache(maxsize=4096)
def _character(code: int) -> tuple:
    return ("text", bytes([code])) if code < 0x80 else _class_node(((code, code),))


def _counts(text: str) -> tuple[int, int | None]:
    if text in _QUANTIFIERS:
        return _QUANTIFIERS[text]
    inner = text[1:-1]
    if "," not in inner:
        return int(inner), int(inner)
    fewest, most = inner.split(",")
    if most and int(most) < int(fewest):
        raise UnsupportedRegex(f"the quantifier {text!r} counts backwards")
    return int(fewest), int(most) if most else None


def _branches(alternatives: list, sequence: list) -> tuple:
    if not alternatives:
        return ("seq", sequence)
    return ("alt", [("seq", branch) for branch in alternatives + [sequence]])


def parse(regex: str) -> tuple:
    """The syntax tree of ``regex``; ``UnsupportedRegex`` outside the dialect."""
    enclosing = []  # (alternatives, sequence, where it opened) of each open group
    alternatives, sequence = [], []
    for token in _TOKEN.finditer(regex):
        kind, text = token.lastgroup, token.group()
        if kind == "spaces":
            sequence.append(_SPACES)
        elif kind == "text":
            if text.isascii():
                sequence.append(("text", text.encode()))
            else:  # one node per character, so that a quantifier takes the last one alone
                sequence.extend(_character(ord(c)) for c in text)
        elif kind == "class":
            sequence.append(_class(text))
        elif kind == "escape":
            sequence.append(_character(_code_point(text)))
        elif kind == "open":
            enclosing.append((alternatives, sequence, token.start()))
            alternatives, sequence = [], []
        elif kind == "close":
            if not enclosing:
                raise UnsupportedRegex(f"an unopened ')' at {token.start()}")
            group = _branches(alternatives, sequence)
            alternatives, sequence, opened = enclosing.pop()
            if token.end() - opened >= MIN_TEMPLATE:
                group = ("group", regex[opened:token.end()], group)
            sequence.append(group)
        elif kind == "bar":
            alternatives.append(sequence)
            sequence = []
        elif kind == "quantifier":
            if not sequence:
                raise UnsupportedRegex(f"nothing to repeat at {token.start()}")
            repeated = sequence.pop()
            if repeated[0] == "text" and len(repeated[1]) > 1:  # "ab*": the b alone
                sequence.append(("text", repeated[1][:-1]))
                repeated = ("text", repeated[1][-1:])
            sequence.append(("repeat", repeated, *_counts(text)))
        elif kind == "dot":
            sequence.append(_DOT)
        else:
            raise UnsupportedRegex(f"{text!r} at {token.start()}")
    if enclosing:
        raise UnsupportedRegex("an unclosed '('")
    return _branches(alternatives, sequence)


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
                if any(low <= c <= high for low, high in _class(text)[1] for c in candidates):
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
    ``low[i]..high[i]`` (``sets`` of them; ``compiled_automaton.byte_intervals`` reads them)."""

    kind: np.ndarray
    arg: np.ndarray
    out: np.ndarray
    start: int
    range_set: np.ndarray
    low: np.ndarray
    high: np.ndarray
    sets: int

    @classmethod
    def from_regex(cls, regex: str) -> "RegexNFA":
        builder = _Builder()
        final = builder.add(MATCH, 0, -1)
        start = builder.compile(parse(regex), final)
        ranges = np.array(builder.ranges, np.int64).reshape(-1, 3)
        return cls(np.array(builder.kind, np.int8), np.array(builder.arg, np.int32),
                   np.array(builder.out, np.int32), start, ranges[:, 0].copy(),
                   ranges[:, 1].copy(), ranges[:, 2].copy(), len(builder._set_number))


class _Builder:
    """Thompson construction, back to front: each node is compiled knowing the state it leads
    to, so no state is patched afterwards except a loop's entry."""

    def __init__(self):
        self.kind: list[int] = []
        self.arg: list[int] = []
        self.out: list[int] = []
        self.ranges: list[tuple[int, int, int]] = []  # (set number, low, high) of every set
        self._set_number: dict[tuple, int] = {}
        self._byte_number = [-1] * 256  # a single byte's set number, once it has one
        self._built: dict[str, tuple[int, int, int, int]] = {}  # group text -> its first states
        self._templates: dict[str, tuple] = {}  # group text -> ``_template``, once it recurs

    def add(self, kind: int, arg: int, out: int) -> int:
        self.kind.append(kind)
        self.arg.append(arg)
        self.out.append(out)
        return len(self.kind) - 1

    def set_number(self, ranges: tuple) -> int:
        number = self._set_number.get(ranges)
        if number is None:
            number = self._set_number[ranges] = len(self._set_number)
            self.ranges += [(number, low, high) for low, high in ranges]
        return number

    def byte_set(self, ranges: tuple, out: int) -> int:
        return self.add(BYTES, self.set_number(ranges), out)

    def compile(self, node: tuple, out: int) -> int:
        tag = node[0]
        if tag == "group":
            template = self._templates.get(node[1])
            if template is None and node[1] in self._built:  # its second time: make a template
                template = self._templates[node[1]] = self._template(*self._built[node[1]])
            if template is not None:
                return self._copy(template, out)
            first = len(self.kind)
            entry = self.compile(node[2], out)
            self._built[node[1]] = (first, len(self.kind), entry, out)
            return entry
        if tag == "text":  # (the commonest node: its loop written out)
            numbers, kind, arg, moves = self._byte_number, self.kind, self.arg, self.out
            for byte in reversed(node[1]):
                number = numbers[byte]
                if number < 0:
                    number = numbers[byte] = self.set_number(((byte, byte),))
                kind.append(BYTES)
                arg.append(number)
                moves.append(out)
                out = len(kind) - 1
            return out
        if tag == "seq":
            for child in reversed(node[1]):
                out = self.compile(child, out)
            return out
        if tag == "class":
            _, _, single, longer = node
            if not longer:  # (ASCII only: one set)
                return self.byte_set(single, out) if single else self.alternatives([])
            entries = [self.byte_set(single, out)] if single else []
            tails: dict[tuple, int] = {}  # a sequence's ranges from one byte on -> their state
            entries += [self._sequence(sequence, out, tails) for sequence in longer]
            return self.alternatives(entries)
        if tag == "alt":
            return self.alternatives([self.compile(child, out) for child in node[1]])
        _, child, fewest, most = node
        if most is None:  # a loop: its split's first move is patched to the body's entry
            entry = loop = self.add(SPLIT, out, -1)
            self.out[loop] = self.compile(child, loop)
        else:  # x{0,k} as (x(x(...)?)?)?
            entry = out
            for _ in range(most - fewest):
                entry = self.add(SPLIT, out, self.compile(child, entry))
        for _ in range(fewest):
            entry = self.compile(child, entry)
        return entry

    def _copy(self, template: tuple, out: int) -> int:
        """A copy of a group's states (``template``, from ``_template``) leading to ``out``;
        its entry."""
        kind, arg, moves, entry = template
        base = len(self.kind)
        # a move is an offset into the group (>= 0), its exit (-2), none (-1) or, for a byte
        # set's arg, its set's number n written as -3 - n
        self.kind += kind
        self.arg += [base + t if t >= 0 else (out if t == -2 else (t if t == -1 else -3 - t))
                     for t in arg]
        self.out += [base + t if t >= 0 else (out if t == -2 else t) for t in moves]
        return base + entry if entry >= 0 else out

    def _template(self, first: int, last: int, entry: int, was_out: int) -> tuple:
        """The states ``first:last`` of a group built to lead to ``was_out``, in the relative
        form ``_copy`` reads. Inside a group, moves point inside it or to its exit."""
        def relative(target: int) -> int:
            return target - first if first <= target < last else (-2 if target == was_out
                                                                  else target)

        kind = self.kind[first:last]
        arg = [relative(a) if k == SPLIT else -3 - a for k, a in zip(kind, self.arg[first:last])]
        return kind, arg, [relative(o) for o in self.out[first:last]], relative(entry)

    def _sequence(self, sequence: tuple, out: int, tails: dict) -> int:
        """A multi-byte sequence of a class (a byte range per byte), its tails shared with the
        class's other sequences."""
        state = out
        for i in range(len(sequence) - 1, -1, -1):
            tail = sequence[i:]
            known = tails.get(tail)
            if known is None:
                known = tails[tail] = self.byte_set((sequence[i],), state)
            state = known
        return state

    def alternatives(self, entries: list[int]) -> int:
        if not entries:  # an empty class: a set of no bytes
            return self.byte_set((), -1)
        entry = entries[-1]
        for other in reversed(entries[:-1]):
            entry = self.add(SPLIT, entry, other)
        return entry
