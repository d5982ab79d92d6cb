"""The constraint cache on disk: an entry proves what it belongs to and that it is whole, or it
is removed and computed afresh; the folder is private, and ignored where others can write it."""

from __future__ import annotations

import dataclasses
import errno
import json
import mmap
import os
import re
import shutil
import stat
import tempfile
import threading
import types
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import structgen
import structgen.constraint.cache as cache_module
import structgen.constraint.compiler as compiler_module
from structgen.constraint.automaton import ARRAY_NAMES, ByteAutomaton
from structgen.constraint.cache import _TABLES_MAGIC, _tables_data_start, read_tables, write_tables
from structgen.constraint.compiler import ConstraintCompiler, Options, _schema_key, automaton_key
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.errors import UnsafeCacheWarning
from structgen.schema import DEFAULT_ANY_DEPTH, DEFAULT_WHITESPACE, schema_to_regex
from structgen.schema.layout import STRING_CHAR

DIGITS = "[0-9]{3}"
PROSE = "[a-z ]{1,40}"


@pytest.fixture(scope="module")
def info(smollm2_tokenizer):
    return TokenizerInfo.from_huggingface(smollm2_tokenizer)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder to which every build and conversion is written, as a slow one is
    (``STORE_AFTER_SECONDS``: these tests are about the files)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("STRUCTGEN_CACHE", str(root))
    monkeypatch.setattr(compiler_module, "STORE_AFTER_SECONDS", 0.0)
    return root


@pytest.fixture(params=["read whole", "memory-mapped"])
def read_path(request, monkeypatch):
    """Both ways ``read_tables`` reads a file: whole (under 1 MiB, as every file here is), and
    memory-mapped (over 1 MiB; here every file, and the test checks a mapping was made)."""
    if request.param == "read whole":
        yield
        return
    maps = []

    def counted(*args, **kwargs):
        maps.append(args)
        return mmap.mmap(*args, **kwargs)

    monkeypatch.setattr(cache_module, "_MAP_ABOVE_BYTES", 0)
    monkeypatch.setattr(cache_module, "mmap", types.SimpleNamespace(
        mmap=counted, ACCESS_READ=mmap.ACCESS_READ))
    yield
    assert maps, "no tables file was memory-mapped"


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


def tables_path(cache: Path, regex: str) -> Path:
    """The regex's entry: one per regex, whatever the tokenizer."""
    return cache / "constraints" / f"{automaton_key(regex)}.tables"


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
    path = tables_path(cache, regex)
    assert read_tables(path, key=path.stem, regex=regex).keys() == set(ARRAY_NAMES)  # whole anew
    with compiler() as fresh:
        again = fresh.compile_regex(regex, info)
    assert again.from_cache == "disk"
    assert writes(again, good, tokenizer) and not writes(again, bad, tokenizer)


def cached(cache, info, *regexes):
    with compiler() as first:
        for regex in regexes:
            first.compile_regex(regex, info)
    return [tables_path(cache, regex) for regex in regexes]


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


def flip_bits_of(path: Path, name: str, element: int, bits: int) -> None:
    """XOR the lowest byte of element ``element`` (C order) of array ``name`` with ``bits``."""
    data = bytearray(path.read_bytes())
    prefix = len(_TABLES_MAGIC) + 12
    length = int.from_bytes(data[len(_TABLES_MAGIC):prefix - 4], "little")
    dtype, _, offset, _ = json.loads(data[prefix:prefix + length])["arrays"][name]
    data[_tables_data_start(length) + offset + element * np.dtype(dtype).itemsize] ^= bits
    path.write_bytes(bytes(data))


def with_array(header: dict, name: str, **change) -> dict:
    """``header`` with one field ([dtype, shape, offset, crc]) of array ``name``'s entry changed."""
    entry = dict(zip(("dtype", "shape", "offset", "crc"), header["arrays"][name]))
    entry.update(change)
    return {**header, "arrays": {**header["arrays"], name: list(entry.values())}}


