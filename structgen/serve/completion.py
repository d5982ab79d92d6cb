"""One chat completion: OpenAI's request made into a row to decode, and the row's tokens made into
OpenAI's deltas and message, through the functions ``generate`` and ``call_tools`` use.

The answer kinds: ``json`` (``response_format`` json_schema or json_object: the Hermes JSON-mode
prompt and the schema's constraint; the content is the JSON text, parsed and validated at the
end), ``tools`` (the Hermes function-calling prompt and the tool-turn constraint; ``<tool_call>``
blocks become ``tool_calls``) and ``text`` (no constraint; ``stop`` strings end it). ``stop`` is
ignored for the other two kinds: cutting a constrained answer short would break its guarantee.
Streamed and whole replies come from the same ``Answer``, so they say the same thing.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field

from structgen.backends.transformers import Model
from structgen.constraint.base import Constraint
from structgen.decoding.generate import chat_ids, constraint_for, messages_for, prepare_row, token_budget
from structgen.decoding.loop import Row, Sampling, Unconstrained
from structgen.decoding.tools import tool_turn
from structgen.errors import (
    BudgetTooSmallError,
    ConstraintError,
    GenerationError,
    OutputError,
    PromptTooLongError,
    SchemaError,
    ToolError,
    UnsatisfiableSchemaError,
    UnsupportedSchemaError,
)
from structgen.prompts.hermes import as_messages, hermes_message
from structgen.serve.protocol import APIError, ChatRequest, Message
from structgen.serve.tool_deltas import ToolCallDeltas

FREE_TEXT = Constraint()  # what free text's budget is checked against: one token at least

SCHEMA_PARAM = "response_format.json_schema.schema"


@dataclass
class Completion:
    """A request ready to decode: its kind of answer, row (prompt and budgeted matcher), sampling."""

    kind: str  # "json", "tools" or "text"
    row: Row
    sampling: Sampling
    constraint: Constraint | None = None
    tools: list = field(default_factory=list)
    stops: list[str] = field(default_factory=list)


def prepare(model: Model, request: ChatRequest, *, whitespace: str, max_tokens: int) -> Completion:
    """The request's completion, or an ``APIError`` (400) naming the field that is wrong."""
    problem = request.unsupported()
    if problem is not None:
        raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
    messages = conversation(request.messages)
    sampling = Sampling(temperature=request.temperature or 0.0,
                        top_p=1.0 if request.top_p is None else request.top_p, seed=request.seed)
    budget = max_tokens if request.budget is None else request.budget
    tools = [tool.as_dict() for tool in request.tools or []]
    choice = request.tool_choice
    choice = choice.model_dump() if hasattr(choice, "model_dump") else choice or "auto"
    wants_json = request.response_format is not None and request.response_format.type != "text"
    if not tools and choice not in ("auto", "none"):
        raise APIError(400, "tool_choice names a tool, or requires one, but no tools were given",
                       param="tool_choice", code="invalid_value")
    if tools and (choice != "none" or not wants_json):
        if wants_json and choice != "none":
            raise APIError(400, "response_format cannot be combined with tools unless tool_choice is "
                                '"none": the turn is either tool calls or the JSON answer',
                           param="response_format", code="unsupported_parameter")
        named = choice["function"]["name"] if isinstance(choice, dict) else None
        if named is not None and named not in {tool["function"]["name"] for tool in tools}:
            raise APIError(400, f"tool_choice names {named!r}, which is not among the tools",
                           param="tool_choice", code="invalid_value")
        try:
            tool_list, constraint, prompt = tool_turn(
                tools, messages, model, tool_choice=choice, max_calls=None,
                parallel=request.parallel_tool_calls, whitespace=whitespace)
        except (SchemaError, ToolError, ConstraintError) as error:
            raise api_error(error, "tools") from error
        except GenerationError as error:
            raise api_error(error, "messages") from error
        kind = "tools"
    elif wants_json:
        hermes = [hermes_message(m) for m in messages]
        try:
            constraint = constraint_for(request.response_format.as_dict(), model, whitespace)
            prompt = messages_for(constraint, hermes)
        except (SchemaError, ConstraintError) as error:
            raise api_error(error, SCHEMA_PARAM) from error
        except GenerationError as error:
            raise api_error(error, "messages") from error
        tool_list, kind = [], "json"
    else:
        constraint, tool_list, kind = None, [], "text"
        prompt = [hermes_message(m) for m in messages]
    try:
        if constraint is not None:
            row = prepare_row(model, constraint, prompt, budget)
        else:
            ids = chat_ids(model, as_messages(prompt))
            row = Row(prompt_ids=ids, matcher=Unconstrained(model.eos_token_id,
                                                           token_budget(model, FREE_TEXT, len(ids), budget)))
    except BudgetTooSmallError as error:
        raise api_error(error, request.budget_field) from error
    except GenerationError as error:
        raise api_error(error, "messages") from error
    return Completion(kind=kind, row=row, sampling=sampling, constraint=constraint, tools=tool_list,
                      stops=request.stops if kind == "text" else [])


