"""generate_batch: batched decoding with per-row errors, input order, and rows leaving the batch."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

import structgen
from structgen.testing import tiny_random_model


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    tags: list[str] = Field(max_length=3)


PROMPTS = ["Alice, 31.", "Bob is a retired sailor who turned 67 last week and lives in Brest.",
           "Carol", "Dan, age unknown, likes chess and go and long walks on the beach."]


@pytest.fixture(scope="module")
def double_model(smollm2_tokenizer):
    """float64 weights: padded and unpadded rows then agree to ~1e-12, so greedy choices match."""
    model = tiny_random_model(smollm2_tokenizer, seed=3, context_length=512)
    model.hf_model.double()
    return model


def test_batched_greedy_equals_one_by_one(double_model):
    alone = [structgen.generate_with_details(Person, p, model=double_model, max_tokens=40).text
             for p in PROMPTS]
    batched = structgen.generate_batch_with_details(Person, PROMPTS, model=double_model,
                                                    batch_size=4, max_tokens=40)
    assert [g.text for g in batched] == alone


def test_results_keep_input_order_and_errors_are_values(tiny_model):
    from structgen.testing import tiny_random_model as make

    small = make(tiny_model.tokenizer, seed=1, context_length=320)
    prompts = ["First.", "", "word " * 400, "Last one."]
    results = structgen.generate_batch_with_details(Person, prompts, model=small, batch_size=3,
                                                    max_tokens=30, temperature=1.0, seed=5)
    assert isinstance(results[1], structgen.EmptyPromptError)
    assert isinstance(results[2], structgen.PromptTooLongError)
    assert all(isinstance(r.value, Person) for r in (results[0], results[3]))
    values = structgen.generate_batch(Person, prompts, model=small, batch_size=3, max_tokens=30)
    assert isinstance(values[1], structgen.StructgenError) and isinstance(values[0], Person)


def test_a_row_cut_by_the_context_window_does_not_disturb_the_others(smollm2_tokenizer):
    """One prompt leaves only 20 tokens of context: that row's budget shrinks, the others' don't,
    and they write exactly what they write alone."""
    from structgen.decoding.generate import chat_ids, messages_for

    probe = tiny_random_model(smollm2_tokenizer, seed=4)
    constraint = structgen.compile_constraint(list[int], probe.tokenizer_info)
    long_prompt = "count " * 140
    long_tokens = len(chat_ids(probe, messages_for(constraint, long_prompt)))
    small = tiny_random_model(smollm2_tokenizer, seed=4, context_length=long_tokens + 20)
    small.hf_model.double()
    others = ["a", "Numbers please."]
    batched = structgen.generate_batch_with_details(constraint, [long_prompt, *others], model=small,
                                                    batch_size=3, max_tokens=60)
    alone = [structgen.generate_with_details(constraint, p, model=small, max_tokens=60).text
             for p in others]
    assert batched[0].completion_tokens <= 20 and isinstance(batched[0].value, list)
    assert [r.text for r in batched[1:]] == alone


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), batch_size=st.integers(1, 5), budget=st.integers(25, 70))
def test_every_row_validates_for_any_seed_and_batch_size(tiny_model, seed, batch_size, budget):
    results = structgen.generate_batch_with_details(Person, PROMPTS * 2, model=tiny_model,
                                                    batch_size=batch_size, max_tokens=budget,
                                                    temperature=1.0, seed=seed)
    assert len(results) == len(PROMPTS) * 2
    for result in results:
        assert isinstance(result.value, Person) and result.completion_tokens <= budget


def test_batch_size_must_be_positive(tiny_model):
    with pytest.raises(structgen.GenerationError):
        structgen.generate_batch(Person, ["x"], model=tiny_model, batch_size=0)