def test_another_regexs_file_copied_over_a_key_is_removed_and_compiled_afresh(
        cache, info, smollm2_tokenizer, tiny_model, read_path):
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
    "an entry is no list": lambda header: {**header, "arrays": {
        **header["arrays"], "table": dict(enumerate(header["arrays"]["table"]))}},
    "unknown dtype": lambda header: with_array(header, "table", dtype="<q9"),
    "object dtype": lambda header: with_array(header, "table", dtype="|O"),
    "another byte order": lambda header: with_array(header, "table", dtype=">i4"),
    "a bool is read as bytes": lambda header: with_array(header, "is_final", dtype="|u1"),
    "missing key": lambda header: {name: value for name, value in header.items() if name != "key"},
    "missing array": lambda header: {**header, "arrays": {
        name: value for name, value in header["arrays"].items() if name != "is_final"}},
    "shape of strings": lambda header: with_array(header, "table", shape=["x"]),
    "shape of bools": lambda header: with_array(
        header, "table", shape=[True] * len(header["arrays"]["table"][1])),
    "negative offset": lambda header: with_array(header, "byte_class", offset=-64),
    "offset past the end": lambda header: with_array(header, "byte_class", offset=1 << 40),
    "a crc that is no int": lambda header: with_array(header, "table", crc="0"),
    "another key": lambda header: {**header, "key": "0" * 32},
    "another regex": lambda header: {**header, "regex": PROSE},
    "nested too deep": lambda header: b"[" * 100_000 + b"]" * 100_000,
    "not JSON": lambda header: b"\xff{",
}.items(), ids=lambda item: item[0])
def test_a_header_that_lies_is_removed_and_compiled_afresh(
        cache, info, smollm2_tokenizer, damage, read_path):
    (path,) = cached(cache, info, DIGITS)
    rewrite_header(path, damage[1])
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


