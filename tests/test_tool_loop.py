"""run_tools on the tiny random model: calls are validated, executed, answered, and the loop ends."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Literal

import pydantic
import pytest
from layouts import dumps

import structgen
from structgen.constraint.tool_calls import tool_turn_regex
from structgen.decoding import tools as tools_module
from structgen.decoding.generate import Decoded
from structgen.decoding.tools import execute
from structgen.parsing.tool_calls import ToolCall
from structgen.prompts import render_chat, tool_messages
from structgen.schema import DEFAULT_WHITESPACE
from structgen.schema.tools import as_tool, as_tools

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


def test_every_distinct_call_is_executed_once_and_every_call_answered(tiny_model):
    run = first_run_with_calls(tiny_model)
    assert len(EXECUTED) == len({json.dumps([c.name, c.arguments], sort_keys=True) for c in run.calls})
    tool_messages_seen = [m for m in run.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages_seen] == [c.id for c in run.calls]
    assert run.messages[-1] == {"role": "assistant", "content": run.answer}
    assert "<tool_call>" not in run.answer


def test_the_loop_stops_after_max_iterations(scripted):
    """(Scripted: the random model tends to repeat its call, which ends the tool phase early.)"""
    turns = [_block("get_current_temperature", {"location": city, "unit": "celsius"})
             for city in ("Paris", "Rome", "Oslo")]
    run, choices = scripted(turns + ["Warm everywhere."], tool_choice="required", max_iterations=3)
    assert run.iterations == 4  # three turns that must call tools, then one forced text turn
    assert choices == ["required", "required", "required", "none"]
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


# --- scripted turns: what the loop does with refusals, repeats and failing tools ---------------


def _plausible(celsius: float) -> float:
    if not 5 <= celsius <= 30:
        raise ValueError("only 5 to 30 degrees are allowed here")
    return celsius


def set_thermostat(celsius: Annotated[float, pydantic.AfterValidator(_plausible)]) -> str:
    """Set the thermostat; its validator is stricter than its schema (a number).

    Args:
        celsius: The temperature.
    """
    EXECUTED.append(("thermostat", celsius))
    return "set"


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text either")


def unprintable(reason: str) -> str:
    """A tool whose exception cannot even be printed.

    Args:
        reason: Why.
    """
    EXECUTED.append(("unprintable", reason))
    raise Unprintable()


SCRIPTED_TOOLS = [get_current_temperature, set_thermostat, unprintable]


def _block(name, arguments):
    """A call block as the constraint of the default whitespace mode lets the model write it."""
    return f'<tool_call>\n{dumps({"name": name, "arguments": arguments}, DEFAULT_WHITESPACE)}\n</tool_call>'



@pytest.fixture
def scripted(monkeypatch, tiny_model):
    """run_tools with the model's turns written by the test; each must be one the constraint allows."""
    choices = []
    real_tool_turn = tools_module.tool_turn

    def tool_turn(tools, prompt, model, *, tool_choice, **options):
        choices.append(tool_choice)
        return real_tool_turn(tools, prompt, model, tool_choice=tool_choice, **options)

    def run(turns, **options):
        turns = list(turns)

        def decode(model, constraint, messages, **_):
            text = turns.pop(0)
            regex = tool_turn_regex(as_tools(SCRIPTED_TOOLS), tool_choice=choices[-1])
            assert re.fullmatch(regex, text), f"the constraint would not allow {text!r}"
            return Decoded(text=text, prompt_tokens=1, completion_tokens=1, stop_reason="eos", seconds=0.0)

        monkeypatch.setattr(tools_module, "tool_turn", tool_turn)
        monkeypatch.setattr(tools_module, "decode", decode)
        EXECUTED.clear()
        choices.clear()
        result = structgen.run_tools(SCRIPTED_TOOLS, "Warm it up.", model=tiny_model, **options)
        assert turns == []
        return result, list(choices)

    return run


def _responses(run):
    return [m["content"] for m in run.messages if m["role"] == "tool"]


