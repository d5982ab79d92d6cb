"""Regexes of JSON numbers: unbounded ones, and exact integer and decimal ranges.

Bounds are checked digit by digit, so a range is spelled as alternations of same-length digit
runs, longest first (outlines-core matches leftmost-first), in canonical spelling only.
"""

from __future__ import annotations

import functools

from structgen.schema.regex_text import alt, repeat

_FLOAT_DIGITS = 15  # significant decimal digits that a double holds exactly
#: Digits of an integer part or a fraction where a schema leaves a number unbounded: 16 spell
#: every integer JavaScript holds exactly (2**53 has 16 digits), milliseconds and microseconds
#: since 1970. Each digit costs states in every number's automaton: against 12 digits, an object
#: of eight numbers (eight integers) built 13% (22%) slower with 16, 43% (44%) with 19 (int64's).
DEFAULT_MAX_DIGITS = 16


@functools.cache  # one per digit limit: every schema_to_regex call writes it
def unbounded_number(max_digits: int) -> str:
    """An unbounded number: at most ``max_digits`` digits before and after the point, and an
    exponent that keeps it finite (``1e999`` would parse as inf, which JSON cannot hold), so at
    most 307 - ``max_digits`` (leading zeros allowed, as JSON allows them)."""
    whole = repeat("[0-9]", 0, max_digits - 1)
    fraction = repeat("[0-9]", 1, max_digits)
    exponent = natural_range(0, max(0, 307 - max_digits))
    return rf"-?(?:0|[1-9]{whole})(?:\.{fraction})?(?:[eE][+-]?0*{exponent})?"


def number_range(low: int | None, low_open: bool, high: int | None, high_open: bool,
                 max_digits: int) -> str | None:
    """Numbers without an exponent from ``low`` to ``high`` (``None``: that side open; ``*_open``:
    the bound itself excluded); None if none can be written with 15 significant digits."""
    parts = []
    if high is None or high > 0 or (high == 0 and not high_open):
        start = (low, low_open) if low is not None and low >= 0 else (0, False)
        parts.append(_unsigned(*start, high, high_open, max_digits))
    if low is None or low < 0:  # written with a minus sign, so its magnitude must be > 0
        start = (-high, high_open) if high is not None and high < 0 else (0, True)
        end = (-low, low_open) if low is not None else (None, False)
        magnitudes = _unsigned(*start, *end, max_digits)
        parts.append(None if magnitudes is None else "-" + magnitudes)
    if not any(parts):
        return None
    return alt([part for part in parts if part])


def _unsigned(low: int, low_open: bool, high: int | None, high_open: bool,
              max_digits: int) -> str | None:
    """Unsigned decimals ``I[.F]`` in the interval from ``low`` to ``high`` (``None``: open);
    None if none can be written.

    They carry at most 15 significant digits, which a double holds exactly: a validator that
    reads them as floats cannot round one onto an open bound (``9.9999999999999999`` is 10.0).
    """
    parts = []  # longest first (leftmost-first): the upper bound, the inside, the lower bound
    if high is not None and not high_open and (low < high or not low_open):
        zeros = _fraction_digits(len(str(high)), max_digits)  # "1e17" as a double is not 10**17 + 1
        parts.append(rf"{high}(?:\.0{{1,{zeros}}})?" if zeros else str(high))
    whole_low = low + 1 if low_open else low
    if high is None:
        whole_high = 10 ** max(max_digits, len(str(whole_low))) - 1
    else:
        whole_high = high - 1
    while whole_low <= whole_high:  # whole parts of the same fraction length, longest first
        shortest = len(str(whole_high))
        digits = _fraction_digits(shortest, max_digits)
        while shortest > 1 and _fraction_digits(shortest - 1, max_digits) == digits:
            shortest -= 1
        first = max(whole_low, 10 ** (shortest - 1) if shortest > 1 else 0)
        fraction = rf"(?:\.{repeat('[0-9]', 1, digits)})?" if digits else ""
        parts.append(natural_range(first, whole_high) + fraction)
        whole_high = first - 1
    digits = _fraction_digits(len(str(low)), max_digits)
    if low_open and (high is None or low < high) and digits:  # just above the open lower bound
        parts.append(f"{low}\\." + _nonzero_digits(digits))
    return alt(parts) if parts else None


def _fraction_digits(whole_digits: int, max_digits: int) -> int:
    return max(0, min(max_digits, _FLOAT_DIGITS - whole_digits))


def integer_range(low: int | None, high: int | None, max_digits: int) -> str:
    """Regex of the canonical spellings of the integers from ``low`` to ``high`` (inclusive).

    An open side stops at ``max_digits`` digits (or at the other bound's digit count, if larger).
    Zero is written ``0`` only, never ``-0``.
    """
    digits = max([max_digits] + [len(str(abs(b))) for b in (low, high) if b is not None])
    cap = 10**digits - 1
    low, high = -cap if low is None else low, cap if high is None else high
    if low < 0 < high and -low == high:
        return f"(?:0|-?{natural_range(1, high)})"
    parts = []
    if low < 0:
        parts.append("-" + natural_range(max(1, -high), -low))
    if high >= 0:
        parts.append(natural_range(max(0, low), high))
    return alt(parts)


@functools.lru_cache(maxsize=1024)  # the same bounds recur (an exponent's, 0..100, 1..12)
def natural_range(low: int, high: int) -> str:
    """Regex of the decimal spellings (no leading zeros) of ``low..high``, ``0 <= low <= high``.

    Longer numbers come first, so that a shorter one never cuts them off (leftmost-first).
    """
    parts: list[str] = []
    run: list[int] = []  # digit counts covered completely, longest first, written as one repeat
    smallest = max(low, 1)
    for length in range(len(str(high)), len(str(smallest)) - 1, -1) if smallest <= high else ():
        first, last = max(smallest, 10 ** (length - 1)), min(high, 10**length - 1)
        if first == 10 ** (length - 1) and last == 10**length - 1:
            run.append(length)
            continue
        parts += _full_lengths(run)
        run = []
        parts.append(_same_length(str(first), str(last)))
    parts += _full_lengths(run)
    if low == 0:
        parts.append("0")
    return alt(parts)


def _full_lengths(run: list[int]) -> list[str]:
    """``[1-9][0-9]{m,n}`` for a run of consecutive digit counts (longest first), if any."""
    return ["[1-9]" + repeat("[0-9]", run[-1] - 1, run[0] - 1)] if run else []


def _same_length(low: str, high: str) -> str:
    """Regex of the digit strings from ``low`` to ``high``, both of the same length."""
    if low == high:
        return low
    if len(low) == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return low[0] + _same_length(low[1:], high[1:])
    rest = len(low) - 1
    parts = []
    first, last = low[0], high[0]
    if low[1:] != "0" * rest:
        parts.append(low[0] + _same_length(low[1:], "9" * rest))
        first = chr(ord(first) + 1)
    if high[1:] != "9" * rest:
        last = chr(ord(last) - 1)
    if first <= last:
        digit = first if first == last else f"[{first}-{last}]"
        parts.append(digit + repeat("[0-9]", rest, rest))
    if high[1:] != "9" * rest:
        parts.append(high[0] + _same_length("0" * rest, high[1:]))
    return alt(parts)


def _nonzero_digits(digits: int) -> str:
    """1 to ``digits`` digits, not all zero (a fraction whose value is above zero)."""
    regex = "[1-9]"
    for width in range(2, digits + 1):
        regex = f"(?:[1-9]{repeat('[0-9]', 0, width - 1)}|0{regex})"
    return regex
