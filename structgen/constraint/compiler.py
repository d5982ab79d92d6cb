"""compile_constraint: output type -> regex -> byte automaton -> CompiledConstraint.

The pipeline, and which engine serves what:

=====================================================  =========================================
the output type                                        constraint
=====================================================  =========================================
a schema structgen's regex compiler takes, or a regex  finite-state (``engine="outlines-core"``):
                                                       lazy token masks, the budget guarantee
the same, but the automaton ran out of time or memory  llguidance on the same regex
a schema that is not regular (the compiler refuses it) llguidance's JSON-schema compiler
a recursive schema llguidance refuses too              finite-state, recursion unrolled
=====================================================  =========================================

``engine="outlines-core"`` or ``"llguidance"`` forces one engine; ``constraint.engine`` and
``constraint.fallback_reason`` say which served and why.

``ConstraintCompiler`` builds automata in this process once the compiled loops are loaded
(structgen's determinisation, bounded in states and work), and owns the compile worker for the
rest (the only place an outlines-core build runs: it can be killed at the timeout), and the
caches: byte automata in memory and on disk under
``$STRUCTGEN_CACHE/constraints`` (one tables file per regex, shared by every tokenizer), which
regex a schema compiled to, the tokenizers' ``TokenBytes``, and compiled constraints (each with
its mask store) in memory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
import zlib
from collections import OrderedDict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from structgen import __version__
from structgen.constraint._worker import CompileWorker
from structgen.constraint.automaton import (
    ARRAY_NAMES,
    MAX_STATES,
    MAX_WORK,
    BuildTooLarge,
    ByteAutomaton,
    determinized_arrays,
)
from structgen.constraint.automaton_builder import AutomatonBuilder
from structgen.constraint.base import Constraint
from structgen.constraint.cache import (
    constraints_dir,
    discard,
    read_tables,
    write_private,
    write_tables,
)
from structgen.constraint.compiled import CompiledConstraint
from structgen.constraint.compiled_loops import COMPILED_LOOPS
from structgen.constraint.llguidance_backend import (
    GrammarConstraint,
    json_schema_grammar,
    regex_grammar,
)
from structgen.constraint.token_masks import TokenBytes
from structgen.constraint.vocabulary import TokenizerInfo, tokenizer_info_of
from structgen.errors import (
    CompileTimeoutError,
    CompileTooLargeError,
    ConstraintError,
    RecursionLimitError,
    RegexTooLargeError,
    UnsupportedSchemaError,
)
from structgen.schema import (
    COMPILER_MODULES,
    DEFAULT_ANY_DEPTH,
    DEFAULT_WHITESPACE,
    schema_to_regex,
)
from structgen.schema.layout import STRING_CHAR, check_whitespace
from structgen.schema.normalize import without_custom_formats
from structgen.types import OutputType, as_output_type

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_LIMIT = 8 << 30
MAX_REGEX_CHARS = 2_000_000
#: The longest a build in this process may take before the compile worker takes the regex
#: over: the 228 regexes of 250 dev schemas took at most 0.4 s here (benchmarks/determinize.py).
BUILD_HERE_SECONDS = 2.0
#: How often a regex must write the JSON string character before a build in this process
#: determinises the character once and splices it in (the worker's outlines-core, at 0.4 ms a
#: place, shares it from two): below it the regex is quicker determinised whole. On the 228
#: regexes of 250 dev schemas, whole against spliced: 2-7 places 0.2 ms quicker a regex (55 of
#: 58), 8-15 places slower in all (benchmarks/determinize.py's sample, scratch script).
SHARE_CHARACTER_HERE = 8
#: A build or a schema -> regex conversion quicker than this is kept in memory only, not written
#: to the disk cache: creating a file costs 0.5-0.7 ms here, a quarter or more of such a build,
#: and the load that would replace it in a later process saves that process 1-3 ms at most
#: (both timed per build on the 228 regexes of ttfm_phases.py's sample; docs/constraints.md).
STORE_AFTER_SECONDS = 0.005
#: Tables files are written by a thread of their own, so the constraint is ready before its file
#: is (the largest took 10-110 ms to write here: CRCs, the copy, the write). A process waits
#: for the writes under way before it exits; ``ConstraintCompiler.wait_for_stores`` waits too.
STORE_IN_BACKGROUND = True
#: Compiled constraints kept in memory; each holds at most ``token_masks.DEFAULT_MASK_BYTES``
#: (64 MiB) of masks, so 16 of them bound the masks of a process at 1 GiB.
_MEMORY_CACHE_SIZE = 16
_AUTOMATA_CACHE_SIZE = 64
_TOKENIZERS_CACHE_SIZE = 4
TABLES_FORMAT = 8  # bump when the meaning of the cached arrays changes (8: byte_distance)
ENGINES = ("auto", "outlines-core", "llguidance")


class ConstraintCompiler:
    """Owns the compile worker and every cache; one per process is enough (``default_compiler``)."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, memory_limit: int = DEFAULT_MEMORY_LIMIT,
                 disk_cache: bool = True):
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.disk_cache = disk_cache and os.environ.get("STRUCTGEN_DISABLE_DISK_CACHE") != "1"
        self._worker = CompileWorker(memory_limit)
        self._here: AutomatonBuilder | None = None  # builds in this process (``_build_here``)
        self._here_lock = threading.Lock()  # one at a time: the builder keeps pieces
        self._lock = threading.RLock()  # the caches below; never held during a build
        self._building: dict[str, threading.Lock] = {}  # regex key -> its build's lock
        self._automata: OrderedDict[str, ByteAutomaton] = OrderedDict()
        self._memory: OrderedDict[tuple[str, str], CompiledConstraint] = OrderedDict()
        self._tokens: OrderedDict[str, TokenBytes] = OrderedDict()
        self._schema_regex: dict[str, str] = {}
        # key -> (budget, error) of compiles that ran out of time or memory
        self._failures: OrderedDict[str, tuple[float, ConstraintError]] = OrderedDict()
        self._stores: list[threading.Thread] = []  # tables files being written

    def start(self) -> None:
        """Start the compile worker now (it boots in the background while a model loads)."""
        self._worker.start()

    def compile_regex(self, regex: str, tokenizer_info: TokenizerInfo, *,
                      whitespace: str = DEFAULT_WHITESPACE, output_type: OutputType | None = None,
                      timeout: float | None = None,
                      requested: float | None = None) -> CompiledConstraint:
        """The finite-state constraint of ``regex`` for this tokenizer, from a cache or built.

        ``timeout`` is what the build may take; ``requested`` (default: ``timeout``) is the
        caller's whole budget, which a remembered failure is compared with: the time left of
        one budget differs by microseconds from call to call."""
        if len(regex) > MAX_REGEX_CHARS:
            raise CompileTooLargeError(
                f"the schema's regex is {len(regex):,} characters (limit {MAX_REGEX_CHARS:,}); "
                "simplify the schema (fewer alternatives, smaller bounded repeats)"
            )
        budget = timeout or self.timeout
        requested = requested or budget
        key = automaton_key(regex)
        request = dict(output_type=output_type, whitespace=whitespace)
        memory_key = (key, tokenizer_info.fingerprint)
        with self._lock:
            cached = self._memory.get(memory_key)
            if cached is not None:
                self._memory.move_to_end(memory_key)
                return cached.with_request(from_cache="memory", **request)
            self.raise_if_failed_before(key, requested)
            building = self._building.setdefault(key, threading.Lock())
        # Only compiles of this regex wait for each other: another schema's cache hit (a server
        # with a request whose schema it has seen) never waits for a build.
        with building:
            try:
                with self._lock:  # built, or failed, by the compile this one waited for
                    cached = self._memory.get(memory_key)
                    if cached is not None:
                        return cached.with_request(from_cache="memory", **request)
                    self.raise_if_failed_before(key, requested)
                started = time.perf_counter()
                automaton, source = self._automaton(
                    key, regex, budget, requested,
                    meanwhile=lambda: self._token_bytes(tokenizer_info).prepare())
                constraint = CompiledConstraint(
                    automaton, self._token_bytes(tokenizer_info), regex=regex,
                    tokenizer_fingerprint=tokenizer_info.fingerprint,
                    eos_token_id=tokenizer_info.eos_token_id,
                    compile_seconds=time.perf_counter() - started, from_cache=source, **request)
                with self._lock:
                    self._memory[memory_key] = constraint
                    while len(self._memory) > _MEMORY_CACHE_SIZE:
                        self._memory.popitem(last=False)
                return constraint
            finally:
                with self._lock:
                    self._building.pop(key, None)

    def _build_here(self, regex: str, budget: float) -> dict | None:
        """The automaton's arrays determinised in this process by the compiled loops, or None
        where they are not loaded, the regex is outside the schema compiler's dialect or matches
        nothing, or the build passed its bounds on states, work, memory or time (the worker
        then builds it, killable, or says what is wrong with it). A build here may take up to
        ``BUILD_HERE_SECONDS`` (or the budget, if less): it cannot be interrupted, so the bound
        is checked before each piece is determinised, and each piece's bounds on states and
        work (``automaton.MAX_STATES``, ``MAX_WORK``, about a second here) shrink with the time
        left."""
        loops = COMPILED_LOOPS.automaton
        if loops is None:
            return None
        deadline = time.monotonic() + min(budget, BUILD_HERE_SECONDS)
        determinise = functools.partial(determinise_here, loops=loops, deadline=deadline)
        with self._here_lock:
            if self._here is None:
                self._here = AutomatonBuilder(determinise, loops,
                                              share_character_from=SHARE_CHARACTER_HERE)
            self._here.determinise = determinise  # this build's deadline
            try:
                return self._here.build(regex, STRING_CHAR)
            except (ValueError, BuildTooLarge, MemoryError):  # UnsupportedRegex is a ValueError
                return None  # the worker builds it, or names what is wrong, within its limits

    def _automaton(self, key: str, regex: str, budget: float, requested: float,
                   meanwhile=None) -> tuple[ByteAutomaton, str]:
        """(the regex's automaton, where it came from: "memory", "disk" or "none"); a build by
        the worker runs ``meanwhile()`` while it waits (a build here does not: it would add to
        the compile what is done on first need anyway, as after a load)."""
        with self._lock:
            automaton = self._automata.get(key)
            if automaton is not None:
                self._automata.move_to_end(key)
                return automaton, "memory"
        automaton = self._load(key, regex)
        source = "disk"
        if automaton is None:
            automaton, source = self._build(key, regex, budget, requested, meanwhile), "none"
        with self._lock:
            self._automata[key] = automaton
            while len(self._automata) > _AUTOMATA_CACHE_SIZE:
                self._automata.popitem(last=False)
        return automaton, source

    def _build(self, key: str, regex: str, budget: float, requested: float,
               meanwhile=None) -> ByteAutomaton:
        started = time.monotonic()
        arrays = self._build_here(regex, budget)
        built_here = arrays is not None
        seconds = time.monotonic() - started
        if built_here and seconds > budget:  # the timeout holds here too
            status, payload = "timeout", None
        elif built_here:
            status, payload = "ok", arrays
        else:  # the worker gets what is left of the budget
            status, payload = (self._worker.compile(regex, budget - seconds, meanwhile, STRING_CHAR)
                               if seconds < budget else ("timeout", None))
            seconds = time.monotonic() - started
        if status == "ok":
            arrays = {name: payload[name] for name in ARRAY_NAMES}
            automaton = ByteAutomaton.from_arrays(arrays, check=not built_here)
            if seconds >= STORE_AFTER_SECONDS:
                self._store(key, regex, arrays)
            return automaton
        if status == "timeout":
            failed = CompileTimeoutError(
                f"compiling the constraint took longer than {budget:g} s; simplify the schema "
                "or pass a larger timeout")
        elif status == "out-of-memory":
            failed = CompileTooLargeError(
                f"compiling the constraint needed more than {self.memory_limit / 2**30:.1f} GiB; "
                "simplify the schema")
        else:
            raise ConstraintError(f"outlines-core could not compile the regex: {payload}")
        self.remember_failure(key, requested, failed)
        raise failed

    def _token_bytes(self, info: TokenizerInfo) -> TokenBytes:
        with self._lock:
            tokens = self._tokens.get(info.fingerprint)
        if tokens is None:  # built outside the lock: a race builds it twice, harmlessly
            tokens = TokenBytes(info.token_bytes, info.vocab_size)
            with self._lock:
                tokens = self._tokens.setdefault(info.fingerprint, tokens)
                while len(self._tokens) > _TOKENIZERS_CACHE_SIZE:
                    self._tokens.popitem(last=False)
        return tokens

    # --- the disk cache ---------------------------------------------------------------------

    def _load(self, key: str, regex: str) -> ByteAutomaton | None:
        """The entry's automaton if the file proves to be ``key``'s and whole (else removed)."""
        folder = constraints_dir() if self.disk_cache else None
        if folder is None:
            return None
        path = folder / f"{key}.tables"
        try:
            tables = read_tables(path, key=key, regex=regex)
            if tables.keys() != set(ARRAY_NAMES):
                raise ValueError(f"{path} holds other arrays than an automaton's")
            return ByteAutomaton.from_arrays(tables)
        except FileNotFoundError:
            return None  # absent: compile afresh
        except (OSError, ValueError):
            discard(path)  # damaged or another key's: compile afresh, store anew
            return None

    def _store(self, key: str, regex: str, arrays: dict) -> None:
        folder = constraints_dir(create=True) if self.disk_cache else None
        if folder is None:
            return
        target = folder / f"{key}.tables"

        def write() -> None:  # the arrays are never written to once built: safe to read here
            write_private(target, lambda path: write_tables(path, arrays, key=key, regex=regex))

        if not STORE_IN_BACKGROUND:
            write()
            return
        thread = threading.Thread(target=write, name="structgen-store")  # not a daemon: joined at exit
        with self._lock:
            self._stores = [store for store in self._stores if store.is_alive()] + [thread]
        thread.start()

    def wait_for_stores(self, timeout: float | None = None) -> None:
        """Wait for the tables files this compiler is writing (a test, a benchmark that reads
        the disk cache next)."""
        with self._lock:
            stores = list(self._stores)
        for store in stores:
            store.join(timeout)

    def remember_schema(self, schema_key: str, regex: str, seconds: float) -> None:
        """Record which regex a schema compiled to, so the next lookup can skip schema -> regex;
        on disk too where the conversion took ``STORE_AFTER_SECONDS`` or more."""
        self._schema_regex[schema_key] = regex
        if seconds >= STORE_AFTER_SECONDS:
            self._write_entry(f"schema-{schema_key}.regex", regex.encode("utf-8"))

    def regex_of_schema(self, schema_key: str) -> str | None:
        regex = self._schema_regex.get(schema_key)
        if regex is None:
            entry = self._read_entry(f"schema-{schema_key}.regex",
                                     check=lambda header, body: bool(body.decode("utf-8")))
            if entry is not None:
                regex = self._schema_regex[schema_key] = entry[1].decode("utf-8")
        return regex

    def _write_entry(self, name: str, body: bytes) -> None:
        """A small cache file: one JSON line proving what it is (its own name and the body's
        CRC-32), then the body."""
        folder = constraints_dir(create=True) if self.disk_cache else None
        if folder is not None:
            line = json.dumps({"entry": name, "crc": zlib.crc32(body)}).encode()
            write_private(folder / name, lambda path: path.write_bytes(line + b"\n" + body))

    def _read_entry(self, name: str, check):
        """(header, body) of ``_write_entry``'s file if it proves to be ``name``, whole, and
        ``check`` accepts it; anything else is removed (None)."""
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
            expected = {"entry": name, "crc": zlib.crc32(body)}
            if (isinstance(header, dict) and all(header.get(k) == v for k, v in expected.items())
                    and check(header, body)):
                return header, body
        except (ValueError, RecursionError):  # not JSON, or a body that does not decode
            pass
        discard(path)  # damaged or another entry's: computed afresh
        return None

    # --- failures ---------------------------------------------------------------------------

    def remember_failure(self, key: str, budget: float, error: ConstraintError) -> None:
        """Keep that compiling ``key`` (a schema or regex key) failed with ``budget`` seconds."""
        with self._lock:
            self._failures[key] = (budget, error)
            while len(self._failures) > _AUTOMATA_CACHE_SIZE:
                self._failures.popitem(last=False)

    def failed_before(self, key: str, budget: float) -> ConstraintError | None:
        """The earlier error (anew) if ``key`` ran out of memory, or out of time with at least
        ``budget`` seconds: it would again (a larger budget is tried afresh)."""
        with self._lock:
            budget_then, error = self._failures.get(key, (0.0, None))
        if isinstance(error, CompileTooLargeError) or (error is not None and budget <= budget_then):
            return type(error)(f"{error} (remembered from an earlier compile in this process)")
        return None

    def raise_if_failed_before(self, key: str, budget: float) -> None:
        failed = self.failed_before(key, budget)
        if failed is not None:
            raise failed

    def close(self) -> None:
        """Stop the compile worker, and finish writing the tables files under way."""
        self._worker.stop()
        self.wait_for_stores()


