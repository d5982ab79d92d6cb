"""Facts about normalized schema nodes that the walker and the oneOf analysis both need.

Which keywords imply a type, which keyword values constrain nothing, when an object is written as
free key/value pairs, and the validator that checks values against a node.
"""

from __future__ import annotations

import jsonschema

from structgen.schema.validation import NO_RETRIEVAL

_VALIDATOR = jsonschema.Draft202012Validator

# Keywords that only constrain one instance type, so also imply it when "type" is absent.
TYPE_KEYWORDS = {
    "object": frozenset({
        "properties", "required", "additionalProperties", "minProperties", "maxProperties",
        "patternProperties", "propertyNames", "dependentRequired", "dependentSchemas",
        "dependencies", "unevaluatedProperties",
    }),
    "array": frozenset({
        "items", "prefixItems", "minItems", "maxItems", "uniqueItems", "contains", "minContains",
        "maxContains", "unevaluatedItems",
    }),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "number": frozenset({
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    }),
}


def validator(schema: dict | bool) -> jsonschema.protocols.Validator:
    """A validator for a normalized (2020-12, ref-free) schema, checking formats too."""
    return _VALIDATOR(schema, registry=NO_RETRIEVAL, format_checker=_VALIDATOR.FORMAT_CHECKER)


def is_map(node: dict) -> bool:
    """Whether an object node is written as free ``"key":value`` pairs rather than as its
    declared properties: additionalProperties is a schema, or nothing is declared and it is open
    or has patternProperties."""
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra != {}:
        return True
    if "properties" in node or "required" in node:
        return False
    return extra is not False or not trivial(node.get("patternProperties", {}))


def trivial(schema: object) -> bool:
    """True for keyword values that constrain nothing: ``true``, ``{}``, empty maps/lists."""
    return schema is True or schema == {} or schema == []
