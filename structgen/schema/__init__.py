"""JSON schema → regular expression: the first stage of structgen's constraint pipeline."""

from structgen.schema import (
    branches,
    formats,
    layout,
    nodes,
    normalize,
    numbers,
    patterns,
    regex_text,
    to_regex,
)
from structgen.schema.layout import DEFAULT_WHITESPACE, WHITESPACE, WHITESPACE_MODES
from structgen.schema.normalize import normalize_schema
from structgen.schema.to_regex import DEFAULT_ANY_DEPTH, schema_to_regex

#: The modules whose source decides what ``schema_to_regex`` writes (what a cache of its regexes
#: must be versioned by).
COMPILER_MODULES = (normalize, regex_text, layout, nodes, numbers, formats, patterns, branches,
                    to_regex)

__all__ = ["DEFAULT_ANY_DEPTH", "DEFAULT_WHITESPACE", "WHITESPACE", "WHITESPACE_MODES",
           "normalize_schema", "schema_to_regex"]
