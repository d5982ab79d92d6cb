"""Streaming: partial objects and tool-call events while the model is still writing.

Decoding runs the same loop as ``generate`` in a worker thread; each token's bytes go through an
incremental UTF-8 decoder into one incremental JSON parser (each character parsed once), and a
``Partial`` is yielded whenever the value grew. The last item is the validated value — the same
value ``generate`` returns for the same arguments and seed, since it is the same decoding. With
``max_retries``, a final answer a validator refuses is followed by a ``Retry`` item, and the
next attempt streams from the start.

Stopping early (closing the generator, or cancelling the async task) sets a flag the decoding
loop checks at every token, so generation stops within one decoding step. At interpreter exit the
same flag stops every stream still running and its threads are joined (see ``_stop_at_exit``).
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

from structgen.backends.transformers import Model
from structgen.constraint.tool_calls import CLOSE_TAG, OPEN_TAG
from structgen.decoding.generate import (
    DEFAULT_MAX_TOKENS,
    attempt_of,
    constraint_for,
    finish_row,
    messages_for,
    prepare_row,
    refusal,
    resolve_model,
    retries_for,
)
from structgen.decoding.loop import Sampling, decode_rows
from structgen.decoding.retry import attempt_seed, check_max_retries, retry_messages
from structgen.decoding.tools import tool_turn
from structgen.errors import OutputError
from structgen.parsing.partial_json import IncrementalJSONParser
from structgen.parsing.tool_calls import read_tool_calls
from structgen.schema import DEFAULT_WHITESPACE


@dataclass(frozen=True)
class Partial:
    """A value still being written: every field completed so far, open strings flagged.

    ``value`` holds what is known (numbers, booleans and nulls only once complete; strings as they
    grow); ``incomplete`` holds the paths (tuples of keys and indices) of strings still open.
    Fields read as attributes (``partial.name``) or items, ``None`` while not started.
    """

    value: Any
    incomplete: frozenset
    text: str

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.value.get(name) if isinstance(self.value, dict) else None

    def __getitem__(self, key):
        return self.value[key]

    def is_complete(self, *path) -> bool:
        """Whether the string at ``path`` (e.g. ``"name"`` or ``"attacks", 0``) is finished."""
        return tuple(path) not in self.incomplete


@dataclass(frozen=True)
class Retry:
    """Attempt ``attempt`` (1 for the first answer) wrote ``text``, which a validator refused
    with ``error``; the partials that follow belong to the next attempt, from its start."""

    attempt: int
    text: str
    error: OutputError


class _Cancelled(Exception):
    """Raised inside the decoding loop to stop it when the consumer has gone."""


_END = object()

# Every streaming thread still running, with the flag that stops it.
_running: dict[threading.Thread, threading.Event] = {}
_running_lock = threading.Lock()


def _start_thread(target, name: str, stop: threading.Event) -> threading.Thread:
    """Start a daemon thread that ``_stop_at_exit`` stops (through ``stop``) and joins."""

    def run() -> None:
        try:
            target()
        finally:
            with _running_lock:
                _running.pop(thread, None)

    thread = threading.Thread(target=run, name=name, daemon=True)
    with _running_lock:
        _running[thread] = stop
    thread.start()
    return thread


@atexit.register
def _stop_at_exit() -> None:
    """Stop and join the streams still running when Python exits.

    A daemon thread inside a torch op when the interpreter finalises is ended by ``pthread_exit``
    as it takes the GIL back; that unwinds through torch's C++ frames into ``std::terminate``, and
    the process aborts (exit status 134) after its work is done. Non-daemon threads would not do:
    Python joins them before atexit hooks run, so an abandoned stream would decode its whole
    budget first. Each thread stops within one decoding step once its flag is set.
    """
    with _running_lock:
        running = list(_running.items())
    for _, stop in running:
        stop.set()
    for thread, _ in running:
        thread.join()


def _token_stream(model: Model, constraint, messages: list[dict], max_tokens: int,
                  sampling: Sampling, stop: threading.Event, attempts: list = ()) -> Iterator[Any]:
    """Yields each generated token id, then the finished ``Decoded``; decoding in a thread.

    ``stop`` ends the whole stream (the consumer left, Python exits); ``left`` only this decode,
    when its consumer stops reading, so a retry after it can start on the same ``stop``."""
    row = prepare_row(model, constraint, messages, max_tokens, attempts)
    if stop.is_set():  # stopped before decoding began (the consumer left, or Python is exiting)
        return
    tokens: queue.Queue = queue.Queue()
    left = threading.Event()

    def on_token(_row: int, token: int) -> None:
        if stop.is_set() or left.is_set():
            raise _Cancelled
        tokens.put(token)

    def work() -> None:
        try:
            decode_rows(model, [row], sampling, on_token=on_token)
            tokens.put(_END)
        except _Cancelled:
            tokens.put(_END)
        except BaseException as error:  # handed to the consumer, raised there
            tokens.put(error)

    worker = _start_thread(work, "structgen-stream", stop)
    try:
        while True:
            item = tokens.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        if not stop.is_set():  # cancelled: the consumer wants no final value
            yield finish_row(model, constraint, row, 0.0)
    finally:
        left.set()
        worker.join()


def _text_deltas(model: Model, constraint, messages: list[dict], max_tokens: int,
                 sampling: Sampling, stop: threading.Event, attempts: list = ()) -> Iterator[Any]:
    """Text deltas as they decode (multi-byte characters held until whole), then ``Decoded``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    token_bytes = model.tokenizer_info.token_bytes
    for item in _token_stream(model, constraint, messages, max_tokens, sampling, stop, attempts):
        if not isinstance(item, int):
            yield item
        elif item != constraint.eos_token_id:
            delta = decoder.decode(token_bytes.get(item, b""))
            if delta:
                yield delta


