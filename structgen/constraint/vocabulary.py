"""TokenizerInfo: what a constraint needs to know about a tokenizer, and nothing else.

A constraint works on bytes, so every token id is mapped to the exact bytes it adds to the text.
outlines' own mapping decodes tokens to ``str`` and turns every partial-UTF-8 token into the same
``"\\ufffd"`` (the 128,256 Llama-3 ids become 127,040 strings), which makes multi-byte characters
unwritable; we map to ``bytes`` instead, so a token holding half of "é" keeps its half.

Three token spellings cover the tokenizers in use (the same split xgrammar makes):

* byte-level BPE (GPT-2, Llama-3, SmolLM2, Qwen): each byte is one printable unicode char,
* SentencePiece with byte fallback (Llama-2, Mistral): ``▁`` is a space, ``<0x0A>`` is one byte,
* raw: the token string is the text (UTF-8 encoded).

Special tokens (``<|im_start|>``, ``<s>``, ...) never appear inside JSON, so they are left out;
the end-of-turn token is kept as the constraint's EOS, and the Hermes ``<tool_call>`` tags are kept
as text even where a tokenizer marks them special, so a call can open with the single token.

Note the HF pitfall: the model's logits can be wider than ``len(tokenizer)`` (padded lm_head);
masks are sized by the logits, not here.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass, field
from functools import lru_cache

from structgen.errors import VocabularyError

TEXT_TAGS = frozenset({"<tool_call>", "</tool_call>"})


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable char -> the byte it stands for."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


@lru_cache(maxsize=1)
def _byte_level_translation() -> dict[int, int | str]:
    """``str.translate`` table: each byte-level char to the latin-1 char of its byte, any other
    char below U+0100 to U+FFFF (which latin-1 cannot encode, so a foreign spelling is caught)."""
    table: dict[int, int | str] = {c: "\uffff" for c in range(256)}
    table.update({ord(ch): b for ch, b in _byte_level_decoder().items()})
    return table


def _byte_level_bytes(token: str) -> bytes | None:
    try:  # one C-level pass per token: 128k Llama-3 tokens in about 50 ms
        return token.translate(_byte_level_translation()).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _sentencepiece_bytes(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode("utf-8")


@dataclass(frozen=True)
class TokenizerInfo:
    """Token id -> bytes for every ordinary token, plus the end-of-turn id.

    ``vocab_size`` is ``len(tokenizer)`` (ids ``>= vocab_size`` never appear); ``fingerprint``
    identifies the mapping so compiled constraints can be cached on disk and matched to models.
    """

    token_bytes: dict[int, bytes]
    eos_token_id: int
    vocab_size: int
    special_token_ids: frozenset[int] = field(default_factory=frozenset)
    fingerprint: str = ""
    # The tokenizer's own text -> ids, when known: llguidance allows only the canonical
    # tokenisation of text the grammar forces, so it must tokenise exactly as the model's tokenizer.
    encode: object = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not self.fingerprint:  # ids, then lengths, then bytes, in id order
            ids = sorted(self.token_bytes)
            values = [self.token_bytes[token_id] for token_id in ids]
            digest = hashlib.sha256()
            digest.update(f"eos={self.eos_token_id};n={self.vocab_size};".encode())
            digest.update(array("q", ids).tobytes())
            digest.update(array("q", map(len, values)).tobytes())
            digest.update(b"".join(values))
            object.__setattr__(self, "fingerprint", digest.hexdigest()[:24])

    @classmethod
    def from_huggingface(cls, tokenizer, eos_token_id: int | None = None) -> "TokenizerInfo":
        """Read a transformers tokenizer (fast tokenizers: every current hub model has one)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise VocabularyError(
                f"{type(tokenizer).__name__} has no fast (tokenizers) backend; structgen needs one "
                "to map token ids to bytes (load it with use_fast=True)"
            )
        # The decoder's own JSON, not the whole tokenizer's (9 MB for Llama-3, a second to parse).
        decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else {}
        decoder_types = _decoder_types(decoder)
        if "ByteLevel" in decoder_types:
            spelling = "byte_level"
        elif "ByteFallback" in decoder_types or getattr(backend.model, "byte_fallback", False):
            spelling = "sentencepiece"
        elif "Metaspace" in decoder_types or "Replace" in decoder_types:
            spelling = "sentencepiece"
        else:
            spelling = "raw"

        vocab = tokenizer.get_vocab()
        if eos_token_id is None:
            eos_token_id = end_of_turn_token_id(tokenizer, vocab)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special = {i for i, tok in added.items() if getattr(tok, "special", False)}
        special |= set(getattr(tokenizer, "all_special_ids", []) or [])
        special -= {i for i, tok in added.items() if tok.content in TEXT_TAGS}

        token_bytes: dict[int, bytes] = {}
        for token, token_id in vocab.items():
            if token_id in special:
                continue
            if token_id in added:  # a non-special added token is plain text
                token_bytes[token_id] = added[token_id].content.encode("utf-8")
            elif spelling == "byte_level":
                value = _byte_level_bytes(token)
                if value is None:
                    raise VocabularyError(
                        f"token {token_id} ({token!r}) is not in byte-level BPE spelling"
                    )
                token_bytes[token_id] = value
            elif spelling == "sentencepiece":
                token_bytes[token_id] = _sentencepiece_bytes(token)
            else:
                token_bytes[token_id] = token.encode("utf-8")
        token_bytes = {i: b for i, b in token_bytes.items() if b}
        if not token_bytes:
            raise VocabularyError("the tokenizer has no ordinary tokens")
        return cls(
            token_bytes=token_bytes,
            eos_token_id=int(eos_token_id),
            vocab_size=max(len(tokenizer), max(vocab.values()) + 1),
            special_token_ids=frozenset(special),
            encode=_Encode(tokenizer),
        )


class _Encode:
    """``tokenizer.encode`` without special tokens, for UTF-8 bytes (picklable, unlike a lambda)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: bytes) -> list[int]:
        return self.tokenizer.encode(text.decode("utf-8"), add_special_tokens=False)


def _decoder_types(decoder: dict) -> set[str]:
    kinds = {decoder.get("type", "")}
    for child in decoder.get("decoders", []) or []:
        kinds |= _decoder_types(child)
    return kinds


def end_of_turn_token_id(tokenizer, vocab: dict[str, int] | None = None) -> int:
    """The token that ends an assistant turn: ``<|im_end|>`` in ChatML models, else EOS."""
    vocab = tokenizer.get_vocab() if vocab is None else vocab
    template = getattr(tokenizer, "chat_template", None) or ""
    for candidate in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        if candidate in vocab and (candidate in template or not template):
            return vocab[candidate]
    if tokenizer.eos_token_id is None:
        raise VocabularyError("the tokenizer defines no EOS token and no ChatML <|im_end|>")
    return int(tokenizer.eos_token_id)
