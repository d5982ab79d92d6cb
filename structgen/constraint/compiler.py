"""compile_constraint: output type -> regex -> outlines-core Index -> CompiledConstraint.

A ``CompiledConstraint`` is immutable and shared: the token-transition table of the outlines-core
index (CSR arrays), the fewest tokens from each state to an accepting one, and lazily built
per-state masks. Per-sequence state lives in the cheap ``Matcher`` it hands out.

Compiles are cached twice, keyed by (structgen and outlines-core versions, regex, tokenizer
fingerprint): in memory, and on disk under ``$STRUCTGEN_CACHE/constraints`` as ``.npz`` files that
load in milliseconds. The whitespace mode is part of the regex, so it is part of the key.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from structgen.constraint._worker import UNREACHABLE, CompileWorker
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.errors import (
    CompileTimeoutError,
    CompileTooLargeError,
    ConstraintError,
    UnsatisfiableSchemaError,
)
from structgen.types import OutputType, as_output_type

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_LIMIT = 8 << 30
MAX_REGEX_CHARS = 2_000_000
_MEMORY_CACHE_SIZE = 64
TABLES_FORMAT = 2  # bump when the meaning of the cached arrays changes


def cache_dir() -> Path:
    """Where structgen keeps converted models and compiled constraints (``$STRUCTGEN_CACHE``)."""
    root = os.environ.get("STRUCTGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "structgen"
    )
    return Path(root)


class _StateRow(NamedTuple):
    tokens: np.ndarray  # allowed token ids, sorted
    nexts: np.ndarray  # the state each leads to
    distances: np.ndarray  # fewest tokens to acceptance after each
    worst_distance: int  # the largest of those: budgets at least this large change nothing
    mask: np.ndarray  # boolean over the vocabulary


class CompiledConstraint:
    """An immutable finite-state constraint over one tokenizer's vocabulary."""

    engine = "outlines-core"

    def __init__(self, tables: dict, *, regex: str, output_type: OutputType | None,
                 whitespace: str, tokenizer_fingerprint: str, eos_token_id: int,
                 compile_seconds: float = 0.0, from_cache: str = "none"):
        self.regex = regex
        self.output_type = output_type
        self.whitespace = whitespace
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.eos_token_id = eos_token_id
        self.compile_seconds = compile_seconds
        self.from_cache = from_cache  # "none", "memory" or "disk"
        self._offsets = tables["offsets"]
        self._tokens = tables["tokens"]
        self._next = tables["next"]
        self._distance = tables["distance"]
        self._is_final = tables["is_final"]
        self.initial_state = int(tables["initial"])
        self.vocab_size = int(tables["vocab_size"])
        self._rows: dict[int, _StateRow] = {}
        self._bitmasks: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def schema(self) -> Any:
        return self.output_type.schema if self.output_type is not None else None

    @property
    def num_states(self) -> int:
        return len(self._is_final)

    @property
    def min_tokens(self) -> int:
        """Fewest tokens of any accepted answer (the EOS token not counted)."""
        return int(self._distance[self.initial_state])

    def matcher(self, max_tokens: int | None = None):
        """A fresh per-sequence cursor; with ``max_tokens`` it steers to finish within that many."""
        from structgen.constraint.matcher import Matcher

        return Matcher(self, max_tokens=max_tokens)

    # --- per-state tables (what the matcher and the logits processor read) -------------------

    def is_final(self, state: int) -> bool:
        return bool(self._is_final[state])

    def distance(self, state: int) -> int:
        return int(self._distance[state])

    def transitions(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, next states) of ``state``, sorted by token id, dead ends removed."""
        row = self._row(state)
        return row.tokens, row.nexts

    def _row(self, state: int) -> "_StateRow":
        """The live transitions of ``state`` and its full mask, built on first visit and kept."""
        row = self._rows.get(state)
        if row is None:
            with self._lock:
                start, end = self._offsets[state], self._offsets[state + 1]
                tokens, nexts = self._tokens[start:end], self._next[start:end]
                distances = np.where(nexts >= 0, self._distance[np.maximum(nexts, 0)], UNREACHABLE)
                alive = distances < UNREACHABLE
                tokens, nexts, distances = tokens[alive], nexts[alive], distances[alive]
                mask = np.zeros(self.vocab_size, dtype=bool)
                mask[tokens] = True
                row = _StateRow(tokens, nexts, distances, int(distances.max(initial=0)), mask)
                self._rows[state] = row
        return row

    def next_state(self, state: int, token_id: int) -> int | None:
        row = self._row(state)
        at = int(np.searchsorted(row.tokens, token_id))
        if at < len(row.tokens) and row.tokens[at] == token_id:
            return int(row.nexts[at])
        return None

    def needs_budget_mask(self, state: int, tokens_left: int) -> bool:
        """True when some token of ``state`` leads where no valid ending fits in ``tokens_left``."""
        return tokens_left < self._row(state).worst_distance

    def mask(self, state: int, tokens_left: int | None = None) -> np.ndarray:
        """Boolean mask over the vocabulary of tokens allowed in ``state``.

        With ``tokens_left`` (tokens that may still follow *after* this one), only tokens from which
        an accepting state stays reachable in time are allowed. The unbudgeted mask is built once
        per state and reused (a memory read per step); a budgeted one only near the end of a budget.
        """
        row = self._row(state)
        if tokens_left is None or tokens_left >= row.worst_distance:
            return row.mask
        budgeted = np.zeros(self.vocab_size, dtype=bool)
        budgeted[row.tokens[row.distances <= tokens_left]] = True
        return budgeted

    def bitmask(self, state: int) -> np.ndarray:
        """``mask(state)`` packed 32 tokens to an int32 word, bit ``i % 32`` of word ``i // 32``."""
        packed = self._bitmasks.get(state)
        if packed is None:
            packed = pack_bitmask(self.mask(state))
            self._bitmasks[state] = packed
        return packed

    def tables(self) -> dict:
        return {
            "offsets": self._offsets, "tokens": self._tokens, "next": self._next,
            "distance": self._distance, "is_final": self._is_final,
            "initial": np.int64(self.initial_state), "vocab_size": np.int64(self.vocab_size),
        }

    def __repr__(self) -> str:
        return (f"CompiledConstraint(engine={self.engine!r}, states={self.num_states}, "
                f"min_tokens={self.min_tokens}, whitespace={self.whitespace!r}, "
                f"compile_seconds={self.compile_seconds:.3f}, from_cache={self.from_cache!r})")


