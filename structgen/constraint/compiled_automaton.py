"""The byte automaton's compiled loops (numba): subset construction over a ``RegexNFA``, pruning
the result to the states that can still accept, and distances to acceptance over a whole table.

``determinize`` is the textbook subset construction over the NFA's byte columns: a DFA state
is the sorted set of byte-set and final NFA states its epsilon closure holds, found again through
an open-addressing hash table. It stops, with a status instead of a table, past ``max_states``
states, ``max_work`` member visits or ``max_work / 16`` members stored, so a regex that would
blow up costs a bounded moment of the calling thread (the caller then hands it to the compile
worker, which can be killed). The loops release the GIL.

``compiled_loops.CompiledLoops`` imports this module in its loading thread, with the walks'.
"""

from __future__ import annotations

import numba
import numpy as np

from structgen.constraint.compiled_regex import (  # noqa: F401 (the NFA's, offered here too)
    FNV_OFFSET,
    MAX_NFA_STATES,
    NFA_BUILT,
    NFA_TOO_LARGE,
    fnv_span,
    fnv_step,
    grown,
    thompson,
)

#: ``determinize``'s status: a table; too many states; too much work.
BUILT, TOO_MANY_STATES, TOO_MUCH_WORK = 0, 1, 2

_DETERMINIZE = ("Tuple((int64, int32[:, ::1], boolean[::1]))(int8[::1], int32[::1], int32[::1], "
                "int64, int64[::1], int32[::1], int64, int64, int64)")
_DISTANCES = "int32[::1](int32[:, ::1], boolean[::1], int32)"
_COLUMNS = ("Tuple((int64[::1], int64[::1], int32[::1], int64))"
            "(int64[::1], int64[::1], int64[::1], int64, int64[::1])")
_BYTE_CLASSES = "Tuple((uint8[::1], int64[::1]))(int64[::1], int64[::1])"
_REFINE = "Tuple((int64[::1], int64[::1]))(int64[::1], int64[:, ::1], int64[::1])"
_SPLICE = ("Tuple((boolean, int32[:, ::1], boolean[::1], int64))(int32[:, ::1], boolean[::1], "
           "int64, int64, int32[:, ::1], int64[::1], int64[::1], boolean[::1], int64)")
_PRUNE = ("Tuple((int32[:, ::1], boolean[::1], int32[::1], int64[::1], int64[::1]))"
          "(int32[:, ::1], boolean[::1], int32)")
# (the code points are read from the regex's encoded bytes in place: a read-only array)
_GROUP_SPANS = numba.types.Tuple((numba.int64[::1], numba.int64[::1]))(
    numba.types.Array(numba.uint32, 1, "C", readonly=True), numba.int64, numba.int64[::1])


@numba.njit(cache=True, nogil=True)
def _equal_columns(matrix, a, b):  # pragma: no cover (compiled)
    """Whether columns ``a`` and ``b`` of ``matrix`` hold the same values."""
    for row in range(matrix.shape[0]):
        if matrix[row, a] != matrix[row, b]:
            return False
    return True


@numba.njit(_COLUMNS, cache=True, nogil=True)
def byte_columns(range_set, low, high, sets, alone):  # pragma: no cover (compiled)
    """(each byte's column, the columns each set takes, set after set: ``set_start``,
    ``set_columns``; how many columns) of ``sets`` byte sets given as ranges: set
    ``range_set[i]`` takes the bytes ``low[i]..high[i]`` (a ``RegexNFA``'s). Bytes that every
    set takes or leaves alike share a column, wherever they lie (a JSON skeleton's literals
    leave most of the bytes between them alike: about half the columns of contiguous
    intervals); each byte in ``alone`` has a column of its own."""
    member = np.zeros((max(sets, 1), 256), np.bool_)
    for i in range(len(range_set)):
        member[range_set[i], low[i]:high[i] + 1] = True
    column = np.full(256, -1, np.int64)
    for byte in alone:
        column[byte] = -2  # numbered below, alone
    first = np.empty(256, np.int64)  # each column's first byte
    hashes = np.empty(256, np.uint64)
    columns = 0
    for byte in range(256):
        if column[byte] == -2:
            column[byte] = columns
            first[columns], hashes[columns] = byte, 0
            columns += 1
            continue
        value = FNV_OFFSET
        for s in range(sets):
            if member[s, byte]:
                value = fnv_step(value, s)
        for k in range(columns):
            if hashes[k] != value or first[k] in alone:
                continue
            if _equal_columns(member, byte, first[k]):
                column[byte] = k
                break
        if column[byte] == -1:
            column[byte] = columns
            first[columns], hashes[columns] = byte, value
            columns += 1
    set_start = np.zeros(sets + 1, np.int64)
    for s in range(sets):
        taken = 0
        for k in range(columns):
            taken += member[s, first[k]]
        set_start[s + 1] = set_start[s] + taken
    set_columns = np.empty(set_start[sets], np.int32)
    for s in range(sets):
        at = set_start[s]
        for k in range(columns):
            if member[s, first[k]]:
                set_columns[at] = k
                at += 1
    return column, set_start, set_columns, columns


