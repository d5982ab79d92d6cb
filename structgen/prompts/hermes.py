"""Hermes 2 Pro prompts, rendered through the tokenizer's own chat template.

The JSON-mode system prompt is the one of ``shared/hermes-formats.md``, word for word. Tokenizers
without a chat template get ChatML, the format Hermes and SmolLM2 are trained on.
"""

from __future__ import annotations

import json
from typing import Any

from structgen.errors import EmptyPromptError, GenerationError

JSON_MODE_SYSTEM_PROMPT = (
    "You are a helpful assistant that answers in JSON. Here's the json schema you must adhere to:"
    "\n<schema>\n{schema}\n</schema>"
)

TOOLS_SYSTEM_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures within "
    "<tools></tools> XML tags. You may call one or more functions to assist with the user query. "
    "Don't make assumptions about what values to plug into functions. Here are the available "
    "tools: <tools> {tools} </tools> Use the following pydantic model json schema for each tool "
    'call you will make: {{"properties": {{"arguments": {{"title": "Arguments", "type": "object"}}, '
    '"name": {{"title": "Name", "type": "string"}}}}, "required": ["arguments", "name"], '
    '"title": "FunctionCall", "type": "object"}} For each function call return a json object with '
    "function name and arguments within <tool_call></tool_call> XML tags as follows:\n"
    "<tool_call>\n"
    '{{"arguments": <args-dict>, "name": <function-name>}}\n'
    "</tool_call>"
)

Messages = list[dict[str, Any]]


def json_mode_system_prompt(schema: Any) -> str:
    return JSON_MODE_SYSTEM_PROMPT.format(schema=json.dumps(schema, ensure_ascii=False))


def as_messages(prompt: str | Messages) -> Messages:
    """A string is the user turn; a list is a conversation (copied, never modified)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise EmptyPromptError("the prompt is empty")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise GenerationError("prompt must be a string or a list of {'role': ..., 'content': ...} dicts")
    if not prompt:
        raise EmptyPromptError("the conversation has no messages")
    for position, message in enumerate(prompt):
        if "role" not in message:
            raise GenerationError(f"message {position} has no 'role'")
    if not any(str(m.get("content") or "").strip() or m.get("tool_calls") for m in prompt):
        raise EmptyPromptError("every message in the conversation is empty")
    return [dict(m) for m in prompt]


def with_system_prompt(messages: Messages, system: str) -> Messages:
    """Put ``system`` first; a system message of the user's is kept, ours appended after it."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first.get('content') or ''}\n\n{system}".lstrip()
        return [first, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def json_mode_messages(prompt: str | Messages, schema: Any) -> Messages:
    return with_system_prompt(as_messages(prompt), json_mode_system_prompt(schema))


def tools_system_prompt(signatures: list[dict]) -> str:
    """The Hermes function-calling system prompt with the OpenAI-style signatures as a JSON list."""
    return TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(signatures, ensure_ascii=False))


def tool_messages(prompt: str | Messages, signatures: list[dict]) -> Messages:
    """The conversation with the tools prompt, tool calls and results spelled the Hermes way."""
    messages = [hermes_message(m) for m in as_messages(prompt)]
    return with_system_prompt(messages, tools_system_prompt(signatures))


def hermes_message(message: dict) -> dict:
    """One message as plain role/content, so any chat template renders it as the cards show.

    An assistant message's ``tool_calls`` become ``<tool_call>`` blocks; a ``tool`` message's
    content becomes a ``<tool_response>`` block holding ``{"name": ..., "content": ...}``.
    """
    role = message.get("role")
    if role == "assistant" and message.get("tool_calls"):
        blocks = [_call_block(call) for call in message["tool_calls"]]
        text = _content_text(message.get("content")).strip()
        return {"role": "assistant", "content": "\n".join(([text] if text else []) + blocks)}
    if role == "tool":
        content = message.get("content")
        if isinstance(content, str):
            try:
                content = json.loads(content)
            except json.JSONDecodeError:
                pass  # plain text results stay text
        response = json.dumps({"name": message.get("name", ""), "content": content}, ensure_ascii=False)
        return {"role": "tool", "content": f"<tool_response>\n{response}\n</tool_response>"}
    return {"role": role, "content": _content_text(message.get("content"))}


def _call_block(call: dict) -> str:
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def render_chat(tokenizer, messages: Messages, **template_kwargs) -> str:
    """The prompt text up to and including the assistant header the model continues from."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **template_kwargs
        )
    return render_chatml(messages)


def render_chatml(messages: Messages) -> str:
    parts = [f"<|im_start|>{m['role']}\n{_content_text(m.get('content'))}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return json.dumps(content, ensure_ascii=False)
