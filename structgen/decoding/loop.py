"""The decoding loop: many constrained sequences at once, each leaving the batch when it is done.

Prompts are left-padded and prefilled together; then every step feeds one token per live row.
A row that takes its EOS token or spends its budget is dropped from the batch and from the KV
cache (``DynamicCache.batch_select_indices``), so finished rows stop costing forward passes —
which ``model.generate`` does not do: it keeps decoding padding until the longest row ends.

Sampling is transformers' (greedy, or temperature -> top-k -> top-p -> multinomial), applied
after the constraint mask so it only ever sees allowed tokens. One ``torch.Generator`` seeded
from ``seed`` drives a whole call, so a seeded call is reproducible.

``Batch`` is the step both share with the server (``structgen.serve.scheduler``), where rows
join and leave a running batch between steps and each samples with its own settings.
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
    # "eos", "max_tokens", "cancelled" (a server's client left), or "rejected" (a constraint bug)
    stop_reason: str = ""


def decode_rows(model, rows: list[Row], sampling: Sampling,
                on_token: Callable[[int, int], None] | None = None) -> list[Row]:
    """Decode every row to the end; ``on_token(row_index, token_id)`` sees each token as it comes."""
    if not rows:
        return rows
    generator = None
    if not sampling.greedy and sampling.seed is not None:
        generator = torch.Generator(device=model.hf_model.device).manual_seed(sampling.seed)
    index = {id(row): i for i, row in enumerate(rows)}
    report = None if on_token is None else (lambda row, token: on_token(index[id(row)], token))
    batch = Batch(model)
    with torch.inference_mode():
        batch.admit(rows)
        while batch.rows:
            batch.step(lambda logits, _: sample(logits, sampling, generator).tolist(), report)
    return rows


class Batch:
    """Rows decoding together: one KV cache, one attention mask, each row at its own position.

    Between steps rows may join (``admit``: the newcomers are prefilled on their own and their
    cache is merged in, both sides left-padded to a common width) and leave (``drop``, or by
    finishing in ``step``), which is what a server's continuous batching needs. A cache whose
    layers are not plain ``DynamicLayer``s (sliding windows, old transformers) cannot be padded
    that way: then the joined rows are prefilled again, prompt and tokens so far, in one pass.
    ``mask_entries`` bounds its mask cache (a batch that lives as long as a server). Call inside
    ``torch.inference_mode()``.
    """

    def __init__(self, model, *, merge: bool = True, mask_entries: int | None = None):
        self.hf_model = model.hf_model
        self.device = model.hf_model.device
        self.pad = model.tokenizer.pad_token_id or 0
        self.merge = merge
        self.masks = MaskCache(max_entries=mask_entries)
        self.rows: list[Row] = []
        self.cache = self.attention = self.next_position = self.logits = None

    def admit(self, rows: list[Row]) -> None:
        """Add ``rows`` (prompt only, or prompt and tokens so far); their next logits are computed."""
        if not rows:
            return
        if self.rows and not (self.merge and _paddable(self.cache)):
            rows, self.rows = self.rows + list(rows), []  # rebuild: one prefill of everyone
        logits, cache, attention, next_position = self._prefill(rows)
        if not self.rows:
            self.logits, self.cache = logits, cache
            self.attention, self.next_position = attention, next_position
        else:  # the running cache is paddable, so the newcomers' (same model) is too
            width = max(self.attention.shape[1], attention.shape[1])
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
                mine.values = torch.cat([_left_pad(mine.values, width, -2),
                                         _left_pad(theirs.values, width, -2)])
            self.attention = torch.cat([_left_pad(self.attention, width, -1),
                                        _left_pad(attention, width, -1)])
            self.next_position = torch.cat([self.next_position, next_position])
            self.logits = torch.cat([self.logits, logits])
        self.rows += rows

    def step(self, choose: Callable, on_token: Callable[[Row, int], None] | None = None) -> list[Row]:
        """One token for every row: mask, ``choose(logits, rows)`` -> token ids, advance, feed.

        Returns the rows that finished with this token (their ``stop_reason`` set); they have left."""
        width = self.logits.shape[-1]
        forbidden = torch.stack([self.masks.forbidden(row.matcher, width, self.device) for row in self.rows])
        self.logits.masked_fill_(forbidden, float("-inf"))
        chosen = choose(self.logits, self.rows)
        keep, finished = [], []
        for position, (row, token) in enumerate(zip(self.rows, chosen)):
            if not row.matcher.advance(token):
                row.stop_reason = "rejected"
                finished.append(row)
                continue
            row.tokens.append(token)
            if on_token is not None:
                on_token(row, token)
            if token == row.matcher.eos_token_id:
                row.stop_reason = "eos"
            elif row.matcher.is_finished():
                row.stop_reason = "max_tokens"
            else:
                keep.append(position)
                continue
            finished.append(row)
        self._keep(keep)
        if self.rows:
            step = torch.tensor([chosen[p] for p in keep], device=self.device)
            self.attention = torch.cat([self.attention, self.attention.new_ones((len(self.rows), 1))], dim=1)
            self.logits, self.cache = _forward(self.hf_model, step[:, None], self.attention,
                                               self.next_position[:, None], self.cache)
            self.next_position = self.next_position + 1
        return finished

    def drop(self, rows: list[Row]) -> None:
        """Take ``rows`` out between steps (a cancelled request); the others decode on."""
        leaving = {id(row) for row in rows}
        self._keep([p for p, row in enumerate(self.rows) if id(row) not in leaving])

    def _keep(self, positions: list[int]) -> None:
        if len(positions) == len(self.rows):
            return
        if not positions:
            self.rows = []
            self.cache = self.attention = self.next_position = self.logits = None
            return
        index = torch.tensor(positions, device=self.device)
        self.cache.batch_select_indices(index)
        self.attention, self.next_position = self.attention[index], self.next_position[index]
        self.logits = self.logits[index]
        self.rows = [self.rows[p] for p in positions]
        self._trim()

    def _trim(self) -> None:
        """Drop the leading columns that are padding for every row left, so a batch that rows keep
        joining does not grow wider than its longest live row."""
        used = self.attention.any(dim=0)
        if bool(used[0]) or not _paddable(self.cache):
            return
        first = int(used.nonzero()[0])
        self.attention = self.attention[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _prefill(self, rows: list[Row]):
        sequences = [row.prompt_ids + row.tokens for row in rows]
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(sequences):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits, cache = _forward(self.hf_model, input_ids, attention, positions, None)
        return logits, cache, attention, positions[:, -1] + 1


def _paddable(cache) -> bool:
    """Whether every layer of ``cache`` is a plain ``DynamicLayer`` (keys/values we may pad)."""
    layer_class = _dynamic_layer()
    layers = getattr(cache, "layers", None)
    return (layer_class is not None and bool(layers)
            and all(type(layer) is layer_class and layer.keys is not None and layer.keys.dim() == 4
                    for layer in layers))


@functools.cache
def _dynamic_layer():
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers before 4.54 has no cache layers: Batch then prefills again
        return None
    return DynamicLayer


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros prepended along ``dim`` (-2: a layer's keys/values, -1: the attention mask)."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


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


def sample(logits: torch.Tensor, sampling: Sampling, generator) -> torch.Tensor:
    """One token id per row of ``logits`` (already masked) under ``sampling``."""
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
