"""Repeated groups built once and spliced in (constraint/repeated.py).

The spliced automaton must be the plain build's language exactly: checked by walking both
automata in step over every byte from every pair of states they reach together (a product
search), on schemas whose regexes repeat groups, with the splice done, and on regexes where a
splice would not be deterministic (then the plain build must be what comes back)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from structgen.constraint import repeated
from structgen.constraint.automaton import (
    UNREACHABLE,
    ByteAutomaton,
    build_arrays,
    table_distances,
)
from structgen.constraint.counted import PLACEHOLDERS
from structgen.constraint.repeated import (
    build_sharing,
    build_with_shared_groups,
    free_bytes,
    group_spans,
    repeated_groups,
)
from structgen.schema import schema_to_regex


def no_dead_ends(arrays: dict) -> bool:
    """Whether every transition leads to a state from which an accepting one is reachable (what
    the masks rely on: a token allowed is a token that can still be completed)."""
    table = arrays["table"]
    reachable = table_distances(table, arrays["is_final"]) < UNREACHABLE
    return bool(reachable[table[table != 0]].all())


def same_language(a: dict, b: dict) -> bool:
    """Whether two automata accept the same byte strings: every pair of states reached by one
    input agrees on acceptance and on which bytes lead on."""
    first, second = ByteAutomaton.from_arrays(a), ByteAutomaton.from_arrays(b)
    return first.first_difference(second, distances=False) is None


ITEM = {"type": "object", "properties": {
    "name": {"type": "string"}, "size": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}},
    "where": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}},
}}
SCHEMAS = {
    # a map's member is written before and after each comma
    "map of objects": {"type": "object", "additionalProperties": ITEM},
    # a $ref used in several properties, with different continuations
    "shared definition": {"type": "object", "$defs": {"item": ITEM}, "properties": {
        "first": {"$ref": "#/$defs/item"}, "second": {"$ref": "#/$defs/item"},
        "all": {"type": "array", "items": {"$ref": "#/$defs/item"}}}, "required": ["first"]},
    # free values: arrays and objects nest, each level written several times
    "free values": {"type": "object", "properties": {"a": {}, "b": {"type": "array"}}},
}


@pytest.fixture(params=["python", "compiled"])
def loops(request, compiled_loops):
    """How the regex is read: in Python (the compile worker), or by the compiled loops (builds
    in the parent)."""
    return None if request.param == "python" else compiled_loops.automaton


@pytest.fixture
def small_thresholds(monkeypatch):
    """Groups and regexes of test size count as long."""
    monkeypatch.setattr(repeated, "MIN_REGEX", 256)
    monkeypatch.setattr(repeated, "MIN_GROUP", 64)


@pytest.mark.parametrize("whitespace", ["compact", "flexible"])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_shared_groups_keep_the_language_and_shrink_the_automaton(name, whitespace,
                                                                   small_thresholds, loops):
    regex = schema_to_regex(SCHEMAS[name], whitespace=whitespace)
    assert repeated_groups(regex), "the schema should repeat a group"
    plain = build_arrays(regex)
    shared = build_sharing(regex, build_arrays, free_bytes(regex, list(PLACEHOLDERS)),
                           loops=loops)
    assert shared is not None, "every splice here is deterministic"
    assert len(shared["table"]) < len(plain["table"])
    assert same_language(plain, shared) and no_dead_ends(shared)
    automaton = ByteAutomaton.from_arrays(shared)
    document = {"first": {"name": "a", "tags": ["red"], "where": {"x": 1.5}},
                "a": [1, {"b": None}], "k": {"size": 3}}
    text = json.dumps(document, separators=(",", ":") if whitespace == "compact" else None)
    assert automaton.accepts(text.encode()) == ByteAutomaton.from_arrays(plain).accepts(
        text.encode())


def test_a_splice_that_would_not_be_deterministic_is_refused(small_thresholds, loops):
    """The group ``\\{"a":1...\\}`` is entered where ``\\{"b"`` also starts: splicing it would
    need determinising, so the group is written out again and the regex built as it is."""
    group = r'\{"a":1' + "0" * 80 + r"\}"
    regex = f"\\[(?:{group}|\\{{\"b\":2\\}})(?:,{group})*\\]" + "x" * 300
    assert repeated_groups(regex)
    built = []

    def recording(text: str) -> dict:
        built.append(text)
        return build_arrays(text)

    arrays = build_sharing(regex, recording, free_bytes(regex, list(PLACEHOLDERS)), loops=loops)
    assert built[-1] == regex  # the last build: nothing left to share
    assert same_language(arrays, build_arrays(regex))


@pytest.mark.parametrize("whitespace", ["compact", "flexible"])
def test_the_compiled_splices_write_the_arrays_numpy_writes(compiled_loops, small_thresholds,
                                                            whitespace):
    """Class refinement and splices by the compiled loops (builds in the parent) and by numpy
    (the compile worker): the same arrays, refused splices and rebuilds included."""
    from structgen.schema.layout import STRING_CHAR

    refused = r'\{"a":1' + "0" * 80 + r"\}"
    regexes = [schema_to_regex(schema, whitespace=whitespace) for schema in SCHEMAS.values()]
    regexes.append(f"\\[(?:{refused}|\\{{\"b\":2\\}})(?:,{refused})*\\]" + "x" * 300)
    going_on = "(?:a" + "b" * 70 + "c*)"  # accepting copies take on the target's transitions
    regexes.append(f"\\[{going_on}(?:,{going_on})*\\]" + "x" * 300)
    for regex in regexes:
        placeholders = free_bytes(regex, list(PLACEHOLDERS))
        by_numpy = build_sharing(regex, build_arrays, placeholders, {}, frozenset([STRING_CHAR]))
        compiled = build_sharing(regex, build_arrays, placeholders, {}, frozenset([STRING_CHAR]),
                                 compiled_loops.automaton)
        assert by_numpy.keys() == compiled.keys()
        for name in by_numpy:
            assert np.array_equal(by_numpy[name], compiled[name]), (regex[:80], name)
            assert np.asarray(by_numpy[name]).dtype == np.asarray(compiled[name]).dtype


def test_a_group_followed_by_a_quantifier_or_with_its_own_bar_is_not_cut_out(small_thresholds, loops):
    body = '"k":' + "1" * 80
    quantified = f"\\{{{body}\\}}?"  # the ? binds to the closing brace only
    assert repeated_groups(f"{quantified},{quantified}", loops=loops) == []
    barred = f"\\{{{body}|2\\}}"  # the bar splits the text, not a group of its own
    assert repeated_groups(f"{barred},{barred}", loops=loops) == []
    assert repeated_groups(f"(?:{barred}),(?:{barred})", loops=loops) == [  # the groups around them are
        (0, len(barred) + 4), (len(barred) + 5, 2 * len(barred) + 9)]
    whole = f"\\{{{body}\\}}"
    assert repeated_groups(f"{whole},{whole}", loops=loops) == [(0, len(whole)),
                                                          (len(whole) + 1, 2 * len(whole) + 1)]


def test_short_regexes_are_built_as_they_are():
    regex = schema_to_regex({"type": "array", "items": {"type": "integer"}})
    assert len(regex) < repeated.MIN_REGEX
    assert np.array_equal(build_with_shared_groups(regex, build_arrays)["table"],
                          build_arrays(regex)["table"])


def test_free_bytes_are_those_nothing_in_the_regex_can_match():
    candidates = list(PLACEHOLDERS)
    json_string = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt])*"'
    assert free_bytes(json_string, candidates) == candidates
    free = free_bytes(r"a\x05b[\x01-\x03]\u0006\07", candidates)
    assert not {1, 2, 3, 5, 6, 7} & set(free) and 4 in free
    assert free_bytes("a\x02", candidates)[:2] == [1, 3]  # a raw control character
    for anything in ("a.b", "(?i)ab", r"\s", "[^a]", r"(a)\1", "(?=a)"):
        assert free_bytes(anything, candidates) == [], anything
    assert free_bytes(r"\d\w\.\b[a-z]", candidates) == candidates


def test_the_compile_worker_splices_groups_and_counted_strings_together():
    """The worker's path: long counted strings become placeholders first, then the repeated
    groups around them are shared; the result is still the plain regex's language."""
    from structgen.constraint._worker import CompileWorker
    from structgen.schema.layout import STRING_CHAR

    item = {"type": "object", "properties": {
        "label": {"type": "string", "maxLength": 100},
        "where": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}}}}
    books = {"type": "object", "additionalProperties": item}
    regex = schema_to_regex({"type": "object", "properties": {"old": books, "new": books}},
                            whitespace="flexible")
    assert len(regex) >= repeated.MIN_REGEX and repeated_groups(regex)
    worker = CompileWorker(2 << 30)
    try:
        status, arrays = worker.compile(regex, 60.0, character=STRING_CHAR)
    finally:
        worker.stop()
    assert status == "ok" and not len(arrays["counters"])
    plain = build_arrays(regex)
    assert len(arrays["table"]) < len(plain["table"])
    assert same_language(plain, {name: arrays[name] for name in plain}) and no_dead_ends(arrays)


