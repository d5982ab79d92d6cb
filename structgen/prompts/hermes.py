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
