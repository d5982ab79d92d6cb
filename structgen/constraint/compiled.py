"""CompiledConstraint: a byte automaton joined to one tokenizer's vocabulary, frozen and shared.

It holds the ``ByteAutomaton`` (shared by every tokenizer), the tokenizer's ``TokenBytes``, each
state's distance to acceptance in that tokenizer's tokens (``token_distances``), and the ``MaskStore`` that
computes token masks on first visit. Nothing in it changes after construction but the mask
store's contents, which are a pure function of the state; per-sequence state lives in the cheap
``Matcher`` it hands out.
"""

from __future__ import annotations

import numpy as np

from structgen.constraint.automaton import COUNTER_LOOKAHEAD, ByteAutomaton
from structgen.constraint.base import Constraint
from structgen.constraint.matcher import Matcher, unpack_bitmask
from structgen.constraint.token_masks import DEFAULT_MASK_BYTES, MaskStore, TokenBytes
from structgen.errors import CompileTooLargeError, UnsatisfiableSchemaError
from structgen.types import OutputType

#: Multi-byte tokens stepped from every state for the distances: at most this many steps in all.
DISTANCE_STEPS = 4_000_000


def single_byte_distances(automaton: ByteAutomaton, tokens: TokenBytes) -> np.ndarray:
    """Each state's distance to acceptance in single-byte tokens: an upper bound on
    ``token_distances`` (which adds edges), known at once for a byte-level vocabulary (the
    automaton's byte distances), a search otherwise."""
    if np.all(tokens.single_bytes):  # a byte-level BPE vocabulary
        return automaton.byte_distance
    return automaton.distances(tokens.single_bytes)


