"""generate: prompt -> constrained decoding on a transformers model -> validated value.

The data path: output type -> compiled constraint (cached) -> Hermes JSON-mode prompt through the
chat template -> ``model.generate`` with the constraint's logits processor and a token budget the
constraint knows about -> the completion's exact bytes -> parsed and validated value. An answer a
validator refuses is decoded again with the error as a user turn, up to ``max_retries`` times
(``structgen.decoding.retry``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from structgen.backends.transformers import Model, as_model
from structgen.constraint.base import Constraint
from structgen.constraint.compiler import compile_constraint
from structgen.decoding.loop import Row, Sampling, decode_rows
from structgen.decoding.retry import Attempt, attempt_seed, check_max_retries, retry_messages
from structgen.errors import (
    BudgetTooSmallError,
    GenerationError,
    OutputError,
    PromptTooLongError,
    RetriesExhaustedError,
    StructgenError,
    TokenizerMismatchError,
)
from structgen.prompts.hermes import as_messages, json_mode_messages, render_chat
from structgen.schema import DEFAULT_WHITESPACE

DEFAULT_MAX_TOKENS = 512


@dataclass
class Generation:
    """One finished generation: the validated value and how it was produced.

    The fields describe the answer that was kept; ``attempts`` lists every decoded answer in
    order (one unless a validator refused some and ``max_retries`` allowed another), the kept
    one last with ``error=None``."""

    value: Any
    text: str
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str  # "eos": the model ended its turn; "max_tokens": the budget ran out
    seconds: float
    compile_seconds: float
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.seconds / max(1, self.completion_tokens)


def resolve_model(model: Any) -> Model:
    """A ``Model``, a name or path (None: the embedded model), or an outlines ``Transformers``
    model; anything else is a ``GenerationError``."""
    return as_model(model)


def constraint_for(output_type: Any, model: Model, whitespace: str) -> Constraint:
    """Compile (or fetch from cache) the constraint, checking it belongs to this tokenizer."""
    if isinstance(output_type, Constraint):
        constraint = output_type
    else:
        constraint = compile_constraint(output_type, model.tokenizer_info, whitespace=whitespace)
    if constraint.tokenizer_fingerprint != model.tokenizer_info.fingerprint:
        raise TokenizerMismatchError(
            "the constraint was compiled for a different tokenizer than this model's; compile it "
            "with compile_constraint(..., model.tokenizer)"
        )
    return constraint


def messages_for(constraint: Constraint, prompt) -> list[dict]:
    """JSON outputs get the Hermes JSON-mode system prompt; regex outputs the bare conversation."""
    output_type = constraint.output_type
    if output_type is not None and output_type.is_json:
        return json_mode_messages(prompt, output_type.schema)
    return as_messages(prompt)


def chat_ids(model: Model, messages: list[dict]) -> list[int]:
    text = render_chat(model.tokenizer, messages)
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def token_budget(model: Model, constraint: Constraint, n_prompt: int, max_tokens: int) -> int:
    """max_tokens, cut to what the context window leaves; typed errors when the constraint's
    shortest valid answer (1 token for free text) does not fit."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise GenerationError(f"max_tokens must be an int, not {type(max_tokens).__name__}")
    if max_tokens < 1:
        raise BudgetTooSmallError(max_tokens, constraint.min_tokens)
    if n_prompt >= model.context_length:
        raise PromptTooLongError(n_prompt, model.context_length)
    budget = min(max_tokens, model.context_length - n_prompt)
    if not constraint.fits(budget):
        raise BudgetTooSmallError(budget, constraint.min_tokens)
    return budget


def completion_text(model: Model, constraint: Constraint, token_ids: list[int]) -> str:
    """The completion's exact text, from token bytes (no tokenizer clean-up), EOS left out."""
    token_bytes = model.tokenizer_info.token_bytes
    pieces = [token_bytes.get(t, b"") for t in token_ids if t != constraint.eos_token_id]
    return b"".join(pieces).decode("utf-8", errors="replace")


