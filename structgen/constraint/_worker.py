"""The compile worker: builds outlines-core indices in a separate process.

outlines-core's ``Index`` construction is one blocking Rust call that cannot be interrupted and
can, for some regexes, run for minutes or eat gigabytes. Running it in a child process is the only
way to give a compile a real time and memory budget: on timeout the child is killed, and its
address-space limit turns a runaway allocation into a dead child instead of a dead host.

The child imports outlines-core and numpy only (no torch), so it starts in well under a second,
and it is kept alive between compiles with the vocabularies it has seen.
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
import zlib

import numpy as np

# Exit status of the child when Rust aborts on a failed allocation (SIGABRT) or Python runs out.
_OUT_OF_MEMORY = "out-of-memory"


# outlines-core drops every transition from a complete text to an incomplete one, so with a bare
# regex a top-level `1` could never grow into `1.5`. structgen therefore compiles `(?:regex)\x00`
# over a vocabulary where one extra id, past the real ones, is spelled "\x00": a state is accepting
# when it can take that id, and the real EOS token is put in its place.
END_MARK = b"\x00"


def end_marked(regex: str) -> str:
    return f"(?:{regex})\\x00"


def _build_tables(index, vocab_size: int, eos_token_id: int) -> dict:
    """Flatten ``Index.get_transitions()`` into CSR arrays and per-state distances.

    Decoding needs, per state, the allowed token ids, where each leads, and how many tokens the
    shortest completion from there takes (the budget guarantee). Arrays keep that at 8 bytes per
    transition instead of ~100 for Python dicts, and save/load as ``.npy`` files.
    """
    end_mark_id = vocab_size
    transitions = index.get_transitions()
    states = sorted(transitions)
    position = {state: i for i, state in enumerate(states)}
    initial = index.get_initial_state()
    if initial not in position:  # an index whose start state has no transitions at all
        position[initial] = len(states)
        states.append(initial)

    offsets = np.zeros(len(states) + 1, dtype=np.int64)
    is_final = np.zeros(len(states), dtype=bool)
    token_chunks, next_chunks = [], []
    for i, state in enumerate(states):
        row = dict(transitions.get(state, {}))
        row.pop(eos_token_id, None)  # outlines-core's own EOS sits after the end mark: not ours
        if row.pop(end_mark_id, None) is not None:
            is_final[i] = True
            row[eos_token_id] = state
        tokens = np.fromiter(row.keys(), dtype=np.int32, count=len(row))
        order = np.argsort(tokens, kind="stable")
        nexts = np.fromiter((position.get(n, -1) for n in row.values()), np.int32, len(row))
        token_chunks.append(tokens[order])
        next_chunks.append(nexts[order])
        offsets[i + 1] = offsets[i] + len(row)
    tokens = np.concatenate(token_chunks) if token_chunks else np.zeros(0, np.int32)
    nexts = np.concatenate(next_chunks) if next_chunks else np.zeros(0, np.int32)
    distance = _distances_to_accept(offsets, nexts, is_final)
    offsets, tokens, nexts, worst = _live_transitions(offsets, tokens, nexts, distance)
    masks, mask_of_state = _packed_masks(offsets, tokens, vocab_size)
    state_crc, row_crc = piece_checksums(offsets, tokens, nexts, masks)
    return {
        "offsets": offsets,
        "tokens": tokens,
        "next": nexts,
        "distance": distance,
        "worst": worst,
        "is_final": is_final,
        "masks": masks,
        "mask_of_state": mask_of_state,
        "initial": np.int64(position[initial]),
        "vocab_size": np.int64(vocab_size),
        "state_crc": state_crc,
        "row_crc": row_crc,
    }


def state_checksum(offsets, tokens, nexts, state: int) -> int:
    """CRC-32 of one state's transitions (its token ids, then its next states)."""
    start, end = offsets[state], offsets[state + 1]
    return zlib.crc32(nexts[start:end], zlib.crc32(tokens[start:end]))


def piece_checksums(offsets, tokens, nexts, masks) -> tuple[np.ndarray, np.ndarray]:
    """A CRC-32 per state's transitions and per mask row: a disk hit checks each piece the first
    time it is read, so it reads only the pages a decode touches yet never uses a damaged byte."""
    states = np.fromiter((state_checksum(offsets, tokens, nexts, state)
                          for state in range(len(offsets) - 1)), np.uint32, len(offsets) - 1)
    rows = np.fromiter((zlib.crc32(row) for row in masks), np.uint32, len(masks))
    return states, rows


