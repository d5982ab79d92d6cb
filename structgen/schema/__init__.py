"""JSON schema → regular expression: the first stage of structgen's constraint pipeline."""

from structgen.schema.normalize import normalize_schema
from structgen.schema.to_regex import (
    DEFAULT_WHITESPACE,
    WHITESPACE,
    WHITESPACE_MODES,
    schema_to_regex,
)

__all__ = ["DEFAULT_WHITESPACE", "WHITESPACE", "WHITESPACE_MODES", "normalize_schema", "schema_to_regex"]
