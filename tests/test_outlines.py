"""outlines interop: outlines 1.x output types and models, taken where structgen's own are.

These run against the installed outlines (`pip install structgen[outlines]`; `make install` has it)
on the tiny random-weight model: whatever the weights, every answer validates.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

import structgen
from structgen.backends.transformers import as_model
from structgen.types import as_output_type

outlines = pytest.importorskip("outlines")
from outlines.types import CFG, Choice, JsonSchema, Regex  # noqa: E402


class Character(BaseModel):
    name: str = Field(max_length=10)
    species: Literal["human", "saiyan"]
    age: int = Field(ge=0, le=999)


TAGS = {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3}


@pytest.mark.parametrize("schema", [TAGS, '{"type": "array", "items": {"enum": ["a", "b", "c"]}, '
                                          '"minItems": 1, "maxItems": 3}'])
def test_an_outlines_json_schema_works_unchanged_in_generate(tiny_model, schema):
    value = structgen.generate(JsonSchema(schema), "Tags?", model=tiny_model, max_tokens=30,
                               temperature=1.0, seed=4)
    jsonschema.validate(value, TAGS)


def test_a_pydantic_model_passed_through_json_schema_validates_against_it(tiny_model):
    value = structgen.generate(JsonSchema(Character), "Goku?", model=tiny_model, max_tokens=60)
    assert isinstance(value, dict)  # JsonSchema keeps the schema, not the class
    assert isinstance(Character.model_validate(value), Character)
    same = as_output_type(Character.model_json_schema())
    assert as_output_type(JsonSchema(Character)).schema == same.schema


def test_an_outlines_regex_works_unchanged_in_generate(tiny_model):
    pattern = r"[0-9]{3}-[A-Z]{2}"
    value = structgen.generate(Regex(pattern), "Code?", model=tiny_model, temperature=1.0, seed=1,
                               max_tokens=20)
    assert isinstance(value, str) and re.fullmatch(pattern, value)
    assert as_output_type(Regex(pattern)) == as_output_type(structgen.Regex(pattern))


def test_choice_is_an_enum_and_literal_is_taken_as_in_outlines(tiny_model):
    assert as_output_type(Choice(["red", "green", "red"])).schema == {"enum": ["red", "green"]}
    assert structgen.generate(Choice(["red", "green"]), "Color?", model=tiny_model) in ("red", "green")
    assert structgen.generate(Choice([1, 2, 3]), "Number?", model=tiny_model) in (1, 2, 3)
    assert structgen.generate(Literal["yes", "no"], "Yes?", model=tiny_model) in ("yes", "no")


def test_outlines_regex_dsl_terms_and_builtin_types(tiny_model):
    term = outlines.types.either("cat", "dog") + outlines.types.exactly(2, outlines.types.digit)
    value = structgen.generate(term, "Pet?", model=tiny_model, temperature=1.0, seed=3)
    assert re.fullmatch(r"(cat|dog)\d{2}", value)  # \d: any Unicode digit, in outlines too
    number = structgen.generate(outlines.types.integer, "Number?", model=tiny_model, max_tokens=8)
    assert re.fullmatch(r"[+-]?(0|[1-9][0-9]*)", number)


def test_outlines_types_get_the_same_checks_and_typed_errors_as_structgens(tiny_model):
    # a remote $ref is refused inside JsonSchema as in a dict: structgen never fetches
    with pytest.raises(structgen.UnsupportedSchemaError, match="not local"):
        as_output_type(JsonSchema({"$ref": "http://example.com/s.json"}))
    with pytest.raises(structgen.UnsupportedSchemaError, match="lookahead"):
        as_output_type(outlines.types.isbn)  # outlines' own ISBN regex uses lookaheads
    with pytest.raises(structgen.UnsupportedSchemaError, match="CFG"):
        as_output_type(CFG('?start: "a"'))
    # the budget guarantee: a budget no answer fits is refused up front, as with structgen types
    with pytest.raises(structgen.BudgetTooSmallError):
        structgen.generate(JsonSchema(Character), "Goku?", model=tiny_model, max_tokens=3)


def test_an_outlines_transformers_model_is_a_model(tiny_model):
    om = outlines.from_transformers(tiny_model.hf_model, tiny_model.tokenizer)
    model = as_model(om)
    assert model is as_model(om)  # wrapped once per object
    assert model.hf_model is tiny_model.hf_model and model.tokenizer is tiny_model.tokenizer
    assert model.context_length == tiny_model.context_length
    value = structgen.generate(JsonSchema(TAGS), "Tags?", model=om, max_tokens=30)
    jsonschema.validate(value, TAGS)
    assert all(isinstance(c, Character)
               for c in structgen.generate_batch(Character, ["A.", "B."], model=om, max_tokens=60))
    assert structgen.load_model(om) is model


def test_an_outlines_model_that_is_not_transformers_is_refused():
    from outlines.models.base import Model as OutlinesModel

    class Remote(OutlinesModel):
        def generate(self, *args, **kwargs): ...
        def generate_batch(self, *args, **kwargs): ...
        def generate_stream(self, *args, **kwargs): ...

    with pytest.raises(structgen.GenerationError, match="not one"):
        structgen.generate(int, "Number?", model=Remote())


def test_import_structgen_and_its_output_types_do_not_import_outlines():
    code = ("import sys, structgen, structgen.types as t; t.as_output_type({'type': 'integer'}); "
            "t.as_output_type(structgen.Regex('[0-9]+')); print('outlines' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
