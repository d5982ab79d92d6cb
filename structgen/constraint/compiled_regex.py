"""A regex of the schema compiler's dialect as a byte-level Thompson NFA, by compiled loops
(numba), for builds in the parent process (``regex_nfa.RegexNFA.from_regex`` calls it). The
tests check the automata it leads to against outlines-core's.

``thompson`` parses the regex's code points into a tree held in arrays (a node per character,
class, sequence, alternation or repetition; each distinct class's UTF-8 sequences found once),
bounds each node's states, then builds the NFA back to front with an explicit stack of tasks
into arrays sized once (a growing array reassigned inside the loop cost more than the work).
Byte sets are numbered once per byte range and per distinct class. Syntax outside the dialect
stops it with the position, and the caller raises ``UnsupportedRegex``. ``compiled_automaton``
imports it, so the loaded loops offer it.
"""

from __future__ import annotations

import numba
import numpy as np

from structgen.code_points import MAX_CODE

BYTES, SPLIT, MATCH = 0, 1, 2  # the kinds of NFA state (``regex_nfa``)
#: ``thompson``'s status: an NFA; syntax outside the dialect (at the position it returns); more
#: than ``MAX_NFA_STATES`` states (no determinisation here would finish within its bounds).
NFA_BUILT, NFA_UNSUPPORTED, NFA_TOO_LARGE = 0, 1, 2
MAX_NFA_STATES = 1 << 24
_HUGE_COUNT = 1 << 40  # a repeat count past this is read as this (its NFA is refused anyway)

_CONTROLS = np.full(128, -1, np.int64)  # the letter of an escape like \t -> its code
for _letter, _code in zip("tnrfva0", (9, 10, 13, 12, 11, 7, 0)):
    _CONTROLS[ord(_letter)] = _code
_CHAR, _CLASS, _SEQ, _ALT, _REPEAT = 0, 1, 2, 3, 4  # tree nodes
_EVAL, _SEQ_NEXT, _ALT_DONE, _LOOP_DONE, _FEWEST, _OPTIONAL = 0, 1, 2, 3, 4, 5  # tasks

_THOMPSON = numba.types.Tuple((
    numba.int64, numba.int64, numba.int8[::1], numba.int32[::1], numba.int32[::1], numba.int64,
    numba.int64[::1], numba.int64[::1], numba.int64[::1], numba.int64))(
    numba.types.Array(numba.uint32, 1, "C", readonly=True))


#: FNV-1a's offset basis: a hash begins here and takes each item by ``fnv_step``. The compiled
#: passes hash classes' ranges, DFA states' members, bytes' byte sets and tables' columns so.
FNV_OFFSET = np.uint64(14695981039346656037)


@numba.njit(inline="always", cache=True, nogil=True)
def fnv_step(value, item):  # pragma: no cover (compiled)
    """FNV-1a's hash ``value`` with ``item`` taken in."""
    return (value ^ np.uint64(item)) * np.uint64(1099511628211)


@numba.njit(cache=True, nogil=True)
def fnv_span(values, start, end):  # pragma: no cover (compiled)
    """FNV-1a of ``values[start:end]`` (a class's text, a DFA state's members)."""
    value = FNV_OFFSET
    for at in range(start, end):
        value = fnv_step(value, values[at])
    return value


@numba.njit(cache=True, nogil=True)
def grown(array, needed):  # pragma: no cover (compiled)
    """``array``, or a zero-padded copy at least twice as long when ``needed`` exceeds it."""
    if needed <= len(array):
        return array
    size = max(2 * len(array), needed)
    copy = np.zeros(size, array.dtype)
    copy[:len(array)] = array
    return copy


@numba.njit(cache=True, nogil=True)
def _hex(text, start, digits):  # pragma: no cover (compiled)
    """The value of ``digits`` hex digits at ``start``, or -1."""
    value = 0
    for i in range(start, start + digits):
        if i >= len(text):
            return -1
        c = text[i]
        if 48 <= c <= 57:
            value = value * 16 + c - 48
        elif 97 <= c <= 102:
            value = value * 16 + c - 87
        elif 65 <= c <= 70:
            value = value * 16 + c - 55
        else:
            return -1
    return value