def test_group_automata_are_kept_between_compiles():
    """A group determinised for one regex is spliced into the next one without a build of its
    own, and the next regex keeps its plain language; past their cells the oldest go first."""
    from structgen.constraint.automaton_builder import GroupAutomata

    books = {"type": "object", "additionalProperties": ITEM}
    first = schema_to_regex({"type": "object", "properties": {"old": books, "new": books}},
                            whitespace="flexible")
    second = schema_to_regex({"type": "array", "items": books}, whitespace="flexible")
    known = GroupAutomata()
    build_with_shared_groups(first, build_arrays, (), None, known)
    before = set(known)
    built = []

    def recording(text: str) -> dict:
        built.append(text)
        return build_arrays(text)

    arrays = build_with_shared_groups(second, recording, (), None, known)
    assert before & {second[start:end] for start, end in repeated_groups(second)}
    assert not before & set(built)
    assert same_language(arrays, build_arrays(second)) and no_dead_ends(arrays)

    kept = GroupAutomata(max_cells=100)
    for text, cells in (("a", 60), ("b", None), ("c", 30), ("d", 50)):
        kept[text] = None if cells is None else {"table": np.zeros((cells, 1), np.int32)}
    kept.trim()
    assert list(kept) == ["b", "c", "d"] and kept.cells == 80
    kept["c"] = {"table": np.zeros((70, 1), np.int32)}  # replaced: counted once, now the newest
    kept.trim()
    assert list(kept) == ["c"] and kept.cells == 70


