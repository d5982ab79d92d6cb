"""Whether the branches of a ``oneOf`` exclude each other, and how to narrow them until they do.

A ``oneOf`` is written as an alternation of its branches, which is right only when no value the
regex writes matches two of them. This analysis decides that on the branches' meaning (their schema
nodes), not on their regex texts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from structgen.errors import UnsatisfiableSchemaError, UnsupportedSchemaError
from structgen.schema.nodes import TYPE_KEYWORDS, is_map, validator
from structgen.schema.normalize import Origins, Schema, contains_cut, merge

_JSON_TYPES = frozenset({"null", "boolean", "object", "array", "string", "number"})


class BranchAnalysis:
    """The oneOf checks of one ``schema_to_regex`` call: ``origins`` to narrow nodes with,
    ``check_time`` called at every pair of branches (it raises past the call's deadline)."""

    def __init__(self, origins: Origins, check_time: Callable[[], None]):
        self.origins = origins
        self.check_time = check_time
        # node id -> (the node, kept so that its id is not reused; its validator): the pairs of a
        # oneOf's branches check the same nodes' values again and again (Github_ultra o360
        # built 984 validators for its 4 oneOfs)
        self._validators: dict[int, tuple[Schema, Any]] = {}

    def _validator(self, schema: Schema):
        known = self._validators.get(id(schema))
        if known is None:
            known = self._validators[id(schema)] = (schema, validator(schema))
        return known[1]

    def exclusive_branches(self, branches: list[dict | bool], at: str) -> list[tuple[int, Schema]]:
        """The oneOf branches to write, each narrowed so that no value it writes matches another
        branch (checked on meaning, not on regex texts: a branch's regex is narrower than what the
        branch accepts).

        A branch that may overlap another is narrowed, by requiring a property the other forbids
        or by never writing a property the other requires; one that still may overlap is not
        written (its values may be invalid). When no branch is left, the oneOf is refused.
        """
        written, first_overlap = [], None
        for i, branch in enumerate(branches):
            narrowed = branch
            for j, other in enumerate(branches):
                self.check_time()
                if i == j or self._excludes(narrowed, other):
                    continue
                narrowed = (self._require_forbidden(narrowed, other)
                            or self._omit_required_of(narrowed, other))
                if narrowed is None or not self._excludes(narrowed, other):
                    first_overlap = first_overlap or (i, j)
                    break
            else:
                written.append((i, narrowed))
        if not written and first_overlap:
            i, j = first_overlap
            raise UnsupportedSchemaError(
                f"oneOf branches {i} and {j} may both match one value; structgen writes a oneOf "
                "branch only when it provably excludes the others (by type, by a required "
                "property or its const/enum values, by enum values or numeric range, or by a "
                "property the other forbids; use anyOf if overlap is fine)", at)
        return written

    def _require_forbidden(self, produced: Schema, other: Schema) -> Schema | None:
        """``produced`` narrowed to require one of its properties that ``other`` forbids
        (``additionalProperties: false`` without that name), or None if there is none."""
        if not (self._is_record(produced) and isinstance(other, dict)):
            return None
        if other.get("additionalProperties") is not False or other.get("patternProperties"):
            return None
        required = produced.get("required", [])
        for name in produced.get("properties", {}):
            if name not in other.get("properties", {}) and name not in required:
                return self.origins.changed(produced, required=[*required, name])
        return None

    def _omit_required_of(self, produced: Schema, other: Schema) -> Schema | None:
        """``produced`` narrowed to never write a property that ``other`` requires (the
        "exactly one of a / b" idiom: ``oneOf: [{required: [a]}, {required: [b]}]``), or None."""
        if not (self._is_record(produced) and isinstance(other, dict)):
            return None
        required = produced.get("required", [])
        for name in other.get("required", []):
            if name not in required:
                return self.origins.changed(produced, properties={
                    n: v for n, v in produced.get("properties", {}).items() if n != name})
        return None

    def _is_record(self, node: Schema) -> bool:
        """Whether ``node`` writes only objects, each as its declared properties."""
        return (isinstance(node, dict) and self._produced_types(node) == {"object"}
                and not is_map(node))

    def _excludes(self, produced: dict | bool, other: dict | bool) -> bool:
        """True when no value that the regex of ``produced`` admits is valid under ``other``."""
        if other is False:
            return True
        if produced is True or other is True:
            return False
        if not self._produced_types(produced) & _admitted_types(other):
            return True
        for finite, schema in ((produced, other), (other, produced)):  # no listed value fits
            values = _const_values(finite)
            if values is None or (schema is other and contains_cut(other)):
                continue  # a validator reads the cut as `false`, which other's values are not
            if not any(self._validator(schema).is_valid(v) for v in values):
                return True
        return self._discriminated(produced, other) or self._ranges_apart(produced, other)

    def _produced_types(self, node: dict) -> set[str]:
        """JSON types the regex of ``node`` may write (integer counted as number)."""
        if "enum" in node or "const" in node:
            return {_json_type(v) for v in _const_values(node)}
        if "allOf" in node:
            return set(_JSON_TYPES)
        for key in ("anyOf", "oneOf"):
            if key in node:
                rest = self.origins.without(node, key)
                try:
                    merged = [merge(rest, sub, self.origins, "") for sub in node[key]]
                except (UnsupportedSchemaError, UnsatisfiableSchemaError):
                    return set(_JSON_TYPES)
                return set().union(*(self._produced_types(m) for m in merged if m is not False))
        if "type" in node:
            return _admitted_types(node)
        implied = {t for t, keywords in TYPE_KEYWORDS.items() if keywords & node.keys()}
        return implied or set(_JSON_TYPES)

    def _discriminated(self, produced: dict, other: dict) -> bool:
        """``other`` requires a property that ``produced`` never writes, or ``produced`` requires
        one whose values ``other`` never allows there (recursively)."""
        if not self._is_record(produced):
            return False
        written = set(produced.get("properties", {})) | set(produced.get("required", []))
        if set(other.get("required", [])) - written:
            return True
        mine = produced.get("properties", {})
        for name in produced.get("required", []):
            if name in mine and self._excludes(mine[name], _property_schema(other, name)):
                return True
        return False

    def _ranges_apart(self, produced: dict, other: dict) -> bool:
        numeric = {"number"}
        if not (self._produced_types(produced) <= numeric and _admitted_types(other) <= numeric):
            return False
        (a_low, a_high), (b_low, b_high) = _interval(produced), _interval(other)
        return _below(a_high, b_low) or _below(b_high, a_low)


def _property_schema(node: dict, name: str) -> Schema:
    """What ``node`` allows as the value of property ``name`` (True when it may not say)."""
    if not isinstance(node, dict) or node.get("patternProperties"):
        return True
    if name in node.get("properties", {}):
        return node["properties"][name]
    return node.get("additionalProperties", True)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", type(None): "null", list: "array", dict: "object"}[type(value)]


def _const_values(node: object) -> list | None:
    if not isinstance(node, dict):
        return None
    if "enum" in node:
        return node["enum"]
    return [node["const"]] if "const" in node else None


def _admitted_types(node: Schema) -> set[str]:
    """JSON types a node may accept (integer counted as number); all of them when unsaid."""
    if isinstance(node, bool):
        return set(_JSON_TYPES) if node else set()
    if "enum" in node or "const" in node:
        return {_json_type(v) for v in _const_values(node)}
    declared = node.get("type")
    names = _JSON_TYPES if declared is None else [declared] if isinstance(declared, str) else declared
    types = {"number" if name == "integer" else name for name in names}
    for key in ("anyOf", "oneOf"):  # a value must pass some branch
        if isinstance(node.get(key), list):
            types &= set().union(*map(_admitted_types, node[key]))
    for sub in node.get("allOf", []):
        types &= _admitted_types(sub)
    return types


def _interval(node: dict):
    """``((low, open), (high, open))`` of a numeric node, None for an open end."""

    def bounds(*keys: str) -> list[tuple[float, bool]]:
        return [(node[k], k.startswith("exclusive")) for k in keys if k in node]

    lows, highs = bounds("minimum", "exclusiveMinimum"), bounds("maximum", "exclusiveMaximum")
    return max(lows, default=None), min(highs, default=None, key=lambda h: (h[0], not h[1]))


def _below(high, low) -> bool:
    """Every number up to bound ``high`` is below every number from bound ``low``."""
    if high is None or low is None:
        return False
    return high[0] < low[0] or (high[0] == low[0] and (high[1] or low[1]))
