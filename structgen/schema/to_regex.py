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

import jsonschema

from structgen.errors import (
    CompileTimeoutError,
    InvalidSchemaError,
    RecursionLimitError,
    RegexTooLargeError,
    UnsatisfiableSchemaError,
    UnsupportedSchemaError,
)
from structgen.schema.normalize import (
    Origins,
    RecursionCut,
    Schema,
    contains_cut,
    escape_token,
    merge,
    normalize,
)
from structgen.schema.validation import NO_RETRIEVAL

try:  # Python >= 3.11
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover
    import sre_constants
    import sre_parse

#: Whitespace allowed between JSON tokens in ``flexible`` mode.
WHITESPACE = r"[ \t\n\r]*"

#: The whitespace modes, in one place (docs/json-mode.md#whitespace): ``compact`` as
#: ``json.dumps(v, separators=(",", ":"))``, ``spaced`` as ``json.dumps(v)``, ``indented`` as
#: ``json.dumps(v, indent=2)``; each writes one layout per value, so none can loop on whitespace.
#: ``flexible`` admits any JSON whitespace, to check text written elsewhere.
WHITESPACE_MODES = ("compact", "spaced", "indented", "flexible")
#: The mode every ``whitespace=`` argument defaults to.
DEFAULT_WHITESPACE = "indented"
#: One indentation step of ``indented`` mode (``json.dumps(indent=2)``).
INDENT = "  "

#: One character of a JSON string: a raw code point, a short escape, or a ``\uXXXX`` escape that
#: is not a surrogate (so that one match is one code point, which makes lengths countable).
STRING_CHAR = (
    r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]'
    r"|\\u(?:[0-9a-ce-fA-CE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))"
)
STRING = f'"{STRING_CHAR}*"'

_VALIDATOR = jsonschema.Draft202012Validator
_FLOAT_DIGITS = 15  # significant decimal digits that a double holds exactly
_JSON_TYPES = frozenset({"null", "boolean", "object", "array", "string", "number"})

