"""re's own parser and its constants (named sre_* before Python 3.11), in one place.

A module of its own, so that the compile worker can parse a regex without importing the schema
compiler (``structgen.schema`` takes 120 ms to import)."""

from __future__ import annotations

try:  # Python >= 3.11
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover
    import sre_constants
    import sre_parse

__all__ = ["sre_constants", "sre_parse"]