@numba.njit(_BYTE_CLASSES, cache=True, nogil=True)
def byte_classes(byte_column, column_class):  # pragma: no cover (compiled)
    """(each byte's class, numbered in order of first byte; the column that stands for each
    class) of a table whose columns are read through ``byte_column`` and whose equal columns
    share a ``column_class`` (``prune``'s)."""
    byte_class = np.empty(256, np.uint8)
    number = np.full(len(column_class), -1, np.int64)  # column class -> byte class
    columns = np.empty(256, np.int64)
    classes = 0
    for byte in range(256):
        k = column_class[byte_column[byte]]
        if number[k] == -1:
            number[k] = classes
            columns[classes] = byte_column[byte]
            classes += 1
        byte_class[byte] = number[k]
    return byte_class, columns[:classes].copy()


@numba.njit(cache=True, nogil=True)
def _renumbered(keys):  # pragma: no cover (compiled)
    """Each key's rank among the distinct keys (``np.unique``'s inverse), and the first
    position of each distinct key (its index)."""
    order = np.argsort(keys, kind="mergesort")
    rank = np.empty(len(keys), np.int64)
    first = np.empty(len(keys), np.int64)
    distinct = -1
    for i in range(len(order)):
        if i == 0 or keys[order[i]] != keys[order[i - 1]]:
            distinct += 1
            first[distinct] = order[i]
        rank[order[i]] = distinct
    return rank, first[:distinct + 1].copy()


@numba.njit(_REFINE, cache=True, nogil=True)
def refine_classes(byte_class, group_classes, placeholders):  # pragma: no cover (compiled)
    """(each byte's class in the coarsest partition finer than ``byte_class`` and every row of
    ``group_classes``, each placeholder byte a class of its own, numbered last; the first byte
    of each class): ``repeated.Splices``' classes, numbered as its numpy reading numbers them."""
    refined = byte_class.copy()
    for g in range(group_classes.shape[0]):
        refined, _ = _renumbered(refined * 256 + group_classes[g])
    top = refined.max()
    for i in range(len(placeholders)):
        refined[placeholders[i]] = top + 1 + i
    return _renumbered(refined)


@numba.njit(_SPLICE, cache=True, nogil=True)
def splice(table, is_final, rows, column, group_table, group_columns, placeholder_columns,
           group_final, group_start):  # pragma: no cover (compiled)
    """``repeated.Splices.splice`` in one pass: each transition on the placeholder ``column``
    of ``table[:rows]`` replaced by a copy of the group (``group_table``, its columns read
    through ``group_columns``) per target state; (False, ...) where the result would not be
    deterministic, else (True, the table and finality, grown where needed, their rows)."""
    states, classes = group_table.shape[0], table.shape[1]
    if group_final[group_start]:
        return False, table, is_final, rows  # an empty group: its entry would be an empty step
    inner = np.empty((states, classes), np.int32)
    for s in range(states):
        for c in range(classes):
            inner[s, c] = group_table[s, group_columns[c]]
        for c in placeholder_columns:
            inner[s, c] = 0
    # accepting states the group cannot go on from close it (they are the target itself);
    # the others are copied, and those that accept take on the target's transitions
    leaving = np.zeros(classes, np.bool_)
    index = np.full(states, -1, np.int64)  # a copied state's row within its copy
    kept = 0
    for s in range(1, states):
        goes_on = not group_final[s]
        if group_final[s]:
            for c in range(classes):
                if inner[s, c] != 0:
                    leaving[c] = True
                    goes_on = True
        if goes_on:
            index[s] = kept
            kept += 1
    # the rows with a placeholder step, found in one pass down the column (a large table's
    # column is a cache miss a row: each later pass goes over these rows only)
    sources = np.empty(rows, np.int64)
    found = 0
    for r in range(rows):
        if table[r, column] != 0:
            sources[found] = r
            found += 1
    sources = sources[:found]
    leads_to = np.empty(found, np.int64)
    for i in range(found):
        leads_to[i] = table[sources[i], column]
    targets = np.unique(leads_to)  # in order, as the numpy reading has them
    count = len(targets)
    needed = rows + count * kept
    if needed >= 2147483647:
        return False, table, is_final, rows
    if needed > table.shape[0]:
        size = max(needed, 2 * table.shape[0])
        grown_table = np.empty((size, classes), np.int32)
        grown_table[:rows] = table[:rows]
        grown_final = np.zeros(size, np.bool_)
        grown_final[:rows] = is_final[:rows]
        table, is_final = grown_table, grown_final
    for r in sources:
        for c in range(classes):
            if inner[group_start, c] != 0 and table[r, c] != 0:
                return False, table, is_final, rows
    for i in range(found):
        r, t = sources[i], leads_to[i]
        table[r, column] = 0
        base = rows + np.searchsorted(targets, t) * kept
        for c in range(classes):
            s = inner[group_start, c]
            if s != 0:
                table[r, c] = base + index[s] if index[s] >= 0 else t
    for i in range(count):  # (checked after the entries: a target may be a source too)
        for c in range(classes):
            if leaving[c] and table[targets[i], c] != 0:
                return False, table, is_final, rows
    for i in range(count):
        t, base = targets[i], rows + i * kept
        for s in range(1, states):
            if index[s] < 0:
                continue
            row = base + index[s]
            for c in range(classes):
                g = inner[s, c]
                table[row, c] = 0 if g == 0 else (base + index[g] if index[g] >= 0 else t)
            is_final[row] = group_final[s] and is_final[t]
            if group_final[s]:
                for c in range(classes):
                    if table[row, c] == 0:
                        table[row, c] = table[t, c]
    return True, table, is_final, needed