@pytest.mark.parametrize("damage", {
    "flipped header byte": lambda data: data[:30] + bytes([data[30] ^ 1]) + data[31:],
    "truncated": lambda data: data[:len(data) // 2],
    "last byte cut": lambda data: data[:-1],
    "cut in the header": lambda data: data[:40],
    "cut in the prefix": lambda data: data[:12],
    "empty": lambda data: b"",
    "an older format": lambda data: b"SGTABLES" + data[20:],
    "not a tables file": lambda data: b"\x93NUMPY" + data[6:],
}.items(), ids=lambda item: item[0])
def test_a_damaged_file_is_removed_and_compiled_afresh(
        cache, info, smollm2_tokenizer, damage, read_path):
    (path,) = cached(cache, info, DIGITS)
    path.write_bytes(damage[1](path.read_bytes()))
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


def a_quiet_lie(arrays: dict, name: str) -> tuple[int, int]:
    """An element of array ``name`` and bits to flip in it that leave a well-formed automaton
    (``ByteAutomaton.from_arrays`` takes it) which accepts other texts: damage only a CRC finds."""
    states = len(arrays["table"])

    def another_state(state: int) -> int:
        return next(bit for bit in (1, 2, 4, 8, 16, 32, 64) if 0 < state ^ bit < states)

    initial, one = int(arrays["initial"]), int(arrays["byte_class"][ord("1")])
    return {
        "table": lambda: (initial * arrays["table"].shape[1] + one,
                          another_state(int(arrays["table"][initial, one]))),
        "byte_class": lambda: (ord("a"), 1),  # "a" steps as a digit does
        "is_final": lambda: (initial, 1),  # the empty text is accepted
        "initial": lambda: (0, another_state(initial)),
    }[name]()


@pytest.mark.parametrize("array", [name for name in ARRAY_NAMES
                                   if name not in ("counters", "byte_distance")])
def test_a_flipped_byte_in_any_array_is_found_on_load(
        cache, info, smollm2_tokenizer, array, read_path):
    """Every array is CRC-checked when the file is read: a flipped byte anywhere is never used,
    even one that leaves arrays which look like a sound automaton."""
    (path,) = cached(cache, info, DIGITS)
    pristine = {name: np.array(value) for name, value in
                read_tables(path, key=path.stem, regex=DIGITS).items()}
    element, bits = a_quiet_lie(pristine, array)
    lie = {name: value.copy() for name, value in pristine.items()}
    lie[array].reshape(-1).view(np.uint8)[element * lie[array].itemsize] ^= bits
    del lie["byte_distance"]  # the lying automaton's own distances (a file could carry them)
    honest, lying = ByteAutomaton.from_arrays(pristine), ByteAutomaton.from_arrays(lie)
    assert any(honest.is_final[honest.step(honest.initial, text)]
               != lying.is_final[lying.step(lying.initial, text)]
               for text in (b"", b"1", b"12", b"123", b"1234", b"a23", b"12a"))
    flip_bits_of(path, array, element, bits)
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


def test_byte_distances_that_are_not_the_tables_are_refused(cache, info, smollm2_tokenizer,
                                                            read_path):
    """The distances the budget rule counts from are cached beside the table: a flipped byte
    there is found by the CRC, and distances that are not those the table implies (one state a
    byte nearer its end than it is, so the budget would let an answer run one byte too long)
    are refused by ``from_arrays`` whatever the file says."""
    (path,) = cached(cache, info, DIGITS)
    pristine = {name: np.array(value) for name, value in
                read_tables(path, key=path.stem, regex=DIGITS).items()}
    ByteAutomaton.from_arrays(pristine)  # the cached distances are the table's
    initial = int(pristine["initial"])
    assert pristine["byte_distance"][initial] > 0
    nearer = {name: value.copy() for name, value in pristine.items()}
    nearer["byte_distance"][initial] -= 1
    with pytest.raises(ValueError, match="byte distances"):
        ByteAutomaton.from_arrays(nearer)
    flip_bits_of(path, "byte_distance", initial, 1)
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


def test_a_flipped_byte_in_a_loop_counter_is_found_on_load(cache, info, smollm2_tokenizer, read_path):
    """A string counted by a loop keeps where its counter hands over in ``counters``: one bit
    flipped there leaves a well-formed automaton that accepts a character too many, and the
    CRC finds it."""
    long = '"' + STRING_CHAR + "{0,700}" + '"'
    (path,) = cached(cache, info, long)
    pristine = {name: np.array(value) for name, value in
                read_tables(path, key=path.stem, regex=long).items()}
    lie = {name: value.copy() for name, value in pristine.items()}
    lie["counters"][0, 3] += 1  # the hand-over one count late: the last copies count one short
    honest, lying = ByteAutomaton.from_arrays(pristine), ByteAutomaton.from_arrays(lie)
    too_long = ('"' + "x" * 701 + '"').encode()
    assert not honest.accepts(too_long) and lying.accepts(too_long)
    flip_bits_of(path, "counters", 3, 1)
    with compiler() as fresh:
        constraint = fresh.compile_regex(long, info)
    assert constraint.from_cache == "none"
    assert writes(constraint, '"' + "x" * 700 + '"', smollm2_tokenizer)
    assert not writes(constraint, '"' + "x" * 701 + '"', smollm2_tokenizer)


@pytest.mark.parametrize("lie", {
    "a state past the table": lambda arrays: {**arrays, "table": np.where(
        arrays["table"] == arrays["table"].max(), len(arrays["table"]), arrays["table"])},
    "a negative state": lambda arrays: {**arrays, "table": -arrays["table"]},
    "starts in the dead state": lambda arrays: {**arrays, "initial": np.int64(0)},
    "starts past the table": lambda arrays: {**arrays, "initial": np.int64(len(arrays["table"]))},
    "a byte class past the table": lambda arrays: {
        **arrays, "byte_class": np.full(256, arrays["table"].shape[1], dtype=np.uint8)},
    "too few byte classes": lambda arrays: {**arrays, "byte_class": arrays["byte_class"][:255]},
    "is_final as bytes": lambda arrays: {**arrays, "is_final": arrays["is_final"].astype(np.uint8)},
    "is_final too short": lambda arrays: {**arrays, "is_final": arrays["is_final"][:-1]},
    "a table of int64": lambda arrays: {**arrays, "table": arrays["table"].astype(np.int64)},
    "a flat table": lambda arrays: {**arrays, "table": arrays["table"].reshape(-1)},
    "an extra array": lambda arrays: {**arrays, "masks": np.zeros(4, dtype=np.int32)},
    "a missing array": lambda arrays: {
        name: value for name, value in arrays.items() if name != "is_final"},
}.items(), ids=lambda item: item[0])
def test_a_whole_file_of_arrays_that_are_no_automaton_is_removed_and_compiled_afresh(
        cache, info, smollm2_tokenizer, lie):
    """A file that proves its key, regex and CRCs but whose arrays do not form a byte automaton
    (stepping it would index out of bounds, or read bytes as bools) is never used."""
    (path,) = cached(cache, info, DIGITS)
    arrays = {name: np.array(value) for name, value in
              read_tables(path, key=path.stem, regex=DIGITS).items()}
    write_tables(path, lie[1](arrays), key=path.stem, regex=DIGITS)
    read_tables(path, key=path.stem, regex=DIGITS)  # the file itself is whole: only its meaning lies
    assert_compiled_afresh(cache, info, smollm2_tokenizer)


def test_one_entry_serves_every_tokenizer_and_each_gets_its_own_masks(cache, info):
    """The automaton on disk does not depend on the tokenizer, but a constraint (its masks) does:
    one tokenizer's constraint is never handed to another from the memory cache."""
    one = next(token for token, value in info.token_bytes.items() if value == b"1")
    other = dataclasses.replace(info, fingerprint="", token_bytes={
        token: value for token, value in info.token_bytes.items() if token != one})
    assert other.fingerprint != info.fingerprint
    (path,) = cached(cache, info, DIGITS)
    with compiler() as fresh:
        theirs = fresh.compile_regex(DIGITS, other)
        assert theirs.from_cache == "disk"
        ours = fresh.compile_regex(DIGITS, info)
        again = fresh.compile_regex(DIGITS, other)
        assert again.from_cache == "memory"
        assert ours.mask(ours.initial_state)[one]
        assert not theirs.mask(theirs.initial_state)[one]
        assert not again.mask(again.initial_state)[one]
        assert fresh.compile_regex(DIGITS, info).mask(ours.initial_state)[one]
    assert [entry.name for entry in (cache / "constraints").iterdir()] == [path.name]


SCHEMA_A = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
SCHEMA_B = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}


