"""re's own parser and its constants (named sre_* before Python 3.11), in one place.

A module of its own, so that the compile worker can parse a regex without importing the schema
compiler (``structgen.schema`` takes 120 ms to import)."""

from __future__ import annotations

import contextlib
import warnings

try:  # Python >= 3.11
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover
    import sre_constants
    import sre_parse



@contextlib.contextmanager
def no_set_syntax_warnings():
    """re's FutureWarning on ``[[``, ``--``, ``&&`` or ``||`` in a class, silenced: such a
    pattern is valid today, and the warning is about a future syntax, not the user's schema."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def parse(pattern: str):
    """``sre_parse.parse``, without re's set-syntax warning (``no_set_syntax_warnings``)."""
    with no_set_syntax_warnings():
        return sre_parse.parse(pattern)


__all__ = ["no_set_syntax_warnings", "parse", "sre_constants", "sre_parse"]