@numba.njit(cache=True, nogil=True)
def _closure(seeds, count, kind, arg, out, mark, generation, stack, found):  # pragma: no cover
    """The byte-set and final states epsilon-reachable from ``seeds[:count]``, sorted into
    ``found``; how many. ``mark[s] == generation`` marks a state seen in this closure."""
    top = 0
    for i in range(count):
        state = seeds[i]
        if mark[state] != generation:
            mark[state] = generation
            stack[top] = state
            top += 1
    size = 0
    while top:
        top -= 1
        state = stack[top]
        if kind[state] == 1:  # a split
            for target in (out[state], arg[state]):
                if mark[target] != generation:
                    mark[target] = generation
                    stack[top] = target
                    top += 1
        else:
            found[size] = state
            size += 1
    found[:size].sort()
    return size


@numba.njit(cache=True, nogil=True)
def _find(found, count, value, slots, hashes, size, first, members):  # pragma: no cover
    """(the DFA state whose members are ``found[:count]``, or -1; the slot it is or would be in)."""
    mask = np.uint64(len(slots) - 1)
    slot = value & mask
    while slots[slot] != -1:
        other = slots[slot]
        if hashes[other] == value and size[other] == count:
            equal = True
            for i in range(count):
                if members[first[other] + i] != found[i]:
                    equal = False
                    break
            if equal:
                return other, slot
        slot = (slot + np.uint64(1)) & mask
    return -1, slot


#: ``_subsets``' asks for room: the state it was reading is read again after.
_MORE_MOVES, _MORE_ROOM = 3, 4


@numba.njit(cache=True, nogil=True)
def _subsets(kind, arg, out, set_start, set_columns, columns, max_states, max_work, mark, stack,
             found, bucket_size, bucket_start, single, moves, members, first, size, hashes,
             final, table, slots, progress):  # pragma: no cover (compiled)
    """``determinize``'s subset construction, from the state after ``progress[0]`` on, in the
    arrays it is given: BUILT, a bound passed, or ``_MORE_MOVES`` / ``_MORE_ROOM`` with
    ``progress`` at the state before the one in hand and the room needed in ``progress[5]``
    (what that state wrote is written alike when it is read again). A state's moves are sorted
    into one bucket per column, member by member, so a member costs the columns its set
    takes, not all of them."""
    state, states, used, work, generation = (progress[0], progress[1], progress[2], progress[3],
                                             progress[4])
    while state + 1 < states:  # each state's transitions, in the order the states were found
        state += 1
        begin, end = first[state], first[state] + size[state]
        total = 0
        for i in range(begin, end):  # how many moves each column gets
            s = members[i]
            if kind[s] == 0:
                for j in range(set_start[arg[s]], set_start[arg[s] + 1]):
                    bucket_size[set_columns[j]] += 1
                total += set_start[arg[s] + 1] - set_start[arg[s]]
        if total > len(moves):
            bucket_size[:] = 0
            progress[0], progress[1], progress[2], progress[3], progress[4], progress[5] = \
                state - 1, states, used, work, generation, total
            return _MORE_MOVES
        work_before = work
        work += end - begin + total + columns
        if work > max_work:
            return TOO_MUCH_WORK
        place = 0
        for column in range(columns):
            bucket_start[column] = place
            place += bucket_size[column]
            bucket_size[column] = 0
        bucket_start[columns] = place
        for i in range(begin, end):  # each bucket in member order: equal sets, equal buckets
            s = members[i]
            if kind[s] == 0:
                for j in range(set_start[arg[s]], set_start[arg[s] + 1]):
                    column = set_columns[j]
                    moves[bucket_start[column] + bucket_size[column]] = out[s]
                    bucket_size[column] += 1
        last_start, last_count, last_target = 0, -1, 0
        for column in range(columns):
            count = bucket_size[column]
            bucket_size[column] = 0
            if count == 0:
                continue
            at = bucket_start[column]
            if count == 1 and single[moves[at]] != -1:
                target = single[moves[at]]
                table[state * columns + column] = target
                last_start, last_count, last_target = at, count, target
                continue
            if count == last_count:  # the moves of the last column with any: its target
                same = True
                for i in range(count):
                    if moves[at + i] != moves[last_start + i]:
                        same = False
                        break
                if same:
                    table[state * columns + column] = last_target
                    continue
            generation += 1
            closed = _closure(moves[at:at + count], count, kind, arg, out, mark, generation,
                              stack, found)
            value = fnv_span(found, 0, closed)
            target, slot = _find(found, closed, value, slots, hashes, size, first, members)
            if target == -1:
                if states >= max_states or used + closed > max_work // 16:
                    return TOO_MANY_STATES
                if states >= len(first) or used + closed > len(members):
                    bucket_size[:] = 0  # (the columns not read yet)
                    progress[0], progress[1], progress[2], progress[3], progress[4], \
                        progress[5] = state - 1, states, used, work_before, generation, \
                        used + closed
                    return _MORE_ROOM
                target = states  # a new state: its members stored, its slot taken
                states += 1
                members[used:used + closed] = found[:closed]
                first[target], size[target], hashes[target] = used, closed, value
                used += closed
                for i in range(closed):
                    if kind[found[i]] == 2:
                        final[target] = True
                slots[slot] = target
            table[state * columns + column] = target
            last_start, last_count, last_target = at, count, target
            if count == 1:
                single[moves[at]] = target
    progress[1] = states
    return BUILT


