"""The regex of a Hermes assistant turn that may call tools.

A turn is either plain text or one or more call blocks, never a mix (how Hermes 2 Pro answers):

    <tool_call>
    {"name": "get_current_temperature", "arguments": {"location": "Paris, France", "unit": "celsius"}}
    </tool_call>

Each block is a union over the tools, not one merged schema: the name picks the tool and the
arguments must validate against *that* tool's parameters. structgen writes ``name`` first, so
the model commits to a tool before writing its arguments (the parser accepts both orders). The
payload follows the whitespace mode as JSON mode does: ``spaced`` is the cards' spelling above,
``indented`` is ``json.dumps(payload, indent=2)``, with the arguments one level in.

The tags are matched as text, so a tokenizer that has ``<tool_call>`` as one token (Hermes) and
one that spells it in several (SmolLM2) are both served by the same regex.

A text turn never contains ``<tool_call>`` (it would be a call) nor ``<tool_response>``: results
come from the tools, never from the assistant, and a model echoing that block as its answer
would be mistaken for one.
"""

from __future__ import annotations

import json
import re

from structgen.errors import ToolDefinitionError
from structgen.schema import DEFAULT_WHITESPACE, schema_to_regex
from structgen.schema.layout import Layout

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
RESPONSE_TAG = "<tool_response>"
TOOL_CHOICES = ("auto", "required", "none")


def tool_turn_regex(tools, *, tool_choice: str = "auto", max_calls: int | None = None,
                    whitespace: str = DEFAULT_WHITESPACE) -> str:
    """Regex of an assistant turn for ``tools`` (a list of ``Tool``) under ``tool_choice``.

    ``tool_choice``: "auto" (text, or one or more calls), "required" (at least one call), "none"
    (text only), or a tool name (calls of exactly that tool), also in OpenAI's object form
    ``{"type": "function", "function": {"name": ...}}``. ``max_calls`` bounds the number of
    blocks (None: unbounded, the token budget still closes the last one).
    """
    layout = Layout(whitespace)
    tool_choice = tool_choice_name(tool_choice)
    if max_calls is not None and (not isinstance(max_calls, int) or isinstance(max_calls, bool)):
        raise ToolDefinitionError(f"max_calls must be an int or None, not {max_calls!r}")
    if max_calls is not None and max_calls < 1:
        raise ToolDefinitionError(f"max_calls must be at least 1, not {max_calls}")
    if tool_choice == "none":
        return text_without(OPEN_TAG, RESPONSE_TAG)
    if tool_choice in ("auto", "required"):
        chosen = list(tools)
    else:
        chosen = [tool for tool in tools if tool.name == tool_choice]
        if not chosen:
            known = ", ".join(tool.name for tool in tools)
            raise ToolDefinitionError(
                f"tool_choice must be one of {TOOL_CHOICES} or a tool name ({known}), "
                f"not {tool_choice!r}")
    calls = _calls(chosen, max_calls, layout)
    if tool_choice == "auto":
        return f"(?:{calls})|(?:{text_without(OPEN_TAG, RESPONSE_TAG)})"
    return calls


def tool_choice_name(tool_choice) -> str:
    """``tool_choice`` as a string: OpenAI's ``{"type": "function", "function": {"name": N}}`` is N."""
    if isinstance(tool_choice, str):
        return tool_choice
    name = None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise ToolDefinitionError(f"tool_choice must be one of {TOOL_CHOICES}, a tool name, or "
                                  '{"type": "function", "function": {"name": ...}}, '
                                  f"not {tool_choice!r}")
    return name


def _calls(tools, max_calls: int | None, layout: Layout) -> str:
    ws = layout.ws  # flexible only: whitespace around the payload
    blocks = "|".join(f"(?:{_call(tool, layout)})" for tool in tools)
    block = f"{re.escape(OPEN_TAG)}\n{ws}(?:{blocks}){ws}\n{re.escape(CLOSE_TAG)}"
    more = "*" if max_calls is None else f"{{0,{max_calls - 1}}}"
    return f"{block}(?:\n{ws}{block}){more}"


def _call(tool, layout: Layout) -> str:
    """``{"name": "<tool>", "arguments": <arguments of that tool>}``, laid out as the whitespace
    mode lays out any object (the arguments one level deeper)."""
    arguments = schema_to_regex(tool.parameters, whitespace=layout.mode, level=1)
    name = re.escape(json.dumps(tool.name, ensure_ascii=False))
    members = [f'"name"{layout.colon}{name}', f'"arguments"{layout.colon}(?:{arguments})']
    return layout.enclose(r"\{", layout.comma(0).join(members), False, r"\}", 0)


def text_without(*words: str) -> str:
    """Regex of non-empty text that contains none of ``words``, whose first characters occur in
    no word but as its first character (``<`` in the tags).

    Units of text are: a char that starts no word; or a proper prefix of a word plus a char that
    continues no word from there and starts none either. A bare prefix (``<too``) may only stand
    right before another unit starting a word, or at the very end.
    """
    firsts = {word[0] for word in words}
    if any(char in firsts for word in words for char in word[1:]):
        raise ValueError(f"{words!r}: a first character recurs inside a word")
    prefixes = sorted({word[:k] for word in words for k in range(1, len(word))} - set(words))
    starts = "".join(map(re.escape, sorted(firsts)))
    bare = "|".join(map(re.escape, prefixes))
    broken = "|".join(
        re.escape(prefix) + f"[^{starts}{_continuations(prefix, words)}]" for prefix in prefixes
    )
    unit = f"[^{starts}]|(?:{bare})*(?:{broken})"
    return f"(?:(?:{unit})+(?:{bare})*|(?:{bare})+)"


def _continuations(prefix: str, words: tuple[str, ...]) -> str:
    """The characters that extend ``prefix`` towards one of ``words``, escaped for a class."""
    following = {word[len(prefix)] for word in words if len(word) > len(prefix) and word.startswith(prefix)}
    return "".join(map(re.escape, sorted(following)))
