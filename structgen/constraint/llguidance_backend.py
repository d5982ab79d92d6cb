"""llguidance: structgen's second engine, for an instant start and for what a regex cannot say.

outlines-core's finite-state index gives lookup-speed masks but takes from milliseconds to minutes
to build, and some schemas (``patternProperties``, ``additionalProperties`` schemas next to
``properties``, unbounded recursion...) are not regular at all. llguidance computes masks lazily
from a grammar, so it starts in about a millisecond and covers those schemas. structgen uses it

- as a fallback (``GrammarConstraint``) when the finite-state compile is refused, times out or
  runs out of memory: schemas structgen's own regex compiler supports run on that same regex
  (identical language), the rest on llguidance's JSON-schema compiler;
- as a head start (``HybridConstraint``): decoding starts on llguidance (its own JSON grammar, or
  structgen's regex when llguidance refuses the schema) while the finite-state index compiles in
  the background; once the index lands, the tokens taken so far are replayed into it and the
  sequence continues on lookup masks. llguidance's JSON grammar admits a little more than the
  index (undeclared properties, for one): a sequence that took such a token stays on llguidance.

The vocabulary handed to llguidance is structgen's own ``TokenizerInfo`` (token id -> exact
bytes), so partial-UTF-8 tokens keep their bytes and both engines see the same tokens.

What llguidance cannot give is the fewest tokens to an accepting state, so the budget guarantee
(a started answer always closes within ``max_tokens``) holds only on the finite-state engine: on
a ``GrammarConstraint`` a budget only stops decoding, and a ``HybridConstraint`` guarantees it from
the moment it switches.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from structgen.constraint.matcher import Cursor, write_bitmask
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.errors import ConstraintError, UnsupportedSchemaError

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
    import llguidance

    with _TOKENIZERS_LOCK:
        tokenizer = _TOKENIZERS.get(info.fingerprint)
        if tokenizer is None:
            wrapper = llguidance.TokenizerWrapper(_TokenBytes(info))
            tokenizer = llguidance.LLTokenizer(wrapper, n_vocab=info.vocab_size)
            _TOKENIZERS[info.fingerprint] = tokenizer
        return tokenizer


def regex_grammar(regex: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_regex(regex)


def json_schema_grammar(schema: Any, whitespace: str) -> str:
    """llguidance's own JSON-schema compiler, with structgen's whitespace modes."""
    import llguidance

    if whitespace == "compact":
        options = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
    else:
        options = {"whitespace_flexible": True}
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=options)
    except ValueError as error:
        raise UnsupportedSchemaError(f"llguidance cannot read this schema: {error}") from None


class Constraint:
    """What every engine's constraint offers the decoding loop (see ``CompiledConstraint``)."""

    engine = "?"
    regex: str | None = None
    output_type = None
    whitespace = "compact"
    tokenizer_fingerprint = ""
    eos_token_id = -1
    vocab_size = 0
    compile_seconds = 0.0
    from_cache = "none"
    fallback_reason: str | None = None

    @property
    def schema(self) -> Any:
        return self.output_type.schema if self.output_type is not None else None

    @property
    def min_tokens(self) -> int:
        return 1

    def matcher(self, max_tokens: int | None = None):
        raise NotImplementedError


class GrammarConstraint(Constraint):
    """A constraint whose masks llguidance computes on demand (``engine == "llguidance"``)."""

    engine = "llguidance"

    def __init__(self, grammar: str, info: TokenizerInfo, *, regex: str | None, output_type,
                 whitespace: str, fallback_reason: str | None = None):
        import llguidance

        started = time.perf_counter()
        self._llguidance = llguidance
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
        self._spare: list = [first]  # the matcher built to validate serves the first sequence
        self.compile_seconds = time.perf_counter() - started

    def _ll_matcher(self):
        try:
            return self._spare.pop()
        except IndexError:  # the spare is taken: build one
            pass
        return self._llguidance.LLMatcher(self._tokenizer, self.grammar, log_level=0)

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
        packed = self._fill().view(np.uint8)
        return np.unpackbits(packed, bitorder="little")[: self.constraint.vocab_size].astype(bool)

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