@numba.njit(_DETERMINIZE, cache=True, nogil=True)
def determinize(kind, arg, out, start, set_start, set_columns, columns, max_states,
                max_work):  # pragma: no cover (compiled)
    """(status, table[states, columns] with row 0 dead and row 1 the start, which rows are
    final) of the NFA ``kind``/``arg``/``out`` from ``start``; byte set ``b`` takes the byte
    columns ``set_columns[set_start[b]:set_start[b + 1]]`` (``byte_columns``).
    ``_subsets`` finds the states; its arrays are grown here, between its runs, never inside
    its loop (an array reassigned in a numba loop slows every pass of it: a third of the
    work on the largest regexes)."""
    n = len(kind)
    empty = np.zeros((0, columns), np.int32)
    mark = np.zeros(n, np.int64)
    stack = np.empty(n, np.int32)
    found = np.empty(n, np.int32)
    bucket_size = np.zeros(columns + 1, np.int64)
    bucket_start = np.zeros(columns + 1, np.int64)
    moves = np.empty(64, np.int32)  # a state's moves, bucket after bucket
    members = np.empty(max(1024, n), np.int32)  # every DFA state's NFA states, in a row
    first = np.zeros(64, np.int64)  # DFA state -> where its members start in ``members``
    size = np.zeros(64, np.int64)
    hashes = np.zeros(64, np.uint64)
    final = np.zeros(64, np.bool_)
    table = np.zeros(64 * columns, np.int32)
    slots = np.full(128, -1, np.int64)  # open addressing: hash -> DFA state, at most half full
    # NFA state -> the DFA state of its closure, once found: a column whose one move is that
    # state goes there without a closure (most moves are one state, most to a state seen)
    single = np.full(n, -1, np.int32)
    found[0] = start
    count = _closure(found, 1, kind, arg, out, mark, 1, stack, found)
    value = fnv_span(found, 0, count)  # the start is state 1 (the arrays have room for it)
    members[:count] = found[:count]
    first[1], size[1], hashes[1] = 0, count, value
    for i in range(count):
        if kind[found[i]] == 2:
            final[1] = True
    slots[value & np.uint64(len(slots) - 1)] = 1
    # the last state read, states found, members stored, work, the closures' generation; the
    # room asked for: row 0 is the dead state, row 1 the start
    progress = np.array([0, 2, count, 0, 1, 0], np.int64)
    while True:
        status = _subsets(kind, arg, out, set_start, set_columns, columns, max_states, max_work,
                          mark, stack, found, bucket_size, bucket_start, single, moves, members,
                          first, size, hashes, final, table, slots, progress)
        if status == _MORE_MOVES:
            moves = grown(moves, progress[5])
        elif status == _MORE_ROOM:
            states = progress[1]
            if progress[5] > len(members):
                members = grown(members, progress[5])
            if states >= len(first):
                first, size = grown(first, states + 1), grown(size, states + 1)
                hashes, final = grown(hashes, states + 1), grown(final, states + 1)
                table = grown(table, len(first) * columns)
                slots = np.full(2 * len(slots), -1, np.int64)
                mask = np.uint64(len(slots) - 1)
                for other in range(1, states):
                    slot = hashes[other] & mask
                    while slots[slot] != -1:
                        slot = (slot + np.uint64(1)) & mask
                    slots[slot] = other
        elif status != BUILT:
            return status, empty, final[:0]
        else:
            states = progress[1]
            return BUILT, table[:states * columns].reshape(states, columns).copy(), \
                final[:states].copy()


