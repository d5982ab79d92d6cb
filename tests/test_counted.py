"""Long counted strings spliced into the byte automaton (constraint/counted.py, automaton.py).

The spliced automaton must accept exactly what the regex does: checked against ``re.fullmatch``
on texts drawn from the regex and on near misses, for random bounds and surroundings."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import structgen
from structgen.constraint._worker import CompileWorker
from structgen.constraint.automaton import (
    COUNTER_LOOKAHEAD,
    ByteAutomaton,
    build_arrays,
    splice_counted,
)
from structgen.constraint.compiler import ConstraintCompiler
from structgen.constraint.counted import with_placeholders
from structgen.constraint.repeated import free_bytes
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.schema import schema_to_regex
from structgen.schema.layout import STRING_CHAR

CHARACTER = build_arrays(STRING_CHAR)


def spliced(regex: str, min_count: int = 2) -> ByteAutomaton | None:
    replaced, kinds = with_placeholders(regex, STRING_CHAR, min_count)
    if not kinds:
        return None
    arrays = splice_counted(build_arrays(replaced), kinds, CHARACTER)
    return None if arrays is None else ByteAutomaton.from_arrays(arrays)


def accepts(automaton: ByteAutomaton, text: str) -> bool:
    return automaton.accepts(text.encode())


def string_schema(fewest: int, most: int | None) -> dict:
    schema = {"type": "string", "minLength": fewest}
    return schema if most is None else {**schema, "maxLength": most}


@pytest.fixture(params=["python", "compiled"])
def free(request, compiled_loops):
    """How the placeholders are checked: the replaced regex read in Python (the compile worker),
    or the regex itself read by the compiled loops (builds in the parent)."""
    if request.param == "python":
        return None
    return functools.partial(free_bytes, loops=compiled_loops.automaton)


def test_only_long_counted_strings_are_replaced(free):
    long, short = repeat_string(0, 100), repeat_string(0, 10)
    replaced, kinds = with_placeholders(f"\\[{long},{short},{long}\\]", STRING_CHAR, free_bytes=free)
    assert replaced == f"\\[\\x01,{short},\\x01\\]" and kinds == {1: (0, 100)}
    assert with_placeholders(repeat_string(70, None), STRING_CHAR,
                             free_bytes=free) == ("\\x01", {1: (70, None)})
    assert with_placeholders(repeat_string(80, 80), STRING_CHAR,
                             free_bytes=free) == ("\\x01", {1: (80, 80)})
    two = f"\\[{repeat_string(0, 100)},{repeat_string(5, 90)}\\]"
    assert with_placeholders(two, STRING_CHAR, free_bytes=free)[1] == {1: (0, 100), 2: (5, 90)}
    assert with_placeholders(short, STRING_CHAR, free_bytes=free) == (short, {})
    # the quantifier binds to the quote
    assert with_placeholders(long + "?", STRING_CHAR, free_bytes=free) == (long + "?", {})


@pytest.mark.parametrize("elsewhere", [".", "[^a]", r"\s", "\\x01", "[\\x00-\\x1f]", r"\W",
                                       "\x01", "\\u0001", "a|[\\x01]", "\\x02(?:x)?"])
def test_no_placeholder_where_the_regex_could_match_its_byte(elsewhere, free):
    regex = f"{repeat_string(0, 100)}{repeat_string(3, 70)}{elsewhere}"
    assert with_placeholders(regex, STRING_CHAR, free_bytes=free) == (regex, {})


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
    replaced, kinds = with_placeholders(regex, STRING_CHAR)
    assert kinds  # found, but the quote would be ambiguous
    assert splice_counted(build_arrays(replaced), kinds, CHARACTER) is None


def test_a_splice_past_its_size_bound_is_refused():
    regex = repeat_string(0, 1000)
    replaced, kinds = with_placeholders(regex, STRING_CHAR)
    assert splice_counted(build_arrays(replaced), kinds, CHARACTER, max_cells=10_000) is None
    assert splice_counted(build_arrays(replaced), kinds, CHARACTER) is not None


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


#: JSON string characters of every shape: ASCII, 2-, 3- and 4-byte UTF-8, escapes.
CHARACTERS = ["a", " ", "é", "€", "𝄞", "\\n", '\\"', "\\u00e9"]
LOOP = 2 * COUNTER_LOOKAHEAD + 2  # the fewest characters past minLength that loop


@settings(max_examples=25, deadline=None)
@given(data=st.data(), fewest=st.sampled_from([0, 1, 3, 40]),
       extra=st.sampled_from([LOOP, LOOP + 7, 1000]))
def test_a_looping_counted_string_keeps_its_bounds(data, fewest, extra):
    """A string far longer than a token (its middle one looping copy and a counter) accepts
    exactly the lengths the regex does: around minLength, where the counter hands over to the
    last copies, and around maxLength, whatever characters make it up."""
    most = fewest + extra
    schema = {"type": "object", "properties": {"a": string_schema(fewest, most),
                                               "b": {"type": "integer"}}, "required": ["a"]}
    regex = schema_to_regex(schema, whitespace="compact")
    automaton = spliced(regex, min_count=64)
    assert automaton is not None and len(automaton.counters) == 1
    switch = int(automaton.counters[0, 3])
    assert switch == most - 2 * COUNTER_LOOKAHEAD
    lengths = {0, max(fewest - 1, 0), fewest, fewest + 1, switch - 1, switch, switch + 1,
               switch + COUNTER_LOOKAHEAD, most - 1, most, most + 1}
    for length in sorted(lengths):
        chars = data.draw(st.lists(st.sampled_from(CHARACTERS), min_size=length, max_size=length))
        tail = data.draw(st.sampled_from(["}", ',"b":7}']))
        text = '{"a":"' + "".join(chars) + '"' + tail
        assert accepts(automaton, text) == (fewest <= length <= most), length
        assert bool(re.fullmatch(regex, text)) == (fewest <= length <= most)


def test_a_looping_counted_string_is_masked_exactly_token_by_token(info, smollm2_tokenizer):
    """Generation's view: every token of a 1,500-character answer is in its step's mask
    (computed from the table alone, without the counter), the counter hands over to the last
    copies on the way, and one character more is refused at the end."""
    schema = {"type": "object", "properties": {"note": {"type": "string", "minLength": 2,
                                                        "maxLength": 1500}}, "required": ["note"]}
    compiler = ConstraintCompiler(disk_cache=False)
    try:
        constraint = compiler.compile_regex(schema_to_regex(schema, whitespace="compact"), info)
    finally:
        compiler.close()
    assert len(constraint.automaton.counters) == 1
    content = ('Ünïcode wörds and "escapes"\n 𝄞 ' * 60)[:1499]
    for extra, ok in (("a", True), ("ab", False)):
        matcher = constraint.matcher()
        text = json.dumps({"note": content + extra}, ensure_ascii=False, separators=(",", ":"))
        ids = smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
        taken = []
        for token in ids:
            if not (matcher.mask()[token] and matcher.advance(token)):
                break
            taken.append(matcher.count)
        else:
            assert ok and matcher.is_accepting()
            assert max(taken) > 0  # counted in the loop, then handed over
            continue
        assert not ok


def test_a_tokenizer_with_tokens_longer_than_the_lookahead_goes_to_llguidance():
    """The loop's masks are exact only for tokens of at most ``COUNTER_LOOKAHEAD`` characters:
    a vocabulary with a longer one gets llguidance for such a schema, and says why."""
    tokens = {b: bytes([b]) for b in range(256)}
    tokens[256] = b"x" * (COUNTER_LOOKAHEAD + 1)
    info = TokenizerInfo(token_bytes=tokens, eos_token_id=257, vocab_size=258)
    schema = {"type": "string", "maxLength": 2000}
    constraint = structgen.compile_constraint(schema, info, whitespace="compact")
    assert constraint.engine == "llguidance"
    assert f"tokens of {COUNTER_LOOKAHEAD + 1} bytes" in constraint.fallback_reason
    short = structgen.compile_constraint({"type": "string", "maxLength": 200}, info,
                                         whitespace="compact")
    assert short.engine == "outlines-core"  # no loop: every token length is exact


def test_counters_that_overlap_or_point_past_the_table_are_no_automaton():
    """``ByteAutomaton.from_arrays`` checks the loops' rows as it checks the table: in order,
    apart, and with their last copies inside the table (a cache file's lie is caught twice)."""
    arrays = splice_counted(*with_placeholders_built(repeat_string(0, 700)), CHARACTER)
    assert len(arrays["counters"]) == 1
    ByteAutomaton.from_arrays(arrays)
    twice = {**arrays, "counters": np.concatenate([arrays["counters"]] * 2)}
    past = {**arrays, "counters": arrays["counters"] + np.array([0, 0, 0, 0, len(arrays["table"])])}
    backwards = {**arrays, "counters": arrays["counters"][:, [1, 0, 2, 3, 4]]}
    for lie in (twice, past, backwards):
        with pytest.raises(ValueError):
            ByteAutomaton.from_arrays(lie)


def with_placeholders_built(regex: str) -> tuple[dict, dict]:
    replaced, kinds = with_placeholders(regex, STRING_CHAR)
    return build_arrays(replaced), kinds


def test_the_worker_finds_and_splices_long_strings_itself_without_the_schema_compiler():
    """The placeholder scan (``regex_nfa.literal_uses``) runs in the compile worker, inside the
    build's killable budget; the worker imports no schema compiler for it."""
    worker = CompileWorker(memory_limit=0)
    try:
        status, arrays = worker.compile(repeat_string(0, 700), 60, character=STRING_CHAR)
    finally:
        worker.stop()
    assert status == "ok" and len(arrays["counters"]) == 1
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, structgen.constraint._worker; "
         "print(sorted(m for m in sys.modules if m.startswith('structgen.schema')))"],
        capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"