def stream(output_type: Any, prompt, *, model: Model | str | None = None,
           max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
           top_k: int | None = None, seed: int | None = None, whitespace: str = DEFAULT_WHITESPACE,
           max_retries: int = 0, validation_context: Any = None,
           _stop: threading.Event | None = None) -> Iterator[Any]:
    """Yield ``Partial`` values as the answer is written, then the validated value last.

    With ``max_retries``, a final answer a validator refuses yields ``Retry`` and the next
    attempt streams from its start (as ``generate`` retries); out of retries,
    ``RetriesExhaustedError`` is raised."""
    check_max_retries(max_retries)
    model = resolve_model(model)
    constraint = constraint_for(output_type, model, whitespace)
    stop = _stop or threading.Event()
    messages = messages_for(constraint, prompt)
    attempts: list = []
    while True:
        parser = IncrementalJSONParser() if constraint.output_type.is_json else None
        text = ""
        sampling = Sampling(temperature, top_p, top_k, attempt_seed(seed, len(attempts)))
        for item in _text_deltas(model, constraint, messages, max_tokens, sampling, stop, attempts):
            if isinstance(item, str):
                text += item
                if parser is None:
                    yield Partial(value=text, incomplete=frozenset({()}), text=text)
                elif parser.feed(item):
                    value, incomplete = parser.snapshot()
                    yield Partial(value=value, incomplete=incomplete, text=text)
                continue
            try:
                value = constraint.output_type.parse(item.text, context=validation_context)
            except OutputError as error:
                attempts.append(attempt_of(item, error))
                if not retries_for(constraint) or len(attempts) > max_retries:
                    raise refusal(attempts, error)
            else:
                yield value
                return
            error = attempts[-1].error
            yield Retry(len(attempts), item.text, error)
            messages = retry_messages(messages, item.text, [error])
            break
        else:
            return  # stopped: no final value


def stream_text(output_type: Any, prompt, *, model: Model | str | None = None,
                max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
                top_k: int | None = None, seed: int | None = None,
                whitespace: str = DEFAULT_WHITESPACE) -> Iterator[str]:
    """Yield the raw text deltas of the constrained answer, for callers who render it themselves."""
    model = resolve_model(model)
    constraint = constraint_for(output_type, model, whitespace)
    for item in _text_deltas(model, constraint, messages_for(constraint, prompt), max_tokens,
                             Sampling(temperature, top_p, top_k, seed), threading.Event()):
        if isinstance(item, str):
            yield item


async def astream(output_type: Any, prompt, **options) -> AsyncIterator[Any]:
    """``stream`` for asyncio: decoding runs in a worker thread and never blocks the event loop;
    cancelling the consuming task (or closing the generator) stops decoding within one step."""
    async for item in _bridge(stream, output_type, prompt, **options):
        yield item


async def _bridge(generator_function, *args, **options) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def hand_over(kind: str, item: Any) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, (kind, item))
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            stop.set()

    def run() -> None:
        try:
            for item in generator_function(*args, _stop=stop, **options):
                hand_over("item", item)
        except BaseException as error:
            hand_over("error", error)
        finally:
            hand_over("end", None)

    _start_thread(run, "structgen-astream", stop)
    try:
        while True:
            kind, item = await items.get()
            if kind == "end":
                break
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


# --- tool calls ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """Plain text of a turn that answers without calling tools."""

    text: str


@dataclass(frozen=True)
class ToolCallStarted:
    """Call ``index`` of the turn has begun and its tool ``name`` is known."""

    index: int
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    """More of call ``index``: the JSON text that arrived and the arguments parsed so far."""

    index: int
    text: str
    arguments: Any


@dataclass(frozen=True)
class ToolCallFinished:
    """Call ``index`` is complete: its validated ``ToolCall`` (``call.error`` set if its tool
    refused the arguments)."""

    index: int
    call: Any


