"""A transformers ``LogitsProcessor`` for users who call ``model.generate`` themselves.

structgen's own decoding runs in ``decoding.loop`` (it drops finished rows from the batch); this
processor applies the same masks inside ``generate``: each step it advances every row's matcher by
the token just sampled, then masks the whole batch in one ``masked_fill_``. transformers runs
custom processors before its temperature / top-p / top-k warpers, so sampling only sees allowed
tokens.

    processor = ConstraintLogitsProcessor([constraint.matcher()], prompt_length=input_ids.shape[1])
    model.generate(input_ids, logits_processor=LogitsProcessorList([processor]), ...)
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from structgen.decoding.masks import MaskCache


class ConstraintLogitsProcessor(LogitsProcessor):
    """Masks each row's logits to what its matcher allows; records rows that went wrong."""

    def __init__(self, matchers: list, prompt_length: int):
        self.matchers = matchers
        self.prompt_length = prompt_length
        self.rejected: dict[int, int] = {}  # row -> token its matcher refused (a bug if ever set)
        self._masks = MaskCache()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_length:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                matcher = self.matchers[row]
                if matcher.is_finished() or row in self.rejected:
                    continue
                if not matcher.advance(token):
                    self.rejected[row] = token
                    matcher.finished = True  # the row ends; its text is reported as broken
        width, device = scores.shape[-1], scores.device
        forbidden = torch.stack([self._masks.forbidden(m, width, device) for m in self.matchers])
        scores.masked_fill_(forbidden, float("-inf"))
        return scores