@numba.njit(cache=True, nogil=True)
def _escape(text, i):  # pragma: no cover (compiled)
    """(the code point of the escape at ``text[i]`` (a backslash), where it ends); -1 for one
    outside the dialect (``\\d``, ``\\1``, a lone surrogate, an escaped character beyond
    ASCII)."""
    if i + 1 >= len(text):
        return -1, i + 1
    c = text[i + 1]
    end = i + 2
    if c == 120 or c == 117 or c == 85:  # x u U
        digits = 2 if c == 120 else (4 if c == 117 else 8)
        code = _hex(text, i + 2, digits)
        end = i + 2 + digits
        if code > MAX_CODE or 0xD800 <= code <= 0xDFFF:
            code = -1
        return code, end
    if c < 128 and _CONTROLS[c] >= 0:
        return _CONTROLS[c], end
    if 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c >= 128:
        return -1, end
    return c, end


@numba.njit(cache=True, nogil=True)
def _class_ranges(text, i):  # pragma: no cover (compiled)
    """(the class at ``text[i]`` (a ``[``) as sorted, disjoint code point ranges: lows, highs;
    where it ends); an end of -1 for a class outside the dialect."""
    negated = i + 1 < len(text) and text[i + 1] == 94  # ^
    j = i + 2 if negated else i + 1
    lows = np.empty(8, np.int64)
    highs = np.empty(8, np.int64)
    count = 0
    while True:
        if j >= len(text):
            return lows[:0], highs[:0], -1  # unclosed
        if text[j] == 93:  # ]
            break
        if text[j] == 92:
            low, j = _escape(text, j)
        else:
            low, j = text[j], j + 1
        if low < 0:
            return lows[:0], highs[:0], -1
        high = low
        if j + 1 < len(text) and text[j] == 45 and text[j + 1] != 93:  # a range: "-" then not "]"
            if text[j + 1] == 92:
                high, j = _escape(text, j + 1)
            else:
                high, j = text[j + 1], j + 2
            if high < low:
                return lows[:0], highs[:0], -1  # backward (or outside the dialect: -1)
        lows, highs = grown(lows, count + 1), grown(highs, count + 1)
        lows[count], highs[count] = low, high
        count += 1
    if count == 0:
        return lows[:0], highs[:0], -1  # "[]" and "[^]"
    order = np.argsort(lows[:count], kind="mergesort")
    merged_low = np.empty(count + 1, np.int64)
    merged_high = np.empty(count + 1, np.int64)
    size = 0
    for k in order:
        if size and lows[k] <= merged_high[size - 1] + 1:
            merged_high[size - 1] = max(merged_high[size - 1], highs[k])
        else:
            merged_low[size], merged_high[size] = lows[k], highs[k]
            size += 1
    if not negated:
        return merged_low[:size].copy(), merged_high[:size].copy(), j + 1
    out_low = np.empty(size + 1, np.int64)
    out_high = np.empty(size + 1, np.int64)
    start, kept = 0, 0
    for k in range(size):
        if merged_low[k] > start:
            out_low[kept], out_high[kept] = start, merged_low[k] - 1
            kept += 1
        start = merged_high[k] + 1
    if start <= MAX_CODE:
        out_low[kept], out_high[kept] = start, MAX_CODE
        kept += 1
    return out_low[:kept].copy(), out_high[:kept].copy(), j + 1


@numba.njit(cache=True, nogil=True)
def _utf8(code, encoded):  # pragma: no cover (compiled)
    """Write ``code``'s UTF-8 bytes into ``encoded``; how many."""
    if code < 0x80:
        encoded[0] = code
        return 1
    if code < 0x800:
        encoded[0], encoded[1] = 0xC0 | (code >> 6), 0x80 | (code & 0x3F)
        return 2
    if code < 0x10000:
        encoded[0], encoded[1] = 0xE0 | (code >> 12), 0x80 | ((code >> 6) & 0x3F)
        encoded[2] = 0x80 | (code & 0x3F)
        return 3
    encoded[0], encoded[1] = 0xF0 | (code >> 18), 0x80 | ((code >> 12) & 0x3F)
    encoded[2], encoded[3] = 0x80 | ((code >> 6) & 0x3F), 0x80 | (code & 0x3F)
    return 4