def determinise_here(regex: str, loops, deadline: float) -> dict:
    """``determinized_arrays`` of one piece of a build in this process, its bounds on states
    and work in proportion to the time left before ``deadline`` (whole from a second on)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise BuildTooLarge("out of time")
    scale = min(1.0, left)
    return determinized_arrays(regex, loops, max_states=max(2, int(MAX_STATES * scale)),
                               max_work=max(1, int(MAX_WORK * scale)))


def automaton_key(regex: str) -> str:
    """The cache key of a regex's automaton (the tokenizer plays no part in it)."""
    versions = f"{__version__}|{TABLES_FORMAT}|outlines-core={_package_version('outlines_core')}"
    return hashlib.sha256(f"{versions}|{regex}".encode()).hexdigest()[:32]


@functools.cache
def _package_version(name: str) -> str:
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


def compile_constraint(output_type: Any, tokenizer: Any, *, whitespace: str = DEFAULT_WHITESPACE,
                       timeout: float | None = None, engine: str = "auto",
                       extra_properties: bool = False,
                       max_any_depth: int = DEFAULT_ANY_DEPTH) -> Constraint:
    """Compile an output type (or JSON schema, or ``Regex``) for a tokenizer.

    ``tokenizer`` may be a transformers tokenizer, a ``TokenizerInfo`` or a loaded
    ``structgen.Model``. ``whitespace`` is one of ``WHITESPACE_MODES``: ``"compact"``,
    ``"spaced"`` and ``"indented"`` admit exactly the layout ``json.dumps`` writes (no separator
    spaces; its default ``", "``/``": "``; ``indent=2``), so no whitespace loop is possible;
    ``"flexible"`` allows any JSON whitespace (to check text written elsewhere).
    ``extra_properties=True`` also accepts members with undeclared names after the declared ones
    where the schema leaves an object open, as JSON Schema does (to check text written
    elsewhere; a generator should write only what the schema declares, the default).
    ``max_any_depth``: how deep arrays and objects may nest inside a value the schema leaves
    open (``{}``, ``dict[str, Any]``); each level more writes about 4x the regex of such a value
    (compile time grows with it), and where the regex would pass 1 MiB they nest one level less
    at a time until it fits (down to one level).

    ``engine="auto"`` (the default) gives the finite-state constraint (lazy token masks, the
    budget guarantee) for every schema structgen's regex compiler takes, and llguidance for the
    rest (see the module's table); ``timeout`` bounds schema -> regex and the automaton together.
    """
    check_whitespace(whitespace)
    if engine not in ENGINES:
        raise ConstraintError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if isinstance(max_any_depth, bool) or not isinstance(max_any_depth, int) or max_any_depth < 0:
        raise ConstraintError(f"max_any_depth must be an int >= 0, not {max_any_depth!r}")
    spec = as_output_type(output_type)
    compiler = default_compiler()
    compiler.start()  # a fresh process's worker boots while the tokenizer is read
    info = tokenizer_info_of(tokenizer)
    budget = timeout or compiler.timeout
    deadline = time.monotonic() + budget
    try:
        regex = spec.regex or _schema_regex(compiler, spec, Options(whitespace, extra_properties,
                                                                    max_any_depth),
                                            info, engine, deadline, budget)
    except _GrammarInstead as instead:
        return instead.constraint
    if engine == "llguidance":
        return _llguidance(regex_grammar(regex), spec, info, whitespace, regex=regex)
    try:
        return compiler.compile_regex(regex, info, whitespace=whitespace, output_type=spec,
                                      timeout=_left(deadline), requested=budget)
    except (CompileTimeoutError, CompileTooLargeError) as slow:
        if engine == "outlines-core":
            raise
        try:
            return _llguidance(regex_grammar(regex), spec, info, whitespace, regex=regex,
                               reason=str(slow))
        except ConstraintError:
            raise slow from None


