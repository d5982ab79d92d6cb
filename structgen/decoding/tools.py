"""Function calling: one constrained assistant turn (call_tools) and the tool loop (run_tools).

call_tools renders the Hermes function-calling prompt, decodes one assistant turn under the
tool-turn constraint (text, or <tool_call> blocks whose JSON names a real tool and carries
arguments valid for that tool), and parses the calls. run_tools executes them — arguments are
validated with pydantic before any function runs — feeds each result back as a <tool_response>,
and repeats until the model answers in text or the iterations run out.

The constraint guarantees the schema, not a validator stricter than it: a call its tool refuses
is answered with the error while the turn's other calls run. A call repeated within a run is
answered from its first result instead of running again, and a turn that only repeats calls
ends the tool phase (the model is going round in circles): the next turn is the text answer.
With ``max_retries``, a turn with a refused call is decoded again first, the refusals shown to the
model as a user turn (``structgen.decoding.retry``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import time
from dataclasses import dataclass, field
from typing import Any

from structgen.backends.transformers import Model
from structgen.constraint.compiler import default_compiler
from structgen.constraint.tool_calls import tool_turn_regex
from structgen.decoding.generate import DEFAULT_MAX_TOKENS, attempt_of, decode, refusal, resolve_model
from structgen.decoding.retry import Attempt, attempt_seed, check_max_retries, retry_messages
from structgen.errors import ToolArgumentsError, ToolDefinitionError, ToolInputError
from structgen.parsing.tool_calls import ToolCall, read_tool_calls
from structgen.prompts.hermes import as_messages, tool_messages
from structgen.schema import DEFAULT_WHITESPACE
from structgen.schema.tools import Tool, as_tools, describe_exception


@dataclass
class ToolTurn:
    """One assistant turn: its exact text and the calls parsed from it (empty for a text answer).

    ``rejected`` holds the calls whose arguments fit the schema but that the tool refused (a
    stricter pydantic validator): each has ``error`` set; ``calls`` holds the valid ones.
    The fields are the last attempt's; ``attempts`` lists every decoded turn (more than one with
    ``max_retries``), each with its first refused call's error, or None.
    """

    text: str
    calls: list[ToolCall]
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str
    seconds: float
    compile_seconds: float
    rejected: list[ToolCall] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)


@dataclass
class ToolRun:
    """What run_tools did: the final text answer, every call made, and the whole conversation."""

    answer: str
    messages: list[dict]
    calls: list[ToolCall] = field(default_factory=list)
    iterations: int = 0


def call_tools_with_details(tools, prompt, *, model: Model | str | None = None,
                            tool_choice: str | dict = "auto", max_calls: int | None = None,
                            parallel: bool = True, max_tokens: int = DEFAULT_MAX_TOKENS,
                            temperature: float = 0.0, top_p: float = 1.0, top_k: int | None = None,
                            seed: int | None = None, whitespace: str = DEFAULT_WHITESPACE,
                            max_retries: int = 0) -> ToolTurn:
    """Like ``call_tools``, but returns the whole ``ToolTurn`` (text, calls, tokens, timings,
    attempts), and the calls a tool refused (after the retries) in ``rejected`` instead of
    raising."""
    turn, _ = _decode_turn(tools, prompt, model=model, tool_choice=tool_choice, max_calls=max_calls,
                           parallel=parallel, max_tokens=max_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, seed=seed, whitespace=whitespace,
                           max_retries=max_retries)
    return turn


def _decode_turn(tools, prompt, *, model, tool_choice, max_calls, parallel, max_tokens, temperature,
                 top_p, top_k, seed, whitespace, max_retries=0) -> tuple[ToolTurn, list[ToolCall]]:
    """The turn, and all its calls in the order written (refused ones included).

    A turn with a refused call is decoded again, up to ``max_retries`` times, with the refused
    turn and the refusals appended to the conversation; the last attempt is the turn."""
    check_max_retries(max_retries)
    model = resolve_model(model)
    compile_started = time.perf_counter()
    tool_list, constraint, messages = tool_turn(tools, prompt, model, tool_choice=tool_choice,
                                                max_calls=max_calls, parallel=parallel,
                                                whitespace=whitespace)
    compile_seconds = time.perf_counter() - compile_started
    attempts: list[Attempt] = []
    while True:
        decoded = decode(model, constraint, messages, max_tokens=max_tokens, temperature=temperature,
                         top_p=top_p, top_k=top_k, seed=attempt_seed(seed, len(attempts)),
                         attempts=attempts)
        calls = read_tool_calls(decoded.text, tool_list)
        refused = [call.error for call in calls if call.error is not None]
        attempts.append(attempt_of(decoded, refused[0] if refused else None))
        if not refused or len(attempts) > max_retries:
            break
        messages = retry_messages(messages, decoded.text, refused, tools=True)
    turn = ToolTurn(text=decoded.text, calls=[c for c in calls if c.error is None],
                    prompt_tokens=decoded.prompt_tokens, completion_tokens=decoded.completion_tokens,
                    stop_reason=decoded.stop_reason, seconds=decoded.seconds,
                    compile_seconds=compile_seconds,
                    rejected=[c for c in calls if c.error is not None], attempts=attempts)
    return turn, calls


def tool_turn(tools, prompt, model: Model, *, tool_choice: str | dict, max_calls: int | None,
              parallel: bool, whitespace: str):
    """(tools, compiled tool-turn constraint, Hermes tool conversation) for one assistant turn."""
    tool_list = as_tools(tools)
    if not parallel:
        max_calls = 1
    regex = tool_turn_regex(tool_list, tool_choice=tool_choice, max_calls=max_calls, whitespace=whitespace)
    constraint = default_compiler().compile_regex(regex, model.tokenizer_info, whitespace=whitespace)
    return tool_list, constraint, tool_messages(prompt, [tool.signature() for tool in tool_list])


def call_tools(tools, prompt, *, model: Model | str | None = None, tool_choice: str | dict = "auto",
               max_calls: int | None = None, parallel: bool = True,
               max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int | None = None, seed: int | None = None,
               whitespace: str = DEFAULT_WHITESPACE, max_retries: int = 0) -> list[ToolCall]:
    """Let the model call ``tools`` for ``prompt``; returns the validated calls (``[]`` for text).

    ``tools``: Python functions, pydantic models or OpenAI-style tool dicts. ``tool_choice``:
    "auto" (text or calls), "required" (at least one call), "none" (text only) or a tool name
    (also as OpenAI's ``{"type": "function", "function": {"name": ...}}``).
    ``max_calls`` bounds the calls in the turn; ``parallel=False`` means at most one. Every call
    names a real tool and its arguments validate against that tool's parameters; a call that a
    validator stricter than the schema refuses raises its ``ToolArgumentsError``
    (``call_tools_with_details`` returns the turn with it in ``rejected`` instead). With
    ``max_retries=N`` the refusals go back to the model and the turn is decoded again, up to N
    times; a turn still refused then raises ``RetriesExhaustedError`` with every attempt.
    """
    turn = call_tools_with_details(
        tools, prompt, model=model, tool_choice=tool_choice, max_calls=max_calls, parallel=parallel,
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
        whitespace=whitespace, max_retries=max_retries)
    if turn.rejected:
        raise refusal(turn.attempts, turn.rejected[0].error)
    return turn.calls


def run_tools(tools, prompt, *, model: Model | str | None = None, max_iterations: int = 5,
              tool_choice: str | dict = "auto", max_calls: int | None = None, parallel: bool = True,
              max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
              top_k: int | None = None, seed: int | None = None,
              whitespace: str = DEFAULT_WHITESPACE, max_retries: int = 0) -> ToolRun:
    """Answer ``prompt`` with the help of ``tools`` (callables), executing the calls the model makes.

    Up to ``max_iterations`` turns may call tools (under ``tool_choice``: "auto", "required" or a
    tool name); each call's arguments are validated before the function runs (sync or async), and
    its result — or its exception, or the validator's refusal, as an error — goes back to the
    model as a ``<tool_response>``. A call equal to one already answered in this run (same tool,
    same arguments) is answered with that result and not run again. When the iterations are
    spent, or a turn only repeated calls, one last turn is decoded with ``tool_choice="none"``,
    so the run always ends in text (which never holds a ``<tool_call>`` or ``<tool_response>``).
    With ``max_retries``, a turn with a refused call is first decoded again (as in ``call_tools``);
    only its last attempt enters ``messages``, and a call still refused is answered with the error.
    """
    if not isinstance(max_iterations, int) or isinstance(max_iterations, bool) or max_iterations < 0:
        raise ToolInputError(f"max_iterations must be an int of at least 0, not {max_iterations!r}")
    model = resolve_model(model)
    tool_list = as_tools(tools)
    by_name = {tool.name: tool for tool in tool_list}
    for tool in tool_list:
        if tool.function is None:
            raise ToolDefinitionError("run_tools needs a Python function to execute", tool=tool.name)
    messages = as_messages(prompt)
    run = ToolRun(answer="", messages=messages)
    check_max_retries(max_retries)
    options = dict(model=model, max_calls=max_calls, parallel=parallel, max_tokens=max_tokens,
                   temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, whitespace=whitespace,
                   max_retries=max_retries)
    answered: dict[str, Any] = {}  # each distinct call of this run -> its response
    only_repeats = False
    while True:
        last_turn = run.iterations >= max_iterations or only_repeats
        turn, calls = _decode_turn(tool_list, messages,
                                   tool_choice="none" if last_turn else tool_choice, **options)
        run.iterations += 1
        if not calls:
            run.answer = turn.text
            messages.append({"role": "assistant", "content": turn.text})
            return run
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}} for call in calls]})
        only_repeats = True
        for call in calls:
            run.calls.append(call)
            key = json.dumps([call.name, call.arguments], sort_keys=True)
            if key not in answered:
                answered[key] = execute(by_name[call.name], call)
                only_repeats = False
            messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                             "content": answered[key]})


def execute(tool: Tool, call: ToolCall) -> Any:
    """Run one call; a refusal or an exception becomes ``{"error": ...}`` for the model to read."""
    if call.error is not None:
        return {"error": str(call.error)}
    try:
        kwargs = tool.validate_arguments(call.arguments)
        result = tool.function(**kwargs)
        if inspect.isawaitable(result):
            result = _await(result)
        return _jsonable(result)
    except ToolArgumentsError as error:
        return {"error": str(error)}
    except Exception as error:  # a tool's own failure is the model's to handle, not a crash
        return {"error": describe_exception(error)}


def _await(awaitable):
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coroutine(awaitable))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _as_coroutine(awaitable)).result()


async def _as_coroutine(awaitable):
    return await awaitable


def _jsonable(value: Any) -> Any:
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=str)  # what JSON cannot hold is shown as text
