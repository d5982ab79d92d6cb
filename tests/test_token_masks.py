"""Lazy token masks equal a brute-force walk of the byte automaton, for several tokenizers.

For random reachable states of real schemas' automata, ``CompiledConstraint.mask`` (the
vectorised ``Walker``, cached in the ``MaskStore``) must allow exactly the tokens whose bytes,
stepped one by one through ``ByteAutomaton.step``, end in a live state (plus EOS where the state
accepts), and ``next_state`` must agree with that walk. The budgeted mask must allow exactly the
tokens after which the single-byte distance to acceptance fits in the tokens left. The walker's
two paths, numpy and the compiled loops (``compiled_walks``), are each compared with the
brute-force walk.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import structgen
from structgen.constraint.automaton import UNREACHABLE
from structgen.constraint.compiled_loops import COMPILED_LOOPS, CompiledLoops
from structgen.constraint.compiler import ConstraintCompiler
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.schema import schema_to_regex

SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["x", "yé", "z z"]}, "maxItems": 3}},
        "required": ["name", "age"]},
    "numbers": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
    "free": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[a-z]+$"}},
    "prose": {"type": "object", "properties": {
        "note": {"type": "string"}, "bio": {"type": "string", "maxLength": 200}},
        "required": ["note", "bio"]},
    # spliced (constraint/counted.py): the string's states are written, not determinised
    "long": {"type": "object", "properties": {
        "text": {"type": "string", "minLength": 3, "maxLength": 300}, "n": {"type": "integer"}},
        "required": ["text"]},
    # strings whose characters are a class with a multi-byte member, free and counted, and a
    # short counted free string: runs whose tokens of whole characters are placed by verdicts
    "patterned": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Za-zé]+$"},
        "word": {"type": "string", "pattern": "^[0-9A-Za-zü]{2,50}$"},
        "short": {"type": "string", "maxLength": 30}},
        "required": ["code", "word", "short"]},
}


def byte_tokenizer_info() -> TokenizerInfo:
    """A vocabulary of the 256 single bytes and a few multi-byte tokens (what llguidance's and
    xgrammar's tests use: no real tokenizer needed), EOS id 300; the long ones are whitespace
    runs, pure or ending in something else."""
    tokens = {b: bytes([b]) for b in range(256)}
    for i, text in enumerate(['{"', '":', '",', "name", " \"", "é", "\n  ", "12", "é\"",
                              " " * 20, " " * 20 + "}", "\n" * 18 + ",", "\t" * 17 + "1"]):
        tokens[256 + i] = text.encode()
    return TokenizerInfo(token_bytes=tokens, eos_token_id=300, vocab_size=301)


def walks_both_ways(walker, state: int) -> dict[int, int]:
    """{token id: next state} of ``walker.walk_parts(state)``, the placed tokens included, the
    same from the numpy walk and from the compiled loops."""
    found = []
    for compiled in (False, True):
        walker.use_compiled = compiled
        try:
            placed, ids, states = walker.walk_parts(state)
        finally:
            walker.use_compiled = True
        walked = dict(zip(ids.tolist(), states.tolist()))
        if placed is not None:
            assert np.array_equal(np.flatnonzero(placed.bits), np.sort(placed.ids))
            walked.update(zip(placed.ids.tolist(), placed.chain[placed.counts].tolist()))
        found.append(walked)
    assert found[0] == found[1], "the compiled walk differs from numpy's"
    return found[1]


@pytest.fixture(scope="module", params=["smollm2", "llama3", "bytes"])
def info(request):
    if request.param == "bytes":
        return byte_tokenizer_info()
    tokenizer = request.getfixturevalue(f"{request.param}_tokenizer")
    return TokenizerInfo.from_huggingface(tokenizer)


def brute_force(constraint, info: TokenizerInfo, state: int) -> tuple[np.ndarray, dict[int, int]]:
    automaton = constraint.automaton
    allowed = np.zeros(info.vocab_size, dtype=bool)
    following = {}
    for token_id, data in info.token_bytes.items():
        if token_id == info.eos_token_id or not data:
            continue
        after = automaton.step(state, data)
        if after:
            allowed[token_id] = True
            following[token_id] = after
    if automaton.is_final[state]:
        allowed[info.eos_token_id] = True
    return allowed, following


def reachable_state(constraint, info: TokenizerInfo, choices: list[int]) -> int:
    """Follow allowed tokens chosen by ``choices`` (indexes into each mask) from the start."""
    state = constraint.initial_state
    for choice in choices:
        ids = [i for i in np.flatnonzero(constraint.mask(state)) if i != constraint.eos_token_id]
        if not ids:
            break
        state = constraint.next_state(state, int(ids[choice % len(ids)]))[0]
    return state


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SCHEMAS)), whitespace=st.sampled_from(["indented", "flexible"]),
       choices=st.lists(st.integers(0, 2**20), max_size=12), tokens_left=st.integers(0, 40))
def test_lazy_masks_equal_a_brute_force_walk(info, name, whitespace, choices, tokens_left):
    constraint = structgen.compile_constraint(SCHEMAS[name], info, whitespace=whitespace)
    state = reachable_state(constraint, info, choices)
    expected, following = brute_force(constraint, info, state)
    assert np.array_equal(constraint.mask(state), expected)
    assert walks_both_ways(constraint.masks.walker, state) == {
        token_id: after for token_id, after in following.items() if token_id != info.eos_token_id}
    for token_id, after in list(following.items())[:200]:
        assert constraint.next_state(state, token_id) == (after, 0)
    budgeted = expected.copy()
    for token_id, after in following.items():
        budgeted[token_id] = constraint.distance(after) <= tokens_left
    assert np.array_equal(constraint.mask(state, tokens_left), budgeted)


def test_distances_are_exact_in_bytes_for_a_byte_vocabulary():
    """With every byte a token, a state's distance is the length of its shortest completion:
    following the byte that lowers it reaches acceptance in exactly that many steps."""
    info = TokenizerInfo(token_bytes={b: bytes([b]) for b in range(256)}, eos_token_id=256,
                         vocab_size=257)
    constraint = structgen.compile_constraint(SCHEMAS["person"], info, whitespace="compact")
    state, written = constraint.initial_state, b""
    assert constraint.distance(state) < UNREACHABLE
    while not constraint.is_final(state):
        distance = constraint.distance(state)
        following = {b: constraint.next_state(state, b) for b in range(256)}
        state, byte = min((after[0], b) for b, after in following.items()
                          if after is not None and constraint.distance(after[0]) == distance - 1)
        written += bytes([byte])
    assert len(written) == constraint.min_tokens
    json.loads(written)


def test_multi_byte_tokens_shorten_the_distance_soundly(smollm2_tokenizer):
    """With a real vocabulary the bound counts the tokens of the shortest answer, not its bytes,
    and stays sound: a budget of exactly ``min_tokens`` (+1 for EOS) still ends accepting."""
    info = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    constraint = structgen.compile_constraint(SCHEMAS["person"], info, whitespace="indented")
    in_bytes = constraint.automaton.distances(constraint._tokens.single_bytes)
    assert constraint.min_tokens < in_bytes[constraint.initial_state]
    matcher = constraint.matcher(max_tokens=constraint.min_tokens + 1)
    while not matcher.is_finished():
        allowed = matcher.allowed_token_ids()
        assert allowed, "the budget rule left no token"
        assert matcher.advance(allowed[-1])  # the highest id: rarely the shortest path's own
    assert matcher.is_accepting()  # with EOS taken, or at the last token of the budget


def test_token_distances_wait_for_a_budget_that_needs_them(smollm2_tokenizer):
    """A matcher far from its budget runs on the single-byte bound alone; when a budget comes
    near, masks made before the token distances existed are judged by them, exactly."""
    info = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    compiler = ConstraintCompiler(disk_cache=False)  # a constraint of its own, never read before
    try:
        constraint = compiler.compile_regex(
            schema_to_regex(SCHEMAS["person"], whitespace="indented"), info)
        matcher = constraint.matcher(max_tokens=500)  # far from it: the bound answers
        for _ in range(12):
            allowed = [i for i in matcher.allowed_token_ids() if i != info.eos_token_id]
            assert matcher.advance(allowed[len(allowed) // 2])
        assert constraint.masks._distance is None, "nothing needed the token distances yet"
        walked = constraint.initial_state
        for _ in range(12):
            for tokens_left in (0, 3, 8, 20):
                expected, following = brute_force(constraint, info, walked)
                for token_id, after in following.items():
                    expected[token_id] = constraint.distance(after) <= tokens_left
                assert np.array_equal(constraint.mask(walked, tokens_left), expected)
            allowed = np.flatnonzero(constraint.mask(walked, tokens_left=400))
            walked = constraint.next_state(walked, int(allowed[len(allowed) // 2]))[0]
        assert constraint.masks._distance is not None
    finally:
        compiler.close()


def test_masks_are_shared_by_matchers_and_bounded(info):
    constraint = structgen.compile_constraint(SCHEMAS["person"], info, whitespace="indented")
    first, second = constraint.matcher(), constraint.matcher()
    first.mask()
    walks = constraint.masks.walks
    second.mask()  # the same state: read from the store, not walked again
    assert constraint.masks.walks == walks
    assert constraint.masks.max_entries * ((info.vocab_size + 31) // 32) * 4 <= 64 << 20


BIO = b'{\n  "note": "x",\n  "bio": "'


@pytest.mark.parametrize("prefix", [b'{\n  "note": "ab', b'{\n  "note": "', BIO, BIO + b"y" * 150,
                                    BIO + b"y" * 198])
def test_string_states_take_their_characters_tokens_without_a_walk(info, prefix):
    """In a free string (the state loops) and a counted one (``maxLength``: a state per
    character, near its end too) the tokens made of plain characters are placed by the run, not
    walked, and the mask and next states still equal the brute-force walk."""
    constraint = structgen.compile_constraint(SCHEMAS["prose"], info, whitespace="indented")
    assert_walk_is_brute_force(constraint, info, prefix, run=True)


def assert_walk_is_brute_force(constraint, info, prefix: bytes, run: bool | None = None):
    """At the state ``prefix`` leads to, the mask, the walk (``walk_parts``, the tokens that
    loop back included, and ``walk`` joined) and the next states equal the brute-force walk;
    ``run``: whether the walker finds a string run there. Returns ``walk_parts``' first part
    (the tokens a string run places)."""
    state = constraint.automaton.step(constraint.initial_state, prefix)
    assert state
    walker = constraint.masks.walker
    if run is not None:
        row = walker.plain[state * walker.width:(state + 1) * walker.width]
        assert (walker._run(state, row) is not None) == run
    expected, following = brute_force(constraint, info, state)
    assert np.array_equal(constraint.mask(state), expected)
    wanted = {token_id: after for token_id, after in following.items()
              if token_id != info.eos_token_id}
    assert walks_both_ways(walker, state) == wanted
    placed = walker.walk_parts(state)[0]
    ids, states = walker.walk(state)
    assert dict(zip(ids.tolist(), states.tolist())) == wanted
    return placed


def test_a_string_split_serves_every_automaton_of_a_tokenizer(info):
    """Free strings of two schemas (two automata, two whitespace modes) share the tokenizer's
    split of the vocabulary, made once; each walk from it, each outside token walked from its
    first byte that leaves the string, equals the brute-force walk."""
    first = structgen.compile_constraint(SCHEMAS["prose"], info, whitespace="indented")
    second = structgen.compile_constraint(
        {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}, info,
        whitespace="compact")
    assert first.masks.walker.tokens is second.masks.walker.tokens
    assert_walk_is_brute_force(first, info, b'{\n  "note": "ab', run=True)
    splits = dict(first.masks.walker.tokens._string_splits)
    assert_walk_is_brute_force(second, info, b'{"x":"ab', run=True)
    assert second.masks.walker.tokens._string_splits == splits  # no split of its own


PATTERNED = b'{\n  "code": "'


@pytest.mark.parametrize("prefix", [PATTERNED, PATTERNED + b"ab\xc3\xa9",
                                    PATTERNED + b'a",\n  "word": "x',
                                    PATTERNED + b'a",\n  "word": "' + b"x" * 45,
                                    PATTERNED + b'a",\n  "word": "xy",\n  "short": "\xc3\xa9',
                                    PATTERNED + b'a",\n  "word": "xy",\n  "short": "' + b"z" * 28])
def test_string_runs_judge_each_character_shape_once(info, prefix):
    """In strings whose characters are a class with one multi-byte member (free, counted) and in
    a counted free string, the tokens of whole characters are placed by each character's
    verdict, not walked: the mask, the tokens that loop back and the next states still equal
    the brute-force walk."""
    constraint = structgen.compile_constraint(SCHEMAS["patterned"], info, whitespace="indented")
    assert_walk_is_brute_force(constraint, info, prefix, run=True)


def test_character_shapes_serve_automata_whose_classes_are_numbered_apart(info):
    """Two automata whose bytes 0x80-0xFF fall in the same classes under other numbers (their
    ASCII classes differ: other key names) share the tokenizer's character shapes, made once,
    each read in its own numbers: each string walk, where only some multi-byte characters are
    allowed, still equals the brute-force walk."""
    renamed = {"type": "object", "properties": {
        "qvx": {"type": "string", "pattern": "^[A-Za-z\u00e9]+$"},
        "jk": {"type": "string", "pattern": "^[0-9A-Za-z\u00fc]{2,50}$"},
        "short": {"type": "string", "maxLength": 30}}, "required": ["qvx", "jk", "short"]}
    first = structgen.compile_constraint(SCHEMAS["patterned"], info, whitespace="indented")
    second = structgen.compile_constraint(renamed, info, whitespace="compact")
    high = [c.automaton.byte_class[0x80:] for c in (first, second)]
    assert not np.array_equal(*high)  # the same partition, numbered apart
    assert len(set(zip(*(h.tolist() for h in high)))) == len(set(high[0].tolist()))
    tokens = first.masks.walker.tokens
    tokens._shapes.clear()
    placed = [assert_walk_is_brute_force(first, info, PATTERNED + b"ab", run=True),
              assert_walk_is_brute_force(second, info, b'{"qvx":"ab', run=True),
              assert_walk_is_brute_force(second, info, b'{"qvx":"a","jk":"x', run=True)]
    assert len(tokens._shapes) == (1 if len(tokens.characters.bytes) else 0)
    spelled = {bytes(b): i for i, b in info.token_bytes.items()}
    letters = [spelled.get(letter.encode()) for letter in ("\u00e9", "\u00e9", "\u00fc")]
    assert letters[0] is not None
    for part, letter in zip(placed, letters):  # the letter's own token is placed, not walked
        assert letter is None or letter in part.ids


def test_characters_split_tokens_as_utf_8_does(info):
    """``TokenBytes.characters``: a token is complete exactly when it decodes as UTF-8 (up to
    the overlong and surrogate forms the automaton refuses anyway), with as many characters as
    it decodes to, and its multi-byte characters are the decoded ones."""
    from structgen.constraint.token_masks import TokenBytes

    tokens = TokenBytes(info.token_bytes, info.vocab_size)
    characters = tokens.characters
    found: dict[int, list[bytes]] = {}
    for position, row in zip(characters.token.tolist(), characters.index.tolist()):
        found.setdefault(position, []).append(
            bytes(characters.bytes[row][:characters.lengths[row]]))
    for position, token_id in enumerate(tokens.ids.tolist()):
        data = tokens.bytes_of(token_id)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            assert not characters.complete[position] or _has_unchecked_form(data), data
            continue
        assert characters.complete[position], data
        assert characters.counts[position] == len(text)
        assert sorted(found.get(position, [])) == sorted(c.encode() for c in text if ord(c) >= 0x80)


def _has_unchecked_form(data: bytes) -> bool:
    """Lead and continuation bytes that fit together but that strict UTF-8 refuses."""
    return any(b in (0xC0, 0xC1) or b >= 0xF5 for b in data) or b"\xed" in data or b"\xe0" in data \
        or b"\xf0" in data or b"\xf4" in data


@pytest.mark.parametrize("prefix", [b'{"a": 12', b'{"a": 12 ', b'{"a": 12,', b'{"a": 1, "b": -3',
                                    b"{", b'{"a": 1,'])
def test_long_runs_after_a_first_byte_end_where_it_led(info, prefix):
    """After a number, ``{`` or a comma in ``flexible`` whitespace the state does not loop on
    whitespace, the one its first blank leads to does: whitespace runs (up to 128 bytes at
    Llama-3) end there without a byte-by-byte walk, and the mask and next states equal the
    brute-force walk."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    constraint = structgen.compile_constraint(schema, info, whitespace="flexible")
    assert assert_walk_is_brute_force(constraint, info, prefix, run=False) is None


@pytest.mark.parametrize("written", [2, 30, 57])
def test_counted_string_masks_near_a_budget_equal_a_brute_force_walk(info, written):
    """In a string of 40 to 60 characters, the tokens of whole characters are placed by count
    (``Placed``), not listed: near a budget only the counts that still reach an ending in time
    are allowed, near ``maxLength`` only those that fit, and both masks equal the brute-force
    walk's."""
    schema = {"type": "object", "properties": {"code": {"type": "string", "minLength": 40,
                                                        "maxLength": 60}}, "required": ["code"]}
    constraint = structgen.compile_constraint(schema, info, whitespace="compact")
    state = constraint.automaton.step(constraint.initial_state, b'{"code":"' + b"a" * written)
    assert state
    expected, following = brute_force(constraint, info, state)
    assert np.array_equal(constraint.mask(state), expected)
    nearest = constraint.distance(state)
    for tokens_left in sorted({0, 1, 2, nearest - 1, nearest, nearest + 1, nearest + 3}):
        if tokens_left < 0:
            continue
        budgeted = np.zeros_like(expected)
        for token_id, after in following.items():
            budgeted[token_id] = constraint.distance(after) <= tokens_left
        budgeted[info.eos_token_id] = expected[info.eos_token_id]
        assert np.array_equal(constraint.mask(state, tokens_left), budgeted), tokens_left


def test_compiled_walks_load_once_and_numpy_serves_without_them(monkeypatch):
    """``CompiledLoops`` loads the loops once, in a thread; where the import fails (numba
    missing) it says why and the walker stays on numpy; ``STRUCTGEN_COMPILED_LOOPS=0`` keeps
    numpy without trying."""
    assert COMPILED_LOOPS.walks is not None and COMPILED_LOOPS.error is None
    failing = CompiledLoops()
    monkeypatch.setattr("importlib.import_module",
                        lambda name: (_ for _ in ()).throw(ImportError("No module named 'numba'")))
    failing.start()
    assert not failing.wait(60)
    assert failing.walks is None and failing.automaton is None and "numba" in failing.error
    monkeypatch.undo()
    monkeypatch.setenv("STRUCTGEN_COMPILED_LOOPS", "0")
    off = CompiledLoops()
    off.start()
    assert not off.wait(1) and off._thread is None


def test_a_process_that_ends_while_the_loops_load_exits_cleanly():
    """The loading thread is not a daemon: a script that exits at once waits for it, and ends
    with status 0 and nothing on stderr (no crash inside numba at interpreter exit)."""
    done = subprocess.run([sys.executable, "-c", "from structgen.constraint.token_masks import "
                           "COMPILED_LOOPS; COMPILED_LOOPS.start()"],
                          capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr) == (0, "")


def test_the_compiled_walks_step_the_automatons_own_table(smollm2_tokenizer):
    """With the compiled loops loaded, structural states, strings and the tokens leaving them
    are walked on the automaton's table itself: no premultiplied copy is made (a large
    automaton's copy cost tens of ms of fresh memory and doubled what a constraint holds)."""
    from structgen.constraint.compiled_loops import COMPILED_LOOPS

    COMPILED_LOOPS.start()
    assert COMPILED_LOOPS.wait(), COMPILED_LOOPS.error
    info = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    schema = {"type": "object", "required": ["walked_on_its_own_table", "count"],
              "properties": {"walked_on_its_own_table": {"type": "string"},
                             "count": {"type": "integer"}}}
    constraint = structgen.compile_constraint(schema, info, whitespace="indented")
    matcher = constraint.matcher()
    text = '{\n  "walked_on_its_own_table": "ab cd",\n  "count": 12\n}'
    for token in smollm2_tokenizer.encode(text, add_special_tokens=False):
        assert matcher.mask()[token]
        assert matcher.advance(token)
    walker = constraint.masks.walker
    assert constraint.masks.walks > 5
    assert np.shares_memory(walker.plain, constraint.automaton.table)
    assert "table" not in vars(walker)