def test_string_characters_are_determinised_once():
    """Each JSON string's character (a large Unicode class) is a placeholder in what
    outlines-core builds; the character's automaton is spliced in per place."""
    from structgen.schema.layout import STRING_CHAR

    regex = schema_to_regex({"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "array", "items": {"type": "string"}}}},
        whitespace="compact")
    built = []

    def recording(text: str) -> dict:
        built.append(text)
        return build_arrays(text)

    arrays = build_with_shared_groups(regex, recording, (), STRING_CHAR, {})
    assert built.count(STRING_CHAR) == 1 and all(STRING_CHAR not in text for text in built
                                                 if text != STRING_CHAR)
    assert same_language(arrays, build_arrays(regex)) and no_dead_ends(arrays)
    # a character leads from inside a string back to the same state, as outlines-core's own
    # automaton has it (the mask walker places a loop's tokens without stepping them)
    automaton = ByteAutomaton.from_arrays(arrays)
    inside = automaton.step(automaton.initial, b'{"a":"')
    assert inside and all(automaton.step(inside, character.encode()) == inside
                          for character in ("x", "é", "\\n", "\\u00e9", "😀"))


def test_a_refused_group_is_written_out_and_the_others_still_shared(small_thresholds, loops):
    """Where a string also starts an enum's "abc", its character cannot be spliced; the skeleton
    is rebuilt with the character written out, and the repeated object is still shared."""
    from structgen.schema.layout import STRING_CHAR

    item = {"type": "object", "properties": {"n": {"type": "integer"}, "m": {"type": "boolean"},
                                             "k": {"type": "number"}}}
    regex = schema_to_regex({"type": "object", "properties": {
        "s": {"anyOf": [{"type": "string"}, {"enum": ["abc", 1]}]},
        "x": item, "y": {"type": "array", "items": item}}})
    built = []

    def recording(text: str) -> dict:
        built.append(text)
        return build_arrays(text)

    shared = build_sharing(regex, recording, free_bytes(regex, list(PLACEHOLDERS)), {},
                           frozenset([STRING_CHAR]), loops)
    plain = build_arrays(regex)
    assert shared is not None and same_language(shared, plain) and no_dead_ends(shared)
    assert len(shared["table"]) < len(plain["table"])
    assert any(STRING_CHAR in text for text in built[1:])  # a rebuild wrote it out


def test_string_values_are_groups_and_quoted_literals_are_not(small_thresholds, loops):
    """A string value with a class in it is cut out where it repeats; a quoted literal (a
    member's key, an enum's value: its siblings start alike) is not; and a bar splits every
    brace or quote opened at its level, so a span it splits is never cut out."""
    value = '"[a-z]' + "x" * 80 + '"'
    assert repeated_groups(f"\\[{value},{value}\\]", loops=loops) == [(2, 2 + len(value)),
                                                       (3 + len(value), 3 + 2 * len(value))]
    literal = '"' + "k" * 80 + '"'
    assert repeated_groups(f"\\[{literal},{literal}\\]", loops=loops) == []
    split = '"[a-z]\\{' + "a" * 40 + "|" + "b" * 40 + '\\}"'  # the bar is at the quote's level
    assert repeated_groups(f"(?:{split}),(?:{split})", loops=loops) == [  # only the groups around them
        (0, len(split) + 4), (len(split) + 5, 2 * len(split) + 9)]
    assert repeated_groups(f"{split},{split}", loops=loops) == []


@pytest.mark.parametrize("tail", ["x" * 5000, "[^a]" * 1000 + "\\d" * 1000, "[" + "y" * 3000])
def test_the_group_scan_steps_over_long_stretches_without_tokens(small_thresholds, tail, loops):
    """Classes, escapes and plain characters between tokens, however many, are stepped over once
    (a nested quantifier once made a token-free tail cost 2^n tries); an unclosed ``[`` is a
    plain character, as the regex parser would refuse it anyway."""
    group = "(?:" + "a" * 80 + "|b)"
    regex = f"{group}c{group}{tail}"
    spans = repeated_groups(regex, loops=loops)
    assert [regex[start:end] for start, end in spans] == [group, group]


def tokens_one_by_one(regex: str) -> tuple[list[int], list[int], list[int]]:
    """What the group scan's tokens are, read one character at a time: a backslash and the
    character after it are one step (a token where that is a brace or bracket), a closed class
    is one step, an unclosed ``[`` is a plain character."""
    kinds: tuple[list[int], list[int], list[int]] = ([], [], [])
    escaped_kind = {"{": repeated._OBJECT, "[": repeated._ARRAY, "}": repeated._OBJECT_END,
                    "]": repeated._ARRAY_END}
    plain_kind = {"|": repeated._BAR, ")": repeated._CLOSE, '"': repeated._QUOTE}
    at = 0
    while at < len(regex):
        char, kind, length = regex[at], None, 1
        if char == "\\":
            kind, length = escaped_kind.get(regex[at + 1:at + 2]), 2
        elif char == "[":
            end = at + 1 + regex.startswith("^", at + 1)
            end += regex.startswith("]", end)
            while end < len(regex) and regex[end] != "]":
                end += 2 if regex[end] == "\\" else 1
            if end < len(regex):
                length = end + 1 - at
        elif char == "(":
            kind, length = ((repeated._GROUP, 3) if regex.startswith("?:", at + 1)
                            else (repeated._CAPTURE, 1))
        else:
            kind = plain_kind.get(char)
        if kind is not None:
            kinds[0].append(kind)
            kinds[1].append(at)
            kinds[2].append(at + (2 if char == "\\" else length))
        at += length
    return kinds


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='\\[]()|"{}^?:aé', max_size=40))
def test_the_scans_tokens_are_those_read_one_character_at_a_time(regex):
    """Escapes (runs of backslashes), classes (with ``]`` or ``^]`` first, escapes inside, a
    ``[`` inside, none closed), ``(?:`` beside a non-ASCII character: the tokens the regex
    engine's scan finds (short texts) and those found in numpy (long ones) are those a reading
    one character at a time finds."""
    expected = tokens_one_by_one(regex)
    assert repeated._tokens(regex) == expected
    assert repeated._tokens_in_numpy(regex) == expected
    long_text = regex + "a" * repeated.NUMPY_SCAN + regex
    assert repeated._tokens(long_text) == tokens_one_by_one(long_text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='\\[]()|"{}^?:*+aé', max_size=60), st.integers(1, 8),
       st.lists(st.integers(1, 8), max_size=2))
