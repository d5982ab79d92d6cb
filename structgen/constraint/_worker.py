"""The compile worker: builds outlines-core byte automata in a separate process.

outlines-core's ``Index`` construction is one blocking Rust call that cannot be interrupted. Over
256 single bytes it takes milliseconds for most schemas, but a few regexes still determinise into
tens of thousands of states for seconds (26 s for the largest of 80 jsonschemabench dev schemas),
and a pathological one could run for minutes or eat gigabytes. Running it in a child process is
the only way to give a compile a real time and memory budget: on timeout the child is killed, and
its address-space limit turns a runaway allocation into a dead child instead of a dead host.

The child imports outlines-core and numpy only (no torch), and is kept alive between compiles.
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import struct
import subprocess
import sys
import threading
import time
import weakref

import numpy as np

from structgen.constraint.automaton import build_arrays, byte_vocabulary
from structgen.constraint.automaton_builder import AutomatonBuilder

# Exit status of the child when Rust aborts on a failed allocation (SIGABRT) or Python runs out.
_OUT_OF_MEMORY = "out-of-memory"


def _write_frame(stream, message) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def _read_exact(stream, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream):
    (size,) = struct.unpack("<Q", _read_exact(stream, 8))
    return pickle.loads(_read_exact(stream, size))


def serve(memory_limit: int, niceness: int = 0) -> None:
    """The child's loop: frames in on stdin, frames out on a private copy of stdout. Ends
    quietly when the parent has gone (a script that exits during a background compile)."""
    if niceness:
        os.nice(niceness)
    try:
        _serve(memory_limit)
    except BrokenPipeError:
        pass


def _serve(memory_limit: int) -> None:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    requests = sys.stdin.buffer
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    byte_vocabulary()  # outlines-core imported and the vocabulary built before the first request
    builder = AutomatonBuilder(build_arrays)

    while True:
        try:
            regex, character = _read_frame(requests)
        except EOFError:
            return
        started = time.perf_counter()
        try:
            arrays = builder.build(regex, character)
        except MemoryError:
            _write_frame(replies, ("error", _OUT_OF_MEMORY, "the compile ran out of its memory budget"))
            continue
        except Exception as error:  # outlines-core raises ValueError for regexes it rejects
            _write_frame(replies, ("error", type(error).__name__, str(error)))
            continue
        arrays["index_seconds"] = np.float64(time.perf_counter() - started)
        _write_frame(replies, ("ok", arrays))


def _end_process(process: subprocess.Popen) -> None:
    """Kill the child and close our ends of its pipes."""
    process.kill()
    process.wait(timeout=5)
    for stream in (process.stdin, process.stdout):
        stream.close()


class CompileWorker:
    """A long-lived child process that compiles regexes; killed and restarted on a timeout.

    Started with ``python -c`` rather than multiprocessing: spawn would re-import the user's main
    script in the child, which breaks scripts without an ``if __name__ == "__main__"`` guard.
    """

    #: The child's scheduling niceness: a compile can run beside decoding (a server compiling one
    #: request's schema while others decode), and where the two want one core, decoding goes first.
    NICENESS = 10

    def __init__(self, memory_limit: int, niceness: int = NICENESS):
        self.memory_limit = memory_limit
        self.niceness = niceness
        self._process: subprocess.Popen | None = None
        # One exchange at a time on the pipe: two threads compiling at once (a server preparing
        # two requests) would otherwise read each other's replies.
        self._exchange = threading.Lock()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from structgen.constraint._worker import serve; "
             f"serve({int(self.memory_limit)}, {int(self.niceness)})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
        )
        # Ended by stop(), or else when this worker is collected or the interpreter exits: a
        # child left running at exit makes Python warn about it and its unclosed pipes.
        self._end = weakref.finalize(self, _end_process, self._process)

    def start(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self.stop()  # it died: close its pipes before starting another
        if self._process is None:
            self._start()

    def stop(self) -> None:
        if self._process is not None:
            self._end()
        self._process = None

    def compile(self, regex: str, timeout: float, meanwhile=None,
                character: str | None = None) -> tuple[str, object]:
        """Returns ("ok", the automaton's arrays) or ("timeout"|"out-of-memory"|<error name>,
        message). ``meanwhile()``, if given, runs in this process while the child builds (the
        tokenizer's arrays of a first compile: the two then share the build's time).
        ``character`` (a JSON string character's regex) splices the long strings of it
        (``counted.with_placeholders``, run by the child, inside the budget)."""
        deadline = time.monotonic() + timeout
        with self._exchange:  # the wait for the lock counts against this compile's budget
            self.start()
            return self._request((regex, character), deadline, meanwhile)

    def _request(self, message, deadline: float, meanwhile=None):
        try:
            _write_frame(self._process.stdin, message)
        except OSError:  # the child died: its address-space limit killed it
            self.stop()
            return (_OUT_OF_MEMORY, "the compile worker died (memory budget exceeded)")
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                self.stop()  # its reply will not be read: the next compile gets a fresh child
                raise
        try:
            reply = self._receive(deadline)
        except (EOFError, OSError):  # the child died: its address-space limit killed it
            self.stop()
            return (_OUT_OF_MEMORY, "the compile worker died (memory budget exceeded)")
        if reply is None:
            self.stop()
            return ("timeout", "the compile did not finish within its time budget")
        return reply if reply[0] == "ok" else (reply[1], reply[2])

    def _receive(self, deadline: float):
        """One reply frame, or None when the deadline passes first."""
        stdout = self._process.stdout
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([stdout], [], [], max(0.0, remaining))
        if not ready:
            return None
        return _read_frame(stdout)
