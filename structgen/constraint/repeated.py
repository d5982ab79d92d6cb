"""Repeated groups: determinised once, then spliced in once per place they lead to.

A regex cannot share a subexpression, so the schema compiler writes a value once per place it
may appear: a map's member before and after each comma, a ``$ref`` in every property that uses
it, a free value's arrays and objects four times per nesting level. outlines-core determinises
every copy, and its automaton keeps them all: 36k states for Github_easy o68821, whose minimal
automaton has 2k, built in 0.8 s.

So, for a long regex, the build replaces each long group (a ``(?:...)``, an object, an array or
a string value) that occurs more than once, and a JSON string's character in every plain
string, by a placeholder byte; lets outlines-core determinise that skeleton; builds each group's
own automaton once (the same way, for the groups inside it); and writes the group's states into
the skeleton's table in numpy: one copy per state the placeholder leads to. A state with a
placeholder transition takes the group's first transitions; the group's accepting states take
the transitions of the state it leads to, and one it cannot go on from is that state.

That is the same language only where it stays deterministic; ``Splices.splice`` checks it (the
group's first bytes start nothing else where it is entered, its accepting states continue with
nothing the state after it starts, and it cannot be empty). A refused group is written out and
the skeleton rebuilt (``MAX_REBUILDS``); past that the plain build decides. Placeholder bytes are
control bytes no JSON text holds, and only those the regex cannot match anywhere
(``free_bytes``).

Where the compiled loops are loaded (builds in the parent), the scan for groups and the reading
for free bytes are compiled passes over the regex's code points (``loops``); the compile worker
reads it in Python. Both find the same groups and bytes (``tests/test_repeated.py``).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable

import numpy as np

from structgen._sre import parse, sre_constants
from structgen.constraint.automaton import NO_COUNTERS
from structgen.constraint.counted import PLACEHOLDERS, class_covers

#: Regexes shorter than this determinise in milliseconds: built as they are.
MIN_REGEX = 4_096
#: Groups shorter than this are left in place (a build of their own costs more than the copies).
MIN_GROUP = 256
#: Skeletons rebuilt with a refused group written out, before the plain build decides.
MAX_REBUILDS = 3

#: Texts at least this long are scanned for tokens in numpy (``_tokens_in_numpy``), shorter ones
#: by the regex engine: numpy's fixed cost, about 80 µs, is more than the engine's whole scan
#: of a text this short; on a long text numpy takes half the time or less.
NUMPY_SCAN = 2_048

# The tokens the scan for groups acts on: a bar, an opening (non-capturing or not) and a closing
# parenthesis, a quote, and an escaped brace or bracket; outside classes, not escaped.
# ``_SCAN`` finds them with the regex engine, one capture group each (``match.lastindex`` says
# which). What lies between them is stepped over inside the match: other characters and
# escapes, and classes whole (with their escapes). That stretch is taken whole (a lookahead's
# capture, then a backreference: an atomic group, which Python 3.10 lacks), and the end of the
# text is a token too, so no match ever backtracks into it or is retried further on: the scan
# is linear (a nested quantifier was exponential on a long stretch with no token after it).
_SCAN = re.compile(r'(?=((?:[^\\\[()|"]+|\\[^{}\[\]]|\[\^?\]?(?:\\.|[^\]\\])*\]|\[|\\\Z)*))\1'
                   r'(?:(\|)|(\(\?:)|(\()|(\))|(")|(\\\{)|(\\\[)|(\\\})|(\\\])|\Z)', re.S)
_END = 1
(_BAR, _GROUP, _CAPTURE, _CLOSE, _QUOTE, _OBJECT, _ARRAY, _OBJECT_END, _ARRAY_END) = range(2, 11)
_PLAIN_TOKEN = np.zeros(256, np.uint8)
_PLAIN_TOKEN[[ord("|"), ord("("), ord(")"), ord('"')]] = [_BAR, _CAPTURE, _CLOSE, _QUOTE]
_ESCAPED_TOKEN = np.zeros(256, np.uint8)
_ESCAPED_TOKEN[[ord("{"), ord("["), ord("}"), ord("]")]] = [_OBJECT, _ARRAY, _OBJECT_END,
                                                            _ARRAY_END]
_TOKEN_LENGTH = np.array([0, 0, 1, 3, 1, 1, 1, 2, 2, 2, 2])
_CLOSER = {_OBJECT: _OBJECT_END, _ARRAY: _ARRAY_END, _QUOTE: _QUOTE}
# What follows a plain string's repeated character: its count, then the closing quote.
_CLOSES_A_STRING = re.compile(r'(?:[*+]|\{\d+(?:,\d*)?\})"')
# A quoted literal: characters and escaped punctuation only, no class, group or escaped code.
_QUOTED_LITERAL = re.compile(r'"(?:[^"\\\[(]|\\[^0-9A-Za-z])*"')


def group_spans(regex: str, also: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    r"""Spans of the groups of ``regex`` that could be shared, at every depth, in the order they
    close: a ``(?:...)`` at least ``MIN_GROUP`` long or as long as one of ``also``; an object's
    ``\{...\}``, an array's ``\[...\]`` or a string's ``"..."`` at least ``MIN_GROUP`` long
    that could stand alone (balanced in parentheses, no ``|`` of its own, no quantifier after
    it). The compiled loops scan the same way in one pass over the code points
    (``compiled_automaton.group_spans``, which ``repeated_groups`` calls where they are loaded),
    about a tenth of the time on a long regex."""
    frames: list[list] = []  # [start, the token that opened it, saw a bar of its own]
    spans = []
    for token, token_start, end in zip(*_tokens(regex)):
        if token == _BAR:
            # the bar splits the innermost parenthesis, and every brace or quote opened in it
            for frame in reversed(frames):
                if frame[1] <= _CAPTURE:
                    break
                frame[2] = True
        elif token <= _CAPTURE:
            frames.append([token_start, token, False])
        elif token == _CLOSE:
            while frames and frames[-1][1] > _CAPTURE:
                frames.pop()  # a brace left open inside the group: not a group of its own
            if frames:
                start, opened, _ = frames.pop()
                if opened == _GROUP and (end - start >= MIN_GROUP or end - start in also):
                    spans.append((start, end))
        elif frames and frames[-1][1] > _CAPTURE and _CLOSER[frames[-1][1]] == token:
            start, _, barred = frames.pop()
            if (not barred and end - start >= MIN_GROUP
                    and (end == len(regex) or regex[end] not in "?*+{")):
                spans.append((start, end))
        elif token in _CLOSER:
            frames.append([token_start, token, False])
    return spans


def _code_points(regex: str) -> np.ndarray:
    """The regex's code points, one per character (read-only, over the encoded text)."""
    return np.frombuffer(regex.encode("utf-32-le"), np.uint32)


