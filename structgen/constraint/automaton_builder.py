"""AutomatonBuilder: a regex's automaton arrays, its long counted strings and repeated groups
built once and spliced in, the pieces kept for the next builds.

One builder runs in the compile worker (over outlines-core's ``Index``, ``automaton.build_arrays``)
and one in the parent once the compiled loops are loaded (over structgen's own determinisation,
``automaton.determinized_arrays``). Both give the same language: the splices are the same, and
the two determinisations are checked against each other by the tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from structgen.constraint.automaton import compiled_distances, splice_counted, table_distances
from structgen.constraint.counted import with_placeholders
from structgen.constraint.repeated import build_with_shared_groups, free_bytes

#: Table cells (4 bytes each) of group automata a builder keeps between builds: 128 MiB.
GROUP_CELLS = 1 << 25


class GroupAutomata(dict):
    """The automata of repeated groups (``repeated.build_sharing``'s ``groups``), kept between
    one builder's builds: a free value (``{}``) at each depth, a shared definition or a long
    string pattern recurs across schemas, and is determinised once. A group's automaton is a
    function of its text alone (its placeholders are all spliced in). Past ``max_cells`` table
    cells the oldest are dropped."""

    def __init__(self, max_cells: int = GROUP_CELLS):
        super().__init__()
        self.max_cells = max_cells
        self.cells = 0  # kept as entries come and go: a trim after each build reads no table

    def __setitem__(self, text: str, arrays: dict | None) -> None:
        if text in self:
            del self[text]
        super().__setitem__(text, arrays)
        self.cells += _cells(arrays)

    def __delitem__(self, text: str) -> None:
        self.cells -= _cells(self[text])
        super().__delitem__(text)

    def trim(self) -> None:
        while self.cells > self.max_cells:  # oldest first: a dict keeps insertion order
            del self[next(iter(self))]


def _cells(arrays: dict | None) -> int:
    return 0 if arrays is None else arrays["table"].size


class AutomatonBuilder:
    """``build(regex, character)``: the automaton's ``ARRAY_NAMES`` arrays, determinised by
    ``determinise`` (regex -> arrays); ``loops``, the compiled loops where they are loaded,
    read the regex for the groups to share and search spliced tables for their distances
    (without them, Python and numpy do). A string character is determinised once and spliced
    in where a regex writes it ``share_character_from`` times or more
    (``build_with_shared_groups``). Not thread-safe: one build at a time."""

    def __init__(self, determinise: Callable[[str], dict], loops=None,
                 max_cells: int = GROUP_CELLS, share_character_from: int = 2):
        self.determinise = determinise
        self.loops = loops
        self.share_character_from = share_character_from
        # (table, is_final) -> distances, for a spliced table
        self.distances: Callable[[np.ndarray, np.ndarray], np.ndarray] = (
            table_distances if loops is None
            else functools.partial(compiled_distances, loops=loops))
        # (regex, candidate bytes) -> those nothing in it matches, read by the compiled loops
        self.free_bytes = None if loops is None else functools.partial(free_bytes, loops=loops)
        self.characters: dict[str, dict] = {}  # a string character's regex -> its automaton
        self.groups = GroupAutomata(max_cells)

    def build(self, regex: str, character: str | None) -> dict:
        """With ``character`` (a JSON string character's regex) the long strings of it are
        spliced in, not determinised, and the character is determinised once; long repeated
        groups are determinised once (``repeated``) and kept for the next builds."""
        arrays = self._build(regex, character)
        self.groups.trim()
        if "byte_distance" not in arrays:  # spliced: one search over the whole table
            arrays["byte_distance"] = self.distances(arrays["table"], arrays["is_final"])
        return arrays

    def _build(self, regex: str, character: str | None) -> dict:
        if character is None:
            return build_with_shared_groups(regex, self.determinise, (), None, self.groups,
                                            self.loops, self.share_character_from)
        if character not in self.characters:
            self.characters[character] = self.determinise(character)
        self.groups[character] = self.characters[character]
        replaced, kinds = with_placeholders(regex, character, free_bytes=self.free_bytes)
        if kinds:
            skeleton = build_with_shared_groups(replaced, self.determinise, tuple(kinds),
                                                character, self.groups, self.loops,
                                                self.share_character_from)
            spliced = splice_counted(skeleton, kinds, self.characters[character],
                                     distances=self.distances)
            if spliced is not None:
                return spliced
        return build_with_shared_groups(regex, self.determinise, (), character, self.groups,
                                        self.loops, self.share_character_from)
