"""distances_to_accept: its two searches (Python lists for small automata, numpy levels for
large ones) give the breadth-first distances of a plain search, on random graphs."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structgen.constraint import automaton
from structgen.constraint.automaton import UNREACHABLE, column_edges, distances_to_accept
from structgen.schema.layout import STRING_CHAR


def plain_search(table: np.ndarray, is_final: np.ndarray) -> list[int]:
    """Fewest steps from each state to an accepting one, by a queue over reversed edges (state 0
    is the dead state: never accepting, never passed through)."""
    before: dict[int, set[int]] = {}
    for state, row in enumerate(table.tolist()):
        for target in row:
            if target:
                before.setdefault(target, set()).add(state)
    distance = [UNREACHABLE] * len(table)
    queue = deque(state for state in range(1, len(table)) if is_final[state])
    for state in queue:
        distance[state] = 0
    while queue:
        state = queue.popleft()
        for earlier in before.get(state, ()):
            if distance[earlier] == UNREACHABLE:
                distance[earlier] = distance[state] + 1
                queue.append(earlier)
    return distance


@st.composite
def automata(draw):
    states = draw(st.integers(1, 60))
    classes = draw(st.integers(1, 4))
    cells = st.integers(0, states)  # 0: no transition (the dead state)
    table = np.array(draw(st.lists(st.lists(cells, min_size=classes, max_size=classes),
                                   min_size=states + 1, max_size=states + 1)), dtype=np.int32)
    table[0] = 0
    is_final = np.array(draw(st.lists(st.booleans(), min_size=states + 1, max_size=states + 1)))
    is_final[0] = False
    return table, is_final


@pytest.mark.parametrize("list_search_below", [0, 10**9], ids=["numpy levels", "lists"])
@settings(max_examples=150, deadline=None)
@given(case=automata())
def test_both_searches_give_breadth_first_distances(case, list_search_below):
    table, is_final = case
    original = automaton.LIST_SEARCH_STATES
    automaton.LIST_SEARCH_STATES = list_search_below  # (hypothesis runs without monkeypatch)
    try:
        found = distances_to_accept(is_final, *column_edges(table))
    finally:
        automaton.LIST_SEARCH_STATES = original
    assert found.dtype == np.int32
    assert found.tolist() == plain_search(table, is_final)


# --- byte classes from the edges ---------------------------------------------------------------

CLASS_REGEXES = [
    STRING_CHAR, f'"{STRING_CHAR}*"', r"\{[ \t\n\r]*\"a\"[ \t\n\r]*:[ \t\n\r]*(?:true|false)\}",
    r"-?(?:0|[1-9][0-9]{0,3})(?:\.[0-9]+)?", "(?:é|ü|[a-c])+x", r"[\x01-\x7f]{2}z",
]


def by_whole_columns(arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """The classes as the bytes' whole columns over states define them (the reference)."""
    columns = arrays["table"][:, arrays["byte_class"]].T  # one row per byte
    _, first, inverse = np.unique(columns, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)], first[order]


@pytest.mark.parametrize("regex", CLASS_REGEXES)
def test_byte_classes_from_edge_sums_are_the_columns_classes(regex, monkeypatch):
    arrays = automaton.build_arrays(regex)
    classes, firsts = by_whole_columns(arrays)
    # the dead-end pruning may merge columns after classes are made: compare as partitions of
    # the live columns, and every byte's column must be its class's
    assert np.array_equal(arrays["table"][:, arrays["byte_class"]],
                          arrays["table"][:, arrays["byte_class"][firsts[classes]]])
    # a collision (every column with as many edges summing alike) falls back to whole columns
    fallbacks = []
    real = automaton._classes_by_columns
    monkeypatch.setattr(automaton, "_edge_weights", lambda states: np.ones((2, states)))
    monkeypatch.setattr(automaton, "_classes_by_columns",
                        lambda *args: fallbacks.append(1) or real(*args))
    again = automaton.build_arrays(regex)
    assert all(np.array_equal(arrays[name], again[name]) for name in arrays)
    assert fallbacks or regex not in CLASS_REGEXES[:4]  # (their classes have equal edge counts)
