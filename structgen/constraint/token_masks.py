"""Lazy token masks: a state's allowed tokens, computed on its first visit and kept, bounded.

``TokenBytes`` holds a tokenizer's ordinary tokens as numpy arrays, built once per tokenizer.
``Walker.walk`` steps every token that can start in a state through a ``ByteAutomaton`` at once,
one byte position per numpy gather: a token is allowed when all its bytes step to a live state.
Measured on the Llama-3 vocabulary (128k tokens, 831k bytes): a state inside a free string, where
nearly every token is allowed, about 2 ms; a structural state (after ``{``, between fields),
where only the tokens that survive their first two bytes are stepped, 0.1-1.5 ms (whitespace
runs that loop on the state are split off first, not stepped byte by byte).

``MaskStore`` keeps, per state visited, the packed bitmask and the largest distance to acceptance
any allowed token leads to (the budget rule needs a state's walk again only when fewer tokens
are left than that). It is shared by every matcher of one constraint, so a batch job over one
schema computes each state once and then copies masks. Entries are evicted least recently used
once they hold ``max_bytes`` (default 64 MiB: 4,096 states at Llama-3's 128k vocabulary).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from structgen.constraint.automaton import ByteAutomaton, concatenated_ranges
from structgen.constraint.vocabulary import TokenMap

DEFAULT_MASK_BYTES = 64 << 20
FOUND_LONGEST = 32  # the longest tokens found_in looks for
SPLITS_KEPT = 16
#: A state where this many bytes run together takes the tokens made of them without a walk.
RUN_BYTES = 32
#: Where the few tokens a state may take are at most this long, they are stepped as they are;
#: longer ones that loop on the state (whitespace runs) are split off first.
LONG_FEW = 16


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
        order = kept[np.lexsort((tokens.ids[kept], -tokens.lengths[kept]))]
        self.vocab_size = vocab_size
        self.ids, self.lengths = tokens.ids[order], tokens.lengths[order]
        starts = tokens.starts[order]
        flat = np.frombuffer(tokens.flat, np.uint8)
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
        self.by_pair = np.argsort(pairs, kind="stable")
        self.pair_start = np.searchsorted(pairs[self.by_pair], np.arange(256 * 257 + 1))
        self.single_bytes = np.zeros(256, dtype=bool)
        self.single_bytes[first[self.lengths == 1]] = True
        self._bytes = tokens
        self._multi: tuple[int, np.ndarray, np.ndarray] | None = None
        self._splits: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._splits_lock = threading.Lock()

    def split(self, byte_set: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions of the tokens whose bytes all lie in ``byte_set``, bool [256], positions of
        the others), computed once per byte set and kept for the last ``SPLITS_KEPT``: the byte
        sets a state loops on (a free string's characters, JSON whitespace) recur across states
        and schemas."""
        return self._split_of(byte_set)[:2]

    def made_of(self, byte_set: np.ndarray) -> np.ndarray:
        """bool per position: the token's bytes all lie in ``byte_set`` (kept like ``split``)."""
        return self._split_of(byte_set)[2]

    def _split_of(self, byte_set: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = np.packbits(byte_set).tobytes()
        with self._splits_lock:
            split = self._splits.get(key)
            if split is not None:
                self._splits.move_to_end(key)
                return split
        inside = np.ones(len(self.ids), dtype=bool)
        for column in self.columns:
            going = inside[:len(column)]
            going &= byte_set[column]
        split = (np.flatnonzero(inside), np.flatnonzero(~inside), inside)
        with self._splits_lock:
            self._splits[key] = split
            while len(self._splits) > SPLITS_KEPT:
                self._splits.popitem(last=False)
        return split

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


_HASH_BASE = np.uint64(0x100000001B3)  # the FNV prime: any odd 64-bit multiplier spreads bytes


class Walker:
    """``walk`` for one (automaton, tokenizer) pair: the table with state numbers premultiplied
    by the class count (a step is one add and one gather) and the tokens' bytes as classes."""

    def __init__(self, automaton: ByteAutomaton, tokens: TokenBytes):
        self.tokens = tokens
        self.width = automaton.table.shape[1]
        dtype = np.int32 if automaton.table.size < 2**31 else np.int64
        self.table = (automaton.table.astype(dtype) * self.width).reshape(-1)
        self.byte_class = automaton.byte_class
        self._splits: dict[bytes, tuple] = {}  # a run's byte set -> _split's arrays
        self._lock = threading.Lock()

    @functools.cached_property
    def classes(self) -> list[np.ndarray]:
        """Every token's bytes as byte classes, per position (uint8: 831 KB for Llama-3's
        vocabulary; an addition widens it to the table's type). Made on the first walk that
        steps most of the vocabulary (2-3 ms), which a structural first state never needs."""
        return [self.byte_class[column] for column in self.tokens.columns]

    def walk(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids of the tokens allowed in ``state``, the state each leads to); EOS included if it
        has bytes of its own. Where only a few tokens survive their first two bytes (looked up
        by byte pair, not stepped), those are stepped, dropping the dead. Where most may, the
        whole vocabulary steps in place a byte position at a time (every token's bytes once:
        831k for Llama-3, about 3 ms), except in a string: there the tokens made of its plain
        characters end a known number of states down the string (``_run``), and only the others
        (about a quarter of Llama-3's) are stepped. (Stepping the
        vocabulary's prefix trie instead, 275k nodes for Llama-3, measured no faster: its 128
        levels cost four numpy calls each.)"""
        tokens, width = self.tokens, self.width
        row = self.table[state * width:(state + 1) * width]
        if not tokens.columns:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
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
            return self._walk_few(state, row, tokens.by_pair[concatenated_ranges(starts, sizes)])
        run = self._run(state, row)
        if run is None:  # most tokens: no compaction, in place
            return self._walk_in_place(row, self.classes, tokens.going, tokens.ids)
        chain, (inside_ids, inside_lengths, outside_ids, going, classes) = run
        ids, following = self._walk_in_place(row, classes, going, outside_ids)
        if (chain == state).all():  # the string loops: its tokens all lead back here
            ends = np.full(len(inside_ids), state, np.int64)
        else:  # counted: each token ends len(token) states on, dead past the run's end
            dead = np.flatnonzero(chain == 0)  # a suffix of the run: the dead state stays dead
            if len(dead):  # tokens are longest first: those too long for the run are a prefix
                kept = np.searchsorted(-inside_lengths, -int(dead[0]), side="right")
                inside_ids, inside_lengths = inside_ids[kept:], inside_lengths[kept:]
            ends = chain[inside_lengths]
        return np.concatenate([inside_ids, ids]), np.concatenate([ends, following])

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
        """(the run's states from ``state`` on, its split) where at least ``RUN_BYTES`` bytes
        step ``state`` to one state and keep stepping together for as long as any token is: a
        string's characters, free (the state loops) or counted (``maxLength``: one state per
        character). A token made of those bytes then ends ``len(token)`` states down the run,
        with no walk. None elsewhere."""
        width, table = self.width, self.table
        following = row[self.byte_class]
        targets, counts = np.unique(following[following != 0], return_counts=True)
        if not len(counts) or counts.max() < RUN_BYTES:
            return None
        same = following == targets[np.argmax(counts)]
        kinds = np.unique(self.byte_class[same]).tolist()
        longest = len(self.tokens.columns)
        chain = [state * width, int(targets[np.argmax(counts)])]
        while len(chain) <= longest:  # follow one of the bytes' classes ...
            step = table.item(chain[-1] + kinds[0])
            if step == chain[-1]:  # a loop (or the dead state): it stays there
                chain.extend([step] * (longest + 1 - len(chain)))
            else:
                chain.append(step)
        steps = np.array(chain, dtype=np.int64)
        after = table[steps[1:-1, None] + np.array(kinds)[None, :]]
        if not (after == steps[2:, None]).all():
            return None  # ... and where the others part ways within a token's length, walk
        return steps // width, self._split(same)

    def _split(self, byte_set: np.ndarray):
        """(ids and lengths of the tokens made of ``byte_set``'s bytes, ids of the others, and
        the others' byte classes as ``going``/``classes`` columns like the whole vocabulary's),
        kept per byte set."""
        key = np.packbits(byte_set).tobytes()
        with self._lock:
            split = self._splits.get(key)
        if split is None:
            inside, outside = self.tokens.split(byte_set)  # positions, longest tokens first
            going = going_counts(self.tokens.lengths[outside])
            classes = [self.byte_class[column[outside[:n]]]
                       for column, n in zip(self.tokens.columns, going)]
            split = (self.tokens.ids[inside], self.tokens.lengths[inside], self.tokens.ids[outside],
                     going, classes)
            with self._lock:
                self._splits[key] = split
                while len(self._splits) > SPLITS_KEPT:
                    self._splits.pop(next(iter(self._splits)))
        return split

    def _walk_few(self, state: int, row: np.ndarray,
                  position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_walk_positions``, but where ``state`` loops on some bytes (JSON whitespace in
        ``flexible`` mode), the tokens made only of those lead back to it without a walk: they
        are the long ones (Llama-3 has whitespace runs of up to 128 bytes, each a numpy step)."""
        loops = row[self.byte_class] == state * self.width
        if not loops.any() or not len(position) or self.tokens.lengths[position].max() <= LONG_FEW:
            return self._walk_positions(row, position)
        looping = self.tokens.made_of(loops)[position]
        ids, following = self._walk_positions(row, position[~looping])
        back = self.tokens.ids[position[looping]]
        return (np.concatenate([back, ids]),
                np.concatenate([np.full(len(back), state, np.int64), following]))

    def _walk_positions(self, row: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, next states) of the tokens at ``position`` that the state ``row`` takes, stepped
        together and dropped as they finish or die."""
        tokens, table, byte_class = self.tokens, self.table, self.byte_class
        current = row[byte_class[tokens.columns[0][position]]]
        alive = current != 0
        position, current = position[alive], current[alive]
        done_positions, done_states = [], []
        depth = 1
        while position.size:
            finished = tokens.lengths[position] == depth
            if finished.any():
                done_positions.append(position[finished])
                done_states.append(current[finished])
                position, current = position[~finished], current[~finished]
                if not position.size:
                    break
            current = table[current + byte_class[tokens.columns[depth][position]]]
            alive = current != 0
            if not alive.all():
                position, current = position[alive], current[alive]
            depth += 1
        if not done_positions:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (tokens.ids[np.concatenate(done_positions)],
                np.concatenate(done_states).astype(np.int64) // self.width)


def pack_bitmask(mask: np.ndarray) -> np.ndarray:
    """Boolean mask -> int32 words, bit ``i % 32`` of word ``i // 32`` is token ``i``."""
    words = (len(mask) + 31) // 32
    packed = np.packbits(mask, bitorder="little")
    packed = np.pad(packed, (0, words * 4 - len(packed)))
    return packed.view(np.int32)


class MaskStore:
    """Per-state masks of one (automaton, tokenizer) pair, computed on first visit, LRU-bounded."""

    def __init__(self, automaton: ByteAutomaton, tokens: TokenBytes, distance: np.ndarray,
                 eos_token_id: int, max_bytes: int = DEFAULT_MASK_BYTES):
        self.automaton = automaton
        self.tokens = tokens
        self.walker = Walker(automaton, tokens)
        self.distance = distance
        self.eos_token_id = eos_token_id
        self.vocab_size = tokens.vocab_size
        words = (self.vocab_size + 31) // 32
        self.max_entries = max(1, max_bytes // (words * 4))
        self._entries: OrderedDict[int, tuple[np.ndarray, int]] = OrderedDict()
        self._last_walk: tuple[int, np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()
        self.walks = 0  # states walked so far (a cache miss each)

    def entry(self, state: int) -> tuple[np.ndarray, int]:
        """(packed bitmask, worst distance after any allowed token) of ``state``."""
        with self._lock:  # an eviction between get and move_to_end would raise KeyError
            entry = self._entries.get(state)
            if entry is not None:
                self._entries.move_to_end(state)
                return entry
        ids, following = self._walk(state)
        bits = np.zeros(self.vocab_size, dtype=bool)
        bits[ids] = True
        if self.automaton.is_final[state]:
            bits[self.eos_token_id] = True
        worst = int(self.distance[following].max()) if len(following) else 0
        entry = (pack_bitmask(bits), worst)
        with self._lock:
            self._entries[state] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry

    def budgeted(self, state: int, tokens_left: int) -> np.ndarray:
        """Boolean mask of the tokens after which acceptance stays within ``tokens_left`` tokens."""
        ids, following = self._walk(state)
        bits = np.zeros(self.vocab_size, dtype=bool)
        bits[ids[self.distance[following] <= tokens_left]] = True
        if self.automaton.is_final[state]:
            bits[self.eos_token_id] = True
        return bits

    def _walk(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        last = self._last_walk  # a budgeted mask near the end of a budget re-reads its state
        if last is not None and last[0] == state:
            return last[1], last[2]
        ids, following = self.walker.walk(state)
        keep = ids != self.eos_token_id
        ids, following = ids[keep], following[keep]
        self._last_walk = (state, ids, following)
        self.walks += 1
        return ids, following

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["DEFAULT_MASK_BYTES", "MaskStore", "TokenBytes", "Walker", "pack_bitmask"]
