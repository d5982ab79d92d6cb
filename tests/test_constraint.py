"""The constraint layer driven token by token: compile_constraint -> Matcher."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import structgen
from structgen.constraint import compiler as compiler_module
from structgen.constraint.compiler import ConstraintCompiler, Options, _converted
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.errors import ConstraintError, RegexTooLargeError
from structgen.types import as_output_type

WORDS = structgen.Regex(r'\[("[a-zé ]{1,12}"(,"[a-zé ]{1,12}")*)?\]')


@pytest.fixture(scope="module")
def info(smollm2_tokenizer):
    return TokenizerInfo.from_huggingface(smollm2_tokenizer)


@pytest.fixture(scope="module")
def words(info):
    return structgen.compile_constraint(WORDS, info)


def walk(matcher, rng, info):
    """Take random allowed tokens until the matcher is done; return the text written."""
    out = []
    while not matcher.is_finished():
        allowed = matcher.allowed_token_ids()
        assert allowed, "a live matcher must always allow some token"
        token = rng.choice(allowed)
        assert matcher.advance(token)
        if token != info.eos_token_id:
            out.append(info.token_bytes[token])
    return b"".join(out).decode("utf-8")


def test_text_of_a_valid_answer_walks_to_acceptance(words, smollm2_tokenizer):
    matcher = words.matcher()
    for token in smollm2_tokenizer('["café","goku"]', add_special_tokens=False)["input_ids"]:
        assert token in matcher.allowed_token_ids()
        assert matcher.advance(token)
    assert matcher.is_accepting()
    assert matcher.min_tokens_to_accept() == 0
    assert words.eos_token_id in matcher.allowed_token_ids()
    assert matcher.advance(words.eos_token_id)
    assert matcher.is_finished()


def test_a_refused_token_leaves_the_state_unchanged(words, smollm2_tokenizer):
    matcher = words.matcher()
    bad = smollm2_tokenizer("{", add_special_tokens=False)["input_ids"][0]
    state = matcher.state
    assert not matcher.advance(bad)
    assert matcher.state == state and matcher.tokens_consumed == 0
    assert not matcher.advance(words.eos_token_id)  # not accepting yet


def test_fill_bitmask_matches_allowed_ids(words, smollm2_tokenizer):
    matcher = words.matcher()
    matcher.advance(smollm2_tokenizer("[", add_special_tokens=False)["input_ids"][0])
    allowed = set(matcher.allowed_token_ids())
    words_needed = (words.vocab_size + 31) // 32
    for buffer in (np.full(words_needed + 2, -1, dtype=np.int32),
                   torch.full((3, words_needed), -1, dtype=torch.int32)):
        matcher.fill_bitmask(buffer, row=1)
        row = buffer[1] if buffer.ndim == 2 else buffer
        bits = np.unpackbits(np.asarray(row).view(np.uint8), bitorder="little")
        assert set(np.flatnonzero(bits).tolist()) == allowed


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), extra=st.integers(0, 12))
def test_random_walks_always_end_valid_within_budget(words, info, seed, extra):
    budget = words.min_tokens + 1 + extra  # +1: room for the EOS token
    matcher = words.matcher(max_tokens=budget)
    text = walk(matcher, random.Random(seed), info)
    assert matcher.tokens_consumed <= budget
    assert re.fullmatch(r'\[("[a-zé ]{1,12}"(,"[a-zé ]{1,12}")*)?\]', text), text


def test_budget_below_the_minimum_is_refused_before_decoding(words):
    with pytest.raises(structgen.BudgetTooSmallError) as caught:
        words.matcher(max_tokens=words.min_tokens - 1)
    assert caught.value.min_tokens == words.min_tokens


def test_multibyte_characters_can_be_written(info, smollm2_tokenizer):
    constraint = structgen.compile_constraint(structgen.Regex("(é|日本)+"), info)
    matcher = constraint.matcher()
    for token in smollm2_tokenizer("é日本é", add_special_tokens=False)["input_ids"]:
        assert matcher.advance(token)
    assert matcher.is_accepting()


def test_compiles_are_cached_in_memory_and_on_disk(info, tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTGEN_CACHE", str(tmp_path))
    monkeypatch.setattr(compiler_module, "STORE_AFTER_SECONDS", 0.0)  # written, as a slow build is
    regex = r"[0-9]{2,4}-[a-z]{3}"
    first = ConstraintCompiler()
    try:
        cold = first.compile_regex(regex, info)
        warm = first.compile_regex(regex, info)
    finally:
        first.close()
    assert (cold.from_cache, warm.from_cache) == ("none", "memory")
    assert list(tmp_path.glob("constraints/*.tables"))
    second = ConstraintCompiler()
    try:
        loaded = second.compile_regex(regex, info)
    finally:
        second.close()
    assert loaded.from_cache == "disk"
    assert loaded.min_tokens == cold.min_tokens and loaded.num_states == cold.num_states
    stored = next(tmp_path.glob("constraints/*.tables"))
    stored.write_bytes(stored.read_bytes()[:200])  # a damaged file is compiled afresh, then mended
    for expected in ("none", "disk"):
        compiler = ConstraintCompiler()
        try:
            assert compiler.compile_regex(regex, info).from_cache == expected
        finally:
            compiler.close()


def test_cached_tables_read_back_bit_for_bit(tmp_path):
    from structgen.constraint.cache import read_tables, write_tables

    tables = {"offsets": np.arange(7, dtype=np.int64), "masks": np.ones((3, 5), dtype=np.int32),
              "is_final": np.array([True, False, True]), "initial": np.int64(4),
              "empty": np.zeros(0, dtype=np.uint32)}
    path = tmp_path / "one.tables"
    write_tables(path, tables, key="k1", regex="[0-9]+")
    back = read_tables(path, key="k1", regex="[0-9]+")
    assert back.keys() == tables.keys()
    for name, value in tables.items():
        assert back[name].dtype == np.asarray(value).dtype and back[name].shape == np.shape(value)
        assert np.array_equal(back[name], value)
    assert int(back["initial"]) == 4 and not back["masks"].flags.writeable
    for key, regex in (("k2", "[0-9]+"), ("k1", "[0-9]*")):
        with pytest.raises(ValueError, match="belongs to another constraint"):
            read_tables(path, key=key, regex=regex)
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(ValueError, match="truncated"):
        read_tables(path, key="k1", regex="[0-9]+")
    path.write_bytes(b"not tables")
    with pytest.raises(ValueError, match="not a structgen tables file"):
        read_tables(path, key="k1", regex="[0-9]+")


def test_a_compile_past_its_time_budget_is_a_typed_error(info):
    compiler = ConstraintCompiler(disk_cache=False)
    try:
        with pytest.raises(structgen.CompileTimeoutError):
            compiler.compile_regex("[ab]*a[ab]{18}", info, timeout=1.0)  # about 4 s to build
        # the worker is restarted for the next compile
        assert compiler.compile_regex("[0-9]+", info).min_tokens == 1
    finally:
        compiler.close()


def test_a_cached_constraint_never_waits_for_another_regexs_build(info):
    """The caches are not locked during a build: while one thread builds a slow regex, another
    thread's hit returns at once (a server answering a request whose schema it has seen while
    another request's schema compiles)."""
    compiler = ConstraintCompiler(disk_cache=False)
    try:
        compiler.compile_regex("[0-9]+", info)

        def build_slowly():
            with pytest.raises(structgen.CompileTimeoutError):
                compiler.compile_regex("[ab]*a[ab]{20}", info, timeout=5.0)  # about 16 s

        slow = threading.Thread(target=build_slowly)
        slow.start()
        deadline = time.monotonic() + 5
        while slow.is_alive() and not compiler._worker._exchange.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert compiler._worker._exchange.locked()  # the slow build is under way
        assert compiler.compile_regex("[0-9]+", info).from_cache == "memory"
        assert slow.is_alive()  # the hit came back before the build ended
        slow.join()
    finally:
        compiler.close()


