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
  index (undeclared properties, for one): a sequence that took such a token stays on llguidance,
  and an unbudgeted sequence that switched keeps llguidance beside the index (``HybridMatcher``).

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

from structgen.constraint.matcher import Cursor, unpack_bitmask, write_bitmask
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.errors import ConstraintError, UnsupportedSchemaError
from structgen.schema.to_regex import DEFAULT_WHITESPACE, INDENT, check_whitespace

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


def settle(future: Future, function, *args, **options) -> None:
    """Run ``function`` and deliver its result, or what it raised, to ``future``."""
    try:
        future.set_result(function(*args, **options))
    except BaseException as error:  # delivered to whoever waits on the future
        future.set_exception(error)


def regex_grammar(regex: str) -> str:
    import llguidance

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


def llguidance_writes_exactly(whitespace: str) -> bool:
    """Whether llguidance's JSON grammar spells whitespace as the regex of this mode does."""
    return whitespace != "indented"


def json_schema_grammar(schema: Any, whitespace: str) -> str:
    """llguidance's own JSON-schema compiler, with structgen's whitespace modes."""
    import llguidance

    options = JSON_OPTIONS[check_whitespace(whitespace)]
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=options)
    except ValueError as error:
        raise UnsupportedSchemaError(f"llguidance cannot read this schema: {error}") from None


class Constraint:
    """What every engine's constraint offers the decoding loop (see ``CompiledConstraint``)."""

    engine = "?"
    regex: str | None = None
    output_type = None
    whitespace = DEFAULT_WHITESPACE
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


