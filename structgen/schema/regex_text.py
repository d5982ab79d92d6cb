"""Building blocks of regex text, shared by every part of the schema compiler.

Every regex fragment the compiler writes goes through these: escaping literal text, alternation,
optional and repeated fragments (grouped only where a quantifier needs it), and the width of a
parsed regex. They hold no JSON-schema knowledge.
"""

from __future__ import annotations

import functools
import json
import re

from structgen._sre import sre_constants, sre_parse  # noqa: F401 (formats and patterns use them)

_META = frozenset("\\.^$|?*+()[]{}")
# A fragment that a quantifier can follow without a group: one (escaped) character or a class.
_SINGLE = re.compile(
    r"[^\\.^$|?*+()\[\]{}]"  # a plain character
    r"|\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[^xuU])"  # an escaped one
    r"|\[[^\]]*\]"  # a class
)


def escape(text: str) -> str:
    """A regex matching exactly ``text``."""
    if text.isascii():  # (most keys and values: one translate, not a generator per character)
        return text.translate(_ASCII_ESCAPES)
    return "".join(
        "\\" + c if c in _META else c if " " <= c <= "~" else hex_escape(ord(c)) for c in text
    )


#: ``escape`` of each ASCII character, for ``str.translate``.
_ASCII_ESCAPES = {code: "\\" + chr(code) if chr(code) in _META
                  else chr(code) if 0x20 <= code <= 0x7E else f"\\x{code:02x}"
                  for code in range(128)}


def hex_escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def string_literal(text: str) -> str:
    """A regex matching exactly ``text`` written as a JSON string literal."""
    return escape(_json_string(text))


def _json_string(text: str) -> str:
    """``text`` as a JSON string literal; lone surrogates (legal in JSON) escaped."""
    encoded = json.dumps(text, ensure_ascii=False)
    if encoded.isascii():
        return encoded
    return "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in encoded)


def alt(parts: list[str]) -> str:
    """The alternation of ``parts``, each written once, in order. A few parts are compared, not
    hashed: an object's members nest their alternatives, hundreds of kB each, and hashing each
    new text cost a quarter of Github_hard o45313's conversion."""
    if len(parts) <= 8:
        unique = []
        for part in parts:
            if part not in unique:  # (texts of different lengths differ at once)
                unique.append(part)
    else:
        unique = list(dict.fromkeys(parts))
    return unique[0] if len(unique) == 1 else "(?:" + "|".join(unique) + ")"


def atom(fragment: str) -> str:
    """``fragment`` as one unit that a quantifier or a prefix can apply to."""
    if _SINGLE.fullmatch(fragment) or _is_group(fragment):
        return fragment
    return f"(?:{fragment})"


def _is_group(fragment: str) -> bool:
    """True when ``fragment`` is one parenthesized group from its first to its last character.
    A schema's value regex is asked again at each use (an atom, a repeat, an alternative): the
    answers for fragments up to ``_REMEMBERED_FRAGMENT`` characters are kept (at most 512 of
    them), longer ones are scanned each time, so what is kept stays under 16 MiB."""
    if not (fragment.startswith("(") and fragment.endswith(")")):
        return False
    if len(fragment) > _REMEMBERED_FRAGMENT:
        return _one_group(fragment)
    return _remembered_one_group(fragment)


_REMEMBERED_FRAGMENT = 32_768


def _one_group(fragment: str) -> bool:
    depth, i = 0, 0
    while i < len(fragment):
        c = fragment[i]
        if c == "\\":
            i += 1
        elif c == "[":
            i = fragment.index("]", i + 1)  # classes never hold an unescaped "]"
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0 and i != len(fragment) - 1:
                return False
        i += 1
    return True


_remembered_one_group = functools.lru_cache(maxsize=512)(_one_group)


def optional(fragment: str) -> str:
    return atom(fragment) + "?" if fragment else ""


def repeat(fragment: str, fewest: int, most: int | None) -> str:
    if not fragment or most == 0:
        return ""
    if (fewest, most) == (1, 1):
        return fragment
    suffix = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((fewest, most))
    if suffix is None and fewest == most:
        suffix = f"{{{fewest}}}"
    elif suffix is None:
        suffix = f"{{{fewest},{'' if most is None else most}}}"
    return atom(fragment) + suffix


def width(parsed) -> tuple[int, int | None]:
    """Fewest and most characters a parsed regex matches (None: unbounded)."""
    low, high = parsed.getwidth()
    return low, None if high >= sre_constants.MAXREPEAT else high


#: A string character written raw: no escape, so that a key's spelling is its only spelling.
RAW_STRING_CHAR = r'[^"\\\x00-\x1f]'


def raw_string_other_than(names: list[str]) -> str:
    """A JSON string literal of raw characters (no escapes) whose text is none of ``names``.

    Built over the names' trie: at each node the text may end (unless a name ends there), go on
    with a character no name continues with (then anything), or follow a child. The regex grows
    with the names' total length, not their number squared."""
    trie: dict = {}
    for name in names:
        if '"' in name or "\\" in name or any(ord(c) < 0x20 for c in name):
            continue  # a raw key can never spell it
        node = trie
        for c in name:
            node = node.setdefault(c, {})
        node[None] = {}

    def other_than(node: dict) -> str:
        children = sorted(c for c in node if c is not None)
        excluded = "".join(hex_escape(ord(c)) for c in children)
        parts = [] if None in node else [""]
        parts.append(rf'[^"\\\x00-\x1f{excluded}]{RAW_STRING_CHAR}*')
        parts += [escape(c) + other_than(node[c]) for c in children]
        return "(?:" + "|".join(parts) + ")"

    return f'"{other_than(trie)}"'
