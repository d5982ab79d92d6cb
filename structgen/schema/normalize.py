"""Turn the schema a user gives into the plain tree that ``to_regex`` walks.

``normalize_schema`` checks the schema against its meta-schema, inlines every local ``$ref``, drops
the keywords that only annotate, and rewrites draft-4/7 spellings into their 2020-12 form, so the
regex builder meets one dialect and no references.

Inlining and merging build new dicts, so ``normalize`` also returns ``Origins``: for each node, the
JSON pointer of the place in the user's schema it came from. A node inlined from ``$defs`` keeps the
pointer of its definition (``/$defs/Foo/properties/x``), so every error names something the user
wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from structgen.errors import (
    InvalidSchemaError,
    RecursionLimitError,
    UnsatisfiableSchemaError,
    UnsupportedSchemaError,
)
from structgen.schema.validation import (
    ANNOTATIONS,
    DEFINITIONS,
    MAX_DEPTH,
    SUBSCHEMA,
    SUBSCHEMA_LISTS,
    SUBSCHEMA_MAPS,
    base_uri,
    check_schema,
    escape_token,
    without_ref_cycles,
)

Schema = dict | bool

# Formats a JSON Schema draft defines (draft 4 to 2020-12): a validator may check these. Draft 3
# also defined the ones below, dropped since; only a draft-3 schema means them (its ``host-name`` and
# ``ip-address`` are today's ``hostname`` and ``ipv4``). Any other format is a custom annotation,
# which validators (jsonschema's FORMAT_CHECKER included) ignore, so it is dropped.
STANDARD_FORMATS = frozenset({
    "date-time", "date", "time", "duration", "email", "idn-email", "hostname", "idn-hostname",
    "ipv4", "ipv6", "uri", "uri-reference", "iri", "iri-reference", "uuid", "uri-template",
    "json-pointer", "relative-json-pointer", "regex",
})
DRAFT3_FORMATS = {"host-name": "hostname", "ip-address": "ipv4", "color": "color",
                  "utc-millisec": "utc-millisec", "style": "style", "phone": "phone"}

# allOf keeps the tighter of two bounds.
_TIGHTER = {
    "minimum": max, "exclusiveMinimum": max, "maximum": min, "exclusiveMaximum": min,
    "minLength": max, "maxLength": min, "minItems": max, "maxItems": min,
    "minProperties": max, "maxProperties": min,
}


class Origins:
    """Maps each node of a normalized schema (by identity) to its JSON pointer in the user's schema.

    A merged node also remembers, per keyword, where that keyword was written, since the keywords of
    one merged dict come from several places.
    """

    def __init__(self) -> None:
        # The node itself is kept in the entry so that its id cannot be reused while we live.
        self._entries: dict[int, tuple[dict, str, dict[str, str]]] = {}

    def record(self, node: dict, pointer: str, keywords: dict[str, str] | None = None) -> None:
        self._entries[id(node)] = (node, pointer, keywords or {})

    def pointer(self, node: Schema, default: str) -> str:
        """Pointer of ``node``; ``default`` for nodes never recorded (``true``/``false``)."""
        entry = self._entries.get(id(node))
        return entry[1] if entry else default

    def keyword(self, node: Schema, key: str, default: str) -> str:
        """Pointer of keyword ``key`` of ``node`` (``default`` is the node's pointer if unknown)."""
        entry = self._entries.get(id(node))
        if entry is None:
            return f"{default}/{escape_token(key)}"
        return entry[2].get(key, f"{entry[1]}/{escape_token(key)}")

    def without(self, node: dict, *keys: str) -> dict:
        """A recorded copy of ``node`` minus ``keys``, keeping where its keywords came from."""
        where = self.pointer(node, "")
        rest = {k: v for k, v in node.items() if k not in keys}
        self.record(rest, where, {k: self.keyword(node, k, where) for k in rest})
        return rest

    def changed(self, node: dict, **values: Any) -> dict:
        """A recorded copy of ``node`` with some keyword values replaced (a narrowed node), keeping
        where its keywords came from."""
        where = self.pointer(node, "")
        out = {**node, **values}
        self.record(out, where, {k: self.keyword(node, k, where) for k in out})
        return out


class RecursionCut(dict):
    """Where bounded unrolling stops a recursive ``$ref``: no value is written here.

    To a validator it reads ``{"not": {}}`` (no value valid), which only narrows what the regex
    writes. It is not the real schema, so proofs about other branches must not read it as one
    (see ``contains_cut``)."""

    def __init__(self, ref: str, target: str, at: str, depth: int):
        super().__init__({"not": {}})
        self.error = RecursionLimitError(
            f"$ref {ref!r} recurses into {target or '/'} more than {depth} times here, and the "
            f"regex unrolls recursion {depth} levels deep", at)


def contains_cut(node: Any, _seen: set[int] | None = None) -> bool:
    """Whether a normalized node has a ``RecursionCut`` anywhere inside."""
    seen = set() if _seen is None else _seen
    if isinstance(node, RecursionCut):
        return True
    if id(node) in seen or not isinstance(node, (dict, list)):
        return False
    seen.add(id(node))
    values = node.values() if isinstance(node, dict) else node
    return any(contains_cut(v, seen) for v in values if isinstance(v, (dict, list)))


@dataclass
class Normalized:
    """A normalized schema and where each of its nodes came from."""

    schema: dict
    origins: Origins


def normalize_schema(schema: dict | bool) -> dict:
    """Check ``schema``, inline its local ``$ref``s and drop annotations (see the module doc)."""
    return normalize(schema).schema


def normalize(schema: dict | bool, max_recursion: int | None = None) -> Normalized:
    """``normalize_schema``, also returning the ``Origins`` of every node for error messages.

    A recursive ``$ref`` is refused unless ``max_recursion`` is given: then a definition may be
    entered again inside itself that many times, and a ``RecursionCut`` stands below that."""
    if schema is True:
        schema = {}
    if schema is False:
        raise UnsatisfiableSchemaError("the schema is `false`: no value is valid", "")
    if not isinstance(schema, dict):
        raise InvalidSchemaError(
            f"a JSON schema is an object or a boolean, not {type(schema).__name__}")
    check_schema(schema)
    schema = without_ref_cycles(schema)
    inliner = _Inliner(schema, max_recursion)
    root = inliner.node(schema, "")
    if root is False:
        raise UnsatisfiableSchemaError("the schema is `false`: no value is valid", "")
    if root is True:
        root = {}
    return Normalized(root, inliner.origins)


def normalize_check(schema: Any) -> None:
    """The cheap half of ``normalize``: typed errors for what is not a valid JSON schema."""
    if schema is False:
        raise UnsatisfiableSchemaError("the schema is `false`: no value is valid", "")
    if schema is True:
        return
    if not isinstance(schema, dict):
        raise InvalidSchemaError(
            f"a JSON schema is an object or a boolean, not {type(schema).__name__}")
    check_schema(schema)


class _Inliner:
    """Walks the user's schema from the root, inlining refs and rewriting each node once."""

    def __init__(self, root: dict, max_recursion: int | None = None):
        self.root = root
        self.max_recursion = max_recursion
        self._level = 0  # how many recursive $refs the current path has followed
        self.base_uri = base_uri(root)
        self.draft3 = _is_draft3(root)
        self.origins = Origins()
        # (pointer, level) -> normalized node, so each is built once per unrolling level
        self._done: dict[tuple[str, int], Schema] = {}
        self._active: dict[str, int] = {}  # pointers being normalized: a $ref to one is a cycle
        self._depth = 0  # schemas being normalized, nested

    def node(self, schema: Schema, pointer: str) -> Schema:
        if isinstance(schema, bool):
            return schema
        key = (pointer, self._level)
        if key not in self._done:
            if self._depth >= MAX_DEPTH:  # a chain of $refs nests deeper than the document does
                raise UnsupportedSchemaError(
                    f"the schema nests deeper than {MAX_DEPTH} levels once its $refs are inlined",
                    pointer)
            self._active[pointer] = self._active.get(pointer, 0) + 1
            self._depth += 1
            try:
                self._done[key] = self._rewrite(schema, pointer)
            finally:
                self._depth -= 1
                self._active[pointer] -= 1
                if not self._active[pointer]:
                    del self._active[pointer]
        return self._done[key]

    def _rewrite(self, schema: dict, pointer: str) -> Schema:
        if "$ref" not in schema:
            return self._keywords(schema, pointer)
        at = f"{pointer}/$ref"
        target_pointer, target = self._resolve(schema["$ref"], at)
        if target_pointer not in self._active:
            inlined = self.node(target, target_pointer)
        elif self.max_recursion is None:
            raise RecursionLimitError(
                f"recursive schema: $ref {schema['$ref']!r} refers back to "
                f"{target_pointer or '/'}, and a regex cannot nest without bound", at)
        elif self._level >= self.max_recursion:
            return RecursionCut(schema["$ref"], target_pointer, at, self.max_recursion)
        else:
            self._level += 1
            try:
                inlined = self.node(target, target_pointer)
            finally:
                self._level -= 1
        if isinstance(inlined, RecursionCut):
            return inlined  # no value: the siblings cannot add one
        siblings = self._keywords({k: v for k, v in schema.items() if k != "$ref"}, pointer)
        if not siblings:
            return inlined
        return merge(inlined, siblings, self.origins, pointer)

    def _resolve(self, ref: str, at: str) -> tuple[str, Schema]:
        """Pointer (canonical spelling) and raw subschema that a local ``$ref`` names."""
        uri, _, fragment = ref.partition("#")
        if uri and uri != self.base_uri:
            raise UnsupportedSchemaError(
                f"$ref {ref!r} is not local; only '#/...' refs are supported", at)
        fragment = unquote(fragment)
        if fragment and not fragment.startswith("/"):
            raise UnsupportedSchemaError(
                f"$ref {ref!r} names an anchor; use a JSON pointer '#/...'", at)
        target: object = self.root
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in fragment.split("/")[1:]]
        for token in tokens:
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise InvalidSchemaError(f"$ref {ref!r} points to nothing in this schema", at)
        if not isinstance(target, (dict, bool)):
            raise InvalidSchemaError(
                f"$ref {ref!r} points to a {type(target).__name__}, not a schema", at)
        return "".join(f"/{escape_token(t)}" for t in tokens), target

    def _keywords(self, schema: dict, pointer: str) -> dict:
        out: dict = {}
        where: dict[str, str] = {}
        for key, value in schema.items():
            at = f"{pointer}/{escape_token(key)}"
            if key in ANNOTATIONS or key in DEFINITIONS or key.startswith("x-"):
                continue
            if key == "$id":
                if pointer:
                    raise UnsupportedSchemaError("$id inside a subschema (embedded resource)", at)
            elif key == "format":
                if (value := standard_format(value, self.draft3)) is not None:
                    out[key] = value
            elif key in ("$dynamicRef", "$recursiveRef"):
                raise UnsupportedSchemaError(f"{key} is not supported", at)
            elif key in SUBSCHEMA_LISTS and isinstance(value, list):
                out[key] = [self.node(v, f"{at}/{i}") for i, v in enumerate(value)]
            elif key in SUBSCHEMA:
                out[key] = self.node(value, at)
            elif key in SUBSCHEMA_MAPS:
                out[key] = {
                    name: v if isinstance(v, list) else self.node(v, f"{at}/{escape_token(name)}")
                    for name, v in value.items()
                }
            else:
                out[key] = value
        _upgrade_to_2020_12(out, where, pointer)
        self._require_discriminator(schema, out, pointer)
        self.origins.record(out, pointer, where)
        return out

    def _require_discriminator(self, schema: dict, out: dict, pointer: str) -> None:
        """OpenAPI's ``discriminator`` (pydantic emits it) means the tag property is always
        written, and pydantic rejects a value without it: make it required in every branch."""
        discriminator = schema.get("discriminator")
        name = discriminator.get("propertyName") if isinstance(discriminator, dict) else None
        for key in ("oneOf", "anyOf"):
            if name and isinstance(out.get(key), list):
                tag, at = {"required": [name]}, f"{pointer}/discriminator"
                out[key] = [merge(branch, tag, self.origins, at) for branch in out[key]]


