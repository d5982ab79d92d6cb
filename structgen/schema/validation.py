"""Checks of a schema document, and the validators structgen builds: none of them leaves the process.

A JSON schema is untrusted input (a user's file, a tool definition from a third party, a request to a
service), and a validator library will, if asked, fetch a ``$schema`` meta-schema or a remote
``$ref`` over HTTP or open it as a file. structgen never does, because of what a schema says:

- ``$schema`` is a draft selector: the URIs of the published drafts (3, 4, 6, 7, 2019-09, 2020-12,
  with or without the trailing ``#``, ``http`` or ``https``) select the built-in meta-schema; any
  other value is an ``UnsupportedSchemaError`` at its pointer.
- A ``$ref`` must be local (``#...``, or the root's own ``$id``); any other is an
  ``UnsupportedSchemaError`` at its pointer, before any validator is built.
- Every validator is built with a registry that refuses retrieval, so even a reference this check
  missed ends as a typed error, never as a request.

``check_document`` also bounds what would otherwise crash deep inside the pipeline: nesting deeper
than ``MAX_DEPTH`` levels (Python's recursion limit) and lone surrogates (no UTF-8 text, so neither
the prompt nor an answer, can hold them).
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import unquote

import jsonschema
import jsonschema_rs
import referencing
import referencing.exceptions

from structgen._sre import no_set_syntax_warnings
from structgen.errors import InvalidSchemaError, UnsupportedSchemaError

#: How deep a schema document may nest (objects and arrays, counting the root as 1). Real-world
#: schemas stay under 30 (JSONSchemaBench's 2,295 dev schemas: at most 27); the regex compiler
#: and the validators recurse per level and would hit Python's recursion limit near 400.
MAX_DEPTH = 128

#: Keywords that never change which instances validate; they are dropped.
ANNOTATIONS = frozenset({
    "$anchor", "$comment", "$dynamicAnchor", "$recursiveAnchor", "$schema", "$vocabulary",
    "contentEncoding", "contentMediaType", "contentSchema", "default", "deprecated", "description",
    "discriminator", "example", "examples", "externalDocs", "id", "readOnly", "title", "writeOnly",
})

# Where subschemas sit: as the value, as each list element, or as each value of a name map.
SUBSCHEMA = frozenset({
    "additionalItems", "additionalProperties", "contains", "else", "if", "items", "not",
    "propertyNames", "then", "unevaluatedItems", "unevaluatedProperties",
})
SUBSCHEMA_LISTS = frozenset({"allOf", "anyOf", "items", "oneOf", "prefixItems"})
SUBSCHEMA_MAPS = frozenset({"dependencies", "dependentSchemas", "patternProperties", "properties"})
DEFINITIONS = frozenset({"$defs", "definitions"})

_DRAFTS = (
    jsonschema.Draft3Validator, jsonschema.Draft4Validator, jsonschema.Draft6Validator,
    jsonschema.Draft7Validator, jsonschema.Draft201909Validator, jsonschema.Draft202012Validator,
)
_DEFAULT_DRAFT = jsonschema.Draft202012Validator


def _spellings(uri: str) -> list[str]:
    bare = uri.rstrip("#")
    other_scheme = ("https://" + bare[len("http://"):] if bare.startswith("http://")
                    else "http://" + bare[len("https://"):])
    return [bare, bare + "#", other_scheme, other_scheme + "#"]


#: Every accepted ``$schema`` value -> the validator class of its draft.
KNOWN_DRAFTS: dict[str, type] = {
    spelling: cls for cls in _DRAFTS for spelling in _spellings(cls.META_SCHEMA["$schema"])
}


def _refuse_retrieval(uri: str):
    raise referencing.exceptions.NoSuchResource(ref=uri)


#: The registry of every validator structgen builds: the drafts' own meta-schemas (jsonschema adds
#: them), and nothing that would be fetched.
NO_RETRIEVAL = referencing.Registry(retrieve=_refuse_retrieval)


def escape_token(token: str) -> str:
    """One JSON-pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def draft_of(schema: Any, pointer: str = "") -> type:
    """The validator class ``schema``'s ``$schema`` selects (2020-12 when there is none)."""
    if not isinstance(schema, dict) or "$schema" not in schema:
        return _DEFAULT_DRAFT
    uri = schema["$schema"]
    cls = KNOWN_DRAFTS.get(uri) if isinstance(uri, str) else None
    if cls is None:
        raise UnsupportedSchemaError(
            f"$schema {uri!r} is not a JSON Schema draft structgen knows (drafts 3, 4, 6, 7, "
            "2019-09 and 2020-12 by their published URIs); structgen never fetches a meta-schema",
            f"{pointer}/$schema")
    return cls