def repeated_groups(regex: str, always: frozenset[str] = frozenset(),
                    kept: set[str] | frozenset[str] = frozenset(), loops=None,
                    ) -> list[tuple[int, int]]:
    r"""Spans of the outermost groups (``group_spans``) whose text occurs as such a group more
    than once (the whole regex never counts). A ``(?:...)`` whose text is in ``always`` counts
    whatever its length and however often it occurs; none whose text is in ``kept`` does.
    With ``loops`` (the compiled loops) the whole choice is compiled passes, texts compared by
    a hash of each (``compiled_automaton.span_hashes``, ``choose_groups``), never sliced: a
    collision could only share a group that occurs once, or write out one that recurs, and
    either keeps the language."""
    also = tuple({len(text) for text in always})
    if loops is not None:
        return _chosen_by_loops(regex, always, kept, also, loops)
    spans, marked = [], set()  # the candidates; those whose text is in ``always``
    for start, end in group_spans(regex, also):
        is_always = end - start in also and regex[start:end] in always
        if (end - start < MIN_GROUP and not (is_always and _in_a_plain_string(regex, start, end))
                or (start, end) == (0, len(regex))):
            continue
        if is_always or _opens_a_value(regex, start):
            spans.append((start, end))
            if is_always:
                marked.add((start, end))
    # A text's count is read from the spans of its length, sliced when first asked: most spans
    # lie inside a chosen group, and most lengths are never asked for.
    of_length: dict[int, list[tuple[int, int]]] = {}
    for span in spans:
        of_length.setdefault(span[1] - span[0], []).append(span)
    counts: dict[int, Counter] = {}
    chosen: list[tuple[int, int]] = []
    for span in sorted(spans, key=lambda span: (span[0], -span[1])):
        if chosen and span[0] < chosen[-1][1]:
            continue  # inside a chosen group: its own build handles it
        text = regex[span[0]:span[1]]
        if text in kept:
            continue
        if span in marked:
            chosen.append(span)
            continue
        length = span[1] - span[0]
        if length not in counts:
            counts[length] = Counter(regex[start:end] for start, end in of_length[length])
        if counts[length][text] > 1:
            chosen.append(span)
    return chosen


