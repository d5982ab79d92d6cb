"""The two engines behind compile_constraint: outlines-core's index and llguidance.

llguidance serves schemas the regex compiler refuses, compiles that time out, and (``wait=False``)
the first tokens while the index compiles; these tests pin down that the engines agree on the
language, that fallbacks are recorded, and that a hybrid switches to the index mid-sequence.
"""

from __future__ import annotations

import json
import random
import uuid
from concurrent.futures import Future
from typing import Literal

import numpy as np
import pytest

import structgen
from structgen.constraint.compiler import ConstraintCompiler
from structgen.constraint.llguidance_backend import (
    GrammarConstraint,
    HybridConstraint,
    json_schema_grammar,
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


def test_a_compile_over_its_time_budget_falls_back_to_llguidance(info, smollm2_tokenizer):
    fresh = {"enum": [f"v{uuid.uuid4().hex}", "w"]}  # never compiled before: no cache hit
    constraint = structgen.compile_constraint(fresh, info, timeout=1e-4)
    assert constraint.engine == "llguidance"
    assert "longer than" in constraint.fallback_reason
    assert accepts(constraint, ids_of(smollm2_tokenizer, "w"))
    assert not accepts(constraint, ids_of(smollm2_tokenizer, "x"))


def test_a_hybrid_starts_on_llguidance_and_switches_mid_sequence(info, smollm2_tokenizer):
    grammar = structgen.compile_constraint(PERSON, info, engine="llguidance", whitespace="compact")
    fsm = structgen.compile_constraint(PERSON, info, engine="outlines-core", whitespace="compact")
    pending: Future = Future()
    hybrid = HybridConstraint(grammar, pending)
    ids = ids_of(smollm2_tokenizer, {"name": "Zoë", "age": 41, "tags": ["bé"]})
    matcher = hybrid.matcher(max_tokens=len(ids) + 1)
    for token in ids[:5]:
        assert matcher.advance(token)
    assert not matcher.on_fsm
    pending.set_result(fsm)
    for token in ids[5:]:
        assert matcher.advance(token)
    assert matcher.on_fsm and matcher.is_accepting()
    assert matcher.active.max_tokens == len(ids) + 1  # the budget guarantee is back in force
    assert matcher.allowed_token_ids() == [info.eos_token_id]
    assert hybrid.fallback_reason is None


def test_wait_false_returns_a_hybrid_that_lands_on_the_index(info):
    compiler = ConstraintCompiler(disk_cache=False)
    schema = {"type": "object", "properties": {"id": {"enum": [uuid.uuid4().hex]}}, "required": ["id"]}
    import structgen.constraint.compiler as module

    saved, module._default_compiler = module._default_compiler, compiler
    try:
        constraint = structgen.compile_constraint(schema, info, wait=False, whitespace="compact")
        assert isinstance(constraint, HybridConstraint)
        assert constraint.fsm(wait=60).engine == "outlines-core"
        assert constraint.matcher().current().constraint.engine == "outlines-core"
        again = structgen.compile_constraint(schema, info, wait=False, whitespace="compact")
        assert isinstance(again, HybridConstraint)  # the memory cache: no head start needed
        assert again.fsm().from_cache == "memory" and again.matcher().on_fsm
        assert again.covered is constraint.covered  # what was learnt about the schema is kept
        assert structgen.compile_constraint(schema, info, whitespace="compact").engine == "outlines-core"
    finally:
        module._default_compiler = saved
        compiler.close()


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


def test_a_hybrid_whose_index_refuses_the_replay_stays_on_llguidance(info, smollm2_tokenizer):
    """llguidance's JSON grammar admits undeclared properties; structgen's index never writes
    them, so a sequence that took one cannot switch, and finishes on llguidance."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    head_start = GrammarConstraint(json_schema_grammar(schema, "compact"), info, regex=None,
                                   output_type=None, whitespace="compact")
    pending: Future = Future()
    matcher = HybridConstraint(head_start, pending).matcher()
    ids = ids_of(smollm2_tokenizer, {"zz": 1})
    for token in ids[:3]:
        assert matcher.advance(token)
    pending.set_result(structgen.compile_constraint(schema, info, engine="outlines-core"))
    for token in ids[3:]:
        assert matcher.advance(token)
    assert not matcher.on_fsm and matcher.is_accepting()
    assert "refused replayed token" in matcher.constraint.fallback_reason


def _landed_hybrid(schema: dict, info) -> HybridConstraint:
    """A hybrid on llguidance's JSON grammar whose index has already landed."""
    head_start = GrammarConstraint(json_schema_grammar(schema, "compact"), info, regex=None,
                                   output_type=None, whitespace="compact")
    landed: Future = Future()
    landed.set_result(structgen.compile_constraint(schema, info, engine="outlines-core",
                                                   whitespace="compact"))
    return HybridConstraint(head_start, landed)


def accepts_under_masks(constraint, ids) -> bool:
    """Each token is in the mask before it is taken (as in decoding), and the end is accepted."""
    matcher = constraint.matcher()
    for token in ids:
        if not matcher.mask()[token] or not matcher.advance(token):
            return False
    return bool(matcher.mask()[constraint.eos_token_id]) and matcher.is_accepting()


def test_without_a_budget_a_landed_hybrid_allows_what_either_engine_allows(info, smollm2_tokenizer):
    """The index never writes undeclared properties and llguidance's grammar refuses ``\\u``
    escapes: unbudgeted, the hybrid takes both (each is valid), and still refuses what neither
    allows; the index's own states keep lookup masks where llguidance adds nothing."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    hybrid = _landed_hybrid(schema, info)
    extra_key = ids_of(smollm2_tokenizer, {"a": "x", "zz": 1})
    escaped = smollm2_tokenizer.encode('{"a":"\\u00e9"}', add_special_tokens=False)
    assert not accepts(hybrid.fsm(), extra_key)
    assert accepts(hybrid.fsm(), escaped) and not accepts(hybrid.grammar, escaped)
    for ids in (extra_key, escaped, ids_of(smollm2_tokenizer, {"a": "x"})):
        assert accepts_under_masks(hybrid, ids)
    assert not accepts_under_masks(hybrid, ids_of(smollm2_tokenizer, {"a": 1}))
    assert not accepts_under_masks(hybrid, ids_of(smollm2_tokenizer, {"a": "x", "b": 2})[:-1])
    assert hybrid.matcher().on_fsm
    assert True in hybrid.covered.values() and False in hybrid.covered.values()


def test_with_a_budget_a_landed_hybrid_is_the_index_alone(info, smollm2_tokenizer):
    """Only the index knows how far the end is, so under a budget it alone steers."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    hybrid = _landed_hybrid(schema, info)
    extra_key = ids_of(smollm2_tokenizer, {"a": "x", "zz": 1})
    matcher = hybrid.matcher(max_tokens=len(extra_key) + 1)
    assert matcher.on_fsm and matcher.grammar is None
    assert not all(matcher.advance(token) for token in extra_key)


def test_a_cached_index_under_wait_false_builds_llguidance_only_when_asked(info, smollm2_tokenizer):
    """A cache hit needs no head start: budgeted matchers never build llguidance's grammar, an
    unbudgeted one builds it on its first mask and then admits undeclared properties too."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "$comment": uuid.uuid4().hex}
    structgen.compile_constraint(schema, info, whitespace="compact")  # now cached
    hybrid = structgen.compile_constraint(schema, info, wait=False, whitespace="compact")
    extra_key = ids_of(smollm2_tokenizer, {"a": "x", "zz": 1})
    budgeted = hybrid.matcher(max_tokens=64)
    assert budgeted.on_fsm and not all(budgeted.advance(token) for token in extra_key)
    assert hybrid._build_grammar is not None  # never built
    assert accepts_under_masks(hybrid, extra_key)
    assert hybrid.grammar is not None and hybrid.grammar.regex is None


def test_a_cache_hit_reads_its_first_mask(info, smollm2_tokenizer, tmp_path, monkeypatch):
    """Before the first token both engines are in their start state, so the first unbudgeted
    mask (index OR llguidance) is a constant of the schema. It is kept on disk: a later
    process's first mask is a read while llguidance's grammar builds in the background, and
    the sequence still admits what either engine admits."""
    import structgen.constraint.compiler as module

    monkeypatch.setenv("STRUCTGEN_CACHE", str(tmp_path))
    open_object = {"type": "object", "properties": {"a": {"type": "string"}}}
    saved = module._default_compiler
    try:
        for schema, adds_nothing in ((open_object, True), ({}, False)):
            module._default_compiler = ConstraintCompiler()
            structgen.compile_constraint(schema, info, whitespace="compact")  # compiled: now on disk
            hybrid = structgen.compile_constraint(schema, info, wait=False, whitespace="compact")
            assert hybrid.start_mask is None
            matcher = hybrid.matcher()
            union = matcher.mask()
            assert matcher.last_mask == "index|llguidance" and hybrid.grammar is not None
            assert hybrid.start_covered is adds_nothing

            module._default_compiler.close()
            module._default_compiler = ConstraintCompiler()  # a new process: memory caches empty
            module._COVERED.clear()
            hybrid = structgen.compile_constraint(schema, info, wait=False, whitespace="compact")
            assert hybrid.fsm().from_cache == "disk" and hybrid.start_covered is adds_nothing
            assert hybrid._build_grammar is not None  # llguidance not needed for the first mask
            matcher = hybrid.matcher()
            assert np.array_equal(matcher.mask(), union)
            assert matcher.last_mask == ("index" if adds_nothing else "index|llguidance")
            budgeted = hybrid.matcher(max_tokens=64)  # the budget's index alone, as before
            assert np.array_equal(budgeted.mask(), hybrid.fsm().mask(hybrid.fsm().initial_state))
            module._default_compiler.close()
        nested = ids_of(smollm2_tokenizer, [[1]])  # "[[": a first token only llguidance allows
        assert accepts_under_masks(hybrid, nested)
        assert not hybrid.fsm().mask(hybrid.fsm().initial_state)[nested[0]]
        module._default_compiler = ConstraintCompiler()
        module._COVERED.clear()
        hybrid = structgen.compile_constraint(open_object, info, wait=False, whitespace="compact")
        assert hybrid.start_covered is True
        assert accepts_under_masks(hybrid, ids_of(smollm2_tokenizer, {"a": "x", "zz": 1}))
        for stale in tmp_path.glob("constraints/*.start"):  # made by other engine versions
            stale.write_bytes(b"outlines-core=0.0.0,llguidance=0.0.0 1\n"
                              + stale.read_bytes().partition(b"\n")[2])
        module._default_compiler.close()
        module._default_compiler = ConstraintCompiler()
        constraint = structgen.compile_constraint(open_object, info, wait=False, whitespace="compact")
        assert constraint.start_mask is None
    finally:
        module._default_compiler.close()
        module._default_compiler = saved

