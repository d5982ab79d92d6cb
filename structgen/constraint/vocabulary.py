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
import itertools
import json
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from structgen import __version__
from structgen.constraint.automaton import concatenated_ranges
from structgen.constraint.cache import (
    discard,
    private_cache_folder,
    read_tables,
    write_private,
    write_tables,
)
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


class TokenMap(Mapping[int, bytes]):
    """A vocabulary's id -> bytes as three arrays: the ids ascending, their lengths, and all
    their bytes joined in id order. It is built, hashed, stored and turned into ``TokenBytes``
    in a few numpy calls, where a dict of 128k bytes objects takes a Python step per token."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray, flat: bytes):
        ids, lengths = np.asarray(ids, np.int64), np.asarray(lengths, np.int64)
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            order = np.argsort(ids, kind="stable")
            ids, lengths, flat = ids[order], lengths[order], _gather(flat, lengths, order)
            if not (ids[1:] > ids[:-1]).all():
                raise VocabularyError("a token id appears twice in the vocabulary")
        if len(ids) and (ids[0] < 0 or lengths.min() < 1):
            raise VocabularyError("token ids must be >= 0 and every token must have bytes")
        if int(lengths.sum()) != len(flat):
            raise VocabularyError("the token lengths do not add up to the bytes given")
        self.ids, self.lengths, self.flat = ids, lengths, bytes(flat)
        self.starts = np.cumsum(lengths) - lengths
        self._position = np.full(int(ids[-1]) + 1 if len(ids) else 0, -1, np.int64)
        self._position[ids] = np.arange(len(ids))

    @classmethod
    def from_dict(cls, token_bytes: Mapping[int, bytes]) -> "TokenMap":
        kept = {int(i): bytes(value) for i, value in token_bytes.items() if value}
        ids = np.fromiter(kept.keys(), np.int64, len(kept))
        lengths = np.fromiter(map(len, kept.values()), np.int64, len(kept))
        return cls(ids, lengths, b"".join(kept.values()))

    def __getitem__(self, token_id) -> bytes:
        if isinstance(token_id, (int, np.integer)) and 0 <= token_id < len(self._position):
            position = self._position[token_id]
            if position >= 0:
                start = int(self.starts[position])
                return self.flat[start:start + int(self.lengths[position])]
        raise KeyError(token_id)

    def __iter__(self):
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, token_id) -> bool:
        return (isinstance(token_id, (int, np.integer)) and 0 <= token_id < len(self._position)
                and self._position[token_id] >= 0)

    def values(self) -> list[bytes]:
        flat, ends = self.flat, (self.starts + self.lengths).tolist()
        return [flat[start:end] for start, end in zip(self.starts.tolist(), ends)]

    def items(self):
        return zip(self.ids.tolist(), self.values())


def _gather(flat: bytes, lengths: np.ndarray, order: np.ndarray) -> bytes:
    """The bytes of tokens ``order`` (positions into ``lengths``), joined in that order."""
    starts = np.cumsum(lengths) - lengths
    index = concatenated_ranges(starts[order], lengths[order])
    return np.frombuffer(flat, np.uint8)[index].tobytes()


@dataclass(frozen=True)
class TokenizerInfo:
    """Token id -> bytes for every ordinary token, plus the end-of-turn id.

    ``token_bytes`` may be given as a dict; it is kept as a ``TokenMap``. ``vocab_size`` is
    ``len(tokenizer)`` (ids ``>= vocab_size`` never appear); ``fingerprint`` identifies the
    mapping so compiled constraints can be cached on disk and matched to models.
    """

    token_bytes: Mapping[int, bytes]
    eos_token_id: int
    vocab_size: int
    special_token_ids: frozenset[int] = field(default_factory=frozenset)
    fingerprint: str = ""
    # The tokenizer's own text -> ids, when known: llguidance allows only the canonical
    # tokenisation of text the grammar forces, so it must tokenise exactly as the model's tokenizer.
    encode: object = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.token_bytes, TokenMap):
            object.__setattr__(self, "token_bytes", TokenMap.from_dict(self.token_bytes))
        if not self.fingerprint:  # ids, then lengths, then bytes, in id order
            tokens = self.token_bytes
            digest = hashlib.sha256()
            digest.update(f"eos={self.eos_token_id};n={self.vocab_size};".encode())
            digest.update(tokens.ids.astype(np.int64).tobytes())
            digest.update(tokens.lengths.astype(np.int64).tobytes())
            digest.update(tokens.flat)
            object.__setattr__(self, "fingerprint", digest.hexdigest()[:24])

    @classmethod
    def from_huggingface(cls, tokenizer, eos_token_id: int | None = None) -> "TokenizerInfo":
        """Read a transformers tokenizer (fast tokenizers: every current hub model has one).

        A tokenizer loaded from a folder with a ``tokenizer.json`` is mapped once per version of
        that file and the map kept in the cache folder (``tokenizers/``): mapping its vocabulary
        costs about 85 ms for Llama-3's 128k tokens, the stored map a few milliseconds. The entry
        is keyed by the file's sha256 and everything else the map depends on (the added and
        special tokens, the length), CRC-checked, and compared with the tokenizer on a sample of
        ids before it is used; anything else is mapped afresh."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise VocabularyError(
                f"{type(tokenizer).__name__} has no fast (tokenizers) backend; structgen needs one "
                "to map token ids to bytes (load it with use_fast=True)"
            )
        spelling = _spelling(backend)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special = {i for i, tok in added.items() if getattr(tok, "special", False)}
        special |= set(getattr(tokenizer, "all_special_ids", []) or [])
        special -= {i for i, tok in added.items() if tok.content in TEXT_TAGS}
        key = _map_key(tokenizer, spelling, added, special)
        tokens, seen = _stored_map(key, backend, spelling, added)
        if tokens is None:
            ids, strings, seen = _ordinary_tokens(tokenizer, backend, added, special)
            extra = {i: added[i].content.encode("utf-8") for i in added  # a non-special added
                     if i < seen and i not in special and backend.id_to_token(i) is not None}
            tokens = _map_vocabulary(ids, strings, spelling, extra)  # token is plain text
            _store_map(key, tokens, seen)
        if eos_token_id is None:
            eos_token_id = end_of_turn_token_id(tokenizer, _Lookup(backend))
        return cls(
            token_bytes=tokens,
            eos_token_id=int(eos_token_id),
            vocab_size=max(len(tokenizer), seen),
            special_token_ids=frozenset(special),
            encode=_Encode(tokenizer),
        )


