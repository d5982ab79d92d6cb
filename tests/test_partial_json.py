"""IncrementalJSONParser: JSON fed in chunks that split anything, shown as a partial value that is
never wrong for what it contains, at a cost linear in the text."""

import gc
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structgen.parsing.partial_json import IncrementalJSONParser, PartialJSONError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@st.composite
def split(draw, text):
    """``text`` cut into chunks the way tokens cut it: anywhere, or (often) every character."""
    if len(text) < 2 or draw(st.integers(0, 3)) == 0:
        return list(text) or [text]
    cuts = sorted(draw(st.sets(st.integers(1, len(text) - 1), max_size=len(text) // 2)))
    return [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)])]


@st.composite
def documents(draw):
    """A JSON document written one of the ways a model writes it, and its chunks."""
    value = draw(json_values)
    style = draw(st.sampled_from(["default", "indent", "compact"]))
    if style == "default":
        text = json.dumps(value)
    elif style == "indent":
        text = json.dumps(value, indent=2)
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=draw(st.booleans()))
    return text, draw(split(text))


def same(a, b):
    """Equal, and of the same JSON types (``==`` says True == 1 == 1.0)."""
    return json.dumps(a) == json.dumps(b)


def consistent(partial, final, open_strings, path=()):
    """Whether ``partial`` can still become ``final``: complete scalars equal, open strings are
    prefixes, keys exist, lists are prefixes, and only the last item or member may be incomplete."""
    if path in open_strings:
        return type(partial) is str and type(final) is str and final.startswith(partial)
    if type(partial) is not type(final):
        return False
    if type(partial) is list:
        if len(partial) > len(final):
            return False
        keys = range(len(partial))
    elif type(partial) is dict:
        if not partial.keys() <= final.keys():
            return False
        keys = list(partial)
    else:
        return same(partial, final)
    if not keys:
        return True
    *complete, last = keys
    return all(same(partial[key], final[key]) for key in complete) and consistent(
        partial[last], final[last], open_strings, path + (last,)
    )


def at(value, path):
    for key in path:
        value = value[key]
    return value


def parse(chunks):
    parser = IncrementalJSONParser()
    for chunk in chunks:
        parser.feed(chunk)
    parser.finish()
    return parser


# --- properties over random documents -----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(documents())
def test_the_whole_document_parses_like_json_loads(document):
    text, chunks = document
    parser = parse(chunks)
    assert parser.done
    assert parser.value == json.loads(text)
    assert same(parser.value, json.loads(text))
    assert parser.text == text
    assert parser.open_strings == set()


@settings(max_examples=150, deadline=None)
@given(documents())
def test_every_prefix_is_consistent_with_the_final_value(document):
    text, chunks = document
    final = json.loads(text)
    parser = IncrementalJSONParser()
    shown, was_done = parser.snapshot(), False
    for chunk in chunks:
        changed = parser.feed(chunk)
        value, open_strings = snapshot = parser.snapshot()
        assert len(open_strings) <= 1
        for path in open_strings:
            assert type(at(value, path)) is str
        if value is not None or parser.done:  # None before the root value shows anything
            assert consistent(value, final, open_strings), (parser.text, value)
        assert changed == (snapshot != shown or parser.done != was_done)
        shown, was_done = snapshot, parser.done


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")  # json.loads takes NaN and Infinity


_MUTATIONS = st.sampled_from(list('{}[]:,"\\ \n0123456789-+.eEtrufalsn\x01/bu\u00e9'))


@settings(max_examples=200, deadline=None)
@given(documents(), st.data())
def test_accepts_exactly_what_json_loads_accepts(document, data):
    """Corrupt a document by one edit: the parser must raise exactly when json.loads does."""
    text, _ = document
    at_ = data.draw(st.integers(0, len(text)))
    edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    char = data.draw(_MUTATIONS)
    rest = text[at_ + (edit != "insert") :]
    mutated = text[:at_] + ("" if edit == "delete" else char) + rest
    try:
        expected = json.loads(mutated, parse_constant=_not_json)
    except ValueError:
        with pytest.raises(PartialJSONError):
            parse(data.draw(split(mutated)))
    else:
        assert same(parse(data.draw(split(mutated))).value, expected)