@numba.njit(cache=True, nogil=True)
def utf8_sequences(lows, highs):  # pragma: no cover (compiled)
    """The UTF-8 encodings of the code points of each range (surrogates excluded), as sequences
    of byte ranges: (lengths, first bytes[k, 4], last bytes[k, 4]); sequence ``k`` matches the
    encodings whose ``i``-th byte lies in ``first[k, i]..last[k, i]``, and each code point of
    the ranges matches exactly one sequence."""
    lengths = np.empty(16, np.int64)
    first = np.empty((16, 4), np.int64)
    last = np.empty((16, 4), np.int64)
    pending = np.empty((64, 2), np.int64)
    low_bytes = np.empty(4, np.int64)
    high_bytes = np.empty(4, np.int64)
    count = 0
    for r in range(len(lows)):
        pending[0, 0], pending[0, 1] = lows[r], highs[r]
        top = 1
        while top:
            top -= 1
            low, high = pending[top, 0], pending[top, 1]
            if low > high:
                continue
            if top + 2 > len(pending):
                bigger = np.empty((2 * len(pending), 2), np.int64)
                bigger[:top] = pending[:top]
                pending = bigger
            if low <= 0xDFFF and high >= 0xD800:  # no encoding
                pending[top, 0], pending[top, 1] = low, 0xD7FF
                pending[top + 1, 0], pending[top + 1, 1] = 0xE000, high
                top += 2
                continue
            bound = -1
            for b in (0x7F, 0x7FF, 0xFFFF):
                if low <= b < high:
                    bound = b
                    break
            if bound >= 0:  # split where the encoding grows a byte
                pending[top, 0], pending[top, 1] = low, bound
                pending[top + 1, 0], pending[top + 1, 1] = bound + 1, high
                top += 2
                continue
            split = False
            for trailing in range(1, 4):  # split until each byte's range is independent
                mask = (1 << (6 * trailing)) - 1
                if low & ~mask != high & ~mask:
                    if low & mask:
                        pending[top, 0], pending[top, 1] = low, low | mask
                        pending[top + 1, 0], pending[top + 1, 1] = (low | mask) + 1, high
                        top += 2
                        split = True
                        break
                    if high & mask != mask:
                        pending[top, 0], pending[top, 1] = low, (high & ~mask) - 1
                        pending[top + 1, 0], pending[top + 1, 1] = high & ~mask, high
                        top += 2
                        split = True
                        break
            if split:
                continue
            size = _utf8(low, low_bytes)
            _utf8(high, high_bytes)
            if count == len(lengths):
                lengths = grown(lengths, count + 1)
                wider = np.empty((len(lengths), 4), np.int64)
                wider[:count] = first[:count]
                first = wider
                wider = np.empty((len(lengths), 4), np.int64)
                wider[:count] = last[:count]
                last = wider
            lengths[count] = size
            for i in range(size):
                first[count, i], last[count, i] = low_bytes[i], high_bytes[i]
            count += 1
    return lengths[:count], first[:count], last[:count]


@numba.njit(cache=True, nogil=True)
def _fnv(lows, highs):  # pragma: no cover (compiled)
    value = FNV_OFFSET
    for i in range(len(lows)):
        value = fnv_step(fnv_step(value, lows[i]), highs[i])
    return value


@numba.njit(cache=True, nogil=True)
def _class_seen(text, i, text_class, text_hash, text_start, text_end):  # pragma: no cover
    """(the distinct class of the class written at ``text[i]`` (a ``[``), where it ends) where
    the same text was parsed before, else (-1, -1). Its end is read as ``_class_ranges`` reads
    it (after ``[`` or ``[^``, the first ``]`` not escaped); a text equal to one parsed before
    parses alike."""
    n = len(text)
    end = i + 2 if i + 1 < n and text[i + 1] == 94 else i + 1
    while end < n and text[end] != 93:
        end += 2 if text[end] == 92 else 1
    if end >= n:
        return -1, -1
    end += 1
    value = fnv_span(text, i, end)
    mask = np.uint64(len(text_class) - 1)
    slot = value & mask
    while text_class[slot] != -1:
        other = text_start[slot]
        if text_hash[slot] == value and text_end[slot] - other == end - i:
            same = True
            for k in range(end - i):
                if text[other + k] != text[i + k]:
                    same = False
                    break
            if same:
                return text_class[slot], end
        slot = (slot + np.uint64(1)) & mask
    return -1, -1


@numba.njit(cache=True, nogil=True)
def _class_text_kept(text, start, end, known, text_class, text_hash, text_start,
                     text_end):  # pragma: no cover (compiled)
    """Keep that the class written at ``text[start:end]`` is distinct class ``known``."""
    value = fnv_span(text, start, end)
    mask = np.uint64(len(text_class) - 1)
    slot = value & mask
    while text_class[slot] != -1:
        slot = (slot + np.uint64(1)) & mask
    text_class[slot], text_hash[slot], text_start[slot], text_end[slot] = known, value, start, end