#: tokenizer -> its TokenizerInfo without ``encode``: held weakly, so a tokenizer the user drops
#: goes with its entry, and nothing is written onto the user's object.
_INFOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INFOS_LOCK = threading.Lock()


def tokenizer_info_of(tokenizer) -> TokenizerInfo:
    """``tokenizer``'s TokenizerInfo (itself if it is one, or the ``tokenizer_info`` a structgen
    model carries), read once per tokenizer object and kept while the tokenizer lives. Each
    call's info holds the tokenizer for its ``encode``; the kept one does not."""
    if isinstance(tokenizer, TokenizerInfo):
        return tokenizer
    info = getattr(tokenizer, "tokenizer_info", None)
    if isinstance(info, TokenizerInfo):
        return info
    try:
        with _INFOS_LOCK:
            kept = _INFOS.get(tokenizer)
    except TypeError:  # not weakly referenceable or not hashable: read it each time
        return TokenizerInfo.from_huggingface(tokenizer)
    if kept is None:
        info = TokenizerInfo.from_huggingface(tokenizer)
        with _INFOS_LOCK:
            _INFOS[tokenizer] = replace(info, encode=None)
        return info
    return replace(kept, encode=_Encode(tokenizer))


def _spelling(backend) -> str:
    """How the tokenizer spells bytes: "byte_level", "sentencepiece" or "raw"."""
    # The decoder's own JSON, not the whole tokenizer's (9 MB for Llama-3, a second to parse).
    decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else {}
    decoder_types = _decoder_types(decoder)
    if "ByteLevel" in decoder_types:
        return "byte_level"
    if "ByteFallback" in decoder_types or getattr(backend.model, "byte_fallback", False):
        return "sentencepiece"
    if "Metaspace" in decoder_types or "Replace" in decoder_types:
        return "sentencepiece"
    return "raw"


