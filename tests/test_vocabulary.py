"""TokenizerInfo maps every ordinary token to the exact bytes it writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import transformers

from structgen.constraint import vocabulary
from structgen.constraint.vocabulary import TokenizerInfo, TokenMap
from structgen.errors import VocabularyError

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_tokenizer"

TEXTS = [
    '{"name": "Goku", "age": 42}',
    "café, naïve, 日本語, Ελληνικά",
    "emoji 🐉 and tabs\tand\nnewlines",
    '  leading spaces and "quotes" \\ backslashes',
]


@pytest.mark.parametrize("fixture", ["smollm2_tokenizer", "llama3_tokenizer"])
@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_concatenate_to_the_text(request, fixture, text):
    tokenizer = request.getfixturevalue(fixture)
    info = TokenizerInfo.from_huggingface(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(info.token_bytes[i] for i in ids) == text.encode("utf-8")


def test_partial_utf8_tokens_keep_their_own_bytes(llama3_tokenizer):
    # outlines maps all of these to "\ufffd"; distinct byte strings keep them writable.
    info = TokenizerInfo.from_huggingface(llama3_tokenizer)
    invalid_utf8 = set()
    for value in info.token_bytes.values():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            invalid_utf8.add(value)
    assert len(invalid_utf8) > 100


def test_special_tokens_are_left_out_and_eos_is_end_of_turn(smollm2_tokenizer):
    info = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    vocab = smollm2_tokenizer.get_vocab()
    assert info.eos_token_id == vocab["<|im_end|>"]
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert vocab[special] not in info.token_bytes
    assert info.vocab_size == len(smollm2_tokenizer)


@pytest.mark.parametrize("fixture", ["smollm2_tokenizer", "llama3_tokenizer"])
def test_the_map_equals_the_vocabulary_read_token_by_token(request, fixture, monkeypatch):
    monkeypatch.setenv("STRUCTGEN_DISABLE_DISK_CACHE", "1")  # map it, do not load a stored map
    tokenizer = request.getfixturevalue(fixture)
    info = TokenizerInfo.from_huggingface(tokenizer)
    added = tokenizer.added_tokens_decoder
    expected = {i: vocabulary._byte_level_bytes(token) for token, i in tokenizer.get_vocab().items()
                if i not in info.special_token_ids and i not in added}
    expected.update({i: token.content.encode() for i, token in added.items()
                     if i not in info.special_token_ids})
    assert dict(info.token_bytes.items()) == expected
    assert info.vocab_size == max(tokenizer.get_vocab().values()) + 1


def _sentencepiece_tokenizer(vocab: dict[str, int]):
    from tokenizers import AddedToken, Tokenizer, decoders, models

    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                                     eos_token="</s>")
    tokenizer.add_tokens([AddedToken("<tool_call>", special=False)])
    return tokenizer


@pytest.mark.parametrize("gap", [False, True])
def test_a_sentencepiece_vocabulary_with_or_without_gaps_in_its_ids(gap, monkeypatch):
    """Ids with a gap (4 and 5 unused here) cannot all be asked for one by one: the tokens past
    the count (id 8) are read from the vocabulary, as are added tokens given a used id."""
    monkeypatch.setenv("STRUCTGEN_DISABLE_DISK_CACHE", "1")
    last = 8 if gap else 4
    tokenizer = _sentencepiece_tokenizer(
        {"<unk>": 0, "▁hello": 1, "<0x41>": 2, "é": 3, "▁": last} | ({"lo": 7} if gap else {}))
    info = TokenizerInfo.from_huggingface(tokenizer)
    tool_call = tokenizer.convert_tokens_to_ids("<tool_call>")
    assert dict(info.token_bytes.items()) == {1: b" hello", 2: b"A", 3: "é".encode(),
                                              last: b" ", tool_call: b"<tool_call>"}
    assert info.special_token_ids == {0, tokenizer.eos_token_id}
    assert info.vocab_size == max(tokenizer.get_vocab().values()) + 1


def test_fingerprint_identifies_the_mapping(smollm2_tokenizer, llama3_tokenizer):
    a = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    b = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    c = TokenizerInfo.from_huggingface(llama3_tokenizer)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_token_map_is_a_mapping_in_id_order():
    tokens = TokenMap.from_dict({7: b"seven", 2: b"two", 300: b"\xc3", 5: b""})
    assert list(tokens) == [2, 7, 300] and len(tokens) == 3  # the empty token is left out
    assert tokens[7] == b"seven" and tokens.get(300) == b"\xc3" and tokens.get(5) is None
    assert 2 in tokens and 3 not in tokens and -1 not in tokens and "2" not in tokens
    assert dict(tokens.items()) == {2: b"two", 7: b"seven", 300: b"\xc3"}
    with pytest.raises(KeyError):
        tokens[10_000]
    with pytest.raises(VocabularyError, match="twice"):
        TokenMap(np.array([1, 1]), np.array([1, 1]), b"ab")
    assert TokenizerInfo(token_bytes={1: b"a"}, eos_token_id=0, vocab_size=2).token_bytes == {1: b"a"}


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokenizers"


def test_a_folder_tokenizer_map_is_stored_and_reused(private_cache, smollm2_tokenizer, monkeypatch):
    first = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    (stored,) = private_cache.glob("*.tables")

    def no_vocabulary():
        raise AssertionError("the stored map should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(smollm2_tokenizer, "get_vocab", no_vocabulary)
        again = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    assert again == first and again.fingerprint == first.fingerprint

    data = bytearray(stored.read_bytes())  # a damaged entry: removed, mapped afresh, stored anew
    data[data.rindex(b"Thessalon")] ^= 0xFF  # a byte of the last tokens
    stored.write_bytes(bytes(data))
    assert TokenizerInfo.from_huggingface(smollm2_tokenizer) == first
    assert stored.read_bytes() != bytes(data)


def test_a_stored_map_that_disagrees_with_the_tokenizer_is_not_used(private_cache, tmp_path,
                                                                   smollm2_tokenizer):
    """A tokenizer.json replaced after the tokenizer was loaded keys another entry; one whose
    sampled ids spell other bytes than the loaded tokenizer's is ignored."""
    folder = tmp_path / "tokenizer"
    shutil.copytree(FIXTURE, folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    truth = TokenizerInfo.from_huggingface(tokenizer)
    lying = TokenMap(truth.token_bytes.ids, truth.token_bytes.lengths,
                     truth.token_bytes.flat[::-1])  # same ids and CRC-valid, other bytes
    spelling = vocabulary._spelling(tokenizer.backend_tokenizer)
    key = vocabulary._map_key(tokenizer, spelling, tokenizer.added_tokens_decoder,
                              set(truth.special_token_ids))
    vocabulary._store_map(key, lying, truth.vocab_size)
    assert TokenizerInfo.from_huggingface(tokenizer) == truth


def test_no_map_is_stored_with_the_disk_cache_off(private_cache, smollm2_tokenizer, monkeypatch):
    monkeypatch.setenv("STRUCTGEN_DISABLE_DISK_CACHE", "1")
    TokenizerInfo.from_huggingface(smollm2_tokenizer)
    assert not private_cache.exists()


def test_a_token_outside_byte_level_spelling_is_named(monkeypatch):
    from tokenizers import Tokenizer, decoders, models

    monkeypatch.setenv("STRUCTGEN_DISABLE_DISK_CACHE", "1")
    backend = Tokenizer(models.BPE(vocab={"a": 0, "Ġb": 1, "一": 2}, merges=[]))
    backend.decoder = decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="a")
    with pytest.raises(VocabularyError, match=r"token 2 \('一'\) is not in byte-level BPE"):
        TokenizerInfo.from_huggingface(tokenizer)