@numba.njit(cache=True, nogil=True)
def _distances(table, final, unreachable):  # pragma: no cover (compiled)
    """Each state's fewest bytes to a final state (breadth-first over the reversed edges);
    ``unreachable`` where there is none. Row 0, the dead state, is never final."""
    states, intervals = table.shape
    start = np.zeros(states + 1, np.int64)  # predecessors, grouped by target
    for s in range(states):
        for c in range(intervals):
            if table[s, c] != 0:
                start[table[s, c] + 1] += 1
    for s in range(states):
        start[s + 1] += start[s]
    predecessor = np.empty(start[states], np.int32)
    filled = start[:-1].copy()
    for s in range(states):
        for c in range(intervals):
            t = table[s, c]
            if t != 0:
                predecessor[filled[t]] = s
                filled[t] += 1
    distance = np.full(states, unreachable, np.int32)
    queue = np.empty(states, np.int32)
    head = tail = 0
    for s in range(1, states):
        if final[s]:
            distance[s] = 0
            queue[tail] = s
            tail += 1
    while head < tail:
        s = queue[head]
        head += 1
        for i in range(start[s], start[s + 1]):
            p = predecessor[i]
            if distance[p] == unreachable:
                distance[p] = distance[s] + 1
                queue[tail] = p
                tail += 1
    return distance


@numba.njit(_DISTANCES, cache=True, nogil=True)
def distances(table, final, unreachable):  # pragma: no cover (compiled)
    """``_distances`` for a whole automaton (one whose counted strings were spliced in)."""
    return _distances(table, final, unreachable)


@numba.njit(_PRUNE, cache=True, nogil=True)
def prune(table, final, unreachable):  # pragma: no cover (compiled)
    """(the table of the start and the states that can still reach a final one, renumbered in
    order with row 0 dead and row 1 the start; their finality; their distances in bytes to
    acceptance (breadth-first, backwards); each old state's new number (0: pruned); each
    column's class: columns equal in the pruned table share one, numbered in order of first
    appearance)."""
    states, intervals = table.shape
    distance = _distances(table, final, unreachable)
    renumber = np.zeros(states, np.int64)
    live = 1
    for s in range(1, states):
        if distance[s] != unreachable or s == 1:  # the start stays, even with no way on
            renumber[s] = live
            live += 1
    pruned = np.zeros((live, intervals), np.int32)
    pruned_final = np.zeros(live, np.bool_)
    pruned_distance = np.full(live, unreachable, np.int32)
    for s in range(1, states):
        r = renumber[s]
        if r:
            pruned_final[r] = final[s]
            pruned_distance[r] = distance[s]
            for c in range(intervals):
                pruned[r, c] = renumber[table[s, c]]
    # each column's hash in one pass over the rows; only columns that hash alike are compared
    column_hash = np.full(intervals, FNV_OFFSET)
    for r in range(live):
        for c in range(intervals):
            column_hash[c] = fnv_step(column_hash[c], pruned[r, c])
    column_class = np.empty(intervals, np.int64)
    representative = np.empty(intervals, np.int64)
    classes = 0
    for c in range(intervals):
        column_class[c] = -1
        for k in range(classes):
            if column_hash[representative[k]] == column_hash[c] and _equal_columns(
                    pruned, c, representative[k]):
                column_class[c] = k
                break
        if column_class[c] == -1:
            representative[classes] = c
            column_class[c] = classes
            classes += 1
    return pruned, pruned_final, pruned_distance, renumber, column_class


_READ_PIECES = numba.types.Tuple((numba.boolean, numba.int64[::1], numba.int64[::1]))(
    numba.types.Array(numba.uint32, 1, "C", readonly=True), numba.boolean[::1],
    numba.boolean[::1])

# The group scan's tokens, innermost first: what opens a parenthesis, then what opens a brace,
# bracket or string, then what closes them.
_GROUP, _CAPTURE, _OBJECT, _ARRAY, _QUOTE, _BAR, _CLOSE, _OBJECT_END, _ARRAY_END = range(1, 10)


@numba.njit(cache=True, nogil=True)
def _class_close(text, at):  # pragma: no cover (compiled)
    """Where the class that ``text[at]`` (a ``[``) opens is closed: the index of its ``]``, or
    -1 where none closes it. A ``]`` first (or after ``^``) is a member; a backslash escapes
    the next character. Where none closes one ``[``, none closes a later one either (the same
    characters follow, paired the same way): the callers skip the search past the first."""
    n = len(text)
    end = at + 1
    if end < n and text[end] == 94:
        end += 1
    if end < n and text[end] == 93:
        end += 1
    while end < n:
        if text[end] == 92:
            end += 2
        elif text[end] == 93:
            return end
        else:
            end += 1
    return -1