def _ordinary_tokens(tokenizer, backend, added: dict,
                     special: set) -> tuple[np.ndarray, list[str], int]:
    """(the ids of the ordinary tokens, ascending; their spellings; one past the largest id of
    any token). Asked id by id where the ids leave no gap (they then come in id order: 60 ms
    for Llama-3's 128k tokens); else read from the vocabulary dict (75 ms, in hash order) and
    put in id order by scattering the ids."""
    size = max(len(tokenizer), backend.get_vocab_size(with_added_tokens=True),
               max(added, default=-1) + 1)
    spelled = list(map(backend.id_to_token, range(size)))
    excluded = special | set(added)
    if None not in spelled:  # `size` distinct tokens fill ids 0..size-1: no id lies beyond
        keep = np.ones(size, bool)
        keep[[i for i in excluded if i < size]] = False
        return np.flatnonzero(keep), list(itertools.compress(spelled, keep.tolist())), size
    vocab = tokenizer.get_vocab()
    every_id = np.fromiter(vocab.values(), np.int64, len(vocab))
    if not len(every_id):
        raise VocabularyError("the tokenizer has no ordinary tokens")
    if every_id.min() < 0:
        raise VocabularyError("token ids must be >= 0 and every token must have bytes")
    seen = int(every_id.max()) + 1
    position = np.full(seen, -1, np.int64)
    ordinary = np.flatnonzero(~np.isin(every_id, list(excluded)))  # positions in the dict
    position[every_id[ordinary]] = ordinary
    ids = np.flatnonzero(position >= 0)
    if len(ids) != len(ordinary):
        raise VocabularyError("a token id appears twice in the vocabulary")
    return ids, list(map(list(vocab).__getitem__, position[ids].tolist())), seen


def _map_vocabulary(ids: np.ndarray, strings: list[str], spelling: str,
                    extra: dict[int, bytes]) -> TokenMap:
    """Every ordinary token's bytes (``ids`` ascending, spelled ``strings``; ``extra``: the
    bytes of the other tokens kept): byte-level spellings in one vectorised pass (a Python
    step per token costs about 0.3 s for Llama-3), other spellings per token."""
    if spelling == "byte_level":
        lengths = np.fromiter(map(len, strings), np.int64, len(strings))
        codes = np.frombuffer("".join(strings).encode("utf-32-le"), np.uint32)
        values = _byte_level_codes()[np.minimum(codes, 512)]
        if (values > 255).any():  # name the first token not in byte-level spelling
            for token_id, token in zip(ids.tolist(), strings):
                if _byte_level_bytes(token) is None:
                    raise VocabularyError(f"token {token_id} ({token!r}) is not in byte-level "
                                          "BPE spelling")
        flat = values.astype(np.uint8).tobytes()
        if extra:
            more = TokenMap.from_dict(extra)
            ids = np.concatenate([ids, more.ids])
            lengths = np.concatenate([lengths, more.lengths])
            flat += more.flat
        keep = lengths > 0
        if not keep.all():
            flat = _gather(flat, lengths, np.flatnonzero(keep))
            ids, lengths = ids[keep], lengths[keep]
        tokens = TokenMap(ids, lengths, flat)
    else:
        spell = _sentencepiece_bytes if spelling == "sentencepiece" else str.encode
        tokens = TokenMap.from_dict({**{i: spell(token) for i, token in zip(ids.tolist(), strings)},
                                     **extra})
    if not len(tokens):
        raise VocabularyError("the tokenizer has no ordinary tokens")
    return tokens


@lru_cache(maxsize=1)
def _byte_level_codes() -> np.ndarray:
    """Code point (below 512; any larger is clipped to 512) -> the byte a byte-level char
    stands for, or 256 where the char is none."""
    table = np.full(513, 256, np.uint16)
    for char, byte in _byte_level_decoder().items():
        table[ord(char)] = byte
    return table