class _GrammarInstead(Exception):
    """Raised inside the pipeline when a schema goes to llguidance's JSON compiler."""

    def __init__(self, constraint: GrammarConstraint):
        self.constraint = constraint


class Options(NamedTuple):
    """What a ``compile_constraint`` call asks of the schema compiler (part of the schema's
    cache key)."""

    whitespace: str
    extra_properties: bool
    max_any_depth: int

    def regex_options(self, **more) -> dict:
        return dict(whitespace=self.whitespace, extra_properties=self.extra_properties,
                    max_any_depth=self.max_any_depth, **more)


def _schema_regex(compiler: ConstraintCompiler, spec: OutputType, options: Options,
                  info: TokenizerInfo, engine: str, deadline: float, budget: float) -> str:
    """The schema's regex (remembered from an earlier compile, or converted by ``deadline``),
    or ``_GrammarInstead`` with llguidance's grammar for a schema that is not regular.
    ``budget`` is the whole timeout asked for, which remembered failures are compared with."""
    whitespace = options.whitespace
    schema_key = _schema_key(spec.schema, options, info)
    known = compiler.regex_of_schema(schema_key)
    if known:
        return known
    failed = compiler.failed_before(schema_key, budget)
    started = time.monotonic()
    try:
        if failed is not None:
            raise failed
        regex = _converted(spec, options, deadline)
    except CompileTimeoutError:
        slow = failed or CompileTimeoutError(
            f"turning the schema into a regex took longer than the {budget:g} s timeout; simplify "
            "the schema (fewer oneOf branches) or pass a larger timeout")
        if failed is None:
            compiler.remember_failure(schema_key, budget, slow)
        if engine == "outlines-core":
            raise slow from None
        try:
            raise _GrammarInstead(_llguidance_json(spec, info, whitespace, reason=str(slow))) from None
        except (ConstraintError, UnsupportedSchemaError):
            raise slow from None
    except UnsupportedSchemaError as unsupported:
        refused = unsupported
        if engine != "outlines-core":
            try:
                raise _GrammarInstead(_llguidance_json(spec, info, whitespace, str(unsupported))) from None
            except (ConstraintError, UnsupportedSchemaError) as both:
                refused = UnsupportedSchemaError(
                    f"{unsupported.reason}; llguidance cannot enforce it either ({str(both)[:200]})",
                    unsupported.pointer)
        if not isinstance(unsupported, RecursionLimitError):
            raise refused from None
        try:  # bounded nesting, when nothing can nest without bound
            regex = _unrolled_regex(spec, options, deadline)
        except UnsupportedSchemaError:
            raise refused from None
    compiler.remember_schema(schema_key, regex, time.monotonic() - started)
    return regex


