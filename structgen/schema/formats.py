"""Regexes of the string ``format`` values structgen enforces (dates, addresses, URIs, ...).

Each is a safe subset of its RFC: every string it matches is valid, not every valid string is
matched (docs/schema-support.md lists what each leaves out).
"""

from __future__ import annotations

import functools

from structgen.errors import UnsatisfiableSchemaError, UnsupportedSchemaError
from structgen.schema.regex_text import sre_parse, width

_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = (
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16 = "[0-9a-fA-F]{1,4}"
_LS32 = f"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = "(?:" + "|".join([  # RFC 3986 IPv6address, one alternative per position of "::"
    f"(?:{_H16}:){{6}}{_LS32}",
    f"::(?:{_H16}:){{5}}{_LS32}",
    f"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
    *(
        f"(?:(?:{_H16}:){{0,{n}}}{_H16})?::{tail}"
        for n, tail in [
            (1, f"(?:{_H16}:){{3}}{_LS32}"),
            (2, f"(?:{_H16}:){{2}}{_LS32}"),
            (3, f"{_H16}:{_LS32}"),
            (4, _LS32),
            (5, _H16),
            (6, ""),
        ]
    ),
]) + ")"
# Hostname labels are capped at 40 characters and 6 labels, so the whole name stays under 253.
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}[A-Za-z0-9])?"
_TOP_LABEL = "[A-Za-z](?:[A-Za-z0-9-]{0,38}[A-Za-z0-9])?"
_HOSTNAME = rf"(?:{_LABEL}\.){{0,5}}{_TOP_LABEL}"
_ATOM = "[A-Za-z0-9_+-]+"
_EMAIL = rf"{_ATOM}(?:\.{_ATOM}){{0,3}}@(?:{_LABEL}\.){{1,4}}[A-Za-z]{{2,24}}"
_PORT = "(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_PCHAR = "(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
_URI = (
    rf"[A-Za-z][A-Za-z0-9+.-]*://{_HOSTNAME}(?::{_PORT})?(?:/{_PCHAR}*)*"
    rf"(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
)

# RFC 3339 appendix A durations (at most 9 digits per field): P1Y2M3DT4H5M6S, P2W, PT30M...
_DURATION_TIME = "T(?:[0-9]{1,9}H(?:[0-9]{1,9}M(?:[0-9]{1,9}S)?)?|[0-9]{1,9}M(?:[0-9]{1,9}S)?|[0-9]{1,9}S)"
_DURATION = (
    "P(?:(?:[0-9]{1,9}Y(?:[0-9]{1,9}M(?:[0-9]{1,9}D)?)?|[0-9]{1,9}M(?:[0-9]{1,9}D)?|[0-9]{1,9}D)"
    f"(?:{_DURATION_TIME})?|{_DURATION_TIME}|[0-9]{{1,9}}W)"
)

#: The string formats enforced; each regex is a safe subset of its RFC (see the docs).
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": f"{_DATE}T{_TIME}",
    "duration": _DURATION,
    "uuid": "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "email": _EMAIL,
    "hostname": _HOSTNAME,
    "ipv4": _IPV4,
    "ipv6": _IPV6,
    "uri": _URI,
}


@functools.cache
def _widths(name: str) -> tuple[int, int | None]:
    """(the shortest, the longest or None) of a format's texts: re's parse of the larger formats
    took a millisecond, every time a schema used one."""
    return width(sre_parse.parse(FORMATS[name]))


def format_regex(name: str, low: int, high: int | None, where: str) -> str:
    if name not in FORMATS:
        raise UnsupportedSchemaError(
            f"format {name!r} is not supported (supported: {', '.join(sorted(FORMATS))})", where)
    regex = FORMATS[name]
    shortest, longest = _widths(name)
    if (longest is not None and low > longest) or (high is not None and high < shortest):
        raise UnsatisfiableSchemaError(
            f"no {name} has a length between minLength and maxLength", where)
    if low > shortest or (high is not None and (longest is None or high < longest)):
        raise UnsupportedSchemaError(
            f"format {name!r} with minLength/maxLength that cut into its lengths", where)
    return regex