@dataclass
class Decoded:
    """The raw outcome of one constrained decode."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str
    seconds: float


def prepare_row(model: Model, constraint: Constraint, messages: list[dict],
                max_tokens: int, attempts: list[Attempt] = ()) -> Row:
    """Tokenise the conversation and give it a matcher with its budget (typed errors if it can't).

    For a retry (``attempts``: the refused ones) the conversation has grown by them: when it
    leaves no room for the shortest answer, ``PromptTooLongError`` says so and carries them."""
    ids = chat_ids(model, messages)
    if attempts and not constraint.fits(model.context_length - len(ids)):
        raise PromptTooLongError(len(ids), model.context_length, list(attempts))
    budget = token_budget(model, constraint, len(ids), max_tokens)
    return Row(prompt_ids=ids, matcher=constraint.matcher(max_tokens=budget))


def finish_row(model: Model, constraint: Constraint, row: Row, seconds: float) -> Decoded:
    text = completion_text(model, constraint, row.tokens)
    if row.stop_reason == "rejected":
        raise OutputError("the model produced a token the constraint forbids (please report this)", text)
    return Decoded(text=text, prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.tokens),
                   stop_reason=row.stop_reason, seconds=seconds)


def decode(model: Model, constraint: Constraint, messages: list[dict], *, max_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, top_k: int | None = None,
           seed: int | None = None, attempts: list[Attempt] = ()) -> Decoded:
    """Render ``messages``, decode one assistant turn under ``constraint``, return its exact text."""
    row = prepare_row(model, constraint, messages, max_tokens, attempts)
    started = time.perf_counter()
    decode_rows(model, [row], Sampling(temperature, top_p, top_k, seed))
    return finish_row(model, constraint, row, time.perf_counter() - started)


def attempt_of(decoded: Decoded, error: StructgenError | None) -> Attempt:
    return Attempt(text=decoded.text, error=error, prompt_tokens=decoded.prompt_tokens,
                   completion_tokens=decoded.completion_tokens, stop_reason=decoded.stop_reason,
                   seconds=decoded.seconds)


def generation_of(constraint: Constraint, decoded: Decoded, compile_seconds: float,
                  context: Any = None, attempts: list[Attempt] = ()) -> Generation:
    """Parse and validate the decoded text into the requested value (``OutputError`` if it can't);
    ``attempts`` are the refused answers before this one."""
    value = (constraint.output_type.parse(decoded.text, context=context) if constraint.output_type
             else decoded.text)
    return Generation(value=value, text=decoded.text, prompt_tokens=decoded.prompt_tokens,
                      completion_tokens=decoded.completion_tokens, stop_reason=decoded.stop_reason,
                      seconds=decoded.seconds, compile_seconds=compile_seconds,
                      attempts=[*attempts, attempt_of(decoded, None)])


def retries_for(constraint: Constraint) -> bool:
    """JSON answers are retried; a Regex answer can only fail its check through a constraint
    bug, which a retry would hide."""
    return constraint.output_type is not None and constraint.output_type.is_json


def refusal(attempts: list[Attempt], error: StructgenError) -> StructgenError:
    """The error of a call whose last attempt was refused: the refusal itself when no retry was
    allowed (as before ``max_retries``), else ``RetriesExhaustedError`` with every attempt."""
    if len(attempts) == 1:
        return error
    exhausted = RetriesExhaustedError(attempts)
    exhausted.__cause__ = error
    return exhausted


def decode_with_retries(model: Model, constraint: Constraint, prompts: list, *, batch_size: int,
                        max_tokens: int, sampling: Sampling, max_retries: int, context: Any,
                        compile_seconds: float) -> list:
    """One result per prompt, in order: its ``Generation``, or its typed error in place.

    Rows are decoded ``batch_size`` at a time; the rows a validator refused then go round again,
    batched together, each with its own conversation grown by its refused answer and the error.
    Round ``k`` samples with ``attempt_seed(seed + start, k)`` (``start``: the chunk's offset)."""
    results: list = [None] * len(prompts)
    attempts: list[list[Attempt]] = [[] for _ in prompts]
    retry = retries_for(constraint)
    pending: list[tuple[int, Any]] = list(enumerate(prompts))
    round_ = 0
    while pending:
        ready: list[tuple[int, list[dict], Row]] = []
        for index, conversation in pending:
            try:
                messages = messages_for(constraint, conversation) if round_ == 0 else conversation
                ready.append((index, messages, prepare_row(model, constraint, messages, max_tokens,
                                                           attempts[index])))
            except StructgenError as error:
                results[index] = error
        # Similar lengths share a batch, so left padding wastes little; results keep input order.
        ready.sort(key=lambda item: len(item[2].prompt_ids), reverse=True)
        pending = []
        for start in range(0, len(ready), batch_size):
            chunk = ready[start:start + batch_size]
            seed = None if sampling.seed is None else attempt_seed(sampling.seed + start, round_)
            started = time.perf_counter()
            decode_rows(model, [row for _, _, row in chunk], replace(sampling, seed=seed))
            seconds = time.perf_counter() - started
            for index, messages, row in chunk:
                try:
                    decoded = finish_row(model, constraint, row, seconds)
                except StructgenError as error:  # a forbidden token: a bug, never retried
                    results[index] = error
                    continue
                try:
                    results[index] = generation_of(constraint, decoded, compile_seconds, context,
                                                   attempts[index])
                except OutputError as error:
                    attempts[index].append(attempt_of(decoded, error))
                    if not retry or len(attempts[index]) > max_retries:
                        results[index] = refusal(attempts[index], error)
                    else:
                        pending.append((index, retry_messages(messages, decoded.text, [error])))
        round_ += 1
    return results


def generate_with_details(output_type: Any, prompt, *, model: Model | str | None = None,
                          max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0,
                          top_p: float = 1.0, top_k: int | None = None, seed: int | None = None,
                          whitespace: str = DEFAULT_WHITESPACE, max_retries: int = 0,
                          validation_context: Any = None) -> Generation:
    """Like ``generate``, but returns a ``Generation`` with the raw text, token counts, timings
    and every attempt."""
    check_max_retries(max_retries)
    model = resolve_model(model)
    compile_started = time.perf_counter()
    constraint = constraint_for(output_type, model, whitespace)
    compile_seconds = time.perf_counter() - compile_started
    (result,) = decode_with_retries(
        model, constraint, [prompt], batch_size=1, max_tokens=max_tokens,
        sampling=Sampling(temperature, top_p, top_k, seed), max_retries=max_retries,
        context=validation_context, compile_seconds=compile_seconds)
    if isinstance(result, StructgenError):
        raise result
    return result


def generate(output_type: Any, prompt, *, model: Model | str | None = None,
             max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
             top_k: int | None = None, seed: int | None = None, whitespace: str = DEFAULT_WHITESPACE,
             max_retries: int = 0, validation_context: Any = None) -> Any:
    """Generate a value of ``output_type`` from ``prompt``; it always parses and validates.

    ``output_type``: a pydantic model or any type pydantic can describe, a JSON-schema dict (returns
    the parsed JSON), ``structgen.Regex`` (returns the string), or an outlines output type
    (``JsonSchema``, ``Regex``, ``Choice``). ``prompt``: the user turn, or a list of chat messages.
    ``model``: a loaded ``Model`` (``load_model``, ``from_transformers``), a name/path, an outlines
    ``Transformers`` model, or None for the embedded SmolLM2. Greedy by default;
    ``temperature``/``top_p``/``top_k`` sample, ``seed`` makes it reproducible. The answer always
    fits in ``max_tokens``.

    The constraint enforces the JSON schema; a validator stricter than it (``field_validator``,
    ``model_validator``, ``AfterValidator``) that refuses the answer raises ``OutputError``, or,
    with ``max_retries=N``, sends the error back to the model and decodes again, up to N times
    (then ``RetriesExhaustedError``). ``validation_context`` is pydantic's ``context``.
    """
    return generate_with_details(output_type, prompt, model=model, max_tokens=max_tokens,
                                 temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                 whitespace=whitespace, max_retries=max_retries,
                                 validation_context=validation_context).value


def generate_batch_with_details(output_type: Any, prompts: list, *, model: Model | str | None = None,
                                batch_size: int = 8, max_tokens: int = DEFAULT_MAX_TOKENS,
                                temperature: float = 0.0, top_p: float = 1.0,
                                top_k: int | None = None, seed: int | None = None,
                                whitespace: str = DEFAULT_WHITESPACE, max_retries: int = 0,
                                validation_context: Any = None) -> list:
    """Like ``generate_batch``, but each result is a ``Generation`` (or the row's error)."""
    if batch_size < 1:
        raise GenerationError(f"batch_size must be at least 1, not {batch_size}")
    check_max_retries(max_retries)
    model = resolve_model(model)
    compile_started = time.perf_counter()
    constraint = constraint_for(output_type, model, whitespace)
    compile_seconds = time.perf_counter() - compile_started
    return decode_with_retries(model, constraint, list(prompts), batch_size=batch_size,
                               max_tokens=max_tokens, sampling=Sampling(temperature, top_p, top_k, seed),
                               max_retries=max_retries, context=validation_context,
                               compile_seconds=compile_seconds)


def generate_batch(output_type: Any, prompts: list, *, model: Model | str | None = None,
                   batch_size: int = 8, max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0,
                   top_p: float = 1.0, top_k: int | None = None, seed: int | None = None,
                   whitespace: str = DEFAULT_WHITESPACE, max_retries: int = 0,
                   validation_context: Any = None) -> list:
    """Generate one value of ``output_type`` per prompt, decoding ``batch_size`` rows at a time.

    Results come back in input order. A row that fails (empty prompt, prompt too long, ...) gets
    its typed ``StructgenError`` in place of the value instead of failing the batch; every other
    row is guaranteed valid exactly as with ``generate``. A schema that cannot be compiled raises,
    since no row could succeed. In the details variant, a ``Generation``'s ``seconds`` is the wall
    time of the batch it was decoded in. With ``max_retries``, only the rows a validator refused
    are decoded again (batched together); a row out of retries gets its ``RetriesExhaustedError``.
    """
    return [result if isinstance(result, StructgenError) else result.value
            for result in generate_batch_with_details(
                output_type, prompts, model=model, batch_size=batch_size, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, whitespace=whitespace,
                max_retries=max_retries, validation_context=validation_context)]