def _converted(spec: OutputType, options: Options, deadline: float) -> str:
    """``schema_to_regex`` with ``options`` or, where that regex would be too large (open values
    inlined at every use of a large schema's definitions), with open values nesting one level
    less at a time, down to one: the deepest nesting that fits, not straight to one level (a
    schema asked for at depth 4 whose depth-3 regex fits gets depth 3). An attempt stops as soon
    as one of its values passes the limit, and where that value writes no open value no
    shallower attempt is made: it would pass the limit alike (JsonSchemaStore detekt-1.22.0
    spent 111 ms on three attempts before)."""
    depth = options.max_any_depth
    while True:
        try:
            return schema_to_regex(spec.schema, **options._replace(max_any_depth=depth)
                                   .regex_options(timeout=_left(deadline)))
        except RegexTooLargeError as too_large:
            if depth <= 1 or not too_large.open_values:
                raise
            depth -= 1


#: How often a recursive ``$ref`` is unrolled when llguidance (which nests without bound) cannot
#: take the schema: the regex then nests that deep and no deeper (less where the regex would be
#: too large).
UNROLL_RECURSION = 2


def _unrolled_regex(spec: OutputType, options: Options, deadline: float) -> str:
    """The regex of the deepest unrolling, up to ``UNROLL_RECURSION``, that is not too large.
    Depths are tried from 0 up: one too large makes every deeper one too large, and a failed
    try writes up to a MiB of regex first (Github_hard o21260 spent 0.2 s on depth 2 before)."""
    regex = schema_to_regex(spec.schema, **options.regex_options(
        max_recursion=0, timeout=_left(deadline)))
    for depth in range(1, UNROLL_RECURSION + 1):
        try:
            regex = schema_to_regex(spec.schema, **options.regex_options(
                max_recursion=depth, timeout=_left(deadline)))
        except RegexTooLargeError:
            break
    return regex