class _Lookup:
    """``token in lookup`` and ``lookup[token]`` through the backend, for the few tokens
    ``end_of_turn_token_id`` asks about (the whole vocabulary dict costs 0.2 s for Llama-3)."""

    def __init__(self, backend):
        self.backend = backend

    def __contains__(self, token: str) -> bool:
        return self.backend.token_to_id(token) is not None

    def __getitem__(self, token: str) -> int:
        return self.backend.token_to_id(token)


# --- the stored maps ----------------------------------------------------------------------------

MAP_FORMAT = 1  # bump when what a stored map holds changes
_SAMPLED_IDS = 64


def _map_key(tokenizer, spelling: str, added: dict, special: set) -> str | None:
    """The key of the tokenizer's stored map: its ``tokenizer.json``'s sha256 and what else the
    map depends on; None where the tokenizer came from no such file (or the cache is off)."""
    if os.environ.get("STRUCTGEN_DISABLE_DISK_CACHE") == "1":
        return None
    source = getattr(tokenizer, "name_or_path", "") or ""
    path = Path(source) / "tokenizer.json" if source else None
    try:
        if path is None or not path.is_file():
            return None
        digest = hashlib.sha256(path.read_bytes())
    except OSError:
        return None
    described = json.dumps({
        "format": MAP_FORMAT, "structgen": __version__, "spelling": spelling,
        "length": len(tokenizer), "special": sorted(special), "text_tags": sorted(TEXT_TAGS),
        "added": sorted((i, tok.content) for i, tok in added.items())})
    digest.update(described.encode())
    return digest.hexdigest()[:32]


def _stored_map(key: str | None, backend, spelling: str,
                added: dict) -> tuple[TokenMap | None, int]:
    """(the stored map, one past its largest id) if the entry is whole and agrees with the
    tokenizer on a sample of ids; (None, 0) otherwise (a damaged entry is removed)."""
    folder = private_cache_folder("tokenizers") if key else None
    if folder is None:
        return None, 0
    path = folder / f"{key}.tables"
    try:
        arrays = read_tables(path, key=key, regex="tokenizer map")
        tokens = TokenMap(arrays["ids"], arrays["lengths"], arrays["flat"].tobytes())
        seen = int(arrays["seen"][0])
    except FileNotFoundError:
        return None, 0
    except (OSError, ValueError, KeyError, IndexError, VocabularyError):
        discard(path)
        return None, 0
    spell = {"byte_level": _byte_level_bytes, "sentencepiece": _sentencepiece_bytes}.get(
        spelling, str.encode)
    sample = tokens.ids[np.linspace(0, len(tokens) - 1, _SAMPLED_IDS).astype(np.int64)].tolist()
    for token_id in sample:
        if token_id not in added and spell(backend.id_to_token(token_id) or "") != tokens[token_id]:
            return None, 0  # the file changed since the tokenizer was loaded: map it afresh
    return tokens, seen


def _store_map(key: str | None, tokens: TokenMap, seen: int) -> None:
    folder = private_cache_folder("tokenizers", create=True) if key else None
    if folder is None:
        return
    arrays = {"ids": tokens.ids.astype(np.int32), "lengths": tokens.lengths.astype(np.int32),
              "flat": np.frombuffer(tokens.flat, np.uint8), "seen": np.array([seen], np.int64)}
    write_private(folder / f"{key}.tables",
                  lambda path: write_tables(path, arrays, key=key, regex="tokenizer map"))


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


def end_of_turn_token_id(tokenizer, vocab: Mapping[str, int] | None = None) -> int:
    """The token that ends an assistant turn: ``<|im_end|>`` in ChatML models, else EOS."""
    vocab = tokenizer.get_vocab() if vocab is None else vocab
    template = getattr(tokenizer, "chat_template", None) or ""
    for candidate in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        if candidate in vocab and (candidate in template or not template):
            return vocab[candidate]
    if tokenizer.eos_token_id is None:
        raise VocabularyError("the tokenizer defines no EOS token and no ChatML <|im_end|>")
    return int(tokenizer.eos_token_id)
