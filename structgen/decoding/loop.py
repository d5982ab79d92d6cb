"""The decoding loop: many constrained sequences at once, each leaving the batch when it is done.

Prompts are left-padded and prefilled together; then every step feeds one token per live row.
A row that takes its EOS token or spends its budget is dropped from the batch and from the KV
cache (``DynamicCache.batch_select_indices``), so finished rows stop costing forward passes —
which ``model.generate`` does not do: it keeps decoding padding until the longest row ends.

Sampling is transformers' (greedy, or temperature -> top-k -> top-p -> multinomial), applied
after the constraint mask so it only ever sees allowed tokens. One ``torch.Generator`` seeded
from ``seed`` drives a whole call, so a seeded call is reproducible.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from structgen.decoding.masks import MaskCache


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature is None or self.temperature <= 0


class Unconstrained:
    """A matcher that allows every token: the baseline that benchmarks compare constraints with."""

    constraint = None

    def __init__(self, eos_token_id: int, max_tokens: int):
        self.eos_token_id = eos_token_id
        self.max_tokens = max_tokens
        self.tokens_consumed = 0
        self.finished = False

    @property
    def tokens_left(self) -> int:
        return self.max_tokens - self.tokens_consumed

    def advance(self, token_id: int) -> bool:
        self.tokens_consumed += 1
        self.finished = self.finished or token_id == self.eos_token_id
        return True

    def is_finished(self) -> bool:
        return self.finished or self.tokens_left == 0


@dataclass
class Row:
    """One sequence: its prompt, its matcher (which carries its budget) and what it wrote."""

    prompt_ids: list[int]
    matcher: object
    tokens: list[int] = field(default_factory=list)
    stop_reason: str = ""  # "eos", "max_tokens", or "rejected" (a constraint bug if ever seen)


def decode_rows(model, rows: list[Row], sampling: Sampling,
                on_token: Callable[[int, int], None] | None = None) -> list[Row]:
    """Decode every row to the end; ``on_token(row_index, token_id)`` sees each token as it comes."""
    if not rows:
        return rows
    hf_model = model.hf_model
    device = hf_model.device
    masks = MaskCache()
    generator = None
    if not sampling.greedy and sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)

    width = max(len(row.prompt_ids) for row in rows)
    pad = model.tokenizer.pad_token_id or 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
        attention[i, width - len(row.prompt_ids):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)

    active = list(range(len(rows)))
    with torch.inference_mode():
        logits, cache = _forward(hf_model, input_ids, attention, positions, None)
        next_position = positions[:, -1] + 1
        while active:
            forbidden = torch.stack([masks.forbidden(rows[i].matcher, logits.shape[-1], device)
                                     for i in active])
            logits.masked_fill_(forbidden, float("-inf"))
            chosen = _sample(logits, sampling, generator).tolist()
            keep = []
            for position, (i, token) in enumerate(zip(active, chosen)):
                row = rows[i]
                if not row.matcher.advance(token):
                    row.stop_reason = "rejected"
                    continue
                row.tokens.append(token)
                if on_token is not None:
                    on_token(i, token)
                if token == row.matcher.eos_token_id:
                    row.stop_reason = "eos"
                elif row.matcher.is_finished():
                    row.stop_reason = "max_tokens"
                else:
                    keep.append(position)
            if not keep:
                break
            step = torch.tensor(chosen, device=device)
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention, next_position, step = attention[index], next_position[index], step[index]
                active = [active[p] for p in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            logits, cache = _forward(hf_model, step[:, None], attention, next_position[:, None], cache)
            next_position = next_position + 1
    return rows


def _forward(hf_model, input_ids, attention, positions, cache):
    """Logits of the last position only (``logits_to_keep``: a prefill of 16 x 300 tokens would
    otherwise materialise 16 x 300 x vocab floats) and the updated cache."""
    name = _cache_argument(type(_named_forward(hf_model)))
    inputs = dict(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                  use_cache=True, **{name: cache})
    try:
        output = hf_model(**inputs, logits_to_keep=1)
    except TypeError:  # an architecture whose forward has no logits_to_keep
        output = hf_model(**inputs)
    return output.logits[:, -1, :].float(), output[name]


@functools.cache
def _cache_argument(model_class: type) -> str:
    """The KV cache's name in ``forward``: ``cache`` since transformers 5.2x, which warns on the
    older ``past_key_values`` (argument and output) that earlier releases need."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@functools.cache
def _names_its_cache(model_class: type) -> bool:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" in parameters or "past_key_values" in parameters


def _named_forward(hf_model):
    """The model whose ``forward`` names its cache argument: a wrapper that passes ``**kwargs``
    through (peft's ``PeftModel`` around a LoRA) takes whatever its base model takes."""
    for _ in range(4):
        if _names_its_cache(type(hf_model)):
            break
        get_base_model = getattr(hf_model, "get_base_model", None)
        inner = get_base_model() if callable(get_base_model) else None
        if inner is None or inner is hf_model:
            break
        hf_model = inner
    return hf_model


def _sample(logits: torch.Tensor, sampling: Sampling, generator) -> torch.Tensor:
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k > 0:
        k = min(sampling.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        probabilities = ordered.softmax(dim=-1)
        # drop a token when the tokens before it already hold top_p of the mass (keep the first)
        drop = probabilities.cumsum(dim=-1) - probabilities > sampling.top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    probabilities = logits.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
