"""The regex of a Hermes assistant turn that may call tools.

A turn is either plain text or one or more call blocks, never a mix (how Hermes 2 Pro answers):

    <tool_call>
    {"name": "get_current_temperature", "arguments": {"location": "Paris, France", "unit": "celsius"}}
    </tool_call>

Each block is a union over the tools, not one merged schema: the name picks the tool and the
arguments must validate against *that* tool's parameters. structgen writes ``name`` first, so
the model commits to a tool before writing its arguments (the parser accepts both orders).

The tags are matched as text, so a tokenizer that has ``<tool_call>`` as one token (Hermes) and
one that spells it in several (SmolLM2) are both served by the same regex.
"""

from __future__ import annotations

import json
import re

from structgen.errors import ToolDefinitionError
from structgen.schema import WHITESPACE, schema_to_regex

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
TOOL_CHOICES = ("auto", "required", "none")


def tool_turn_regex(tools, *, tool_choice: str = "auto", max_calls: int | None = None,
                    whitespace: str = "compact") -> str:
    """Regex of an assistant turn for ``tools`` (a list of ``Tool``) under ``tool_choice``.

    ``tool_choice``: "auto" (text, or one or more calls), "required" (at least one call), "none"
    (text only), or a tool name (calls of exactly that tool). ``max_calls`` bounds the number of
    blocks (None: unbounded, the token budget still closes the last one).
    """
    if max_calls is not None and max_calls < 1:
        raise ToolDefinitionError(f"max_calls must be at least 1, not {max_calls}")
    if tool_choice == "none":
        return text_without(OPEN_TAG)
    if tool_choice in ("auto", "required"):
        chosen = list(tools)
    else:
        chosen = [tool for tool in tools if tool.name == tool_choice]
        if not chosen:
            known = ", ".join(tool.name for tool in tools)
            raise ToolDefinitionError(
                f"tool_choice must be one of {TOOL_CHOICES} or a tool name ({known}), "
                f"not {tool_choice!r}")
    calls = _calls(chosen, max_calls, whitespace)
    if tool_choice == "auto":
        return f"(?:{calls})|(?:{text_without(OPEN_TAG)})"
    return calls


def _calls(tools, max_calls: int | None, whitespace: str) -> str:
    ws = WHITESPACE if whitespace == "flexible" else ""
    blocks = "|".join(f"(?:{_call(tool, ws, whitespace)})" for tool in tools)
    block = f"{re.escape(OPEN_TAG)}\n{ws}(?:{blocks}){ws}\n{re.escape(CLOSE_TAG)}"
    more = "*" if max_calls is None else f"{{0,{max_calls - 1}}}"
    return f"{block}(?:\n{ws}{block}){more}"


def _call(tool, ws: str, whitespace: str) -> str:
    """``{"name": "<tool>", "arguments": <arguments of that tool>}``."""
    arguments = schema_to_regex(tool.parameters, whitespace=whitespace)
    name = re.escape(json.dumps(tool.name, ensure_ascii=False))
    return (rf'\{{{ws}"name"{ws}:{ws}{name}{ws},{ws}"arguments"{ws}:{ws}(?:{arguments}){ws}\}}')


def text_without(word: str) -> str:
    """Regex of non-empty text that never contains ``word`` (whose first char does not recur in it).

    Units of text are: a char other than ``word[0]``; or ``word[0]`` plus a proper prefix of the
    rest plus a char that breaks the match and is not ``word[0]`` either. A bare prefix (``<too``)
    may only stand right before another unit starting with ``word[0]``, or at the very end.
    """
    first, rest = word[0], word[1:]
    if first in rest:
        raise ValueError(f"{word!r}: its first character recurs in it")
    bare = "|".join(re.escape(first + rest[:k]) for k in range(len(rest)))
    broken = "|".join(
        re.escape(first + rest[:k]) + f"[^{re.escape(first)}{re.escape(rest[k])}]"
        for k in range(len(rest))
    )
    unit = f"[^{re.escape(first)}]|(?:{bare})*(?:{broken})"
    return f"(?:(?:{unit})+(?:{bare})*|(?:{bare})+)"