@numba.njit(_GROUP_SPANS, cache=True, nogil=True)
def group_spans(text, min_group, also):  # pragma: no cover (compiled)
    """``repeated.group_spans`` in one pass over ``text`` (the regex's code points): (starts,
    ends) of the groups that could be shared, in the order they close. A backslash and the
    character after it are one step (an escaped brace or bracket opens or closes an object or
    an array), a class closed by a ``]`` is one step, an unclosed ``[`` is a plain character.
    A ``(?:...)`` counts at least ``min_group`` long or as long as one of ``also``; an object,
    array or string at least ``min_group`` long, with no ``|`` of its own and no quantifier
    after it."""
    n = len(text)
    # Sized once, no growth in the loop (arrays reassigned there made the scan 8x slower): a
    # frame opens at a ``(``, ``"``, ``{`` or ``[``, and each span found closes one frame.
    bound = 1
    for char in text:
        if char == 40 or char == 34 or char == 123 or char == 91:
            bound += 1
    frame_start = np.empty(bound, np.int64)
    frame_kind = np.empty(bound, np.int64)
    frame_barred = np.empty(bound, np.int64)
    starts = np.empty(bound, np.int64)
    ends = np.empty(bound, np.int64)
    depth = 0
    found = 0
    unclosed_from = n  # a ``[`` at or past this has no ``]`` after it
    at = 0
    while at < n:
        char = text[at]
        start = at
        token = 0
        if char == 92:  # a backslash: one step with the character it escapes
            if at + 1 < n:
                escaped = text[at + 1]
                if escaped == 123:
                    token = _OBJECT
                elif escaped == 91:
                    token = _ARRAY
                elif escaped == 125:
                    token = _OBJECT_END
                elif escaped == 93:
                    token = _ARRAY_END
            at += 2
        elif char == 91:  # a class, where a ``]`` closes it
            closed = _class_close(text, at) if at < unclosed_from else -1
            if closed < 0:
                unclosed_from = at
                at += 1
            else:
                at = closed + 1
        elif char == 40:
            if at + 2 < n and text[at + 1] == 63 and text[at + 2] == 58:
                token = _GROUP
                at += 3
            else:
                token = _CAPTURE
                at += 1
        else:
            if char == 124:
                token = _BAR
            elif char == 41:
                token = _CLOSE
            elif char == 34:
                token = _QUOTE
            at += 1
        if token == 0:
            continue
        if token == _BAR:  # it splits the innermost parenthesis and all opened inside it
            inner = depth - 1
            while inner >= 0 and frame_kind[inner] > _CAPTURE:
                frame_barred[inner] = 1
                inner -= 1
            continue
        closes = False
        if token == _CLOSE:
            while depth and frame_kind[depth - 1] > _CAPTURE:
                depth -= 1  # a brace left open inside the group: not a group of its own
            if depth:
                depth -= 1
                if frame_kind[depth] == _GROUP:
                    length = at - frame_start[depth]
                    closes = length >= min_group
                    for other in also:
                        closes = closes or length == other
        elif depth and frame_kind[depth - 1] > _CAPTURE and (
                (token == _OBJECT_END and frame_kind[depth - 1] == _OBJECT)
                or (token == _ARRAY_END and frame_kind[depth - 1] == _ARRAY)
                or (token == _QUOTE and frame_kind[depth - 1] == _QUOTE)):
            depth -= 1
            following = text[at] if at < n else 0
            closes = (not frame_barred[depth] and at - frame_start[depth] >= min_group
                      and following != 63 and following != 42 and following != 43
                      and following != 123)  # none of ``?*+{`` after it
        elif token <= _QUOTE:  # an opening
            frame_start[depth] = start
            frame_kind[depth] = token
            frame_barred[depth] = 0
            depth += 1
        if closes:
            starts[found] = frame_start[depth]
            ends[found] = at
            found += 1
    return starts[:found].copy(), ends[:found].copy()


@numba.njit(cache=True, nogil=True)
def _is_hex(text, start, count):  # pragma: no cover (compiled)
    """Whether ``count`` hexadecimal digits follow from ``start``."""
    if start + count > len(text):
        return False
    for at in range(start, start + count):
        char = text[at]
        if not (48 <= char <= 57 or 65 <= char <= 70 or 97 <= char <= 102):
            return False
    return True


_SPAN_HASHES = numba.uint64[::1](numba.types.Array(numba.uint32, 1, "C", readonly=True),
                                  numba.int64[::1], numba.int64[::1])


@numba.njit(_SPAN_HASHES, cache=True, nogil=True)
def span_hashes(text, starts, ends):  # pragma: no cover (compiled)
    """A 64-bit polynomial hash of each span ``text[starts[k]:ends[k]]`` (equal texts hash
    alike), from one pass over the text: the prefix hash is kept at the spans' bounds only, and
    each span's power of the base is found by squaring (no array the text's length)."""
    bounds = np.concatenate((starts, ends))
    order = np.argsort(bounds, kind="mergesort")
    prefix = np.empty(len(bounds), np.uint64)
    base = np.uint64(1000003)
    value, at = np.uint64(0), 0
    for k in order:
        while at < bounds[k]:
            value = value * base + np.uint64(text[at]) + np.uint64(1)
            at += 1
        prefix[k] = value
    hashes = np.empty(len(starts), np.uint64)
    for k in range(len(starts)):
        power, factor, length = np.uint64(1), base, ends[k] - starts[k]
        while length:
            if length & 1:
                power *= factor
            factor *= factor
            length >>= 1
        hashes[k] = prefix[len(starts) + k] - prefix[k] * power
    return hashes


_CHOOSE_GROUPS = numba.types.Tuple((numba.int64[::1], numba.int64[::1]))(
    numba.types.Array(numba.uint32, 1, "C", readonly=True), numba.int64[::1], numba.int64[::1],
    numba.uint64[::1], numba.int64, numba.int64[::1], numba.uint64[::1], numba.int64[::1],
    numba.uint64[::1])


