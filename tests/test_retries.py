"""max_retries: a validator JSON Schema cannot express refuses an answer, the error goes back to
the model as a user turn, and the constrained decode runs again (tiny random model)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import pydantic
import pytest
from pydantic import BaseModel, ValidationInfo, field_validator, model_validator

import structgen
from structgen.batch.job import BatchJob, PendingRow, process_batch
from structgen.decoding import generate as generate_module
from structgen.decoding.retry import RETRY_PROMPT, TOOL_RETRY_PROMPT, attempt_seed


def _refuse_first(value, info: ValidationInfo):
    """Refuses the first value it sees in a call (its state lives in the validation context)."""
    seen = info.context["seen"]
    seen.append(value)
    if len(seen) == 1:
        raise ValueError(f"{value!r} is the first answer, write another one")
    return value


class Words(BaseModel):
    words: list[str]

    _first = field_validator("words")(_refuse_first)


class Bounded(BaseModel):
    low: int
    high: int

    @model_validator(mode="after")
    def ordered(self, info: ValidationInfo):
        info.context["seen"].append((self.low, self.high))
        if len(info.context["seen"]) == 1:
            raise ValueError("low must not exceed high")
        return self


Refusing = Annotated[int, pydantic.AfterValidator(_refuse_first)]


def _never(value):
    raise ValueError("never good enough")


Never = Annotated[int, pydantic.AfterValidator(_never)]


def test_a_field_validator_that_refuses_the_first_answer_is_satisfied_by_a_retry(tiny_model):
    accepted_at_once = {"seen": ["an earlier answer"]}  # so the validator accepts the first it sees
    plain = structgen.generate_with_details(Words, "Words?", model=tiny_model, max_tokens=20,
                                            validation_context=accepted_at_once)
    context = {"seen": []}
    result = structgen.generate_with_details(Words, "Words?", model=tiny_model, max_tokens=20,
                                             max_retries=2, validation_context=context)
    assert isinstance(result.value, Words) and len(context["seen"]) == 2
    first, last = result.attempts
    assert isinstance(first.error, structgen.OutputError) and "the first answer" in str(first.error)
    assert last.error is None and last.text == result.text
    assert last.prompt_tokens > first.prompt_tokens  # the refused answer and its error went in
    assert result.completion_tokens == last.completion_tokens
    assert first.text == plain.text  # the first attempt is the answer a call without retries gets


def test_without_retries_a_refusal_is_the_output_error_it_always_was(tiny_model):
    with pytest.raises(structgen.OutputError, match="the first answer") as caught:
        structgen.generate(Refusing, "Number?", model=tiny_model, max_tokens=10,
                           validation_context={"seen": []})
    assert type(caught.value) is structgen.OutputError
    assert caught.value.problems and caught.value.problems[0].startswith("Value error, ")


def test_the_retry_turn_shows_the_refused_answer_and_the_error(tiny_model, monkeypatch):
    conversations = []
    prepare = generate_module.prepare_row

    def recording(model, constraint, messages, *args):
        conversations.append(messages)
        return prepare(model, constraint, messages, *args)

    monkeypatch.setattr(generate_module, "prepare_row", recording)
    result = structgen.generate_with_details(Bounded, "Range?", model=tiny_model, max_tokens=30,
                                             max_retries=1, validation_context={"seen": []})
    first, retry = conversations
    assert retry[:len(first)] == first
    assert retry[len(first)] == {"role": "assistant", "content": result.attempts[0].text}
    problems = "- Value error, low must not exceed high"  # a model_validator: no field to name
    assert retry[len(first) + 1] == {"role": "user", "content": RETRY_PROMPT.format(problems=problems)}
    assert "errors.pydantic.dev" not in retry[-1]["content"]


def test_exhausted_retries_raise_with_every_attempt(tiny_model):
    with pytest.raises(structgen.RetriesExhaustedError) as caught:
        structgen.generate(Never, "Number?", model=tiny_model, max_tokens=10, max_retries=2)
    error = caught.value
    assert isinstance(error, structgen.OutputError) and len(error.attempts) == 3
    assert all("never good enough" in str(a.error) and a.text for a in error.attempts)
    assert error.text == error.attempts[-1].text and error.__cause__ is error.attempts[-1].error
    assert error.errors == [a.error for a in error.attempts]
    assert "3 attempts, none validates (max_retries=2)" in str(error)


def test_the_validation_context_reaches_the_validator(tiny_model):
    def check(value, info: ValidationInfo):
        info.context["validated"].append(value)
        return value

    context = {"validated": []}
    value = structgen.generate(Annotated[int, pydantic.AfterValidator(check)], "Number?",
                               model=tiny_model, max_tokens=10, validation_context=context)
    assert context["validated"] == [value]


def test_seeded_retries_are_reproducible_and_each_attempt_samples_anew(tiny_model):
    def attempts():
        with pytest.raises(structgen.RetriesExhaustedError) as caught:
            structgen.generate(Never, "Number?", model=tiny_model, max_tokens=10, temperature=1.0,
                               seed=5, max_retries=3)
        return [a.text for a in caught.value.attempts]

    texts = attempts()
    assert texts == attempts()
    assert texts[0] == structgen.generate_with_details(int, "Number?", model=tiny_model, max_tokens=10,
                                                       temperature=1.0, seed=5).text
    assert len({attempt_seed(5, k) for k in range(4)}) == 4 and attempt_seed(5, 0) == 5
    assert attempt_seed(None, 2) is None


def test_a_retry_that_no_longer_fits_the_context_is_a_typed_error(smollm2_tokenizer):
    from structgen.testing import tiny_random_model

    small = tiny_random_model(smollm2_tokenizer, context_length=130)
    with pytest.raises(structgen.PromptTooLongError, match="retry 2 does not fit") as caught:
        structgen.generate(Never, "Number?", model=small, max_tokens=10, max_retries=5)
    assert len(caught.value.attempts) == 2 and caught.value.context_length == 130
    min_tokens = structgen.compile_constraint(Never, small.tokenizer_info).min_tokens
    assert caught.value.prompt_tokens + min_tokens > 130 >= caught.value.attempts[-1].prompt_tokens


@pytest.mark.parametrize("max_retries", [-1, "2", 1.0, True, None])
def test_a_max_retries_that_is_not_a_count_is_refused_before_decoding(tiny_model, max_retries):
    for call in (structgen.generate, structgen.generate_batch):
        with pytest.raises(structgen.GenerationError, match="max_retries"):
            call(int, "Number?" if call is structgen.generate else ["Number?"], model=tiny_model,
                 max_retries=max_retries)
    with pytest.raises(structgen.GenerationError, match="max_retries"):
        structgen.call_tools([set_level], "Set it.", model=tiny_model, max_retries=max_retries)


# --- generate_batch: only the refused rows go round again ------------------------------------------


def test_batch_retries_only_the_refused_rows_and_keeps_input_order(tiny_model, monkeypatch):
    prompts = ["Number?", "A number, please.", "Count.", "Pick one."]
    plain = structgen.generate_batch(int, prompts, model=tiny_model, max_tokens=10, batch_size=4)
    refused = plain[0]

    def not_that_one(value):
        if value == refused:
            raise ValueError(f"{value} is taken")
        return value

    sizes = []
    decode_rows = generate_module.decode_rows
    monkeypatch.setattr(generate_module, "decode_rows",
                        lambda model, rows, sampling: sizes.append(len(rows)) or
                        decode_rows(model, rows, sampling))
    results = structgen.generate_batch_with_details(
        Annotated[int, pydantic.AfterValidator(not_that_one)], prompts + [""], model=tiny_model,
        max_tokens=10, batch_size=4, max_retries=1)
    again = [index for index, value in enumerate(plain) if value == refused]
    assert sizes == [4, len(again)]
    assert isinstance(results[-1], structgen.EmptyPromptError)
    for index, result in enumerate(results[:-1]):
        if index in again:
            assert isinstance(result, (structgen.Generation, structgen.RetriesExhaustedError))
            assert len(result.attempts) == 2 and result.attempts[0].text == str(refused)
        else:
            assert result.value == plain[index] and len(result.attempts) == 1


def test_a_batch_row_out_of_retries_gets_its_error_in_place(tiny_model):
    results = structgen.generate_batch(Never, ["Number?", "Count."], model=tiny_model, max_tokens=10,
                                       max_retries=1)
    assert all(isinstance(r, structgen.RetriesExhaustedError) and len(r.attempts) == 2 for r in results)


# --- batch jobs: the record says how many attempts it took -----------------------------------------

_VALIDATED: list = []


def _refuse_first_of_all(value):
    _VALIDATED.append(value)
    if len(_VALIDATED) == 1:
        raise ValueError("the first row's first answer is refused")
    return value


def test_batch_records_count_attempts_and_failures_keep_each_attempts_error(tiny_model):
    rows = [PendingRow(id=f"r{i}", line=i + 1, sha256="x", prompt=p)
            for i, p in enumerate(["Number?", "Count.", "Pick one."])]
    _VALIDATED.clear()
    job = BatchJob(schema="unused", batch_size=3, max_tokens=10, max_retries=2)
    records = process_batch(job, tiny_model, Annotated[int, pydantic.AfterValidator(_refuse_first_of_all)],
                            rows)
    assert [r["ok"] for r in records] == [True] * 3
    assert sorted(r["attempts"] for r in records) == [1, 1, 2]
    failed = process_batch(job, tiny_model, Never, rows[:1])[0]
    assert failed["ok"] is False and failed["error"]["type"] == "RetriesExhaustedError"
    assert len(failed["error"]["attempts"]) == 3
    assert all("never good enough" in a["error"] and a["text"] for a in failed["error"]["attempts"])
    json.dumps(failed)  # a record is JSON


def test_a_batch_job_refuses_a_negative_max_retries():
    with pytest.raises(structgen.BatchInputError, match="--max-retries"):
        BatchJob(schema="unused", max_retries=-1).check()


def test_the_batch_command_takes_max_retries(capsys):
    from structgen.cli import main

    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    assert "--max-retries" in capsys.readouterr().out


# --- streaming ------------------------------------------------------------------------------------


def test_a_stream_signals_the_refused_attempt_and_streams_the_retry(tiny_model):
    items = list(structgen.stream(Words, "Words?", model=tiny_model, max_tokens=20, max_retries=1,
                                  validation_context={"seen": []}))
    result = structgen.generate_with_details(Words, "Words?", model=tiny_model, max_tokens=20,
                                             max_retries=1, validation_context={"seen": []})
    (position,) = [i for i, item in enumerate(items) if isinstance(item, structgen.Retry)]
    retry = items[position]
    assert retry.attempt == 1 and retry.text == result.attempts[0].text
    assert isinstance(retry.error, structgen.OutputError)
    before, after = items[:position], items[position + 1:-1]
    assert before and after and all(isinstance(i, structgen.Partial) for i in before + after)
    assert all(retry.text.startswith(p.text) for p in before)
    assert all(result.text.startswith(p.text) for p in after)
    assert items[-1] == result.value


def test_a_stream_out_of_retries_raises_with_every_attempt(tiny_model):
    stream = structgen.stream(Never, "Number?", model=tiny_model, max_tokens=10, max_retries=1)
    items = []
    with pytest.raises(structgen.RetriesExhaustedError) as caught:
        for item in stream:
            items.append(item)
    assert [type(i) for i in items] == [structgen.Retry]
    assert len(caught.value.attempts) == 2


def test_astream_retries_as_stream_does(tiny_model):
    async def collect():
        return [item async for item in structgen.astream(
            Words, "Words?", model=tiny_model, max_tokens=20, max_retries=1,
            validation_context={"seen": []})]

    items = asyncio.run(collect())
    assert sum(isinstance(i, structgen.Retry) for i in items) == 1 and isinstance(items[-1], Words)


# --- function calling -----------------------------------------------------------------------------

_LEVELS: list = []


def _refuse_first_level(level: int) -> int:
    _LEVELS.append(level)
    if len(_LEVELS) == 1:
        raise ValueError(f"level {level} is not allowed")
    return level


def set_level(level: Annotated[int, pydantic.AfterValidator(_refuse_first_level)]) -> int:
    """Set the level.

    Args:
        level: The level to set.
    """
    return level


def never_level(level: Never) -> int:
    """Set the level.

    Args:
        level: The level to set.
    """
    return level


TOOL_OPTIONS = dict(tool_choice="required", parallel=False, max_tokens=48)


def test_a_call_its_validator_refuses_is_retried_with_the_refusal_as_a_user_turn(tiny_model, monkeypatch):
    from structgen.decoding import tools as tools_module

    conversations = []
    decode = tools_module.decode
    monkeypatch.setattr(tools_module, "decode", lambda model, constraint, messages, **options: (
        conversations.append(messages) or decode(model, constraint, messages, **options)))
    _LEVELS.clear()
    turn = structgen.call_tools_with_details([set_level], "Set it.", model=tiny_model, max_retries=1,
                                             **TOOL_OPTIONS)
    assert turn.calls and not turn.rejected and len(turn.attempts) == 2
    refused = turn.attempts[0].error
    assert isinstance(refused, structgen.ToolArgumentsError) and turn.attempts[1].error is None
    problems = f"- set_level: {refused.reason}"
    assert conversations[1][-2:] == [
        {"role": "assistant", "content": turn.attempts[0].text},
        {"role": "user", "content": TOOL_RETRY_PROMPT.format(problems=problems)}]
    _LEVELS.clear()
    calls = structgen.call_tools([set_level], "Set it.", model=tiny_model, max_retries=1, **TOOL_OPTIONS)
    assert [c.arguments for c in calls] == [c.arguments for c in turn.calls]


def test_call_tools_out_of_retries_raises_with_every_attempt(tiny_model):
    with pytest.raises(structgen.RetriesExhaustedError) as caught:
        structgen.call_tools([never_level], "Set it.", model=tiny_model, max_retries=1, **TOOL_OPTIONS)
    assert len(caught.value.attempts) == 2
    assert all(isinstance(a.error, structgen.ToolArgumentsError) for a in caught.value.attempts)
    assert isinstance(caught.value.__cause__, structgen.ToolArgumentsError)
    with pytest.raises(structgen.ToolArgumentsError):  # no retries: the refusal, as before
        structgen.call_tools([never_level], "Set it.", model=tiny_model, **TOOL_OPTIONS)
    turn = structgen.call_tools_with_details([never_level], "Set it.", model=tiny_model, max_retries=1,
                                             **TOOL_OPTIONS)
    assert turn.rejected and len(turn.attempts) == 2


def test_run_tools_retries_a_refused_turn_before_running_it(tiny_model):
    _LEVELS.clear()
    run = structgen.run_tools([set_level], "Set it.", model=tiny_model, max_retries=1, max_iterations=1,
                              **TOOL_OPTIONS)
    assert run.calls and all(call.error is None for call in run.calls)
    responses = [m for m in run.messages if m["role"] == "tool"]
    assert responses and all("error" not in json.dumps(m["content"]) for m in responses)
    assert [m["role"] for m in run.messages].count("user") == 1  # the retry turn is not in it


# --- the embedded model ---------------------------------------------------------------------------


class Hero(BaseModel):
    name: str
    age: int

    _first = field_validator("age")(_refuse_first)


@pytest.mark.integration
def test_the_embedded_model_answers_again_when_its_first_answer_is_refused(embedded_model):
    context = {"seen": []}
    result = structgen.generate_with_details(Hero, "Describe Goku from Dragon Ball Z.",
                                             model=embedded_model, max_tokens=30, max_retries=2,
                                             validation_context=context)
    first, kept = result.attempts
    assert isinstance(result.value, Hero) and kept.error is None and kept.text == result.text
    assert "the first answer, write another one" in str(first.error)
    assert Hero.model_validate_json(first.text, context={"seen": ["before"]})  # it was valid JSON
    assert kept.prompt_tokens > first.prompt_tokens  # SmolLM2's template rendered the retry turn