# --- partial values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, shown",
    [
        ('{"a": 12', {}),
        ('{"a": 12,', {"a": 12}),
        ('{"a": 12 ', {"a": 12}),
        ('{"a": 12}', {"a": 12}),
        ("[1.", []),
        ("[1.5", []),
        ("[-", []),
        ("[1e", []),
        ("[1e-", []),
        ("[1e-5", []),
        ("[1e-5]", [1e-5]),
        ("[-0,", [0]),
        ("[tru", []),
        ("[true", [True]),
        ('{"a": nul', {}),
        ('{"a": null', {"a": None}),
        ('{"a', {}),
        ('{"a"', {}),
        ('{"a": ', {}),
        ('{"a": "', {"a": ""}),
        ('{"a": "x\\', {"a": "x"}),
        ('{"a": [', {"a": []}),
        ('{"a": [{"b": {', {"a": [{"b": {}}]}),
        ('[1, "x", {}, [], "y"', [1, "x", {}, [], "y"]),
    ],
)
def test_partial_value_shows_only_what_is_certain(text, shown):
    for chunks in ([text], list(text)):
        parser = IncrementalJSONParser()
        for chunk in chunks:
            parser.feed(chunk)
        assert same(parser.value, shown)
        assert parser.done == (text[-1] in "]}")


def test_a_root_number_ends_at_whitespace_or_finish():
    parser = IncrementalJSONParser()
    assert not parser.feed("12")
    assert parser.value is None and not parser.done
    assert parser.finish() == 12 and parser.done

    parser = IncrementalJSONParser()
    assert parser.feed("-1.5e3 ")
    assert parser.value == -1500.0 and parser.done
    parser.feed("\n\t ")
    assert parser.finish() == -1500.0


def test_open_strings_track_the_string_being_written():
    parser = IncrementalJSONParser()
    parser.feed('{"a": [1, {"b": "he')
    assert parser.snapshot() == ({"a": [1, {"b": "he"}]}, frozenset({("a", 1, "b")}))
    assert parser.feed("llo")
    assert parser.value == {"a": [1, {"b": "hello"}]}
    assert parser.feed('", "c')  # the string closed; a key in progress is neither shown nor open
    assert parser.open_strings == set()
    assert not parser.feed('": ')
    parser.feed('"')
    assert parser.open_strings == {("a", 1, "c")}

    root = IncrementalJSONParser()
    root.feed('"ab')
    assert (root.value, root.open_strings) == ("ab", {()})


def test_snapshot_is_a_copy():
    parser = IncrementalJSONParser()
    parser.feed('{"a": [1, "x')
    value, _ = parser.snapshot()
    parser.feed('y", 2]}')
    assert value == {"a": [1, "x"]}
    value["a"].append(3)
    assert parser.value == {"a": [1, "xy", 2]}


def test_deep_nesting_needs_no_recursion():
    depth = 50_000
    parser = IncrementalJSONParser()
    text = '{"a": [' * depth + '"x"' + "]}" * depth
    for start in range(0, len(text), 4096):
        parser.feed(text[start : start + 4096])
    assert parser.done
    value, _ = parser.snapshot()
    for _ in range(depth):
        value = value["a"][0]
    assert value == "x"


# --- strings, escapes, unicode -------------------------------------------------------------------


def test_an_escape_split_across_chunks_shows_only_when_complete():
    parser = IncrementalJSONParser()
    assert parser.feed('"\\u00')
    assert (parser.value, parser.open_strings) == ("", {()})
    assert not parser.feed("e")
    assert parser.feed('9"')
    assert (parser.value, parser.done) == ("\u00e9", True)


def test_a_surrogate_pair_shows_as_one_character():
    text = '["\\ud83d\\ude00!"]'
    parser = IncrementalJSONParser()
    seen = set()
    for char in text:
        parser.feed(char)
        seen.add(json.dumps(parser.value, ensure_ascii=False))
    assert seen == {"[]", '[""]', '["😀"]', '["😀!"]'}
    assert parser.value == ["\U0001f600!"]


@pytest.mark.parametrize(
    "text",
    [
        r'"\ud83d"',
        r'"\ud83dx"',
        r'"\ud83d\u0041"',
        r'"\ud83d\n"',
        r'"\ude00"',
        r'"\ud83d\ud83d\ude00"',
        r'"\"\\\/\b\f\n\r\t"',
        '"日本語 😀 \x7f"',
    ],
)
def test_escapes_and_lone_surrogates_decode_like_json_loads(text):
    assert parse([text]).value == json.loads(text)
    assert parse(list(text)).value == json.loads(text)


