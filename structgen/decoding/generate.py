"""generate: prompt -> constrained decoding on a transformers model -> validated value.

The data path: output type -> compiled constraint (cached) -> Hermes JSON-mode prompt through the
chat template -> ``model.generate`` with the constraint's logits processor and a token budget the
constraint knows about -> the completion's exact bytes -> parsed and validated value.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from structgen.backends.transformers import Model, load_model
from structgen.constraint.compiler import CompiledConstraint, compile_constraint
from structgen.errors import (
    BudgetTooSmallError,
    GenerationError,
    OutputError,
    PromptTooLongError,
    TokenizerMismatchError,
)
from structgen.prompts.hermes import as_messages, json_mode_messages, render_chat

DEFAULT_MAX_TOKENS = 512


@dataclass
class Generation:
    """One finished generation: the validated value and how it was produced."""

    value: Any
    text: str
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str  # "eos": the model ended its turn; "max_tokens": the budget ran out
    seconds: float
    compile_seconds: float

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.seconds / max(1, self.completion_tokens)


def resolve_model(model: Model | str | None) -> Model:
    if isinstance(model, Model):
        return model
    if model is None or isinstance(model, str):
        return load_model(model)
    raise GenerationError(f"model must be a structgen Model, a name or a path, not {type(model).__name__}")


def constraint_for(output_type: Any, model: Model, whitespace: str) -> CompiledConstraint:
    """Compile (or fetch from cache) the constraint, checking it belongs to this tokenizer."""
    if isinstance(output_type, CompiledConstraint):
        constraint = output_type
    else:
        constraint = compile_constraint(output_type, model.tokenizer_info, whitespace=whitespace)
    if constraint.tokenizer_fingerprint != model.tokenizer_info.fingerprint:
        raise TokenizerMismatchError(
            "the constraint was compiled for a different tokenizer than this model's; compile it "
            "with compile_constraint(..., model.tokenizer)"
        )
    return constraint


def messages_for(constraint: CompiledConstraint, prompt) -> list[dict]:
    """JSON outputs get the Hermes JSON-mode system prompt; regex outputs the bare conversation."""
    output_type = constraint.output_type
    if output_type is not None and output_type.is_json:
        return json_mode_messages(prompt, output_type.schema)
    return as_messages(prompt)


def chat_ids(model: Model, messages: list[dict]) -> list[int]:
    text = render_chat(model.tokenizer, messages)
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def token_budget(model: Model, constraint: CompiledConstraint, n_prompt: int, max_tokens: int) -> int:
    """max_tokens, cut to what the context window leaves; typed errors when nothing fits."""
    if max_tokens < 1:
        raise BudgetTooSmallError(max_tokens, constraint.min_tokens)
    if n_prompt >= model.context_length:
        raise PromptTooLongError(n_prompt, model.context_length)
    budget = min(max_tokens, model.context_length - n_prompt)
    if budget < constraint.min_tokens:
        raise BudgetTooSmallError(budget, constraint.min_tokens)
    return budget


def sampling_kwargs(temperature: float, top_p: float, top_k: int | None) -> dict:
    if temperature is None or temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}


@contextlib.contextmanager
def seeded(seed: int | None, device):
    """Reproducible sampling without touching the caller's global RNG state."""
    if seed is None:
        yield
        return
    import torch

    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def decode_completion(model: Model, constraint: CompiledConstraint, token_ids: list[int]) -> tuple[str, str]:
    """The completion's exact text (from token bytes, no tokenizer clean-up) and stop reason."""
    info = model.tokenizer_info
    stop_reason = "max_tokens"
    pieces = []
    for token_id in token_ids:
        if token_id == constraint.eos_token_id:
            stop_reason = "eos"
            break
        pieces.append(info.token_bytes.get(token_id, b""))
    return b"".join(pieces).decode("utf-8", errors="replace"), stop_reason


@dataclass
class Decoded:
    """The raw outcome of one constrained decode."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str
    seconds: float


def decode(model: Model, constraint: CompiledConstraint, messages: list[dict], *, max_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, top_k: int | None = None,
           seed: int | None = None) -> Decoded:
    """Render ``messages``, decode one assistant turn under ``constraint``, return its exact text."""
    import torch
    from transformers import LogitsProcessorList

    from structgen.decoding.processor import ConstraintLogitsProcessor

    ids = chat_ids(model, messages)
    budget = token_budget(model, constraint, len(ids), max_tokens)
    processor = ConstraintLogitsProcessor([constraint.matcher(max_tokens=budget)], prompt_length=len(ids))
    input_ids = torch.tensor([ids], device=model.device)
    started = time.perf_counter()
    with torch.inference_mode(), seeded(seed, model.device):
        output = model.hf_model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            logits_processor=LogitsProcessorList([processor]),
            max_new_tokens=budget,
            min_new_tokens=0,
            eos_token_id=constraint.eos_token_id,
            pad_token_id=model.tokenizer.pad_token_id,
            **sampling_kwargs(temperature, top_p, top_k),
        )
    seconds = time.perf_counter() - started
    completion = output[0, len(ids):].tolist()
    text, stop_reason = decode_completion(model, constraint, completion)
    if processor.rejected:
        raise OutputError("the model produced a token the constraint forbids (please report this)", text)
    if stop_reason == "eos":
        completion = completion[: completion.index(constraint.eos_token_id) + 1]
    return Decoded(text=text, prompt_tokens=len(ids), completion_tokens=len(completion),
                   stop_reason=stop_reason, seconds=seconds)


def generate_with_details(output_type: Any, prompt, *, model: Model | str | None = None,
                          max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0,
                          top_p: float = 1.0, top_k: int | None = None, seed: int | None = None,
                          whitespace: str = "compact") -> Generation:
    """Like ``generate``, but returns a ``Generation`` with the raw text, token counts and timings."""
    model = resolve_model(model)
    compile_started = time.perf_counter()
    constraint = constraint_for(output_type, model, whitespace)
    compile_seconds = time.perf_counter() - compile_started
    decoded = decode(model, constraint, messages_for(constraint, prompt), max_tokens=max_tokens,
                     temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    value = constraint.output_type.parse(decoded.text) if constraint.output_type else decoded.text
    return Generation(value=value, text=decoded.text, prompt_tokens=decoded.prompt_tokens,
                      completion_tokens=decoded.completion_tokens, stop_reason=decoded.stop_reason,
                      seconds=decoded.seconds, compile_seconds=compile_seconds)


def generate(output_type: Any, prompt, *, model: Model | str | None = None,
             max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
             top_k: int | None = None, seed: int | None = None, whitespace: str = "compact") -> Any:
    """Generate a value of ``output_type`` from ``prompt``; it always parses and validates.

    ``output_type``: a pydantic model or any type pydantic can describe, a JSON-schema dict (returns
    the parsed JSON), or ``structgen.Regex`` (returns the string). ``prompt``: the user turn, or a
    list of chat messages. ``model``: a loaded ``Model``, a name/path, or None for the embedded
    SmolLM2. Greedy by default; ``temperature``/``top_p``/``top_k`` sample, ``seed`` makes it
    reproducible. The answer always fits in ``max_tokens``.
    """
    return generate_with_details(output_type, prompt, model=model, max_tokens=max_tokens,
                                 temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                 whitespace=whitespace).value
