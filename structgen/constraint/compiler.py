"""compile_constraint: output type -> regex -> outlines-core Index -> CompiledConstraint.

A ``CompiledConstraint`` is immutable and shared: the token-transition table of the outlines-core
index (CSR arrays), the fewest tokens from each state to an accepting one, and lazily built
per-state masks. Per-sequence state lives in the cheap ``Matcher`` it hands out.

Compiles are cached twice, keyed by (structgen and outlines-core versions, regex, tokenizer
fingerprint): in memory, and on disk under ``$STRUCTGEN_CACHE/constraints`` as one file of
arrays per constraint (``write_tables``), memory-mapped on load when large (no copy: a hit costs
one file open, and mask rows are paged in as states are visited). The whitespace mode is part of
the regex, so it is part of the key. Every cache file proves what it belongs to and that it is
whole (its key, its regex, CRCs), and one that does not is removed and computed afresh: the cache
folder is private to the user and ignored, with a warning, where others can write it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import mmap
import os
import queue
import tempfile
import threading
import time
import warnings
import zlib
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from structgen.constraint._worker import UNREACHABLE, CompileWorker, state_checksum
from structgen.constraint.llguidance_backend import (
    Constraint,
    GrammarConstraint,
    HybridConstraint,
    json_schema_grammar,
    llguidance_writes_exactly,
    regex_grammar,
    settle,
)
from structgen.constraint.matcher import unpack_bitmask
from structgen.constraint.vocabulary import TokenizerInfo
from structgen.errors import (
    CompileTimeoutError,
    CompileTooLargeError,
    ConstraintError,
    RecursionLimitError,
    RegexTooLargeError,
    UnsafeCacheWarning,
    UnsatisfiableSchemaError,
    UnsupportedSchemaError,
)
from structgen.schema import DEFAULT_WHITESPACE, schema_to_regex
from structgen.schema.normalize import normalize_check
from structgen.schema.to_regex import check_whitespace
from structgen.types import OutputType, as_output_type

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_LIMIT = 8 << 30
MAX_REGEX_CHARS = 2_000_000
_MEMORY_CACHE_SIZE = 64
TABLES_FORMAT = 5  # bump when the meaning of the cached arrays changes (5: key, regex and CRCs inside)


def cache_dir() -> Path:
    """Where structgen keeps converted models and compiled constraints (``$STRUCTGEN_CACHE``)."""
    root = os.environ.get("STRUCTGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "structgen"
    )
    return Path(root)


_WARNED: set[str] = set()


def constraints_dir(create: bool = False) -> Path | None:
    """The constraint cache folder (``private_cache_folder``)."""
    return private_cache_folder("constraints", create)


def private_cache_folder(name: str, create: bool = False) -> Path | None:
    """The cache folder ``name`` (compiled constraints, converted models), or None where it must
    not be used: a folder (or the cache folder above it) that another user can write may hold
    planted entries, so it is ignored with a warning. structgen makes it 0700, and tightens one an
    older structgen left readable."""
    root = cache_dir()
    folder = root / name
    try:
        if create:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
        for path in (root, folder):
            status = path.stat()
            if status.st_uid not in (os.getuid(), 0) or status.st_mode & 0o022:
                if str(path) not in _WARNED:
                    _WARNED.add(str(path))
                    warnings.warn(
                        f"structgen ignores its {name} cache at {path}: other users can write "
                        f"there (mode {status.st_mode & 0o777:o}, owner uid {status.st_uid}), so an "
                        f"entry could be planted; make it private (chmod 700 {path}) or set "
                        "STRUCTGEN_CACHE to a private folder", UnsafeCacheWarning, stacklevel=3)
                return None
        if status.st_mode & 0o077 and status.st_uid == os.getuid():  # ``status`` is the folder's
            folder.chmod(0o700)
    except OSError:  # absent (and not to be made), or unreadable
        return None
    return folder


def _write_private(path: Path, write) -> None:
    """``write(partial_path)``, then rename it to ``path``: readers see the whole file or none,
    and it is private to this user (mkstemp makes it 0600). A read-only cache is no error."""
    try:
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return
    os.close(handle)
    try:
        write(Path(partial))
        os.replace(partial, path)
    except OSError:
        Path(partial).unlink(missing_ok=True)


class CompiledConstraint(Constraint):
    """An immutable finite-state constraint over one tokenizer's vocabulary."""

    engine = "outlines-core"

    def __init__(self, tables: dict, *, regex: str, output_type: OutputType | None,
                 whitespace: str, tokenizer_fingerprint: str, eos_token_id: int,
                 compile_seconds: float = 0.0, from_cache: str = "none",
                 pending: PendingChecks | None = None):
        self.regex = regex
        self.output_type = output_type
        self.whitespace = whitespace
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.eos_token_id = eos_token_id
        self.compile_seconds = compile_seconds
        self.from_cache = from_cache  # "none", "memory" or "disk"
        self._tables = tables  # shared by every copy: a repair replaces tokens, next and masks in it
        self._pending = pending  # a disk hit's pieces not checked yet (None: nothing to check)
        self._offsets = tables["offsets"]
        self._distance = tables["distance"]
        self._worst = tables["worst"]
        self._is_final = tables["is_final"]
        self._mask_of_state = tables["mask_of_state"]
        self.initial_state = int(tables["initial"])
        self.vocab_size = int(tables["vocab_size"])
        self._bool_masks: dict[int, np.ndarray] = {}
        self._bitmasks: dict[int, np.ndarray] = {}  # states past the precomputed budget

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
        if self._pending is not None and not self._pending.states[state]:
            self._pending.check_state(state)
        start, end = self._offsets[state], self._offsets[state + 1]
        return self._tables["tokens"][start:end], self._tables["next"][start:end]

    def next_state(self, state: int, token_id: int) -> int | None:
        tokens, nexts = self.transitions(state)
        at = int(np.searchsorted(tokens, token_id))
        if at < len(tokens) and tokens[at] == token_id:
            return int(nexts[at])
        return None

    def needs_budget_mask(self, state: int, tokens_left: int) -> bool:
        """True when some token of ``state`` leads where no valid ending fits in ``tokens_left``."""
        return tokens_left < int(self._worst[state])

    def mask(self, state: int, tokens_left: int | None = None) -> np.ndarray:
        """Boolean mask over the vocabulary of tokens allowed in ``state``.

        With ``tokens_left`` (tokens that may still follow *after* this one), only tokens from which
        an accepting state stays reachable in time are allowed. The unbudgeted mask is built once
        per state and reused; a budgeted one only near the end of a budget.
        """
        if tokens_left is None or not self.needs_budget_mask(state, tokens_left):
            cached = self._bool_masks.get(state)
            if cached is None:
                cached = unpack_bitmask(self.bitmask(state), self.vocab_size)
                self._bool_masks[state] = cached
            return cached
        tokens, nexts = self.transitions(state)
        budgeted = np.zeros(self.vocab_size, dtype=bool)
        budgeted[tokens[self._distance[nexts] <= tokens_left]] = True
        return budgeted

    def bitmask(self, state: int) -> np.ndarray:
        """``mask(state)`` packed 32 tokens to an int32 word, bit ``i % 32`` of word ``i // 32``.

        Precomputed at compile time (a read); states past the precompute budget are packed on
        first visit and kept.
        """
        row = self._mask_of_state[state]
        if row >= 0:
            if self._pending is not None and not self._pending.rows[row]:
                self._pending.check_row(row)
            return self._tables["masks"][row]
        packed = self._bitmasks.get(state)
        if packed is None:
            bits = np.zeros(self.vocab_size, dtype=bool)
            bits[self.transitions(state)[0]] = True
            packed = pack_bitmask(bits)
            self._bitmasks[state] = packed
        return packed

    def tables(self) -> dict:
        return self._tables

    def __repr__(self) -> str:
        return (f"CompiledConstraint(engine={self.engine!r}, states={self.num_states}, "
                f"min_tokens={self.min_tokens}, whitespace={self.whitespace!r}, "
                f"compile_seconds={self.compile_seconds:.3f}, from_cache={self.from_cache!r})")


