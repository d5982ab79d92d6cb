"""TokenizerInfo maps every ordinary token to the exact bytes it writes."""

from __future__ import annotations

import pytest

from structgen.constraint.vocabulary import TokenizerInfo

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


def test_fingerprint_identifies_the_mapping(smollm2_tokenizer, llama3_tokenizer):
    a = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    b = TokenizerInfo.from_huggingface(smollm2_tokenizer)
    c = TokenizerInfo.from_huggingface(llama3_tokenizer)
    assert a.fingerprint == b.fingerprint != c.fingerprint