def test_the_compiled_group_scan_finds_the_spans_the_python_scan_does(compiled_loops, regex,
                                                                      min_group, also):
    """Over texts of the scan's own characters (escapes, classes closed or not, bars inside
    braces, quantifiers after a closing), with small lengths so that most groups count: the
    same spans, in the same order."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repeated, "MIN_GROUP", min_group)
        for text in (regex, regex + "a" * repeated.NUMPY_SCAN + regex):
            starts, ends = compiled_loops.automaton.group_spans(
                np.frombuffer(text.encode("utf-32-le"), np.uint32), min_group,
                np.array(also, np.int64))
            assert list(zip(starts.tolist(), ends.tolist())) == group_spans(text, tuple(also))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='()"{}[]|?:,ab\u00e9', max_size=80), st.integers(1, 6))
@example(regex="(?::ab)(?::ab)", min_group=1)  # groups that begin with a separator,
@example(regex="(?:,ab)(?:,ab)", min_group=1)
@example(regex="(?:[a]b)(?:[a]b)", min_group=1)  # a class,
@example(regex='(?:"ab")(?:"ab")', min_group=1)  # a quoted literal,
@example(regex='(?:"a\\"b")x(?:"a\\"b")', min_group=1)  # one with an escaped quote,
@example(regex='(?:"a(b")x(?:"a(b")', min_group=1)  # a string with a group in it,
@example(regex='(?:"a\\1")x(?:"a\\1")', min_group=1)  # or with an escaped code
@example(regex='"(?:ab)*","(?:ab){2,}"', min_group=9)  # a string's character, always counted
def test_repeated_groups_by_hashes_are_those_by_texts(compiled_loops, regex, min_group):
    """The compiled reading compares groups' texts by a hash of each (``span_hashes``); over
    texts with many short groups, most of them repeated or nearly so, it chooses the groups the
    Python reading chooses by comparing the texts, whatever is always or kept."""
    loops = compiled_loops.automaton
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repeated, "MIN_GROUP", min_group)
        spans = group_spans(regex)
        texts = sorted({regex[start:end] for start, end in spans})
        for always, kept in ((frozenset(), frozenset()), (frozenset(texts[:1]),
                                                          frozenset(texts[1:2]))):
            assert repeated_groups(regex, always, kept, loops) == \
                repeated_groups(regex, always, kept)


def test_a_short_group_always_counted_is_chosen_only_in_a_plain_string(compiled_loops, loops):
    """A string's character (``always``) shorter than ``MIN_GROUP`` is chosen where it is a
    plain string's repeated character, and left where anything else may stand beside it."""
    regex = '"(?:ab)*","(?:ab){2,}",(?:ab)"'
    assert repeated_groups(regex, frozenset(["(?:ab)"]), frozenset(), loops) == [(1, 7),
                                                                                 (11, 17)]
    assert repeated_groups(regex, frozenset(["(?:ab)"]), frozenset(["(?:ab)"]), loops) == []


