"""Streaming on the tiny random model: partial objects, text deltas, tool events, async, cancel."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Annotated

import pydantic
import pytest
from examples import Character, get_current_temperature, get_stock_fundamentals
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import structgen
from structgen.decoding import streaming
from structgen.decoding.streaming import (
    ArgumentsDelta,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    ToolTurnEvents,
    TurnEnded,
)
from structgen.schema.tools import as_tools

TOOLS = [get_current_temperature, get_stock_fundamentals]


def consistent(partial, final, incomplete, path=()):
    """Everything the partial value holds agrees with the final value."""
    if isinstance(partial, dict):
        return all(k in final and consistent(v, final[k], incomplete, path + (k,))
                   for k, v in partial.items())
    if isinstance(partial, list):
        return len(partial) <= len(final) and all(
            consistent(v, final[i], incomplete, path + (i,)) for i, v in enumerate(partial))
    if path in incomplete:
        return isinstance(partial, str) and final.startswith(partial)
    return partial == final


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16))
def test_partials_grow_consistently_and_end_with_what_generate_returns(tiny_model, seed):
    options = dict(model=tiny_model, max_tokens=60, temperature=1.0, seed=seed)
    items = list(structgen.stream(Character, "Describe Goku.", **options))
    final = items[-1]
    assert isinstance(final, Character)
    assert final == structgen.generate(Character, "Describe Goku.", **options)
    partials = items[:-1]
    assert partials and all(isinstance(p, structgen.Partial) for p in partials)
    for partial in partials:
        assert consistent(partial.value, final.model_dump(), partial.incomplete)


def test_stream_text_deltas_join_to_the_answer(tiny_model):
    options = dict(model=tiny_model, max_tokens=50, temperature=1.0, seed=4)
    deltas = list(structgen.stream_text(Character, "Goku?", **options))
    assert len(deltas) > 3
    assert "".join(deltas) == structgen.generate_with_details(Character, "Goku?", **options).text


def test_tool_events_in_order_and_equal_to_call_tools(tiny_model):
    options = dict(model=tiny_model, tool_choice="required", max_tokens=120, temperature=1.0, seed=9)
    events = list(structgen.stream_tools(TOOLS, "Hot in Paris?", **options))
    calls = structgen.call_tools(TOOLS, "Hot in Paris?", **options)
    assert isinstance(events[-1], TurnEnded)
    finished = [e.call for e in events if isinstance(e, ToolCallFinished)]
    assert [(c.name, c.arguments) for c in finished] == [(c.name, c.arguments) for c in calls]
    for index in range(len(finished)):
        kinds = [type(e) for e in events if getattr(e, "index", None) == index]
        assert kinds[0] is ToolCallStarted and kinds[-1] is ToolCallFinished
        assert set(kinds[1:-1]) <= {ArgumentsDelta}


def test_text_turns_stream_text_deltas(tiny_model):
    events = list(structgen.stream_tools(TOOLS, "Hi", model=tiny_model, tool_choice="none",
                                         max_tokens=20, temperature=1.0, seed=1))
    assert all(isinstance(e, TextDelta) for e in events[:-1]) and isinstance(events[-1], TurnEnded)
    assert "".join(e.text for e in events[:-1]) == events[-1].text


@pytest.mark.parametrize("split", [1, 3, 7])
def test_tool_events_for_both_key_orders_and_several_calls(split):
    text = ('<tool_call>\n{"arguments": {"location": "Paris, France", "unit": "celsius"}, '
            '"name": "get_current_temperature"}\n</tool_call>\n<tool_call>\n'
            '{"name": "get_stock_fundamentals", "arguments": {"symbol": "TSLA"}}\n</tool_call>')
    parser = ToolTurnEvents(as_tools(TOOLS))
    events = []
    for start in range(0, len(text), split):
        events += parser.feed(text[start:start + split])
    events += parser.end("eos")
    started = [(e.index, e.name) for e in events if isinstance(e, ToolCallStarted)]
    assert started == [(0, "get_current_temperature"), (1, "get_stock_fundamentals")]
    finished = [e.call for e in events if isinstance(e, ToolCallFinished)]
    assert [c.arguments for c in finished] == [{"location": "Paris, France", "unit": "celsius"},
                                               {"symbol": "TSLA"}]
    deltas = [e for e in events if isinstance(e, ArgumentsDelta) and e.index == 1]
    assert deltas and deltas[-1].arguments == {"symbol": "TSLA"}
    assert events[-1].calls == finished


def test_astream_gives_what_stream_gives(tiny_model):
    options = dict(model=tiny_model, max_tokens=40, temperature=1.0, seed=2)

    async def collect():
        return [item async for item in structgen.astream(Character, "Goku?", **options)]
    async_items = asyncio.run(collect())
    sync_items = list(structgen.stream(Character, "Goku?", **options))
    assert [getattr(i, "value", i) for i in async_items] == [getattr(i, "value", i) for i in sync_items]


def test_cancelling_an_async_stream_stops_decoding_within_a_step(tiny_model, monkeypatch):
    decoded = []
    finished = threading.Event()
    real_decode_rows = streaming.decode_rows

    def counting_decode_rows(model, rows, sampling, on_token=None):
        def count(row, token):
            decoded.append(token)
            on_token(row, token)
        try:
            return real_decode_rows(model, rows, sampling, on_token=count)
        finally:
            finished.set()

    monkeypatch.setattr(streaming, "decode_rows", counting_decode_rows)

    async def consume_a_little():
        items = structgen.astream(list[str], "Words.", model=tiny_model, max_tokens=400,
                                  temperature=1.0, seed=3)
        for _ in range(3):
            await items.__anext__()
        at_cancel = len(decoded)
        await items.aclose()
        return at_cancel

    at_cancel = asyncio.run(consume_a_little())
    assert finished.wait(10), "decoding did not stop after the consumer went away"
    assert len(decoded) <= at_cancel + 2
    assert len(decoded) < 400


EXIT_WHILE_STREAMING = textwrap.dedent("""
    import asyncio
    import structgen
    from structgen.testing import tiny_random_model

    model = tiny_random_model({tokenizer!r}, seed=0)
    options = dict(model=model, max_tokens=400, temperature=1.0, seed=3)

    async def close_early():
        items = structgen.astream(list[str], "Words.", **options)
        for _ in range(3):
            await items.__anext__()
        await items.aclose()

    asyncio.run(close_early())
    left_open = structgen.stream(list[str], "Words.", **options)  # still decoding at exit
    next(left_open)
    print("done", flush=True)
