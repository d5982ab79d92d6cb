"""Hermes tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.

The parser is the other half of the constraint: constrained text always parses, but unconstrained
text (or a model's own chat template) may not, so every malformed block is reported, all at once,
with its index and raw text. JSON is read with ``json`` only; nothing is ever evaluated.

A block ends at the ``</tool_call>`` that follows its JSON value, not at the first one in the text,
since a string argument may itself contain the tag and the constraint allows that.

A repeated key, which ``json`` would resolve silently to its last value, is refused: next to
``name`` or ``arguments`` it makes the block malformed (the call is ambiguous), inside the
arguments the call is refused like arguments that do not validate. Numbers too large for a float
(``1e999``, read as ``inf``) are refused by ``Tool.validate_arguments``.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from structgen.errors import ToolArgumentsError, ToolCallParseError, ToolInputError
from structgen.schema.tools import Tool, as_tools

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_TAG = re.compile(f"{re.escape(OPEN)}|{re.escape(CLOSE)}")
_KEYS = frozenset({"name", "arguments"})
_SPACE = re.compile(r"\s*")
_CLOSE_AFTER_SPACE = re.compile(rf"\s*({re.escape(CLOSE)})")
_DECODER = json.JSONDecoder()
_UNCLOSED = f"{OPEN} has no matching {CLOSE}"
_UNOPENED = f"{CLOSE} has no matching {OPEN}"


def _new_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ToolCall:
    """One call: the tool's ``name`` and the ``arguments`` object as the model wrote it.

    ``parsed`` is what ``Tool.validate_arguments`` made of the arguments (typed keyword arguments
    for a function, a model instance for a BaseModel tool, the dict for a dict tool). It is a plain
    field, filled by ``parse_tool_calls``; a ToolCall built by hand has None unless given one.

    ``error`` is the ``ToolArgumentsError`` of a call its tool refused (``parsed`` is then None):
    constrained arguments fit the schema, but a pydantic validator may be stricter. Only
    ``read_tool_calls`` returns such calls, so that the rest of a turn can still run.
    """

    name: str
    arguments: dict
    id: str = field(default_factory=_new_id)
    parsed: Any = None
    error: ToolArgumentsError | None = field(default=None, compare=False)

    def to_openai(self) -> dict:
        """The call as OpenAI's ``tool_calls`` entry (``arguments`` a JSON string)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


def parse_tool_calls(text: str, tools: Any) -> list[ToolCall]:
    """Every ``<tool_call>`` block of ``text``, validated against ``tools`` (whatever ``as_tools``
    takes). Text outside the blocks is ignored; no block at all gives ``[]``.

    Raises ``ToolCallParseError`` listing (block index, reason, raw block) for each bad block.
    """
    blocks = _read(text, tools)
    problems = [(index, outcome if isinstance(outcome, str) else str(outcome.error), raw)
                for index, raw, outcome in blocks
                if isinstance(outcome, str) or outcome.error is not None]
    if problems:
        raise ToolCallParseError(problems)
    return [outcome for _, _, outcome in blocks]


def read_tool_calls(text: str, tools: Any) -> list[ToolCall]:
    """Like ``parse_tool_calls``, but a call whose arguments its tool refuses comes back with
    ``error`` set instead of failing the whole turn; malformed blocks still raise."""
    blocks = _read(text, tools)
    problems = [(index, outcome, raw) for index, raw, outcome in blocks if isinstance(outcome, str)]
    if problems:
        raise ToolCallParseError(problems)
    return [outcome for _, _, outcome in blocks]


def _read(text: str, tools: Any) -> list[tuple[int, str, ToolCall | str]]:
    """(block index, raw block, its call or why it is malformed) for each block of ``text``."""
    if not isinstance(text, str):
        raise ToolInputError(f"the text to parse must be a str, not {type(text).__name__}")
    by_name = {tool.name: tool for tool in as_tools(tools)}
    blocks = []
    for index, (raw, body, tag_problem) in enumerate(_blocks(text)):
        try:
            if tag_problem:
                raise _Malformed(tag_problem)
            blocks.append((index, raw, _call(body, by_name)))
        except _Malformed as problem:
            blocks.append((index, raw, str(problem)))
    return blocks


def format_tool_call(call_or_name: ToolCall | str, arguments: dict | None = None) -> str:
    """The canonical block, name first (the key order structgen's constraint emits)."""
    if isinstance(call_or_name, ToolCall):
        if arguments is not None:
            raise ToolInputError("pass arguments only together with a tool name, not with a ToolCall")
        name, arguments = call_or_name.name, call_or_name.arguments
    else:
        name, arguments = call_or_name, {} if arguments is None else arguments
    if not isinstance(name, str):
        raise ToolInputError(f"the tool name must be a str, not {type(name).__name__}")
    if not isinstance(arguments, dict):
        raise ToolInputError(f"the arguments must be a dict, not {type(arguments).__name__}")
    try:
        payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise ToolInputError(f"the arguments of {name!r} cannot be written as JSON: {error}") from None
    return f"{OPEN}\n{payload}\n{CLOSE}"


