"""Constraint: what every engine's compiled constraint offers the decoding loop."""

from __future__ import annotations

from typing import Any

from structgen.schema.layout import DEFAULT_WHITESPACE


class Constraint:
    """Immutable and shared; ``matcher()`` hands out the per-sequence cursor
    (``CompiledConstraint`` for the finite-state engine, ``GrammarConstraint`` for llguidance)."""

    engine = "?"
    regex: str | None = None
    output_type = None
    whitespace = DEFAULT_WHITESPACE
    tokenizer_fingerprint = ""
    eos_token_id = -1
    vocab_size = 0
    compile_seconds = 0.0
    from_cache = "none"
    fallback_reason: str | None = None  # why llguidance serves a schema the regex compiler took

    @property
    def schema(self) -> Any:
        return self.output_type.schema if self.output_type is not None else None

    @property
    def min_tokens(self) -> int:
        return 1

    def fits(self, tokens: int) -> bool:
        """Whether the shortest answer fits in ``tokens`` (``min_tokens <= tokens``, which an
        engine may answer without computing ``min_tokens``)."""
        return self.min_tokens <= tokens

    def matcher(self, max_tokens: int | None = None):
        raise NotImplementedError