class HybridConstraint(Constraint):
    """Starts on llguidance while the finite-state index compiles in the background.

    ``engine`` reads ``"llguidance+outlines-core"``; ``fsm()`` is the compiled index once it has
    landed (None before, or if its compile failed: then every sequence stays on llguidance and
    ``fallback_reason`` says why). ``grammar`` is llguidance's constraint: its JSON grammar
    (``exact``: it has none of the index's departures) or, for a schema it refuses, structgen's
    regex. ``HybridConstraint.landed`` wraps an index that is already there (a cache hit), with
    llguidance's JSON grammar built only once an unbudgeted matcher wants it, in a background
    thread started once the first mask is out (that mask is ``start_mask`` when known).
    """

    engine = "llguidance+outlines-core"

    def __init__(self, grammar: GrammarConstraint | None, pending: Future, *,
                 build_grammar=None, covered: dict[int, bool] | None = None,
                 start: tuple[np.ndarray, bool] | None = None, record_start=None):
        self._grammar = grammar
        self._build_grammar = build_grammar
        self._building: Future | None = None
        self._grammar_lock = threading.Lock()
        self.pending = pending
        self.exact = grammar.regex is None if grammar is not None else build_grammar is not None
        source = grammar if grammar is not None else pending.result()
        for name in ("regex", "output_type", "whitespace", "tokenizer_fingerprint", "eos_token_id",
                     "vocab_size", "compile_seconds", "from_cache"):
            setattr(self, name, getattr(source, name))
        # index state -> whether llguidance's mask added nothing there (shared by all sequences)
        self.covered: dict[int, bool] = {} if covered is None else covered
        # The first unbudgeted mask, index OR llguidance (None: not known yet). Unlike ``covered``
        # it is exact: before the first token both engines are in their start state.
        self.start_mask: np.ndarray | None = None
        self.start_covered: bool | None = None  # whether llguidance adds nothing to it
        if start is not None:
            self.start_mask, self.start_covered = start
        self._record_start = record_start

    @classmethod
    def landed(cls, index, build_grammar, covered: dict[int, bool] | None = None,
               start: tuple[np.ndarray, bool] | None = None, record_start=None):
        done: Future = Future()
        done.set_result(index)
        return cls(None, done, build_grammar=build_grammar, covered=covered, start=start,
                   record_start=record_start)

    def learned_start(self, union: np.ndarray, covered: bool) -> None:
        """Keep the first mask (the compiler keeps it on disk for the next process)."""
        if self.start_mask is None:
            self.start_mask, self.start_covered = np.array(union), covered
            if self._record_start is not None:
                self._record_start(self.start_mask, covered)

    def prepare_grammar(self) -> None:
        """Start building llguidance's grammar in a background thread, if it is still to build:
        its build runs mostly outside the GIL while the index serves the first masks."""
        with self._grammar_lock:
            if self._build_grammar is None or self._building is not None:
                return
            self._building = building = Future()
            build = self._build_grammar

        def run():
            time.sleep(0)  # hand the GIL straight back: the caller is returning a first mask
            settle(building, build)

        threading.Thread(target=run, name="structgen-llguidance", daemon=True).start()

    @property
    def grammar(self) -> GrammarConstraint | None:
        """llguidance's constraint (waiting for a background build, or building it now)."""
        with self._grammar_lock:
            building, build = self._building, self._build_grammar
        if building is not None:
            grammar = building.result()
        elif build is not None:
            grammar = build()
        else:
            return self._grammar
        with self._grammar_lock:
            self._grammar, self._build_grammar, self._building = grammar, None, None
        return grammar

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
    """Runs on llguidance, and moves to the finite-state matcher as soon as the index is ready.

    Without a budget, when llguidance runs the schema's own JSON grammar (``constraint.exact``),
    the sequence keeps both engines after the switch and allows what either allows: the index's
    regex is a documented narrowing of the schema (no undeclared properties, capped nesting of
    open values...), llguidance's grammar misses a few spellings the index writes (``\\u``
    escapes), and both are sound, so their union is too. The index's lookup mask serves every
    index state at which llguidance's mask was seen to add nothing (``constraint.covered``);
    elsewhere llguidance's mask is OR'd in. The first mask is ``constraint.start_mask`` once
    known (exact, and kept on disk: a cache hit's first mask is a read). llguidance is fed the
    tokens only when it is asked. Each engine is dropped when it cannot follow a token taken.
    With a budget only the index can promise to close in time, so it alone steers once it has
    landed.
    """

    def __init__(self, constraint: HybridConstraint, max_tokens: int | None = None):
        self.constraint = constraint
        self.max_tokens = max_tokens
        self.tokens_consumed = 0
        self.fsm = None  # the index's Matcher once switched (None again if it was dropped)
        self.grammar: GrammarMatcher | None = None  # llguidance's, built when first asked
        self._grammar_gone = False  # dropped (refused a token) or not wanted beside the index
        self._taken: list[int] | None = []  # for the replay; None once the switch is settled
        self._behind: list[int] = []  # tokens taken that llguidance has not been fed yet
        self.last_mask = ""  # who made the latest mask: "llguidance", "index", "index|llguidance"
        self._switch()
        if self.fsm is None:
            self._grammar_caught_up()  # the index has not landed: llguidance steers

    @property
    def on_fsm(self) -> bool:
        return self.fsm is not None

    @property
    def active(self):
        """The matcher that steers: the index's once switched, else llguidance's."""
        return self.fsm if self.fsm is not None else self.grammar

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
        self.fsm = matcher
        self._taken = None
        if self.max_tokens is not None or not self.constraint.exact:
            self.grammar, self._grammar_gone, self._behind = None, True, []

    def current(self):
        """The matcher in charge now (switching to the finite-state one if it has landed)."""
        self._switch()
        return self.active

    def _grammar_caught_up(self) -> bool:
        """llguidance's matcher fed every token taken so far; False if it is gone."""
        if self._grammar_gone:
            return False
        if self.grammar is None:
            source = self.constraint.grammar
            if source is None:  # llguidance refuses the schema
                self._grammar_gone = True
                return False
            self.grammar = source.matcher()  # the budget is this matcher's to enforce
        for token_id in self._behind:
            if not self.grammar.advance(token_id):
                self.grammar, self._grammar_gone = None, True
                break
        self._behind = []
        return not self._grammar_gone

    def _bits(self) -> np.ndarray:
        """The allowed-token bitmask (int32 words), see the class docstring."""
        self._switch()
        if self.is_finished():
            return np.zeros((self.constraint.vocab_size + 31) // 32, dtype=np.int32)
        if self.fsm is None:
            self.last_mask = "llguidance"
            return self.grammar._fill()
        self.last_mask = "index"
        if self._grammar_gone:
            return self.fsm.packed_bitmask()
        start = self.tokens_consumed == 0  # before the first token: what is known there is exact
        if start and self.constraint.start_mask is not None:  # (a read: no index page touched)
            if not self.constraint.start_covered:
                self.last_mask = "index|llguidance"
            self.constraint.prepare_grammar()  # the first mask is out: build llguidance meanwhile
            return self.constraint.start_mask
        lookup = self.fsm.packed_bitmask()
        state = self.fsm.state
        covered = None if start else self.constraint.covered.get(state)
        if covered or not self._grammar_caught_up():
            return lookup
        self.last_mask = "index|llguidance"
        union = lookup | self.grammar._fill()
        adds_nothing = bool(np.array_equal(union, lookup))
        self.constraint.covered.setdefault(state, adds_nothing)
        if start:
            self.constraint.learned_start(union, adds_nothing)
        return union

    def mask(self) -> np.ndarray:
        return unpack_bitmask(self._bits(), self.constraint.vocab_size)

    def fill_bitmask(self, buffer, row: int = 0) -> None:
        write_bitmask(buffer, row, self._bits())

    def advance(self, token_id: int) -> bool:
        self._switch()
        if self.is_finished():
            return False
        token_id = int(token_id)
        if self.fsm is not None and self.fsm.advance(token_id):
            if not self._grammar_gone:
                self._behind.append(token_id)
        elif self._grammar_caught_up() and self.grammar.advance(token_id):
            self.fsm = None  # a token only llguidance allows: it alone goes on
        else:
            return False
        if self._taken is not None:
            self._taken.append(token_id)
        self.tokens_consumed += 1
        return True

    def is_accepting(self) -> bool:
        if self.fsm is not None and self.fsm.is_accepting():
            return True
        return self._grammar_caught_up() and self.grammar.is_accepting()

    def is_finished(self) -> bool:
        return self.tokens_left == 0 or self.active.is_finished()

    def min_tokens_to_accept(self) -> int | None:
        return self.active.min_tokens_to_accept()

    def __repr__(self) -> str:
        engines = [name for name, on in (("outlines-core", self.fsm), ("llguidance", self.grammar))
                   if on is not None]
        return f"HybridMatcher(on={'+'.join(engines)}, tokens_consumed={self.tokens_consumed})"