DEFAULTS = Options(DEFAULT_WHITESPACE, False, DEFAULT_ANY_DEPTH)  # compile_constraint's


def alias_path(cache, schema, info) -> Path:
    return cache / "constraints" / f"schema-{_schema_key(schema, DEFAULTS, info)}.regex"


def entry_with(name: str, body: bytes) -> bytes:
    """An alias file that proves to be ``name``'s and whole, whatever its body."""
    return json.dumps({"entry": name, "crc": zlib.crc32(body)}).encode() + b"\n" + body


def test_swapped_schema_aliases_are_removed_and_compiled_afresh(cache, info):
    with compiler():
        structgen.compile_constraint(SCHEMA_A, info)
        structgen.compile_constraint(SCHEMA_B, info)
    a, b = alias_path(cache, SCHEMA_A, info), alias_path(cache, SCHEMA_B, info)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    key_a = _schema_key(SCHEMA_A, DEFAULTS, info)
    with compiler() as fresh:
        assert fresh.regex_of_schema(key_a) is None and not a.exists()
    with compiler():
        assert structgen.compile_constraint(SCHEMA_B, info).regex == schema_to_regex(SCHEMA_B)
        assert not b.exists() or b.read_bytes() == b_bytes
    with compiler() as fresh:
        assert structgen.compile_constraint(SCHEMA_A, info).regex == schema_to_regex(SCHEMA_A)
    assert a.read_bytes() == a_bytes  # stored anew
    with compiler() as fresh:
        assert fresh.regex_of_schema(key_a) == schema_to_regex(SCHEMA_A)  # and read back
    (tables,) = cached(cache, info, DIGITS)
    for damage in (a_bytes[:-1], a_bytes[:-1] + bytes([a_bytes[-1] ^ 1]), b"[" * 100_000,
                   schema_to_regex(SCHEMA_A).encode(),  # cut, flipped, not JSON, an older format
                   b"[]\n" + a_bytes.partition(b"\n")[2],  # a header that is no object
                   entry_with(a.name, b""), entry_with(a.name, b"\xff\xfe"),  # empty, not UTF-8
                   tables.read_bytes()):  # a tables file where the schema's regex should be
        a.write_bytes(damage)
        with compiler() as fresh:
            assert fresh.regex_of_schema(key_a) is None and not a.exists()


