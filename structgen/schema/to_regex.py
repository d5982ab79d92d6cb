"""JSON schema → regular expression over JSON text.

The regex is what the decoder enforces, so the property that matters most is that every text it
fully matches parses as JSON and validates against the schema. Where a keyword cannot be expressed
exactly, ``schema_to_regex`` raises ``UnsupportedSchemaError`` naming the keyword instead of
approximating it. Where the regex accepts a strict subset of the valid texts (one property order,
capped digits, ...), docs/schema-support.md says so.

Regexes are written in the subset that Python's ``re`` and Rust's ``regex-automata`` (used by
outlines-core) read alike: no lookarounds or backreferences, explicit ASCII classes instead of
``\\d \\w \\s`` (Unicode-aware in Rust), non-ASCII code points as ``\\xHH``, ``\\uHHHH`` or
``\\UHHHHHHHH``.
The regex is meant to be matched whole (full match); it carries no anchors.

outlines-core builds its DFA with leftmost-first semantics: once one alternative has matched the
whole text so far, alternatives after it that could go on are dropped (``1|12`` never reaches
``12``). JSON values end unambiguously, except numbers, so this only bites where a number ends the
whole text; number alternatives and enum literals are therefore written longest first. (Its index
also never steps from a complete text to an incomplete one, so a top-level ``1`` cannot become
``1.5``; no regex can fix that, see docs/schema-support.md.)
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time

from structgen.errors import (
    CompileTimeoutError,
    RecursionLimitError,
    RegexTooLargeError,
    UnsatisfiableSchemaError,
    UnsupportedSchemaError,
)
from structgen.schema.branches import BranchAnalysis
from structgen.schema.formats import format_regex
from structgen.schema.layout import (
    DEFAULT_WHITESPACE,
    STRING,
    STRING_CHAR,
    Layout,
)
from structgen.schema.nodes import TYPE_KEYWORDS, is_map, trivial, validator
from structgen.schema.normalize import (
    Origins,
    RecursionCut,
    escape_token,
    merge,
    normalize,
)
from structgen.schema.numbers import (
    DEFAULT_MAX_DIGITS,
    integer_range,
    number_range,
    unbounded_number,
)
from structgen.schema.patterns import pattern_regex
from structgen.schema.regex_text import (
    alt,
    escape,
    optional,
    raw_string_other_than,
    repeat,
    string_literal,
)

_REFUSED = {
    "not": "'not' (negation) cannot be enforced",
    "if": "conditional schemas (if/then/else) cannot be enforced",
    "then": "conditional schemas (if/then/else) cannot be enforced",
    "else": "conditional schemas (if/then/else) cannot be enforced",
}
# Object keywords refused unless they are empty (or true).
_DEPENDENCY_KEYWORDS = ("dependentRequired", "dependencies", "dependentSchemas")
_REFUSED_OBJECT_KEYWORDS = (
    "patternProperties", "propertyNames", "dependentRequired", "dependentSchemas", "dependencies",
)


MAX_REGEX_CHARS = 1 << 20


#: How deep arrays and objects nest inside a value the schema leaves open, by default.
DEFAULT_ANY_DEPTH = 3


def schema_to_regex(
    schema: dict | bool,
    *,
    whitespace: str = DEFAULT_WHITESPACE,
    max_digits: int = DEFAULT_MAX_DIGITS,
    max_any_depth: int = DEFAULT_ANY_DEPTH,
    max_recursion: int | None = None,
    timeout: float | None = None,
    level: int = 0,
    extra_properties: bool = False,
) -> str:
    """A regex whose full matches are JSON texts valid under ``schema``.

    ``whitespace`` is one of ``WHITESPACE_MODES``: ``"compact"``, ``"spaced"`` and ``"indented"``
    admit exactly the layout ``json.dumps`` writes with ``separators=(",", ":")``, with its
    defaults, and with ``indent=2``; ``"flexible"`` any JSON whitespace between tokens and around
    the text. ``level`` is the nesting level at which the value sits inside a larger JSON text
    (a tool call's arguments: 1); ``indented`` indents its lines by that many more steps, and
    ``flexible`` writes no whitespace around it. ``max_digits`` caps the digits of an integer
    part or fraction wherever the schema leaves a number unbounded; ``max_any_depth`` caps how deep arrays and
    objects nest inside a value the schema leaves unconstrained (``{}``). A recursive ``$ref`` is
    refused (``RecursionLimitError``) unless ``max_recursion`` says how many times to unroll it
    inside itself; below that the regex stops nesting (``RecursionLimitError`` where the nesting
    is required). ``timeout`` bounds the time it may take, in seconds (``CompileTimeoutError``
    past it): proving a many-branch ``oneOf`` exclusive is quadratic in its branches.
    ``extra_properties`` follows JSON Schema where an object with declared properties leaves
    others open (``additionalProperties`` absent or true): members with undeclared names may
    follow the declared ones (to check text written elsewhere). Off, only declared names are
    written, as a generator should.

    Raises ``InvalidSchemaError``, ``UnsupportedSchemaError`` or ``UnsatisfiableSchemaError``, each
    with the JSON pointer of the offending place in ``schema`` (``InvalidSchemaError`` also for a
    ``whitespace`` that is not a mode).
    """
    layout = Layout(whitespace)
    if max_digits < 1 or max_any_depth < 0 or level < 0:
        raise ValueError("max_digits must be >= 1, max_any_depth >= 0 and level >= 0")
    normalized = normalize(schema, max_recursion)
    compiler = _Compiler(normalized.origins, layout, max_digits, max_any_depth, timeout, level,
                         extra_properties)
    try:
        body = compiler.value(normalized.schema, "")
    except UnsatisfiableSchemaError as error:
        if compiler.cut is None or isinstance(error, RecursionLimitError):
            raise
        # Unsatisfiable only because recursion was cut somewhere below: say so (and stay an
        # UnsupportedSchemaError, so that compile_constraint tries llguidance).
        raise RecursionLimitError(f"{error.reason}, once {compiler.cut.reason}",
                                  error.pointer) from None
    outer = layout.ws if level == 0 else ""
    return f"{outer}{body}{outer}"


#: The most optional members nested in one run (``_members``): a run nests one group per member,
#: and outlines-core's parser refuses a regex nested past about 250 groups and repetitions
#: (Github_hard o18948 did, with its 300 optional members in one run; 16 keep the dev schemas
#: below 52 groups deep, and write 7% more regex than unbounded runs).
_NESTED_MEMBERS = 16


class _Compiler:
    """Builds the regex of each schema node; one instance per ``schema_to_regex`` call."""

    def __init__(self, origins: Origins, layout: Layout, max_digits: int, max_any_depth: int,
                 timeout: float | None = None, level: int = 0, extra_properties: bool = False):
        self.origins = origins
        self.extra_properties = extra_properties
        # Inside a oneOf branch undeclared members are never written: the branch analysis proves
        # branches exclusive on the properties they declare.
        self._one_of_depth = 0
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.layout = layout
        self.colon = layout.colon
        # Nesting level of the value being written. Containers write their separators at their
        # own level and their children one level deeper (``_inside``), so a definition inlined
        # at several depths is indented right at each.
        self.level = level
        self.max_digits = max_digits
        self.max_any_depth = max_any_depth
        self.any_number = unbounded_number(max_digits)
        self._any_values: dict[tuple[int, int], str] = {}
        self.cut: RecursionLimitError | None = None  # the first recursion cut met, if any
        # (id of a node, level, inside a oneOf) -> (the node, its regex, whether it writes an
        # open value): normalize shares a definition's node between its uses, so each is written
        # once however often it is inlined (the node is kept so that its id is not reused by
        # another during the compile)
        self._written: dict[tuple[int, int, bool], tuple[object, str, bool]] = {}
        self._open_values_written = 0  # any_value's uses: a value's count tells if it wrote one
        self.branches = BranchAnalysis(origins, self.check_time)

    # --- dispatch -----------------------------------------------------------------------------

    def value(self, node: dict | bool, where: str) -> str:
        """Regex of the JSON texts valid under ``node``; ``where`` is its pointer if unrecorded.

        Refused past ``MAX_REGEX_CHARS``: unrolled definitions can grow the text exponentially
        (memory), and no index compiles from such a regex within its budget anyway."""
        self.check_time()
        key = (id(node), self.level, self._one_of_depth > 0)
        known = self._written.get(key)
        if known is not None:
            self._open_values_written += known[2]  # its users write what it wrote
            return known[1]
        before = self._open_values_written
        regex = self._value(node, where)
        open_values = self._open_values_written != before
        self._written[key] = (node, regex, open_values)
        if len(regex) > MAX_REGEX_CHARS:  # (one that writes no open value: too large at any depth)
            raise RegexTooLargeError(
                f"the regex for this schema would pass {MAX_REGEX_CHARS:,} characters (definitions "
                "inlined and unrolled at every use)", self.origins.pointer(node, where),
                open_values=open_values)
        return regex

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise CompileTimeoutError(
                f"turning the schema into a regex took longer than {self.timeout:g} s; simplify "
                "the schema (fewer oneOf branches) or pass a larger timeout")

    def _value(self, node: dict | bool, where: str) -> str:
        if node is True:
            return self.any_value(self.max_any_depth)
        if node is False:
            raise UnsatisfiableSchemaError("the schema is `false`: no value is valid here", where)
        if isinstance(node, RecursionCut):
            self.cut = self.cut or node.error
            raise RecursionLimitError(node.error.reason, node.error.pointer)
        pointer = self.origins.pointer(node, where)
        if "allOf" in node:
            return self.value(self._merge_all_of(node, pointer), pointer)
        if "enum" in node or "const" in node:
            return self._finite(node, pointer)
        # Keywords outside the JSON-schema vocabulary constrain nothing (validators ignore them),
        # so they are ignored here too; keywords that constrain but cannot be enforced are refused.
        for key in node:
            if key in _REFUSED:
                raise UnsupportedSchemaError(_REFUSED[key], self._at(node, key, pointer))
        if "anyOf" in node or "oneOf" in node:
            return self._union(node, pointer)
        return self._typed(node, pointer)

    def _at(self, node: dict, key: str, pointer: str) -> str:
        return self.origins.keyword(node, key, pointer)

    def _merge_all_of(self, node: dict, pointer: str) -> dict | bool:
        merged: dict | bool = self.origins.without(node, "allOf")
        for sub in node["allOf"]:
            merged = merge(merged, sub, self.origins, pointer)
        return merged

    def _finite(self, node: dict, pointer: str) -> str:
        """``enum``/``const``: the listed values that also validate against the rest of the node."""
        key = "enum" if "enum" in node else "const"
        at = self._at(node, key, pointer)
        values = node["enum"] if key == "enum" else [node["const"]]
        if not values:
            raise UnsatisfiableSchemaError("enum is empty: no value is valid", at)
        rest = validator(self.origins.without(node, key))
        valid = [v for v in values if rest.is_valid(v)]
        if not valid:
            raise UnsatisfiableSchemaError(f"no {key} value satisfies the rest of the schema", at)
        literals = [self._literal(v, at) for v in valid]
        return alt(sorted(literals, key=len, reverse=True))  # "12" before "1" (leftmost-first)

    def _union(self, node: dict, pointer: str) -> str:
        """anyOf/oneOf: the sibling keywords merged into each branch, then an alternation."""
        key = "anyOf" if "anyOf" in node else "oneOf"
        at = self._at(node, key, pointer)
        rest = self.origins.without(node, key)
        branches = [merge(rest, sub, self.origins, f"{at}/{i}") for i, sub in enumerate(node[key])]
        written = list(enumerate(branches))
        if key == "oneOf":
            written = self.branches.exclusive_branches(branches, at)
        regexes, errors = [], []
        self._one_of_depth += key == "oneOf"
        try:
            for i, branch in written:
                try:
                    regexes.append(self.value(branch, f"{at}/{i}"))
                except UnsatisfiableSchemaError as error:
                    errors.append(error)
        finally:
            self._one_of_depth -= key == "oneOf"
        if not regexes:
            raise errors[0]
        return alt(regexes)

    def _typed(self, node: dict, pointer: str) -> str:
        declared = node.get("type")
        if declared is None:
            types = [t for t, keywords in TYPE_KEYWORDS.items() if keywords & node.keys()]
            if not types:
                return self.any_value(self.max_any_depth)
        else:
            types = [declared] if isinstance(declared, str) else declared
        if "number" in types:  # the number regex already spells every integer it allows
            types = [t for t in types if t != "integer"]
        regexes, errors = [], []
        for name in types:
            try:
                regexes.append(getattr(self, f"_{name}")(node, pointer))
            except UnsatisfiableSchemaError as error:
                errors.append(error)
        if not regexes:
            raise errors[0]
        return alt(regexes)

    # --- scalars ------------------------------------------------------------------------------

    def _null(self, node: dict, pointer: str) -> str:
        return "null"

    def _boolean(self, node: dict, pointer: str) -> str:
        return "(?:true|false)"

    def _string(self, node: dict, pointer: str) -> str:
        low, high = node.get("minLength", 0), node.get("maxLength")
        if high is not None and low > high:
            raise UnsatisfiableSchemaError(
                f"minLength {low} > maxLength {high}", self._at(node, "minLength", pointer))
        if "format" in node and "pattern" in node:
            raise UnsupportedSchemaError(
                "format and pattern together (structgen does not intersect regexes)",
                self._at(node, "pattern", pointer))
        if "format" in node:
            body = format_regex(node["format"], low, high, self._at(node, "format", pointer))
        elif "pattern" in node:
            body = pattern_regex(node["pattern"], low, high, self._at(node, "pattern", pointer))
        else:
            body = repeat(STRING_CHAR, low, high)
        return f'"{body}"'

    def _integer(self, node: dict, pointer: str) -> str:
        if node.get("multipleOf", 1) != 1:
            raise UnsupportedSchemaError(
                "multipleOf other than 1 on integers", self._at(node, "multipleOf", pointer))
        lows = [math.ceil(self._bound(node, "minimum", pointer))] if "minimum" in node else []
        if "exclusiveMinimum" in node:
            lows.append(math.floor(self._bound(node, "exclusiveMinimum", pointer)) + 1)
        highs = [math.floor(self._bound(node, "maximum", pointer))] if "maximum" in node else []
        if "exclusiveMaximum" in node:
            highs.append(math.ceil(self._bound(node, "exclusiveMaximum", pointer)) - 1)
        low, high = max(lows, default=None), min(highs, default=None)
        if low is not None and high is not None and low > high:
            key = "minimum" if "minimum" in node else "exclusiveMinimum"
            raise UnsatisfiableSchemaError(
                f"no integer lies between the lower and upper bounds ({low} > {high})",
                self._at(node, key, pointer))
        return integer_range(low, high, self.max_digits)

    def _number(self, node: dict, pointer: str) -> str:
        """Unbounded numbers may use fractions and exponents; bounded ones are written without an
        exponent so the bound can be checked digit by digit (bounds must be whole numbers)."""
        if "multipleOf" in node:
            raise UnsupportedSchemaError(
                "multipleOf on numbers", self._at(node, "multipleOf", pointer))
        low = self._whole_bound(node, pointer, "minimum", "exclusiveMinimum", lower=True)
        high = self._whole_bound(node, pointer, "maximum", "exclusiveMaximum", lower=False)
        if low is None and high is None:
            return self.any_number
        if low is not None and high is not None and (
            low[0] > high[0] or (low[0] == high[0] and (low[1] or high[1]))
        ):
            raise UnsatisfiableSchemaError(
                "no number lies between the lower and upper bounds",
                self._at(node, low[2], pointer))
        lo, lo_open = (low[0], low[1]) if low else (None, False)
        hi, hi_open = (high[0], high[1]) if high else (None, False)
        regex = number_range(lo, lo_open, hi, hi_open, self.max_digits)
        if regex is None:
            raise UnsupportedSchemaError(
                "no number between these bounds can be written with 15 significant digits",
                self._at(node, (low or high)[2], pointer))
        return regex

    def _bound(self, node: dict, key: str, pointer: str) -> int | float:
        value = node[key]
        if not math.isfinite(value):
            raise UnsupportedSchemaError(
                f"{key} is not a finite number", self._at(node, key, pointer))
        return value

    def _whole_bound(
        self, node: dict, pointer: str, closed_key: str, open_key: str, *, lower: bool
    ) -> tuple[int, bool, str] | None:
        """The tighter of the closed/open bound on one side: ``(value, is_open, key)`` or None."""
        keys = [key for key in (closed_key, open_key) if key in node]
        found = [(self._bound(node, key, pointer), key == open_key, key) for key in keys]
        if not found:
            return None
        if lower:
            value, is_open, key = max(found, key=lambda f: (f[0], f[1]))
        else:
            value, is_open, key = min(found, key=lambda f: (f[0], not f[1]))
        if not float(value).is_integer():
            raise UnsupportedSchemaError(
                f"{key} {value} is not a whole number; number bounds must be whole numbers",
                self._at(node, key, pointer))
        return int(value), is_open, key

    # --- containers ---------------------------------------------------------------------------

    def _array(self, node: dict, pointer: str) -> str:
        at = lambda key: self._at(node, key, pointer)  # noqa: E731
        low, high = node.get("minItems", 0), node.get("maxItems")
        if high is not None and low > high:
            raise UnsatisfiableSchemaError(f"minItems {low} > maxItems {high}", at("minItems"))
        if "contains" in node:
            raise UnsupportedSchemaError("'contains' cannot be enforced", at("contains"))
        prefix, ended = [], False
        with self._inside():
            for i, sub in enumerate(node.get("prefixItems", [])[:high]):
                try:
                    prefix.append(self.value(sub, f"{at('prefixItems')}/{i}"))
                except UnsatisfiableSchemaError:
                    if i < low:
                        raise
                    ended = True  # no value fits position i, so arrays stop before it
                    break
            if ended:
                tail = None
            elif "items" in node:
                tail = self._optional_value(node["items"], at("items"))
            else:
                tail = self.open_value()
        longest = len(prefix) if tail is None else high
        if longest is not None and low > longest:
            raise UnsatisfiableSchemaError(
                f"minItems {low} but at most {longest} items can be valid", at("minItems"))
        if node.get("uniqueItems") and (longest is None or longest > 1):
            raise UnsupportedSchemaError("uniqueItems cannot be enforced", at("uniqueItems"))
        unevaluated = node.get("unevaluatedItems", True)
        if not trivial(unevaluated) and "items" not in node and tail is not None:
            raise UnsupportedSchemaError(
                "unevaluatedItems cannot be enforced here", at("unevaluatedItems"))
        body, optional = self._sequence(prefix, tail, low, high)
        return self._enclose(r"\[", body, optional, r"\]")

    def _sequence(self, prefix: list[str], tail: str | None, low: int, high: int | None):
        """Comma-separated elements (``prefix[i]`` at position i, then ``tail``), ``low..high`` of
        them: ``(body, optional)`` where body never matches the empty list and optional says
        whether the empty list is allowed too; body None means only the empty list."""
        count = len(prefix)
        if tail is None or (high is not None and high <= count):
            rest = ""
        elif count == 0:
            if high == 0:
                return None, True
            more_high = None if high is None else high - 1
            return tail + repeat(self.comma + tail, max(low - 1, 0), more_high), low == 0
        else:
            more_high = None if high is None else high - count
            rest = repeat(self.comma + tail, max(low - count, 0), more_high)
        if count == 0:
            return None, True
        for i in reversed(range(1, count)):
            item = self.comma + prefix[i] + rest
            rest = item if i < low else optional(item)
        return prefix[0] + rest, low == 0

    def _object(self, node: dict, pointer: str, patterns_dropped: bool = False) -> str:
        at = lambda key: self._at(node, key, pointer)  # noqa: E731
        for key in _REFUSED_OBJECT_KEYWORDS:
            if key in node and not trivial(node[key]) and key != "patternProperties":
                if key in _DEPENDENCY_KEYWORDS and not is_map(node):
                    continue  # a record enforces them by making the dependencies required
                raise UnsupportedSchemaError(f"{key!r} cannot be enforced", at(key))
        # Names a dependency is triggered by, before narrowing drops schema-valued ones.
        triggers = [name for key in _DEPENDENCY_KEYWORDS for name in node.get(key, {})]
        node = self._dependent_schemas(node, pointer)
        if not trivial(node.get("patternProperties", {})):
            return self._pattern_object(node, pointer)
        extra = node.get("additionalProperties")
        if is_map(node):
            if "properties" in node or "required" in node:
                # Writing only the declared properties would betray a schema that invites extra
                # keys of a given type (a translation table with one fixed key): llguidance, which
                # enforces this exactly, takes these.
                raise UnsupportedSchemaError(
                    "additionalProperties with a schema together with properties/required",
                    at("additionalProperties"))
            return self._map(node, pointer, True if extra == {} else extra)
        extras = not patterns_dropped and self._extras_allowed(node)
        return self._record(node, pointer, closed=extra is False,
                            extras_unlike=triggers if extras else None)

    def _extras_allowed(self, node: dict) -> bool:
        """Whether undeclared members may be written after the declared ones: asked for, the
        object open, and nothing that counts or judges its members (which a regex of free keys
        could not keep)."""
        return (self.extra_properties and not self._one_of_depth
                and node.get("additionalProperties", True) is True
                and "maxProperties" not in node
                and trivial(node.get("unevaluatedProperties", True)))

    def _dependent_schemas(self, node: dict, pointer: str) -> dict:
        """Schema-valued dependencies enforced by narrowing: a required trigger merges its schema
        into the object, an optional one is not written (then its schema never applies). Repeated
        while a merged schema brings dependencies of its own."""
        while True:
            key = next((k for k in ("dependentSchemas", "dependencies")
                        if any(not isinstance(d, list) for d in node.get(k, {}).values())), None)
            if key is None:
                return node
            at, dependencies = self._at(node, key, pointer), node[key]
            lists = {t: d for t, d in dependencies.items() if isinstance(d, list)}
            node = self.origins.changed(node, **{key: lists}) if lists else self.origins.without(
                node, key)
            for trigger, needs in dependencies.items():
                if isinstance(needs, list):
                    continue
                if trigger in node.get("required", []):
                    node = merge(node, needs, self.origins, f"{at}/{escape_token(trigger)}")
                    if isinstance(node, RecursionCut):  # no value here, as in value()
                        raise RecursionLimitError(node.error.reason, node.error.pointer)
                    if not isinstance(node, dict):
                        raise UnsatisfiableSchemaError(
                            f"required property {trigger!r}'s {key} schema cannot hold", at)
                elif trigger in node.get("properties", {}):
                    node = self.origins.changed(node, properties={
                        n: v for n, v in node["properties"].items() if n != trigger})

    def _pattern_object(self, node: dict, pointer: str) -> str:
        """patternProperties. With nothing declared and one pattern: pairs whose key matches it,
        with its schema's values (keys matching no pattern are not written). Beside declared
        properties that match no pattern: the record alone (the patterns then constrain nothing
        written)."""
        at = self._at(node, "patternProperties", pointer)
        patterns = node["patternProperties"]
        keys = {p: pattern_regex(p, 0, None, f"{at}/{escape_token(p)}") for p in patterns}
        rest = self.origins.without(node, "patternProperties")
        declared = [*node.get("properties", {}), *node.get("required", [])]
        if declared:
            for name in declared:
                spelled = json.dumps(name, ensure_ascii=False)[1:-1]
                matched = [p for p, key in keys.items() if re.fullmatch(key, spelled)]
                if matched:
                    raise UnsupportedSchemaError(
                        f"property {name!r} is also matched by patternProperties {matched[0]!r}; "
                        "structgen does not merge the two schemas", at)
            return self._object(rest, pointer, patterns_dropped=True)
        if len(patterns) > 1:
            raise UnsupportedSchemaError(
                "patternProperties with more than one pattern (a key may match several)", at)
        (pattern, schema), = patterns.items()
        return self._map(rest, pointer, schema, key=f'"{keys[pattern]}"',
                         value_at=f"{at}/{escape_token(pattern)}")

    def _map(self, node: dict, pointer: str, extra: dict | bool | None, key: str = STRING,
             value_at: str | None = None) -> str:
        """An object with any keys (``{"type": "object"}``, dicts): ``"key":value`` pairs."""
        at = lambda key: self._at(node, key, pointer)  # noqa: E731
        low, high = node.get("minProperties", 0), node.get("maxProperties")
        if low > 1:
            raise UnsupportedSchemaError(
                "minProperties > 1 on an object with free keys (a repeated key would count twice)",
                at("minProperties"))
        if extra is None and not trivial(node.get("unevaluatedProperties", True)):
            raise UnsupportedSchemaError(
                "unevaluatedProperties cannot be enforced here", at("unevaluatedProperties"))
        with self._inside():
            if extra in (None, True):
                value = self.open_value()
            else:
                value = self._optional_value(extra, value_at or at("additionalProperties"))
        if value is None or high == 0:
            if low > 0:
                raise UnsatisfiableSchemaError(
                    "minProperties > 0 but no property value is valid", at("minProperties"))
            return self._enclose(r"\{", None, True, r"\}")
        member = key + self.colon + value
        body = member + repeat(self.comma + member, 0, None if high is None else high - 1)
        return self._enclose(r"\{", body, low == 0, r"\}")

    def _record(self, node: dict, pointer: str, *, closed: bool,
                extras_unlike: list[str] | None = None) -> str:
        """An object with declared properties, in schema order; each optional one may be left out.

        Undeclared properties are not produced (the documented departure), except ``required``
        names missing from ``properties``, which get any value when the object is not closed, and
        members after the declared ones when ``extras_unlike`` (names they must not take) is given.
        """
        at = lambda key: self._at(node, key, pointer)  # noqa: E731
        properties, required = self._dependencies(node, pointer, closed)
        members = []
        for name, sub in properties.items():
            try:
                with self._inside():
                    value = self.value(sub, f"{at('properties')}/{escape_token(name)}")
            except UnsatisfiableSchemaError:
                if name in required:
                    raise
                continue  # the property can never be present
            members.append((string_literal(name) + self.colon + value, name in required))
        undeclared = [name for name in required if name not in properties]
        if undeclared and closed:
            raise UnsatisfiableSchemaError(
                f"required property {undeclared[0]!r} is not in properties and "
                "additionalProperties is false", at("required"))
        if undeclared and not trivial(node.get("unevaluatedProperties", True)):
            raise UnsupportedSchemaError(
                "unevaluatedProperties with required properties missing from properties",
                at("unevaluatedProperties"))
        if undeclared:
            with self._inside():
                open_value = self.open_value()
            members += [(string_literal(n) + self.colon + open_value, True) for n in undeclared]
        fewest, most = sum(req for _, req in members), len(members)
        if node.get("minProperties", 0) > fewest or node.get("maxProperties", most) < most:
            key = "minProperties" if node.get("minProperties", 0) > fewest else "maxProperties"
            raise UnsupportedSchemaError(
                f"{key} that the declared properties do not always meet cannot be enforced",
                at(key))
        body, optional = self._members(members)
        if extras_unlike is not None:
            body, optional = self._with_extras(
                [*node.get("properties", {}), *required, *extras_unlike], body, optional)
        return self._enclose(r"\{", body, optional, r"\}")

    def _with_extras(self, named: list[str], body: str | None,
                     optional: bool) -> tuple[str, bool]:
        """``body`` followed by any number of members whose names are not ``named`` (the
        object's declared and required names and its dependency triggers, so that no undeclared
        member can change which schema applies)."""
        with self._inside():
            member = raw_string_other_than(named) + self.colon + self.open_value()
        more = repeat(self.comma + member, 0, None)
        if body is None:
            return member + more, True
        if optional:
            return alt([body + more, member + more]), True
        return body + more, False

    def _dependencies(self, node: dict, pointer: str, closed: bool) -> tuple[dict, list]:
        """(properties, required) with property dependencies enforced by narrowing.

        A trigger that is never written needs nothing. Otherwise its dependencies become required
        (always writing them satisfies the dependency whether or not the trigger appears), and an
        optional trigger whose dependency can never be written is left out.
        """
        at = lambda key: self._at(node, key, pointer)  # noqa: E731
        properties, required = dict(node.get("properties", {})), list(node.get("required", []))
        for key in _DEPENDENCY_KEYWORDS:
            for trigger, needs in node.get(key, {}).items():
                if trigger not in properties and trigger not in required:
                    continue
                if not isinstance(needs, list):
                    if trivial(needs):
                        continue
                    raise UnsupportedSchemaError(
                        f"{key!r} with a schema for property {trigger!r}, which may be written, "
                        "cannot be enforced", at(key))
                unwritable = [n for n in needs if closed and n not in properties]
                if unwritable and trigger in required:
                    raise UnsatisfiableSchemaError(
                        f"required property {trigger!r} depends on {unwritable[0]!r}, which "
                        "additionalProperties false forbids", at(key))
                if unwritable:
                    properties.pop(trigger)
                    continue
                required += [n for n in needs if n not in required]
        return properties, required

    def _members(self, members: list[tuple[str, bool]]):
        """Members in order, optional ones skippable, commas only between present ones.

        Optional members before the first required one carry their comma after them; all later
        ones carry it before them. With no required member at all, the members up to the k-th
        are "those up to the (k-1)-th, then maybe the k-th" or "the k-th alone": each member is
        written twice, not once per member before it. (Each member starting the list of the rest
        wrote the rest once per member, quadratic in size, and outlines-core's automaton kept
        every copy: 24k states for a schema whose minimal automaton has 1.2k.) That nests one
        group per member, so past ``_NESTED_MEMBERS`` members the list is cut in runs: the first
        run with a member present, then the later runs' members each maybe.
        """
        if not members:
            return None, True
        first_required = next((i for i, (_, required) in enumerate(members) if required), None)
        if first_required is not None:
            head = "".join(optional(member + self.comma) for member, _ in members[:first_required])
            tail = self._after(members[first_required + 1:])
            return head + members[first_required][0] + tail, False
        runs = [members[i:i + _NESTED_MEMBERS] for i in range(0, len(members), _NESTED_MEMBERS)]
        starts = []
        for i, run in enumerate(runs):
            present = run[0][0]
            for member, _ in run[1:]:
                present = alt([present + optional(self.comma + member), member])
            starts.append(present + self._after([m for later in runs[i + 1:] for m in later]))
        return alt(starts), True

    def _after(self, members: list[tuple[str, bool]]) -> str:
        return "".join(
            self.comma + member if required else optional(self.comma + member)
            for member, required in members
        )

    def _enclose(self, open_: str, body: str | None, optional: bool, close: str) -> str:
        return self.layout.enclose(open_, body, optional, close, self.level)

    @property
    def comma(self) -> str:
        return self.layout.comma(self.level)

    @contextlib.contextmanager
    def _inside(self):
        """Compile the children of the container at the current level."""
        self.level += 1
        try:
            yield
        finally:
            self.level -= 1

    def _optional_value(self, node: dict | bool, where: str) -> str | None:
        """Regex of ``node``, or None if no value satisfies it (the slot then stays empty)."""
        try:
            return self.value(node, where)
        except UnsatisfiableSchemaError:
            return None

    # --- unconstrained values and literals ------------------------------------------------------

    def any_value(self, depth: int) -> str:
        """Any JSON value, with arrays and objects nested at most ``depth`` deep."""
        self._open_values_written += 1
        key = (depth, self.level if self.layout.indented else 0)  # indentation varies by level
        if key not in self._any_values:
            parts = [STRING, self.any_number, "true", "false", "null"]
            if depth > 0:
                with self._inside():
                    inner = self.any_value(depth - 1)
                items = inner + repeat(self.comma + inner, 0, None)
                member = STRING + self.colon + inner
                members = member + repeat(self.comma + member, 0, None)
                parts.append(self._enclose(r"\[", items, True, r"\]"))
                parts.append(self._enclose(r"\{", members, True, r"\}"))
            self._any_values[key] = alt(parts)
        return self._any_values[key]

    def open_value(self) -> str:
        """A value inside a container the schema leaves open (no items/additionalProperties):
        the container itself counts as one of the ``max_any_depth`` levels."""
        return self.any_value(max(self.max_any_depth - 1, 0))

    def _literal(self, value: object, where: str) -> str:
        """Exactly one JSON value, in its canonical spelling (with the whitespace mode)."""
        if isinstance(value, dict):
            with self._inside():
                members = [
                    string_literal(k) + self.colon + self._literal(v, where) for k, v in value.items()
                ]
            return self._enclose(r"\{", self.comma.join(members) or None, False, r"\}")
        if isinstance(value, list):
            with self._inside():
                items = [self._literal(v, where) for v in value]
            return self._enclose(r"\[", self.comma.join(items) or None, False, r"\]")
        if isinstance(value, str):
            return string_literal(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise UnsupportedSchemaError(f"{value} is not a JSON number", where)
        return escape(json.dumps(value))