def _left(deadline: float) -> float:
    """Seconds of the budget left (a compile given none times out at its first check)."""
    return max(deadline - time.monotonic(), 1e-3)


def _schema_key(schema: Any, options: Options, info: TokenizerInfo) -> str:
    # Key order is kept: property order is part of what the regex writes.
    text = json.dumps(schema, ensure_ascii=False, default=str)
    chosen = "|".join(map(str, options))
    digest = hashlib.sha256(
        f"{_schema_compiler_revision()}|{chosen}|{info.fingerprint}|{text}".encode())
    return digest.hexdigest()[:32]


@functools.cache
def _schema_compiler_revision() -> str:
    """The schema→regex compiler's own source, hashed: an alias cached by an older compiler
    (same structgen version, during development) is never reused. This module counts too: its
    ``_converted`` and ``_unrolled_regex`` choose the depth a schema's regex is written at."""
    digest = hashlib.sha256(__version__.encode())
    for path in [*(module.__file__ for module in COMPILER_MODULES), __file__]:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def _llguidance_json(spec: OutputType, info: TokenizerInfo, whitespace: str,
                     reason: str) -> GrammarConstraint:
    grammar = json_schema_grammar(without_custom_formats(spec.schema), whitespace)
    return _llguidance(grammar, spec, info, whitespace, regex=None, reason=reason)


def _llguidance(grammar: str, spec: OutputType, info: TokenizerInfo, whitespace: str, *,
                regex: str | None, reason: str | None = None) -> GrammarConstraint:
    return GrammarConstraint(grammar, info, regex=regex, output_type=spec,
                             whitespace=whitespace, fallback_reason=reason)
