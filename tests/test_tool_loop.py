"""run_tools on the tiny random model: calls are validated, executed, answered, and the loop ends."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest

import structgen
from structgen.decoding.tools import execute
from structgen.parsing.tool_calls import ToolCall
from structgen.prompts import render_chat, tool_messages
from structgen.schema.tools import as_tool

EXECUTED: list[tuple] = []


def get_current_temperature(location: str, unit: Literal["celsius", "fahrenheit"]) -> float:
    """Get the current temperature at a location.

    Args:
        location: The location, in the format "City, Country"
        unit: The unit to return the temperature in.
    """
    EXECUTED.append(("temperature", location, unit))
    return 22.0


def explode(reason: str) -> str:
    """A tool that always fails.

    Args:
        reason: Why.
    """
    EXECUTED.append(("explode", reason))
    raise RuntimeError("the tool broke")


async def slow_lookup(key: str) -> dict:
    """An async tool.

    Args:
        key: What to look up.
    """
    await asyncio.sleep(0)
    EXECUTED.append(("lookup", key))
    return {"key": key, "found": True}


TOOLS = [get_current_temperature, explode, slow_lookup]


def first_run_with_calls(model, seeds=range(20), **options):
    """A random model rarely opens a call by itself, so its first turns are made to call."""
    options.setdefault("max_iterations", 2)
    for seed in seeds:
        EXECUTED.clear()
        run = structgen.run_tools(TOOLS, "Hot in Paris?", model=model, temperature=1.0, seed=seed,
                                  max_tokens=120, tool_choice="required", **options)
        if run.calls:
            return run
    pytest.fail("no seed gave a run with calls")


def test_every_call_is_executed_once_and_answered(tiny_model):
    run = first_run_with_calls(tiny_model)
    assert len(EXECUTED) == len(run.calls)
    tool_messages_seen = [m for m in run.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages_seen] == [c.id for c in run.calls]
    assert run.messages[-1] == {"role": "assistant", "content": run.answer}
    assert "<tool_call>" not in run.answer


def test_the_loop_stops_after_max_iterations(tiny_model):
    run = first_run_with_calls(tiny_model, max_iterations=3)
    assert run.iterations == 4  # three turns that must call tools, then one forced text turn
    assert sum(m["role"] == "assistant" and bool(m.get("tool_calls")) for m in run.messages) == 3


def test_the_transcript_renders_with_the_chat_template(tiny_model, smollm2_tokenizer):
    run = first_run_with_calls(tiny_model)
    signatures = [as_tool(t).signature() for t in TOOLS]
    text = render_chat(smollm2_tokenizer, tool_messages(run.messages, signatures))
    assert "<tool_call>\n" in text and "<|im_start|>tool\n<tool_response>\n" in text


def test_a_failing_tool_becomes_an_error_response():
    call = ToolCall(name="explode", arguments={"reason": "test"})
    assert execute(as_tool(explode), call) == {"error": "RuntimeError: the tool broke"}


def test_async_tools_are_awaited():
    call = ToolCall(name="slow_lookup", arguments={"key": "k"})
    assert execute(as_tool(slow_lookup), call) == {"key": "k", "found": True}


def test_async_tools_run_inside_a_running_event_loop_too():
    async def main():
        return execute(as_tool(slow_lookup), ToolCall(name="slow_lookup", arguments={"key": "x"}))
    assert asyncio.run(main()) == {"key": "x", "found": True}


def test_invalid_arguments_never_reach_the_function():
    EXECUTED.clear()
    call = ToolCall(name="get_current_temperature", arguments={"location": "Paris", "unit": "kelvin"})
    result = execute(as_tool(get_current_temperature), call)
    assert "error" in result and EXECUTED == []


def test_tools_without_a_function_cannot_be_run(tiny_model):
    schema_tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
    with pytest.raises(structgen.ToolDefinitionError, match="lookup"):
        structgen.run_tools([schema_tool], "Find it.", model=tiny_model)