@numba.njit(cache=True, nogil=True)
def _among(length, value, lengths, hashes):  # pragma: no cover (compiled)
    """Whether a text of ``length`` and hash ``value`` is one of ``lengths``/``hashes``."""
    for i in range(len(lengths)):
        if lengths[i] == length and hashes[i] == value:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _closes_a_string(text, at):  # pragma: no cover (compiled)
    """``repeated._CLOSES_A_STRING`` at ``at``: ``*"``, ``+"``, ``{m}"``, ``{m,}"`` or ``{m,n}"``."""
    n = len(text)
    if at < n and (text[at] == 42 or text[at] == 43):
        return at + 1 < n and text[at + 1] == 34
    if at >= n or text[at] != 123:
        return False
    j = at + 1
    while j < n and 48 <= text[j] <= 57:
        j += 1
    if j == at + 1 or j >= n:
        return False
    if text[j] == 44:
        j += 1
        while j < n and 48 <= text[j] <= 57:
            j += 1
    return j + 1 < n and text[j] == 125 and text[j + 1] == 34


@numba.njit(cache=True, nogil=True)
def _opens_a_value(text, start):  # pragma: no cover (compiled)
    """``repeated._opens_a_value``: past any ``(?:``, not a class, a separator or a quoted
    literal (characters and escaped punctuation between quotes)."""
    n = len(text)
    while start + 2 < n and text[start] == 40 and text[start + 1] == 63 and text[start + 2] == 58:
        start += 3
    c = text[start]
    if c != 34:
        return c != 91 and c != 44 and c != 58  # [ , :
    j = start + 1
    while j < n:
        c = text[j]
        if c == 34:
            return False  # a quoted literal
        if c == 92:  # an escape of punctuation goes on; of a letter or digit, a code: not literal
            if j + 1 >= n:
                return True
            e = text[j + 1]
            if 48 <= e <= 57 or 65 <= e <= 90 or 97 <= e <= 122:
                return True
            j += 2
        elif c == 91 or c == 40:  # a class or a group: not a literal
            return True
        else:
            j += 1
    return True


@numba.njit(_CHOOSE_GROUPS, cache=True, nogil=True)
def choose_groups(text, starts, ends, hashes, min_group, always_lengths, always_hashes,
                  kept_lengths, kept_hashes):  # pragma: no cover (compiled)
    """``repeated.repeated_groups`` over the spans ``group_spans`` found and their
    ``span_hashes``, the texts always counted and kept out given by length and hash: (the
    chosen spans' starts, ends), outermost first."""
    n, count = len(text), len(starts)
    keep = np.zeros(count, np.bool_)
    marked = np.zeros(count, np.bool_)
    for k in range(count):
        start, end = starts[k], ends[k]
        always = _among(end - start, hashes[k], always_lengths, always_hashes)
        plain = start > 0 and text[start - 1] == 34 and _closes_a_string(text, end)
        if (end - start < min_group and not (always and plain)) or (start == 0 and end == n):
            continue
        if always or _opens_a_value(text, start):
            keep[k], marked[k] = True, always
    candidates = np.flatnonzero(keep)
    # how many candidates share each one's text (length and hash): sorted by hash, then by
    # length (stable sorts), equal texts are runs (a text used thousands of times is one run,
    # not thousands squared comparisons)
    lengths = ends - starts
    by_length = candidates[np.argsort(lengths[candidates], kind="mergesort")]
    key_order = by_length[np.argsort(hashes[by_length], kind="mergesort")]
    uses = np.zeros(count, np.int64)
    i = 0
    while i < len(key_order):
        j = i
        while (j + 1 < len(key_order) and hashes[key_order[j + 1]] == hashes[key_order[i]]
               and lengths[key_order[j + 1]] == lengths[key_order[i]]):
            j += 1
        for a in range(i, j + 1):
            uses[key_order[a]] = j + 1 - i
        i = j + 1
    order = candidates[np.argsort(starts[candidates] * (n + 1) + (n - ends[candidates]),
                                  kind="mergesort")]
    chosen_start = np.empty(len(order), np.int64)
    chosen_end = np.empty(len(order), np.int64)
    chosen, last_end = 0, -1
    for k in order:
        if chosen and starts[k] < last_end:
            continue  # inside a chosen group: its own build handles it
        if (marked[k] or uses[k] > 1) and not _among(ends[k] - starts[k], hashes[k],
                                                       kept_lengths, kept_hashes):
            chosen_start[chosen], chosen_end[chosen] = starts[k], ends[k]
            last_end = ends[k]
            chosen += 1
    return chosen_start[:chosen].copy(), chosen_end[:chosen].copy()


