"""Lazy token masks: a state's allowed tokens, computed on its first visit and kept, bounded.

``TokenBytes`` holds a tokenizer's ordinary tokens as numpy arrays, built once per tokenizer.
``Walker.walk`` steps every token that can start in a state through a ``ByteAutomaton`` at once,
one byte position per numpy gather: a token is allowed when all its bytes step to a live state.
Measured on the Llama-3 vocabulary (128k tokens, 831k bytes): a state inside a free string, where
nearly every token is allowed, about 2 ms; a structural state (after ``{``, between fields),
where only the tokens whose first byte the state takes are stepped, 0.1-1.5 ms.

``MaskStore`` keeps, per state visited, the packed bitmask and the largest distance to acceptance
any allowed token leads to (the budget rule needs a state's walk again only when fewer tokens
are left than that). It is shared by every matcher of one constraint, so a batch job over one
schema computes each state once and then copies masks. Entries are evicted least recently used
once they hold ``max_bytes`` (default 64 MiB: 4,096 states at Llama-3's 128k vocabulary).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from structgen.constraint.automaton import ByteAutomaton

DEFAULT_MASK_BYTES = 64 << 20


class TokenBytes:
    """A tokenizer's ordinary tokens (id -> bytes) as the arrays ``walk`` reads, built once per
    tokenizer: tokens ordered longest first, so the tokens still going at byte ``i`` are a prefix
    (``going[i]`` of them) and ``columns[i]`` is their ``i``-th bytes."""

    def __init__(self, token_bytes: dict[int, bytes], vocab_size: int):
        kept = {i: value for i, value in token_bytes.items() if value and 0 <= i < vocab_size}
        ids = np.fromiter(kept.keys(), np.int64, len(kept))
        lengths = np.fromiter(map(len, kept.values()), np.int64, len(kept))
        order = np.lexsort((ids, -lengths))
        self.vocab_size = vocab_size
        self.ids, self.lengths = ids[order], lengths[order]
        values = list(kept.values())
        flat = np.frombuffer(b"".join(values[i] for i in order.tolist()), dtype=np.uint8)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        longest = int(self.lengths.max()) if len(order) else 0
        self.going = [int(np.count_nonzero(self.lengths > i)) for i in range(longest)]
        self.columns = [flat[offsets[:n] + i] for i, n in enumerate(self.going)]
        first = self.columns[0] if self.columns else np.zeros(0, np.uint8)
        self.by_first = np.argsort(first, kind="stable")  # positions, grouped by first byte
        self.first_start = np.searchsorted(first[self.by_first], np.arange(257))
        self.single_bytes = np.zeros(256, dtype=bool)
        self.single_bytes[first[self.lengths == 1]] = True
        self._bytes = kept
        self._multi: set[bytes] | None = None

    def bytes_of(self, token_id: int) -> bytes | None:
        return self._bytes.get(token_id)

    def found_in(self, text: bytes, longest: int = 32) -> list[bytes]:
        """The distinct multi-byte tokens (up to ``longest`` bytes) that occur in ``text``,
        longest first: a set lookup per substring, so cheap for a short answer."""
        if self._multi is None:
            self._multi = {value for value in self._bytes.values() if len(value) > 1}
        found = {text[start:start + width] for start in range(len(text))
                 for width in range(2, min(longest, len(text) - start) + 1)}
        return sorted(found & self._multi, key=lambda value: (-len(value), value))


class Walker:
    """``walk`` for one (automaton, tokenizer) pair: the table with state numbers premultiplied
    by the class count (a step is one add and one gather) and the tokens' bytes as classes."""

    def __init__(self, automaton: ByteAutomaton, tokens: TokenBytes):
        self.tokens = tokens
        self.width = automaton.table.shape[1]
        dtype = np.int32 if automaton.table.size < 2**31 else np.int64
        self.table = (automaton.table.astype(dtype) * self.width).reshape(-1)
        self.byte_class = automaton.byte_class
        # uint8: 831 KB for Llama-3's vocabulary (an addition widens it to the table's type)
        self.classes = [self.byte_class[column] for column in tokens.columns]

    def walk(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids of the tokens allowed in ``state``, the state each leads to); EOS included if it
        has bytes of its own. A state where most tokens may start steps the whole vocabulary a
        byte position at a time (every token's bytes once: 831k for Llama-3, about 2 ms);
        elsewhere only the tokens whose first byte the state takes, dropping the dead. (Stepping
        the vocabulary's prefix trie instead, 275k nodes for Llama-3, measured no faster: its
        128 levels cost four numpy calls each.)"""
        tokens, table, width = self.tokens, self.table, self.width
        row = table[state * width:(state + 1) * width]
        if not self.classes:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        firsts = np.flatnonzero(row[self.byte_class])  # the first bytes the state takes
        sizes = tokens.first_start[firsts + 1] - tokens.first_start[firsts]
        if sizes.sum() * 4 > len(tokens.ids):  # most tokens: no compaction, in place
            current = row[self.classes[0]]
            for i in range(1, len(self.classes)):
                going = current[:tokens.going[i]]
                going += self.classes[i]
                np.take(table, going, out=going)
            allowed = np.flatnonzero(current)
            return tokens.ids[allowed], current[allowed] // width
        starts = tokens.first_start[firsts]
        position = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        position = tokens.by_first[position + np.arange(int(sizes.sum()))]
        current = row[self.classes[0][position]]
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
            current = table[current + self.classes[depth][position]]
            alive = current != 0
            if not alive.all():
                position, current = position[alive], current[alive]
            depth += 1
        if not done_positions:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return tokens.ids[np.concatenate(done_positions)], np.concatenate(done_states) // width


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
