"""pyproject.toml declares what structgen/ imports, no more: every runtime dependency is imported
somewhere in structgen/, and every third-party module structgen/ imports is declared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# Imported, but installed by the user, never by pip install structgen: vLLM needs a GPU build
# (structgen.backends.vllm imports it only inside generate_with_vllm and says how to install it).
BRING_YOUR_OWN = {"vllm"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0))


def pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def imported_modules() -> set[str]:
    """Top-level names of the third-party modules any file under structgen/ imports."""
    names = set()
    for path in (ROOT / "structgen").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "structgen"}


def distributions_of(modules: set[str]) -> dict[str, set[str]]:
    """module -> the installed distributions that provide it (canonical names)."""
    provided = importlib.metadata.packages_distributions()
    return {m: {canonical(d) for d in provided.get(m, ())} for m in modules}


def test_every_runtime_dependency_is_imported_by_structgen():
    dependencies = {requirement_name(r) for r in pyproject()["project"]["dependencies"]}
    imported = set().union(*distributions_of(imported_modules()).values())
    unused = sorted(dependencies - imported)
    assert not unused, f"declared in pyproject.toml but imported nowhere in structgen/: {unused}"


def test_every_third_party_import_is_declared():
    project = pyproject()["project"]
    declared = {requirement_name(r) for r in project["dependencies"]}
    declared |= {requirement_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    undeclared = {}
    for module, distributions in distributions_of(imported_modules() - BRING_YOUR_OWN).items():
        if not distributions & declared:
            undeclared[module] = sorted(distributions) or "not installed"
    assert not undeclared, f"imported by structgen/ but not in pyproject.toml: {undeclared}"


def test_outlines_and_interegular_are_extras_not_requirements():
    """structgen takes outlines objects without importing outlines, and imports no interegular."""
    project = pyproject()["project"]
    runtime = {requirement_name(r) for r in project["dependencies"]}
    assert not {"outlines", "interegular"} & runtime
    assert {requirement_name(r) for r in project["optional-dependencies"]["outlines"]} == {"outlines"}
