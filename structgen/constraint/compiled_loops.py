"""CompiledLoops: structgen's numba loops, loaded once per process by a background thread.

Two modules: ``compiled_walks`` (the token walker's loops) and ``compiled_automaton`` (the
determinisation of a regex into a byte automaton, with ``compiled_regex``'s NFA). Importing numba
and loading them from its cache takes about 0.8-0.9 s; compiling them, the first time on a
machine (or after an upgrade), about 45 s here (the walks 2 s; the NFA 26 s; the determinisation
and the regex scans 17 s; ``make install`` does it once).
A script that compiles one schema should wait for neither. ``load_model`` and
``from_transformers`` start the load while the model loads; until it is done, walks run in numpy
and automata are built by outlines-core in the compile worker, and for good where numba is
missing or fails (``error`` says why) or ``STRUCTGEN_COMPILED_LOOPS=0``.
"""

from __future__ import annotations

import importlib
import os
import threading


class CompiledLoops:
    """The loading thread and its result: ``walks`` and ``automaton`` (the modules, both or
    neither). The thread is not a daemon: a process that ends while numba compiles waits for
    it rather than dying inside it."""

    def __init__(self):
        self.walks = None  # compiled_walks, once loaded
        self.automaton = None  # compiled_automaton, once loaded
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if os.environ.get("STRUCTGEN_COMPILED_LOOPS") == "0":
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._load, name="structgen-compiled-loops")
                self._thread.start()

    def _load(self) -> None:
        try:  # a thread's import: numba is heavy, and most processes need it late or never
            walks = importlib.import_module("structgen.constraint.compiled_walks")
            automaton = importlib.import_module("structgen.constraint.compiled_automaton")
            walks.warm_up()
            automaton.warm_up()
        except Exception as error:  # numba absent, or unable to compile here
            self.error = f"{type(error).__name__}: {error}"
            return
        self.automaton = automaton
        self.walks = walks

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a started load; True when the compiled loops are in use."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.walks is not None


#: This process's compiled loops (``CompiledLoops.start`` loads them).
COMPILED_LOOPS = CompiledLoops()
