"""Output types: what the user asks for, as a JSON schema or a regex, and how to parse the answer.

Anything pydantic can describe is accepted (BaseModel, dataclass, TypedDict, ``list[str]``,
``Literal[...]``, ...); a ``dict`` is taken as a raw JSON schema, or as the schema an OpenAI
``response_format`` dict asks for (``json_schema``, ``json_object``); ``Regex`` asks for plain text
matching a pattern. outlines 1.x output types are taken as what they stand for (``JsonSchema`` as its
schema, ``Regex`` as ``Regex``, ``Choice`` as an enum). Each becomes an ``OutputType`` that knows its
constraint source and parses the final text back into the value the user asked for.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from structgen._sre import parse
from structgen.errors import InvalidSchemaError, OutputError, UnsupportedSchemaError


@dataclass(frozen=True)
class Regex:
    """Ask for plain text matching ``pattern`` (full match); the result is the matched string."""

    pattern: str


@dataclass(frozen=True)
class OutputType:
    """A normalised output request: exactly one of ``schema`` and ``regex`` is set."""

    source: Any
    schema: dict | bool | None = None
    regex: str | None = None

    @property
    def is_json(self) -> bool:
        return self.regex is None

    def parse(self, text: str, context: Any = None) -> Any:
        """Turn the model's text into the requested value, or raise ``OutputError``; ``context``
        is pydantic's validation context, handed to the type's validators."""
        if not self.is_json:  # re-checked, as JSON is: never trust the constraint alone
            if not _full_match(self.regex, text):
                raise OutputError(f"does not match the regex {self.regex!r}", text)
            return text
        if isinstance(self.source, (dict, bool)):
            # jsonschema loads on the first parse, keeping `import structgen` light
            from structgen.schema.validation import first_problem, validator

            value = load_json(text)
            problem = first_problem(validator(self.source), value)
            if problem is not None:
                raise OutputError(f"does not validate: {problem.message}", text)
            return value
        import pydantic

        load_json(text)  # the same refusals as for a schema dict; pydantic then parses its own way
        try:
            return _adapter(self.source).validate_json(text, context=context)
        except pydantic.ValidationError as error:
            raise OutputError(f"does not validate: {error}", text, _problems(error)) from None


def load_json(text: str) -> Any:
    """``text`` as a JSON value, or ``OutputError``: also for what ``json.loads`` would let through
    that JSON cannot hold (``1e999`` as inf, ``NaN``, ``Infinity``) or that it cannot read (an
    integer of more than 4,300 digits, nesting past the recursion limit)."""
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise OutputError("not JSON this parser can read: nested too deep", text) from None
    except ValueError as error:  # JSONDecodeError, a non-finite number, a too-long integer
        raise OutputError(f"not JSON: {error}", text) from None


def _problems(error) -> list[str]:
    """``location: message (input: value)`` per pydantic error, without the documentation links
    and type codes of ``str(error)``: what a retry shows the model costs it tokens."""
    lines = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem.get("loc", ()))
        if not where:  # the whole answer (a model_validator): the model has just written it
            lines.append(problem["msg"])
            continue
        shown = repr(problem.get("input"))
        lines.append(f"{where}: {problem['msg']}" + (f" (input: {shown})" if len(shown) <= 80 else ""))
    return lines


def _finite_float(spelling: str) -> float:
    value = float(spelling)
    if not math.isfinite(value):
        raise ValueError(f"the number {spelling[:40]} is too large to be finite")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _adapter(output_type):
    import pydantic

    return pydantic.TypeAdapter(output_type)


def as_output_type(output_type: Any) -> OutputType:
    """Normalise anything a user may pass as an output type; bad types raise ``SchemaError``."""
    if isinstance(output_type, OutputType):
        return output_type
    if isinstance(output_type, Regex):
        _check_user_regex(output_type.pattern)
        return OutputType(source=output_type, regex=output_type.pattern)
    if isinstance(output_type, dict) and output_type.get("type") in RESPONSE_FORMATS:
        return as_output_type(_from_response_format(output_type))
    translated = _from_outlines(output_type)
    if translated is not None:  # the same checks as the schema dict or Regex it stands for
        return as_output_type(translated)
    # jsonschema loads with the first output type, keeping `import structgen` light
    from structgen.schema.validation import check_document

    if isinstance(output_type, (dict, bool)):
        # Before anything is built from it: a schema that would fetch, crash or nest without end.
        check_document(output_type)
        return OutputType(source=output_type, schema=output_type)
    if isinstance(output_type, str):
        raise InvalidSchemaError(
            "a str is not an output type: pass a JSON schema dict, a Python type, or "
            "structgen.Regex(pattern) for a regular expression"
        )
    import pydantic

    try:
        schema = _adapter(output_type).json_schema()
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as error:
        raise UnsupportedSchemaError(
            f"pydantic cannot describe {output_type!r} as a JSON schema: {error}"
        ) from None
    except TypeError as error:
        raise InvalidSchemaError(f"{output_type!r} is not a type: {error}") from None
    check_document(schema)  # pydantic's schemas are local, but may hold what no UTF-8 text can
    return OutputType(source=output_type, schema=schema)


# OpenAI's response_format types; none is a JSON-schema type, so such a dict is never a schema.
RESPONSE_FORMATS = ("json_schema", "json_object", "text")


def _from_response_format(response_format: dict) -> dict | bool:
    """The schema an OpenAI ``response_format`` asks for: ``json_schema``'s ``schema``, or any JSON
    object for ``json_object``; ``text`` asks for no structure, which no output type is."""
    kind = response_format["type"]
    if kind == "json_object":
        return {"type": "object"}
    if kind == "text":
        raise InvalidSchemaError('response_format {"type": "text"} asks for free text, not an output '
                                 "type: pass a JSON schema, a Python type or structgen.Regex")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
        raise InvalidSchemaError('response_format {"type": "json_schema"} needs "json_schema": '
                                 '{"name": ..., "schema": {...}}')
    return spec["schema"]


def _from_outlines(output_type: Any) -> dict | bool | Regex | None:
    """An outlines 1.x output type as structgen's own (None for anything else).

    ``JsonSchema`` -> its schema (a dict: the pydantic class it was built from is not kept),
    ``Regex`` -> ``Regex``, ``Choice`` of JSON values -> ``{"enum": [...]}``; any other term of
    outlines' regex DSL (``String``, ``Sequence``, ``either``, ...) -> the regex outlines writes
    for it. ``CFG`` is refused. outlines is never imported here: an outlines object exists only
    once outlines is imported, so its module is looked up in ``sys.modules``."""
    dsl = sys.modules.get("outlines.types.dsl")
    if dsl is None or not isinstance(output_type, dsl.Term):
        return None
    if isinstance(output_type, dsl.JsonSchema):
        # whitespace_pattern only shapes formatting: structgen's whitespace= governs it
        try:
            schema = json.loads(output_type.schema)
        except (json.JSONDecodeError, TypeError) as error:
            raise InvalidSchemaError(f"outlines JsonSchema holds no JSON schema: {error}") from None
        except RecursionError:
            raise InvalidSchemaError("outlines JsonSchema: the schema is nested too deep") from None
        if not isinstance(schema, (dict, bool)):
            raise InvalidSchemaError(f"outlines JsonSchema holds a {type(schema).__name__}, not a "
                                     "JSON schema (an object or a boolean)")
        return schema
    if isinstance(output_type, dsl.Regex):
        return Regex(output_type.pattern)
    if isinstance(output_type, dsl.CFG):
        raise UnsupportedSchemaError("outlines CFG output types are not supported: structgen "
                                     "constrains to JSON schemas and regular expressions")
    if isinstance(output_type, dsl.Choice) and all(_is_json_scalar(item) for item in output_type.items):
        unique = list({(type(item), item): item for item in output_type.items}.values())
        return {"enum": unique}
    try:
        return Regex(dsl.to_regex(output_type))
    except Exception as error:  # outlines' own conversion: TypeError, ValueError, RecursionError
        raise UnsupportedSchemaError(
            f"outlines output type {output_type!r} has no regex: {type(error).__name__}: {error}"
        ) from None


def _is_json_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool))


def _check_user_regex(pattern: str) -> None:
    """Reject what a finite-state compiler cannot do (lookarounds, backreferences) up front."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidSchemaError("Regex pattern must be a non-empty string")
    try:
        parsed = parse(pattern)
    except re.error as error:
        raise InvalidSchemaError(f"regex {pattern!r} does not parse: {error}") from None
    unsupported = next((_NON_REGULAR[op] for op in _opcodes(parsed) if op in _NON_REGULAR), None)
    if unsupported:
        raise UnsupportedSchemaError(
            f"regex {pattern!r} uses {unsupported}, which no finite-state constraint can enforce"
        )


