"""The constraint cache on disk: an entry proves what it belongs to and that it is whole, or it
is removed and computed afresh; the folder is private, and ignored where others can write it."""

from __future__ import annotations

import json
import re
import shutil
import stat
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import structgen
import structgen.constraint.compiler as compiler_module
from structgen.constraint.compiler import (
    _TABLES_MAGIC,
    ConstraintCompiler,
    _cache_key,
    _schema_key,
    _tables_data_start,
    read_tables,
)
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.errors import UnsafeCacheWarning
from structgen.schema import DEFAULT_WHITESPACE, schema_to_regex

DIGITS = "[0-9]{3}"
PROSE = "[a-z ]{1,40}"  # over 1 MiB of tables for SmolLM2: its file is memory-mapped on a hit


@pytest.fixture(scope="module")
def info(smollm2_tokenizer):
    return TokenizerInfo.from_huggingface(smollm2_tokenizer)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("STRUCTGEN_CACHE", str(root))
    return root


@contextmanager
def compiler():
    """A compiler with an empty memory cache, as a new process has; also the default one."""
    fresh = ConstraintCompiler()
    previous, compiler_module._default_compiler = compiler_module._default_compiler, fresh
    try:
        yield fresh
    finally:
        compiler_module._default_compiler = previous
        fresh.close()


def tables_path(cache: Path, regex: str, info) -> Path:
    return cache / "constraints" / f"{_cache_key(regex, info.fingerprint)}.tables"


def writes(constraint, text: str, tokenizer) -> bool:
    """Whether ``constraint`` lets a matcher write exactly ``text`` and end there."""
    matcher = constraint.matcher()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return all(matcher.advance(token) for token in ids) and matcher.advance(constraint.eos_token_id)


def assert_compiled_afresh(cache, info, tokenizer, regex=DIGITS, good="123", bad="12a"):
    """The damaged entry was removed: compiled afresh, correct, and stored anew in good order."""
    with compiler() as fresh:
        constraint = fresh.compile_regex(regex, info)
    assert constraint.from_cache == "none"
    assert writes(constraint, good, tokenizer) and not writes(constraint, bad, tokenizer)
    path = tables_path(cache, regex, info)
    read_tables(path, key=path.stem, regex=regex)  # the entry written anew proves itself
    with compiler() as fresh:
        assert fresh.compile_regex(regex, info).from_cache == "disk"


def cached(cache, info, *regexes):
    with compiler() as first:
        for regex in regexes:
            first.compile_regex(regex, info)
    return [tables_path(cache, regex, info) for regex in regexes]


def rewrite_header(path: Path, change) -> None:
    """Replace a tables file's header by ``change(header)`` (an object, or its JSON bytes), with a
    valid header CRC, so that only the header's meaning is wrong."""
    data = path.read_bytes()
    prefix = len(_TABLES_MAGIC) + 12
    length = int.from_bytes(data[len(_TABLES_MAGIC):prefix - 4], "little")
    arrays = data[_tables_data_start(length):]
    changed = change(json.loads(data[prefix:prefix + length]))
    encoded = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
    padding = b"\0" * (_tables_data_start(len(encoded)) - prefix - len(encoded))
    path.write_bytes(_TABLES_MAGIC + len(encoded).to_bytes(8, "little")
                     + zlib.crc32(encoded).to_bytes(4, "little") + encoded + padding + arrays)


def flip_byte_of(path: Path, name: str, at: int = 0) -> None:
    data = bytearray(path.read_bytes())
    prefix = len(_TABLES_MAGIC) + 12
    length = int.from_bytes(data[len(_TABLES_MAGIC):prefix - 4], "little")
    offset = json.loads(data[prefix:prefix + length])["arrays"][name][2]
    data[_tables_data_start(length) + offset + at] ^= 0x10
    path.write_bytes(bytes(data))


def test_another_regexs_file_copied_over_a_key_is_removed_and_compiled_afresh(
        cache, info, smollm2_tokenizer, tiny_model):
    digits, prose = cached(cache, info, DIGITS, PROSE)
    shutil.copyfile(prose, digits)
    with compiler():  # generate goes through compile_constraint and the default compiler
        answer = structgen.generate(structgen.Regex(DIGITS), "Write a number.", model=tiny_model,
                                    max_tokens=8)
    assert re.fullmatch(DIGITS, answer), answer
    assert read_tables(digits, key=digits.stem, regex=DIGITS)  # the lie was replaced
    shutil.copyfile(prose, digits)
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


