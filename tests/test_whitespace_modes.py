"""The whitespace modes end to end: compile_constraint, the llguidance fallback, and decoding on
the tiny random model.

``compact``, ``spaced`` and ``indented`` admit exactly the layout json.dumps writes (no loop is
possible, and the budget guarantee holds); on llguidance's JSON grammar ``indented`` is the one
documented departure: a bounded newline-and-indent between any two tokens.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layouts import BOUNDED, dumps, relaid

import structgen
from structgen.constraint.llguidance_backend import (
    INDENT_LEVELS,
    GrammarConstraint,
    json_schema_grammar,
)
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.schema import WHITESPACE_MODES

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        "at": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0,
                                                      "maximum": 99}},
               "required": ["x"], "additionalProperties": False},
    },
    "required": ["name", "tags", "at"],
    "additionalProperties": False,
}
VALUES = [
    {"name": "Ada", "tags": ["a", "b"], "at": {"x": 7}},
    {"name": "", "tags": [], "at": {"x": 0}},
]
NOT_REGULAR = {  # two patternProperties: the regex compiler refuses it, llguidance takes it
    "type": "object",
    "patternProperties": {"^x-": {"type": "array", "items": {"type": "integer"}},
                          "^y-": {"type": "string"}},
    "additionalProperties": False,
}
NOT_REGULAR_VALUE = {"x-a": [1, 2], "y-b": "s", "x-c": []}


@pytest.fixture(scope="module")
def info(smollm2_tokenizer):
    return TokenizerInfo.from_huggingface(smollm2_tokenizer)


def accepts(constraint, tokenizer, text: str) -> bool:
    matcher = constraint.matcher()
    ids = tokenizer.encode(text, add_special_tokens=False)
    return all(matcher.advance(t) for t in ids) and matcher.is_accepting()


def grammar(schema, mode: str, info) -> GrammarConstraint:
    return GrammarConstraint(json_schema_grammar(schema, mode), info, regex=None,
                             output_type=None, whitespace=mode)


def test_an_unknown_mode_is_a_typed_error_naming_the_modes(info):
    for call in (lambda: structgen.compile_constraint(SCHEMA, info, whitespace="pretty"),
                 lambda: json_schema_grammar(SCHEMA, "pretty")):
        with pytest.raises(structgen.InvalidSchemaError) as caught:
            call()
        assert all(repr(mode) in str(caught.value) for mode in WHITESPACE_MODES)


@pytest.mark.parametrize("mode", BOUNDED)
def test_the_index_accepts_exactly_the_json_dumps_layout(mode, info, smollm2_tokenizer):
    constraint = structgen.compile_constraint(SCHEMA, info, whitespace=mode)
    assert constraint.engine == "outlines-core" and constraint.whitespace == mode
    for value in VALUES:
        assert accepts(constraint, smollm2_tokenizer, dumps(value, mode))
        for other in BOUNDED:
            if other != mode:
                assert not accepts(constraint, smollm2_tokenizer, dumps(value, other)), other
        assert not accepts(constraint, smollm2_tokenizer, dumps(value, mode) + "\n")


@pytest.mark.parametrize("mode", ["compact", "spaced"])
def test_llguidance_writes_compact_and_spaced_exactly(mode, info, smollm2_tokenizer):
    constraint = grammar(SCHEMA, mode, info)
    for value in VALUES:
        assert accepts(constraint, smollm2_tokenizer, dumps(value, mode))
        for other in BOUNDED:
            if other != mode:
                assert not accepts(constraint, smollm2_tokenizer, dumps(value, other)), other
        assert not accepts(constraint, smollm2_tokenizer, " " + dumps(value, mode))


def test_llguidance_indented_is_bounded(info, smollm2_tokenizer):
    """No nesting level on llguidance: one newline with up to INDENT_LEVELS steps, or nothing,
    between any two tokens (the documented departure); never two, never deeper, never a loop."""
    constraint = grammar(SCHEMA, "indented", info)
    text = dumps(VALUES[0], "indented")
    assert accepts(constraint, smollm2_tokenizer, text)
    assert accepts(constraint, smollm2_tokenizer, text.replace("\n    ", ""))  # fewer newlines
    assert not accepts(constraint, smollm2_tokenizer, text.replace("\n", "\n\n", 1))
    deepest = "\n" + "  " * INDENT_LEVELS
    assert accepts(constraint, smollm2_tokenizer, text.replace("\n  ", deepest, 1))
    assert not accepts(constraint, smollm2_tokenizer, text.replace("\n  ", deepest + "  ", 1))
    assert not accepts(constraint, smollm2_tokenizer, text + "\n")


@pytest.mark.parametrize("mode", WHITESPACE_MODES)
def test_a_schema_only_llguidance_takes_runs_in_every_mode(mode, info, smollm2_tokenizer):
    constraint = structgen.compile_constraint(NOT_REGULAR, info, whitespace=mode)
    assert constraint.engine == "llguidance" and "patternProperties" in constraint.fallback_reason
    texts = [dumps(NOT_REGULAR_VALUE, mode)] if mode != "flexible" else [
        json.dumps(NOT_REGULAR_VALUE), json.dumps(NOT_REGULAR_VALUE, indent=2)]
    assert all(accepts(constraint, smollm2_tokenizer, text) for text in texts)


# --- decoding on the tiny random model: whatever the weights, the layout is json.dumps's ------


@pytest.fixture(scope="module")
def constraints(tiny_model):
    return {mode: structgen.compile_constraint(SCHEMA, tiny_model.tokenizer_info, whitespace=mode)
            for mode in WHITESPACE_MODES}


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(WHITESPACE_MODES), seed=st.integers(0, 2**16),
       extra=st.one_of(st.integers(0, 4), st.integers(5, 60)))
def test_random_weights_give_valid_answers_in_every_mode(tiny_model, constraints, mode, seed, extra):
    constraint = constraints[mode]
    budget = constraint.min_tokens + 1 + extra
    result = structgen.generate_with_details(constraint, "Answer.", model=tiny_model,
                                             max_tokens=budget, temperature=1.0, seed=seed)
    assert result.completion_tokens <= budget
    jsonschema.validate(result.value, SCHEMA)
    if mode != "flexible":
        assert relaid(result.text, mode) == result.text, result.text
