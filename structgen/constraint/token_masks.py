"""Lazy token masks: a state's allowed tokens, computed on its first visit and kept, bounded.

``TokenBytes`` holds a tokenizer's ordinary tokens as numpy arrays, built once per tokenizer.
``Walker.walk_parts`` steps every token that can start in a state through a ``ByteAutomaton`` at
once, one byte position per numpy gather: a token is allowed when all its bytes step to a live
state. Inside a string, the tokens of whole characters are not stepped: each distinct character
shape is judged once per state, and a token of good characters ends as many states down the
string as it has characters. Measured on the Llama-3 vocabulary (128k tokens, 831k bytes,
``benchmarks/string_walks.py``): a free string, where nearly every token is allowed, about
0.3 ms; a counted one about 0.4 ms; a structural state (after ``{``, between fields), where
only the tokens that survive their first two bytes are stepped, 0.1-1.5 ms (whitespace runs
that loop on the state are split off first, not stepped byte by byte).

Once a model is loaded (``compiled_loops``), two numba loops replace the numpy stepping: a
structural state's tokens by byte pair, and a string's other tokens from where their characters
led (``compiled_walks``); the masks are the same, and the tests compare both paths with a
brute-force walk. On the 12,605 first visits of 232 MaskBench dev schemas' states (Llama-3,
``benchmarks/compiled_walks.py``): p50 289 -> 65 µs, p99 1.77 -> 1.00 ms.

``MaskStore`` keeps, per state visited, the packed bitmask and the largest distance to acceptance
any allowed token leads to (the budget rule needs a state's walk again only when fewer tokens
are left than that). It is shared by every matcher of one constraint, so a batch job over one
schema computes each state once and then copies masks. Entries are evicted least recently used
once they hold ``max_bytes`` (default 64 MiB: 4,096 states at Llama-3's 128k vocabulary).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from structgen.constraint.automaton import ByteAutomaton, concatenated_ranges
from structgen.constraint.compiled_loops import COMPILED_LOOPS
from structgen.constraint.vocabulary import TokenMap

DEFAULT_MASK_BYTES = 64 << 20
FOUND_LONGEST = 32  # the longest tokens found_in looks for
SPLITS_KEPT = 16
#: A state where this many bytes run together takes the tokens made of them without a walk.
RUN_BYTES = 32
#: Where the few tokens a state may take are at most this long, they are stepped as they are;
#: longer ones whose other bytes loop where the first led (whitespace runs) are split off first.
LONG_FEW = 16
#: A string split's rests up to this many bytes are kept as each walker's byte classes.
REST_CLASS_BYTES = 1 << 16


def going_counts(lengths: np.ndarray) -> list[int]:
    """For token lengths in descending order: how many tokens are longer than ``i``, for each
    byte position ``i`` (the first ``going[i]`` tokens are still going there)."""
    longest = int(lengths[0]) if len(lengths) else 0
    return np.searchsorted(-lengths, -np.arange(longest), side="left").tolist()


class TokenBytes:
    """A tokenizer's ordinary tokens (id -> bytes) as the arrays ``walk`` reads, built once per
    tokenizer: tokens ordered longest first, so the tokens still going at byte ``i`` are a prefix
    (``going[i]`` of them) and ``columns[i]`` is their ``i``-th bytes."""

    def __init__(self, token_bytes: Mapping[int, bytes], vocab_size: int):
        tokens = token_bytes if isinstance(token_bytes, TokenMap) else TokenMap.from_dict(token_bytes)
        kept = np.flatnonzero((tokens.ids >= 0) & (tokens.ids < vocab_size))
        # longest first, ties in id order (a TokenMap's ids ascend); numpy's stable sort of
        # 16-bit keys is a radix sort, 5x faster at Llama-3 than a lexsort of the int64 pair
        shorter = tokens.lengths[kept].max(initial=0) - tokens.lengths[kept]
        order = kept[np.argsort(_small_keys(shorter), kind="stable")]
        self.vocab_size = vocab_size
        self.ids, self.lengths = tokens.ids[order], tokens.lengths[order]
        self.starts = starts = tokens.starts[order]  # where each token's bytes begin in flat
        # a writable copy: the compiled walks' signatures take writable arrays (20 µs at Llama-3)
        self.flat = flat = np.frombuffer(tokens.flat, np.uint8).copy()
        self.going = going_counts(self.lengths)
        self.columns = [flat[starts[:n] + i] for i, n in enumerate(self.going)]
        first = self.columns[0] if self.columns else np.zeros(0, np.uint8)
        # positions grouped by their first two bytes (a one-byte token's second is 256), so a
        # state steps only the tokens that survive two bytes: pair_start[p]:pair_start[p + 1]
        # of by_pair are the tokens of pair p = first * 257 + second
        second = np.full(len(order), 256, np.int64)
        if len(self.columns) > 1:
            second[:len(self.columns[1])] = self.columns[1]
        pairs = first.astype(np.int64) * 257 + second
        by_second = np.argsort(second.astype(np.uint16), kind="stable")  # two radix sorts
        self.by_pair = by_second[np.argsort(first[by_second], kind="stable")]
        self.pair_start = np.searchsorted(pairs[self.by_pair], np.arange(256 * 257 + 1))
        self.single_bytes = np.zeros(256, dtype=bool)
        self.single_bytes[first[self.lengths == 1]] = True
        self._bytes = tokens
        self._multi: tuple[int, np.ndarray, np.ndarray] | None = None
        self._splits: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._splits_lock = threading.Lock()
        self._string_splits: OrderedDict[bytes, StringSplit] = OrderedDict()
        self._shapes: OrderedDict[bytes, tuple] = OrderedDict()

    def made_of(self, byte_set: np.ndarray) -> np.ndarray:
        """bool per position: the token's bytes all lie in ``byte_set`` (bool [256]), computed
        once per byte set and kept for the last ``SPLITS_KEPT``: the byte sets a state loops or
        runs on (a free string's characters, JSON whitespace) recur across states and schemas."""
        def inside() -> np.ndarray:
            made = np.ones(len(self.ids), dtype=bool)
            for column in self.columns:
                going = made[:len(column)]
                going &= byte_set[column]
            return made

        return self._kept(self._splits, np.packbits(byte_set).tobytes(), inside)

    def string_split(self, same: np.ndarray, steps_one: np.ndarray, loop: bool) -> "StringSplit":
        """The vocabulary split for a string's run (``Walker._walk_string``): inside are the
        tokens of whole characters whose ASCII bytes are in ``same`` (bool [256]) and whose
        multi-byte characters ``steps_one`` (bool per ``characters`` row) says step one place;
        the others are walked. Made once per (byte set, verdicts, loop) and kept for the last
        ``SPLITS_KEPT``, for every automaton of this tokenizer: every schema's free strings
        share one."""
        key = bytes([loop]) + np.packbits(same).tobytes() + np.packbits(steps_one).tobytes()
        return self._kept(self._string_splits, key,
                          lambda: StringSplit(self, same, steps_one, loop))

    def _kept(self, store: OrderedDict, key: bytes, make: Callable):
        """``store[key]``, made by ``make()`` (outside the lock: a race makes it twice,
        harmlessly) where absent; the last ``SPLITS_KEPT`` are kept."""
        with self._splits_lock:
            value = store.get(key)
            if value is not None:
                store.move_to_end(key)
                return value
        value = make()
        with self._splits_lock:
            store[key] = value
            while len(store) > SPLITS_KEPT:
                store.popitem(last=False)
        return value

    def character_shapes(self, high_classes: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """The distinct shapes of the vocabulary's multi-byte characters (int64 [n, 4]: their
        bytes' classes per position, -1 past the end) under ``high_classes`` (the byte classes of
        bytes 0x80-0xFF, numbered in order of first appearance), each character's shape, and
        per position the shapes longer than it. Kept per such numbering like the splits:
        automata differ in their ASCII classes (a schema's key names) but mostly share these,
        and a numbering's shapes cost 0.5 ms at Llama-3, paid by the first string state of
        every automaton otherwise (160 of the slowest 1%, 571, of first masks over 250 dev
        schemas)."""
        def make():
            characters = self.characters
            outside = np.arange(4)[None, :] >= characters.lengths[:, None]
            classes = high_classes[np.where(outside, 0x80, characters.bytes) - 0x80].astype(np.int64)
            classes[outside] = -1
            # one sortable key per row, 9 bits a position (a class + 1 is at most 256):
            # np.unique over rows (axis=0) took 4.2 ms over Llama-3's 4,084 characters, this 0.5
            keys = ((classes + 1) << np.array([27, 18, 9, 0], np.int64)).sum(axis=1)
            _, first, shape_of = np.unique(keys, return_index=True, return_inverse=True)
            distinct = classes[first]
            if not len(distinct):
                distinct = np.zeros((0, 4), np.int64)
            lengths = (distinct >= 0).sum(axis=1)
            return distinct, shape_of.reshape(-1), [np.flatnonzero(lengths > k) for k in range(4)]

        key = np.ascontiguousarray(high_classes, np.uint8).tobytes()
        return self._kept(self._shapes, key, make)

    @functools.cached_property
    def characters(self) -> "Characters":
        """The tokens as UTF-8 characters (made on the first free string's walk, ~20 ms at
        Llama-3's vocabulary, then kept)."""
        return Characters(self.columns, self.going, self.lengths)

    def bytes_of(self, token_id: int) -> bytes | None:
        return self._bytes.get(token_id)

    def found_in(self, text: bytes, longest: int = FOUND_LONGEST) -> list[bytes]:
        """The distinct multi-byte tokens (up to ``longest`` bytes) that occur in ``text``,
        longest first. Each substring's polynomial hash is looked up among the tokens' (sorted
        once per tokenizer, a few milliseconds where a set of 128k bytes objects takes 50 ms),
        and every hit is checked byte for byte."""
        keys, positions = self._multi_keys(longest)
        if not len(keys):
            return []
        data = np.frombuffer(text, np.uint8).astype(np.uint64) + np.uint64(1)
        hit_positions, hit_starts = [], []
        rolling = np.zeros(len(data), np.uint64)
        for width in range(1, min(longest, len(data)) + 1):
            rolling = rolling[:len(data) - width + 1] * _HASH_BASE + data[width - 1:]
            if width == 1:
                continue
            key = rolling * _HASH_BASE + np.uint64(width)
            at = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
            starts = np.flatnonzero(keys[at] == key)
            hit_positions.append(positions[at[starts]])
            hit_starts.append(starts)
        found: set[bytes] = set()
        if hit_positions:
            distinct, first = np.unique(np.concatenate(hit_positions), return_index=True)
            starts = np.concatenate(hit_starts)[first]
            for position, start in zip(distinct.tolist(), starts.tolist()):
                value = self._bytes[int(self.ids[position])]
                if text[start:start + len(value)] == value:  # not a hash collision
                    found.add(value)
        return sorted(found, key=lambda value: (-len(value), value))

    def prepare(self) -> None:
        """Compute now what the first constraint's distances will need (``found_in``'s keys)."""
        self._multi_keys(FOUND_LONGEST)

    def _multi_keys(self, longest: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted hash keys of the tokens of 2 to ``longest`` bytes, their positions)."""
        multi = self._multi  # one read: another thread may replace it
        if multi is None or multi[0] != longest:
            hashes = np.zeros(len(self.ids), np.uint64)
            for column in self.columns[:longest]:
                going = hashes[:len(column)]
                going *= _HASH_BASE
                going += column.astype(np.uint64) + np.uint64(1)
            hashes = hashes * _HASH_BASE + self.lengths.astype(np.uint64)
            candidates = np.flatnonzero((self.lengths >= 2) & (self.lengths <= longest))
            order = candidates[np.argsort(hashes[candidates], kind="stable")]
            multi = self._multi = (longest, hashes[order], order)
        return multi[1], multi[2]


def _small_keys(keys: np.ndarray) -> np.ndarray:
    """``keys`` (>= 0) as uint16 where they fit, which numpy's stable sort radix-sorts."""
    return keys.astype(np.uint16) if keys.max(initial=0) < 1 << 16 else keys


# bytes a UTF-8 character of 1-4 bytes starts with; 0 a continuation byte, -1 never valid
_UTF8_LENGTH = np.array([1] * 0x80 + [0] * 0x40 + [2] * 0x20 + [3] * 0x10 + [4] * 8 + [-1] * 8,
                        np.int8)


class Characters:
    """A vocabulary's tokens split into UTF-8 characters, so a state can judge each distinct
    multi-byte character once (Llama-3's tokens hold a few thousand) instead of stepping every
    token that holds one (a quarter of its vocabulary).

    ``complete`` (bool per position, ``TokenBytes`` order): the token is whole characters;
    ``bytes``/``lengths``: the distinct multi-byte characters (uint8 [n, 4], zero-padded);
    ``token``/``index``: each multi-byte character of a complete token, the token's position
    and the character's row; ``counts``: characters per token (``by_count``: the positions by
    it, most first)."""

    def __init__(self, columns: list[np.ndarray], going: list[int], lengths: np.ndarray):
        count = going[0] if going else 0
        broken = np.zeros(count, dtype=bool)
        continuations = np.zeros(count, np.int32)
        covered = np.zeros(count, np.int32)
        tokens, keys, sizes = [], [], []
        for i, column in enumerate(columns):
            length = _UTF8_LENGTH[column]
            broken[:len(column)] |= length < 0
            continuations[:len(column)] += length == 0
            position = np.flatnonzero(length >= 2)
            need = length[position].astype(np.int32)
            key = column[position].astype(np.uint32)
            for k in (1, 2, 3):
                wanted = need > k
                if not wanted.any():
                    break
                there = wanted & (i + k < len(columns))
                if i + k < len(columns):
                    there &= position < going[i + k]
                broken[position[wanted & ~there]] = True
                follow = np.zeros(len(position), np.uint32)
                follow[there] = columns[i + k][position[there]]
                broken[position[there & ((follow & 0xC0) != 0x80)]] = True
                key = np.where(wanted, key * 256 + follow, key)
            covered[position] += need - 1
            tokens.append(position)
            keys.append(key)
            sizes.append(need)
        self.complete = ~broken & (continuations == covered)
        self.counts = lengths - continuations  # characters per token (complete ones)
        # positions by character count, most first (ties in position order): a string's inside
        # tokens are these, filtered, without a sort per string
        self.by_count = np.argsort(-self.counts, kind="stable")
        token = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
        key = np.concatenate(keys) if keys else np.zeros(0, np.uint32)
        length = np.concatenate(sizes) if sizes else np.zeros(0, np.int32)
        kept = self.complete[token]
        distinct, first, self.index = np.unique(key[kept], return_index=True, return_inverse=True)
        self.token = token[kept]
        self.lengths = length[kept][first]
        shifts = 8 * (self.lengths[:, None] - 1 - np.arange(4)[None, :])
        self.bytes = np.where(shifts >= 0, distinct[:, None] >> np.maximum(shifts, 0).astype(np.uint32),
                              0).astype(np.uint8)


class StringSplit:
    """``TokenBytes.string_split``: ``inside_ids`` and ``inside_counts`` (their characters),
    most characters first, ``inside_bits`` (bool [vocab] of them) and ``count_values`` (their
    distinct counts, most first); the other tokens' positions (``outside``), and what
    ``Walker._walk_rests`` walks of them (``rest``, a ``Rests``)."""

    def __init__(self, tokens: TokenBytes, same: np.ndarray, steps_one: np.ndarray, loop: bool):
        characters = tokens.characters
        ascii_or_high = same.copy()
        ascii_or_high[0x80:] = True  # a complete token's high bytes are its characters'
        stray = np.bincount(characters.token[~steps_one[characters.index]],
                            minlength=len(tokens.ids)) > 0
        keep = tokens.made_of(ascii_or_high) & characters.complete & ~stray
        inside = characters.by_count[keep[characters.by_count]]  # most characters first
        self.inside_ids = tokens.ids[inside]
        self.inside_counts = characters.counts[inside]
        self.inside_bits = np.zeros(tokens.vocab_size, dtype=bool)
        self.inside_bits[self.inside_ids] = True
        self.inside_packed = pack_bitmask(self.inside_bits)  # each string state's mask starts so
        counts = self.inside_counts
        self.count_values = counts[np.flatnonzero(np.diff(counts, prepend=counts[:1] + 1))]
        is_outside = np.ones(len(tokens.ids), dtype=bool)
        is_outside[inside] = False
        self.outside = outside = np.flatnonzero(is_outside)
        going = going_counts(tokens.lengths[outside])
        columns = [column[outside[:n]] for column, n in zip(tokens.columns, going)]
        self.rest = self._rests(tokens, same, columns)

    def _rests(self, tokens: TokenBytes, same: np.ndarray, columns: list[np.ndarray]) -> "Rests":
        """Each outside token steps one place down the run per byte in ``same`` until its first
        byte outside it (a quote, a backslash, a control byte, a character's lead byte): only
        the rest of it is walked, from the place it reached (in a loop, the state itself).
        Llama-3's outside tokens run to 82 bytes (comment lines that end in a newline); their
        rests to a few."""
        lengths = tokens.lengths[self.outside]
        leaves = lengths.copy()  # the first position whose byte leaves; the length if none
        for place, column in enumerate(columns):  # the outside tokens' bytes, per position
            found = leaves[:len(column)]
            found[(found == lengths[:len(column)]) & ~same[column]] = place
        rests = lengths - leaves
        order = np.argsort(-rests, kind="stable")
        going = going_counts(rests[order])
        ordered = self.outside[order]
        starts = tokens.starts[ordered] + leaves[order]
        rest_columns = [tokens.flat[starts[:n] + place] for place, n in enumerate(going)]
        first = tokens.flat[tokens.starts[ordered]]
        by_first = np.argsort(first, kind="stable")
        return Rests(tokens.ids[ordered], going[0] if going else 0, rests[order],
                     np.array(going, np.int64), rest_columns, leaves[order], by_first,
                     np.searchsorted(first[by_first], np.arange(257)),
                     tokens.flat[concatenated_ranges(starts, rests[order])],
                     np.cumsum(rests[order]) - rests[order])


class Rests(NamedTuple):
    """A ``StringSplit``'s outside tokens as ``Walker._walk_rests`` walks them, ordered by the
    length of their rest, longest first: their ``ids``; how many have a rest (``walked``, a
    prefix); the rests' ``lengths`` and how many are longer than each place (``going``); their
    bytes per place (``columns[i]``: the ``i``-th byte of the rests longer than ``i``); the
    place each token's characters reach (``leaves``); the tokens grouped by first byte
    (``by_first[first_start[b]:first_start[b + 1]]``, indices into this order); and, for the
    compiled walk, the rests' bytes joined in this order (``flat``) and where each begins
    (``starts``)."""

    ids: np.ndarray
    walked: int
    lengths: np.ndarray
    going: np.ndarray
    columns: list
    leaves: np.ndarray
    by_first: np.ndarray
    first_start: np.ndarray
    flat: np.ndarray
    starts: np.ndarray


class Placed(NamedTuple):
    """A string run's tokens of whole characters, placed without a walk: ``bits`` (bool
    [vocab], shared: copied before any write) and the same packed (``packed``, shared too),
    their ``ids`` and character ``counts`` (most first), the distinct counts (``values``), and
    the run's states ``chain``: token ``ids[i]`` leads to ``chain[counts[i]]`` (in a loop, every
    place is the state itself)."""

    bits: np.ndarray
    packed: np.ndarray
    ids: np.ndarray
    counts: np.ndarray
    values: np.ndarray
    chain: np.ndarray

    def shorter_than(self, count: int) -> "Placed":
        """Only the tokens of fewer than ``count`` characters (a counted string's last places)."""
        cut = int(np.searchsorted(-self.counts, -count, side="right"))
        bits = self.bits.copy()
        bits[self.ids[:cut]] = False
        return Placed(bits, pack_bitmask(bits), self.ids[cut:], self.counts[cut:],
                      self.values[self.values < count], self.chain)

    def worst(self, distance: np.ndarray) -> int:
        """The largest ``distance`` after one of these tokens."""
        return int(distance[self.chain[self.values]].max()) if len(self.values) else 0

    def within(self, distance: np.ndarray, tokens_left: int) -> np.ndarray:
        """bool [vocab]: those after which ``distance`` is at most ``tokens_left``."""
        fits = self.values[distance[self.chain[self.values]] <= tokens_left]
        if len(fits) == len(self.values):
            return self.bits.copy()
        bits = np.zeros(len(self.bits), dtype=bool)
        bits[self.ids[np.isin(self.counts, fits)]] = True
        return bits


_HASH_BASE = np.uint64(0x100000001B3)  # the FNV prime: any odd 64-bit multiplier spreads bytes


class Walker:
    """``walk`` for one (automaton, tokenizer) pair: the automaton's table as one row after
    another (``plain``), which the compiled walks, the string runs and their characters step
    through, and the tokens' bytes as classes. The numpy walks (before the compiled loops are
    loaded) step a copy with state numbers premultiplied by the class count (``table``: a step
    is one add and one gather), made on their first use: a large automaton's copy cost its
    fresh memory most (27 MB and tens of ms for Github_ultra o25423)."""

    def __init__(self, automaton: ByteAutomaton, tokens: TokenBytes):
        self.tokens = tokens
        self.width = automaton.table.shape[1]
        self.plain = np.ascontiguousarray(automaton.table, np.int32).reshape(-1)
        # a writable copy (one read from a cache file is not), as the compiled walks take it
        self.byte_class = np.array(automaton.byte_class, np.uint8)
        # a string split's rests as this automaton's byte classes, per split seen
        self._rest_classes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.use_compiled = True  # the compiled loops where loaded (tests compare both)

    @property
    def compiled(self):
        """``compiled_walks`` if loaded and in use here, else None (numpy walks)."""
        return COMPILED_LOOPS.walks if self.use_compiled else None

    @functools.cached_property
    def table(self) -> np.ndarray:
        """``plain`` with each state number premultiplied by the width (int32, or int64 for a
        table of 2**31 cells or more), for the numpy walks."""
        dtype = np.int32 if self.plain.size < 2**31 else np.int64
        return np.multiply(self.plain, self.width, dtype=dtype)

    @functools.cached_property
    def classes(self) -> list[np.ndarray]:
        """Every token's bytes as byte classes, per position (uint8: 831 KB for Llama-3's
        vocabulary; an addition widens it to the table's type). Made on the first walk that
        steps most of the vocabulary (2-3 ms), which a structural first state never needs."""
        return [self.byte_class[column] for column in self.tokens.columns]

    def walk(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids of the tokens allowed in ``state``, the state each leads to); EOS included if it
        has bytes of its own. ``walk_parts`` joined."""
        placed, ids, following = self.walk_parts(state)
        if placed is None:
            return ids, following
        return (np.concatenate([placed.ids, ids]),
                np.concatenate([placed.chain[placed.counts].astype(np.int64), following]))

    def walk_parts(self, state: int) -> tuple[Placed | None, np.ndarray, np.ndarray]:
        """(the tokens a string run places without a walk (``Placed``), or None; ids of the
        other tokens allowed, the state each leads to).

        In a string (a run of states its characters step along, ``_run``), a token of whole
        characters ends as many states down the run as it has characters, so those tokens are
        placed, not stepped, and only the others are walked (``_walk_string``). Elsewhere, once
        the compiled loops are loaded (``compiled_loops``), one compiled call steps the tokens of
        each byte pair the state takes to their end or first dead byte. In numpy, where
        only a few tokens survive their first two bytes (looked up by byte pair, not stepped),
        those are stepped, dropping the dead. Where most may, the whole vocabulary steps in place
        a byte position at a time (every token's bytes once: 831k for Llama-3, about 3 ms).
        (Stepping the vocabulary's prefix trie instead, 275k nodes for Llama-3, measured no
        faster: its 128 levels cost four numpy calls each.)"""
        tokens, width = self.tokens, self.width
        if not tokens.columns:
            return None, np.zeros(0, np.int64), np.zeros(0, np.int64)
        run = self._run(state, self.plain[state * width:(state + 1) * width])
        compiled = self.compiled
        if run is not None:  # a string: its characters' tokens are placed, not stepped
            return self._walk_string(state, *run)
        if compiled is not None:
            return None, *self._walk_pairs_compiled(compiled, state)
        row = self.table[state * width:(state + 1) * width]
        firsts = np.flatnonzero(row[self.byte_class])  # the first bytes the state takes
        # the tokens whose first two bytes the state takes: after a whitespace state's " ", 40%
        # of Llama-3's tokens start, and nearly all die at their second byte
        after = row[self.byte_class[firsts]]
        second = np.ones((len(firsts), 257), dtype=bool)
        second[:, :256] = self.table[after[:, None] + self.byte_class[None, :]] != 0
        pairs = (firsts[:, None] * 257 + np.arange(257))[second]
        starts = tokens.pair_start[pairs]
        sizes = tokens.pair_start[pairs + 1] - starts
        if sizes.sum() * 4 <= len(tokens.ids):  # few of them: step only those
            return None, *self._walk_few(state, row,
                                         tokens.by_pair[concatenated_ranges(starts, sizes)])
        return None, *self._walk_in_place(row, self.classes, tokens.going, tokens.ids)

    def _walk_pairs_compiled(self, compiled, state: int) -> tuple[np.ndarray, np.ndarray]:
        """``walk_parts`` outside a string in one compiled call: the tokens of each byte pair
        the state takes, each stepped to its end or its first dead byte."""
        tokens = self.tokens
        found = np.empty(len(tokens.ids), np.int64), np.empty(len(tokens.ids), np.int64)
        count = compiled.walk_pairs(self.plain, self.width, self.byte_class, state * self.width,
                                    tokens.flat, tokens.starts, tokens.lengths,
                                    tokens.ids, tokens.by_pair, tokens.pair_start, *found)
        return found[0][:count].copy(), found[1][:count].copy()

    def _walk_string(self, state: int, chain: np.ndarray, same: np.ndarray):
        """``walk_parts`` along a run (``_run``): a token of whole characters, each of which
        steps one place down the run wherever the token could stand on it, ends as many places
        down as it has characters. Each distinct character shape (its bytes' classes: tens, for
        Llama-3's 4k multi-byte characters) is stepped from every place of the run once, and
        only the tokens that are not such characters (quotes, escapes, split characters: 5% of
        Llama-3's) are walked. The vocabulary's split is kept per (byte set, verdicts)."""
        loop = bool((chain == chain[0]).all())
        places = chain[:2] if loop else chain  # a loop's places are all alike
        shapes, shape_of, longer = self._character_shapes
        plain, width = self.plain, self.width
        current = plain[places[:-1, None] * width + shapes[0][None, :]].astype(np.int64)
        for k in (1, 2, 3):
            current[:, longer[k]] = plain[current[:, longer[k]] * width + shapes[k][longer[k]]]
        steps_one = (current == places[1:, None]).all(axis=0)
        split = self.tokens.string_split(same, steps_one[shape_of], loop)
        ids, following = self._walk_outside(state, split, chain)
        placed = Placed(split.inside_bits, split.inside_packed, split.inside_ids,
                        split.inside_counts, split.count_values, chain)
        dead = np.flatnonzero(chain == 0)  # a suffix of the run: the dead state stays dead
        if len(dead):  # inside tokens are most characters first: those too long are a prefix
            placed = placed.shorter_than(int(dead[0]))
        return placed, ids, following

    def _walk_outside(self, state: int, split: StringSplit, chain: np.ndarray):
        """A string's other tokens (``split.outside``), each walked from its first byte that
        leaves the run (``_walk_rests``); where most of them start with a byte the state
        refuses (a string that takes few characters), only those that start well, found by
        their first byte."""
        rest = split.rest
        compiled = self.compiled
        if compiled is not None:  # each rest stepped to its first dead byte, in one call
            found = np.empty(len(rest.ids), np.int64), np.empty(len(rest.ids), np.int64)
            count = compiled.walk_rests(self.plain, self.width, self.byte_class,
                                        state * self.width, rest.flat, rest.starts,
                                        rest.lengths, rest.ids, chain.astype(np.int64),
                                        rest.leaves, rest.by_first, rest.first_start, *found)
            return found[0][:count].copy(), found[1][:count].copy()
        row = self.plain[state * self.width:(state + 1) * self.width]
        taken = np.flatnonzero(row[self.byte_class])  # the first bytes the state takes
        starts = rest.first_start[taken]
        sizes = rest.first_start[taken + 1] - starts
        if sizes.sum() * 2 >= len(rest.ids):
            return self._walk_rests(split, chain, None)
        return self._walk_rests(split, chain,
                                np.sort(rest.by_first[concatenated_ranges(starts, sizes)]))

    def _walk_rests(self, split: StringSplit, chain: np.ndarray,
                    pick: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``split.rest``'s tokens (those at the sorted indices ``pick``, or all) walked from the
        run ``chain`` (its states from here on): each rest steps from the place its token's
        characters reached (``_step_longest_first``); a token without one ends there. Where
        the rests are few bytes in all (a string that takes most characters: 20 KB at
        Llama-3), they are read as this automaton's byte classes, made once per split; others
        (600 KB where a pattern takes few characters) are looked up as they are stepped."""
        rest, width = split.rest, self.width
        places = chain.astype(self.table.dtype) * width
        columns, classes = rest.columns, False
        if rest.going.sum() <= REST_CLASS_BYTES:
            columns, classes = self._rest_classes.get(split), True
            if columns is None:
                columns = self._rest_classes[split] = [self.byte_class[c] for c in rest.columns]
        if pick is None:  # all of them: each place's column as it is, until some are dropped
            index, going = None, rest.going
            current = places[rest.leaves[:rest.walked]]
            ended_ids, ended_leaves = rest.ids[rest.walked:], rest.leaves[rest.walked:]
        else:
            cut = np.searchsorted(pick, rest.walked)
            index, ended = pick[:cut], pick[cut:]
            going = going_counts(rest.lengths[index])
            current = places[rest.leaves[index]]
            ended_ids, ended_leaves = rest.ids[ended], rest.leaves[ended]
        index, current = self._step_longest_first(current, index, going, 0, columns,
                                                  rest.lengths, classes)
        allowed = np.flatnonzero(current)
        found = rest.ids[index[allowed]]
        following = current[allowed].astype(np.int64) // width
        ends = chain[ended_leaves].astype(np.int64)  # no rest: where the characters led
        live_ends = ends != 0
        return (np.concatenate([found, ended_ids[live_ends]]),
                np.concatenate([following, ends[live_ends]]))

    @functools.cached_property
    def _character_shapes(self) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
        """``TokenBytes.character_shapes`` under this automaton's classes: the shapes' classes
        per position (as the table's type; 0 past the end), each character's shape, and per
        position the shapes longer than it."""
        high = self.byte_class[0x80:]
        labels, first, numbered = np.unique(high, return_index=True, return_inverse=True)
        by_appearance = np.argsort(first)
        rank = np.empty_like(by_appearance)
        rank[by_appearance] = np.arange(len(by_appearance))
        distinct, shape_of, longer = self.tokens.character_shapes(rank[numbered.reshape(-1)])
        actual = labels[by_appearance]  # a numbered class's class in this automaton
        shapes = [np.where(distinct[:, k] >= 0, actual[np.maximum(distinct[:, k], 0)], 0)
                  .astype(np.int64) for k in range(4)]
        return shapes, shape_of, longer

    def _walk_in_place(self, row: np.ndarray, classes: list, going: list,
                       ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, next states) of the tokens ``ids`` (longest first; ``classes[i]`` is the
        ``i``-th byte class of the first ``going[i]``) that the state ``row`` takes, stepped
        together a byte position at a time in one array, without compaction."""
        if not classes:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        table = self.table
        current = row[classes[0]]
        for i in range(1, len(classes)):
            stepping = current[:going[i]]
            stepping += classes[i]
            np.take(table, stepping, out=stepping)
        allowed = np.flatnonzero(current)
        return ids[allowed], current[allowed].astype(np.int64) // self.width

    def _run(self, state: int, row: np.ndarray):
        """(the run's states from ``state`` on, bool [256] of the bytes that step along it)
        where at least ``RUN_BYTES`` bytes step ``state`` to one state and keep stepping together
        for as long as any token is, for two bytes at least: a string's characters, free (the
        state loops: found first, by the bytes that lead back to it) or counted (``maxLength``:
        one state per character). None elsewhere (a structural state, the last byte of a
        character)."""
        width, plain = self.width, self.plain
        following = row[self.byte_class]  # (``row``: the state's row of ``plain``)
        taken = following[following != 0]
        if len(taken) < RUN_BYTES:
            return None
        looping = following == state
        if np.count_nonzero(looping) >= RUN_BYTES:  # a free string: it stays where it is
            return np.full(len(self.tokens.columns) + 1, state, np.int64), looping
        targets, counts = np.unique(taken, return_counts=True)
        if not len(counts) or counts.max() < RUN_BYTES:
            return None
        target = int(targets[np.argmax(counts)])
        same = following == target
        if not plain.item(target * width + int(self.byte_class[np.argmax(same)])):
            return None  # a run of one byte places nothing a walk would not
        kinds = np.unique(self.byte_class[same]).tolist()
        longest = len(self.tokens.columns)
        chain = [state, target]
        while len(chain) <= longest:  # follow one of the bytes' classes ...
            step = plain.item(chain[-1] * width + kinds[0])
            if step == chain[-1]:  # a loop (or the dead state): it stays there
                chain.extend([step] * (longest + 1 - len(chain)))
            else:
                chain.append(step)
        steps = np.array(chain, dtype=np.int64)
        after = plain[steps[1:-1, None] * width + np.array(kinds)[None, :]]
        if not (after == steps[2:, None]).all():
            return None  # ... and where the others part ways within a token's length, walk
        return steps, same

    def _walk_few(self, state: int, row: np.ndarray,
                  position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_walk_positions``, but where the longest token's first byte leads to a state that
        every byte leading there loops on (JSON whitespace in ``flexible`` mode: the state
        itself, or the one its first blank leads to, after ``{`` or a number), the tokens made
        only of those bytes end there without a walk: Llama-3 has whitespace runs of up to 128
        bytes, and after ``{`` they are most of the tokens that survive two bytes."""
        tokens, width = self.tokens, self.width
        lengths = tokens.lengths[position]
        if not len(position) or lengths.max() <= LONG_FEW:
            return self._walk_positions(row, position)
        following = row[self.byte_class]
        target = int(following[tokens.columns[0][position[np.argmax(lengths)]]])
        same = following == target
        if not target or not (self.table[self.byte_class[same].astype(np.int64) + target]
                              == target).all():
            return self._walk_positions(row, position)
        made = tokens.made_of(same)[position]
        ids, states = self._walk_positions(row, position[~made])
        ended = tokens.ids[position[made]]
        return (np.concatenate([ended, ids]),
                np.concatenate([np.full(len(ended), target // width, np.int64), states]))

    def _walk_positions(self, row: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, next states) of the tokens at ``position`` that the state ``row`` takes, stepped
        together, longest first (``_step_longest_first``)."""
        tokens, byte_class = self.tokens, self.byte_class
        position = np.sort(position)
        current = row[byte_class[tokens.columns[0][position]]]
        alive = current != 0
        position, current = position[alive], current[alive]
        going = going_counts(tokens.lengths[position])
        settled = self._loop_after_first(position, current, going)
        if settled is not None:  # long tokens whose other bytes all loop where the first led
            done = (tokens.ids[position[settled]], current[settled].astype(np.int64) // self.width)
            position, current = position[~settled], current[~settled]
            going = going_counts(tokens.lengths[position])
        position, current = self._step_longest_first(current, position, going, 1,
                                                     tokens.columns, tokens.lengths)
        allowed = np.flatnonzero(current)
        ids = tokens.ids[position[allowed]]
        following = current[allowed].astype(np.int64) // self.width
        if settled is not None:
            return np.concatenate([done[0], ids]), np.concatenate([done[1], following])
        return ids, following

    def _step_longest_first(self, current: np.ndarray, index: np.ndarray | None,
                            going: Sequence[int], place: int, columns: list,
                            lengths: np.ndarray, classes: bool = False
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Step ``current`` (premultiplied states of byte strings ordered longest first) through
        their bytes from ``place`` on, in place: ``columns[i]`` holds the ``i``-th byte of those
        longer than ``i`` (already as byte classes where ``classes``) and ``lengths`` their
        lengths, both in that order; ``index`` picks the strings stepped (sorted; None: all of
        them, each column as it is), ``going[i]`` how many of those are longer than ``i``. The
        strings still going at a place are a prefix, stepped as one slice (a dead one stays in
        the dead state); the arrays shrink where most of that prefix has died. Returns
        (``index``, the states after each string's last byte, 0 where it died)."""
        table, byte_class = self.table, self.byte_class
        while place < len(going) and going[place]:
            count = going[place]
            stepping = current[:count]
            column = columns[place]
            column = column[:count] if index is None else column[index[:count]]
            stepping += column if classes else byte_class[column]
            np.take(table, stepping, out=stepping)
            live = np.count_nonzero(stepping)
            if live * 4 < count and count > 64:  # most died: drop them
                keep = current != 0
                index = np.flatnonzero(keep) if index is None else index[keep]
                current = current[keep]
                going = np.concatenate([going[:place + 1], going_counts(lengths[index])[place + 1:]])
            elif not live:
                break  # every one still going is dead; the shorter ones are done
            place += 1
        if index is None:
            index = np.arange(len(current))
        return index, current

    def _loop_after_first(self, position: np.ndarray, current: np.ndarray,
                          going: list[int]) -> np.ndarray | None:
        """bool per token at ``position`` (sorted, longest first; ``current``: the states its
        first byte led to; ``going``: ``going_counts`` of their lengths): it is longer than
        ``LONG_FEW`` and each of its other bytes loops on that state, so it ends there (a
        whitespace run after a number, where the state before the run does not loop on it: up
        to 128 numpy steps otherwise). None where no token is that long."""
        long = int(going[LONG_FEW]) if len(going) > LONG_FEW else 0
        if not long:
            return None
        tokens = self.tokens
        lengths = tokens.lengths[position[:long]]
        offsets = np.arange(1, int(lengths[0]))
        inside = offsets[None, :] < lengths[:, None]
        where = tokens.starts[position[:long]][:, None] + np.where(inside, offsets[None, :], 0)
        states = current[:long][:, None]
        stays = (self.table[states + self.byte_class[tokens.flat[where]]] == states) | ~inside
        settled = np.zeros(len(position), dtype=bool)
        settled[:long] = stays.all(axis=1)
        return settled


def pack_bitmask(mask: np.ndarray) -> np.ndarray:
    """Boolean mask -> int32 words, bit ``i % 32`` of word ``i // 32`` is token ``i``."""
    words = (len(mask) + 31) // 32
    packed = np.zeros(words * 4, np.uint8)
    packed[:(len(mask) + 7) // 8] = np.packbits(mask, bitorder="little")
    return packed.view(np.int32)


def _worst(placed: Placed | None, following: np.ndarray, distance: np.ndarray) -> int:
    """The largest ``distance`` after an allowed token (``placed``: a string's characters;
    ``following``: where the others lead)."""
    worst = int(distance[following].max()) if len(following) else 0
    if placed is not None:
        worst = max(worst, placed.worst(distance))
    return worst


class MaskStore:
    """Per-state masks of one (automaton, tokenizer) pair, computed on first visit, LRU-bounded.

    ``bound`` (each state's distance in single-byte tokens, known now) is an upper bound on
    ``distance`` (in tokens, ``compiled.token_distances``), which ``exact()`` computes on first
    need. Each entry keeps its state's worst distance after an allowed token, from whichever was
    known when it was made; the bound's is replaced by the exact one when a budget comes near
    it (``needs_budget_mask``)."""

    def __init__(self, automaton: ByteAutomaton, tokens: TokenBytes, bound: np.ndarray,
                 exact: Callable[[], np.ndarray], eos_token_id: int,
                 max_bytes: int = DEFAULT_MASK_BYTES):
        self.automaton = automaton
        self.tokens = tokens
        self.walker = Walker(automaton, tokens)
        self.bound = bound
        self._exact = exact
        self._distance: np.ndarray | None = None
        self.eos_token_id = eos_token_id
        self.vocab_size = tokens.vocab_size
        words = (self.vocab_size + 31) // 32
        self.max_entries = max(1, max_bytes // (words * 4))
        # state -> (packed bitmask, worst distance after any allowed token, whether exact)
        self._entries: OrderedDict[int, tuple[np.ndarray, int, bool]] = OrderedDict()
        self._last_walk: tuple[int, tuple] | None = None
        self._lock = threading.Lock()
        self._distance_lock = threading.Lock()
        self.walks = 0  # states walked so far (a cache miss each)

    @property
    def distance(self) -> np.ndarray:
        """Each state's distance to acceptance in tokens (computed on the first read)."""
        distance = self._distance
        if distance is None:
            with self._distance_lock:
                if self._distance is None:
                    self._distance = self._exact()
                distance = self._distance
        return distance

    def entry(self, state: int) -> tuple[np.ndarray, int, bool]:
        """(packed bitmask, worst distance after any allowed token, whether that worst is
        exact or the bound's) of ``state``."""
        with self._lock:  # an eviction between get and move_to_end would raise KeyError
            entry = self._entries.get(state)
            if entry is not None:
                self._entries.move_to_end(state)
                return entry
        placed, ids, following = self._walk(state)
        final = self.automaton.is_final[state]
        compiled = self.walker.compiled
        if compiled is not None:  # the ids set as bits, in one pass
            words = (np.zeros((self.vocab_size + 31) // 32, np.uint32) if placed is None
                     else placed.packed.view(np.uint32).copy())
            compiled.set_bits(ids, words)
            eos_bit = np.uint32(1 << (self.eos_token_id & 31))
            if final:
                words[self.eos_token_id >> 5] |= eos_bit
            else:
                words[self.eos_token_id >> 5] &= ~eos_bit
            packed = words.view(np.int32)
        else:
            bits = np.zeros(self.vocab_size, dtype=bool) if placed is None else placed.bits.copy()
            bits[ids] = True
            bits[self.eos_token_id] = final
            packed = pack_bitmask(bits)
        exact = self._distance
        worst = _worst(placed, following, self.bound if exact is None else exact)
        entry = (packed, worst, exact is not None)
        with self._lock:
            self._entries[state] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry

    def needs_budget_mask(self, state: int, tokens_left: int) -> bool:
        """True when some token of ``state`` leads where no valid ending fits in ``tokens_left``."""
        packed, worst, exact = self.entry(state)
        if tokens_left >= worst or exact:
            return tokens_left < worst
        placed, _, following = self._walk(state)  # near the budget: the exact worst, kept
        worst = _worst(placed, following, self.distance)
        with self._lock:
            if state in self._entries:
                self._entries[state] = (packed, worst, True)
        return tokens_left < worst

    def budgeted(self, state: int, tokens_left: int) -> np.ndarray:
        """Boolean mask of the tokens after which acceptance stays within ``tokens_left`` tokens."""
        placed, ids, following = self._walk(state)
        distance = self.distance
        if placed is not None:
            bits = placed.within(distance, tokens_left)
        else:
            bits = np.zeros(self.vocab_size, dtype=bool)
        bits[ids[distance[following] <= tokens_left]] = True
        bits[self.eos_token_id] = self.automaton.is_final[state]
        return bits

    def _walk(self, state: int) -> tuple[Placed | None, np.ndarray, np.ndarray]:
        last = self._last_walk  # a budgeted mask near the end of a budget re-reads its state
        if last is not None and last[0] == state:
            return last[1]
        placed, ids, following = self.walker.walk_parts(state)
        keep = ids != self.eos_token_id
        parts = (placed, ids[keep], following[keep])
        self._last_walk = (state, parts)
        self.walks += 1
        return parts

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["DEFAULT_MASK_BYTES", "MaskStore", "TokenBytes", "Walker", "pack_bitmask"]
