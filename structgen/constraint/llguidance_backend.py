"""llguidance: structgen's engine for what a regex cannot say, and its fallback.

Some schemas (``patternProperties``, ``additionalProperties`` schemas next to ``properties``,
unbounded recursion...) are not regular: structgen's regex compiler refuses them, and llguidance,
which computes masks lazily from a grammar, enforces them with its own JSON-schema compiler
(``GrammarConstraint``, ``engine == "llguidance"``). It also serves a schema whose regex the
finite-state engine could not build within its time or memory budget, on that same regex
(identical language).

The vocabulary handed to llguidance is structgen's own ``TokenizerInfo`` (token id -> exact
bytes), so partial-UTF-8 tokens keep their bytes and both engines see the same tokens.

What llguidance cannot give is the fewest tokens to an accepting state, so the budget guarantee
(a started answer always closes within ``max_tokens``) holds only on the finite-state engine: on
a ``GrammarConstraint`` a budget only stops decoding.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import llguidance
import numpy as np

from structgen.constraint.base import Constraint
from structgen.constraint.matcher import Cursor, unpack_bitmask, write_bitmask
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.errors import ConstraintError, UnsupportedSchemaError
from structgen.schema.layout import INDENT, check_whitespace

_TOKENIZERS: dict[str, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


class _TokenBytes:
    """What ``llguidance.TokenizerWrapper`` reads: every id's bytes, EOS, and a tokenize function."""

    def __init__(self, info: TokenizerInfo):
        self.eos_token_id = info.eos_token_id
        self.bos_token_id = None
        self.special_token_ids = sorted(i for i in info.special_token_ids if i < info.vocab_size)
        tokens = [b""] * info.vocab_size
        for token_id, value in info.token_bytes.items():
            if token_id < info.vocab_size:
                tokens[token_id] = value
        for token_id in range(info.vocab_size):
            if not tokens[token_id]:  # special or unused ids: a spelling no text can produce
                tokens[token_id] = b"\xff<special_%d>" % token_id
        self.tokens = tokens
        self._by_bytes = {value: i for i, value in sorted(info.token_bytes.items(), reverse=True)}
        self._longest = max(map(len, self._by_bytes))
        self._encode = info.encode

    def __call__(self, text: bytes) -> list[int]:
        """The tokenizer's own tokenisation (llguidance allows only that one for forced text);
        greedy longest match where it is not known or the bytes are not whole UTF-8."""
        if self._encode is not None:
            try:
                return list(self._encode(text))
            except UnicodeDecodeError:
                pass
        ids, at = [], 0
        while at < len(text):
            for width in range(min(self._longest, len(text) - at), 0, -1):
                token_id = self._by_bytes.get(text[at:at + width])
                if token_id is not None:
                    ids.append(token_id)
                    at += width
                    break
            else:
                raise ValueError(f"byte {text[at]:#x} has no token")
        return ids


def ll_tokenizer(info: TokenizerInfo):
    """llguidance's tokenizer for ``info``, built once per process (about a second for 128k ids)."""
    with _TOKENIZERS_LOCK:
        tokenizer = _TOKENIZERS.get(info.fingerprint)
        if tokenizer is None:
            wrapper = llguidance.TokenizerWrapper(_TokenBytes(info))
            tokenizer = llguidance.LLTokenizer(wrapper, n_vocab=info.vocab_size)
            _TOKENIZERS[info.fingerprint] = tokenizer
        return tokenizer


def regex_grammar(regex: str) -> str:
    return llguidance.LLMatcher.grammar_from_regex(regex)


#: How deep ``indented`` mode may indent on llguidance's JSON grammar (see ``JSON_OPTIONS``).
INDENT_LEVELS = 32

#: llguidance's JSON-compiler options for each whitespace mode. Its separators are regexes, and
#: its whitespace (``whitespace_pattern``) may stand once between any two tokens, never around
#: the whole text. ``compact`` and ``spaced`` are exact. ``indented`` cannot be: llguidance has no
#: notion of the nesting level, so between any two tokens it allows nothing or one newline with
#: up to ``INDENT_LEVELS`` indentation steps (bounded, so it cannot loop; the json.dumps layout is
#: one of the texts it admits). ``flexible`` admits any whitespace between tokens.
JSON_OPTIONS: dict[str, dict] = {
    "compact": {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"},
    "spaced": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
    "indented": {"whitespace_flexible": True, "item_separator": ",", "key_separator": ": ",
                 "whitespace_pattern": rf"\n(?:{INDENT}){{0,{INDENT_LEVELS}}}"},
    "flexible": {"whitespace_flexible": True},
}


def json_schema_grammar(schema: Any, whitespace: str) -> str:
    """llguidance's own JSON-schema compiler, with structgen's whitespace modes."""
    options = JSON_OPTIONS[check_whitespace(whitespace)]
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=options)
    except ValueError as error:
        raise UnsupportedSchemaError(f"llguidance cannot read this schema: {error}") from None


