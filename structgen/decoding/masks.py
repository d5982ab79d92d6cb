"""Per-state masks as device tensors, shared by the decoding loop and the transformers processor.

A state's forbidden-token mask is moved to the logits' device on its first visit and reused, so a
step costs a dictionary lookup per row plus one ``masked_fill_`` for the batch: no Python loop over
the vocabulary and no host-to-device copy of a full mask, except near the end of a budget, where
the mask depends on the tokens left and is built for that step.
"""

from __future__ import annotations

import numpy as np
import torch


class MaskCache:
    """``forbidden(matcher, width, device)``: boolean tensor of the tokens a matcher may not take.

    ``max_entries`` bounds it for a cache that outlives calls (a server's batch, which would
    otherwise keep one mask per state ever visited): when full it starts again empty."""

    def __init__(self, max_entries: int | None = None):
        self._cache: dict[tuple, torch.Tensor] = {}
        self.max_entries = max_entries

    def forbidden(self, matcher, width: int, device) -> torch.Tensor:
        constraint = matcher.constraint
        if constraint is None:  # unconstrained decoding (benchmark baselines)
            return self._nothing(width, device)
        if matcher.is_finished():
            # A finished row may still be sampled for (transformers writes padding after it):
            # leave it one finite logit, since all -inf would turn sampling into NaNs.
            return self._eos_only(constraint.eos_token_id, width, device)
        key = matcher.mask_key()
        if key is None:  # a mask of this step only (llguidance, the last tokens of a budget)
            return _to_device(~matcher.mask(), width, device)
        key = (key, width, device)
        cached = self._cache.get(key)
        if cached is None:
            cached = _to_device(~matcher.mask(), width, device)
            if self.max_entries is not None and len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def _nothing(self, width: int, device) -> torch.Tensor:
        key = ("nothing", width, device)
        if key not in self._cache:
            self._cache[key] = torch.zeros(width, dtype=torch.bool, device=device)
        return self._cache[key]

    def _eos_only(self, eos_token_id: int, width: int, device) -> torch.Tensor:
        key = ("eos", eos_token_id, width, device)
        if key not in self._cache:
            forbidden = torch.ones(width, dtype=torch.bool, device=device)
            forbidden[eos_token_id] = False
            self._cache[key] = forbidden
        return self._cache[key]


def _to_device(forbidden: np.ndarray, width: int, device) -> torch.Tensor:
    """The model's logits may be wider than the tokenizer (padded lm_head): forbid the rest."""
    tensor = torch.from_numpy(forbidden)
    if width > len(forbidden):
        tensor = torch.cat([tensor, torch.ones(width - len(forbidden), dtype=torch.bool)])
    elif width < len(forbidden):
        tensor = tensor[:width]
    return tensor.to(device)