def test_span_hashes_tell_texts_apart_and_equal_texts_alike(compiled_loops):
    text = "(?:ab)(?:ab)(?:ba)(?:\u00e9)(?:\u00e9)" * 3
    code_points = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    starts = np.arange(0, len(text) - 6, dtype=np.int64)
    ends = starts + 6
    hashes = compiled_loops.automaton.span_hashes(code_points, starts, ends).tolist()
    for i, j in itertools.combinations(range(len(starts)), 2):
        same_text = text[starts[i]:ends[i]] == text[starts[j]:ends[j]]
        assert (hashes[i] == hashes[j]) == same_text, (i, j)


@settings(max_examples=500, deadline=None)
@example('\\07')
@example('\\017x')
@example('\\x0b')
@example('\\x0')
@example('\\u000b')
@example('\\U0000000b')
@example('[\\x00-\\x1f]')
@example('[^a]')
@example('\\\x01')
@example('\x02')
@example('\\x02')
@example('(?i)a')
@example('a(?')
@example('(?:a)')
@example('[]a]')
@example('[^]')
@example('[]')
@example('\\1')
@example('\\8')
@example('\\q')
@example('[z-a]')
@example('a.b')
@example('\\b')
@example('\\d\\s')
@example('[\\a]')
@example('\\')
@example('[a\\')
@given(st.text(alphabet=list('\\[]^-(?:.)xuU0179aAfFbsSdDwWz é') + ["\x01", "\x02", "\x0b"],
               max_size=30))
