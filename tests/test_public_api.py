"""The public surface is exactly what __all__ says, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import structgen


def test_every_exported_name_resolves():
    for name in structgen.__all__:
        assert getattr(structgen, name) is not None, name


def test_every_error_derives_from_the_base_class():
    errors = [getattr(structgen, n) for n in structgen.__all__ if n.endswith("Error")]
    assert len(errors) >= 15
    assert all(issubclass(e, structgen.StructgenError) for e in errors)


def test_import_does_not_load_torch_or_transformers():
    code = "import sys, structgen; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
