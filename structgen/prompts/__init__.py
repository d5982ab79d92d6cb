"""Prompt formats: ChatML conversations and the Hermes 2 Pro JSON-mode and tool prompts."""

from structgen.prompts.hermes import (
    JSON_MODE_SYSTEM_PROMPT,
    TOOLS_SYSTEM_PROMPT,
    as_messages,
    hermes_message,
    json_mode_messages,
    json_mode_system_prompt,
    render_chat,
    render_chatml,
    tool_messages,
    tools_system_prompt,
)

__all__ = ["JSON_MODE_SYSTEM_PROMPT", "TOOLS_SYSTEM_PROMPT", "as_messages", "hermes_message",
           "json_mode_messages", "json_mode_system_prompt", "render_chat", "render_chatml",
           "tool_messages", "tools_system_prompt"]
