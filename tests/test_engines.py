"""The two engines behind compile_constraint: the finite-state one and llguidance.

llguidance serves schemas the regex compiler refuses and compiles that time out; these tests pin
down that the engines agree on the language and that fallbacks are recorded.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Literal

import numpy as np
import pytest

import structgen
from structgen.constraint.compiled_loops import COMPILED_LOOPS
from structgen.constraint.llguidance_backend import (
    GrammarConstraint,
)
from structgen.constraint.vocabulary import TokenizerInfo

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "tags": {"type": "array", "items": {"enum": ["a", "bé"]}, "maxItems": 3}},
    "required": ["name", "age"],
}
NOT_REGULAR = {  # two patternProperties: the regex compiler refuses it, llguidance does not
    "type": "object",
    "patternProperties": {"^x-": {"type": "integer"}, "^y-": {"type": "string"}},
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def info(smollm2_tokenizer):
    return TokenizerInfo.from_huggingface(smollm2_tokenizer)


def ids_of(tokenizer, value) -> list[int]:
    return tokenizer.encode(json.dumps(value, separators=(",", ":"), ensure_ascii=False),
                            add_special_tokens=False)


def accepts(constraint, ids) -> bool:
    matcher = constraint.matcher()
    return all(matcher.advance(t) for t in ids) and matcher.is_accepting()


def test_both_engines_write_the_same_language(info):
    """Same regex, so the same texts; llguidance may allow fewer *tokenisations* of forced text
    (only ``{"`` where ``{`` would also spell it), never a token the index refuses."""
    fsm = structgen.compile_constraint(PERSON, info, engine="outlines-core")
    grammar = structgen.compile_constraint(PERSON, info, engine="llguidance")
    assert (fsm.engine, grammar.engine) == ("outlines-core", "llguidance")
    rng = random.Random(3)
    for _ in range(8):
        a, b = fsm.matcher(), grammar.matcher()
        while not a.is_finished():
            on_index, on_llguidance = a.allowed_token_ids(), b.allowed_token_ids()
            assert on_llguidance and set(on_llguidance) <= set(on_index)
            token = rng.choice(on_llguidance)
            assert a.advance(token) and b.advance(token)
            assert a.is_accepting() == b.is_accepting()
        assert b.is_finished()


def test_a_schema_the_regex_compiler_refuses_runs_on_llguidance(info, smollm2_tokenizer):
    constraint = structgen.compile_constraint(NOT_REGULAR, info, whitespace="compact")
    assert isinstance(constraint, GrammarConstraint) and constraint.engine == "llguidance"
    assert "patternProperties" in constraint.fallback_reason
    assert accepts(constraint, ids_of(smollm2_tokenizer, {"x-a": 1, "x-b": 2}))
    assert not accepts(constraint, ids_of(smollm2_tokenizer, {"y": 1}))
    assert not accepts(constraint, ids_of(smollm2_tokenizer, {"x-a": "one"}))
    with pytest.raises(structgen.UnsupportedSchemaError):
        structgen.compile_constraint(NOT_REGULAR, info, engine="outlines-core", whitespace="compact")


def test_what_neither_engine_can_enforce_stays_a_typed_error_with_its_pointer(info):
    schema = {"type": "object", "properties": {"a": {"type": "string", "format": "iri-reference"}}}
    with pytest.raises(structgen.UnsupportedSchemaError) as raised:
        structgen.compile_constraint(schema, info)
    assert raised.value.pointer == "/properties/a/format"
    assert "llguidance cannot enforce it either" in str(raised.value)


def test_recursion_goes_to_llguidance_or_is_unrolled_when_llguidance_refuses(info, smollm2_tokenizer):
    tree = {"type": "object", "required": ["v"],
            "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#"}}}}
    exact = structgen.compile_constraint(tree, info, whitespace="compact")  # llguidance nests without bound
    deep = {"v": 1, "kids": [{"v": 2, "kids": [{"v": 3, "kids": [{"v": 4}]}]}]}
    assert exact.engine == "llguidance" and accepts(exact, ids_of(smollm2_tokenizer, deep))
    # llguidance refuses dependentRequired, which the regex enforces: the regex unrolls recursion.
    refused = {**tree, "properties": {**tree["properties"], "w": {"type": "integer"}},
               "dependentRequired": {"w": ["kids"]}}
    unrolled = structgen.compile_constraint(refused, info, whitespace="compact")
    assert unrolled.engine == "outlines-core"
    assert accepts(unrolled, ids_of(smollm2_tokenizer, {"v": 1, "kids": [{"v": 2, "kids": []}]}))
    assert not accepts(unrolled, ids_of(smollm2_tokenizer, deep))  # deeper than the bound
    assert not accepts(unrolled, ids_of(smollm2_tokenizer, {"v": 1, "w": 2}))  # w needs kids


