"""structgen: language models that return structured data that always parses and validates.

    import structgen
    character = structgen.generate(Character, "Describe Goku from Dragon Ball Z.")

The public surface is what ``__all__`` lists. Importing structgen is light: torch and transformers
load only when a model is loaded or a generation runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from structgen.errors import (
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
    SchemaError,
    StructgenError,
    TokenizerMismatchError,
    UnsatisfiableSchemaError,
    UnsupportedSchemaError,
    VocabularyError,
)
from structgen.types import Regex

__version__ = "0.1.0"

__all__ = [
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
    "PromptTooLongError",
    "Regex",
    "SchemaError",
    "StructgenError",
    "TokenizerInfo",
    "TokenizerMismatchError",
    "UnsatisfiableSchemaError",
    "UnsupportedSchemaError",
    "VocabularyError",
    "__version__",
    "compile_constraint",
    "generate",
    "generate_with_details",
    "load_model",
    "schema_to_regex",
]

# Names resolved on first use, so `import structgen` does not import torch, transformers or numpy.
_LAZY = {
    "compile_constraint": "structgen.constraint.compiler",
    "CompiledConstraint": "structgen.constraint.compiler",
    "Matcher": "structgen.constraint.matcher",
    "TokenizerInfo": "structgen.constraint.vocabulary",
    "generate": "structgen.decoding.generate",
    "generate_with_details": "structgen.decoding.generate",
    "Generation": "structgen.decoding.generate",
    "load_model": "structgen.backends.transformers",
    "Model": "structgen.backends.transformers",
    "schema_to_regex": "structgen.schema",
}

if TYPE_CHECKING:
    from structgen.backends.transformers import Model, load_model
    from structgen.constraint.compiler import CompiledConstraint, compile_constraint
    from structgen.constraint.matcher import Matcher
    from structgen.constraint.vocabulary import TokenizerInfo
    from structgen.decoding.generate import Generation, generate, generate_with_details
    from structgen.schema import schema_to_regex


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
