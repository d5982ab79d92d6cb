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
        self._device_masks: dict[tuple, torch.Tensor] = {}
        self._eos_only: dict[tuple, torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_length:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                matcher = self.matchers[row]
                if matcher.is_finished() or row in self.rejected:
                    continue
                if not matcher.advance(token):
                    self.rejected[row] = token
        allowed = torch.stack([self._row_mask(row, scores) for row in range(len(self.matchers))])
        scores.masked_fill_(~allowed, float("-inf"))
        return scores

    def _row_mask(self, row: int, scores: torch.Tensor) -> torch.Tensor:
        matcher = self.matchers[row]
        width = scores.shape[-1]
        if matcher.is_finished() or row in self.rejected:
            # The row is done; transformers still samples for it (then writes padding), so leave
            # it one finite logit instead of all -inf, which would turn sampling into NaNs.
            return self._eos_mask(matcher.constraint.eos_token_id, width, scores.device)
        tokens_left = matcher.tokens_left
        constraint = matcher.constraint
        if tokens_left is not None:
            mask = constraint.mask(matcher.state, tokens_left - 1)
            if mask is not constraint.mask(matcher.state):  # budget-restricted: not cached
                return self._to_device(mask, width, scores.device)
        key = (id(constraint), matcher.state, scores.device)
        cached = self._device_masks.get(key)
        if cached is None:
            cached = self._to_device(constraint.mask(matcher.state), width, scores.device)
            self._device_masks[key] = cached
        return cached

    def _eos_mask(self, eos_token_id: int, width: int, device) -> torch.Tensor:
        key = (eos_token_id, width, device)
        if key not in self._eos_only:
            mask = torch.zeros(width, dtype=torch.bool, device=device)
            mask[eos_token_id] = True
            self._eos_only[key] = mask
        return self._eos_only[key]

    @staticmethod
    def _to_device(mask: np.ndarray, width: int, device) -> torch.Tensor:
        """The model's logits may be wider than the tokenizer (padded lm_head): pad with False."""
        tensor = torch.from_numpy(mask)
        if width > len(mask):
            tensor = torch.cat([tensor, torch.zeros(width - len(mask), dtype=torch.bool)])
        elif width < len(mask):
            tensor = tensor[:width]
        return tensor.to(device)