@numba.njit(cache=True, nogil=True)
def _parse(text):  # pragma: no cover (compiled)
    """(status, position, the tree: nodes, node_type, node_a, node_b, node_c, kids; the distinct
    classes' UTF-8 sequences: class_seq (class k's are class_seq[k]:class_seq[k + 1] of),
    seq_len, seq_first, seq_last). Nodes come in post-order, the root last. A node's fields:
    char: a = code point; class: a = distinct class; repeat: a = child, b = fewest, c = most
    (-1: unbounded); sequence and alternation: kids[a:a + b]."""
    n = len(text)
    most_nodes = 2 * n + 4  # each character adds at most two (")": a sequence and its choice)
    node_type = np.empty(most_nodes, np.int8)
    node_a = np.empty(most_nodes, np.int64)
    node_b = np.empty(most_nodes, np.int64)
    node_c = np.empty(most_nodes, np.int64)
    kids = np.empty(most_nodes, np.int64)
    kid_count = 0
    nodes = 0
    # a class's text -> its distinct class, for the texts parsed before (a long regex writes the
    # same few classes thousands of times: a repeat is hashed and compared, not parsed again)
    brackets = 0
    for char in text:
        brackets += char == 91
    text_slots = 64
    while text_slots < 2 * brackets:
        text_slots *= 2
    text_class = np.full(text_slots, -1, np.int64)
    text_hash = np.empty(text_slots, np.uint64)
    text_start = np.empty(text_slots, np.int64)
    text_end = np.empty(text_slots, np.int64)
    # distinct classes (at most one per "[", and "."), told apart by their ranges, found by
    # hash; a class written in k characters has at most k ranges. Every array here is sized
    # once: arrays reassigned in the loop slowed all of it 2.5x (their UTF-8 sequences are
    # found after it).
    most_classes = brackets + 1
    class_slots = np.full(text_slots * 2, -1, np.int64)
    class_hash = np.empty(most_classes, np.uint64)
    class_ranges = np.zeros(most_classes + 1, np.int64)  # class k's: range_low/high[r[k]:r[k + 1]]
    range_low = np.empty(n + 2, np.int64)
    range_high = np.empty(n + 2, np.int64)
    classes = 0
    items = np.empty(most_nodes, np.int64)  # open sequences' items, then their alternatives
    top = 0
    frames = np.empty((n + 2, 3), np.int64)  # each open group: alt base, seq base, where it opened
    depth = 0
    alt_base, seq_base = 0, 0
    status, i = NFA_BUILT, 0
    while i <= n:
        c = text[i] if i < n else 41  # the end closes the outermost "group"
        if i == n or c == 41 or c == 124:  # end, ")" or "|": the sequence so far as a node
            node_type[nodes], node_a[nodes], node_b[nodes] = _SEQ, kid_count, top - seq_base
            kids[kid_count:kid_count + top - seq_base] = items[seq_base:top]
            kid_count += top - seq_base
            top = seq_base
            items[top] = nodes
            top += 1
            nodes += 1
            if c == 124:
                seq_base = top
                i += 1
                continue
            if i < n and depth == 0:
                status = NFA_UNSUPPORTED  # an unopened ")"
                break
            if top - alt_base > 1:  # alternatives
                node_type[nodes], node_a[nodes], node_b[nodes] = _ALT, kid_count, top - alt_base
                kids[kid_count:kid_count + top - alt_base] = items[alt_base:top]
                kid_count += top - alt_base
                nodes += 1
            group = nodes - 1
            top = alt_base
            if i == n:
                if depth:
                    status, i = NFA_UNSUPPORTED, frames[depth - 1, 2]  # an unclosed "("
                break
            depth -= 1
            alt_base, seq_base = frames[depth, 0], frames[depth, 1]
            items[top] = group
            top += 1
            i += 1
            continue
        if c == 40:  # "(" or "(?:"
            frames[depth, 0], frames[depth, 1], frames[depth, 2] = alt_base, seq_base, i
            depth += 1
            alt_base = seq_base = top
            i += 3 if i + 2 < n and text[i + 1] == 63 and text[i + 2] == 58 else 1
            continue
        if c == 42 or c == 43 or c == 63 or c == 123:  # * + ? {
            fewest, most, end = 0, -1, i + 1
            if c == 43:
                fewest = 1
            elif c == 63:
                most = 1
            elif c == 123:  # {m}, {m,} or {m,n}
                j = i + 1
                while j < n and 48 <= text[j] <= 57:  # (saturated: no count wraps around)
                    fewest = min(fewest * 10 + text[j] - 48, _HUGE_COUNT)
                    j += 1
                if j == i + 1 or j >= n or (text[j] != 125 and text[j] != 44):
                    status = NFA_UNSUPPORTED
                    break
                if text[j] == 125:
                    most = fewest
                else:
                    j += 1
                    first_digit = j
                    most = 0
                    while j < n and 48 <= text[j] <= 57:
                        most = min(most * 10 + text[j] - 48, _HUGE_COUNT)
                        j += 1
                    if j >= n or text[j] != 125 or (j > first_digit and most < fewest):
                        status = NFA_UNSUPPORTED  # unclosed, or counting backwards
                        break
                    if j == first_digit:
                        most = -1
                end = j + 1
            if top == seq_base:
                status = NFA_UNSUPPORTED  # nothing to repeat
                break
            node_type[nodes], node_a[nodes], node_b[nodes], node_c[nodes] = \
                _REPEAT, items[top - 1], fewest, most
            items[top - 1] = nodes
            nodes += 1
            i = end
            continue
        if c == 91:
            known, end = _class_seen(text, i, text_class, text_hash, text_start, text_end)
            if known >= 0:
                node_type[nodes], node_a[nodes] = _CLASS, known
                items[top] = nodes
                top += 1
                nodes += 1
                i = end
                continue
        if c == 91 or c == 46:  # a class, or "." (all but "\n", as in outlines-core)
            if c == 91:
                lows, highs, end = _class_ranges(text, i)
                if end < 0:
                    status = NFA_UNSUPPORTED
                    break
            else:
                lows, highs, end = np.array([0, 11], np.int64), np.array([9, MAX_CODE],
                                                                           np.int64), i + 1
            value = _fnv(lows, highs)
            mask = np.uint64(len(class_slots) - 1)
            slot = value & mask
            known = -1
            while class_slots[slot] != -1:
                other = class_slots[slot]
                if class_hash[other] == value and \
                        class_ranges[other + 1] - class_ranges[other] == len(lows):
                    at = class_ranges[other]
                    same = True
                    for r in range(len(lows)):
                        if range_low[at + r] != lows[r] or range_high[at + r] != highs[r]:
                            same = False
                            break
                    if same:
                        known = other
                        break
                slot = (slot + np.uint64(1)) & mask
            if known < 0:  # a new class: its ranges kept
                known = classes
                classes += 1
                class_hash[known] = value
                used = class_ranges[known]
                range_low[used:used + len(lows)] = lows
                range_high[used:used + len(lows)] = highs
                class_ranges[known + 1] = used + len(lows)
                class_slots[slot] = known
            node_type[nodes], node_a[nodes] = _CLASS, known
            if c == 91:
                _class_text_kept(text, i, end, known, text_class, text_hash, text_start, text_end)
            i = end
        elif c == 92:  # an escape
            code, end = _escape(text, i)
            if code < 0:
                status = NFA_UNSUPPORTED
                break
            node_type[nodes], node_a[nodes] = _CHAR, code
            i = end
        elif c == 94 or c == 36 or c == 93 or c == 125 or 0xD800 <= c <= 0xDFFF:
            status = NFA_UNSUPPORTED  # ^ $ ] } or a lone surrogate (no character)
            break
        else:
            node_type[nodes], node_a[nodes] = _CHAR, c
            i += 1
        items[top] = nodes
        top += 1
        nodes += 1
    class_seq, seq_len, seq_first, seq_last = _class_sequences(classes, class_ranges, range_low,
                                                               range_high)
    return status, i, nodes, node_type, node_a, node_b, node_c, kids, class_seq, seq_len, \
        seq_first, seq_last