# What a walked node is: a schema, plain data (enum values, defaults, unknown keywords), or a
# list / name map whose dict members are schemas.
_SCHEMA, _DATA, _SCHEMA_LIST, _SCHEMA_MAP = range(4)


def _walk(schema: Any):
    """Every dict and list of the document once, iteratively: (node, path, depth, kind). ``path``
    is (the parent's path, the key) or None at the root, spelt as a pointer by ``_pointer``
    only where one is needed (a pointer string per node was most of a walk's time); scalars
    are not visited (``check_document`` reads its containers' strings itself)."""
    if not isinstance(schema, (dict, list)):
        return
    stack: list[tuple[Any, tuple | None, int, int]] = [(schema, None, 1, _SCHEMA)]
    push = stack.append
    while stack:
        item = stack.pop()
        yield item
        node, path, depth, kind = item
        members = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in members:
            if isinstance(value, (dict, list)):
                push((value, (path, key), depth + 1, _kind(kind, key, value)))


def _pointer(path: tuple | None) -> str:
    """The JSON pointer of a ``_walk`` path."""
    keys = []
    while path is not None:
        path, key = path
        keys.append(f"/{escape_token(key)}" if isinstance(key, str) else f"/{key}")
    return "".join(reversed(keys))


def check_document(schema: Any) -> None:
    """Typed errors, with the pointer, for what no validator may be built from: a document nested
    deeper than ``MAX_DEPTH``, a string or name with a lone surrogate, a ``$schema`` that is not a
    known draft, a ``$ref`` that is not local. One iterative walk, each node visited once, so it
    cannot overflow the stack it protects."""
    if isinstance(schema, str) and not schema.isascii():
        _check_text(schema, "", "string")
    base = base_uri(schema)
    for node, path, depth, kind in _walk(schema):
        if depth > MAX_DEPTH:
            raise UnsupportedSchemaError(f"the schema nests deeper than {MAX_DEPTH} levels",
                                         _pointer(path))
        members = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in members:
            if isinstance(key, str) and not key.isascii():
                _check_text(key, _pointer(path), "name")
            if isinstance(value, str) and not value.isascii():
                _check_text(value, _pointer((path, key)), "string")
        if kind == _SCHEMA and isinstance(node, dict):
            if "$ref" in node:
                _check_local_ref(node["$ref"], base, f"{_pointer(path)}/$ref")
            if "$schema" in node:
                draft_of(node, _pointer(path))


def without_ref_cycles(schema: Any) -> Any:
    """``schema`` with every ``$ref`` that only leads to more ``$ref``s and back (``{"$ref": "#"}``)
    taken out: such a chain constrains nothing, so it means any value, but a validator following
    it recurses forever. The schema itself when there is none (the common case: no copy)."""
    pure = {_pointer(path): node["$ref"] for node, path, _, kind in _walk(schema)
            if kind == _SCHEMA and isinstance(node, dict) and isinstance(node.get("$ref"), str)
            and all(k == "$ref" or k in ANNOTATIONS or k in DEFINITIONS for k in node)}
    base = base_uri(schema)
    endless = set()
    for start in pure:
        chain, at = [], start
        while at in pure and at not in chain and at not in endless:
            chain.append(at)
            uri, _, fragment = pure[at].partition("#")
            if (uri and uri != base) or (fragment and not fragment.startswith("/")):
                break  # refused elsewhere (not local), or an anchor: not followed here
            at = unquote(fragment)  # as _walk spells pointers
        else:
            if at in chain or at in endless:
                endless.update(chain)
    if not endless:
        return schema
    copied = copy.deepcopy(schema)
    for pointer in endless:
        del _node_at(copied, pointer)["$ref"]
    return copied


