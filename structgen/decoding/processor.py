"""The transformers logits processor that applies constraint masks.

One matcher per batch row. Each step it advances every row by the token just sampled, then sets
the logits of forbidden tokens to -inf for the whole batch in one ``masked_fill_`` over a stacked
(batch, vocab) boolean mask. Per-state masks are moved to the logits' device once and reused, so a
step costs a dictionary lookup per row and one tensor operation — no Python loop over the
vocabulary and no host-to-device copy of a full mask except on a state's first visit or in the
last few tokens of a budget.

transformers runs custom processors before its temperature / top-p / top-k warpers, so sampling
only ever sees allowed tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor


class ConstraintLogitsProcessor(LogitsProcessor):
    """Masks each row's logits to what its matcher allows; records rows that went wrong."""

    def __init__(self, matchers: list, prompt_length: int):
        self.matchers = matchers
        self.prompt_length = prompt_length
        self.rejected: dict[int, int] = {}  # row -> token the matcher refused (a bug if ever set)
        self._cache: dict[tuple, torch.Tensor] = {}  # (constraint, state, width, device) -> mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_length:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                matcher = self.matchers[row]
                if matcher.is_finished() or row in self.rejected:
                    continue
                if not matcher.advance(token):
                    self.rejected[row] = token
        if len(self.matchers) == 1:
            scores[0].masked_fill_(self._forbidden(0, scores), float("-inf"))
        else:
            forbidden = torch.stack([self._forbidden(row, scores) for row in range(len(self.matchers))])
            scores.masked_fill_(forbidden, float("-inf"))
        return scores

    def _forbidden(self, row: int, scores: torch.Tensor) -> torch.Tensor:
        """Boolean tensor over the logits of the tokens this row may not take next."""
        matcher = self.matchers[row]
        width = scores.shape[-1]
        constraint = matcher.constraint
        if matcher.is_finished() or row in self.rejected:
            # The row is done; transformers still samples for it (then writes padding), so leave
            # it one finite logit instead of all -inf, which would turn sampling into NaNs.
            return self._eos_only(constraint.eos_token_id, width, scores.device)
        tokens_left = matcher.tokens_left
        if tokens_left is not None and constraint.needs_budget_mask(matcher.state, tokens_left - 1):
            return self._to_device(~constraint.mask(matcher.state, tokens_left - 1), width, scores.device)
        key = (id(constraint), matcher.state, width, scores.device)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._to_device(~constraint.mask(matcher.state), width, scores.device)
            self._cache[key] = cached
        return cached

    def _eos_only(self, eos_token_id: int, width: int, device) -> torch.Tensor:
        key = ("eos", eos_token_id, width, device)
        if key not in self._cache:
            forbidden = torch.ones(width, dtype=torch.bool, device=device)
            forbidden[eos_token_id] = False
            self._cache[key] = forbidden
        return self._cache[key]

    @staticmethod
    def _to_device(forbidden: np.ndarray, width: int, device) -> torch.Tensor:
        """The model's logits may be wider than the tokenizer (padded lm_head): forbid the rest."""
        tensor = torch.from_numpy(forbidden)
        if width > len(forbidden):
            tensor = torch.cat([tensor, torch.ones(width - len(forbidden), dtype=torch.bool)])
        elif width < len(forbidden):
            tensor = tensor[:width]
        return tensor.to(device)