def _is_draft3(root: dict) -> bool:
    return "draft-03" in str(root.get("$schema", ""))


def standard_format(name: Any, draft3: bool) -> str | None:
    """The format ``name`` means in a schema of its draft, or None for a custom annotation."""
    if draft3 and name in DRAFT3_FORMATS:
        return DRAFT3_FORMATS[name]
    return name if name in STANDARD_FORMATS else None


def without_custom_formats(schema: Any) -> Any:
    """The user's schema minus its custom ``format`` annotations (for engines that refuse unknown
    formats, such as llguidance); ``$ref``s are kept, not inlined."""
    draft3 = isinstance(schema, dict) and _is_draft3(schema)

    def walk(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "format":
                if (value := standard_format(value, draft3)) is None:
                    continue
            elif key in SUBSCHEMA_LISTS and isinstance(value, list):
                value = [walk(v) for v in value]
            elif key in SUBSCHEMA:
                value = walk(value)
            elif (key in SUBSCHEMA_MAPS or key in DEFINITIONS) and isinstance(value, dict):
                value = {name: walk(v) for name, v in value.items()}
            out[key] = value
        return out

    return walk(schema)


def _upgrade_to_2020_12(out: dict, where: dict[str, str], pointer: str) -> None:
    """Rewrite draft-4 boolean exclusive bounds and draft-7 tuple ``items`` in place."""
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(exclusive), bool):
            if out.pop(exclusive) and inclusive in out:
                out[exclusive] = out.pop(inclusive)
                where[exclusive] = f"{pointer}/{inclusive}"
    if isinstance(out.get("items"), list):
        out["prefixItems"] = out.pop("items")
        where["prefixItems"] = f"{pointer}/items"
        if "additionalItems" in out:
            out["items"] = out.pop("additionalItems")
            where["items"] = f"{pointer}/additionalItems"
    out.pop("additionalItems", None)  # without tuple items it has no effect