""")


def test_exiting_while_streams_decode_ends_cleanly():
    """Without the exit hook, the decoding thread dies inside torch at finalisation: SIGABRT (134)."""
    tokenizer = str(Path(__file__).parent / "fixtures" / "smollm2_tokenizer")
    script = EXIT_WHILE_STREAMING.format(tokenizer=tokenizer)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "terminate called" not in result.stderr
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr[-2000:]


def _positive(symbol: str) -> str:
    if not symbol.isupper():
        raise ValueError("a ticker is upper case")
    return symbol


def get_ticker(symbol: Annotated[str, pydantic.AfterValidator(_positive)]) -> str:
    """A tool whose validator is stricter than its schema.

    Args:
        symbol: The ticker.
    """
    return symbol


def test_a_call_its_tool_refuses_finishes_with_its_error_and_the_turn_goes_on():
    text = ('<tool_call>\n{"name": "get_ticker", "arguments": {"symbol": "tsla"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_ticker", "arguments": {"symbol": "TSLA"}}\n</tool_call>')
    parser = ToolTurnEvents(as_tools([get_ticker]))
    events = parser.feed(text) + parser.end("eos")
    refused, valid = [e.call for e in events if isinstance(e, ToolCallFinished)]
    assert "a ticker is upper case" in str(refused.error) and refused.parsed is None
    assert (valid.error, valid.parsed) == (None, {"symbol": "TSLA"})
    assert (events[-1].calls, events[-1].rejected) == ([valid], [refused])
