"""JSON schema → regular expression: the first stage of structgen's constraint pipeline."""

from structgen.schema.normalize import normalize_schema
from structgen.schema.to_regex import WHITESPACE, schema_to_regex

__all__ = ["WHITESPACE", "normalize_schema", "schema_to_regex"]