def test_only_builds_and_conversions_slower_than_the_threshold_are_written(cache, info,
                                                                         monkeypatch):
    """``STORE_AFTER_SECONDS``: a quick build and a quick conversion stay in memory (a later
    process redoes them), a slow one is written and read back; the clock decides, not the
    schema."""
    folder = cache / "constraints"
    monkeypatch.setattr(compiler_module, "STORE_AFTER_SECONDS", 3600.0)
    with compiler() as first:
        assert structgen.compile_constraint(SCHEMA_A, info).from_cache == "none"
        assert first.compile_regex(DIGITS, info).from_cache == "none"
    assert not folder.exists() or not list(folder.iterdir())
    with compiler() as later:  # nothing on disk: converted and built again
        assert later.regex_of_schema(_schema_key(SCHEMA_A, DEFAULTS, info)) is None
        assert later.compile_regex(DIGITS, info).from_cache == "none"
    monkeypatch.setattr(compiler_module, "STORE_AFTER_SECONDS", 0.0)
    with compiler():
        structgen.compile_constraint(SCHEMA_A, info)
    assert {path.suffix for path in folder.iterdir()} == {".tables", ".regex"}
    with compiler() as later:
        assert later.regex_of_schema(_schema_key(SCHEMA_A, DEFAULTS, info)) == schema_to_regex(
            SCHEMA_A)
        assert structgen.compile_constraint(SCHEMA_A, info).from_cache == "disk"


def test_a_tables_file_is_written_after_the_compile_returns(cache, info, monkeypatch):
    """``STORE_IN_BACKGROUND``: the constraint is ready while its tables file is still being
    written (held here until the compile has returned); ``wait_for_stores`` and ``close`` wait
    for the write, and a new compiler then reads the file."""
    released = threading.Event()
    writing = threading.Event()

    def held_write(path, arrays, **header):
        writing.set()
        assert released.wait(30)
        write_tables(path, arrays, **header)

    monkeypatch.setattr(compiler_module, "write_tables", held_write)
    path = tables_path(cache, DIGITS)
    with compiler() as first:
        assert first.compile_regex(DIGITS, info).from_cache == "none"
        assert writing.wait(30) and not path.exists()  # compiled, the file not yet there
        released.set()
        first.wait_for_stores()
        assert path.exists()
    monkeypatch.setattr(compiler_module, "write_tables", write_tables)
    with compiler() as later:
        assert later.compile_regex(DIGITS, info).from_cache == "disk"


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
def test_a_cache_folder_others_can_write_is_ignored_with_a_warning(
        cache, info, smollm2_tokenizer, open_folder):
    digits, prose = cached(cache, info, DIGITS, PROSE)
    # A planted entry that proves itself (key, regex, CRCs): only the folder's privacy keeps it out.
    planted = read_tables(prose, key=prose.stem, regex=PROSE)
    write_tables(digits, planted, key=digits.stem, regex=DIGITS)
    files = sorted(path.name for path in (cache / "constraints").iterdir())
    target = cache if open_folder == "cache" else cache / "constraints"
    target.chmod(0o777)
    with pytest.warns(UnsafeCacheWarning, match="other users can write") as caught:
        with compiler() as fresh:
            constraint = fresh.compile_regex(DIGITS, info)  # the entry is not read
            assert constraint.from_cache == "none"
            assert writes(constraint, "123", smollm2_tokenizer)
            assert not writes(constraint, "abc", smollm2_tokenizer)
            structgen.compile_constraint(SCHEMA_A, info)  # nor is anything written
            fresh.compile_regex("[0-9]{4}", info)
        with compiler() as fresh:
            assert fresh.compile_regex(DIGITS, info).from_cache == "none"
    assert len(caught) == 1  # once per folder and process
    assert sorted(path.name for path in (cache / "constraints").iterdir()) == files
    assert read_tables(digits, key=digits.stem, regex=DIGITS)["table"].shape == planted["table"].shape
    target.chmod(0o700)
    with compiler() as fresh:  # what the warning kept out: private again, the plant is believed
        believed = fresh.compile_regex(DIGITS, info)
        assert believed.from_cache == "disk" and writes(believed, "abc", smollm2_tokenizer)