@pytest.mark.parametrize("damage", {
    "header is a list": lambda header: list(header["arrays"].items()),
    "arrays are a list": lambda header: {**header, "arrays": list(header["arrays"].values())},
    "unknown dtype": lambda header: {**header, "arrays": {
        **header["arrays"], "distance": ["<q9", *header["arrays"]["distance"][1:]]}},
    "object dtype": lambda header: {**header, "arrays": {
        **header["arrays"], "distance": ["|O", *header["arrays"]["distance"][1:]]}},
    "missing key": lambda header: {name: value for name, value in header.items() if name != "key"},
    "missing array": lambda header: {**header, "arrays": {
        name: value for name, value in header["arrays"].items() if name != "worst"}},
    "shape of strings": lambda header: {**header, "arrays": {
        **header["arrays"], "offsets": [header["arrays"]["offsets"][0], ["x"],
                                        *header["arrays"]["offsets"][2:]]}},
    "another key": lambda header: {**header, "key": "0" * 32},
    "another regex": lambda header: {**header, "regex": PROSE},
    "nested too deep": lambda header: b"[" * 100_000 + b"]" * 100_000,
    "not JSON": lambda header: b"\xff{",
}.items(), ids=lambda item: item[0])
def test_a_header_that_lies_is_removed_and_compiled_afresh(cache, info, smollm2_tokenizer, damage):
    (path,) = cached(cache, info, DIGITS)
    rewrite_header(path, damage[1])
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