def base_uri(schema: Any) -> str:
    """The root's ``$id`` without its fragment: a ``$ref`` to it is local."""
    return str(schema.get("$id", "")).partition("#")[0] if isinstance(schema, dict) else ""


def _node_at(document: Any, pointer: str) -> Any:
    node = document
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def _kind(parent: int, key: Any, value: Any) -> int:
    """What the member ``key`` of a node of kind ``parent`` is."""
    if parent in (_SCHEMA_LIST, _SCHEMA_MAP):
        return _SCHEMA if isinstance(value, dict) else _DATA
    if parent != _SCHEMA:
        return _DATA
    if key in SUBSCHEMA_LISTS and isinstance(value, list):
        return _SCHEMA_LIST
    if key in SUBSCHEMA and isinstance(value, dict):
        return _SCHEMA
    if (key in SUBSCHEMA_MAPS or key in DEFINITIONS) and isinstance(value, dict):
        return _SCHEMA_MAP
    return _DATA


def _check_text(text: str, pointer: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        raise InvalidSchemaError(
            f"a {what} holds a lone surrogate (U+{code:04X}), which no UTF-8 text can hold: "
            f"{text!r}", pointer) from None
    return text


def _check_local_ref(ref: Any, base: str, at: str) -> None:
    if not isinstance(ref, str):
        raise InvalidSchemaError(f"$ref must be a string, not {type(ref).__name__}", at)
    uri = ref.partition("#")[0]
    if uri and uri != base:
        raise UnsupportedSchemaError(
            f"$ref {ref!r} is not local; only '#...' refs within this schema are supported "
            "(structgen never fetches or opens a referenced schema)", at)


def check_schema(schema: dict) -> None:
    """Typed error, with the pointer, for a schema structgen may not build anything from: first
    ``check_document``, then its draft's meta-schema.

    jsonschema-rs answers "valid" in tens of microseconds (jsonschema takes milliseconds, tens for
    big schemas, and this sits before the first token); it is asked only with a known ``$schema``
    in its canonical spelling, so it has nothing to fetch. A schema it doubts goes to jsonschema,
    whose verdict and message (its first error, as ``check_schema`` gives it) are the ones given."""
    check_document(schema)
    cls = draft_of(schema)
    canonical = cls.META_SCHEMA["$schema"]
    if cls is not jsonschema.Draft3Validator:  # jsonschema-rs has no draft 3
        probe = schema if schema.get("$schema", canonical) == canonical else {
            **schema, "$schema": canonical}
        try:
            if jsonschema_rs.meta.is_valid(probe):
                return
        except Exception:  # noqa: BLE001 - any doubt: jsonschema judges
            pass
    meta = cls(cls.META_SCHEMA, registry=NO_RETRIEVAL, format_checker=cls.FORMAT_CHECKER)
    with no_set_syntax_warnings():  # its "regex" format compiles each pattern with re
        error = next(iter(meta.iter_errors(schema)), None)
    if error is not None:
        pointer = "".join(f"/{escape_token(str(part))}" for part in error.path)
        raise InvalidSchemaError(f"not a valid JSON schema: {error.message}", pointer)


def validator(schema: dict | bool):
    """A jsonschema validator for a checked schema (``check_schema``): its draft's class and format
    checker, a registry that refuses retrieval, endless ``$ref`` chains read as any value."""
    cls = draft_of(schema)
    return cls(without_ref_cycles(schema), registry=NO_RETRIEVAL, format_checker=cls.FORMAT_CHECKER)


def first_problem(validator, instance: Any) -> jsonschema.ValidationError | None:
    """The best-matching validation error of ``instance``, or None. An instance nested too deep
    for the validator to recurse into is a problem too (it cannot be shown valid); a reference the
    validator cannot resolve (it never retrieves) is an ``UnsupportedSchemaError``."""
    try:
        return jsonschema.exceptions.best_match(validator.iter_errors(instance))
    except RecursionError:
        return jsonschema.ValidationError("the value nests too deep to be validated")
    except referencing.exceptions.Unresolvable as error:
        raise UnsupportedSchemaError(f"$ref {getattr(error, 'ref', '')!r} cannot be resolved "
                                     "within the schema") from None