UNREACHABLE = np.iinfo(np.int32).max


def _distances_to_accept(offsets, nexts, is_final) -> np.ndarray:
    """Fewest tokens from each state to an accepting state (breadth-first, backwards)."""
    n = len(is_final)
    predecessors: list[set[int]] = [set() for _ in range(n)]
    for state in range(n):
        for successor in set(nexts[offsets[state] : offsets[state + 1]].tolist()):
            if successor >= 0:
                predecessors[successor].add(state)
    distance = np.full(n, UNREACHABLE, dtype=np.int32)
    frontier = [i for i in range(n) if is_final[i]]
    distance[frontier] = 0
    depth = 0
    while frontier:
        depth += 1
        following = []
        for state in frontier:
            for previous in predecessors[state]:
                if distance[previous] == UNREACHABLE:
                    distance[previous] = depth
                    following.append(previous)
        frontier = following
    return distance


def _live_transitions(offsets, tokens, nexts, distance):
    """Drop transitions into dead ends, and give each state its worst next distance.

    Done once here, so a decoding step never filters a row: a state's row is the allowed tokens,
    and ``worst[state]`` tells whether a budget can change the mask at all.
    """
    after = np.where(nexts >= 0, distance[np.maximum(nexts, 0)], UNREACHABLE)
    alive = after < UNREACHABLE
    kept = np.concatenate([[0], np.cumsum(alive, dtype=np.int64)])
    offsets = kept[offsets]
    tokens, nexts, after = tokens[alive], nexts[alive], after[alive]
    worst = np.zeros(len(offsets) - 1, dtype=np.int32)
    filled = offsets[:-1] < offsets[1:]
    if filled.any():
        worst[filled] = np.maximum.reduceat(after, offsets[:-1][filled])
    return offsets, tokens, nexts, worst


MASK_BUDGET_BYTES = 256 << 20  # precomputed bitmasks per constraint; the rest are built on demand


def _packed_masks(offsets, tokens, vocab_size: int):
    """Each state's allowed-token bitmask, computed here so a decoding step is a memory copy.

    States with the same allowed set (common: every state inside a free string) share one row.
    Largest sets first, within ``MASK_BUDGET_BYTES``; ``mask_of_state`` is -1 for states left out.
    """
    import hashlib

    words = (vocab_size + 31) // 32
    n_states = len(offsets) - 1
    mask_of_state = np.full(n_states, -1, dtype=np.int32)
    rows: list[np.ndarray] = []
    seen: dict[bytes, int] = {}
    bits = np.zeros(words * 32, dtype=bool)
    for state in np.argsort(offsets[:-1] - offsets[1:], kind="stable"):
        row = tokens[offsets[state]:offsets[state + 1]]
        key = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
        if key in seen:
            mask_of_state[state] = seen[key]
            continue
        if (len(rows) + 1) * words * 4 > MASK_BUDGET_BYTES:
            continue
        bits[:] = False
        bits[row] = True
        rows.append(np.packbits(bits, bitorder="little").view(np.int32))
        seen[key] = mask_of_state[state] = len(rows) - 1
    masks = np.stack(rows) if rows else np.zeros((0, words), dtype=np.int32)
    return masks, mask_of_state


