"""Long counted strings spliced into the byte automaton (constraint/counted.py, automaton.py).

The spliced automaton must accept exactly what the regex does: checked against ``re.fullmatch``
on texts drawn from the regex and on near misses, for random bounds and surroundings."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from outlines_core import Index

from structgen.constraint.automaton import (
    ByteAutomaton,
    arrays_from_index,
    byte_vocabulary,
    marked,
    splice_counted,
)
from structgen.constraint.compiler import ConstraintCompiler
from structgen.constraint.counted import with_placeholders
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.schema import schema_to_regex
from structgen.schema.layout import STRING_CHAR

VOCABULARY = byte_vocabulary()


def build(regex: str) -> dict:
    return arrays_from_index(Index(marked(regex), VOCABULARY))


CHARACTER = build(STRING_CHAR)


def spliced(regex: str, min_count: int = 2) -> ByteAutomaton | None:
    replaced, kinds = with_placeholders(regex, min_count)
    if not kinds:
        return None
    arrays = splice_counted(build(replaced), kinds, CHARACTER)
    return None if arrays is None else ByteAutomaton.from_arrays(arrays)


def accepts(automaton: ByteAutomaton, text: str) -> bool:
    state = automaton.step(automaton.initial, text.encode())
    return bool(state) and bool(automaton.is_final[state])


def string_schema(fewest: int, most: int | None) -> dict:
    schema = {"type": "string", "minLength": fewest}
    return schema if most is None else {**schema, "maxLength": most}


def test_only_long_counted_strings_are_replaced():
    long, short = repeat_string(0, 100), repeat_string(0, 10)
    replaced, kinds = with_placeholders(f"\\[{long},{short},{long}\\]")
    assert replaced == f"\\[\\x01,{short},\\x01\\]" and kinds == {1: (0, 100)}
    assert with_placeholders(repeat_string(70, None)) == ("\\x01", {1: (70, None)})
    assert with_placeholders(repeat_string(80, 80)) == ("\\x01", {1: (80, 80)})
    assert with_placeholders(short) == (short, {})
    assert with_placeholders(long + "?") == (long + "?", {})  # the quantifier binds to the quote


@pytest.mark.parametrize("elsewhere", [".", "[^a]", r"\s", "\\x01", "[\\x00-\\x1f]", r"\W"])
def test_no_placeholder_where_the_regex_could_match_its_byte(elsewhere):
    regex = f"{repeat_string(0, 100)}{elsewhere}"
    assert with_placeholders(regex) == (regex, {})


def repeat_string(fewest: int, most: int | None) -> str:
    return schema_to_regex(string_schema(fewest, most), whitespace="compact")


SURROUNDINGS = [
    lambda s: s,
    lambda s: {"type": "object", "properties": {"a": s, "b": {"type": "integer"}}, "required": ["a"]},
    lambda s: {"type": "array", "items": s, "maxItems": 3},
    lambda s: {"anyOf": [s, {"type": "null"}, {"type": "integer"}]},
    lambda s: {"type": "object", "properties": {"a": s, "b": {"type": "string", "maxLength": 4}}},
]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), fewest=st.integers(0, 6), span=st.one_of(st.none(), st.integers(0, 6)),
       around=st.sampled_from(range(len(SURROUNDINGS))),
       whitespace=st.sampled_from(["compact", "flexible"]))
def test_the_spliced_automaton_accepts_what_the_regex_does(data, fewest, span, around, whitespace):
    most = None if span is None else fewest + span
    assume(fewest >= 2 if most is None else most >= 2)  # written with {..}, not ?, * or +
    schema = SURROUNDINGS[around](string_schema(fewest, most))
    regex = schema_to_regex(schema, whitespace=whitespace)
    automaton = spliced(regex)
    assert automaton is not None
    for _ in range(5):
        text = data.draw(st.from_regex(regex, fullmatch=True))
        assert accepts(automaton, text), text
        # near misses: a character more or fewer, wherever it falls
        cut = data.draw(st.integers(0, max(len(text) - 1, 0)))
        for miss in (text[:cut] + text[cut + 1:], text[:cut] + "x" + text[cut:],
                     text[:cut] + "é" + text[cut:], text[:cut] + '"' + text[cut:]):
            assert accepts(automaton, miss) == bool(re.fullmatch(regex, miss)), miss


def test_a_state_that_could_open_two_things_with_a_quote_is_not_spliced():
    schema = {"anyOf": [{"type": "string", "maxLength": 100}, {"enum": ["x"]}]}
    regex = schema_to_regex(schema, whitespace="compact")
    replaced, kinds = with_placeholders(regex)
    assert kinds  # found, but the quote would be ambiguous
    assert splice_counted(build(replaced), kinds, CHARACTER) is None


def test_a_splice_past_its_size_bound_is_refused():
    regex = repeat_string(0, 1000)
    replaced, kinds = with_placeholders(regex)
    assert splice_counted(build(replaced), kinds, CHARACTER, max_cells=10_000) is None
    assert splice_counted(build(replaced), kinds, CHARACTER) is not None


@pytest.fixture(scope="module")
def info(smollm2_tokenizer):
    return TokenizerInfo.from_huggingface(smollm2_tokenizer)


def test_a_long_string_compiles_fast_and_keeps_its_length(info, smollm2_tokenizer):
    """maxLength 2,000 took seconds to determinise, a top-level maxLength 100 string far longer
    than the 10 s timeout given here; spliced, both compile and still stop at their length."""
    schema = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 2000}},
              "required": ["note"]}
    compiler = ConstraintCompiler(disk_cache=False, timeout=10)  # else CompileTimeoutError
    try:
        constraint = compiler.compile_regex(schema_to_regex(schema, whitespace="compact"), info)
        top = compiler.compile_regex(repeat_string(0, 100), info)
    finally:
        compiler.close()
    assert constraint.engine == top.engine == "outlines-core"
    for length, ok in ((2000, True), (2001, False)):
        matcher = constraint.matcher()
        text = '{"note":"' + "é" + "a" * (length - 1) + '"}'
        ids = smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert (all(matcher.advance(t) for t in ids) and matcher.is_accepting()) == ok, length
    assert accepts(top.automaton, '"' + "x" * 100 + '"')
    assert not accepts(top.automaton, '"' + "x" * 101 + '"')
