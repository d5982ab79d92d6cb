"""structgen: language models that return structured data that always parses and validates.

    import structgen
    character = structgen.generate(Character, "Describe Goku from Dragon Ball Z.")

The public surface is what ``__all__`` lists. Importing structgen is light: torch and transformers
load only when a model is loaded or a generation runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from structgen.errors import (
    BatchInputError,
    BatchLockedError,
    BudgetTooSmallError,
    CompileTimeoutError,
    CompileTooLargeError,
    ConstraintError,
    EmptyPromptError,
    GenerationError,
    InvalidSchemaError,
    ModelError,
    ModelNotFoundError,
    OutputError,
    PromptTooLongError,
    RecursionLimitError,
    RegexTooLargeError,
    RetriesExhaustedError,
    SchemaError,
    ServerBusyError,
    StructgenError,
    TokenizerMismatchError,
    ToolArgumentsError,
    ToolCallParseError,
    ToolDefinitionError,
    ToolError,
    ToolInputError,
    UnsafeCacheWarning,
    UnsatisfiableSchemaError,
    UnsupportedSchemaError,
    VocabularyError,
)
from structgen.types import Regex

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "BatchInputError",
    "BatchLockedError",
    "BudgetTooSmallError",
    "CompileTimeoutError",
    "CompileTooLargeError",
    "CompiledConstraint",
    "ConstraintError",
    "EmptyPromptError",
    "Generation",
    "GenerationError",
    "InvalidSchemaError",
    "Matcher",
    "Model",
    "ModelError",
    "ModelNotFoundError",
    "OutputError",
    "Partial",
    "PromptTooLongError",
    "RecursionLimitError",
    "Regex",
    "RegexTooLargeError",
    "Retry",
    "RetriesExhaustedError",
    "SchemaError",
    "ServerBusyError",
    "StructgenError",
    "TokenizerInfo",
    "TokenizerMismatchError",
    "ToolArgumentsError",
    "ToolCallParseError",
    "ToolDefinitionError",
    "ToolError",
    "ToolInputError",
    "UnsafeCacheWarning",
    "UnsatisfiableSchemaError",
    "UnsupportedSchemaError",
    "VocabularyError",
    "Tool",
    "ToolCall",
    "ToolRun",
    "ToolTurn",
    "__version__",
    "as_tool",
    "astream",
    "astream_tools",
    "call_tools",
    "call_tools_with_details",
    "compile_constraint",
    "from_transformers",
    "generate",
    "generate_batch",
    "generate_batch_with_details",
    "generate_with_details",
    "load_model",
    "parse_tool_calls",
    "run_tools",
    "schema_to_regex",
    "stream",
    "stream_text",
    "stream_tools",
]

# Names resolved on first use, so `import structgen` does not import torch, transformers or numpy.
_LAZY = {
    "compile_constraint": "structgen.constraint.compiler",
    "CompiledConstraint": "structgen.constraint.compiled",
    "Matcher": "structgen.constraint.matcher",
    "TokenizerInfo": "structgen.constraint.vocabulary",
    "generate": "structgen.decoding.generate",
    "generate_with_details": "structgen.decoding.generate",
    "generate_batch": "structgen.decoding.generate",
    "generate_batch_with_details": "structgen.decoding.generate",
    "Generation": "structgen.decoding.generate",
    "Attempt": "structgen.decoding.retry",
    "load_model": "structgen.backends.transformers",
    "from_transformers": "structgen.backends.transformers",
    "Model": "structgen.backends.transformers",
    "schema_to_regex": "structgen.schema",
    "Tool": "structgen.schema.tools",
    "as_tool": "structgen.schema.tools",
    "ToolCall": "structgen.parsing.tool_calls",
    "parse_tool_calls": "structgen.parsing.tool_calls",
    "call_tools": "structgen.decoding.tools",
    "call_tools_with_details": "structgen.decoding.tools",
    "run_tools": "structgen.decoding.tools",
    "ToolRun": "structgen.decoding.tools",
    "ToolTurn": "structgen.decoding.tools",
    "Partial": "structgen.decoding.streaming",
    "Retry": "structgen.decoding.streaming",
    "stream": "structgen.decoding.streaming",
    "stream_text": "structgen.decoding.streaming",
    "stream_tools": "structgen.decoding.streaming",
    "astream": "structgen.decoding.streaming",
    "astream_tools": "structgen.decoding.streaming",
}

if TYPE_CHECKING:
    from structgen.backends.transformers import Model, from_transformers, load_model
    from structgen.constraint.compiled import CompiledConstraint
    from structgen.constraint.compiler import compile_constraint
    from structgen.constraint.matcher import Matcher
    from structgen.constraint.vocabulary import TokenizerInfo
    from structgen.decoding.generate import (
        Generation,
        generate,
        generate_batch,
        generate_batch_with_details,
        generate_with_details,
    )
    from structgen.decoding.retry import Attempt
    from structgen.decoding.streaming import (
        Partial,
        Retry,
        astream,
        astream_tools,
        stream,
        stream_text,
        stream_tools,
    )
    from structgen.decoding.tools import (
        ToolRun,
        ToolTurn,
        call_tools,
        call_tools_with_details,
        run_tools,
    )
    from structgen.parsing.tool_calls import ToolCall, parse_tool_calls
    from structgen.schema import schema_to_regex
    from structgen.schema.tools import Tool, as_tool


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'structgen' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