def pack_bitmask(mask: np.ndarray) -> np.ndarray:
    words = (len(mask) + 31) // 32
    packed = np.packbits(mask, bitorder="little")
    packed = np.pad(packed, (0, words * 4 - len(packed)))
    return packed.view(np.int32)


# --- compiling ------------------------------------------------------------------------------


class ConstraintCompiler:
    """Owns the compile worker and both caches; one per process is enough (``default_compiler``)."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 disk_cache: bool = True):
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.disk_cache = disk_cache and os.environ.get("STRUCTGEN_DISABLE_DISK_CACHE") != "1"
        self._memory: OrderedDict[str, CompiledConstraint] = OrderedDict()
        self._worker = CompileWorker(memory_limit)
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the compile worker now (it boots in the background while a model loads)."""
        self._worker.start()

    def compile_regex(self, regex: str, tokenizer_info: TokenizerInfo, *, whitespace: str = "compact",
                      output_type: OutputType | None = None,
                      timeout: float | None = None) -> CompiledConstraint:
        if len(regex) > MAX_REGEX_CHARS:
            raise CompileTooLargeError(
                f"the schema's regex is {len(regex):,} characters (limit {MAX_REGEX_CHARS:,}); "
                "simplify the schema (fewer alternatives, smaller bounded repeats)"
            )
        key = _cache_key(regex, tokenizer_info.fingerprint)
        meta = dict(regex=regex, output_type=output_type, whitespace=whitespace,
                    tokenizer_fingerprint=tokenizer_info.fingerprint,
                    eos_token_id=tokenizer_info.eos_token_id)
        with self._lock:
            cached = self._memory.get(key)
            if cached is not None:
                self._memory.move_to_end(key)
                return _with_meta(cached, meta, "memory")
            started = time.perf_counter()
            tables = self._load(key)
            source = "disk"
            if tables is None:
                tables = self._compile(regex, tokenizer_info, timeout or self.timeout)
                self._store(key, tables)
                source = "none"
            constraint = CompiledConstraint(tables, compile_seconds=time.perf_counter() - started,
                                            from_cache=source, **meta)
            if constraint.distance(constraint.initial_state) >= UNREACHABLE:
                raise UnsatisfiableSchemaError(
                    "no text the tokenizer can write satisfies this constraint"
                )
            self._memory[key] = constraint
            while len(self._memory) > _MEMORY_CACHE_SIZE:
                self._memory.popitem(last=False)
            return constraint

    def _compile(self, regex: str, tokenizer_info: TokenizerInfo, timeout: float) -> dict:
        status, payload = self._worker.compile(regex, tokenizer_info, timeout)
        if status == "ok":
            return payload
        if status == "timeout":
            raise CompileTimeoutError(
                f"compiling the constraint took longer than {timeout:g} s; simplify the schema "
                "or pass a larger timeout"
            )
        if status == "out-of-memory":
            raise CompileTooLargeError(
                f"compiling the constraint needed more than {self.memory_limit / 2**30:.1f} GiB; "
                "simplify the schema"
            )
        raise ConstraintError(f"outlines-core could not compile the regex: {payload}")

    def _path(self, key: str) -> Path:
        return cache_dir() / "constraints" / f"{key}.npz"

    def _load(self, key: str) -> dict | None:
        if not self.disk_cache:
            return None
        path = self._path(key)
        try:
            with np.load(path) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError):
            return None  # absent or unreadable: compile afresh

    def _store(self, key: str, tables: dict) -> None:
        if not self.disk_cache:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(partial, **{k: v for k, v in tables.items() if k != "index_seconds"})
            os.replace(partial, path)  # atomic: readers see the whole file or none
        except OSError:
            pass  # a read-only cache directory costs speed, not correctness

    def close(self) -> None:
        self._worker.stop()


