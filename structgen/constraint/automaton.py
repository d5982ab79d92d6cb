"""ByteAutomaton: a constraint's regex as a byte-level DFA, in arrays.

Two builds give the same arrays. ``determinized_arrays`` is structgen's own: ``regex_nfa``
parses the schema compiler's regex dialect into a byte NFA and ``compiled_automaton`` (numba)
determinises and prunes it, in the calling thread, within bounds on states and work (p50 2.0 ms
against outlines-core's 4.8 ms on 228 dev schemas' regexes, ``benchmarks/determinize.py``).
``build_arrays`` asks outlines-core for an ``Index`` over a vocabulary of the 256 single bytes
instead of the model's tokens, in the compile worker: before numba is loaded, and for regexes
outside the dialect or past the bounds. Either result serves every tokenizer; token masks are
computed from it lazily, per state, in ``token_masks``.

The transitions become one dense table over *byte classes* (bytes every state treats alike share
a column; a JSON schema's regex has tens of classes, not 256), so stepping a byte is
``table[state, byte_class[byte]]`` and a whole vocabulary steps in one numpy gather. State 0 is
the dead state; transitions into states from which no accepting state can be reached lead there.

outlines-core never steps from a complete text to an incomplete one (a top-level ``1`` could not
grow into ``1.5``), so its index is built for ``\\x1f(?:regex)\\x00``: a state is accepting when it
can take the ``\\x00`` end mark, and that column is dropped afterwards. A JSON text never holds a
raw NUL byte, so no state loses a real transition. The ``\\x1f`` start mark is stepped over (the
automaton starts after it): with it, a regex whose first byte recurs inside it no longer makes
outlines-core's determinisation explode (a top-level string of ``maxLength`` 12 took 0.6 s and 20
over two minutes; with the mark, 3 ms), and on 62 dev schemas the builds took 26% less time in
all (median ratio 0.85).

A JSON string far longer than any token is one looping copy of its character's states and a
counter (``splice_counted``, ``ByteAutomaton.counters``): the matcher counts the characters it
writes there and moves on to the string's last copies in time (``ByteAutomaton.advance``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from structgen.constraint.regex_nfa import NFATooLarge, RegexNFA, UnsupportedRegex

END_MARK = 0  # the byte appended to the regex to mark acceptance
START_MARK = 0x1F  # the byte put before it, so that its first byte starts nothing else
MARKS = np.array([END_MARK, START_MARK], np.int64)
UNREACHABLE = np.iinfo(np.int32).max

#: The arrays a ``ByteAutomaton`` is made of (what the disk cache stores).
ARRAY_NAMES = ("table", "byte_class", "is_final", "initial", "counters", "byte_distance")
#: The most characters a token may hold inside a counted string whose middle is one looping
#: copy and a counter (``splice_counted``); Llama-3's longest token is 128 bytes.
COUNTER_LOOKAHEAD = 256
NO_COUNTERS = np.zeros((0, 5), np.int64)


def marked(regex: str) -> str:
    """``regex`` between the start and end marks, as the worker builds it."""
    return f"\\x{START_MARK:02x}(?:{regex})\\x{END_MARK:02x}"


@functools.cache
def byte_vocabulary():
    """outlines-core's vocabulary of the 256 single bytes: token id ``b`` is byte ``b``."""
    from outlines_core import Vocabulary  # the worker process imports it; the parent never needs it

    return Vocabulary(256, {bytes([b]): [b] for b in range(256)})


def build_arrays(regex: str) -> dict:
    """``ARRAY_NAMES`` of ``regex``'s automaton, determinised by outlines-core in this process:
    one blocking call with no bound on its time or memory, so the compile worker's (and tests')."""
    from outlines_core import Index  # as in byte_vocabulary

    return arrays_from_index(Index(marked(regex), byte_vocabulary()))


class BuildTooLarge(Exception):
    """A determinisation in this process passed its bound on states or work (the compile worker,
    which can be killed at the timeout, builds it instead)."""


#: Bounds on a determinisation in the calling process (``determinized_arrays``): 32 MiB of
#: table at 64 byte intervals; either bound is reached in about a second here.
MAX_STATES = 1 << 17
MAX_WORK = 1 << 28