@numba.njit(_READ_PIECES, cache=True, nogil=True)
def read_pieces(text, candidate, matched):  # pragma: no cover (compiled)
    """``repeated.free_bytes``'s reading of ``text`` (the regex's code points) in one pass, as
    its regex (``repeated._READ``) steps through it: each ASCII character ``c`` written as
    itself or escaped with ``candidate[c]`` true sets ``matched[c]``; (False where a ``.`` or a
    ``(?`` other than ``(?:`` means no byte is free; the starts and ends of the pieces left to
    read: every class, and every escape of a letter or digit, each text once where it recurs
    (a long regex writes the same few classes thousands of times))."""
    n = len(text)
    bound = 1  # each piece starts at a ``[`` or a backslash (sized once: no growth in the loop)
    for char in text:
        if char == 91 or char == 92:
            bound += 1
    starts = np.empty(bound, np.int64)
    ends = np.empty(bound, np.int64)
    count = 0
    unclosed_from = n  # a ``[`` at or past this has no ``]`` after it
    seen_start = np.full(1024, -1, np.int64)  # one piece per hash of its text: a repeat is skipped
    seen_end = np.zeros(1024, np.int64)
    at = 0
    while at < n:
        char = text[at]
        end = -1  # the end of a piece to read, if one starts here
        if char == 91:  # a class: as the regex reads it, ``]`` first (or after ``^``) a member
            closed = _class_close(text, at) if at < unclosed_from else -1
            if closed >= 0:
                end = closed + 1
            else:
                unclosed_from = min(unclosed_from, at)
                first = at + 1 + (at + 1 < n and text[at + 1] == 94)
                if first < n and text[first] == 93:  # backtracking: that ``]`` closes it
                    end = first + 1  # ``[]`` or ``[^]``
                else:
                    at += 1
                    continue
        elif char == 92:
            if at + 1 >= n:
                break
            escaped = text[at + 1]
            if escaped < 128 and (48 <= escaped <= 57 or 65 <= escaped <= 90
                                  or 97 <= escaped <= 122):
                end = at + 2
                if escaped == 120 and _is_hex(text, at + 2, 2):
                    end = at + 4
                elif escaped == 117 and _is_hex(text, at + 2, 4):
                    end = at + 6
                elif escaped == 85 and _is_hex(text, at + 2, 8):
                    end = at + 10
                elif 48 <= escaped <= 55:  # up to three octal digits
                    while end < n and end < at + 4 and 48 <= text[end] <= 55:
                        end += 1
            else:  # punctuation (or a control or non-ASCII character) escaped: itself
                if escaped < 128 and candidate[escaped]:
                    matched[escaped] = True
                at += 2
                continue
        elif char == 40 and at + 1 < n and text[at + 1] == 63:
            if at + 2 < n and text[at + 2] != 58:
                return False, starts[:0].copy(), ends[:0].copy()
            at += 3
            continue
        elif char == 46:
            return False, starts[:0].copy(), ends[:0].copy()
        else:
            if char < 128 and candidate[char]:
                matched[char] = True
            at += 1
            continue
        slot = 0
        for member in range(at, end):
            slot = (slot * 31 + text[member]) & 1023
        other = seen_start[slot]
        repeat = other >= 0 and seen_end[slot] - other == end - at
        if repeat:
            for offset in range(end - at):
                if text[other + offset] != text[at + offset]:
                    repeat = False
                    break
        if not repeat:
            if other < 0:
                seen_start[slot] = at
                seen_end[slot] = end
            starts[count] = at
            ends[count] = end
            count += 1
        at = end
    return True, starts[:count].copy(), ends[:count].copy()


def warm_up() -> None:
    """Call each loop once on a one-state NFA: numba's first call of a loaded function costs
    10-20 ms more, which the loading thread pays instead of a first compile."""
    thompson(np.frombuffer('(?:[ab]|\\u00e9)*c{2}'.encode("utf-32-le"), np.uint32))
    kind = np.array([2], np.int8)
    zeros = np.zeros(1, np.int32)
    status, table, final = determinize(kind, zeros, zeros, 0, np.zeros(2, np.int64), zeros, 1,
                                       4, 64)
    prune(table, final, np.int32(np.iinfo(np.int32).max))
    one = np.zeros(1, np.int64)
    byte_column, _, _, columns = byte_columns(one, one, one, 1, one)
    byte_classes(byte_column, np.zeros(columns, np.int64))
    _, first = refine_classes(np.zeros(256, np.int64), np.zeros((1, 256), np.int64), one)
    splice(np.zeros((2, len(first)), np.int32), np.zeros(2, np.bool_), 2, 0,
           np.zeros((2, len(first)), np.int32), np.zeros(len(first), np.int64), one,
           np.ones(2, np.bool_), 1)
    distances(table, final, np.int32(np.iinfo(np.int32).max))
    text = np.frombuffer('(?:"[a]")'.encode("utf-32-le"), np.uint32)
    starts, ends = group_spans(text, 1, np.zeros(1, np.int64))
    hashes = span_hashes(text, starts, ends)
    none = np.zeros(0, np.int64)
    choose_groups(text, starts, ends, hashes, 1, none, hashes[:0], none, hashes[:0])
    read_pieces(text, np.zeros(128, np.bool_), np.zeros(128, np.bool_))