def token_distances(automaton: ByteAutomaton, tokens: TokenBytes,
                    by_bytes: np.ndarray | None = None) -> np.ndarray:
    """Each state's distance to acceptance in tokens: single-byte tokens (``by_bytes``, the
    ``single_byte_distances``), plus the multi-byte tokens found in the shortest answer (its
    keys, separators and indentation), so the bound is close to the fewest tokens an answer
    needs rather than its fewest bytes (a 3-field object in indented whitespace: 42 single
    bytes, 20 with SmolLM2's tokens)."""
    if by_bytes is None:
        by_bytes = single_byte_distances(automaton, tokens)
    shortest = automaton.shortest_completion(by_bytes, automaton.initial, limit=1024)
    helpful = tokens.found_in(shortest)
    helpful = helpful[:max(0, DISTANCE_STEPS // (len(automaton.table) * 4))]
    return automaton.distances(tokens.single_bytes, helpful) if helpful else by_bytes


class CompiledConstraint(Constraint):
    """The finite-state constraint (``engine == "outlines-core"``: outlines-core builds its DFA).

    ``mask``/``bitmask`` of a state are computed once and kept (``MaskStore``, at most
    ``mask_bytes`` of packed masks, least recently used evicted); ``next_state`` walks a token's
    bytes through the automaton; ``distance`` is ``token_distances``' bound on the tokens to
    acceptance, which is what the budget rule and ``min_tokens`` count (an answer may need fewer
    tokens when other tokens spell it, never more). Those distances are computed on first need
    (about 2 ms for a median schema at Llama-3's vocabulary): ``within`` and ``fits`` ask the
    single-byte bound first, so a sequence far from its budget never waits for them.
    """

    engine = "outlines-core"

    def __init__(self, automaton: ByteAutomaton, tokens: TokenBytes, *, regex: str,
                 output_type: OutputType | None, whitespace: str, tokenizer_fingerprint: str,
                 eos_token_id: int, compile_seconds: float = 0.0, from_cache: str = "none",
                 masks: MaskStore | None = None, mask_bytes: int = DEFAULT_MASK_BYTES):
        self.automaton = automaton
        self.regex = regex
        self.output_type = output_type
        self.whitespace = whitespace
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.eos_token_id = eos_token_id
        self.vocab_size = tokens.vocab_size
        self.compile_seconds = compile_seconds
        self.from_cache = from_cache  # "none", "memory" or "disk"
        self.initial_state = automaton.initial
        if masks is None:
            if not automaton.table[automaton.initial].any() and not automaton.is_final[automaton.initial]:
                raise UnsatisfiableSchemaError("no text satisfies this constraint")
            if len(automaton.counters) and len(tokens.lengths) and tokens.lengths[0] > COUNTER_LOOKAHEAD:
                raise CompileTooLargeError(
                    f"this tokenizer has tokens of {int(tokens.lengths[0])} bytes; a string "
                    f"counted by a loop needs tokens of at most {COUNTER_LOOKAHEAD}")
            bound = single_byte_distances(automaton, tokens)
            masks = MaskStore(automaton, tokens, bound,
                              lambda: token_distances(automaton, tokens, bound), eos_token_id,
                              max_bytes=mask_bytes)
        self.masks = masks
        self._tokens = tokens

    def with_request(self, *, output_type: OutputType | None, whitespace: str,
                     from_cache: str) -> "CompiledConstraint":
        """The same automaton and masks under another request's metadata (a cache hit)."""
        return CompiledConstraint(self.automaton, self._tokens, regex=self.regex,
                                  output_type=output_type, whitespace=whitespace,
                                  tokenizer_fingerprint=self.tokenizer_fingerprint,
                                  eos_token_id=self.eos_token_id, from_cache=from_cache,
                                  masks=self.masks)

    @property
    def num_states(self) -> int:
        return self.automaton.num_states

    @property
    def min_tokens(self) -> int:
        """Fewest tokens of any accepted answer as the budget counts them (``token_distances``; EOS
        not counted); ``automaton.UNREACHABLE`` when this tokenizer lacks a single-byte token
        every answer needs."""
        return int(self.masks.distance[self.initial_state])

    def fits(self, tokens: int) -> bool:
        return self.within(self.initial_state, tokens)

    def matcher(self, max_tokens: int | None = None) -> Matcher:
        """A fresh per-sequence cursor; with ``max_tokens`` it steers to finish within that many."""
        return Matcher(self, max_tokens=max_tokens)

    # --- per-state reads (what the matcher and the logits processor use) ----------------------

    def is_final(self, state: int) -> bool:
        return bool(self.automaton.is_final[state])

    def distance(self, state: int) -> int:
        return int(self.masks.distance[state])

    def within(self, state: int, tokens: int) -> bool:
        """Whether acceptance is at most ``tokens`` tokens from ``state`` (``distance(state) <=
        tokens``; the single-byte bound answers first, so that an answer far from its budget
        never needs the token distances)."""
        return bool(self.masks.bound[state] <= tokens) or self.distance(state) <= tokens

    def next_state(self, state: int, token_id: int, count: int = 0) -> tuple[int, int] | None:
        """(the state after ``token_id``, the characters counted in a long string's loop,
        ``ByteAutomaton.advance``), or None where the token is refused."""
        data = self._tokens.bytes_of(token_id)
        if data is None or token_id == self.eos_token_id:
            return None
        following, count = self.automaton.advance(state, count, data)
        return (following, count) if following else None

    def needs_budget_mask(self, state: int, tokens_left: int) -> bool:
        """True when some token of ``state`` leads where no valid ending fits in ``tokens_left``."""
        return self.masks.needs_budget_mask(state, tokens_left)

    def mask(self, state: int, tokens_left: int | None = None) -> np.ndarray:
        """Boolean mask over the vocabulary of tokens allowed in ``state``.

        With ``tokens_left`` (tokens that may still follow *after* this one), only tokens from which
        an accepting state stays reachable in time are allowed.
        """
        if tokens_left is None or not self.needs_budget_mask(state, tokens_left):
            return unpack_bitmask(self.bitmask(state), self.vocab_size)
        return self.masks.budgeted(state, tokens_left)

    def bitmask(self, state: int) -> np.ndarray:
        """``mask(state)`` packed 32 tokens to an int32 word, bit ``i % 32`` of word ``i // 32``
        (computed on the state's first visit, then a read)."""
        return self.masks.entry(state)[0]

    def __repr__(self) -> str:
        return (f"CompiledConstraint(engine={self.engine!r}, states={self.num_states}, "
                f"min_tokens={self.min_tokens}, whitespace={self.whitespace!r}, "
                f"compile_seconds={self.compile_seconds:.3f}, from_cache={self.from_cache!r})")


__all__ = ["CompiledConstraint", "single_byte_distances", "token_distances"]
