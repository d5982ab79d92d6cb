"""What json.dumps writes in each bounded whitespace mode, and a check that a text is laid out so.

Scalars have several spellings in every mode (``"\\u00e9"`` or ``"é"``, ``1.50`` or ``1.5``):
the whitespace mode fixes only the layout around them, so ``relaid`` keeps each scalar as it is
spelled and re-serialises the rest with json.dumps.
"""

from __future__ import annotations

import json
import re

from structgen.schema import WHITESPACE_MODES

#: json.dumps arguments of each bounded mode (all of WHITESPACE_MODES but "flexible").
DUMPS = {"compact": {"separators": (",", ":")}, "spaced": {}, "indented": {"indent": 2}}
BOUNDED = tuple(mode for mode in WHITESPACE_MODES if mode != "flexible")
assert set(BOUNDED) == set(DUMPS)

_SCALAR = re.compile(r'"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null')
_MARK = re.compile(r'"@([0-9]+)"')


def dumps(value, mode: str, *, ensure_ascii: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, **DUMPS[mode])


def relaid(text: str, mode: str) -> str:
    """``text`` (one JSON text) as json.dumps lays it out in ``mode``, scalars as spelled."""
    scalars: list[str] = []

    def mark(match: re.Match) -> str:
        scalars.append(match.group())
        return f'"@{len(scalars) - 1}"'

    skeleton = json.loads(_SCALAR.sub(mark, text))  # every key unique: duplicates stay apart
    return _MARK.sub(lambda match: scalars[int(match.group(1))], dumps(skeleton, mode))