class PendingChecks:
    """A disk hit's transitions and mask rows, checked piece by piece against their CRCs the first
    time each is read (a hit then reads only the pages a decode touches, and no damaged byte is
    ever used). Damage found this late is repaired: the entry is compiled afresh, whose states are
    numbered alike (the compile is deterministic), so matchers already running carry on."""

    def __init__(self, tables: dict, repair):
        self.tables = tables
        self.states = np.zeros(len(tables["state_crc"]), dtype=bool)
        self.rows = np.zeros(len(tables["row_crc"]), dtype=bool)
        self._repair = repair
        self._lock = threading.Lock()

    def check_state(self, state: int) -> None:
        t = self.tables
        if state_checksum(t["offsets"], t["tokens"], t["next"], state) != t["state_crc"][state]:
            self.repair()
        self.states[state] = True

    def check_row(self, row: int) -> None:
        if zlib.crc32(self.tables["masks"][row]) != self.tables["row_crc"][row]:
            self.repair()
        self.rows[row] = True

    def repair(self) -> None:
        with self._lock:
            if self.states.all() and self.rows.all():
                return  # another thread has repaired it
            fresh = self._repair()
            for name, array in self.tables.items():
                if name not in _CHECKED_PIECEMEAL and not np.array_equal(array, fresh[name]):
                    raise ConstraintError(
                        "a cached constraint was damaged and compiling it afresh numbered its "
                        "states differently (please report this); the damaged entry is removed, "
                        "so retrying compiles it afresh")
            self.tables.update({name: fresh[name] for name in _CHECKED_PIECEMEAL})
            self.states[:] = True
            self.rows[:] = True


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
        self._background: threading.Thread | None = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._schema_regex: dict[str, str] = {}
        self._start_masks: dict[str, tuple[np.ndarray, bool]] = {}
        # key -> (budget, error) of compiles that ran out of time or memory
        self._failures: OrderedDict[str, tuple[float, ConstraintError]] = OrderedDict()

    def start(self) -> None:
        """Start the compile worker now (it boots in the background while a model loads)."""
        self._worker.start()

    def compile_regex(self, regex: str, tokenizer_info: TokenizerInfo, *,
                      whitespace: str = DEFAULT_WHITESPACE, output_type: OutputType | None = None,
                      timeout: float | None = None) -> CompiledConstraint:
        if len(regex) > MAX_REGEX_CHARS:
            raise CompileTooLargeError(
                f"the schema's regex is {len(regex):,} characters (limit {MAX_REGEX_CHARS:,}); "
                "simplify the schema (fewer alternatives, smaller bounded repeats)"
            )
        meta = _meta(regex, tokenizer_info, output_type, whitespace)
        key = _cache_key(regex, tokenizer_info.fingerprint)
        with self._lock:
            cached = self._cached(key, meta, tokenizer_info)
            if cached is not None:
                return cached
            started = time.perf_counter()
            tables = self._compile(regex, tokenizer_info, timeout or self.timeout)
            self._store(key, regex, tables)
            constraint = CompiledConstraint(tables, compile_seconds=time.perf_counter() - started,
                                            from_cache="none", **meta)
            return self._remember(key, constraint)

    def lookup(self, regex: str, tokenizer_info: TokenizerInfo, *, whitespace: str = DEFAULT_WHITESPACE,
               output_type: OutputType | None = None) -> CompiledConstraint | None:
        """The compiled constraint from the memory or disk cache, or None (never compiles)."""
        meta = _meta(regex, tokenizer_info, output_type, whitespace)
        with self._lock:
            return self._cached(_cache_key(regex, tokenizer_info.fingerprint), meta, tokenizer_info)

    def submit(self, function, *args, **options) -> Future:
        """Run ``function`` (a compile: the worker process does the work) in a background thread.

        One daemon thread, jobs in order: a script that exits with compiles still queued exits at
        once (the worker process sees its pipe close and exits too) instead of waiting for them.
        """
        future: Future = Future()

        def job():
            if future.set_running_or_notify_cancel():
                settle(future, function, *args, **options)

        self._jobs.put(job)
        if self._background is None or not self._background.is_alive():
            self._background = threading.Thread(target=self._run_jobs, name="structgen-compile",
                                                daemon=True)
            self._background.start()
        return future

    def _run_jobs(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def remember_schema(self, schema_key: str, regex: str) -> None:
        """Record which regex a schema compiled to, so the next lookup can skip schema -> regex."""
        self._schema_regex[schema_key] = regex
        self._write_entry(f"schema-{schema_key}.regex", regex.encode("utf-8"))

    def _write_entry(self, name: str, body: bytes, **proof) -> None:
        """A small cache file: one JSON line proving what it is (its own name, ``proof``: what it
        was made from, and the body's CRC-32), then the body."""
        folder = constraints_dir(create=True) if self.disk_cache else None
        if folder is not None:
            line = json.dumps({"entry": name, **proof, "crc": zlib.crc32(body)}).encode()
            _write_private(folder / name, lambda path: path.write_bytes(line + b"\n" + body))

    def _read_entry(self, name: str, check=lambda header, body: True, **proof):
        """(header, body) of ``_write_entry``'s file if it proves to be ``name``, made from
        ``proof``, whole, and ``check`` accepts it; anything else is removed (None)."""
        folder = constraints_dir() if self.disk_cache else None
        if folder is None:
            return None
        path = folder / name
        try:
            line, _, body = path.read_bytes().partition(b"\n")
        except OSError:
            return None  # absent
        try:
            header = json.loads(line)
            expected = {"entry": name, **proof, "crc": zlib.crc32(body)}
            if (isinstance(header, dict) and all(header.get(k) == v for k, v in expected.items())
                    and check(header, body)):
                return header, body
        except (ValueError, RecursionError):  # not JSON, or a body that does not decode
            pass
        path.unlink(missing_ok=True)  # damaged or another entry's: computed afresh
        return None

    def regex_of_schema(self, schema_key: str) -> str | None:
        regex = self._schema_regex.get(schema_key)
        if regex is None:
            entry = self._read_entry(f"schema-{schema_key}.regex",
                                     check=lambda header, body: bool(body.decode("utf-8")))
            if entry is not None:
                regex = self._schema_regex[schema_key] = entry[1].decode("utf-8")
        return regex

    def remember_start(self, schema_key: str, bits: np.ndarray, covered: bool) -> None:
        """Keep a schema's exact first mask and whether llguidance added to the index's there
        (``HybridConstraint.start_mask``, ``start_covered``), for these engine versions: the next
        process's first mask is then a read."""
        self._start_masks[schema_key] = (bits, covered)
        self._write_entry(f"schema-{schema_key}.start", bits.tobytes(), versions=_engine_versions(),
                          words=len(bits), covered=bool(covered))

    def known_start(self, schema_key: str, vocab_size: int) -> tuple[np.ndarray, bool] | None:
        known = self._start_masks.get(schema_key)
        if known is None:
            words = (vocab_size + 31) // 32
            entry = self._read_entry(  # one made by other engine versions is learnt afresh
                f"schema-{schema_key}.start", versions=_engine_versions(), words=words,
                check=lambda header, body: (isinstance(header.get("covered"), bool)
                                            and len(body) == words * 4))
            if entry is not None:
                header, packed = entry
                bits = np.frombuffer(packed, dtype=np.int32)
                known = self._start_masks[schema_key] = (bits, header["covered"])
        return known

    def _cached(self, key: str, meta: dict, tokenizer_info: TokenizerInfo) -> CompiledConstraint | None:
        cached = self._memory.get(key)
        if cached is not None:
            self._memory.move_to_end(key)
            return _with_meta(cached, meta, "memory")
        started = time.perf_counter()
        tables = self._load(key, meta["regex"])
        if tables is None:
            return None
        pending = PendingChecks(tables, functools.partial(self._repair, key, meta["regex"], tokenizer_info))
        constraint = CompiledConstraint(tables, compile_seconds=time.perf_counter() - started,
                                        from_cache="disk", pending=pending, **meta)
        return self._remember(key, constraint)

    def _repair(self, key: str, regex: str, tokenizer_info: TokenizerInfo) -> dict:
        """Fresh tables for a disk entry found damaged after its load: removed, compiled, stored."""
        with self._lock:
            folder = constraints_dir()
            if folder is not None:
                (folder / f"{key}.tables").unlink(missing_ok=True)
            tables = self._compile(regex, tokenizer_info, self.timeout)
            self._store(key, regex, tables)
            return tables

    def _remember(self, key: str, constraint: CompiledConstraint) -> CompiledConstraint:
        if constraint.distance(constraint.initial_state) >= UNREACHABLE:
            raise UnsatisfiableSchemaError("no text the tokenizer can write satisfies this constraint")
        self._memory[key] = constraint
        while len(self._memory) > _MEMORY_CACHE_SIZE:
            self._memory.popitem(last=False)
        return constraint

    def compile_schema(self, spec: OutputType, tokenizer_info: TokenizerInfo, *, whitespace: str,
                       schema_key: str, timeout: float | None = None) -> CompiledConstraint:
        """Schema -> regex -> index entirely in the worker process (a background compile that
        leaves this process's GIL to the decoding thread); cached like ``compile_regex``."""
        import structgen.errors as errors

        started = time.perf_counter()
        status, payload = self._worker.compile_schema(spec.schema, whitespace, tokenizer_info,
                                                      timeout or self.timeout)
        if status == "schema-error":
            name, (reason, pointer) = payload
            error_class = getattr(errors, name, None)
            if isinstance(error_class, type) and issubclass(error_class, errors.SchemaError):
                raise error_class(reason, pointer)
            raise ConstraintError(f"{name}: {reason}")
        regex, tables = self._checked(status, payload, timeout or self.timeout)
        meta = _meta(regex, tokenizer_info, spec, whitespace)
        key = _cache_key(regex, tokenizer_info.fingerprint)
        with self._lock:
            self._store(key, regex, tables)
            constraint = CompiledConstraint(tables, compile_seconds=time.perf_counter() - started,
                                            from_cache="none", **meta)
            constraint = self._remember(key, constraint)
        self.remember_schema(schema_key, regex)
        return constraint

    def _compile(self, regex: str, tokenizer_info: TokenizerInfo, timeout: float) -> dict:
        status, payload = self._worker.compile(regex, tokenizer_info, timeout)
        return self._checked(status, payload, timeout)

    def _checked(self, status: str, payload, timeout: float):
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

    def _load(self, key: str, regex: str) -> dict | None:
        """The entry's tables if it proves to be ``key``'s (else it is removed): the whole file
        but the transitions and mask rows is checked here, those piece by piece when first read."""
        folder = constraints_dir() if self.disk_cache else None
        if folder is None:
            return None
        path = folder / f"{key}.tables"
        try:
            tables = read_tables(path, key=key, regex=regex, deferred=_CHECKED_PIECEMEAL)
            if tables.keys() != _TABLE_NAMES:
                raise ValueError(f"{path} holds other arrays than a constraint's")
            return tables
        except FileNotFoundError:
            return None  # absent: compile afresh
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # damaged or another key's: compile afresh, store anew
            return None

    def _store(self, key: str, regex: str, tables: dict) -> None:
        folder = constraints_dir(create=True) if self.disk_cache else None
        if folder is not None:
            arrays = {name: tables[name] for name in _TABLE_NAMES}
            _write_private(folder / f"{key}.tables",
                           lambda path: write_tables(path, arrays, key=key, regex=regex))

    def remember_failure(self, key: str, budget: float, error: ConstraintError) -> None:
        """Keep that compiling ``key`` (a schema or regex key) failed with ``budget`` seconds."""
        with self._lock:
            self._failures[key] = (budget, error)
            while len(self._failures) > _MEMORY_CACHE_SIZE:
                self._failures.popitem(last=False)

    def raise_if_failed_before(self, key: str, budget: float) -> None:
        """Raise the earlier error again if ``key`` ran out of memory, or out of time with at
        least ``budget`` seconds: it would again (a larger budget is tried afresh)."""
        budget_then, error = self._failures.get(key, (0.0, None))
        if isinstance(error, CompileTooLargeError) or (error is not None and budget <= budget_then):
            raise type(error)(f"{error} (remembered from an earlier compile in this process)")

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.stop()


def _meta(regex: str, tokenizer_info: TokenizerInfo, output_type: OutputType | None,
          whitespace: str) -> dict:
    """A request's metadata, attached to the (shared) tables it compiled or loaded."""
    return dict(regex=regex, output_type=output_type, whitespace=whitespace,
                tokenizer_fingerprint=tokenizer_info.fingerprint,
                eos_token_id=tokenizer_info.eos_token_id)


def _with_meta(constraint: CompiledConstraint, meta: dict, source: str) -> CompiledConstraint:
    """The cached tables with this request's metadata (output type, whitespace) attached."""
    copy = CompiledConstraint(constraint.tables(), compile_seconds=0.0, from_cache=source,
                              pending=constraint._pending, **meta)
    copy._bool_masks, copy._bitmasks = constraint._bool_masks, constraint._bitmasks
    return copy


def _cache_key(regex: str, fingerprint: str) -> str:
    from structgen import __version__

    version = _outlines_core_version()
    digest = hashlib.sha256(f"{__version__}|{TABLES_FORMAT}|{version}|{fingerprint}|{regex}".encode())
    return digest.hexdigest()[:32]


_TABLES_MAGIC = b"SGTABLES"
_PREFIX = len(_TABLES_MAGIC) + 12  # magic, header length (8 bytes), header CRC-32 (4 bytes)
_ALIGN = 64
_MAP_ABOVE_BYTES = 1 << 20
#: A constraint's arrays; the transitions and mask rows are checked piece by piece on first read.
_TABLE_NAMES = {"offsets", "tokens", "next", "distance", "worst", "is_final", "masks",
                "mask_of_state", "initial", "vocab_size", "state_crc", "row_crc"}
_CHECKED_PIECEMEAL = ("tokens", "next", "masks")


def _aligned(size: int) -> int:
    """``size`` rounded up to the tables file's alignment."""
    return -(-size // _ALIGN) * _ALIGN


def _tables_data_start(header_length: int) -> int:
    """Where a tables file's arrays begin: after magic, header length, CRC and header, aligned."""
    return _aligned(_PREFIX + header_length)


def write_tables(path: Path, tables: dict, *, key: str, regex: str) -> None:
    """All of a constraint's arrays in one file: magic, header length, the header's CRC-32, a
    JSON header (the cache key and regex the file belongs to; each array's dtype, shape, offset
    and CRC-32), then the arrays, each 64-byte aligned."""
    # Smallest first: a cold hit's first page read brings the header and the per-state tables.
    arrays = {name: np.asarray(value) for name, value in
              sorted(tables.items(), key=lambda item: np.asarray(item[1]).nbytes)}
    layout, data, offset = {}, {}, 0
    for name, array in arrays.items():
        data[name] = array.tobytes()  # C order
        layout[name] = [array.dtype.str, list(array.shape), offset, zlib.crc32(data[name])]
        offset += _aligned(array.nbytes)
    encoded = json.dumps({"key": key, "regex": regex, "arrays": layout}).encode()
    start = _tables_data_start(len(encoded))
    with open(path, "wb") as out:
        out.write(_TABLES_MAGIC + len(encoded).to_bytes(8, "little")
                  + zlib.crc32(encoded).to_bytes(4, "little") + encoded)
        for name in arrays:
            out.seek(start + layout[name][2])
            out.write(data[name])
        out.truncate(start + offset)


def read_tables(path: Path, *, key: str, regex: str, deferred=()) -> dict:
    """``write_tables``' arrays, read-only, once the file proves to be ``key``'s and ``regex``'s
    and whole (any other file is a ``ValueError``). The arrays named in ``deferred`` are not
    checked here: the caller checks them before it reads them. One open: a file over 1 MiB is
    memory-mapped, so only the pages a decode touches are read; a smaller one is read whole,
    which costs less than setting up the mapping."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > _MAP_ABOVE_BYTES:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            data = file.read()
    if size < _PREFIX or data[:len(_TABLES_MAGIC)] != _TABLES_MAGIC:
        raise ValueError(f"{path} is not a structgen tables file")
    length = int.from_bytes(data[len(_TABLES_MAGIC):_PREFIX - 4], "little")
    encoded = bytes(data[_PREFIX:_PREFIX + length])
    if len(encoded) < length:
        raise ValueError(f"{path} is truncated")
    if zlib.crc32(encoded) != int.from_bytes(data[_PREFIX - 4:_PREFIX], "little"):
        raise ValueError(f"{path} has a damaged header")
    try:
        header = json.loads(encoded)
    except RecursionError:
        raise ValueError(f"{path} has a header nested too deep") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), dict):
        raise ValueError(f"{path} has no header of arrays")
    if header.get("key") != key or header.get("regex") != regex:
        raise ValueError(f"{path} belongs to another constraint than key {key}")
    start = _tables_data_start(length)
    tables = {}
    for name, entry in header["arrays"].items():
        array, checksum = _array_at(data, start, size, entry, f"{path} array {name!r}")
        if name not in deferred and zlib.crc32(array) != checksum:
            raise ValueError(f"{path} array {name!r} is damaged")
        tables[name] = array
    return tables


def _array_at(data, start: int, size: int, entry, where: str) -> tuple[np.ndarray, int]:
    """The array a header ``entry`` ([dtype, shape, offset, CRC-32]) describes, and its CRC."""
    if not (isinstance(entry, list) and len(entry) == 4):
        raise ValueError(f"{where} has no [dtype, shape, offset, crc] entry")
    name, shape, offset, checksum = entry
    try:
        dtype = np.dtype(name) if isinstance(name, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf" or dtype.str != name:
        raise ValueError(f"{where} has an unknown dtype {name!r}")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
            and type(offset) is int and offset >= 0 and type(checksum) is int):
        raise ValueError(f"{where} has a malformed shape, offset or crc")
    count = math.prod(shape)
    if start + offset + count * dtype.itemsize > size:
        raise ValueError(f"{where} is truncated")
    return np.frombuffer(data, dtype=dtype, count=count, offset=start + offset).reshape(shape), checksum


def _outlines_core_version() -> str:
    import outlines_core

    return getattr(outlines_core, "__version__", None) or _package_version("outlines_core")


def _engine_versions() -> str:
    """Both engines' versions: a first mask is the union of their masks."""
    return f"outlines-core={_outlines_core_version()},llguidance={_package_version('llguidance')}"


@functools.cache
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


ENGINES = ("auto", "outlines-core", "llguidance")


def compile_constraint(output_type: Any, tokenizer: Any, *, whitespace: str = DEFAULT_WHITESPACE,
                       timeout: float | None = None, engine: str = "auto",
                       wait: bool = True) -> Constraint:
    """Compile an output type (or JSON schema, or ``Regex``) for a tokenizer.

    ``tokenizer`` may be a transformers tokenizer, a ``TokenizerInfo`` or a loaded
    ``structgen.Model``. ``whitespace`` is one of ``WHITESPACE_MODES``: ``"compact"``,
    ``"spaced"`` and ``"indented"`` admit exactly the layout ``json.dumps`` writes (no separator
    spaces; its default ``", "``/``": "``; ``indent=2``), so no whitespace loop is possible;
    ``"flexible"`` allows any JSON whitespace (to check text written elsewhere).

    ``engine="auto"`` (the default) gives the finite-state constraint (lookup masks, budget
    guarantee), compiled or loaded from cache, and falls back to llguidance when the schema is not
    regular or the compile exceeds its time or memory budget (``constraint.engine`` and
    ``constraint.fallback_reason`` say so). With ``wait=False`` a schema that is not cached
    starts at once on llguidance and moves to the finite-state index when its background compile
    lands (``HybridConstraint``; a cached one starts on the index). Its unbudgeted matchers keep
    llguidance's JSON grammar beside the index and admit what either admits, so none of the
    index's departures from the schema applies to them. ``engine="outlines-core"`` or
    ``"llguidance"`` forces one engine.
    """
    check_whitespace(whitespace)
    if engine not in ENGINES:
        raise ConstraintError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    spec = as_output_type(output_type)
    info = tokenizer_info_of(tokenizer)
    compiler = default_compiler()
    budget = timeout or compiler.timeout
    deadline = time.monotonic() + budget  # schema -> regex and the index share the budget
    options = dict(whitespace=whitespace, output_type=spec)
    schema_key = None if spec.regex is not None else _schema_key(spec.schema, whitespace, info)
    if engine == "auto" and schema_key is not None:
        known = compiler.regex_of_schema(schema_key)
        cached = known and compiler.lookup(known, info, **options)
        if cached:
            return cached if wait else _landed(compiler, cached, spec, info, whitespace, schema_key)
        if not wait:
            head_start = _llguidance_json_head_start(spec, info, whitespace)
            if head_start is not None:
                return HybridConstraint(
                    head_start, compiler.submit(compiler.compile_schema, spec, info,
                                                whitespace=whitespace, schema_key=schema_key,
                                                timeout=timeout),
                    covered=_covered(schema_key),
                    record_start=functools.partial(compiler.remember_start, schema_key))
    regex = spec.regex
    if regex is None:
        try:
            regex = _schema_regex(compiler, spec, whitespace, schema_key, budget, deadline)
        except CompileTimeoutError as slow:
            if engine == "outlines-core":
                raise
            try:
                return _llguidance_json_grammar(spec, info, whitespace, reason=str(slow))
            except (ConstraintError, UnsupportedSchemaError):
                raise slow from None
        except UnsupportedSchemaError as unsupported:
            refused = unsupported
            if engine != "outlines-core":
                try:
                    return _llguidance_json(spec, info, whitespace, unsupported)
                except UnsupportedSchemaError as both:
                    refused = both
            if not isinstance(unsupported, RecursionLimitError):
                raise refused from None
            try:  # bounded nesting, when nothing can nest without bound
                regex = _unrolled_regex(spec, whitespace, deadline)
            except UnsupportedSchemaError:
                raise refused from None
    if engine == "outlines-core":
        return _compile_index_within(compiler, regex, info, schema_key, budget, deadline, options)
    if engine == "llguidance":
        return _llguidance_regex(regex, spec, info, whitespace, reason=None)
    cached = compiler.lookup(regex, info, **options)
    if cached is not None:
        if schema_key is not None:  # the next call skips the schema->regex step
            compiler.remember_schema(schema_key, regex)
        return cached if wait else _landed(compiler, cached, spec, info, whitespace, schema_key)
    if not wait:
        try:
            head_start = _llguidance_regex(regex, spec, info, whitespace, reason=None)
        except ConstraintError:  # llguidance refuses the regex (too large): wait for the index
            return _compile_index(compiler, regex, info, schema_key, timeout, options)
        return HybridConstraint(head_start, compiler.submit(
            _compile_index, compiler, regex, info, schema_key, timeout, options))
    try:
        return _compile_index_within(compiler, regex, info, schema_key, budget, deadline, options)
    except (CompileTimeoutError, CompileTooLargeError) as slow:
        try:
            return _llguidance_regex(regex, spec, info, whitespace, reason=str(slow))
        except ConstraintError:
            raise slow from None


#: How often a recursive ``$ref`` is unrolled when llguidance (which nests without bound) cannot
#: take the schema: the regex then nests that deep and no deeper (less where the regex would be
#: too large).
UNROLL_RECURSION = 2


def _unrolled_regex(spec: OutputType, whitespace: str, deadline: float) -> str:
    for depth in range(UNROLL_RECURSION, 0, -1):
        try:
            return schema_to_regex(spec.schema, whitespace=whitespace, max_recursion=depth,
                                   timeout=_left(deadline))
        except RegexTooLargeError:
            continue
    return schema_to_regex(spec.schema, whitespace=whitespace, max_recursion=0,
                           timeout=_left(deadline))


def _left(deadline: float) -> float:
    """Seconds of the budget left (a compile given none times out at its first check)."""
    return max(deadline - time.monotonic(), 1e-3)


def _schema_regex(compiler: ConstraintCompiler, spec: OutputType, whitespace: str,
                  schema_key: str, budget: float, deadline: float) -> str:
    """schema -> regex within the budget; a schema that ran out of time before, with this budget
    or a larger one, is refused at once instead of paying the whole budget again."""
    compiler.raise_if_failed_before(schema_key, budget)
    try:
        return schema_to_regex(spec.schema, whitespace=whitespace, timeout=_left(deadline))
    except CompileTimeoutError:
        slow = CompileTimeoutError(
            f"turning the schema into a regex took longer than the {budget:g} s timeout; simplify "
            "the schema (fewer oneOf branches) or pass a larger timeout")
        compiler.remember_failure(schema_key, budget, slow)
        raise slow from None


def _compile_index_within(compiler: ConstraintCompiler, regex: str, info: TokenizerInfo,
                          schema_key: str | None, budget: float, deadline: float,
                          options: dict) -> CompiledConstraint:
    """``_compile_index`` in what is left of the budget, remembering a compile that ran out of
    time or memory (as ``_schema_regex`` does)."""
    key = _cache_key(regex, info.fingerprint)
    compiler.raise_if_failed_before(key, budget)
    try:
        return _compile_index(compiler, regex, info, schema_key, _left(deadline), options)
    except (CompileTimeoutError, CompileTooLargeError) as failed:
        compiler.remember_failure(key, budget, failed)
        raise


def _schema_key(schema: Any, whitespace: str, info: TokenizerInfo) -> str:
    # Key order is kept: property order is part of what the regex writes.
    text = json.dumps(schema, ensure_ascii=False, default=str)
    digest = hashlib.sha256(
        f"{_schema_compiler_revision()}|{whitespace}|{info.fingerprint}|{text}".encode())
    return digest.hexdigest()[:32]


@functools.cache
def _schema_compiler_revision() -> str:
    """The schema→regex compiler's own source, hashed: an alias cached by an older compiler
    (same structgen version, during development) is never reused."""
    import structgen.schema.normalize as normalize
    import structgen.schema.to_regex as to_regex
    from structgen import __version__

    digest = hashlib.sha256(__version__.encode())
    for module in (normalize, to_regex):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _compile_index(compiler: ConstraintCompiler, regex: str, info: TokenizerInfo,
                   schema_key: str | None, timeout: float | None, options: dict) -> CompiledConstraint:
    constraint = compiler.compile_regex(regex, info, timeout=timeout, **options)
    if schema_key is not None:
        compiler.remember_schema(schema_key, regex)
    return constraint


_COVERED: OrderedDict[str, dict[int, bool]] = OrderedDict()
_COVERED_SCHEMAS = 4096  # a long-running server forgets the least recently used ones


def _covered(schema_key: str) -> dict[int, bool]:
    """The schema's ``HybridConstraint.covered`` map, shared by every hybrid of that schema."""
    covered = _COVERED.pop(schema_key, None)
    _COVERED[schema_key] = covered = {} if covered is None else covered
    while len(_COVERED) > _COVERED_SCHEMAS:
        _COVERED.popitem(last=False)
    return covered


def _landed(compiler: ConstraintCompiler, index: CompiledConstraint, spec: OutputType,
            info: TokenizerInfo, whitespace: str, schema_key: str | None) -> Constraint:
    """``wait=False`` on a cached index: a hybrid that starts on the index, with llguidance's
    JSON grammar beside it (built in the background once an unbudgeted matcher wants it), as a
    cold hybrid has after its switch. A regex has no JSON grammar, and llguidance's grammar
    would widen a whitespace mode it cannot write exactly: the index alone then."""
    if schema_key is None or not llguidance_writes_exactly(whitespace):
        return index
    return HybridConstraint.landed(
        index, functools.partial(_llguidance_json_head_start, spec, info, whitespace, check=False),
        covered=_covered(schema_key), start=compiler.known_start(schema_key, info.vocab_size),
        record_start=functools.partial(compiler.remember_start, schema_key))


def _llguidance_json_head_start(spec: OutputType, info: TokenizerInfo, whitespace: str,
                                check: bool = True) -> GrammarConstraint | None:
    """llguidance's own JSON grammar for the first tokens (its masks are fastest), or None if it
    refuses the schema or cannot write the whitespace mode exactly (then the head start runs on
    structgen's regex, the index's own language). The schema is checked against its metaschema
    first (typed errors stay up front), unless its index is cached (it passed then)."""
    if check:
        normalize_check(spec.schema)
    if not llguidance_writes_exactly(whitespace):
        return None
    try:
        return _llguidance_json_grammar(spec, info, whitespace, reason=None)
    except (ConstraintError, UnsupportedSchemaError):
        return None


def _llguidance_json_grammar(spec: OutputType, info: TokenizerInfo, whitespace: str,
                             reason: str | None) -> GrammarConstraint:
    from structgen.schema.normalize import without_custom_formats

    grammar = json_schema_grammar(without_custom_formats(spec.schema), whitespace)
    return GrammarConstraint(grammar, info, regex=None,
                             output_type=spec, whitespace=whitespace, fallback_reason=reason)


def _llguidance_regex(regex: str, spec: OutputType, info: TokenizerInfo, whitespace: str,
                      reason: str | None) -> GrammarConstraint:
    return GrammarConstraint(regex_grammar(regex), info, regex=regex, output_type=spec,
                             whitespace=whitespace, fallback_reason=reason)


def _llguidance_json(spec: OutputType, info: TokenizerInfo, whitespace: str,
                     unsupported: UnsupportedSchemaError) -> GrammarConstraint:
    """A schema structgen's regex compiler refuses, on llguidance's JSON compiler (or the refusal)."""
    try:
        return _llguidance_json_grammar(spec, info, whitespace, reason=str(unsupported))
    except (ConstraintError, UnsupportedSchemaError) as refused:
        raise UnsupportedSchemaError(
            f"{unsupported.reason}; llguidance cannot enforce it either ({str(refused)[:200]})",
            unsupported.pointer,
        ) from None


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