@numba.njit(cache=True, nogil=True)
def _class_sequences(classes, class_ranges, range_low, range_high):  # pragma: no cover
    """(class_seq, seq_len, seq_first, seq_last): the UTF-8 sequences of each distinct class,
    class ``k``'s at ``class_seq[k]:class_seq[k + 1]`` (``utf8_sequences`` of its ranges)."""
    class_seq = np.zeros(classes + 1, np.int64)
    for k in range(classes):
        a, b = class_ranges[k], class_ranges[k + 1]
        class_seq[k + 1] = class_seq[k] + len(utf8_sequences(range_low[a:b], range_high[a:b])[0])
    total = class_seq[classes]
    seq_len = np.empty(total, np.int64)
    seq_first = np.empty((total, 4), np.int64)
    seq_last = np.empty((total, 4), np.int64)
    for k in range(classes):
        a, b = class_ranges[k], class_ranges[k + 1]
        lengths, first, last = utf8_sequences(range_low[a:b], range_high[a:b])
        seq_len[class_seq[k]:class_seq[k + 1]] = lengths
        seq_first[class_seq[k]:class_seq[k + 1]] = first
        seq_last[class_seq[k]:class_seq[k + 1]] = last
    return class_seq, seq_len, seq_first, seq_last


@numba.njit(cache=True, nogil=True)
def _range_set(lo, hi, range_key, range_number, sets, ranges, range_set, low, high):
    """(the number of the byte set lo..hi, the sets and ranges now): found in the hash table
    ``range_key``/``range_number``, or made (its range written at ``ranges``)."""
    key = lo * 256 + hi
    mask = len(range_key) - 1
    slot = (key * 40503) & mask
    while range_key[slot] != -1:
        if range_key[slot] == key:
            return range_number[slot], sets, ranges
        slot = (slot + 1) & mask
    range_key[slot], range_number[slot] = key, sets
    range_set[ranges], low[ranges], high[ranges] = sets, lo, hi
    return sets, sets + 1, ranges + 1


