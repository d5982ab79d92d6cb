"""The walker's two hot loops compiled by numba: a state's tokens stepped one byte at a time.

In numpy a walk is tens of array calls of a few microseconds each, whatever the number of
tokens; a compiled loop steps each surviving token's bytes at about a nanosecond a byte and stops
at its first dead byte. On the 11,081 first visits of structural states replayed twice in
``benchmarks/compiled_walks.py`` (232 MaskBench dev schemas, Llama-3 tokenizer), ``walk_parts``
took p50 260 -> 55 µs, p99 1,174 -> 557 µs.

Importing this module imports numba and compiles the loops for their signatures (1.5-2.5 s here,
numba's import included). numba keeps the machine code in its cache, next to this file or in the
user's cache folder, and a later process loads it in about 0.5 s, numba's import included.
``compiled_loops.CompiledLoops`` does that in a background thread, and the walker uses numpy until
it is done.

Both loops take the automaton's table as one row after another (a state's row starts at the
state times the width) and write the allowed tokens' ids and next states into
``out_ids``/``out_next``, returning how many.
"""

from __future__ import annotations

import numba
import numpy as np

# The table is read, never written: a read-only one (an automaton loaded from the disk cache)
# is stepped in place, and a writable one converts to the read-only type.
_TABLES = [numba.types.Array(dtype, 1, "C", readonly=True) for dtype in (numba.int32, numba.int64)]
_BYTES, _INDEX = numba.uint8[::1], numba.int64[::1]
_PAIRS = [numba.int64(table, numba.int64, _BYTES, numba.int64, _BYTES, *[_INDEX] * 7)
          for table in _TABLES]
_RESTS = [numba.int64(table, numba.int64, _BYTES, numba.int64, _BYTES, *[_INDEX] * 9)
          for table in _TABLES]


@numba.njit(_PAIRS, cache=True, nogil=True)
def walk_pairs(table, width, byte_class, row, flat, starts, lengths, ids, by_pair, pair_start,
               out_ids, out_next):  # pragma: no cover (compiled; tests compare it with numpy)
    """The tokens the state whose row starts at ``row`` takes: for each first byte it
    takes and each second byte the state after it takes, the tokens of that byte pair
    (``by_pair[pair_start[p]:pair_start[p + 1]]``, positions into ``flat``/``starts``/
    ``lengths``/``ids``; pair ``first * 257 + 256`` holds the one-byte tokens) are stepped from
    their third byte on."""
    found = 0
    for first in range(256):
        after_first = table[row + byte_class[first]]
        if after_first == 0:
            continue
        pair = first * 257 + 256
        for k in range(pair_start[pair], pair_start[pair + 1]):
            out_ids[found] = ids[by_pair[k]]
            out_next[found] = after_first
            found += 1
        for second in range(256):
            after_second = table[after_first * width + byte_class[second]]
            if after_second == 0:
                continue
            pair = first * 257 + second
            for k in range(pair_start[pair], pair_start[pair + 1]):
                position = by_pair[k]
                state = after_second
                start = starts[position]
                for i in range(2, lengths[position]):
                    state = table[state * width + byte_class[flat[start + i]]]
                    if state == 0:
                        break
                if state != 0:
                    out_ids[found] = ids[position]
                    out_next[found] = state
                    found += 1
    return found


@numba.njit(_RESTS, cache=True, nogil=True)
def walk_rests(table, width, byte_class, row, flat, starts, lengths, ids, places, leaves,
               by_first, first_start, out_ids, out_next):  # pragma: no cover (compiled)
    """A string split's outside tokens (``Rests``) whose first byte the state whose row starts
    at ``row`` takes (``by_first[first_start[b]:first_start[b + 1]]``: those starting with byte
    ``b``): token ``k`` starts at the run's place ``leaves[k]`` (``places``: the run's states)
    and steps its rest, the ``lengths[k]`` bytes at
    ``flat[starts[k]:]``; one without a rest ends at its place."""
    found = 0
    for first in range(256):
        if table[row + byte_class[first]] == 0:
            continue
        for j in range(first_start[first], first_start[first + 1]):
            k = by_first[j]
            state = places[leaves[k]]
            start = starts[k]
            for i in range(lengths[k]):
                if state == 0:
                    break
                state = table[state * width + byte_class[flat[start + i]]]
            if state != 0:
                out_ids[found] = ids[k]
                out_next[found] = state
                found += 1
    return found


@numba.njit(numba.void(numba.int64[::1], numba.uint32[::1]), cache=True, nogil=True)
def set_bits(ids, words):  # pragma: no cover (compiled; the masks' tests read what it sets)
    """Set bit ``i % 32`` of ``words[i // 32]`` for each token id ``i`` of ``ids``: a walk's
    tokens packed as a bitmask, without a boolean array the vocabulary's length."""
    for token in ids:
        words[token >> 5] |= np.uint32(1) << np.uint32(token & 31)


def warm_up() -> None:
    """Call each loop once on empty arrays, for both table types: numba's first call of a
    loaded function costs 10-20 ms more (measured here), which the loading thread pays instead
    of a first mask."""
    index, classes = np.zeros(1, np.int64), np.zeros(256, np.uint8)
    first_starts, pair_starts = np.zeros(257, np.int64), np.zeros(256 * 257 + 1, np.int64)
    for table in (np.zeros(1, np.int32), np.zeros(1, np.int64)):
        walk_pairs(table, 1, classes, 0, classes, index, index, index, index, pair_starts,
                   index.copy(), index.copy())
        walk_rests(table, 1, classes, 0, classes, index, index, index, index, index, index,
                   first_starts, index.copy(), index.copy())
    set_bits(index, np.zeros(1, np.uint32))