def _with_meta(constraint: CompiledConstraint, meta: dict, source: str) -> CompiledConstraint:
    """The cached tables with this request's metadata (output type, whitespace) attached."""
    copy = CompiledConstraint(constraint.tables(), compile_seconds=0.0, from_cache=source, **meta)
    copy._rows, copy._bitmasks = constraint._rows, constraint._bitmasks
    return copy


def _cache_key(regex: str, fingerprint: str) -> str:
    import outlines_core

    from structgen import __version__

    version = getattr(outlines_core, "__version__", None) or _package_version("outlines_core")
    digest = hashlib.sha256(f"{__version__}|{TABLES_FORMAT}|{version}|{fingerprint}|{regex}".encode())
    return digest.hexdigest()[:32]


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


_default_compiler: ConstraintCompiler | None = None


def default_compiler() -> ConstraintCompiler:
    global _default_compiler
    if _default_compiler is None:
        _default_compiler = ConstraintCompiler()
    return _default_compiler


def compile_constraint(output_type: Any, tokenizer: Any, *, whitespace: str = "compact",
                       timeout: float | None = None) -> CompiledConstraint:
    """Compile an output type (or JSON schema, or ``Regex``) for a tokenizer.

    ``tokenizer`` may be a transformers tokenizer, a ``TokenizerInfo`` or a loaded
    ``structgen.Model``. ``whitespace="compact"`` allows no optional whitespace (no runaway
    whitespace loops, fewest tokens); ``"flexible"`` allows any JSON whitespace (to check text
    written elsewhere).
    """
    from structgen.errors import InvalidSchemaError

    if whitespace not in ("compact", "flexible"):
        raise InvalidSchemaError(f"whitespace must be 'compact' or 'flexible', not {whitespace!r}")
    spec = as_output_type(output_type)
    regex = spec.regex
    if regex is None:
        from structgen.schema import schema_to_regex

        regex = schema_to_regex(spec.schema, whitespace=whitespace)
    info = tokenizer_info_of(tokenizer)
    return default_compiler().compile_regex(regex, info, whitespace=whitespace, output_type=spec,
                                            timeout=timeout)


def tokenizer_info_of(tokenizer: Any) -> TokenizerInfo:
    if isinstance(tokenizer, TokenizerInfo):
        return tokenizer
    info = getattr(tokenizer, "tokenizer_info", None)
    if isinstance(info, TokenizerInfo):
        return info
    cached = getattr(tokenizer, "_structgen_tokenizer_info", None)
    if cached is None:
        cached = TokenizerInfo.from_huggingface(tokenizer)
        try:
            tokenizer._structgen_tokenizer_info = cached
        except AttributeError:
            pass
    return cached