@pytest.mark.parametrize("damage", {
    "flipped header byte": lambda data: data[:30] + bytes([data[30] ^ 1]) + data[31:],
    "truncated": lambda data: data[:len(data) // 2],
    "cut in the header": lambda data: data[:40],
    "empty": lambda data: b"",
    "an older format": lambda data: b"SGTABLES" + data[20:],
}.items(), ids=lambda item: item[0])
def test_a_damaged_file_is_removed_and_compiled_afresh(cache, info, smollm2_tokenizer, damage):
    (path,) = cached(cache, info, DIGITS)
    path.write_bytes(damage[1](path.read_bytes()))
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


def test_a_flipped_byte_in_a_per_state_table_is_found_on_load(cache, info, smollm2_tokenizer):
    (path,) = cached(cache, info, DIGITS)
    flip_byte_of(path, "distance")
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


@pytest.mark.parametrize("array", ["tokens", "next", "masks"])
def test_a_flipped_byte_in_transitions_or_mask_rows_is_repaired_before_it_is_used(
        cache, info, smollm2_tokenizer, array):
    (path,) = cached(cache, info, PROSE)
    with compiler() as first:
        pristine = first.compile_regex(PROSE, info)
        initial = pristine.initial_state
        expected = (pristine.bitmask(initial).copy(),
                    *(part.copy() for part in pristine.transitions(initial)))
        if array == "masks":  # a byte inside the start state's piece
            at = 4 * len(expected[0]) * int(pristine._mask_of_state[initial]) + 8
        else:
            at = 4 * (int(pristine._offsets[initial]) + len(expected[1]) // 2)
    flip_byte_of(path, array, at=at)
    with compiler() as fresh:
        constraint = fresh.compile_regex(PROSE, info)
        assert constraint.from_cache == "disk"  # checked piece by piece, when first read
        matcher = constraint.matcher()
        packed = np.zeros_like(expected[0])
        matcher.fill_bitmask(packed)
        tokens, nexts = constraint.transitions(initial)
        assert np.array_equal(packed, expected[0])
        assert np.array_equal(tokens, expected[1]) and np.array_equal(nexts, expected[2])
        assert writes(constraint, "hello world", smollm2_tokenizer)
    read_tables(path, key=path.stem, regex=PROSE)  # removed, compiled afresh and stored anew, whole
    with compiler() as fresh:
        again = fresh.compile_regex(PROSE, info)
        assert again.from_cache == "disk" and writes(again, "hello world", smollm2_tokenizer)
        assert not writes(again, "Hello", smollm2_tokenizer)


SCHEMA_A = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
SCHEMA_B = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}


def alias_path(cache, schema, info, kind="regex") -> Path:
    return cache / "constraints" / f"schema-{_schema_key(schema, DEFAULT_WHITESPACE, info)}.{kind}"


def test_swapped_schema_aliases_are_removed_and_compiled_afresh(cache, info):
    with compiler():
        structgen.compile_constraint(SCHEMA_A, info)
        structgen.compile_constraint(SCHEMA_B, info)
    a, b = alias_path(cache, SCHEMA_A, info), alias_path(cache, SCHEMA_B, info)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    key_a = _schema_key(SCHEMA_A, DEFAULT_WHITESPACE, info)
    with compiler() as fresh:
        assert fresh.regex_of_schema(key_a) is None and not a.exists()
    with compiler():
        assert structgen.compile_constraint(SCHEMA_B, info).regex == schema_to_regex(SCHEMA_B)
        assert not b.exists() or b.read_bytes() == b_bytes
    with compiler() as fresh:
        assert structgen.compile_constraint(SCHEMA_A, info).regex == schema_to_regex(SCHEMA_A)
    assert a.read_bytes() == a_bytes  # stored anew
    for damage in (a_bytes[:-1], a_bytes[:-1] + bytes([a_bytes[-1] ^ 1]), b"[" * 100_000,
                   schema_to_regex(SCHEMA_A).encode()):  # cut, flipped, not JSON, an older format
        a.write_bytes(damage)
        with compiler() as fresh:
            assert fresh.regex_of_schema(key_a) is None and not a.exists()


def test_swapped_or_damaged_first_masks_are_removed_and_learnt_afresh(cache, info):
    words = (info.vocab_size + 31) // 32
    key_a, key_b = (_schema_key(schema, DEFAULT_WHITESPACE, info) for schema in (SCHEMA_A, SCHEMA_B))
    bits_a, bits_b = np.arange(words, dtype=np.int32), np.ones(words, dtype=np.int32)
    with compiler() as first:
        first.remember_start(key_a, bits_a, True)
        first.remember_start(key_b, bits_b, False)
        first.remember_schema(key_a, DIGITS)
    with compiler() as fresh:
        known = fresh.known_start(key_a, info.vocab_size)
        assert np.array_equal(known[0], bits_a) and known[1] is True
    a, b = alias_path(cache, SCHEMA_A, info, "start"), alias_path(cache, SCHEMA_B, info, "start")
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    with compiler() as fresh:
        assert fresh.known_start(key_a, info.vocab_size) is None and not a.exists()
        assert fresh.known_start(key_b, info.vocab_size)[1] is False
    regex_file = alias_path(cache, SCHEMA_A, info, "regex")
    shutil.copyfile(b, regex_file)  # a first mask where the schema's regex should be
    with compiler() as fresh:
        assert fresh.regex_of_schema(key_a) is None and not regex_file.exists()
    line, _, body = a_bytes.partition(b"\n")
    for damage in (a_bytes[:-4], line + b"\n" + bytes([body[0] ^ 1]) + body[1:],
                   line.replace(b"true", b"1") + b"\n" + body,  # the flag is not a bool
                   line.replace(b"outlines-core=", b"outlines-core=0.0.") + b"\n" + body):
        a.write_bytes(damage)
        with compiler() as fresh:
            assert fresh.known_start(key_a, info.vocab_size) is None and not a.exists()


def test_cache_files_are_private_to_the_user(cache, info):
    cached(cache, info, DIGITS)
    with compiler():
        structgen.compile_constraint(SCHEMA_A, info)
    folder = cache / "constraints"
    assert cache.stat().st_mode & 0o777 == 0o700 and folder.stat().st_mode & 0o777 == 0o700
    files = list(folder.iterdir())
    assert {path.suffix for path in files} == {".tables", ".regex"}
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in files)
    folder.chmod(0o755)  # as an older structgen left it: made private again
    with compiler() as fresh:
        assert fresh.compile_regex(DIGITS, info).from_cache == "disk"
    assert folder.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("open_folder", ["cache", "constraints"])
def test_a_cache_folder_others_can_write_is_ignored_with_a_warning(cache, info, open_folder):
    (path,) = cached(cache, info, DIGITS)
    target = cache if open_folder == "cache" else cache / "constraints"
    target.chmod(0o777)
    with pytest.warns(UnsafeCacheWarning, match="other users can write") as caught:
        with compiler() as fresh:
            assert fresh.compile_regex(DIGITS, info).from_cache == "none"  # the entry is not read
            structgen.compile_constraint(SCHEMA_A, info)  # nor is anything written
        with compiler() as fresh:
            assert fresh.compile_regex(DIGITS, info).from_cache == "none"
    assert len(caught) == 1  # once per folder and process
    assert sorted(p.suffix for p in (cache / "constraints").iterdir()) == [".tables"]
    target.chmod(0o700)
    with compiler() as fresh:
        assert fresh.compile_regex(DIGITS, info).from_cache == "disk"