def api_error(error: Exception, param: str) -> APIError:
    """A structgen error as a 400 naming ``param``; schema errors say their JSON pointer."""
    code = next((code for kind, code in _ERROR_CODES if isinstance(error, kind)), "invalid_value")
    return APIError(400, f"{param}: {error}", param=param, code=code)


#: OpenAI ``code`` of a structgen error, the first class that matches (subclasses before bases).
_ERROR_CODES = (
    (PromptTooLongError, "context_length_exceeded"),
    (BudgetTooSmallError, "budget_too_small"),
    (UnsupportedSchemaError, "unsupported_schema"),
    (UnsatisfiableSchemaError, "unsatisfiable_schema"),
    (SchemaError, "invalid_schema"),
    (ConstraintError, "schema_too_complex"),
)


def conversation(messages: list[Message]) -> list[dict]:
    """OpenAI messages as structgen's conversation: text content, tool calls with their arguments
    parsed, and a tool result named after the call it answers (Hermes puts the name in it)."""
    names: dict[str, str] = {}
    result = []
    for i, message in enumerate(messages):
        entry = {"role": "system" if message.role == "developer" else message.role,
                 "content": _text(message.content, f"messages[{i}].content")}
        if message.tool_calls:
            entry["tool_calls"] = []
            for j, call in enumerate(message.tool_calls):
                arguments = _arguments(call.function.arguments,
                                       f"messages[{i}].tool_calls[{j}].function.arguments")
                names[call.id or ""] = call.function.name
                entry["tool_calls"].append({"id": call.id, "type": "function",
                                            "function": {"name": call.function.name, "arguments": arguments}})
        if message.role == "tool":
            entry["name"] = message.name or names.get(message.tool_call_id or "", "")
            entry["tool_call_id"] = message.tool_call_id
        result.append(entry)
    return result


def _text(content, param: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    for part in content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"{param}: only text content parts are supported, not {part.type!r}",
                           param=param, code="unsupported_content")
    return "\n".join(part.text for part in content)


def _arguments(text: str, param: str) -> dict:
    try:
        arguments = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise APIError(400, f"{param}: not JSON: {error}", param=param, code="invalid_value") from None
    if not isinstance(arguments, dict):
        raise APIError(400, f"{param}: not a JSON object", param=param, code="invalid_value")
    return arguments


class Answer:
    """A completion's tokens as OpenAI deltas, then its message and ``finish_reason``."""

    def __init__(self, model: Model, completion: Completion):
        self.completion = completion
        self.token_bytes = model.tokenizer_info.token_bytes
        self.eos = completion.row.matcher.eos_token_id
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tools = ToolCallDeltas(completion.tools) if completion.kind == "tools" else None
        self.text = ""  # the content so far (json, text)
        self.pending = ""  # text that may be the start of a stop string
        self.stopped = False  # a stop string was reached: the row may leave

    def feed(self, token: int) -> list[dict]:
        if token == self.eos or self.stopped:
            return []
        return self._deltas(self.decoder.decode(self.token_bytes.get(token, b"")))

    def finish(self, row: Row) -> tuple[list[dict], dict, str]:
        """The last deltas, the message and the finish reason, once the row has left the batch."""
        if row.stop_reason == "rejected":
            raise OutputError("the model produced a token the constraint forbids (please report this)",
                              self.text)
        deltas = [] if self.stopped else self._deltas(self.decoder.decode(b"", final=True))
        if self.tools is not None:
            deltas += self.tools.end(row.stop_reason)
            if self.tools.finished:
                return deltas, {"role": "assistant", "content": None, "tool_calls": self.tools.finished}, \
                    "tool_calls"
            self.text = self.tools.text
        elif self.completion.kind == "json":
            self.completion.constraint.output_type.parse(self.text)  # the guarantee, checked
        elif not self.stopped and self.pending:
            deltas.append({"content": self.pending})
            self.text, self.pending = self.text + self.pending, ""
        reason = "length" if row.stop_reason == "max_tokens" and not self.stopped else "stop"
        return deltas, {"role": "assistant", "content": self.text}, reason

    def _deltas(self, text: str) -> list[dict]:
        if not text:
            return []
        if self.tools is not None:
            return self.tools.feed(text)
        if self.completion.stops:
            text = self._until_stop(text)
            if not text:
                return []
        self.text += text
        return [{"content": text}]

    def _until_stop(self, text: str) -> str:
        """What may be sent of ``pending + text``: up to a stop string (then ``stopped``), or all
        but its longest ending that could begin one."""
        self.pending += text
        hits = [at for at in (self.pending.find(stop) for stop in self.completion.stops) if at >= 0]
        if hits:
            sent, self.pending, self.stopped = self.pending[:min(hits)], "", True
            return sent
        longest = max(len(stop) for stop in self.completion.stops)
        for keep in range(min(len(self.pending), longest - 1), 0, -1):
            if any(stop.startswith(self.pending[-keep:]) for stop in self.completion.stops):
                sent, self.pending = self.pending[:-keep], self.pending[-keep:]
                return sent
        sent, self.pending = self.pending, ""
        return sent