def determinized_arrays(regex: str, loops, max_states: int | None = None,
                        max_work: int | None = None) -> dict:
    """``ARRAY_NAMES`` of ``regex``'s automaton, determinised by structgen: ``regex_nfa`` parses
    it, and ``loops`` (the ``compiled_automaton`` module, loaded by ``CompiledLoops``) builds
    and prunes the DFA. The same language, finality and distances as ``build_arrays``, with
    the marks' bytes dead in the same way (a branch that cannot go on is pruned, where
    outlines-core refuses the regex). Raises ``UnsupportedRegex`` for syntax outside the schema
    compiler's dialect or a regex that matches nothing (outlines-core then reports it), and
    ``BuildTooLarge`` past the bounds (``MAX_STATES`` and ``MAX_WORK`` unless given)."""
    try:
        nfa = RegexNFA.from_regex(regex, loops)
    except NFATooLarge as error:
        raise BuildTooLarge(str(error)) from None
    byte_column, set_start, set_columns, columns = loops.byte_columns(
        nfa.range_set, nfa.low, nfa.high, nfa.sets, MARKS)
    status, table, final = loops.determinize(
        nfa.kind, nfa.arg, nfa.out, nfa.start, set_start, set_columns, columns,
        max_states or MAX_STATES, max_work or MAX_WORK)
    if status != loops.BUILT:
        raise BuildTooLarge("too many states" if status == loops.TOO_MANY_STATES
                            else "too much work")
    table[:, byte_column[MARKS]] = 0  # each mark alone in its column
    table, is_final, distance, renumber, column_class = loops.prune(table, final,
                                                                    np.int32(UNREACHABLE))
    if distance[1] == UNREACHABLE:  # nothing to accept: outlines-core reports it as before
        raise UnsupportedRegex("the regex matches no text")
    byte_class, kept = loops.byte_classes(byte_column, column_class)
    return {
        "table": np.ascontiguousarray(table[:, kept]),
        "byte_class": byte_class,
        "is_final": is_final,
        "initial": np.int64(renumber[1]),
        "counters": NO_COUNTERS,
        "byte_distance": distance,
    }


def table_distances(table: np.ndarray, is_final: np.ndarray) -> np.ndarray:
    """``distances_to_accept`` over every live transition of a whole table, in numpy."""
    return distances_to_accept(is_final, *column_edges(table))


def compiled_distances(table: np.ndarray, is_final: np.ndarray, loops) -> np.ndarray:
    """``table_distances``, by the compiled loop (``loops``)."""
    return loops.distances(np.ascontiguousarray(table, np.int32),
                           np.ascontiguousarray(is_final, np.bool_), np.int32(UNREACHABLE))


