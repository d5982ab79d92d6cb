"""structgen's own determinisation (``regex_nfa`` + ``compiled_automaton``) against outlines-core.

``automaton.determinized_arrays`` must give the automaton ``automaton.build_arrays`` gives (an
outlines-core ``Index`` over the 256 single bytes): the same language, the same accepting
states and the same distances to acceptance from every reachable state, for random regexes of
the schema compiler's dialect and for the real schemas of the MaskBench fixtures. The UTF-8
split is checked code point by code point, and the fallbacks (syntax outside the dialect, a
build past its bounds) are checked to reach the compile worker.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structgen.constraint import compiler as compiler_module
from structgen.constraint.automaton import (
    BuildTooLarge,
    ByteAutomaton,
    build_arrays,
    compiled_distances,
    determinized_arrays,
    table_distances,
)
from structgen.constraint.automaton_builder import AutomatonBuilder
from structgen.constraint.compiled_regex import MAX_NFA_STATES, utf8_sequences
from structgen.constraint.regex_nfa import RegexNFA, UnsupportedRegex
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.schema import schema_to_regex
from structgen.schema.layout import STRING_CHAR

FIXTURES = Path(__file__).parent / "fixtures" / "maskbench"


@pytest.fixture(scope="module")
def loops(compiled_loops):
    return compiled_loops.automaton


def same_automaton(a: dict, b: dict) -> str | None:
    """None where the two builds' arrays form automata (checked) that agree on every input:
    acceptance, which bytes lead on, and the distance to acceptance; else where they differ."""
    return ByteAutomaton.from_arrays(a).first_difference(ByteAutomaton.from_arrays(b))


# Random regexes of the dialect ``regex_text`` writes: literal text and escapes, classes (ASCII
# and beyond, negated or not), groups, alternations and every quantifier.
# Bytes 0x00 and 0x1f are outlines-core's marks (``automaton.marked``): no regex structgen
# writes matches them, and outlines-core's automaton of one that does is not that regex's.
_CODES = st.one_of(st.integers(0x20, 0x7E), st.integers(0x20, 0x10FFFF).filter(
                       lambda c: not 0xD800 <= c <= 0xDFFF),
                   st.sampled_from([0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFF, 0x10000]))


def _escaped(code: int) -> str:
    char = chr(code)
    if char in "\\.^$|?*+()[]{}-":
        return "\\" + char
    if 0x20 <= code <= 0x7E:
        return char
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000
                                                    else f"\\U{code:08x}")


@st.composite
def _class(draw) -> str:
    items = []
    for low, width in draw(st.lists(st.tuples(_CODES, st.integers(0, 300)), min_size=1,
                                    max_size=3)):
        high = min(low + width, 0x10FFFF)
        if 0xD800 <= high <= 0xDFFF:  # an end in the surrogates: no character
            high = 0xE000
        items.append(_escaped(low) if high == low else f"{_escaped(low)}-{_escaped(high)}")
    if draw(st.booleans()):
        return "[^\\x00\\x1f" + "".join(items) + "]"
    return "[" + "".join(items) + "]"


_ATOMS = st.one_of(
    st.text(st.sampled_from('ab{}":, \\'), min_size=1, max_size=4).map(
        lambda t: "".join(_escaped(ord(c)) for c in t)),
    _CODES.map(_escaped),
    st.text(st.sampled_from("aé€\U0001d11e"), min_size=1, max_size=3),  # raw, beyond ASCII
    _class(),
)
_QUANTIFIERS = st.sampled_from(["", "", "*", "+", "?", "{2}", "{0,3}", "{1,}", "{2,4}"])


def _regexes():
    return st.recursive(
        st.tuples(_ATOMS, _QUANTIFIERS).map("".join),
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map("".join),
            st.tuples(st.lists(inner, min_size=2, max_size=3).map("|".join),
                      _QUANTIFIERS).map(lambda t: f"(?:{t[0]}){t[1]}"),
        ),
        max_leaves=8,
    )


@settings(max_examples=150, deadline=None)
@given(_regexes())
def test_random_regexes_determinise_as_outlines_core_does(loops, regex):
    assert same_automaton(build_arrays(regex), determinized_arrays(regex, loops)) is None, regex


@settings(max_examples=80, deadline=None)
@given(st.lists(_class(), min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, 2), _QUANTIFIERS, st.booleans()), min_size=2,
                max_size=8))
def test_recurring_class_texts_determinise_as_outlines_core_does(loops, pool, picks):
    """A class written again is taken from its first parse (by its text): the same texts over
    and over, in sequence and in alternatives, as long regexes write them."""
    regex = ""
    for pick, quantifier, alternative in picks:
        regex += ("|" if alternative and regex else "") + pool[pick % len(pool)] + quantifier
    assert same_automaton(build_arrays(regex), determinized_arrays(regex, loops)) is None, regex


@pytest.mark.parametrize("regex", [
    "", "a", "(?:)", "(?:a*)*", "(?:|a)+b", "x\\x1fy|z", "\\u00e9{3}",
    "caf\u00e9+", "\u00e9\u20ac{2}",  # raw characters beyond ASCII: the quantifier takes one
    "[\\ud7ff-\\ue000]", "\\{\\}\\[\\]\\.",
    "(?:(?:)(?:)(?:)(?:)(?:))x(?:(?:)(?:)(?:)(?:)(?:))y",  # a recurring group that is empty
    "(?:(?:abc|defgh)+|ijklmnop)?,(?:(?:abc|defgh)+|ijklmnop)?;",  # one that may be
    # a class's text again, the same class in other words, a longer text that starts alike
    "[ab]x[ab]|[ba]y[ab\\]]z[ab]*[^\\x00\\x1fab]w[^\\x00\\x1fab]+[a-b]",
])
def test_edge_cases_determinise_as_outlines_core_does(loops, regex):
    """Empty texts, loops of empty groups, the marks' bytes, the surrogate gap, recurring
    groups that match nothing or may."""
    assert same_automaton(build_arrays(regex), determinized_arrays(regex, loops)) is None


def test_bytes_the_marks_share_their_sets_with_are_kept(loops):
    """The marks' bytes (0x00, 0x1f) are cut out of every automaton, so each has a column of
    its own: bytes that every set takes alike share a column otherwise, and "[^a]" takes 0x01
    as it takes 0x00."""
    for regex in ("[^a]b", ".b"):
        automaton = ByteAutomaton.from_arrays(determinized_arrays(regex, loops))
        assert automaton.accepts(b"\x01b") and automaton.accepts(b"zb"), regex
        assert not automaton.accepts(b"\x00b") and not automaton.accepts(b"\x1fb"), regex


def test_a_regex_that_matches_nothing_is_left_to_outlines_core_and_a_dead_branch_is_pruned(loops):
    """outlines-core refuses a regex with a state that takes no byte; structgen hands one that
    matches nothing at all back (the worker then reports it) and drops a branch that cannot
    go on, where outlines-core refuses the whole regex."""
    for regex in ("[^\\x00-\\U0010ffff]", "a[^\\x00-\\U0010ffff]|b"):
        with pytest.raises(ValueError):
            build_arrays(regex)
    with pytest.raises(UnsupportedRegex):
        determinized_arrays("[^\\x00-\\U0010ffff]", loops)
    pruned = determinized_arrays("a[^\\x00-\\U0010ffff]|b", loops)
    assert same_automaton(build_arrays("b"), pruned) is None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(0, 0x10FFFF), st.sampled_from([0xD7FF, 0xD800, 0xDFFF, 0xE000])),
       st.one_of(st.integers(0, 0x3000), st.integers(0, 3)))
def test_utf8_sequences_match_exactly_the_encodings_of_the_range(low, width):
    """Each code point of the range matches one sequence, once; none outside it does, and no
    surrogate (which UTF-8 cannot hold) ever does."""
    high = min(low + width, 0x10FFFF)
    lengths, first, last = utf8_sequences(np.array([low]), np.array([high]))
    sequences = [list(zip(first[k, :n], last[k, :n])) for k, n in enumerate(lengths)]
    probes = {low, high, low - 1, high + 1, (low + high) // 2, 0xD7FF, 0xD800, 0xDFFF, 0xE000,
              0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000}
    for code in sorted(c for c in probes if 0 <= c <= 0x10FFFF):
        encoded = chr(code).encode("utf-8", "surrogatepass")
        matches = sum(len(s) == len(encoded) and all(lo <= b <= hi for b, (lo, hi) in
                                                     zip(encoded, s)) for s in sequences)
        expected = low <= code <= high and not 0xD800 <= code <= 0xDFFF
        assert matches == int(expected), hex(code)


def test_the_maskbench_fixtures_build_the_same_automata(loops):
    """Every fixture schema's regex (flexible whitespace), through the builder (counted strings
    and shared groups spliced) as the compile worker runs it and as the compiler runs it here."""
    by_index = AutomatonBuilder(build_arrays)
    by_structgen = AutomatonBuilder(functools.partial(determinized_arrays, loops=loops), loops)
    compared = 0
    for path in sorted(FIXTURES.glob("*.json")):
        try:
            regex = schema_to_regex(json.loads(path.read_text())["schema"], whitespace="flexible")
        except Exception:  # refused by the schema compiler: llguidance's, not ours
            continue
        if len(regex) > 200_000:  # outlines-core takes seconds on these
            continue
        expected = by_index.build(regex, STRING_CHAR)
        assert same_automaton(expected, by_structgen.build(regex, STRING_CHAR)) is None, path.name
        compared += 1
    assert compared >= 30


@pytest.mark.parametrize("regex", ["^a", "a$", "\\d", "\\w+", "(?=a)a", "(a)\\1", "a{", "[a",
                                   "(?:a", "a)", "*a", "(?P<x>a)", "a{3,1}", "\\ud800",
                                   "[\\udfff-\\ue000]"])
def test_syntax_outside_the_dialect_is_refused(loops, regex):
    with pytest.raises(UnsupportedRegex):
        RegexNFA.from_regex(regex, loops)


def test_a_build_past_its_bounds_stops(loops):
    for regex in ("(?:(?:ab){1000}){%d}" % (MAX_NFA_STATES // 1000),
                  "a{18446744073709551617}", "a{1,18446744073709551617}"):  # (2**64 + 1: no wrap)
        with pytest.raises(BuildTooLarge):  # its NFA alone: refused before a state is written
            determinized_arrays(regex, loops)
    regex = "(?:a|b)*a(?:a|b){12}"  # 2**13 states: determinisation blows up
    with pytest.raises(BuildTooLarge):
        determinized_arrays(regex, loops, max_states=1000)
    with pytest.raises(BuildTooLarge):
        determinized_arrays(regex, loops, max_work=10_000)
    assert len(determinized_arrays(regex, loops)["table"]) > 8192


def test_the_compiler_builds_here_and_falls_back_to_the_worker(loops, monkeypatch, tmp_path,
                                                                 smollm2_tokenizer):
    """With the loops loaded, a regex is determinised in this process; one outside the dialect,
    past the bounds on states or past the time a build here may take is built by the compile
    worker; all make working constraints."""
    monkeypatch.setenv("STRUCTGEN_CACHE", str(tmp_path))
    compiler = compiler_module.ConstraintCompiler(disk_cache=False)
    info = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    sent = []
    original = compiler._worker.compile
    monkeypatch.setattr(compiler._worker, "compile",
                        lambda regex, *args: sent.append(regex) or original(regex, *args))
    try:
        here = compiler.compile_regex('\\{"a":[0-9]{1,3}\\}', info)
        assert sent == [] and here.engine == "outlines-core"
        outside = compiler.compile_regex("\\d+", info)  # \d: not in the dialect
        assert sent == ["\\d+"] and outside.automaton.accepts(b"42")
        monkeypatch.setattr(compiler_module, "MAX_STATES", 4)
        large = compiler.compile_regex("(?:ab|cd){1,6}", info)
        assert sent[-1] == "(?:ab|cd){1,6}" and large.automaton.accepts(b"abcd")
        monkeypatch.setattr(compiler_module, "MAX_STATES", 1 << 17)
        monkeypatch.setattr(compiler_module, "BUILD_HERE_SECONDS", 0.0)  # out of time at once
        late = compiler.compile_regex("[a-f]{2,3}", info)
        assert sent[-1] == "[a-f]{2,3}" and late.automaton.accepts(b"abc")
        assert here.automaton.accepts(b'{"a":123}') and not here.automaton.accepts(b'{"a":1234}')
    finally:
        compiler._worker.stop()


def test_dialect_covers_what_the_schema_compiler_writes(loops):
    """Every construct ``regex_text`` writes parses: a regex of each kind of schema."""
    schema = {"type": "object", "properties": {
        "s": {"type": "string", "pattern": "^[a-z]+\\d{2}.$", "maxLength": 40},
        "e": {"enum": ["é", "\u2028", "x\"y"]}, "n": {"type": "number", "minimum": -5},
        "f": {"type": "string", "format": "date-time"}, "u": {"type": "string", "format": "uri"},
        "a": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}}}
    regex = schema_to_regex(schema, whitespace="flexible")
    assert re.search(r"\\u|\\x", regex)
    RegexNFA.from_regex(regex, loops)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_compiled_distances_equal_the_numpy_search(loops, states, columns, seed):
    """The distances a spliced table gets in this process equal the worker's numpy search."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, states + 1, (states + 1, columns)).astype(np.int32)
    table[0] = 0
    table[rng.random(table.shape) < 0.4] = 0
    is_final = rng.random(states + 1) < 0.2
    is_final[0] = False
    assert np.array_equal(compiled_distances(table, is_final, loops),
                          table_distances(table, is_final))
