"""Matcher: the per-sequence cursor over a CompiledConstraint.

Holds one state number and, when given a token budget, the tokens left. Cheap to create (one per
sequence, per request); all tables live in the shared constraint.

The budget rule: a token may be taken only if, after it, an accepting state is reachable within
the tokens still left. By induction the answer always completes inside ``max_tokens`` — the
shortest completion is always among the allowed tokens — so it parses and validates even when a
model would otherwise loop on a list until the budget runs out.
"""

from __future__ import annotations

import numpy as np

from structgen.constraint.token_masks import pack_bitmask
from structgen.errors import BudgetTooSmallError


def write_bitmask(buffer, row: int, packed: np.ndarray) -> None:
    """Copy ``packed`` into ``buffer`` (numpy or torch, 1-D or 2-D with ``row``), zeros after it."""
    target = buffer[row] if getattr(buffer, "ndim", 1) == 2 else buffer
    if hasattr(target, "numpy") and target.device.type != "cpu":  # a tensor on an accelerator
        import torch

        if not packed.flags.writeable:  # a row read from the disk cache: torch wants it writable
            packed = packed.copy()
        target[: len(packed)].copy_(torch.from_numpy(packed))
    elif hasattr(target, "numpy"):  # a CPU tensor: write through its numpy view
        target.numpy()[: len(packed)] = packed
    else:
        target[: len(packed)] = packed
    target[len(packed):] = 0


def unpack_bitmask(packed: np.ndarray, vocab_size: int) -> np.ndarray:
    """The boolean mask over ``vocab_size`` tokens that an int32 bitmask holds (a new array)."""
    return np.unpackbits(packed.view(np.uint8), bitorder="little")[:vocab_size].view(bool)


class Cursor:
    """What every engine's matcher shares: a budget counted in tokens, and the mask as ids."""

    constraint = None
    max_tokens: int | None = None
    tokens_consumed = 0

    @property
    def eos_token_id(self) -> int:
        return self.constraint.eos_token_id

    @property
    def tokens_left(self) -> int | None:
        """Tokens that may still be taken, or None without a budget."""
        return None if self.max_tokens is None else self.max_tokens - self.tokens_consumed

    def mask(self) -> np.ndarray:
        raise NotImplementedError

    def allowed_token_ids(self) -> list[int]:
        return np.flatnonzero(self.mask()).tolist()

    def mask_key(self):
        """A key under which this step's mask may be cached by the decoding loop (it depends on
        nothing but the key), or None when it must be read afresh (llguidance, whose state has no
        number, or the last tokens of a budget, where the mask depends on the tokens left)."""
        return None


class Matcher(Cursor):
    """Per-sequence state: ``allowed_token_ids``, ``fill_bitmask``, ``advance``, ``is_accepting``."""

    def __init__(self, constraint, max_tokens: int | None = None):
        if max_tokens is not None and not constraint.fits(max_tokens):
            raise BudgetTooSmallError(max_tokens, constraint.min_tokens)
        self.constraint = constraint
        self.state = constraint.initial_state
        self.count = 0  # characters counted in a long string's loop (``ByteAutomaton.advance``)
        self.max_tokens = max_tokens
        self.tokens_consumed = 0
        self.finished = False  # the EOS token was taken

    def mask(self) -> np.ndarray:
        """Boolean mask over the vocabulary (``constraint.vocab_size`` entries)."""
        if self.finished or self.tokens_left == 0:
            return np.zeros(self.constraint.vocab_size, dtype=bool)
        after = None if self.max_tokens is None else self.tokens_left - 1
        return self.constraint.mask(self.state, after)

    def fill_bitmask(self, buffer, row: int = 0) -> None:
        """Write the allowed-token bitmask into ``buffer`` (int32, ``ceil(vocab/32)`` words).

        The layout is xgrammar's and llguidance's: bit ``i % 32`` of word ``i // 32`` is token
        ``i``. ``buffer`` may be a numpy array or a torch tensor, 1-D or 2-D (``row`` picks the row).
        Without a budget in force this is a copy of a cached array.
        """
        write_bitmask(buffer, row, self.packed_bitmask())

    def packed_bitmask(self) -> np.ndarray:
        """The bitmask ``fill_bitmask`` writes: the state's cached array itself unless the budget
        changes it (the last tokens of a budget, or a finished matcher)."""
        if self.mask_key() is None:
            return pack_bitmask(self.mask())
        return self.constraint.bitmask(self.state)

    def mask_key(self):
        if self.finished or self.tokens_left == 0:
            return None
        budgeted = self.max_tokens is not None
        if budgeted and self.constraint.needs_budget_mask(self.state, self.tokens_left - 1):
            return None
        return (self.constraint.masks, self.state)

    def advance(self, token_id: int) -> bool:
        """Take ``token_id``; returns False and changes nothing if it is not allowed."""
        if self.finished or self.tokens_left == 0:
            return False
        token_id = int(token_id)
        if token_id == self.constraint.eos_token_id:
            if not self.constraint.is_final(self.state):
                return False
            self.finished = True
            self.tokens_consumed += 1
            return True
        advanced = self.constraint.next_state(self.state, token_id, self.count)
        if advanced is None:
            return False
        following, count = advanced
        if self.max_tokens is not None:
            if not self.constraint.within(following, self.tokens_left - 1):
                return False
        self.state, self.count = following, count
        self.tokens_consumed += 1
        return True

    def is_accepting(self) -> bool:
        """True when the text so far is a complete, valid answer."""
        return self.constraint.is_final(self.state)

    def is_finished(self) -> bool:
        """True when no further token can be taken (EOS taken, or the budget spent)."""
        return self.finished or self.tokens_left == 0

    def min_tokens_to_accept(self) -> int:
        """Fewest tokens that turn the text so far into a complete answer (0 when accepting)."""
        return self.constraint.distance(self.state)

    def __repr__(self) -> str:
        return (f"Matcher(state={self.state}, accepting={self.is_accepting()}, "
                f"tokens_consumed={self.tokens_consumed}, tokens_left={self.tokens_left})")