# Keywords that only constrain one instance type, so also imply it when "type" is absent.
_TYPE_KEYWORDS = {
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


UNTYPED_MAX_DIGITS = 6
MAX_REGEX_CHARS = 1 << 20


def check_whitespace(whitespace: object) -> str:
    """``whitespace`` if it names a mode, else an ``InvalidSchemaError`` listing the modes."""
    if not isinstance(whitespace, str) or whitespace not in WHITESPACE_MODES:
        allowed = ", ".join(map(repr, WHITESPACE_MODES))
        raise InvalidSchemaError(f"whitespace must be one of {allowed}, not {whitespace!r}")
    return whitespace


class Layout:
    """How one whitespace mode spells the space between JSON tokens, as regex fragments.

    ``level`` is the nesting level of the container being written (0: the whole text), which
    only ``indented`` needs: its lines are indented by ``INDENT`` per level.
    """

    def __init__(self, whitespace: str):
        self.mode = check_whitespace(whitespace)
        self.indented = whitespace == "indented"
        #: Around the whole text and around every token: ``flexible`` only.
        self.ws = WHITESPACE if whitespace == "flexible" else ""
        separators = {"compact": (",", ":"), "spaced": (", ", ": "), "indented": (",", ": "),
                      "flexible": (f"{self.ws},{self.ws}", f"{self.ws}:{self.ws}")}
        self._comma, self.colon = separators[whitespace]  # indented adds its line after the comma

    def _line(self, level: int) -> str:
        return r"\n" + INDENT * level

    def comma(self, level: int) -> str:
        """Between two items or members of a container at ``level``."""
        return self._comma + self._line(level + 1) if self.indented else self._comma

    def enclose(self, open_: str, body: str | None, optional: bool, close: str, level: int) -> str:
        """A container at ``level``: ``body`` (None: nothing) between its brackets, ``optional``
        if the empty container is allowed too. Empty containers are ``[]``/``{}`` (as json.dumps
        writes them) in every mode but ``flexible``."""
        if body is None:
            return f"{open_}{self.ws}{close}"
        if self.indented:
            inside = self._line(level + 1) + body + self._line(level)
            return open_ + (_optional(inside) if optional else inside) + close
        if optional:
            return f"{open_}{self.ws}(?:{body}{self.ws})?{close}"
        return f"{open_}{self.ws}{body}{self.ws}{close}"


def schema_to_regex(
    schema: dict | bool,
    *,
    whitespace: str = DEFAULT_WHITESPACE,
    max_digits: int = 12,
    max_any_depth: int = 1,
    max_recursion: int | None = None,
    timeout: float | None = None,
    level: int = 0,
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

    Raises ``InvalidSchemaError``, ``UnsupportedSchemaError`` or ``UnsatisfiableSchemaError``, each
    with the JSON pointer of the offending place in ``schema`` (``InvalidSchemaError`` also for a
    ``whitespace`` that is not a mode).
    """
    layout = Layout(whitespace)
    if max_digits < 1 or max_any_depth < 0 or level < 0:
        raise ValueError("max_digits must be >= 1, max_any_depth >= 0 and level >= 0")
    normalized = normalize(schema, max_recursion)
    compiler = _Compiler(normalized.origins, layout, max_digits, max_any_depth, timeout, level)
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


class _Compiler:
    """Builds the regex of each schema node; one instance per ``schema_to_regex`` call."""

    def __init__(self, origins: Origins, layout: Layout, max_digits: int, max_any_depth: int,
                 timeout: float | None = None, level: int = 0):
        self.origins = origins
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
        self.any_number = _number(max_digits)
        # outlines-core's automaton build time grows steeply with the digit cap once numbers
        # nest inside open containers (`{}` at depth 1, indented: 0.12 s with 6 digits, 108 s
        # with 15), so numbers the schema does not type get a smaller cap.
        self.untyped_number = _number(min(max_digits, UNTYPED_MAX_DIGITS))
        self._any_values: dict[tuple[int, int], str] = {}
        self.cut: RecursionLimitError | None = None  # the first recursion cut met, if any

    # --- dispatch -----------------------------------------------------------------------------

    def value(self, node: dict | bool, where: str) -> str:
        """Regex of the JSON texts valid under ``node``; ``where`` is its pointer if unrecorded.

        Refused past ``MAX_REGEX_CHARS``: unrolled definitions can grow the text exponentially
        (memory), and no index compiles from such a regex within its budget anyway."""
        self.check_time()
        regex = self._value(node, where)
        if len(regex) > MAX_REGEX_CHARS:
            raise RegexTooLargeError(
                f"the regex for this schema would pass {MAX_REGEX_CHARS:,} characters (definitions "
                "inlined and unrolled at every use)", self.origins.pointer(node, where))
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
        rest = _validator(self.origins.without(node, key))
        valid = [v for v in values if rest.is_valid(v)]
        if not valid:
            raise UnsatisfiableSchemaError(f"no {key} value satisfies the rest of the schema", at)
        literals = [self._literal(v, at) for v in valid]
        return _alt(sorted(literals, key=len, reverse=True))  # "12" before "1" (leftmost-first)

    def _union(self, node: dict, pointer: str) -> str:
        """anyOf/oneOf: the sibling keywords merged into each branch, then an alternation."""
        key = "anyOf" if "anyOf" in node else "oneOf"
        at = self._at(node, key, pointer)
        rest = self.origins.without(node, key)
        branches = [merge(rest, sub, self.origins, f"{at}/{i}") for i, sub in enumerate(node[key])]
        written = list(enumerate(branches))
        if key == "oneOf":
            written = self._exclusive_branches(branches, at)
        regexes, errors = [], []
        for i, branch in written:
            try:
                regexes.append(self.value(branch, f"{at}/{i}"))
            except UnsatisfiableSchemaError as error:
                errors.append(error)
        if not regexes:
            raise errors[0]
        return _alt(regexes)

    def _typed(self, node: dict, pointer: str) -> str:
        declared = node.get("type")
        if declared is None:
            types = [t for t, keywords in _TYPE_KEYWORDS.items() if keywords & node.keys()]
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
        return _alt(regexes)

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
            body = _format_regex(node["format"], low, high, self._at(node, "format", pointer))
        elif "pattern" in node:
            body = pattern_regex(node["pattern"], low, high, self._at(node, "pattern", pointer))
        else:
            body = _repeat(STRING_CHAR, low, high)
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
        parts = []
        if hi is None or hi > 0 or (hi == 0 and not hi_open):
            start = (lo, lo_open) if lo is not None and lo >= 0 else (0, False)
            parts.append(self._unsigned(*start, hi, hi_open))
        if lo is None or lo < 0:  # written with a minus sign, so its magnitude must be > 0
            start = (-hi, hi_open) if hi is not None and hi < 0 else (0, True)
            end = (-lo, lo_open) if lo is not None else (None, False)
            magnitudes = self._unsigned(*start, *end)
            parts.append(None if magnitudes is None else "-" + magnitudes)
        if not any(parts):
            raise UnsupportedSchemaError(
                "no number between these bounds can be written with 15 significant digits",
                self._at(node, (low or high)[2], pointer))
        return _alt([part for part in parts if part])

    def _unsigned(self, low: int, low_open: bool, high: int | None, high_open: bool) -> str | None:
        """Unsigned decimals ``I[.F]`` in the interval from ``low`` to ``high`` (``None``: open);
        None if none can be written.

        They carry at most 15 significant digits, which a double holds exactly: a validator that
        reads them as floats cannot round one onto an open bound (``9.9999999999999999`` is 10.0).
        """
        parts = []  # longest first (leftmost-first): the upper bound, the inside, the lower bound
        if high is not None and not high_open and (low < high or not low_open):
            zeros = self._fraction_digits(len(str(high)))  # "1e17" as a double is not 10**17 + 1
            parts.append(rf"{high}(?:\.0{{1,{zeros}}})?" if zeros else str(high))
        whole_low = low + 1 if low_open else low
        if high is None:
            whole_high = 10 ** max(self.max_digits, len(str(whole_low))) - 1
        else:
            whole_high = high - 1
        while whole_low <= whole_high:  # whole parts of the same fraction length, longest first
            shortest = len(str(whole_high))
            digits = self._fraction_digits(shortest)
            while shortest > 1 and self._fraction_digits(shortest - 1) == digits:
                shortest -= 1
            first = max(whole_low, 10 ** (shortest - 1) if shortest > 1 else 0)
            fraction = rf"(?:\.{_repeat('[0-9]', 1, digits)})?" if digits else ""
            parts.append(natural_range(first, whole_high) + fraction)
            whole_high = first - 1
        digits = self._fraction_digits(len(str(low)))
        if low_open and (high is None or low < high) and digits:  # just above the open lower bound
            parts.append(f"{low}\\." + _nonzero_digits(digits))
        return _alt(parts) if parts else None

    def _fraction_digits(self, whole_digits: int) -> int:
        return max(0, min(self.max_digits, _FLOAT_DIGITS - whole_digits))

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
        if not _trivial(unevaluated) and "items" not in node and tail is not None:
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
            return tail + _repeat(self.comma + tail, max(low - 1, 0), more_high), low == 0
        else:
            more_high = None if high is None else high - count
            rest = _repeat(self.comma + tail, max(low - count, 0), more_high)
        if count == 0:
            return None, True
        for i in reversed(range(1, count)):
            item = self.comma + prefix[i] + rest
            rest = item if i < low else _optional(item)
        return prefix[0] + rest, low == 0

    def _object(self, node: dict, pointer: str) -> str:
        at = lambda key: self._at(node, key, pointer)  # noqa: E731
        for key in _REFUSED_OBJECT_KEYWORDS:
            if key in node and not _trivial(node[key]) and key != "patternProperties":
                if key in _DEPENDENCY_KEYWORDS and not _is_map(node):
                    continue  # a record enforces them by making the dependencies required
                raise UnsupportedSchemaError(f"{key!r} cannot be enforced", at(key))
        node = self._dependent_schemas(node, pointer)
        if not _trivial(node.get("patternProperties", {})):
            return self._pattern_object(node, pointer)
        extra = node.get("additionalProperties")
        if _is_map(node):
            if "properties" in node or "required" in node:
                # Writing only the declared properties would betray a schema that invites extra
                # keys of a given type (a translation table with one fixed key): llguidance, which
                # enforces this exactly, takes these.
                raise UnsupportedSchemaError(
                    "additionalProperties with a schema together with properties/required",
                    at("additionalProperties"))
            return self._map(node, pointer, True if extra == {} else extra)
        return self._record(node, pointer, closed=extra is False)

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
            return self._object(rest, pointer)
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
        if extra is None and not _trivial(node.get("unevaluatedProperties", True)):
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
        body = member + _repeat(self.comma + member, 0, None if high is None else high - 1)
        return self._enclose(r"\{", body, low == 0, r"\}")

    def _record(self, node: dict, pointer: str, *, closed: bool) -> str:
        """An object with declared properties, in schema order; each optional one may be left out.

        Undeclared properties are not produced (the documented departure), except ``required``
        names missing from ``properties``, which get any value when the object is not closed.
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
            members.append((self._key(name) + self.colon + value, name in required))
        undeclared = [name for name in required if name not in properties]
        if undeclared and closed:
            raise UnsatisfiableSchemaError(
                f"required property {undeclared[0]!r} is not in properties and "
                "additionalProperties is false", at("required"))
        if undeclared and not _trivial(node.get("unevaluatedProperties", True)):
            raise UnsupportedSchemaError(
                "unevaluatedProperties with required properties missing from properties",
                at("unevaluatedProperties"))
        if undeclared:
            with self._inside():
                open_value = self.open_value()
            members += [(self._key(n) + self.colon + open_value, True) for n in undeclared]
        fewest, most = sum(req for _, req in members), len(members)
        if node.get("minProperties", 0) > fewest or node.get("maxProperties", most) < most:
            key = "minProperties" if node.get("minProperties", 0) > fewest else "maxProperties"
            raise UnsupportedSchemaError(
                f"{key} that the declared properties do not always meet cannot be enforced",
                at(key))
        body, optional = self._members(members)
        return self._enclose(r"\{", body, optional, r"\}")

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
                    if _trivial(needs):
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
        ones carry it before them. With no required member at all, each member in turn may be the
        first one present (quadratic in size, but only then).
        """
        if not members:
            return None, True
        first_required = next((i for i, (_, required) in enumerate(members) if required), None)
        if first_required is not None:
            head = "".join(_optional(member + self.comma) for member, _ in members[:first_required])
            tail = self._after(members[first_required + 1:])
            return head + members[first_required][0] + tail, False
        starts = [member + self._after(members[i + 1:]) for i, (member, _) in enumerate(members)]
        return _alt(starts), True

    def _after(self, members: list[tuple[str, bool]]) -> str:
        return "".join(
            self.comma + member if required else _optional(self.comma + member)
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

    def _key(self, name: str) -> str:
        return _escape(_json_string(name))

    # --- unconstrained values and literals ------------------------------------------------------

    def any_value(self, depth: int) -> str:
        """Any JSON value, with arrays and objects nested at most ``depth`` deep."""
        key = (depth, self.level if self.layout.indented else 0)  # indentation varies by level
        if key not in self._any_values:
            parts = [STRING, self.untyped_number, "true", "false", "null"]
            if depth > 0:
                with self._inside():
                    inner = self.any_value(depth - 1)
                items = inner + _repeat(self.comma + inner, 0, None)
                member = STRING + self.colon + inner
                members = member + _repeat(self.comma + member, 0, None)
                parts.append(self._enclose(r"\[", items, True, r"\]"))
                parts.append(self._enclose(r"\{", members, True, r"\}"))
            self._any_values[key] = _alt(parts)
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
                    self._key(k) + self.colon + self._literal(v, where) for k, v in value.items()
                ]
            return self._enclose(r"\{", self.comma.join(members) or None, False, r"\}")
        if isinstance(value, list):
            with self._inside():
                items = [self._literal(v, where) for v in value]
            return self._enclose(r"\[", self.comma.join(items) or None, False, r"\]")
        if isinstance(value, str):
            return _escape(_json_string(value))
        if isinstance(value, float) and not math.isfinite(value):
            raise UnsupportedSchemaError(f"{value} is not a JSON number", where)
        return _escape(json.dumps(value))

    # --- oneOf --------------------------------------------------------------------------------

    def _exclusive_branches(self, branches: list[dict | bool], at: str) -> list[tuple[int, Schema]]:
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
                and not _is_map(node))

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
            if schema is other and contains_cut(other):
                continue  # a validator reads the cut as `false`, which other's values are not
            if values is not None and not any(_validator(schema).is_valid(v) for v in values):
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
        implied = {t for t, keywords in _TYPE_KEYWORDS.items() if keywords & node.keys()}
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


def _validator(schema: dict | bool) -> jsonschema.protocols.Validator:
    """A validator for a normalized (2020-12, ref-free) schema, checking formats too."""
    return _VALIDATOR(schema, registry=NO_RETRIEVAL, format_checker=_VALIDATOR.FORMAT_CHECKER)


def _is_map(node: dict) -> bool:
    """Whether an object node is written as free ``"key":value`` pairs rather than as its
    declared properties: additionalProperties is a schema, or nothing is declared and it is open
    or has patternProperties."""
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra != {}:
        return True
    if "properties" in node or "required" in node:
        return False
    return extra is not False or not _trivial(node.get("patternProperties", {}))


def _property_schema(node: dict, name: str) -> Schema:
    """What ``node`` allows as the value of property ``name`` (True when it may not say)."""
    if not isinstance(node, dict) or node.get("patternProperties"):
        return True
    if name in node.get("properties", {}):
        return node["properties"][name]
    return node.get("additionalProperties", True)


def _trivial(schema: object) -> bool:
    """True for keyword values that constrain nothing: ``true``, ``{}``, empty maps/lists."""
    return schema is True or schema == {} or schema == []


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


# --- integer ranges ---------------------------------------------------------------------------


def _number(max_digits: int) -> str:
    """An unbounded number: at most ``max_digits`` digits before and after the point, and an
    exponent that keeps it finite (``1e999`` would parse as inf, which JSON cannot hold), so at
    most 307 - ``max_digits`` (leading zeros allowed, as JSON allows them)."""
    whole = _repeat("[0-9]", 0, max_digits - 1)
    fraction = _repeat("[0-9]", 1, max_digits)
    exponent = natural_range(0, max(0, 307 - max_digits))
    return rf"-?(?:0|[1-9]{whole})(?:\.{fraction})?(?:[eE][+-]?0*{exponent})?"


def integer_range(low: int | None, high: int | None, max_digits: int) -> str:
    """Regex of the canonical spellings of the integers from ``low`` to ``high`` (inclusive).

    An open side stops at ``max_digits`` digits (or at the other bound's digit count, if larger).
    Zero is written ``0`` only, never ``-0``.
    """
    digits = max([max_digits] + [len(str(abs(b))) for b in (low, high) if b is not None])
    cap = 10**digits - 1
    low, high = -cap if low is None else low, cap if high is None else high
    if low < 0 < high and -low == high:
        return f"(?:0|-?{natural_range(1, high)})"
    parts = []
    if low < 0:
        parts.append("-" + natural_range(max(1, -high), -low))
    if high >= 0:
        parts.append(natural_range(max(0, low), high))
    return _alt(parts)


def natural_range(low: int, high: int) -> str:
    """Regex of the decimal spellings (no leading zeros) of ``low..high``, ``0 <= low <= high``.

    Longer numbers come first, so that a shorter one never cuts them off (leftmost-first).
    """
    parts: list[str] = []
    run: list[int] = []  # digit counts covered completely, longest first, written as one repeat
    smallest = max(low, 1)
    for length in range(len(str(high)), len(str(smallest)) - 1, -1) if smallest <= high else ():
        first, last = max(smallest, 10 ** (length - 1)), min(high, 10**length - 1)
        if first == 10 ** (length - 1) and last == 10**length - 1:
            run.append(length)
            continue
        parts += _full_lengths(run)
        run = []
        parts.append(_same_length(str(first), str(last)))
    parts += _full_lengths(run)
    if low == 0:
        parts.append("0")
    return _alt(parts)


def _full_lengths(run: list[int]) -> list[str]:
    """``[1-9][0-9]{m,n}`` for a run of consecutive digit counts (longest first), if any."""
    return ["[1-9]" + _repeat("[0-9]", run[-1] - 1, run[0] - 1)] if run else []


def _same_length(low: str, high: str) -> str:
    """Regex of the digit strings from ``low`` to ``high``, both of the same length."""
    if low == high:
        return low
    if len(low) == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return low[0] + _same_length(low[1:], high[1:])
    rest = len(low) - 1
    parts = []
    first, last = low[0], high[0]
    if low[1:] != "0" * rest:
        parts.append(low[0] + _same_length(low[1:], "9" * rest))
        first = chr(ord(first) + 1)
    if high[1:] != "9" * rest:
        last = chr(ord(last) - 1)
    if first <= last:
        digit = first if first == last else f"[{first}-{last}]"
        parts.append(digit + _repeat("[0-9]", rest, rest))
    if high[1:] != "9" * rest:
        parts.append(high[0] + _same_length("0" * rest, high[1:]))
    return _alt(parts)


def _nonzero_digits(digits: int) -> str:
    """1 to ``digits`` digits, not all zero (a fraction whose value is above zero)."""
    regex = "[1-9]"
    for width in range(2, digits + 1):
        regex = f"(?:[1-9]{_repeat('[0-9]', 0, width - 1)}|0{regex})"
    return regex


# --- formats ----------------------------------------------------------------------------------

_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = (
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16 = "[0-9a-fA-F]{1,4}"
_LS32 = f"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = "(?:" + "|".join([  # RFC 3986 IPv6address, one alternative per position of "::"
    f"(?:{_H16}:){{6}}{_LS32}",
    f"::(?:{_H16}:){{5}}{_LS32}",
    f"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
    *(
        f"(?:(?:{_H16}:){{0,{n}}}{_H16})?::{tail}"
        for n, tail in [
            (1, f"(?:{_H16}:){{3}}{_LS32}"),
            (2, f"(?:{_H16}:){{2}}{_LS32}"),
            (3, f"{_H16}:{_LS32}"),
            (4, _LS32),
            (5, _H16),
            (6, ""),
        ]
    ),
]) + ")"
# Hostname labels are capped at 40 characters and 6 labels, so the whole name stays under 253.
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}[A-Za-z0-9])?"
_TOP_LABEL = "[A-Za-z](?:[A-Za-z0-9-]{0,38}[A-Za-z0-9])?"
_HOSTNAME = rf"(?:{_LABEL}\.){{0,5}}{_TOP_LABEL}"
_ATOM = "[A-Za-z0-9_+-]+"
_EMAIL = rf"{_ATOM}(?:\.{_ATOM}){{0,3}}@(?:{_LABEL}\.){{1,4}}[A-Za-z]{{2,24}}"
_PORT = "(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_PCHAR = "(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
_URI = (
    rf"[A-Za-z][A-Za-z0-9+.-]*://{_HOSTNAME}(?::{_PORT})?(?:/{_PCHAR}*)*"
    rf"(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
)

# RFC 3339 appendix A durations (at most 9 digits per field): P1Y2M3DT4H5M6S, P2W, PT30M...
_DURATION_TIME = "T(?:[0-9]{1,9}H(?:[0-9]{1,9}M(?:[0-9]{1,9}S)?)?|[0-9]{1,9}M(?:[0-9]{1,9}S)?|[0-9]{1,9}S)"
_DURATION = (
    "P(?:(?:[0-9]{1,9}Y(?:[0-9]{1,9}M(?:[0-9]{1,9}D)?)?|[0-9]{1,9}M(?:[0-9]{1,9}D)?|[0-9]{1,9}D)"
    f"(?:{_DURATION_TIME})?|{_DURATION_TIME}|[0-9]{{1,9}}W)"
)

#: The string formats enforced; each regex is a safe subset of its RFC (see the docs).
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": f"{_DATE}T{_TIME}",
    "duration": _DURATION,
    "uuid": "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "email": _EMAIL,
    "hostname": _HOSTNAME,
    "ipv4": _IPV4,
    "ipv6": _IPV6,
    "uri": _URI,
}


def _format_regex(name: str, low: int, high: int | None, where: str) -> str:
    if name not in FORMATS:
        raise UnsupportedSchemaError(
            f"format {name!r} is not supported (supported: {', '.join(sorted(FORMATS))})", where)
    regex = FORMATS[name]
    shortest, longest = _width(sre_parse.parse(regex))
    if (longest is not None and low > longest) or (high is not None and high < shortest):
        raise UnsatisfiableSchemaError(
            f"no {name} has a length between minLength and maxLength", where)
    if low > shortest or (high is not None and (longest is None or high < longest)):
        raise UnsupportedSchemaError(
            f"format {name!r} with minLength/maxLength that cut into its lengths", where)
    return regex


def _width(parsed) -> tuple[int, int | None]:
    """Fewest and most characters a parsed regex matches (None: unbounded)."""
    low, high = parsed.getwidth()
    return low, None if high >= sre_constants.MAXREPEAT else high


# --- pattern ----------------------------------------------------------------------------------

_MAX_CODE = 0x10FFFF
_NON_SURROGATE = [(0, 0xD7FF), (0xE000, _MAX_CODE)]
_SPECIAL = [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # code points a JSON string must escape
_SHORT_ESCAPES = {
    0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
}
# \d \w \s differ between engines (ECMA-262: ASCII; Python and Rust: Unicode, each its own way),
# so each has a narrow set (in every engine's) and a wide set (holding every engine's); a class
# uses whichever makes its result smallest, so what it admits matches in every engine.
_NON_ASCII = [(0x80, _MAX_CODE)]
_UNICODE_SPACES = [  # Python's \s, ECMA-262's \s (adds U+FEFF), Unicode White_Space, and U+180E
    (0x09, 0x0D), (0x1C, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x180E, 0x180E),
    (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
    (0xFEFF, 0xFEFF),
]
_CATEGORIES = {  # category: (narrow, wide)
    sre_constants.CATEGORY_DIGIT: ([(0x30, 0x39)], [(0x30, 0x39)] + _NON_ASCII),
    sre_constants.CATEGORY_WORD: (
        [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
        [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)] + _NON_ASCII,
    ),
    sre_constants.CATEGORY_SPACE: ([(0x09, 0x0D), (0x20, 0x20)], _UNICODE_SPACES),
}
_NEGATED_CATEGORIES = {
    sre_constants.CATEGORY_NOT_DIGIT: sre_constants.CATEGORY_DIGIT,
    sre_constants.CATEGORY_NOT_WORD: sre_constants.CATEGORY_WORD,
    sre_constants.CATEGORY_NOT_SPACE: sre_constants.CATEGORY_SPACE,
}
# "." excludes every line terminator of ECMA-262 and Python.
_DOT = [(0, 0x09), (0x0B, 0x0C), (0x0E, 0x2027), (0x202A, _MAX_CODE)]
_STARTS = (sre_constants.AT_BEGINNING, sre_constants.AT_BEGINNING_STRING)
_ENDS = (sre_constants.AT_END, sre_constants.AT_END_STRING)


def pattern_regex(pattern: str, min_length: int, max_length: int | None, where: str) -> str:
    """Regex of the JSON string contents (between the quotes) whose decoded text the ECMA regex
    ``pattern`` finds (search semantics, so unanchored sides are padded with any characters),
    with a length from ``min_length`` to ``max_length``.

    Each character of the pattern is spelled one way in the JSON text: raw, or its short escape
    (``\\"``, ``\\\\``, ``\\n``...), or ``\\u00XX`` for other control characters.
    """
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as error:
        raise InvalidSchemaError(
            f"pattern {pattern!r} is not a valid regex: {error}", where) from None
    translator = _PatternTranslator(parsed.state, where)
    if parsed.state.flags & ~sre_constants.SRE_FLAG_UNICODE:
        translator.refuse("inline flags such as (?i)")
    fitted = [
        regex
        for items, start, end in translator.alternatives(list(parsed), False, False)
        if (regex := translator.fit(items, start, end, min_length, max_length)) is not None
    ]
    if not fitted:
        raise UnsatisfiableSchemaError(
            f"no string matching pattern {pattern!r} has a length from {min_length} to "
            f"{max_length}", where)
    return _alt(fitted)


class _PatternTranslator:
    """Re-emits a parsed (``sre_parse``) pattern as a regex over JSON string text."""

    def __init__(self, state, where: str):
        self.state = state
        self.where = where

    def refuse(self, what: str):
        raise UnsupportedSchemaError(f"pattern uses {what}, which cannot be enforced", self.where)

    def alternatives(self, items: list, start: bool, end: bool) -> list[tuple[list, bool, bool]]:
        """Split top-level alternation so that ``^a$|^b$`` anchors each side separately:
        ``(items, anchored at start, anchored at end)`` per alternative."""
        if items and items[0][0] is sre_constants.AT and items[0][1] in _STARTS:
            items, start = items[1:], True
        if items and items[-1][0] is sre_constants.AT and items[-1][1] in _ENDS:
            items, end = items[:-1], True
        only = items[0] if len(items) == 1 else (None, None)
        if only[0] is sre_constants.BRANCH:
            return [alt for sub in only[1][1] for alt in self.alternatives(list(sub), start, end)]
        if only[0] is sre_constants.SUBPATTERN and not any(only[1][1:3]):  # a group, no flags
            return self.alternatives(list(only[1][3]), start, end)
        return [(items, start, end)]

    def fit(self, items: list, start: bool, end: bool, low: int, high: int | None) -> str | None:
        """The regex of one alternative, padded on unanchored sides, with lengths in
        ``low..high``; None when no such length exists.

        Lengths are enforced only when the alternative's width already fits, or when exactly one
        piece varies in width and is a repeat of a fixed-width piece (e.g. ``^[a-z]+$``): then its
        repeat count is narrowed. Anything else would need a regex intersection.
        """
        pad, padding = ("pad", None), _repeat(STRING_CHAR, 0, None)
        trailing_pad = not end and (items or start)  # an empty unanchored pattern needs one pad
        pieces = ([] if start else [pad]) + items + ([pad] if trailing_pad else [])
        widths = [
            (0, None) if piece is pad else _width(sre_parse.SubPattern(self.state, [piece]))
            for piece in pieces
        ]
        shortest = sum(w[0] for w in widths)
        longest = None if any(w[1] is None for w in widths) else sum(w[1] for w in widths)
        if low <= shortest and (high is None or (longest is not None and longest <= high)):
            return "".join(padding if p is pad else self.translate([p]) for p in pieces)
        if (longest is not None and low > longest) or (high is not None and high < shortest):
            return None
        varying = [i for i, (a, b) in enumerate(widths) if a != b]
        if len(varying) != 1:
            self.refuse(f"a shape that minLength/maxLength ({low}..{high}) cannot be fitted to")
        index = varying[0]
        unit, size, fewest, most = self._repeated(pieces[index], pad)
        fixed = shortest - widths[index][0]
        fewest = max(fewest, -(-(low - fixed) // size))
        if high is not None:
            most = (high - fixed) // size if most is None else min(most, (high - fixed) // size)
        if most is not None and fewest > most:
            return None
        regexes = [padding if p is pad else self.translate([p]) for p in pieces]
        regexes[index] = _repeat(unit, fewest, most)
        return "".join(regexes)

    def _repeated(self, piece, pad):
        """``(unit regex, unit width, fewest, most)`` of a piece that repeats a fixed-width unit."""
        if piece is pad:
            return STRING_CHAR, 1, 0, None
        op, av = piece
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
            fewest, most, sub = av
            size, size_max = _width(sub)
            if size == size_max and size > 0:
                most = None if most == sre_constants.MAXREPEAT else most
                return self.translate(list(sub)), size, fewest, most
        self.refuse("a varying-width part that minLength/maxLength cannot be fitted to")

    def translate(self, items: list) -> str:
        return "".join(self._node(op, av) for op, av in items)

    def _node(self, op, av) -> str:
        c = sre_constants
        if op is c.LITERAL:
            return self._units([(av, av)])
        if op is c.NOT_LITERAL:
            return self._units(_complement([(av, av)]))
        if op is c.ANY:
            return self._units(_DOT)
        if op is c.IN:
            return self._units(self._class(av))
        if op is c.BRANCH:
            return _alt([self.translate(list(sub)) for sub in av[1]])
        if op is c.SUBPATTERN:
            if av[1] or av[2]:
                self.refuse("inline flags such as (?i:...)")
            return self.translate(list(av[3]))
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            fewest, most, sub = av
            return _repeat(self.translate(list(sub)), fewest, None if most == c.MAXREPEAT else most)
        if op is c.AT:
            self.refuse("an anchor or word boundary that is not at the very start or end")
        if op in (c.GROUPREF, c.GROUPREF_EXISTS):
            self.refuse("a backreference")
        if op in (c.ASSERT, c.ASSERT_NOT):
            self.refuse("a lookaround")
        self.refuse(f"{str(op).lower()}")

    def _class(self, items: list) -> list[tuple[int, int]]:
        negate = bool(items) and items[0][0] is sre_constants.NEGATE
        ranges = []
        for op, av in items[negate:]:
            if op is sre_constants.LITERAL:
                ranges.append((av, av))
            elif op is sre_constants.RANGE:
                ranges.append(av)
            elif op is sre_constants.CATEGORY and av in _CATEGORIES:
                narrow, wide = _CATEGORIES[av]
                ranges += wide if negate else narrow
            elif op is sre_constants.CATEGORY and av in _NEGATED_CATEGORIES:
                narrow, wide = _CATEGORIES[_NEGATED_CATEGORIES[av]]
                ranges += _complement(narrow if negate else wide)
            else:
                self.refuse(f"{op} in a character class")
        return _complement(ranges) if negate else _normalize(ranges)

    def _units(self, ranges: list[tuple[int, int]]) -> str:
        """One JSON string character (raw or escaped) whose code point is in ``ranges``."""
        ranges = _intersect(ranges, _NON_SURROGATE)
        raw = _intersect(ranges, _complement(_SPECIAL))
        parts = [_char_class(raw)] if raw else []
        specials = [code for a, b in _intersect(ranges, _SPECIAL) for code in range(a, b + 1)]
        parts += [_escape(_SHORT_ESCAPES[code]) for code in specials if code in _SHORT_ESCAPES]
        controls = [code for code in specials if code not in _SHORT_ESCAPES]
        if controls:  # \u00XX, grouped by the first hex digit: \u00(?:0[0-7b]|1[0-9a-f])
            by_high: dict[int, str] = {}
            for code in controls:
                by_high[code >> 4] = by_high.get(code >> 4, "") + f"{code & 15:x}"
            pairs = [f"{hi}{low if len(low) == 1 else f'[{low}]'}" for hi, low in by_high.items()]
            parts.append(r"\\u00" + _alt(pairs))
        if not parts:
            self.refuse("a character class that matches no character")
        return _alt(parts)


def _normalize(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, start = [], 0
    for low, high in _normalize(ranges):
        if low > start:
            out.append((start, low - 1))
        start = high + 1
    if start <= _MAX_CODE:
        out.append((start, _MAX_CODE))
    return out


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return _complement(_complement(a) + _complement(b))


# --- regex text -------------------------------------------------------------------------------

_META = frozenset("\\.^$|?*+()[]{}")
# A fragment that a quantifier can follow without a group: one (escaped) character or a class.
_SINGLE = re.compile(
    r"[^\\.^$|?*+()\[\]{}]"  # a plain character
    r"|\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[^xuU])"  # an escaped one
    r"|\[[^\]]*\]"  # a class
)


def _escape(text: str) -> str:
    """A regex matching exactly ``text``."""
    return "".join(
        "\\" + c if c in _META else c if " " <= c <= "~" else _hex_escape(ord(c)) for c in text
    )


def _hex_escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _char_class(ranges: list[tuple[int, int]]) -> str:
    """A class over code point ranges (surrogates aside), negated when that is shorter.

    Every non-alphanumeric endpoint is hex-escaped, so nothing is special inside the class in
    either engine (Rust reads ``&&``, ``--``, ``[`` as set operations).
    """
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _escape(chr(ranges[0][0]))
    excluded = _intersect(_complement(ranges), _NON_SURROGATE)
    if excluded and len(excluded) < len(ranges):
        return "[^" + _class_body(excluded) + "]"
    return "[" + _class_body(ranges) + "]"


def _class_body(ranges: list[tuple[int, int]]) -> str:
    def char(code: int) -> str:
        return chr(code) if chr(code).isascii() and chr(code).isalnum() else _hex_escape(code)

    return "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges)


def _json_string(text: str) -> str:
    """``text`` as a JSON string literal; lone surrogates (legal in JSON) escaped."""
    encoded = json.dumps(text, ensure_ascii=False)
    return "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in encoded)


def _alt(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    return unique[0] if len(unique) == 1 else "(?:" + "|".join(unique) + ")"


def _atom(fragment: str) -> str:
    """``fragment`` as one unit that a quantifier or a prefix can apply to."""
    if _SINGLE.fullmatch(fragment) or _is_group(fragment):
        return fragment
    return f"(?:{fragment})"


def _is_group(fragment: str) -> bool:
    """True when ``fragment`` is one parenthesized group from its first to its last character."""
    if not (fragment.startswith("(") and fragment.endswith(")")):
        return False
    depth, i = 0, 0
    while i < len(fragment):
        c = fragment[i]
        if c == "\\":
            i += 1
        elif c == "[":
            i = fragment.index("]", i + 1)  # classes never hold an unescaped "]"
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0 and i != len(fragment) - 1:
                return False
        i += 1
    return True


def _optional(fragment: str) -> str:
    return _atom(fragment) + "?" if fragment else ""


def _repeat(fragment: str, fewest: int, most: int | None) -> str:
    if not fragment or most == 0:
        return ""
    if (fewest, most) == (1, 1):
        return fragment
    suffix = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((fewest, most))
    if suffix is None and fewest == most:
        suffix = f"{{{fewest}}}"
    elif suffix is None:
        suffix = f"{{{fewest},{'' if most is None else most}}}"
    return _atom(fragment) + suffix