_NON_REGULAR = {
    "ASSERT": "a lookahead/lookbehind",
    "ASSERT_NOT": "a negative lookahead/lookbehind",
    "GROUPREF": "a backreference",
    "GROUPREF_EXISTS": "a conditional group",
}


def _opcodes(parsed):
    """Every sre opcode name in a parsed regex, nested groups, repeats and branches included."""
    for op, argument in parsed:
        yield str(op)
        for value in argument if isinstance(argument, (tuple, list)) else ():
            for item in value if isinstance(value, list) else [value]:
                if type(item).__name__ == "SubPattern":
                    yield from _opcodes(item)


class _ByteTokens:
    """What ``llguidance.TokenizerWrapper`` reads, for a vocabulary of the 256 bytes (and an EOS)."""

    eos_token_id = 256
    bos_token_id = None
    special_token_ids = [256]
    tokens = [bytes([byte]) for byte in range(256)] + [b"\xff<eos>"]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@functools.cache
def _byte_tokenizer():
    import llguidance

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokens()), n_vocab=257)


def _full_match(regex: str, text: str) -> bool:
    """Whether ``text`` is in ``regex``'s language as the constraint read it: llguidance, fed one
    byte at a time, parses regexes with Rust's regex-syntax as outlines-core does, where Python's
    ``re`` differs (``\\w`` and combining marks, nested classes, ``&&``). A regex llguidance
    refuses (past its size limits) is checked with ``re``."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_regex(regex)
    matcher = llguidance.LLMatcher(_byte_tokenizer(), grammar, log_level=0)
    if matcher.is_error():
        return re.fullmatch(regex, text) is not None
    return matcher.consume_tokens(list(text.encode("utf-8"))) and matcher.is_accepting()
