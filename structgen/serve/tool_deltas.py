"""A Hermes tool turn as OpenAI deltas: ``content`` text, or ``tool_calls`` with index, id and name
first, then argument fragments that concatenate to exactly the call's final ``arguments``.

``ToolTurnEvents`` (the one that ``stream_tools`` uses) reads the turn; it is fed one character at
a time so that its current block is always the one the character belongs to. The arguments sent
are the model's own text of the arguments value: structgen's constraint writes ``name`` first,
so once ``"arguments":`` is read everything up to the block's closing brace is the value;
trailing whitespace is held back until something follows it, since it may end the value.
"""

from __future__ import annotations

import json
import re
import secrets

from structgen.decoding.streaming import TextDelta, ToolCallFinished, ToolCallStarted, ToolTurnEvents
from structgen.errors import OutputError

_ARGUMENTS_START = re.compile(r'\{\s*"name"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*"arguments"\s*:\s*(?=\S)')


class ToolCallDeltas:
    """``feed(text)`` -> delta dicts; ``calls()`` -> the finished calls in OpenAI's shape."""

    def __init__(self, tools):
        self.events = ToolTurnEvents(tools)
        self.text = ""  # the turn's content, when it answers in text
        self.finished: list[dict] = []
        self._id = self._name = ""
        self._sent = ""  # arguments text of the current call sent so far

    def feed(self, text: str) -> list[dict]:
        deltas: list[dict] = []
        for character in text:
            for event in self.events.feed(character):
                deltas += self._delta_of(event)
            deltas += self._arguments()
        return _merged(deltas)

    def end(self, stop_reason: str) -> list[dict]:
        deltas: list[dict] = []
        for event in self.events.end(stop_reason):
            deltas += self._delta_of(event)
        return deltas

    def _delta_of(self, event) -> list[dict]:
        if isinstance(event, ToolCallStarted):
            self._id, self._name, self._sent = "call_" + secrets.token_hex(12), event.name, ""
            return [_call_delta(event.index, {"name": event.name, "arguments": ""}, id_=self._id)]
        if isinstance(event, ToolCallFinished):
            if event.call.error is not None:  # a dict tool's arguments fit its schema: a bug if seen
                raise OutputError(f"the call of {event.call.name!r} does not validate: {event.call.error}",
                                  self.events.text)
            arguments = self._final_arguments(event.call)
            rest, self._sent = arguments[len(self._sent):], arguments
            self.finished.append({"id": self._id, "type": "function",
                                  "function": {"name": self._name, "arguments": arguments}})
            return [_call_delta(event.index, {"arguments": rest})] if rest else []
        if isinstance(event, TextDelta) and event.text:
            self.text += event.text
            return [{"content": event.text}]
        return []  # TurnEnded: the caller knows the turn is over

    def _arguments(self) -> list[dict]:
        """The next fragment of the current call's arguments, if the block grew."""
        events = self.events
        if events.block is None or events.block.done or not events.started:
            return []
        start = _ARGUMENTS_START.match(events.block_text)
        if start is None:
            return []
        known = events.block_text[start.end():].rstrip()
        if len(known) <= len(self._sent):
            return []
        fragment, self._sent = known[len(self._sent):], known
        return [_call_delta(events.index, {"arguments": fragment})]

    def _final_arguments(self, call) -> str:
        start = _ARGUMENTS_START.match(self.events.block_text)
        if start is None:  # arguments written before the name (not structgen's constraint)
            return json.dumps(call.arguments, ensure_ascii=False)
        return self.events.block_text[start.end():].rstrip()[:-1].rstrip()


def _call_delta(index: int, function: dict, id_: str | None = None) -> dict:
    entry = {"index": index}
    if id_ is not None:
        entry.update(id=id_, type="function")
    entry["function"] = function
    return {"tool_calls": [entry]}


def _merged(deltas: list[dict]) -> list[dict]:
    """Consecutive content deltas, and argument fragments of one call, as one delta each."""
    merged: list[dict] = []
    for delta in deltas:
        last = merged[-1] if merged else None
        if last is not None and "content" in delta and "content" in last:
            last["content"] += delta["content"]
        elif (last is not None and "tool_calls" in delta and "tool_calls" in last
              and set(delta["tool_calls"][0]) == {"index", "function"}
              and set(delta["tool_calls"][0]["function"]) == {"arguments"}
              and last["tool_calls"][0]["index"] == delta["tool_calls"][0]["index"]):
            last["tool_calls"][0]["function"]["arguments"] += delta["tool_calls"][0]["function"]["arguments"]
        else:
            merged.append(delta)
    return merged