def test_the_compile_worker_yields_the_cpu_to_decoding(info):
    compiler = ConstraintCompiler(disk_cache=False)
    try:
        assert compiler._worker.compile("[0-9]+", 60)[0] == "ok"  # the child has set its niceness
        child = compiler._worker._process.pid
        assert os.getpriority(os.PRIO_PROCESS, child) == min(
            19, os.getpriority(os.PRIO_PROCESS, 0) + compiler._worker.NICENESS)
    finally:
        compiler.close()


@pytest.mark.parametrize("pattern", ["(?=a)b", r"(a)\1", "(?<!x)y"])
def test_regexes_outside_the_regular_subset_are_refused(info, pattern):
    with pytest.raises(structgen.UnsupportedSchemaError):
        structgen.compile_constraint(structgen.Regex(pattern), info)


def _walks(constraint, tokenizer, text: str) -> bool:
    matcher = constraint.matcher()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return all(matcher.advance(token) for token in ids) and matcher.is_accepting()


def test_extra_properties_is_asked_for_and_kept_apart_in_the_caches(info, smollm2_tokenizer):
    """``extra_properties=True`` accepts undeclared members of an open object; the default does
    not, also when the other compile of the same schema is already cached."""
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
    text = '{"id": 7, "note": "from elsewhere"}'
    checking = structgen.compile_constraint(schema, info, whitespace="flexible",
                                            extra_properties=True)
    generating = structgen.compile_constraint(schema, info, whitespace="flexible")
    assert checking.engine == generating.engine == "outlines-core"
    assert _walks(checking, smollm2_tokenizer, text)
    assert not _walks(generating, smollm2_tokenizer, text)
    assert _walks(generating, smollm2_tokenizer, '{"id": 7}')
    assert not _walks(checking, smollm2_tokenizer, '{"id": 7, "id": "seven"}')



