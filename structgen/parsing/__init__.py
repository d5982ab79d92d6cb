"""Reading the model's text back: JSON as it streams in, and Hermes ``<tool_call>`` blocks."""

from structgen.parsing.partial_json import IncrementalJSONParser, PartialJSONError
from structgen.parsing.tool_calls import ToolCall, format_tool_call, parse_tool_calls

__all__ = ["IncrementalJSONParser", "PartialJSONError", "ToolCall", "format_tool_call", "parse_tool_calls"]