def test_schemas_differing_only_in_property_order_keep_their_own_order(info):
    first = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
             "required": ["a", "b"], "$comment": uuid.uuid4().hex}
    second = {**first, "properties": dict(reversed(first["properties"].items()))}
    for schema, order in ((first, ("a", "b")), (second, ("b", "a"))):
        regex = structgen.compile_constraint(schema, info).regex  # the second hits no alias of the first
        assert regex.index(f'"{order[0]}"') < regex.index(f'"{order[1]}"')


def test_unrolling_goes_shallower_when_the_regex_would_be_too_large(info, smollm2_tokenizer,
                                                                    monkeypatch):
    import structgen.schema.to_regex as to_regex

    tree = {"type": "object", "required": ["v"], "dependentRequired": {"w": ["kids"]},
            "properties": {"v": {"type": "integer"}, "w": {"type": "integer"},
                           "kids": {"type": "array", "items": {"$ref": "#"}}},
            "$comment": uuid.uuid4().hex}  # never compiled before: no cached regex for it
    deep_regex = structgen.schema_to_regex(tree, max_recursion=2, whitespace="compact")
    monkeypatch.setattr(to_regex, "MAX_REGEX_CHARS", len(deep_regex) - 1)
    shallow = structgen.compile_constraint(tree, info, whitespace="compact")
    assert shallow.engine == "outlines-core"
    assert shallow.regex == structgen.schema_to_regex(tree, max_recursion=1, whitespace="compact")
    assert accepts(shallow, ids_of(smollm2_tokenizer, {"v": 1, "kids": [{"v": 2, "kids": []}]}))


def test_a_compile_over_its_time_budget_falls_back_to_llguidance(info, smollm2_tokenizer,
                                                                 monkeypatch):
    """A regex whose automaton has 8k states, past what the 1 ms floor of a budget allows: built
    by the compile worker (a process without the compiled loops) or in this process."""
    for in_this_process in (False, True):
        with monkeypatch.context() as patch:
            if not in_this_process:
                patch.setattr(COMPILED_LOOPS, "automaton", None)  # as before load_model
            tail = uuid.uuid4().hex  # never compiled before: no cache hit
            regex = structgen.Regex(f"(?:a|b)*a(?:a|b){{12}}z{tail}")
            constraint = structgen.compile_constraint(regex, info, timeout=1e-4)
        assert constraint.engine == "llguidance", in_this_process
        assert "longer than" in constraint.fallback_reason
        assert accepts(constraint, smollm2_tokenizer.encode("a" * 13 + "z" + tail,
                                                            add_special_tokens=False))
        assert not accepts(constraint, smollm2_tokenizer.encode("b" * 13 + "z" + tail,
                                                                add_special_tokens=False))


def test_generate_decodes_on_an_llguidance_constraint(tiny_model):
    constraint = structgen.compile_constraint(Literal["red", "green", "blue"], tiny_model,
                                              engine="llguidance")
    for seed in range(3):
        value = structgen.generate(constraint, "Pick a colour", model=tiny_model, temperature=1.0,
                                   seed=seed, max_tokens=16)
        assert value in ("red", "green", "blue")


def test_bitmasks_of_both_engines_have_the_same_layout(info):
    words = (info.vocab_size + 31) // 32
    for engine in ("outlines-core", "llguidance"):
        matcher = structgen.compile_constraint(PERSON, info, engine=engine).matcher()
        bits = np.zeros((2, words), np.int32)
        matcher.fill_bitmask(bits, 1)
        unpacked = np.unpackbits(bits[1].view(np.uint8), bitorder="little")
        assert not bits[0].any()
        assert np.flatnonzero(unpacked).tolist() == matcher.allowed_token_ids() != []


def test_a_custom_format_is_an_annotation(info, smollm2_tokenizer):
    schema = {"type": "string", "format": "mongoId", "maxLength": 4}
    constraint = structgen.compile_constraint(schema, info)
    assert constraint.engine == "outlines-core"
    assert accepts(constraint, ids_of(smollm2_tokenizer, "ab"))
    assert not accepts(constraint, ids_of(smollm2_tokenizer, "abcde"))