def test_a_script_that_exits_with_the_worker_up_prints_no_warning(tmp_path):
    """The default compiler's worker is still running when a script ends: it is ended quietly,
    with no ResourceWarning about the child or its pipes (``-W always`` shows every one)."""
    tokenizer_dir = Path(__file__).parent / "fixtures" / "smollm2_tokenizer"
    script = ("import structgen, transformers\n"
              f"tokenizer = transformers.AutoTokenizer.from_pretrained({str(tokenizer_dir)!r})\n"
              "constraint = structgen.compile_constraint({'type': 'integer'}, tokenizer)\n"
              "assert constraint.engine == 'outlines-core'\n")
    out = subprocess.run([sys.executable, "-W", "always", "-c", script], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "STRUCTGEN_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "ResourceWarning" not in out.stderr and "still running" not in out.stderr, out.stderr


def test_a_top_level_open_value_builds_at_the_default_depth(info, smollm2_tokenizer):
    """outlines-core's determinisation exploded on a regex whose first byte recurs inside it (a
    top-level ``{}`` at depth 2 in compact: 25 s, past the 10 s timeout given here); the start mark
    the worker puts before every regex ends that."""
    constraint = structgen.compile_constraint({}, info, whitespace="compact", timeout=10)
    assert constraint.engine == "outlines-core"
    for text in ('{"a":[1,2]}', '[123456789012]', '"x"'):
        assert _walks(constraint, smollm2_tokenizer, text), text


def test_open_values_nest_less_where_the_regex_would_be_too_large():
    """300 open properties: at the default depth the regex would pass 1 MiB, so the compile
    converts the schema with open values one level deep instead of leaving it to llguidance."""
    names = [f"p{i}" for i in range(300)]
    schema = {"type": "object", "properties": {name: {} for name in names}, "required": names}
    with pytest.raises(RegexTooLargeError):
        structgen.schema_to_regex(schema, whitespace="compact")
    regex = _converted(as_output_type(schema), Options("compact", False, 2), time.monotonic() + 30)
    assert regex == structgen.schema_to_regex(schema, whitespace="compact", max_any_depth=1)


def test_open_values_nest_as_deep_as_fits_below_the_depth_asked():
    """100 open properties: at depth 3 the regex would pass 1 MiB, at depth 2 it fits, so a
    compile asked for depth 3 gets depth 2, the deepest that fits, not one level."""
    names = [f"p{i}" for i in range(100)]
    schema = {"type": "object", "properties": {name: {} for name in names}, "required": names}
    with pytest.raises(RegexTooLargeError):
        structgen.schema_to_regex(schema, whitespace="compact", max_any_depth=3)
    regex = _converted(as_output_type(schema), Options("compact", False, 3), time.monotonic() + 30)
    assert regex == structgen.schema_to_regex(schema, whitespace="compact", max_any_depth=2)


def test_a_regex_too_large_without_open_values_is_not_tried_shallower(monkeypatch):
    """Where the value that passes 1 MiB writes no open value, nesting them less cannot help: one
    attempt, not one per depth (JsonSchemaStore detekt-1.22.0 spent 111 ms on three)."""
    attempts = []
    convert = compiler_module.schema_to_regex
    monkeypatch.setattr(compiler_module, "schema_to_regex",
                        lambda *a, **k: attempts.append(k["max_any_depth"]) or convert(*a, **k))
    words = {"enum": [f"{'x' * 60}{i}" for i in range(20_000)]}  # 1.3M characters, no {}
    with pytest.raises(RegexTooLargeError) as refused:
        _converted(as_output_type({"type": "object", "properties": {"a": {}, "b": words}}),
                   Options("compact", False, 3), time.monotonic() + 30)
    assert not refused.value.open_values and attempts == [3]
    names = [f"p{i}" for i in range(300)]  # 300 open properties: the open values are too large
    many = {"type": "object", "properties": {n: {} for n in names}, "required": names}
    shared = {"$ref": "#/$defs/open"}  # one definition, written before: its regex reused
    reusing = {"type": "object", "properties": {"a": {
        "type": "object", "properties": {"x": shared}, "required": ["x"]}, "b": {
        "type": "object", "properties": {n: shared for n in names}, "required": names}},
        "required": ["a", "b"], "$defs": {"open": {}}}
    for schema in (many, reusing):
        attempts.clear()
        _converted(as_output_type(schema), Options("compact", False, 3), time.monotonic() + 30)
        assert attempts == [3, 2, 1]


def test_a_remembered_schema_regex_is_keyed_by_the_code_that_chose_its_depth(monkeypatch):
    """The key of a remembered schema -> regex alias hashes the schema compiler's source and
    the constraint compiler's too (``_converted`` chooses the depth a regex is written at): an
    alias written by code that fell back to one level is not reused by code that does not."""
    revision = compiler_module._schema_compiler_revision.__wrapped__
    before = revision()
    read = Path.read_bytes
    here = Path(compiler_module.__file__)
    monkeypatch.setattr(Path, "read_bytes", lambda path: read(path) + b"#" * (path == here))
    assert revision() != before


def test_open_values_nest_as_deep_as_asked(info, smollm2_tokenizer):
    """``max_any_depth`` reaches the schema compiler (and the schema's cache key): an open value
    four levels deep is refused at the default depth (3) and taken at 4, one three levels deep
    is taken at the default and refused at 2; a bad depth is a typed error."""
    schema = {"type": "object", "properties": {"meta": {}}, "required": ["meta"]}
    three, four = '{"meta":{"a":{"b":[1]}}}', '{"meta":{"a":{"b":[[1]]}}}'
    shallower = structgen.compile_constraint(schema, info, whitespace="compact", max_any_depth=2)
    default = structgen.compile_constraint(schema, info, whitespace="compact")
    deeper = structgen.compile_constraint(schema, info, whitespace="compact", max_any_depth=4)
    assert shallower.engine == default.engine == deeper.engine == "outlines-core"
    assert not _walks(shallower, smollm2_tokenizer, three)
    assert _walks(default, smollm2_tokenizer, three) and not _walks(default, smollm2_tokenizer, four)
    assert _walks(deeper, smollm2_tokenizer, four)
    assert _walks(deeper, smollm2_tokenizer, '{"meta":{"a":1}}')
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConstraintError, match="max_any_depth"):
            structgen.compile_constraint(schema, info, max_any_depth=bad)