@dataclass(frozen=True)
class TurnEnded:
    """The assistant turn is over: its whole text, its valid calls, why it stopped, and the calls
    a tool refused (as ``ToolTurn.rejected``)."""

    text: str
    calls: list
    stop_reason: str
    rejected: list = field(default_factory=list)


class ToolTurnEvents:
    """Turns the text of a Hermes assistant turn, fed in deltas, into events.

    A turn is text or ``<tool_call>`` blocks. Each block's JSON goes through one incremental
    parser character by character (so the parser stops exactly at the object's end, before the
    closing tag); the call starts once ``name`` is complete, in either key order.
    """

    def __init__(self, tools):
        self.tools = tools
        self.open_tag, self.close_tag = OPEN_TAG, CLOSE_TAG
        self.text = ""
        self.mode: str | None = None  # None until the first characters decide: "text" or "calls"
        self.cursor = 0  # how much of self.text the calls mode has consumed
        self.block: IncrementalJSONParser | None = None
        self.block_text = ""
        self.index = -1
        self.started = False
        self.arguments: Any = None
        self.calls: list = []

    def feed(self, delta: str) -> list:
        self.text += delta
        if self.mode is None:
            if self.open_tag.startswith(self.text):
                return []
            self.mode = "calls" if self.text.startswith(self.open_tag) else "text"
            if self.mode == "text":
                return [TextDelta(self.text)]
        if self.mode == "text":
            return [TextDelta(delta)]
        return self._calls()

    def end(self, stop_reason: str) -> list:
        events = [TextDelta(self.text)] if self.mode is None and self.text else []
        calls = [call for call in self.calls if call.error is None]
        rejected = [call for call in self.calls if call.error is not None]
        return events + [TurnEnded(self.text, calls, stop_reason, rejected)]

    def _calls(self) -> list:
        events: list = []
        while True:
            rest = self.text[self.cursor:]
            if self.block is None:
                stripped = rest.lstrip()
                if not stripped.startswith(self.open_tag):
                    return events
                self.cursor += len(rest) - len(stripped) + len(self.open_tag)
                self.block, self.block_text = IncrementalJSONParser(), ""
                self.index, self.started, self.arguments = self.index + 1, False, None
                continue
            if not self.block.done:
                fed = ""
                for character in rest:
                    if not character.strip() and not self.block_text.strip():
                        self.cursor += 1  # whitespace before the object
                        continue
                    self.block.feed(character)
                    fed += character
                    self.cursor += 1
                    if self.block.done:
                        break
                self.block_text += fed
                events += self._progress(fed)
                if not self.block.done:
                    return events
                continue
            stripped = rest.lstrip()
            if not stripped.startswith(self.close_tag):
                return events
            self.cursor += len(rest) - len(stripped) + len(self.close_tag)
            events.append(self._finished())
            self.block = None

    def _progress(self, fed: str) -> list:
        value, incomplete = self.block.snapshot()
        if not isinstance(value, dict):
            return []
        events = []
        if not self.started and isinstance(value.get("name"), str) and ("name",) not in incomplete:
            self.started = True
            events.append(ToolCallStarted(self.index, value["name"]))
        if fed and "arguments" in value and value["arguments"] != self.arguments:
            self.arguments = value["arguments"]
            events.append(ArgumentsDelta(self.index, fed, value["arguments"]))
        return events

    def _finished(self) -> ToolCallFinished:
        (call,) = read_tool_calls(f"{self.open_tag}\n{self.block_text}\n{self.close_tag}", self.tools)
        self.calls.append(call)
        return ToolCallFinished(self.index, call)


def stream_tools(tools, prompt, *, model: Model | str | None = None, tool_choice: str | dict = "auto",
                 max_calls: int | None = None, parallel: bool = True,
                 max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int | None = None, seed: int | None = None, whitespace: str = DEFAULT_WHITESPACE,
                 _stop: threading.Event | None = None) -> Iterator[Any]:
    """Yield ``TextDelta``, ``ToolCallStarted``, ``ArgumentsDelta``, ``ToolCallFinished`` and, last,
    ``TurnEnded`` events for one constrained assistant turn (arguments as in ``call_tools``)."""
    model = resolve_model(model)
    tool_list, constraint, messages = tool_turn(tools, prompt, model, tool_choice=tool_choice,
                                                max_calls=max_calls, parallel=parallel,
                                                whitespace=whitespace)
    events = ToolTurnEvents(tool_list)
    for item in _text_deltas(model, constraint, messages, max_tokens,
                             Sampling(temperature, top_p, top_k, seed), _stop or threading.Event()):
        if isinstance(item, str):
            yield from events.feed(item)
        else:
            yield from events.end(item.stop_reason)


async def astream_tools(tools, prompt, **options) -> AsyncIterator[Any]:
    """``stream_tools`` for asyncio, with the same cancellation as ``astream``."""
    async for item in _bridge(stream_tools, tools, prompt, **options):
        yield item
