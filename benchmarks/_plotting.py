"""Shared by the benchmark scripts: matplotlib is optional (the `bench` extra), and a results
file says which code it measured."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


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


def save(plt, fig, path) -> None:
    """Lay ``fig`` out, write it to ``path`` as the results' PNGs are written, and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def provenance() -> str:
    """The commit ``structgen/`` was last changed in, and whether it has changes beyond it."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True,
                              text=True).stdout.strip()

    commit = git("log", "-1", "--format=%h", "--", "structgen")
    dirty = git("status", "--porcelain", "--", "structgen")
    return f"`structgen/` as at commit {commit or '?'}" + (" plus uncommitted changes" if dirty else "")