def test_a_normal_run_warns_nothing(cache, info, smollm2_tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_compiled_afresh(cache, info, smollm2_tokenizer)  # a miss, a store and a disk hit


# --- a Regex answer is re-checked before it is returned (a cache that lies is caught there too) --


def test_a_regex_answer_is_checked_against_its_regex():
    spec = structgen.types.as_output_type(structgen.Regex(DIGITS))
    assert spec.parse("123") == "123"
    for text in ("The answer is 123.", "1234", "12", ""):
        with pytest.raises(structgen.OutputError, match="does not match the regex"):
            spec.parse(text)


@pytest.mark.parametrize("pattern, text", [
    (r"\w+", "e\u0301"),  # a combining mark is a word character to Rust's regex, not to re
    ("[[a-z]]", "b"),  # a nested class, where re reads "[" "[a-z" "]"
    ("[a-z&&[^aeiou]]", "b"),  # class intersection
    (r"\S", "\x1c"),  # not White_Space in Unicode, whitespace to re
])
def test_the_check_reads_the_regex_as_the_constraint_does(info, smollm2_tokenizer, pattern, text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # re's own warning about "[[" and "&&"
        assert re.fullmatch(pattern, text) is None  # so re would refuse what the constraint wrote
        constraint = structgen.compile_constraint(structgen.Regex(pattern), info)
    matcher = constraint.matcher()
    assert all(matcher.advance(token) for token in smollm2_tokenizer(text, add_special_tokens=False)[
        "input_ids"]) and matcher.is_accepting()
    assert constraint.output_type.parse(text) == text


def test_the_check_refuses_what_the_dialect_refuses():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        spec = structgen.types.as_output_type(structgen.Regex("[a-z&&[^aeiou]]"))
    for text in ("a", "&"):
        with pytest.raises(structgen.OutputError):
            spec.parse(text)


def test_generate_refuses_a_regex_answer_its_constraint_let_through(info, tiny_model):
    lying = structgen.compile_constraint(structgen.Regex("[a-z]{3}"), tiny_model.tokenizer_info)
    lying = compiler_module._with_meta(lying, dict(
        compiler_module._meta("[a-z]{3}", tiny_model.tokenizer_info,
                              structgen.types.as_output_type(structgen.Regex(DIGITS)), "compact")),
        "memory")
    with pytest.raises(structgen.OutputError, match="does not match the regex"):
        structgen.generate(lying, "Write a number.", model=tiny_model, max_tokens=8)
    results = structgen.generate_batch(lying, ["One.", "Two."], model=tiny_model, max_tokens=8)
    assert all(isinstance(result, structgen.OutputError) for result in results)


def test_the_models_folder_is_private_and_one_others_can_write_is_not_used(tmp_path, monkeypatch):
    from structgen.constraint.compiler import private_cache_folder

    root = tmp_path / "cache"
    monkeypatch.setenv("STRUCTGEN_CACHE", str(root))
    folder = private_cache_folder("models", create=True)
    assert folder == root / "models"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    root.chmod(0o777)
    with pytest.warns(structgen.UnsafeCacheWarning, match="models cache"):
        assert private_cache_folder("models") is None


def test_a_background_and_a_foreground_compile_never_read_each_others_tables(info):
    """The worker's pipe carries one exchange at a time: a hybrid's background schema compile and a
    foreground regex compile in flight together each get the tables of what they asked for (they
    once read each other's replies: a TypeError, or another regex's tables)."""
    from concurrent.futures import ThreadPoolExecutor

    from structgen.constraint._worker import CompileWorker

    regexes = [f"[a-z]{{1,{n}}}" for n in range(2, 8)]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    worker = CompileWorker(memory_limit=0)
    try:
        alone = {regex: worker.compile(regex, info, 60)[1]["offsets"].shape for regex in regexes}
        schema_regex = worker.compile_schema(schema, "indented", info, 60)[1][0]

        def foreground():
            return [(regex, worker.compile(regex, info, 60)) for regex in regexes * 3]

        def background():
            return [worker.compile_schema(schema, "indented", info, 60) for _ in range(6)]

        with ThreadPoolExecutor(2) as pool:
            regex_replies, schema_replies = pool.submit(foreground), pool.submit(background)
            for regex, (status, tables) in regex_replies.result():
                assert status == "ok" and isinstance(tables, dict)
                assert tables["offsets"].shape == alone[regex]
            for status, (regex, tables) in schema_replies.result():
                assert status == "ok" and regex == schema_regex and isinstance(tables, dict)
    finally:
        worker.stop()