def test_a_tokenizer_is_read_once_held_weakly_and_left_unchanged(monkeypatch):
    """``tokenizer_info_of`` reads a tokenizer once per object and keeps the result without
    holding the tokenizer or writing onto it; the info it hands out still encodes with it, also
    when the caller dropped its own reference."""
    import gc

    folder = str(Path(__file__).parent / "fixtures" / "smollm2_tokenizer")
    reads = []
    real = TokenizerInfo.from_huggingface.__func__
    monkeypatch.setattr(TokenizerInfo, "from_huggingface",
                        classmethod(lambda cls, tok: reads.append(tok) or real(cls, tok)))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    attributes = set(vars(tokenizer))
    first = vocabulary.tokenizer_info_of(tokenizer)
    second = vocabulary.tokenizer_info_of(tokenizer)
    assert len(reads) == 1 and second.fingerprint == first.fingerprint
    assert set(vars(tokenizer)) == attributes
    assert second.encode(b'{"a": 1}') == tokenizer.encode('{"a": 1}', add_special_tokens=False)
    reads.clear()  # the spy held the tokenizer too
    kept = len(vocabulary._INFOS)
    del tokenizer, first, second
    gc.collect()
    assert len(vocabulary._INFOS) == kept - 1  # the kept info did not hold the tokenizer
    info = vocabulary.tokenizer_info_of(transformers.AutoTokenizer.from_pretrained(folder))
    gc.collect()
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    assert info.encode(b"[1, 2]") == reference.encode("[1, 2]", add_special_tokens=False)