def test_the_compiled_reading_finds_the_free_bytes_the_regex_reading_does(compiled_loops, regex):
    """Classes (``]`` first, escapes, ranges, negations, unclosed), escapes of codes, octal
    digits, back-references, categories and punctuation, written placeholders, dots, inline
    flags: the compiled pass and ``re``'s reading leave the same bytes free."""
    for candidates in (list(PLACEHOLDERS), [1, 2, 11]):
        assert free_bytes(regex, candidates, compiled_loops.automaton) == \
            free_bytes(regex, candidates), candidates


@pytest.mark.parametrize("strings", [3, 8])
def test_the_string_character_is_shared_from_the_builders_threshold(strings):
    """A builder that shares the string character from 8 places determinises a regex with 3
    whole (one determinisation, the character inside), and splices it into one with 8; both
    are the regex's language."""
    from structgen.constraint.automaton_builder import AutomatonBuilder
    from structgen.schema.layout import STRING_CHAR

    names = [f"k{i}" for i in range(strings)]
    regex = schema_to_regex({"type": "object", "required": names,
                             "properties": {name: {"type": "string"} for name in names}},
                            whitespace="compact")
    assert regex.count(STRING_CHAR) == strings
    built = []

    def recording(text: str) -> dict:
        built.append(text)
        return build_arrays(text)

    arrays = AutomatonBuilder(recording, share_character_from=8).build(regex, STRING_CHAR)
    whole = [text for text in built if text != STRING_CHAR]
    if strings < 8:
        assert whole == [regex]
    else:
        assert all(STRING_CHAR not in text for text in whole) and len(whole) == 1
    assert same_language(arrays, build_arrays(regex)) and no_dead_ends(arrays)
