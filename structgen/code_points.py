"""Sets of Unicode code points as sorted, disjoint ``(low, high)`` ranges, inclusive.

Both readers of regex classes use them: the schema compiler's pattern translation
(``schema.patterns``) and the constraint's regex parser (``constraint.regex_nfa``).
"""

from __future__ import annotations

MAX_CODE = 0x10FFFF


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` sorted, with overlapping and touching ranges joined."""
    joined: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if joined and low <= joined[-1][1] + 1:
            joined[-1] = (joined[-1][0], max(joined[-1][1], high))
        else:
            joined.append((low, high))
    return joined


def complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The code points ``0..MAX_CODE`` that ``ranges`` leave out."""
    out, start = [], 0
    for low, high in merged(ranges):
        if low > start:
            out.append((start, low - 1))
        start = high + 1
    if start <= MAX_CODE:
        out.append((start, MAX_CODE))
    return out