any_code_point = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()))


@settings(max_examples=100, deadline=None)
@given(any_code_point, st.booleans(), st.data())
def test_any_string_round_trips(string, ensure_ascii, data):
    """Every code point, lone surrogates included, written raw or escaped."""
    text = json.dumps([string], ensure_ascii=ensure_ascii)
    assert parse(data.draw(split(text))).value == [string]


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, offset",
    [
        ('{"a" 1}', 5),
        ("[1,,2]", 3),
        ("tru e", 3),
        ('"\x01"', 1),
        ('{"a":1}}', 7),
        ("01", 1),
        ("[01]", 2),
        ("[1,]", 3),
        ('{"a":1,}', 7),
        ("{,}", 1),
        ("{1: 2}", 1),
        ("[1 2]", 3),
        ('"\\x"', 2),
        ('"\\u12g4"', 5),
        ("NaN", 0),
        ("[.5]", 1),
        ("[1.e5]", 3),
        ("+1", 0),
        ("-a", 1),
        ("nullx", 4),
    ],
)
def test_invalid_json_raises_at_its_offset(text, offset):
    for chunks in ([text], list(text)):
        parser = IncrementalJSONParser()
        with pytest.raises(ValueError, match=f"at offset {offset}: expected ") as raised:
            for chunk in chunks:
                parser.feed(chunk)
        assert raised.value.offset == offset
        assert len(parser.text) == (offset + 1 if len(chunks) > 1 else len(text))  # not before
        with pytest.raises(PartialJSONError) as again:  # the parser stays failed
            parser.feed("1")
        assert again.value is raised.value


@pytest.mark.parametrize(
    "text", ["", "  ", "[", '{"a"', '{"a": 1', "[1.", "-", "1e+", '"ab', '"\\u00e', "tr"]
)
def test_finish_on_an_incomplete_document_raises_at_its_end(text):
    parser = IncrementalJSONParser()
    parser.feed(text)
    with pytest.raises(ValueError, match=f"at offset {len(text)}: expected .*, got end of input"):
        parser.finish()


# --- cost ----------------------------------------------------------------------------------------


def _cpu_seconds(run, repeat=2):
    """Best CPU time of a few runs: the machine is shared, and CPU time ignores waiting for it."""
    gc.disable()
    try:
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
        return best
    finally:
        gc.enable()


def _records(size):
    """A model-like document of about ``size`` characters: records of every JSON type."""
    record = {"id": -1234567, "name": 'caf\u00e9 "ok"\n', "score": 0.125, "ok": True, "none": None}
    line = json.dumps(record, indent=2)
    return "[" + ",".join([line] * (size // len(line))) + "]"


def _feed_each_character(text):
    parser = IncrementalJSONParser()
    for char in text:
        parser.feed(char)
    assert parser.done


def test_cost_is_linear_in_the_text():
    """Four times the text costs about four times as much; a quadratic parser would cost sixteen.
    The gap is wide on purpose: at twice the text, cache effects alone gave 3.4x on a CI machine."""
    small, large = _records(100_000), _records(400_000)
    small_time = large_time = float("inf")
    for _ in range(3):  # interleaved: a slow stretch of the machine does not hit one size only
        small_time = min(small_time, _cpu_seconds(lambda: _feed_each_character(small), repeat=1))
        large_time = min(large_time, _cpu_seconds(lambda: _feed_each_character(large), repeat=1))
    assert large_time < 4.0
    assert large_time < 7 * small_time + 0.02


def test_feed_does_not_rescan_what_was_fed_before():
    """Feeding after megabytes of text, inside a string still open, costs what it does after a few
    characters: neither the text nor the open string is scanned or joined again per chunk."""
    tail = "y" * 2000 + '", ' + "1, " * 1000 + '"z"]'

    def after(prefix):
        parser = IncrementalJSONParser()
        parser.feed(prefix)
        return _cpu_seconds(lambda: [parser.feed(char) for char in tail], repeat=1)

    short = min(after('["x') for _ in range(3))
    long = min(after('["' + "x" * 4_000_000) for _ in range(3))
    assert long < 3 * short + 0.02
