"""OpenAI's chat-completions wire format: the request as pydantic models, the replies as dicts.

Fields OpenAI clients send are typed, so a wrong type is a 400 naming the field; fields structgen
does not know are ignored (clients add ``user``, ``metadata``, ``store``, ...), while known ones
that would change the answer in a way structgen cannot honour (``n`` > 1, ``logprobs``, penalties,
``logit_bias``) are refused rather than dropped silently.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCallIn(_Open):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Open):
    type: str
    text: str | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class JsonSchemaFormat(_Open):
    name: str
    description: str | None = None
    schema_: dict | bool = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs "json_schema": {"name": ..., "schema": {...}}')
        return self

    def as_dict(self) -> dict:
        """The dict ``structgen.generate`` takes as an output type."""
        return self.model_dump(by_alias=True, exclude_none=True)


class FunctionDef(_Open):
    name: str
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class ToolDef(_Open):
    type: Literal["function"]
    function: FunctionDef

    def as_dict(self) -> dict:
        """The OpenAI tool dict ``structgen.call_tools`` takes."""
        return {"type": "function", "function": self.function.model_dump(exclude_none=True)}


class ChosenFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: ChosenFunction


class StreamOptions(_Open):
    include_usage: bool = False


class ChatRequest(_Open):
    """``POST /v1/chat/completions``. ``model`` is accepted and the served model answers."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "required", "none"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) for the first field set to something structgen cannot do."""
        if self.n != 1:
            return "n", "only n=1 is supported (one answer per request)"
        if self.logprobs or self.top_logprobs:
            return "logprobs", "logprobs are not supported"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported (the constraint decides the allowed tokens)"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name, f"{name} is not supported"
        return None

    @property
    def budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def budget_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [stop for stop in stops if stop]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class APIError(Exception):
    """An error reply in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(id_: str, model: str, message: dict, finish_reason: str, usage_: dict) -> dict:
    return {"id": id_, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage_, "system_fingerprint": None}


def chunk(id_: str, model: str, delta: dict | None, finish_reason: str | None = None,
          usage_: dict | None = None) -> dict:
    """One ``chat.completion.chunk``; ``delta=None`` is the usage chunk (no choices)."""
    choices: list[Any] = [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return {"id": id_, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_, "system_fingerprint": None}