class HybridConstraint(Constraint):
    """Starts on llguidance over ``regex`` while the finite-state index compiles in the background.

    ``engine`` reads ``"llguidance+outlines-core"``; ``fsm()`` is the compiled index once it has
    landed (None before, or if its compile failed: then every sequence stays on llguidance and
    ``fallback_reason`` says why).
    """

    engine = "llguidance+outlines-core"

    def __init__(self, grammar: GrammarConstraint, pending: Future):
        self.grammar = grammar
        self.pending = pending
        for name in ("regex", "output_type", "whitespace", "tokenizer_fingerprint", "eos_token_id",
                     "vocab_size"):
            setattr(self, name, getattr(grammar, name))
        self.compile_seconds = grammar.compile_seconds

    def fsm(self, wait: float | None = 0.0):
        """The finite-state constraint if it is ready (waiting up to ``wait`` seconds, None = forever)."""
        if wait is not None and wait <= 0 and not self.pending.done():
            return None
        try:
            return self.pending.result(timeout=wait)
        except TimeoutError:
            return None
        except Exception as error:  # the background compile failed: stay on llguidance
            self.fallback_reason = f"{type(error).__name__}: {error}"
            return None

    def matcher(self, max_tokens: int | None = None) -> "HybridMatcher":
        return HybridMatcher(self, max_tokens=max_tokens)

    def __repr__(self) -> str:
        state = "ready" if self.pending.done() else "compiling"
        return f"HybridConstraint(index {state}, whitespace={self.whitespace!r})"


class HybridMatcher(Cursor):
    """Runs on llguidance, and moves to the finite-state matcher as soon as the index is ready."""

    def __init__(self, constraint: HybridConstraint, max_tokens: int | None = None):
        self.constraint = constraint
        self.max_tokens = max_tokens
        self._taken: list[int] | None = []  # None once switched
        self.active = constraint.grammar.matcher(max_tokens=max_tokens)
        self._switch()

    @property
    def on_fsm(self) -> bool:
        return not isinstance(self.active, GrammarMatcher)

    def _switch(self) -> None:
        if self._taken is None:
            return
        fsm = self.constraint.fsm()
        if fsm is None:
            return
        matcher = fsm.matcher()
        for token_id in self._taken:
            if not matcher.advance(token_id):  # llguidance's JSON grammar allowed more: stay on it
                self.constraint.fallback_reason = f"the index refused replayed token {token_id}"
                self._taken = None  # stop recording: this sequence finishes on llguidance
                return
        left = self.tokens_left
        if left is not None and fsm.distance(matcher.state) <= left:
            matcher.max_tokens = self.max_tokens  # the budget guarantee holds from here on
        self.active = matcher
        self._taken = None

    def current(self):
        """The matcher in charge now (switching to the finite-state one if it has landed)."""
        self._switch()
        return self.active

    @property
    def tokens_consumed(self) -> int:
        return self.active.tokens_consumed

    def mask(self) -> np.ndarray:
        self._switch()
        if self.tokens_left == 0:
            return np.zeros(self.constraint.vocab_size, dtype=bool)
        return self.active.mask()

    def fill_bitmask(self, buffer, row: int = 0) -> None:
        self._switch()
        if self.tokens_left == 0:
            target = buffer[row] if getattr(buffer, "ndim", 1) == 2 else buffer
            target[:] = 0
            return
        self.active.fill_bitmask(buffer, row)

    def advance(self, token_id: int) -> bool:
        self._switch()
        if self.tokens_left == 0 or not self.active.advance(token_id):
            return False
        if self._taken is not None:
            self._taken.append(int(token_id))
        return True

    def is_accepting(self) -> bool:
        return self.active.is_accepting()

    def is_finished(self) -> bool:
        return self.tokens_left == 0 or self.active.is_finished()

    def min_tokens_to_accept(self) -> int | None:
        return self.active.min_tokens_to_accept()

    def __repr__(self) -> str:
        return (f"HybridMatcher(on={'outlines-core' if self.on_fsm else 'llguidance'}, "
                f"tokens_consumed={self.tokens_consumed})")
