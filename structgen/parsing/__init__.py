"""Reading the model's text back: Hermes ``<tool_call>`` blocks into validated tool calls."""

from structgen.parsing.tool_calls import ToolCall, format_tool_call, parse_tool_calls

__all__ = ["ToolCall", "format_tool_call", "parse_tool_calls"]