def test_a_call_its_validator_refuses_is_answered_with_the_error_and_the_others_run(scripted):
    turn = "\n".join([_block("set_thermostat", {"celsius": -5}), _block("set_thermostat", {"celsius": 21}),
                      _block("get_current_temperature", {"location": "Paris", "unit": "celsius"})])
    run, _ = scripted([turn, "Done."])
    assert EXECUTED == [("thermostat", 21.0), ("temperature", "Paris", "celsius")]
    refused, set_, temperature = _responses(run)
    assert "only 5 to 30 degrees are allowed here" in refused["error"]
    assert (set_, temperature) == ("set", 22.0)
    assert run.answer == "Done." and run.calls[0].error is not None


def test_a_tool_whose_exception_cannot_be_printed_still_gets_an_error_response(scripted):
    run, _ = scripted([_block("unprintable", {"reason": "x"}), "Sorry."])
    assert _responses(run) == [{"error": "Unprintable: <no message: its __str__ raised RuntimeError>"}]
    assert run.answer == "Sorry."


def test_a_repeated_call_is_answered_from_its_first_result_and_ends_the_tool_phase(scripted):
    weather = _block("get_current_temperature", {"location": "Paris", "unit": "celsius"})
    run, choices = scripted([weather, weather, "22 degrees."], tool_choice="required", max_iterations=5)
    assert EXECUTED == [("temperature", "Paris", "celsius")]
    assert _responses(run) == [22.0, 22.0]
    assert choices == ["required", "required", "none"]  # the repeat-only turn ends the tool phase
    assert (run.iterations, run.answer) == (3, "22 degrees.")


def test_a_turn_with_a_new_call_beside_a_repeat_keeps_the_loop_going(scripted):
    weather = _block("get_current_temperature", {"location": "Paris", "unit": "celsius"})
    rome = _block("get_current_temperature", {"location": "Rome", "unit": "celsius"})
    run, choices = scripted([weather, weather + "\n" + rome, "Both warm."], max_iterations=5)
    assert [e[1] for e in EXECUTED] == ["Paris", "Rome"]
    assert choices == ["auto", "auto", "auto"]


@pytest.mark.parametrize("max_iterations", [-1, "5", 2.0, None])
def test_max_iterations_that_is_not_a_count_is_a_typed_error(tiny_model, max_iterations):
    with pytest.raises(structgen.ToolInputError, match="max_iterations"):
        structgen.run_tools(TOOLS, "Hot?", model=tiny_model, max_iterations=max_iterations)


def test_random_weights_with_a_refusing_validator_still_finish_the_run(tiny_model):
    """Whatever the model writes for set_thermostat fits the schema; the validator refuses some."""
    refused = 0
    for seed in range(3):
        EXECUTED.clear()
        run = structgen.run_tools([set_thermostat], "Set it.", model=tiny_model, temperature=1.0, seed=seed,
                                  max_tokens=40, tool_choice="required", max_iterations=1)
        executed = [call for call in run.calls if call.error is None]
        assert len(EXECUTED) == len({json.dumps(c.arguments) for c in executed})
        for call, response in zip(run.calls, _responses(run)):
            assert (call.error is not None) == (not 5 <= call.arguments["celsius"] <= 30)
            assert ("error" in response) == (call.error is not None)
            refused += call.error is not None
        assert "<tool_response>" not in run.answer and "<tool_call>" not in run.answer
    assert refused  # the seeds were chosen so that the validator refuses some call


def test_call_tools_raises_the_refusal_and_the_details_keep_both(monkeypatch, tiny_model):
    text = _block("set_thermostat", {"celsius": -5}) + "\n" + _block("set_thermostat", {"celsius": 21})
    monkeypatch.setattr(tools_module, "decode", lambda *args, **kw: Decoded(
        text=text, prompt_tokens=1, completion_tokens=1, stop_reason="eos", seconds=0.0))
    with pytest.raises(structgen.ToolArgumentsError, match="only 5 to 30 degrees"):
        structgen.call_tools([set_thermostat], "Warm it.", model=tiny_model)
    turn = structgen.call_tools_with_details([set_thermostat], "Warm it.", model=tiny_model)
    assert [c.arguments for c in turn.calls] == [{"celsius": 21}]
    assert [c.arguments for c in turn.rejected] == [{"celsius": -5}]