def arrays_from_index(index) -> dict:
    """Flatten an outlines-core ``Index`` over ``byte_vocabulary()`` into ``ARRAY_NAMES``.

    The Index's transitions come out as a dict of dicts (about 120 ns per transition); they
    are read into edge arrays once, and the byte classes are found from the edges
    (``class_table``): no table of 256 columns is made, nor compared column by column.
    """
    transitions = index.get_transitions()
    initial = index.get_initial_state()
    inner = transitions.values()
    counts = np.fromiter(map(len, inner), np.int64, len(transitions))
    total = int(counts.sum())
    byte = np.fromiter(itertools.chain.from_iterable(inner), np.int64, total)
    target = np.fromiter(itertools.chain.from_iterable(map(dict.values, inner)), np.int64, total)
    keys = np.fromiter(transitions, np.int64, len(transitions))
    # row i + 1 is states[i]; row 0 is dead (a dict's keys are distinct: a sort, not np.unique)
    states = np.sort(keys if initial in transitions else np.append(keys, initial))
    # outlines-core's state ids are multiples of its table's stride: a lookup by id / stride
    stride = int(np.bitwise_or.reduce(states))
    stride = stride & -stride or 1  # (1 where the only state is id 0)
    row_of = np.zeros(int(states[-1]) // stride + 1, dtype=np.int64)
    row_of[states // stride] = np.arange(1, len(states) + 1)
    source = np.repeat(row_of[keys // stride], counts)
    target = row_of[target // stride]
    n = len(states) + 1
    is_final = np.zeros(n, dtype=bool)
    is_final[source[byte == END_MARK]] = True
    initial_row = row_of[initial // stride]
    start = target[(source == initial_row) & (byte == START_MARK)]
    # outlines-core's own EOS id (256) follows the end mark, and the marks are not bytes of
    # the language: their columns are dead
    real = (byte < 256) & (byte != END_MARK) & (byte != START_MARK)
    byte, target, source = byte[real], target[real], source[real]
    byte_class, first_of_class, table = class_table(source, byte, target, n)
    firsts = first_of_class[byte_class[byte]] == byte  # each class's edges once
    distance = distances_to_accept(is_final, source[firsts], target[firsts])
    table[distance[table] == UNREACHABLE] = 0  # into a dead end: dead
    return {
        "table": table,
        "byte_class": byte_class.astype(np.uint8),
        "is_final": is_final,
        "initial": np.int64(start[0] if len(start) else 0),
        "counters": NO_COUNTERS,
        "byte_distance": distance,  # dead ends were never on a shortest path: still exact
    }


def class_table(source: np.ndarray, byte: np.ndarray, target: np.ndarray,
                states: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each byte's class, each class's first byte, the table over classes) of the edges
    ``source -byte-> target``: bytes whose columns are equal share a class, numbered in the
    order of their first bytes (so the bytes no state takes are class 0 when byte 0 is one).

    A byte's column is summarised by a float sum of a random weight per edge, in edge order:
    equal columns sum alike, bit for bit. The table is then checked against every edge and
    every byte's edge count; a collision (unequal columns that sum alike) is resolved exactly
    by comparing whole columns."""
    weights = _edge_weights(states)
    signature = np.bincount(byte, weights=weights[0][source] * weights[1][target], minlength=256)
    by_signature = np.argsort(signature, kind="stable")  # equal sums: in byte order
    opens = np.ones(256, dtype=bool)  # where a run of equal sums begins
    opens[1:] = signature[by_signature[1:]] != signature[by_signature[:-1]]
    first_of_class = np.sort(by_signature[opens])  # each run's first byte, in byte order
    byte_class = np.empty(256, dtype=np.int64)
    byte_class[by_signature] = np.searchsorted(first_of_class, by_signature[opens])[
        np.cumsum(opens) - 1]
    table = _table(source, byte_class[byte], target, states, len(first_of_class))
    if not ((table[source, byte_class[byte]] == target).all()
            and ((table != 0).sum(axis=0)[byte_class] == np.bincount(byte, minlength=256)).all()):
        byte_class, first_of_class = _classes_by_columns(source, byte, target, states)
        table = _table(source, byte_class[byte], target, states, len(first_of_class))
    return byte_class, first_of_class, table


_WEIGHTS = np.random.default_rng(0).random((2, 1 << 12)) + 0.5


def _edge_weights(states: int) -> np.ndarray:
    """Two random weights per state for ``class_table``'s sums (seeded: a build repeats; made
    once, and again twice as wide when an automaton has more states: a generator costs 50 us)."""
    global _WEIGHTS
    weights = _WEIGHTS
    if weights.shape[1] < states:
        weights = _WEIGHTS = np.random.default_rng(0).random(
            (2, 1 << (states - 1).bit_length())) + 0.5
    return weights[:, :states]


def _table(source: np.ndarray, column: np.ndarray, target: np.ndarray, states: int,
           columns: int) -> np.ndarray:
    table = np.zeros((states, columns), dtype=np.int32)
    table[source, column] = target
    return table


def _classes_by_columns(source: np.ndarray, byte: np.ndarray, target: np.ndarray,
                        states: int) -> tuple[np.ndarray, np.ndarray]:
    """``class_table``'s classes by comparing whole columns (slower, always exact)."""
    by_byte = np.zeros((256, states), dtype=np.int64)
    by_byte[byte, source] = target
    classes: dict[bytes, int] = {}
    byte_class = np.fromiter((classes.setdefault(column.tobytes(), len(classes))
                              for column in by_byte), np.int64, 256)
    return byte_class, np.unique(byte_class, return_index=True)[1]


def implied_distances(table: np.ndarray, is_final: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """What each state's distance to acceptance is, given ``distance`` for its successors: 0 at
    an accepting state, else one more than its nearest successor's (``UNREACHABLE`` with none).
    Breadth-first distances are the one ``distance`` this returns unchanged."""
    if distance.min(initial=0) < 0:
        return np.full_like(distance, -1)
    nearest = distance[table].min(axis=1, initial=UNREACHABLE)
    after = np.where(nearest < UNREACHABLE, nearest.astype(np.int64) + 1, UNREACHABLE)
    implied = np.where(is_final, 0, after).astype(np.int32)
    implied[0] = UNREACHABLE  # the dead state
    return implied


def column_edges(table: np.ndarray, columns=None) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) of every live transition through ``columns`` of ``table`` (all by default)."""
    sub = table if columns is None else table[:, columns]
    source = np.repeat(np.arange(len(table), dtype=np.int64), sub.shape[1])
    target = sub.reshape(-1).astype(np.int64)
    keep = target != 0
    return source[keep], target[keep]


def concatenated_ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``arange(start, start + size)`` for each pair, joined in one array, without a loop."""
    sizes = np.asarray(sizes, np.int64)
    index = np.repeat(np.asarray(starts, np.int64) - (np.cumsum(sizes) - sizes), sizes)
    return index + np.arange(len(index))


#: Below this many states ``distances_to_accept`` searches over Python lists: a numpy level
#: costs a few calls however small it is, and a small automaton's search is mostly levels of
#: one to three states (2-3x faster at 100-1,000 states on the dev schemas' automata; numpy
#: wins from a few thousand on).
LIST_SEARCH_STATES = 1_000


def distances_to_accept(is_final: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Fewest edges from each state to an accepting state over the edges ``source -> target``,
    breadth-first backwards; dead ends are ``UNREACHABLE``. Below ``LIST_SEARCH_STATES``
    states the search goes a state at a time over lists; above, a level is a few numpy calls,
    so a long chain of single states (a key's literal bytes) is stepped state by state. An edge
    through several byte classes is kept once, so one state's predecessors are distinct."""
    n = len(is_final)
    key = target * n + source
    order = np.argsort(key)
    key = key[order]
    distinct = np.ones(len(key), dtype=bool)
    distinct[1:] = key[1:] != key[:-1]
    predecessors = source[order][distinct]
    starts = np.searchsorted(target[order][distinct], np.arange(n + 1))
    frontier = np.flatnonzero(is_final)
    frontier = frontier[frontier != 0]
    if n < LIST_SEARCH_STATES:
        return _search_lists(n, predecessors.tolist(), starts.tolist(), frontier.tolist())
    distance = np.full(n, UNREACHABLE, dtype=np.int32)
    distance[frontier] = 0
    depth = 0
    last_seen = np.zeros(n, dtype=np.int64)  # dedupes a level without sorting it
    while frontier.size:
        depth += 1
        if frontier.size == 1:  # one state: its predecessors, each once
            state = frontier.item()
            found = predecessors[starts.item(state):starts.item(state + 1)]
            found = found[distance[found] == UNREACHABLE]
            distance[found] = depth
            frontier = found
            continue
        lengths = starts[frontier + 1] - starts[frontier]
        if not lengths.sum():
            break
        found = predecessors[concatenated_ranges(starts[frontier], lengths)]
        found = found[distance[found] == UNREACHABLE]
        distance[found] = depth
        where = np.arange(len(found))
        last_seen[found] = where
        frontier = found[last_seen[found] == where]  # each state once
    return distance


def _search_lists(n: int, predecessors: list[int], starts: list[int],
                  frontier: list[int]) -> np.ndarray:
    """``distances_to_accept``'s search for a small automaton, a state at a time."""
    distance = [UNREACHABLE] * n
    for state in frontier:
        distance[state] = 0
    depth = 0
    while frontier:
        depth += 1
        found = []
        for state in frontier:
            for before in predecessors[starts[state]:starts[state + 1]]:
                if distance[before] == UNREACHABLE:
                    distance[before] = depth
                    found.append(before)
        frontier = found
    return np.array(distance, dtype=np.int32)


@dataclass(frozen=True, eq=False)
class ByteAutomaton:
    """The arrays of ``arrays_from_index``: immutable and shared by every constraint of a regex.

    ``counters`` (one row per counted string whose middle loops, ``splice_counted``): the
    looping copy's states ``start:stop``, the characters counted on entering it, the count past
    which a sequence moves to the string's real last copies, and where those begin. The table
    alone is exact in every state; only ``advance`` (which counts) knows when to move on."""

    table: np.ndarray  # int32 [states + 1, classes]; row 0 is the dead state
    byte_class: np.ndarray  # uint8 [256]
    is_final: np.ndarray  # bool [states + 1]
    initial: int
    counters: np.ndarray = field(default_factory=lambda: NO_COUNTERS)  # int64 [loops, 5]
    #: int32 [states + 1]: fewest bytes from each state to acceptance (``UNREACHABLE``: none)
    byte_distance: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, arrays: dict, *, check: bool = True) -> "ByteAutomaton":
        """The automaton of ``arrays``, checked: a ``ValueError`` names arrays that do not form
        one. ``byte_distance`` is computed where absent, and where given must be the distances
        the table implies (zero at accepting states, one more than the nearest successor's
        elsewhere), so that no file can make the budget rule count wrong. ``check=False`` is
        for arrays this process has just built and searched itself (the checks read the whole
        table: about 0.1 ms of a 2 ms build)."""
        table = np.asarray(arrays["table"])
        byte_class = np.asarray(arrays["byte_class"])
        is_final = np.asarray(arrays["is_final"])
        initial = int(arrays["initial"])
        counters = np.asarray(arrays.get("counters", NO_COUNTERS))
        given = arrays.get("byte_distance")
        if not check and given is not None:
            return cls(table, byte_class, is_final, initial, counters, np.asarray(given))
        if (table.ndim != 2 or table.dtype != np.int32 or byte_class.shape != (256,)
                or byte_class.dtype != np.uint8 or is_final.shape != (len(table),)
                or is_final.dtype != bool or not 0 < initial < len(table)
                or (len(table) and (table.min() < 0 or table.max() >= len(table)))
                or int(byte_class.max()) >= table.shape[1]
                or counters.dtype != np.int64 or counters.ndim != 2 or counters.shape[1] != 5):
            raise ValueError("the arrays do not form a byte automaton")
        start, stop, entry, switch, last = counters.T
        width = stop - start
        if len(counters) and not ((0 < start).all() and (start < stop).all()
                                  and (stop[:-1] <= start[1:]).all()  # in order, apart
                                  and (0 <= entry).all() and (entry <= switch).all()
                                  and (0 < last).all()
                                  and (last + (2 * COUNTER_LOOKAHEAD) * width < len(table)).all()):
            raise ValueError("the arrays do not form a byte automaton")
        if given is None:
            byte_distance = table_distances(table, is_final)
        else:
            byte_distance = np.asarray(given)
            if (byte_distance.dtype != np.int32 or byte_distance.shape != (len(table),)
                    or not np.array_equal(byte_distance, implied_distances(table, is_final,
                                                                          byte_distance))):
                raise ValueError("the byte distances are not the automaton's")
        return cls(table, byte_class, is_final, initial, counters, byte_distance)

    @property
    def num_states(self) -> int:
        return len(self.table) - 1

    def step(self, state: int, data: bytes) -> int:
        """The state after ``data`` (0 once any byte is refused), by the table alone: exact from
        any state as far as ``COUNTER_LOOKAHEAD`` characters into a counted string's loop;
        ``advance`` counts them."""
        table, byte_class = self.table, self.byte_class
        for value in data:
            state = table.item(state, byte_class.item(value))
            if not state:
                return 0
        return state

    def advance(self, state: int, count: int, data: bytes) -> tuple[int, int]:
        """(the state after ``data``, the characters counted in a counted string's loop): each
        return to a loop's start counts one more character, an entry from outside starts at the
        loop's entry count, and past its switch count the sequence moves to the same count in
        the string's last copies, where the table alone is exact to the string's end."""
        if not len(self.counters):
            return self.step(state, data), 0
        table, byte_class, rows, counters = self.table, self.byte_class, self._loop_rows, self.counters
        loop = rows.item(state)
        for value in data:
            following = table.item(state, byte_class.item(value))
            if not following:
                return 0, 0
            now = rows.item(following)
            if now >= 0 and following == counters.item(now, 0):  # a character is complete
                count = count + 1 if now == loop else counters.item(now, 2)
                if count > counters.item(now, 3):  # on to the last copies, exact to the end
                    following = counters.item(now, 4) + (count - counters.item(now, 3)) * (
                        counters.item(now, 1) - counters.item(now, 0))
                    now = -1
            state, loop = following, now
        return state, count if loop >= 0 else 0

    @functools.cached_property
    def _loop_rows(self) -> np.ndarray:
        """Per state, the ``counters`` row whose loop holds it (-1: none)."""
        rows = np.full(len(self.table), -1, np.int32)
        for row, (start, stop) in enumerate(self.counters[:, :2].tolist()):
            rows[start:stop] = row
        return rows

    def accepts(self, data: bytes) -> bool:
        """Whether ``data`` is a whole text of the language (counting characters in loops)."""
        state, _ = self.advance(self.initial, 0, data)
        return bool(state) and bool(self.is_final[state])

    def distances(self, single_bytes: np.ndarray, tokens: list[bytes] = ()) -> np.ndarray:
        """Fewest tokens from each state to acceptance, counting the single-byte tokens
        (``single_bytes``, bool [256], says which bytes are tokens of their own) and ``tokens``
        (multi-byte ones, stepped from every state): a sound budget bound, since each counted
        path is a token path, and an exact one in bytes for a byte-level tokenizer."""
        columns = np.zeros(self.table.shape[1], dtype=bool)
        columns[self.byte_class[np.asarray(single_bytes, dtype=bool)]] = True
        sources, targets = column_edges(self.table, np.flatnonzero(columns))
        sources, targets = [sources], [targets]
        every = np.arange(len(self.table), dtype=np.int64)
        for data in tokens:
            current = every
            for value in data:
                current = self.table[current, self.byte_class[value]]
            live = current != 0
            sources.append(every[live])
            targets.append(current[live].astype(np.int64))
        return distances_to_accept(self.is_final, np.concatenate(sources), np.concatenate(targets))

    def first_difference(self, other: "ByteAutomaton", distances: bool = True) -> str | None:
        """None where the two automata agree on every input from their starts (acceptance,
        which bytes lead on and, with ``distances``, the distance to acceptance), else the first
        disagreement found and the input that reaches it. What tests and
        ``benchmarks/determinize.py`` check two builds of one regex with."""
        steps, other_steps = self.table[:, self.byte_class], other.table[:, other.byte_class]
        seen = {(self.initial, other.initial)}
        todo = [(self.initial, other.initial, b"")]
        while todo:
            x, y, path = todo.pop()
            if self.is_final[x] != other.is_final[y]:
                return f"acceptance after {path!r}"
            if distances and self.byte_distance[x] != other.byte_distance[y]:
                return f"distance after {path!r}"
            differ = np.flatnonzero((steps[x] == 0) != (other_steps[y] == 0))
            if len(differ):
                return f"byte {int(differ[0])} after {path!r}"
            for byte in np.flatnonzero(steps[x]).tolist():
                pair = (int(steps[x, byte]), int(other_steps[y, byte]))
                if pair not in seen:
                    seen.add(pair)
                    todo.append((*pair, path + bytes([byte])))
        return None

    def shortest_completion(self, distance: np.ndarray, state: int, limit: int = 4096) -> bytes:
        """The bytes of one shortest path from ``state`` to acceptance under single-byte
        ``distance`` (smallest byte first), at most ``limit`` of them."""
        written = bytearray()
        while not self.is_final[state] and len(written) < limit and distance[state] < UNREACHABLE:
            following = self.table[state][self.byte_class]
            steps = np.flatnonzero((following != 0) & (distance[following] == distance[state] - 1))
            written.append(int(steps[0]))
            state = int(following[steps[0]])
        return bytes(written)


QUOTE = ord('"')
#: The largest table (states × byte classes) a splice may write: 64 MiB of int32 (Snowplow
#: sp_119's strings of 64 to 256 characters in 76 places take 60 MiB; its plain build, 676k
#: states, took 27 s and twice the memory).
MAX_SPLICED_CELLS = 1 << 24


def splice_counted(arrays: dict, kinds: dict[int, tuple], char: dict,
                   max_cells: int = MAX_SPLICED_CELLS,
                   distances: Callable[[np.ndarray, np.ndarray], np.ndarray] = table_distances,
                   ) -> dict | None:
    """``arrays`` (an automaton built with placeholder bytes, ``counted.with_placeholders``)
    with each placeholder transition replaced by its counted string ({byte: (fewest, most)}),
    made of copies of ``char`` (the automaton of one JSON string character): copy ``i`` is the
    ``i``-th character, its final state the start of copy ``i + 1``, and the closing quote
    leaves from every copy's start at or past ``fewest``. A string far longer than a token can
    reach (``_loops``) gets its first ``fewest`` copies, one copy that loops, and its last
    ``2 * COUNTER_LOOKAHEAD`` copies, with a ``counters`` row that says when a sequence moves
    from the loop to them (``ByteAutomaton.advance``): 1,024 characters or 32,767 cost the same
    rows. None where a state that opens a counted string also starts something else with
    ``"`` (it would not be deterministic) or
    ``char`` is not a one-character automaton, or where the table would pass ``max_cells``
    (then the plain build, bounded by the compile's time and memory, decides). ``distances``
    (table, is_final -> distances) searches the result once: it finds the dead ends and is the
    result's ``byte_distance`` (a chain of 2,000 characters is thousands of breadth-first levels,
    each a few numpy calls in ``table_distances``: pass the compiled search where it is loaded)."""
    table, byte_class = arrays["table"], arrays["byte_class"]
    char_table, char_class = char["table"], char["byte_class"]
    char_final = np.flatnonzero(char["is_final"])
    char_initial = int(char["initial"])
    if len(char_final) != 1 or char_table[char_final[0]].any() or (char_table == char_initial).any():
        return None  # not the one-character shape copies can be chained from
    # the new byte classes: each byte's (outer class, character class); the quote and the
    # placeholders get classes of their own (the quote closes a string, a placeholder is dead)
    keys = byte_class.astype(np.int64) * 256 + char_class
    keys[QUOTE] = -1
    keys[list(kinds)] = -2
    _, first, new_class = np.unique(keys, return_index=True, return_inverse=True)
    quote_class, dead_class = new_class[QUOTE], new_class[next(iter(kinds))]
    outer = table[:, byte_class[first]]
    outer[:, dead_class] = 0
    opens = {byte: np.flatnonzero(table[:, byte_class[byte]]) for byte in kinds}
    openers = np.concatenate(list(opens.values()))
    if len(np.unique(openers)) != len(openers) or outer[openers, quote_class].any():
        return None
    # per placeholder: the states its strings close into, and which of them each opener's is
    targets, closes_into = {}, {}
    for byte in kinds:
        targets[byte], closes_into[byte] = np.unique(table[opens[byte], byte_class[byte]],
                                                     return_inverse=True)
    width = len(char_table) - 2  # a character's states but the dead and the final one
    added = sum(len(targets[byte]) * _chain_rows(width, fewest, most)
                for byte, (fewest, most) in kinds.items())
    if (len(outer) + added) * outer.shape[1] > max_cells:
        return None
    # One int32 table, written in place: the outer automaton's rows, then each string's chain
    # (a concatenation of int64 blocks cost more than the rest, most of it fresh memory).
    spliced = np.empty((len(outer) + added, outer.shape[1]), np.int32)
    spliced[:len(outer)] = outer
    next_state = len(outer)
    # one character's states but the final one, the initial first; the final becomes -1
    inner = [char_initial] + [s for s in range(1, len(char_table))
                              if s not in (char_initial, char_final[0])]
    local = np.full(len(char_table), -2, np.int32)  # -2: dead
    local[inner] = np.arange(len(inner))
    local[char_final[0]] = -1
    # [inner, new classes]; at a character's start the quote closes the string (``_chain``), inside
    # one it may be escaped (``\"``)
    steps = local[char_table[inner][:, char_class[first]]]
    counters = []
    for byte, (fewest, most) in kinds.items():
        for i, target in enumerate(targets[byte]):
            spliced[opens[byte][closes_into[byte] == i], quote_class] = next_state
            if _loops(fewest, most):
                # the first ``fewest`` characters, then one copy that loops (counted), then
                # the last ``2 * COUNTER_LOOKAHEAD`` counts, which ``advance`` moves on to
                tail_start = next_state + _chain(spliced, steps, fewest, None, next_state,
                                                 int(target), quote_class)
                loop_start = next_state + fewest * width
                counters.append((loop_start, loop_start + width, fewest,
                                 most - 2 * COUNTER_LOOKAHEAD, tail_start))
                next_state = tail_start + _chain(spliced, steps, 0, 2 * COUNTER_LOOKAHEAD,
                                                 tail_start, int(target), quote_class)
            else:
                next_state += _chain(spliced, steps, fewest, most, next_state, int(target),
                                     quote_class)
    is_final = np.zeros(len(spliced), dtype=bool)
    is_final[:len(outer)] = arrays["is_final"]
    # Dropping the transitions into dead ends changes no distance: none of them led to acceptance.
    distance = distances(spliced, is_final)
    dead = distance == UNREACHABLE
    dead[0] = False
    if dead.any():
        spliced[dead[spliced]] = 0
    return {"table": spliced, "byte_class": new_class.astype(np.uint8), "is_final": is_final,
            "initial": arrays["initial"],
            "counters": np.array(counters, np.int64).reshape(-1, 5), "byte_distance": distance}


def _loops(fewest: int, most: int | None) -> bool:
    """Whether a counted string's middle is one looping copy and a counter: where that is
    smaller than a copy per count, and every token (at most ``COUNTER_LOOKAHEAD`` characters)
    entering it at ``fewest`` still ends before the last copies' end."""
    return most is not None and most > fewest + 2 * COUNTER_LOOKAHEAD + 1


def _chain_rows(width: int, fewest: int, most: int | None) -> int:
    """The rows ``splice_counted`` writes for one counted string (``_chain``'s, exactly)."""
    if _loops(fewest, most):
        return (fewest + 1) * width + 2 * COUNTER_LOOKAHEAD * width + 1
    if most is None:
        return (fewest + 1) * width
    return most * width + 1


def _chain(table: np.ndarray, steps: np.ndarray, fewest: int, most: int | None, start: int,
           target: int, quote_class: int) -> int:
    """Write into ``table``, from row ``start``, the rows of one counted string whose closing
    quote leads to ``target``: a copy of the character's states (``steps``: -1 the character is
    complete, -2 dead) per count, then (bounded) one state at ``most``, which only closes. The
    number of rows written."""
    width, classes = steps.shape
    copies = most if most is not None else fewest + 1
    index = np.arange(copies, dtype=np.int32)[:, None, None]
    base = start + index * width
    after = base + width  # the next copy's start (the final character state)
    if most is None:  # the last copy loops onto itself
        after[-1] = base[-1]
    block = table[start:start + copies * width].reshape(copies, width, classes)
    np.copyto(block, np.where(steps[None] == -1, after, 0))
    np.add(base, steps[None], out=block, where=steps[None] >= 0)
    block[:, 0, quote_class] = np.where(np.arange(copies) >= fewest, target, 0)
    if most is None:
        return copies * width
    last = table[start + copies * width]  # after ``most`` characters: only the closing quote
    last[:] = 0
    last[quote_class] = target
    return copies * width + 1
