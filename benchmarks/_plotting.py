"""Shared by the benchmark scripts: matplotlib is optional (the `bench` extra)."""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None (saying so) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return None
    return plt