def _chosen_by_loops(regex: str, always: frozenset[str], kept: set[str] | frozenset[str],
                     also: tuple[int, ...], loops) -> list[tuple[int, int]]:
    """``repeated_groups`` by the compiled loops: the spans, their hashes and the choice."""
    text = _code_points(regex)
    starts, ends = loops.group_spans(text, MIN_GROUP, np.array(also, np.int64))
    hashes = loops.span_hashes(text, starts, ends)
    chosen = loops.choose_groups(text, starts, ends, hashes, MIN_GROUP,
                                 *_text_hashes(always, loops), *_text_hashes(kept, loops))
    return list(zip(chosen[0].tolist(), chosen[1].tolist()))


def _text_hashes(texts, loops) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, ``span_hashes``) of ``texts``, hashed as spans of their concatenation."""
    texts = list(texts)
    lengths = np.array([len(text) for text in texts], np.int64)
    ends = np.cumsum(lengths)
    return lengths, loops.span_hashes(_code_points("".join(texts)), ends - lengths, ends)


def _tokens(regex: str) -> tuple[list[int], list[int], list[int]]:
    """The kind, start and end of each token of ``regex`` the group scan acts on, in order."""
    if len(regex) >= NUMPY_SCAN:
        return _tokens_in_numpy(regex)
    tokens: tuple[list[int], list[int], list[int]] = ([], [], [])
    for match in _SCAN.finditer(regex):
        token = match.lastindex
        if token == _END:
            break
        tokens[0].append(token)
        tokens[1].append(match.start(token))
        tokens[2].append(match.end())
    return tokens


def _tokens_in_numpy(regex: str) -> tuple[list[int], list[int], list[int]]:
    """``_tokens``, found over the whole text at once (the regex engine's scan took about
    0.15 ms per thousand characters in a Python loop over every token, over 0.1 s for a
    million-character regex). A backslash escapes the next character, in a class or out of it;
    a class runs from an unescaped ``[`` (a ``]`` right after it or after its ``^`` is a member)
    to the next unescaped ``]``, and a ``[`` inside a class or with no ``]`` after it is a
    plain character, as in ``re``."""
    # one byte per character, "?" for a non-ASCII one (no token is one)
    text = np.frombuffer(regex.encode("ascii", "replace"), np.uint8)
    size = len(text)
    if not size:
        return [], [], []
    backslashes = np.flatnonzero(text == 0x5C)
    in_run = np.arange(len(backslashes))
    starts_a_run = np.ones(len(backslashes), dtype=bool)
    starts_a_run[1:] = np.diff(backslashes) != 1
    run_start = np.maximum.accumulate(np.where(starts_a_run, in_run, 0))
    escaping = backslashes[(in_run - run_start) % 2 == 0]  # the 1st, 3rd, ... of a run
    escaped = np.zeros(size + 1, dtype=bool)
    escaped[escaping + 1] = True
    escaped = escaped[:size]
    opens = np.flatnonzero((text == 0x5B) & ~escaped)
    closes = np.flatnonzero((text == 0x5D) & ~escaped)
    padded = np.append(text, np.zeros(3, np.uint8))
    members = opens + 1  # where a class's members may begin
    members += padded[members] == 0x5E
    members += padded[members] == 0x5D
    ends = np.append(closes, -1)[np.searchsorted(closes, members)]  # -1: no ``]`` after it
    if len(opens) and (ends[-1] < 0 or (opens[1:] <= ends[:-1]).any()):
        opens, ends = map(np.asarray, _classes_in_order(opens.tolist(), ends.tolist()))
    kind = np.zeros(size, np.uint8)
    plain = np.flatnonzero(_PLAIN_TOKEN[text])
    plain = plain[~escaped[plain]]
    kind[plain] = _PLAIN_TOKEN[text[plain]]
    braces = escaping[_ESCAPED_TOKEN[padded[escaping + 1]] != 0]
    kind[braces] = _ESCAPED_TOKEN[text[braces + 1]]
    position = np.flatnonzero(kind)
    if len(opens):  # a token inside a class is a member of it
        last_open = np.searchsorted(opens, position, side="right") - 1
        position = position[(last_open < 0) | (ends[np.maximum(last_open, 0)] < position)]
    kinds = kind[position]
    group = position[kinds == _CAPTURE]
    group = group[(padded[group + 1] == 0x3F) & (padded[group + 2] == 0x3A)]
    if len(group) and not regex.isascii():  # a "?" there may stand for another character
        group = np.array([at for at in group.tolist() if regex[at + 1] == "?"], np.int64)
    kinds[np.searchsorted(position, group)] = _GROUP
    return kinds.tolist(), position.tolist(), (position + _TOKEN_LENGTH[kinds]).tolist()


def _classes_in_order(opens: list[int], ends: list[int]) -> tuple[list[int], list[int]]:
    """The classes among candidate ``[``s (each with the ``]`` that would close it), left to
    right: one inside a class before it is a plain character, and from one with no ``]`` after
    it on there are none."""
    classes: tuple[list[int], list[int]] = ([], [])
    last_end = -1
    for start, end in zip(opens, ends):
        if end < 0:
            break
        if start > last_end:
            classes[0].append(start)
            classes[1].append(end)
            last_end = end
    return classes


def build_with_shared_groups(regex: str, build: Callable[[str], dict],
                             taken: tuple[int, ...] = (), character: str | None = None,
                             groups: dict[str, dict | None] | None = None, loops=None,
                             share_character_from: int = 2) -> dict:
    """``build(regex)``, its repeated groups built once (``build_sharing``) where the regex is
    long, and each JSON string ``character`` (its regex, a group) where it occurs
    ``share_character_from`` times or more: its Unicode class costs outlines-core about 0.4 ms
    per place it is written. ``taken``: placeholder bytes already standing for something;
    ``groups``: automata of groups built before (kept by the worker between compiles);
    ``loops``: the compiled loops, which read the regex where they are loaded."""
    shared = character and regex.count(character) >= max(share_character_from, 2)
    always = frozenset([character] if shared else [])
    if len(regex) >= MIN_REGEX or always:
        free = free_bytes(regex, [b for b in PLACEHOLDERS if b not in taken], loops)
        try:
            arrays = build_sharing(regex, build, free, groups, always, loops) if free else None
        except ValueError:  # outlines-core refused a piece: the plain build decides
            arrays = None
        if arrays is not None:
            return arrays
    return build(regex)


# What ``free_bytes`` reads: a class, an escape, a group's opening, a dot. Every other
# character of the regex matches itself and is stepped over by the scan unless it is one of the
# candidates (``_pieces``).
_READ = (r"\[\^?\]?(?:\\.|[^\]\\])*\]|\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\U[0-9a-fA-F]{8}"
         r"|\\[0-7]{1,3}|\\.|\(\?.?|\.")


@functools.lru_cache(maxsize=16)
def _pieces(candidates: tuple[int, ...]) -> re.Pattern:
    written = "".join(re.escape(chr(b)) for b in candidates)
    return re.compile(f"{_READ}|[{written}]" if written else _READ, re.S)


def free_bytes(regex: str, candidates: list[int], loops=None) -> list[int]:
    """The bytes of ``candidates`` that nothing in ``regex`` can match (no literal, class,
    escape or ``.``): free to stand for its groups. None of them where the regex has a
    construct this scan does not read (inline flags, look-around, back-references). With
    ``loops`` (the compiled loops) one compiled pass reads the regex, and only its classes and
    the escapes of letters and digits are left to parse here."""
    matched: set[int] = set()
    if loops is not None:
        candidate, found = np.zeros(128, dtype=bool), np.zeros(128, dtype=bool)
        candidate[candidates] = True
        readable, starts, ends = loops.read_pieces(_code_points(regex), candidate, found)
        if not readable:
            return []
        matched.update(np.flatnonzero(found).tolist())
        pieces = {regex[start:end] for start, end in zip(starts.tolist(), ends.tolist())}
    else:
        pieces = set(_pieces(tuple(candidates)).findall(regex))
    for piece in pieces:  # each distinct piece once
        if piece[0] in "[\\" and len(piece) > 1:
            covered = _class_covers(piece, tuple(candidates))
            if covered is None:
                return []
            matched.update(covered)
        elif piece[0] == "(":
            if len(piece) == 3 and piece[2] != ":":
                return []  # inline flags or look-around
        elif piece == ".":
            return []
        else:
            matched.add(ord(piece))  # a candidate, written as itself
    return [b for b in candidates if b not in matched]


@functools.lru_cache(maxsize=4096)
def _class_covers(text: str, candidates: tuple[int, ...]) -> frozenset[int] | None:
    """Which ``candidates`` the class (or escape) ``text`` matches; None where it may match any."""
    try:
        parsed = list(parse(text))
    except Exception:  # a back-reference, or not re's dialect
        return None
    if len(parsed) != 1:
        return None
    op, av = parsed[0]
    if op is sre_constants.AT or op is sre_constants.SUBPATTERN:
        return frozenset()  # an anchor (``\b``, ``\A``) matches no byte
    covered = class_covers(av if op is sre_constants.IN else [(op, av)], set(candidates))
    return None if covered is None else frozenset(covered)


def _in_a_plain_string(regex: str, start: int, end: int) -> bool:
    """Whether the group at ``start:end`` is a string's repeated character, ``"(?:C)*"``,
    ``+`` or ``{m,n}``: there nothing but the closing quote starts beside it. (In a pattern it
    may stand beside letters it also matches, ``"(?:dev(?:C)*|...)"``, and its splice would be
    refused, costing a rebuild of the skeleton.)"""
    return regex[start - 1:start] == '"' and _CLOSES_A_STRING.match(regex, end) is not None


def _opens_a_value(regex: str, start: int) -> bool:
    """Whether the group at ``start`` begins as a value does: not with a class (whitespace), a
    separator, or a quoted literal (a member's key or an enum's value, which its siblings start
    alike): groups that begin so are seldom entered deterministically. A string with a class
    or a group in it (a free or patterned string, a free value whose first kind is a string)
    does count."""
    while regex.startswith("(?:", start):
        start += 3
    if regex[start] == '"':
        return _QUOTED_LITERAL.match(regex, start) is None
    return regex[start] not in "[,:"


def build_sharing(regex: str, build: Callable[[str], dict], placeholders: list[int],
                  groups: dict[str, dict | None] | None = None,
                  always: frozenset[str] = frozenset(), loops=None) -> dict | None:
    """``build(regex)``'s language as arrays (no counters), repeated groups (and any group whose
    text is in ``always``) built once and spliced in (``placeholders``: the bytes free to stand
    for them). A group whose splice would not be deterministic is written out again and the
    skeleton rebuilt, at most ``MAX_REBUILDS`` times; then None. ``groups`` keeps each group's
    automaton (None: it could not be built so) for the groups it recurs in."""
    groups = {} if groups is None else groups
    kept: set[str] = set()  # groups written out: their splice was refused
    for _ in range(MAX_REBUILDS + 1):
        byte_of: dict[str, int] = {}
        pieces, position = [], 0
        for start, end in repeated_groups(regex, always, kept, loops):
            text = regex[start:end]
            if text not in byte_of:
                if len(byte_of) == len(placeholders):
                    continue  # out of bytes: this group stays written out
                byte_of[text] = placeholders[len(byte_of)]
            pieces += [regex[position:start], f"\\x{byte_of[text]:02x}"]
            position = end
        if not byte_of:
            return build(regex)
        arrays = build("".join(pieces) + regex[position:])
        for text in byte_of:
            if text not in groups:
                groups[text] = build_sharing(text, build, placeholders, groups, always, loops)
            if groups[text] is None:
                kept.add(text)
                break
        else:
            splices = Splices(arrays, {byte: groups[text] for text, byte in byte_of.items()},
                              loops)
            refused = next((text for text, byte in byte_of.items()
                            if not splices.splice(byte, groups[text])), None)
            if refused is None:
                return splices.arrays()
            kept.add(refused)
    return None


class Splices:
    """A skeleton's groups spliced in, one after the other, into one table: the byte classes
    are refined once for every group to come (each placeholder a class of its own until its
    splice), and the table grows by doubling (a whole-table copy per group cost more than the rest
    of a splice). With ``loops`` (the compiled loops) the refinement and each splice are one
    compiled pass each (``compiled_automaton.refine_classes``, ``splice``); numpy's reading,
    for the compile worker, gives the same arrays."""

    def __init__(self, arrays: dict, groups: dict[int, dict], loops=None):
        self.loops = loops
        byte_class = arrays["byte_class"]
        placeholders = list(groups)
        if loops is None:
            refined = byte_class.astype(np.int64)
            for group in groups.values():
                refined = np.unique(refined * 256 + group["byte_class"], return_inverse=True)[1]
            refined[placeholders] = refined.max() + 1 + np.arange(len(placeholders))
            _, self.first, new_class = np.unique(refined, return_index=True, return_inverse=True)
        else:
            new_class, self.first = loops.refine_classes(
                byte_class.astype(np.int64),
                np.array([group["byte_class"] for group in groups.values()], np.int64),
                np.array(placeholders, np.int64))
        self.byte_class = new_class.reshape(256)
        self.placeholder_columns = self.byte_class[placeholders].astype(np.int64)
        table = arrays["table"]
        self.rows = len(table)
        # room for one copy of each group per state its placeholder leads to in the skeleton
        # (a splice may add more: copies that take on a target's transitions)
        room = self.rows + sum(len(np.unique(table[:, byte_class[byte]])) * len(group["table"])
                               for byte, group in groups.items())
        self.table = np.empty((room, len(self.first)), np.int32)
        np.take(table.astype(np.int32, copy=False), byte_class[self.first], axis=1,
                out=self.table[:self.rows], mode="clip")  # ("clip": no buffered copy)
        self.is_final = np.zeros(len(self.table), dtype=bool)
        self.is_final[:self.rows] = arrays["is_final"]
        self.initial = arrays["initial"]

    def splice(self, byte: int, group: dict) -> bool:
        """Replace each transition on placeholder ``byte`` by ``group``'s automaton (one copy
        per target state); False where the result would not be deterministic (the table is
        then left half-written: the caller starts again)."""
        group_final, group_start = group["is_final"], int(group["initial"])
        if self.loops is not None:
            done, self.table, self.is_final, self.rows = self.loops.splice(
                self.table, self.is_final, self.rows, int(self.byte_class[byte]),
                np.ascontiguousarray(group["table"], np.int32),
                group["byte_class"][self.first].astype(np.int64),
                self.placeholder_columns, np.ascontiguousarray(group_final, np.bool_),
                group_start)
            return done
        if group_final[group_start]:
            return False  # an empty group: its entry would be an empty step
        inner = group["table"][:, group["byte_class"][self.first]]  # (a copy: fancy indexing)
        inner[:, self.placeholder_columns] = 0
        finals = np.flatnonzero(group_final)
        goes_on = inner[finals] != 0  # [accepting state, class]: the group continues there
        leaving = goes_on.any(axis=0)
        # An accepting state the group cannot go on from is the target itself (a string's
        # closing character leads back to the string's own state, as outlines-core's automaton
        # has it); the others are copied, and those of them that accept take on the target's
        # transitions.
        closing = finals[~goes_on.any(axis=1)]
        copied = np.ones(len(inner), dtype=bool)
        copied[0] = False
        copied[closing] = False
        kept = np.flatnonzero(copied)
        column = self.byte_class[byte]
        sources = np.flatnonzero(self.table[:self.rows, column])
        targets, leads_to = np.unique(self.table[sources, column], return_inverse=True)
        rows = self.rows + len(targets) * len(kept)
        if rows >= np.iinfo(np.int32).max:
            return False
        self._reserve(rows)
        table = self.table[:self.rows]
        entry = inner[group_start] != 0
        if (table[sources][:, entry] != 0).any():
            return False
        table[:, column] = 0
        # placed[t, s]: where the group's state s is in the copy leading to targets[t]: its row
        # there, the target itself for a closing state, and 0 (dead) for 0. One gather through
        # it writes every copy.
        bases = self.rows + np.arange(len(targets), dtype=np.int64) * len(kept)
        placed = np.repeat(targets.astype(np.int32)[:, None], len(inner), axis=1)
        placed[:, kept] = bases[:, None] + np.arange(len(kept))
        placed[:, 0] = 0
        entry_columns = np.flatnonzero(entry)
        table[np.ix_(sources, entry_columns)] = placed[leads_to[:, None],
                                                       inner[group_start, entry_columns][None]]
        if (table[targets][:, leaving] != 0).any():
            return False  # (checked after the entries: a target may be a source too)
        copies = self.table[self.rows:rows].reshape(len(targets), len(kept), -1)
        np.take(placed, inner[kept], axis=1, out=copies, mode="clip")
        merged = np.flatnonzero(group_final[kept])  # the copies' rows that accept
        if len(merged):
            accepting = copies[:, merged]
            copies[:, merged] = np.where(accepting != 0, accepting, table[targets][:, None])
        final = np.zeros((len(targets), len(kept)), dtype=bool)
        final[:, merged] = self.is_final[targets][:, None]
        self.is_final[self.rows:rows] = final.reshape(-1)
        # Every state stays live (no new dead ends): a path through a placeholder step now
        # runs through the group's copy, which reaches its accepting states and goes on as the
        # target.
        self.rows = rows
        return True

    def _reserve(self, rows: int) -> None:
        if rows > len(self.table):
            size = max(rows, 2 * len(self.table))
            grown = np.empty((size, self.table.shape[1]), np.int32)
            grown[:self.rows] = self.table[:self.rows]
            self.table = grown
            self.is_final = np.concatenate([self.is_final[:self.rows],
                                            np.zeros(size - self.rows, dtype=bool)])

    def arrays(self) -> dict:
        """The spliced automaton (no counters). The table is shrunk to its rows in place (no
        copy: a large table's copy cost more in fresh memory than the splices); the spent
        placeholders' columns stay, all dead, as a class each."""
        self.table.resize((self.rows, self.table.shape[1]), refcheck=False)  # (no view is left)
        return {"table": self.table, "byte_class": self.byte_class.astype(np.uint8),
                "is_final": self.is_final[:self.rows].copy(), "initial": self.initial,
                "counters": NO_COUNTERS}


__all__ = ["MAX_REBUILDS", "MIN_GROUP", "MIN_REGEX", "build_sharing", "build_with_shared_groups",
           "Splices", "free_bytes", "group_spans", "repeated_groups"]