@numba.njit(_THOMPSON, cache=True, nogil=True)
def thompson(text):  # pragma: no cover (compiled)
    """(status, position of the syntax outside the dialect or of the node past the bound, then
    ``RegexNFA``'s arrays: kind, arg, out, start, range_set, low, high, sets) of the regex whose
    code points are ``text``. The arrays are sized once, from a bound on each node's states
    (no growth in the loop: arrays reassigned there cost more than the work)."""
    empty8, empty32, empty64 = np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0, np.int64)
    status, at, nodes, node_type, node_a, node_b, node_c, kids, class_seq, seq_len, seq_first, \
        seq_last = _parse(text)
    if status != NFA_BUILT:
        return status, at, empty8, empty32, empty32, 0, empty64, empty64, empty64, 0
    # the most states each node adds (nodes come in post-order: children first)
    most = np.empty(nodes, np.int64)
    class_singles = 0  # the one-byte ranges of all distinct classes
    for k in range(len(class_seq) - 1):
        for q in range(class_seq[k], class_seq[k + 1]):
            class_singles += seq_len[q] == 1
    for node in range(nodes):
        kind_of = node_type[node]
        if kind_of == _CHAR:
            code = node_a[node]
            most[node] = 1 if code < 0x80 else (2 if code < 0x800 else (3 if code < 0x10000 else 4))
        elif kind_of == _CLASS:
            k = node_a[node]
            most[node] = 5 * (class_seq[k + 1] - class_seq[k]) + 2
        elif kind_of == _SEQ or kind_of == _ALT:
            total = node_b[node] - 1 if kind_of == _ALT else 0
            for q in range(node_a[node], node_a[node] + node_b[node]):
                total += most[kids[q]]
            most[node] = min(total, MAX_NFA_STATES + 1)
        else:
            child, fewest, upper = most[node_a[node]], node_b[node], node_c[node]
            if upper < 0:
                total = 1 + child + fewest * child if fewest <= MAX_NFA_STATES else \
                    MAX_NFA_STATES + 1
            elif upper <= MAX_NFA_STATES:
                total = upper * (child + 1)
            else:
                total = MAX_NFA_STATES + 1
            most[node] = min(total, MAX_NFA_STATES + 1)
    root = nodes - 1
    capacity = most[root] + 1
    if capacity > MAX_NFA_STATES:
        return NFA_TOO_LARGE, 0, empty8, empty32, empty32, 0, empty64, empty64, empty64, 0
    kind = np.empty(capacity, np.int8)
    arg = np.empty(capacity, np.int32)
    out = np.empty(capacity, np.int32)
    # byte sets: one per byte range, one per distinct class's one-byte encodings, the empty
    # set. A byte range's set is found through a hash table of lo * 256 + hi: there are at most
    # a few per sequence of a class, so every table here is sized once, small.
    most_sequences, all_sequences = 0, class_seq[-1]
    for k in range(len(class_seq) - 1):
        most_sequences = max(most_sequences, class_seq[k + 1] - class_seq[k])
    most_sets = 256 + 4 * all_sequences + len(class_seq) + 1
    slots = 64
    while slots < 2 * most_sets:
        slots *= 2
    range_key = np.full(slots, -1, np.int64)
    range_number = np.empty(slots, np.int64)
    class_set = np.full(len(class_seq) - 1, -1, np.int64)
    empty_set = -1
    most_ranges = most_sets + class_singles
    range_set = np.empty(most_ranges, np.int64)
    low = np.empty(most_ranges, np.int64)
    high = np.empty(most_ranges, np.int64)
    sets, ranges = 0, 0
    tails = np.empty((4 * most_sequences + 4, 10), np.int64)  # a class's sequences from a byte
    # on (length, then low and high per byte) -> their state
    entries = np.empty(most_sequences + 2, np.int64)
    encoded = np.empty(4, np.int64)
    kind[0], arg[0], out[0] = MATCH, 0, -1
    states = 1
    tasks = np.empty((2 * nodes + len(kids) + 8, 4), np.int64)
    values = np.empty(nodes + len(kids) + 8, np.int64)
    tasks[0, 0], tasks[0, 1], tasks[0, 2] = _EVAL, root, 0
    task_count, value_count = 1, 0
    while task_count:
        task_count -= 1
        task, node, target, more = tasks[task_count, 0], tasks[task_count, 1], \
            tasks[task_count, 2], tasks[task_count, 3]
        entry = -1  # the task's result, where it has one now
        if task == _EVAL:
            kind_of = node_type[node]
            if kind_of == _CHAR:  # its UTF-8 bytes, a one-byte set each, back to front
                size = _utf8(node_a[node], encoded)
                entry = target
                for b in range(size - 1, -1, -1):
                    number, sets, ranges = _range_set(encoded[b], encoded[b], range_key,
                                                      range_number, sets, ranges, range_set,
                                                      low, high)
                    kind[states], arg[states], out[states] = BYTES, number, entry
                    entry = states
                    states += 1
            elif kind_of == _CLASS:
                k = node_a[node]
                first_seq, last_seq = class_seq[k], class_seq[k + 1]
                singles = 0
                for q in range(first_seq, last_seq):
                    singles += seq_len[q] == 1
                count = 0
                if singles:  # the one-byte encodings: one set
                    if singles == 1:
                        for q in range(first_seq, last_seq):
                            if seq_len[q] == 1:
                                number, sets, ranges = _range_set(
                                    seq_first[q, 0], seq_last[q, 0], range_key, range_number,
                                    sets, ranges, range_set, low, high)
                    else:
                        number = class_set[k]
                        if number < 0:
                            number = class_set[k] = sets
                            sets += 1
                            for q in range(first_seq, last_seq):
                                if seq_len[q] == 1:
                                    range_set[ranges], low[ranges], high[ranges] = \
                                        number, seq_first[q, 0], seq_last[q, 0]
                                    ranges += 1
                    kind[states], arg[states], out[states] = BYTES, number, target
                    entries[count] = states
                    count += 1
                    states += 1
                tail_count = 0
                for q in range(first_seq, last_seq):
                    length = seq_len[q]
                    if length == 1:
                        continue
                    state = target
                    for b in range(length - 1, -1, -1):
                        known = -1
                        for t in range(tail_count):
                            if tails[t, 0] != length - b:
                                continue
                            same = True
                            for m in range(length - b):
                                if tails[t, 1 + 2 * m] != seq_first[q, b + m] or \
                                        tails[t, 2 + 2 * m] != seq_last[q, b + m]:
                                    same = False
                                    break
                            if same:
                                known = tails[t, 9]
                                break
                        if known < 0:
                            number, sets, ranges = _range_set(
                                seq_first[q, b], seq_last[q, b], range_key, range_number, sets,
                                ranges, range_set, low, high)
                            kind[states], arg[states], out[states] = BYTES, number, state
                            known = states
                            states += 1
                            tails[tail_count, 0] = length - b
                            for m in range(length - b):
                                tails[tail_count, 1 + 2 * m] = seq_first[q, b + m]
                                tails[tail_count, 2 + 2 * m] = seq_last[q, b + m]
                            tails[tail_count, 9] = known
                            tail_count += 1
                        state = known
                    entries[count] = state
                    count += 1
                if count == 0:  # an empty class: a set of no bytes
                    if empty_set < 0:
                        empty_set = sets
                        sets += 1
                    kind[states], arg[states], out[states] = BYTES, empty_set, -1
                    entry = states
                    states += 1
                else:
                    entry = entries[count - 1]
                    for e in range(count - 2, -1, -1):
                        kind[states], arg[states], out[states] = SPLIT, entry, entries[e]
                        entry = states
                        states += 1
            elif kind_of == _SEQ:
                if node_b[node] == 0:
                    entry = target
                else:  # the children back to front, each leading to the next one's entry
                    last_kid = node_a[node] + node_b[node] - 1
                    tasks[task_count, 0], tasks[task_count, 1], tasks[task_count, 3] = \
                        _SEQ_NEXT, node, last_kid - 1
                    tasks[task_count + 1, 0], tasks[task_count + 1, 1], \
                        tasks[task_count + 1, 2] = _EVAL, kids[last_kid], target
                    task_count += 2
            elif kind_of == _ALT:  # each child leads to the target; then splits
                tasks[task_count, 0], tasks[task_count, 1] = _ALT_DONE, node
                task_count += 1
                for q in range(node_a[node] + node_b[node] - 1, node_a[node] - 1, -1):
                    tasks[task_count, 0], tasks[task_count, 1], tasks[task_count, 2] = \
                        _EVAL, kids[q], target
                    task_count += 1
            else:  # a repetition
                child, fewest, upper = node_a[node], node_b[node], node_c[node]
                tasks[task_count, 0], tasks[task_count, 1], tasks[task_count, 3] = \
                    _FEWEST, child, fewest
                task_count += 1
                if upper < 0:  # a loop: its split's first move is the body's entry
                    kind[states], arg[states], out[states] = SPLIT, target, -1
                    tasks[task_count, 0], tasks[task_count, 2] = _LOOP_DONE, states
                    tasks[task_count + 1, 0], tasks[task_count + 1, 1], \
                        tasks[task_count + 1, 2] = _EVAL, child, states
                    task_count += 2
                    states += 1
                elif upper > fewest:  # x{0,k} as (x(x(...)?)?)?
                    tasks[task_count, 0], tasks[task_count, 1], tasks[task_count, 2], \
                        tasks[task_count, 3] = _OPTIONAL, child, target, upper - fewest - 1
                    tasks[task_count + 1, 0], tasks[task_count + 1, 1], \
                        tasks[task_count + 1, 2] = _EVAL, child, target
                    task_count += 2
                else:
                    entry = target
        elif task == _SEQ_NEXT:
            value_count -= 1
            following = values[value_count]
            if more < node_a[node]:
                entry = following
            else:
                tasks[task_count, 0], tasks[task_count, 1], tasks[task_count, 3] = \
                    _SEQ_NEXT, node, more - 1
                tasks[task_count + 1, 0], tasks[task_count + 1, 1], tasks[task_count + 1, 2] = \
                    _EVAL, kids[more], following
                task_count += 2
        elif task == _ALT_DONE:
            count = node_b[node]
            value_count -= count
            entry = values[value_count + count - 1]
            for e in range(count - 2, -1, -1):
                kind[states], arg[states], out[states] = SPLIT, entry, values[value_count + e]
                entry = states
                states += 1
        elif task == _LOOP_DONE:
            value_count -= 1
            out[target] = values[value_count]
            entry = target
        elif task == _FEWEST:  # ``more`` copies of the child before what was built
            value_count -= 1
            entry = values[value_count]
            if more > 0:
                tasks[task_count, 0], tasks[task_count, 1], tasks[task_count, 3] = \
                    _FEWEST, node, more - 1
                tasks[task_count + 1, 0], tasks[task_count + 1, 1], tasks[task_count + 1, 2] = \
                    _EVAL, node, entry
                task_count += 2
                entry = -1
        else:  # _OPTIONAL: a split around the child's copy just built
            value_count -= 1
            kind[states], arg[states], out[states] = SPLIT, target, values[value_count]
            entry = states
            states += 1
            if more > 0:
                tasks[task_count, 0], tasks[task_count, 1], tasks[task_count, 2], \
                    tasks[task_count, 3] = _OPTIONAL, node, target, more - 1
                tasks[task_count + 1, 0], tasks[task_count + 1, 1], tasks[task_count + 1, 2] = \
                    _EVAL, node, entry
                task_count += 2
                entry = -1
        if entry >= 0:
            values[value_count] = entry
            value_count += 1
    return (NFA_BUILT, 0, kind[:states].copy(), arg[:states].copy(), out[:states].copy(),
            values[0], range_set[:ranges].copy(), low[:ranges].copy(), high[:ranges].copy(),
            sets)