def make_read_only(monkeypatch, root: Path) -> list:
    """Refuse every change under ``root`` as a read-only file system does (EROFS); the tests run
    as root, whom ``chmod`` does not stop. Returns the list of refused calls."""
    refused = []
    real_mkstemp, real_replace = tempfile.mkstemp, os.replace
    real_unlink, real_chmod, real_mkdir = Path.unlink, Path.chmod, Path.mkdir

    def inside(path) -> bool:
        if Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
            refused.append(str(path))
            return True
        return False

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            refuse(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    def replace(source, target, **kwargs):
        if inside(target):
            refuse(target)
        return real_replace(source, target, **kwargs)

    def unlink(self, missing_ok=False):
        if inside(self) and (self.exists() or not missing_ok):
            refuse(self)
        return real_unlink(self, missing_ok=missing_ok)

    def chmod(self, mode, **kwargs):
        if inside(self):
            refuse(self)
        return real_chmod(self, mode, **kwargs)

    def mkdir(self, mode=0o777, parents=False, exist_ok=False):
        if inside(self) and not (exist_ok and self.is_dir()):
            if self.exists():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(self))
            refuse(self)
        return real_mkdir(self, mode, parents, exist_ok)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(Path, "chmod", chmod)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    return refused


def snapshot(folder: Path) -> dict:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_read_only_cache_is_no_error(cache, info, smollm2_tokenizer, monkeypatch):
    cached(cache, info, DIGITS)
    with compiler():
        structgen.compile_constraint(SCHEMA_A, info)
    before = snapshot(cache / "constraints")
    refused = make_read_only(monkeypatch, cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with compiler() as fresh:
            assert fresh.compile_regex(DIGITS, info).from_cache == "disk"  # still read
            assert structgen.compile_constraint(SCHEMA_A, info).regex == schema_to_regex(SCHEMA_A)
            prose = fresh.compile_regex(PROSE, info)  # not stored, and no error
            assert prose.from_cache == "none" and writes(prose, "hello world", smollm2_tokenizer)
            assert structgen.compile_constraint(SCHEMA_B, info).regex == schema_to_regex(SCHEMA_B)
        with compiler() as fresh:
            assert fresh.compile_regex(PROSE, info).from_cache == "none"
            assert fresh.regex_of_schema(_schema_key(SCHEMA_B, DEFAULTS, info)) is None
    assert refused  # the stores were tried, and refused
    assert snapshot(cache / "constraints") == before


@pytest.mark.parametrize("entry", ["tables", "schema alias"])
def test_a_damaged_entry_in_a_read_only_cache_is_compiled_afresh_not_an_error(
        cache, info, smollm2_tokenizer, monkeypatch, entry):
    (path,) = cached(cache, info, DIGITS)
    with compiler():
        structgen.compile_constraint(SCHEMA_A, info)
    damaged = path if entry == "tables" else alias_path(cache, SCHEMA_A, info)
    damaged.write_bytes(damaged.read_bytes()[:-1])
    make_read_only(monkeypatch, cache)
    with compiler() as fresh:
        constraint = fresh.compile_regex(DIGITS, info)
        assert constraint.from_cache == ("none" if entry == "tables" else "disk")
        assert writes(constraint, "123", smollm2_tokenizer)
        assert structgen.compile_constraint(SCHEMA_A, info).regex == schema_to_regex(SCHEMA_A)
    assert damaged.exists()  # it could not be removed: it is ignored again next time


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
def test_the_check_reads_the_regex_as_the_constraint_does(
        cache, info, smollm2_tokenizer, pattern, text):
    with warnings.catch_warnings(), compiler():
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


def test_generate_refuses_a_regex_answer_its_constraint_let_through(cache, tiny_model):
    with compiler():
        lying = structgen.compile_constraint(structgen.Regex("[a-z]{3}"), tiny_model.tokenizer_info)
    lying = lying.with_request(output_type=structgen.types.as_output_type(structgen.Regex(DIGITS)),
                               whitespace="compact", from_cache="memory")
    with pytest.raises(structgen.OutputError, match="does not match the regex"):
        structgen.generate(lying, "Write a number.", model=tiny_model, max_tokens=8)
    results = structgen.generate_batch(lying, ["One.", "Two."], model=tiny_model, max_tokens=8)
    assert all(isinstance(result, structgen.OutputError) for result in results)


def test_the_models_folder_is_private_and_one_others_can_write_is_not_used(tmp_path, monkeypatch):
    from structgen.constraint.cache import private_cache_folder

    root = tmp_path / "cache"
    monkeypatch.setenv("STRUCTGEN_CACHE", str(root))
    folder = private_cache_folder("models", create=True)
    assert folder == root / "models"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    root.chmod(0o777)
    with pytest.warns(structgen.UnsafeCacheWarning, match="models cache"):
        assert private_cache_folder("models") is None


def test_two_compiles_in_flight_together_never_read_each_others_automaton():
    """The worker's pipe carries one exchange at a time: two threads compiling at once (a server
    preparing two requests) each get the automaton of what they asked for (they once read each
    other's replies)."""
    from concurrent.futures import ThreadPoolExecutor

    from structgen.constraint._worker import CompileWorker

    letters = [f"[a-z]{{1,{n}}}" for n in range(2, 8)]
    digits = [f"[0-9]{{{n}}}" for n in range(2, 8)]
    worker = CompileWorker(memory_limit=0)
    try:
        alone = {}
        for regex in letters + digits:
            status, arrays = worker.compile(regex, 60)
            assert status == "ok", arrays
            alone[regex] = arrays
        assert len({alone[regex]["is_final"].tobytes() + alone[regex]["byte_class"].tobytes()
                    for regex in alone}) == len(alone)  # every reply tells which regex it is

        def compile_all(regexes):
            return [(regex, worker.compile(regex, 60)) for regex in regexes * 3]

        with ThreadPoolExecutor(2) as pool:
            replies = [pool.submit(compile_all, letters), pool.submit(compile_all, digits)]
            for reply in replies:
                for regex, (status, arrays) in reply.result():
                    assert status == "ok" and isinstance(arrays, dict)
                    assert all(np.array_equal(arrays[name], alone[regex][name])
                               for name in ARRAY_NAMES), regex
    finally:
        worker.stop()


def test_work_beside_a_build_that_fails_leaves_the_worker_in_step():
    """``meanwhile`` runs while the child builds; if it raises, the child's reply is never read,
    so the worker is restarted and the next compile gets its own automaton, not that reply."""
    from structgen.constraint._worker import CompileWorker

    worker = CompileWorker(memory_limit=0)
    try:
        status, digits = worker.compile("[0-9]{3}", 60)
        assert status == "ok"

        def fail():
            raise RuntimeError("beside the build")

        with pytest.raises(RuntimeError, match="beside the build"):
            worker.compile("[a-z]{1,5}", 60, meanwhile=fail)
        status, again = worker.compile("[0-9]{3}", 60)
        assert status == "ok"
        assert all(np.array_equal(again[name], digits[name]) for name in ARRAY_NAMES)
        ran = []
        status, _ = worker.compile("[a-z]{1,5}", 60, meanwhile=lambda: ran.append(True))
        assert status == "ok" and ran == [True]
    finally:
        worker.stop()