class _Malformed(Exception):
    """One block's problem; collected, never raised out of this module."""


def _blocks(text: str):
    """(raw text, body, tag problem) for each block, in order; body is None for a bad one.

    An opening tag followed by another opening tag or by the end of the text is an unclosed block;
    a closing tag with no opening tag before it is a block too (its raw text starts after the
    previous block): both mean the model tried to call a tool and got the format wrong.
    """
    position = 0
    while (tag := _TAG.search(text, position)) is not None:
        if tag.group() == CLOSE:
            yield text[position : tag.end()], None, _UNOPENED
            position = tag.end()
        elif (closing := _closing(text, tag.end())) is not None:
            yield text[tag.start() : closing[1]], text[tag.end() : closing[0]], None
            position = closing[1]
        else:
            following = text.find(OPEN, tag.end())
            position = len(text) if following < 0 else following
            yield text[tag.start() : position], None, _UNCLOSED


def _closing(text: str, body_start: int) -> tuple[int, int] | None:
    """Span of the closing tag of the block whose body starts at ``body_start``, or None.

    It is the tag right after the body's JSON value, so that ``</tool_call>`` inside a JSON string
    does not end the block; when the body is not one JSON value, the next tag if it closes.
    """
    try:
        _, end = _DECODER.raw_decode(text, _SPACE.match(text, body_start).end())
        after = _CLOSE_AFTER_SPACE.match(text, end)
        if after:
            return after.span(1)
    except (ValueError, RecursionError):
        pass
    tag = _TAG.search(text, body_start)
    return tag.span() if tag is not None and tag.group() == CLOSE else None


def _call(body: str, tools: dict[str, Tool]) -> ToolCall:
    payload, outer, inner = _json(body, "not JSON")
    if not isinstance(payload, dict):
        raise _Malformed(f"not a JSON object but {_json_type(payload)}")
    if set(payload) != _KEYS:
        missing, extra = sorted(_KEYS - set(payload)), sorted(set(payload) - _KEYS)
        raise _Malformed(
            f"keys missing: {missing}, unexpected: {extra} "
            '(a call is {"name": ..., "arguments": {...}})'
        )
    if outer:
        raise _Malformed(f"{outer[0]}: the call is ambiguous")
    name, arguments = payload["name"], payload["arguments"]
    if not isinstance(name, str):
        raise _Malformed(f"name is not a string but {_json_type(name)}")
    if name not in tools:
        raise _Malformed(f"unknown tool {name!r}; the tools are {sorted(tools)}")
    if isinstance(arguments, str):  # some models write the arguments object as a JSON string
        arguments, outer, inner = _json(arguments, "arguments is a string but not JSON")
        inner = outer + inner
    if not isinstance(arguments, dict):
        raise _Malformed(f"arguments is not a JSON object but {_json_type(arguments)}")
    try:
        if inner:
            raise ToolArgumentsError(name, "; ".join(inner), arguments)
        parsed = tools[name].validate_arguments(arguments)
    except ToolArgumentsError as error:
        return ToolCall(name=name, arguments=arguments, error=error)
    return ToolCall(name=name, arguments=arguments, parsed=parsed)


def _json(text: str, reason: str) -> tuple[Any, list[str], list[str]]:
    """``json.loads``, refusing NaN/Infinity (not JSON) and nesting too deep for the parser.

    Also returns the keys repeated in an object: in the outermost one, and in those below it.
    """
    repeated: list[tuple[int, str]] = []  # (which object, in the order their hooks run; problem)
    objects = 0

    def pairs(items: list[tuple[str, Any]]) -> dict:
        nonlocal objects
        value = dict(items)
        if len(value) < len(items):
            repeated.append((objects, f"the key {_repeated_key(items)!r} appears twice in one object"))
        objects += 1
        return value

    try:
        value = json.loads(text.strip(), object_pairs_hook=pairs, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise _Malformed(f"{reason}: {error}") from None
    outer = [problem for index, problem in repeated if index == objects - 1]  # its hook runs last
    return value, outer, [problem for index, problem in repeated if index < objects - 1]


def _repeated_key(items: list[tuple[str, Any]]) -> str:
    seen = set()
    for key, _ in items:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no key is repeated")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names[type(value)]