# --- merging ----------------------------------------------------------------------------------


def json_equal(a: object, b: object) -> bool:
    """JSON-value equality as JSON Schema defines it: ``1 == 1.0`` but ``true != 1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    return (numbers or type(a) is type(b)) and a == b


def merge(a: Schema, b: Schema, origins: Origins, pointer: str) -> Schema:
    """One schema that holds exactly when ``a`` and ``b`` both hold (allOf, $ref with siblings).

    Only a shallow merge is attempted: properties are united (a shared property merges
    recursively), bounds tighten, ``required`` and ``enum`` combine; any other keyword given twice
    with different values is refused rather than approximated.
    """
    if a is True or a == {}:
        return b
    if b is True or b == {}:
        return a
    if a is False or b is False:
        return False
    if isinstance(a, RecursionCut) or isinstance(b, RecursionCut):
        return a if isinstance(a, RecursionCut) else b
    _check_mergeable(a, b, origins, pointer)
    out = dict(a)
    where = {key: origins.keyword(a, key, pointer) for key in a}
    for key, value in b.items():
        at = origins.keyword(b, key, pointer)
        if key not in out:
            out[key], where[key] = value, at
        elif json_equal(out[key], value):
            continue
        elif key in _TIGHTER:
            out[key] = _TIGHTER[key](out[key], value)
            where[key] = at if out[key] == value else where[key]
        elif key == "type":
            out[key] = _intersect_types(out[key], value, at)
        elif key == "required":
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key == "enum":
            out[key] = [v for v in out[key] if any(json_equal(v, w) for w in value)]
        elif key == "const":
            raise UnsatisfiableSchemaError("two different `const` values must both hold", at)
        elif key == "uniqueItems":
            out[key] = True
        elif key == "properties":
            out[key] = _merge_properties(out[key], value, origins, at)
        elif key in ("items", "additionalProperties"):
            out[key] = merge(out[key], value, origins, at)
        else:
            raise UnsupportedSchemaError(f"cannot combine two different {key!r} keywords", at)
    origins.record(out, pointer, where)
    return out


def _check_mergeable(a: dict, b: dict, origins: Origins, pointer: str) -> None:
    """Refuse pairs whose keywords interact in ways a plain union would get wrong."""
    for one, other in ((a, b), (b, a)):
        closed = one.get("additionalProperties")
        if closed is not None and closed is not True and closed != {}:
            extra = set(other.get("properties", {})) - set(one.get("properties", {}))
            if extra or (closed is not False and other.get("properties")):
                raise UnsupportedSchemaError(
                    f"cannot combine additionalProperties with properties declared elsewhere "
                    f"({', '.join(sorted(extra or other['properties']))})",
                    origins.keyword(one, "additionalProperties", pointer))
        if "prefixItems" in one and "items" in other and "prefixItems" not in other:
            raise UnsupportedSchemaError(
                "cannot combine prefixItems with items that apply to every position",
                origins.keyword(one, "prefixItems", pointer))


def _merge_properties(mine: dict, theirs: dict, origins: Origins, at: str) -> dict:
    out = dict(mine)
    for name, schema in theirs.items():
        if name in out:
            schema = merge(out[name], schema, origins, f"{at}/{escape_token(name)}")
        out[name] = schema
    return out


def _intersect_types(a: str | list, b: str | list, at: str) -> list[str]:
    a_types = {a} if isinstance(a, str) else set(a)
    b_types = {b} if isinstance(b, str) else set(b)
    both = a_types & b_types
    for x, y in ((a_types, b_types), (b_types, a_types)):
        if "integer" in x and "number" in y:
            both.add("integer")
    if not both:
        raise UnsatisfiableSchemaError(
            f"no type is allowed by both {sorted(a_types)} and {sorted(b_types)}", at)
    return sorted(both)