class GrammarConstraint(Constraint):
    """A constraint whose masks llguidance computes on demand (``engine == "llguidance"``)."""

    engine = "llguidance"

    def __init__(self, grammar: str, info: TokenizerInfo, *, regex: str | None, output_type,
                 whitespace: str, fallback_reason: str | None = None):
        started = time.perf_counter()
        self.grammar = grammar
        self.regex = regex
        self.output_type = output_type
        self.whitespace = whitespace
        self.tokenizer_fingerprint = info.fingerprint
        self.eos_token_id = info.eos_token_id
        self.vocab_size = info.vocab_size
        self.fallback_reason = fallback_reason
        self._tokenizer = ll_tokenizer(info)
        first = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if first.is_error():
            raise ConstraintError(f"llguidance cannot compile this constraint: {first.get_error()}")
        self.compile_seconds = time.perf_counter() - started

    def _ll_matcher(self):
        """A fresh llguidance matcher (each sequence its own: nothing shared is written)."""
        return llguidance.LLMatcher(self._tokenizer, self.grammar, log_level=0)

    def matcher(self, max_tokens: int | None = None) -> "GrammarMatcher":
        return GrammarMatcher(self, max_tokens=max_tokens)

    def __repr__(self) -> str:
        return (f"GrammarConstraint(engine='llguidance', whitespace={self.whitespace!r}, "
                f"regex={'yes' if self.regex else 'no'}, fallback_reason={self.fallback_reason!r})")


class GrammarMatcher(Cursor):
    """The ``Matcher`` API over an ``llguidance.LLMatcher``. A budget stops it, without steering."""

    def __init__(self, constraint: GrammarConstraint, max_tokens: int | None = None):
        self.constraint = constraint
        self.max_tokens = max_tokens
        self.tokens_consumed = 0
        self.finished = False
        self._matcher = constraint._ll_matcher()
        self._words = (constraint.vocab_size + 31) // 32
        self._bits = np.zeros(self._words, dtype=np.int32)

    def is_finished(self) -> bool:
        return self.finished or self.tokens_left == 0

    def _fill(self) -> np.ndarray:
        if self.is_finished():
            self._bits[:] = 0
        elif self._matcher.is_stopped():  # complete, nothing can follow: only EOS (as the index)
            self._bits[:] = 0
            eos = self.constraint.eos_token_id
            self._bits[eos >> 5] = np.int32(np.uint32(1 << (eos & 31)).view(np.int32))
        else:
            self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        return self._bits

    def mask(self) -> np.ndarray:
        return unpack_bitmask(self._fill(), self.constraint.vocab_size)

    def fill_bitmask(self, buffer, row: int = 0) -> None:
        write_bitmask(buffer, row, self._fill())

    def advance(self, token_id: int) -> bool:
        if self.finished or self.tokens_left == 0:
            return False
        token_id = int(token_id)
        if not 0 <= token_id < self.constraint.vocab_size:
            return False
        if token_id == self.constraint.eos_token_id and self._matcher.is_stopped():
            self.finished = True
            self.tokens_consumed += 1
            return True
        if self._matcher.validate_tokens([token_id]) != 1:  # a refused token would poison it
            return False
        self._matcher.consume_token(token_id)
        self.tokens_consumed += 1
        if token_id == self.constraint.eos_token_id:
            self.finished = True
        return True

    def is_accepting(self) -> bool:
        return self._matcher.is_accepting()

    def min_tokens_to_accept(self) -> int | None:
        """0 when accepting; otherwise unknown to llguidance (None)."""
        return 0 if self.is_accepting() else None

    def __repr__(self) -> str:
        return (f"GrammarMatcher(accepting={self.is_accepting()}, tokens_consumed="
                f"{self.tokens_consumed}, tokens_left={self.tokens_left})")