def _schema_regex(schema, whitespace: str) -> str:
    from structgen.schema import schema_to_regex

    return schema_to_regex(schema, whitespace=whitespace)


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
    from outlines_core import Index, Vocabulary

    vocabularies: dict[str, tuple] = {}
    while True:
        try:
            message = _read_frame(requests)
        except EOFError:
            return
        kind = message[0]
        if kind == "vocabulary":
            _, fingerprint, eos_token_id, bytes_to_ids, vocab_size = message
            bytes_to_ids = {b: ids for b, ids in bytes_to_ids.items() if END_MARK not in b}
            bytes_to_ids[END_MARK] = [vocab_size]
            vocabularies[fingerprint] = (Vocabulary(eos_token_id, bytes_to_ids), vocab_size, eos_token_id)
            _write_frame(replies, ("ok",))
            continue
        if kind == "schema":  # schema -> regex here too, so the parent's GIL stays free
            _, fingerprint, schema, whitespace = message
            try:
                regex = _schema_regex(schema, whitespace)
            except Exception as error:
                _write_frame(replies, ("schema-error", type(error).__name__,
                                       (getattr(error, "reason", str(error)),
                                        getattr(error, "pointer", ""))))
                continue
        else:
            _, fingerprint, regex = message
        vocabulary, vocab_size, eos_token_id = vocabularies[fingerprint]
        started = time.perf_counter()
        try:
            index = Index(end_marked(regex), vocabulary)
            index_seconds = time.perf_counter() - started
            tables = _build_tables(index, vocab_size, eos_token_id)
        except MemoryError:
            _write_frame(replies, ("error", _OUT_OF_MEMORY, "the compile ran out of its memory budget"))
            continue
        except Exception as error:  # outlines-core raises ValueError for regexes it rejects
            _write_frame(replies, ("error", type(error).__name__, str(error)))
            continue
        tables["index_seconds"] = np.float64(index_seconds)
        _write_frame(replies, ("ok", (regex, tables)) if kind == "schema" else ("ok", tables))


class CompileWorker:
    """A long-lived child process that compiles regexes; killed and restarted on a timeout.

    Started with ``python -c`` rather than multiprocessing: spawn would re-import the user's main
    script in the child, which breaks scripts without an ``if __name__ == "__main__"`` guard.
    """

    #: The child's scheduling niceness: a compile runs beside decoding (a hybrid's index compiles
    #: while llguidance serves the masks), and where the two want one core, decoding goes first.
    NICENESS = 10

    def __init__(self, memory_limit: int, niceness: int = NICENESS):
        self.memory_limit = memory_limit
        self.niceness = niceness
        self._process: subprocess.Popen | None = None
        self._vocabularies: set[str] = set()
        # One exchange at a time on the pipe: a background compile (a hybrid's index) and a
        # foreground one (a repair, another schema) would otherwise read each other's replies.
        self._exchange = threading.Lock()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from structgen.constraint._worker import serve; "
             f"serve({int(self.memory_limit)}, {int(self.niceness)})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
        )
        self._vocabularies = set()

    def start(self) -> None:
        if self._process is None or self._process.poll() is not None:
            self._start()

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)
            for stream in (self._process.stdin, self._process.stdout):
                stream.close()
        self._process = None

    def compile(self, regex: str, tokenizer_info, timeout: float) -> tuple[str, object]:
        """Returns ("ok", tables) or ("timeout"|"out-of-memory"|<error name>, message)."""
        return self._compile(("compile", tokenizer_info.fingerprint, regex), tokenizer_info, timeout)

    def compile_schema(self, schema, whitespace: str, tokenizer_info, timeout: float):
        """Schema -> regex -> index in the child: ("ok", (regex, tables)), ("schema-error",
        (error class name, (reason, pointer))), or a failure as ``compile`` returns it."""
        return self._compile(("schema", tokenizer_info.fingerprint, schema, whitespace),
                             tokenizer_info, timeout)

    def _compile(self, message, tokenizer_info, timeout: float):
        deadline = time.monotonic() + timeout
        with self._exchange:  # the wait for the lock counts against this compile's budget
            self.start()
            if tokenizer_info.fingerprint not in self._vocabularies:
                status = self._request(("vocabulary", tokenizer_info.fingerprint,
                                        tokenizer_info.eos_token_id, tokenizer_info.bytes_to_ids(),
                                        tokenizer_info.vocab_size), deadline)
                if status[0] != "ok":
                    return status
                self._vocabularies.add(tokenizer_info.fingerprint)
            return self._request(message, deadline)

    def _request(self, message, deadline: float):
        try:
            _write_frame(self._process.stdin, message)
            reply = self._receive(deadline)
        except (EOFError, OSError):  # the child died: its address-space limit killed it
            self.stop()
            return (_OUT_OF_MEMORY, "the compile worker died (memory budget exceeded)")
        if reply is None:
            self.stop()
            return ("timeout", "the compile did not finish within its time budget")
        if reply[0] == "schema-error":
            return ("schema-error", (reply[1], reply[2]))
        return reply if reply[0] == "ok" else (reply[1], reply[2])

    def _receive(self, deadline: float):
        """One reply frame, or None when the deadline passes first."""
        stdout = self._process.stdout
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([stdout], [], [], max(0.0, remaining))
        if not ready:
            return None
        return _read_frame(stdout)
