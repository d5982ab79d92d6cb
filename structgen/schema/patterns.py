"""Translation of a schema's ``pattern`` (an ECMA-262 regex over decoded text) into a regex
over the JSON string text that spells it.

The pattern is parsed with Python's ``re`` parser and re-emitted piece by piece: each character
becomes the ways a JSON string may spell it, classes become code-point ranges, and constructs
whose meaning differs between engines (or that no regex subset here can hold) are refused.
"""

from __future__ import annotations

import re

from structgen._sre import parse
from structgen.code_points import MAX_CODE, complement, merged
from structgen.errors import InvalidSchemaError, UnsatisfiableSchemaError, UnsupportedSchemaError
from structgen.schema.layout import STRING_CHAR
from structgen.schema.regex_text import (
    alt,
    escape,
    hex_escape,
    repeat,
    sre_constants,
    sre_parse,
    width,
)

_NON_SURROGATE = [(0, 0xD7FF), (0xE000, MAX_CODE)]
_SPECIAL = [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # code points a JSON string must escape
_SHORT_ESCAPES = {
    0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
}
# \d \w \s differ between engines (ECMA-262: ASCII; Python and Rust: Unicode, each its own way),
# so each has a narrow set (in every engine's) and a wide set (holding every engine's); a class
# uses whichever makes its result smallest, so what it admits matches in every engine.
_NON_ASCII = [(0x80, MAX_CODE)]
_UNICODE_SPACES = [  # Python's \s, ECMA-262's \s (adds U+FEFF), Unicode White_Space, and U+180E
    (0x09, 0x0D), (0x1C, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x180E, 0x180E),
    (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
    (0xFEFF, 0xFEFF),
]
_CATEGORIES = {  # category: (narrow, wide)
    sre_constants.CATEGORY_DIGIT: ([(0x30, 0x39)], [(0x30, 0x39)] + _NON_ASCII),
    sre_constants.CATEGORY_WORD: (
        [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
        [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)] + _NON_ASCII,
    ),
    sre_constants.CATEGORY_SPACE: ([(0x09, 0x0D), (0x20, 0x20)], _UNICODE_SPACES),
}
_NEGATED_CATEGORIES = {
    sre_constants.CATEGORY_NOT_DIGIT: sre_constants.CATEGORY_DIGIT,
    sre_constants.CATEGORY_NOT_WORD: sre_constants.CATEGORY_WORD,
    sre_constants.CATEGORY_NOT_SPACE: sre_constants.CATEGORY_SPACE,
}
# "." excludes every line terminator of ECMA-262 and Python.
_DOT = [(0, 0x09), (0x0B, 0x0C), (0x0E, 0x2027), (0x202A, MAX_CODE)]
_STARTS = (sre_constants.AT_BEGINNING, sre_constants.AT_BEGINNING_STRING)
_ENDS = (sre_constants.AT_END, sre_constants.AT_END_STRING)


#: Translations made, (pattern, min_length, max_length) -> regex: a large schema writes a few
#: patterns hundreds of times (Github_hard o21260: 3 patterns, 719 uses over the recursion
#: depths tried), and each translation parses and re-emits the whole pattern.
_TRANSLATED: dict[tuple[str, int, int | None], str] = {}
_TRANSLATED_KEPT = 4096


def pattern_regex(pattern: str, min_length: int, max_length: int | None, where: str) -> str:
    """Regex of the JSON string contents (between the quotes) whose decoded text the ECMA regex
    ``pattern`` finds (search semantics, so unanchored sides are padded with any characters),
    with a length from ``min_length`` to ``max_length``.

    Each character of the pattern is spelled one way in the JSON text: raw, or its short escape
    (``\\"``, ``\\\\``, ``\\n``...), or ``\\u00XX`` for other control characters.
    ``where`` (the pattern's JSON pointer) only names the place in an error, so a translation
    made once serves every place the pattern is written.
    """
    key = (pattern, min_length, max_length)
    regex = _TRANSLATED.get(key)
    if regex is None:
        regex = _translate(pattern, min_length, max_length, where)
        if len(_TRANSLATED) >= _TRANSLATED_KEPT:
            _TRANSLATED.clear()
        _TRANSLATED[key] = regex
    return regex


def _translate(pattern: str, min_length: int, max_length: int | None, where: str) -> str:
    try:
        parsed = parse(pattern)
    except re.error as error:
        raise InvalidSchemaError(
            f"pattern {pattern!r} is not a valid regex: {error}", where) from None
    translator = _PatternTranslator(parsed.state, where)
    if parsed.state.flags & ~sre_constants.SRE_FLAG_UNICODE:
        translator.refuse("inline flags such as (?i)")
    fitted = [
        regex
        for items, start, end in translator.alternatives(list(parsed), False, False)
        if (regex := translator.fit(items, start, end, min_length, max_length)) is not None
    ]
    if not fitted:
        raise UnsatisfiableSchemaError(
            f"no string matching pattern {pattern!r} has a length from {min_length} to "
            f"{max_length}", where)
    return alt(fitted)


class _PatternTranslator:
    """Re-emits a parsed (``sre_parse``) pattern as a regex over JSON string text."""

    def __init__(self, state, where: str):
        self.state = state
        self.where = where

    def refuse(self, what: str):
        raise UnsupportedSchemaError(f"pattern uses {what}, which cannot be enforced", self.where)

    def alternatives(self, items: list, start: bool, end: bool) -> list[tuple[list, bool, bool]]:
        """Split top-level alternation so that ``^a$|^b$`` anchors each side separately:
        ``(items, anchored at start, anchored at end)`` per alternative."""
        if items and items[0][0] is sre_constants.AT and items[0][1] in _STARTS:
            items, start = items[1:], True
        if items and items[-1][0] is sre_constants.AT and items[-1][1] in _ENDS:
            items, end = items[:-1], True
        only = items[0] if len(items) == 1 else (None, None)
        if only[0] is sre_constants.BRANCH:
            return [alt for sub in only[1][1] for alt in self.alternatives(list(sub), start, end)]
        if only[0] is sre_constants.SUBPATTERN and not any(only[1][1:3]):  # a group, no flags
            return self.alternatives(list(only[1][3]), start, end)
        return [(items, start, end)]

    def fit(self, items: list, start: bool, end: bool, low: int, high: int | None) -> str | None:
        """The regex of one alternative, padded on unanchored sides, with lengths in
        ``low..high``; None when no such length exists.

        Lengths are enforced only when the alternative's width already fits, or when exactly one
        piece varies in width and is a repeat of a fixed-width piece (e.g. ``^[a-z]+$``): then its
        repeat count is narrowed. Anything else would need a regex intersection.
        """
        pad, padding = ("pad", None), repeat(STRING_CHAR, 0, None)
        trailing_pad = not end and (items or start)  # an empty unanchored pattern needs one pad
        pieces = ([] if start else [pad]) + items + ([pad] if trailing_pad else [])
        widths = [
            (0, None) if piece is pad else width(sre_parse.SubPattern(self.state, [piece]))
            for piece in pieces
        ]
        shortest = sum(w[0] for w in widths)
        longest = None if any(w[1] is None for w in widths) else sum(w[1] for w in widths)
        if low <= shortest and (high is None or (longest is not None and longest <= high)):
            return "".join(padding if p is pad else self.translate([p]) for p in pieces)
        if (longest is not None and low > longest) or (high is not None and high < shortest):
            return None
        varying = [i for i, (a, b) in enumerate(widths) if a != b]
        if len(varying) != 1:
            self.refuse(f"a shape that minLength/maxLength ({low}..{high}) cannot be fitted to")
        index = varying[0]
        unit, size, fewest, most = self._repeated(pieces[index], pad)
        fixed = shortest - widths[index][0]
        fewest = max(fewest, -(-(low - fixed) // size))
        if high is not None:
            most = (high - fixed) // size if most is None else min(most, (high - fixed) // size)
        if most is not None and fewest > most:
            return None
        regexes = [padding if p is pad else self.translate([p]) for p in pieces]
        regexes[index] = repeat(unit, fewest, most)
        return "".join(regexes)

    def _repeated(self, piece, pad):
        """``(unit regex, unit width, fewest, most)`` of a piece that repeats a fixed-width unit."""
        if piece is pad:
            return STRING_CHAR, 1, 0, None
        op, av = piece
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
            fewest, most, sub = av
            size, size_max = width(sub)
            if size == size_max and size > 0:
                most = None if most == sre_constants.MAXREPEAT else most
                return self.translate(list(sub)), size, fewest, most
        self.refuse("a varying-width part that minLength/maxLength cannot be fitted to")

    def translate(self, items: list) -> str:
        return "".join(self._node(op, av) for op, av in items)

    def _node(self, op, av) -> str:
        c = sre_constants
        if op is c.LITERAL:
            return self._units([(av, av)])
        if op is c.NOT_LITERAL:
            return self._units(complement([(av, av)]))
        if op is c.ANY:
            return self._units(_DOT)
        if op is c.IN:
            return self._units(self._class(av))
        if op is c.BRANCH:
            return alt([self.translate(list(sub)) for sub in av[1]])
        if op is c.SUBPATTERN:
            if av[1] or av[2]:
                self.refuse("inline flags such as (?i:...)")
            return self.translate(list(av[3]))
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            fewest, most, sub = av
            return repeat(self.translate(list(sub)), fewest, None if most == c.MAXREPEAT else most)
        if op is c.AT:
            self.refuse("an anchor or word boundary that is not at the very start or end")
        if op in (c.GROUPREF, c.GROUPREF_EXISTS):
            self.refuse("a backreference")
        if op in (c.ASSERT, c.ASSERT_NOT):
            self.refuse("a lookaround")
        self.refuse(f"{str(op).lower()}")

    def _class(self, items: list) -> list[tuple[int, int]]:
        negate = bool(items) and items[0][0] is sre_constants.NEGATE
        ranges = []
        for op, av in items[negate:]:
            if op is sre_constants.LITERAL:
                ranges.append((av, av))
            elif op is sre_constants.RANGE:
                ranges.append(av)
            elif op is sre_constants.CATEGORY and av in _CATEGORIES:
                narrow, wide = _CATEGORIES[av]
                ranges += wide if negate else narrow
            elif op is sre_constants.CATEGORY and av in _NEGATED_CATEGORIES:
                narrow, wide = _CATEGORIES[_NEGATED_CATEGORIES[av]]
                ranges += complement(narrow if negate else wide)
            else:
                self.refuse(f"{op} in a character class")
        return complement(ranges) if negate else merged(ranges)

    def _units(self, ranges: list[tuple[int, int]]) -> str:
        """One JSON string character (raw or escaped) whose code point is in ``ranges``."""
        ranges = _intersect(ranges, _NON_SURROGATE)
        raw = _intersect(ranges, complement(_SPECIAL))
        parts = [_char_class(raw)] if raw else []
        specials = [code for a, b in _intersect(ranges, _SPECIAL) for code in range(a, b + 1)]
        parts += [escape(_SHORT_ESCAPES[code]) for code in specials if code in _SHORT_ESCAPES]
        controls = [code for code in specials if code not in _SHORT_ESCAPES]
        if controls:  # \u00XX, grouped by the first hex digit: \u00(?:0[0-7b]|1[0-9a-f])
            by_high: dict[int, str] = {}
            for code in controls:
                by_high[code >> 4] = by_high.get(code >> 4, "") + f"{code & 15:x}"
            pairs = [f"{hi}{low if len(low) == 1 else f'[{low}]'}" for hi, low in by_high.items()]
            parts.append(r"\\u00" + alt(pairs))
        if not parts:
            self.refuse("a character class that matches no character")
        return alt(parts)


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return complement(complement(a) + complement(b))


def _char_class(ranges: list[tuple[int, int]]) -> str:
    """A class over code point ranges (surrogates aside), negated when that is shorter.

    Every non-alphanumeric endpoint is hex-escaped, so nothing is special inside the class in
    either engine (Rust reads ``&&``, ``--``, ``[`` as set operations).
    """
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return escape(chr(ranges[0][0]))
    excluded = _intersect(complement(ranges), _NON_SURROGATE)
    if excluded and len(excluded) < len(ranges):
        return "[^" + _class_body(excluded) + "]"
    return "[" + _class_body(ranges) + "]"


def _class_body(ranges: list[tuple[int, int]]) -> str:
    def char(code: int) -> str:
        return chr(code) if chr(code).isascii() and chr(code).isalnum() else hex_escape(code)

    return "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges)
