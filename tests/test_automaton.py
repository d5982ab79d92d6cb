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
