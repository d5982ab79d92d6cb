"""Constraint layer: TokenizerInfo -> compile_constraint -> CompiledConstraint -> Matcher."""

from structgen.constraint.compiler import (
    CompiledConstraint,
    ConstraintCompiler,
    compile_constraint,
)
from structgen.constraint.matcher import Matcher
from structgen.constraint.vocabulary import TokenizerInfo

__all__ = ["CompiledConstraint", "ConstraintCompiler", "Matcher", "TokenizerInfo", "compile_constraint"]
