"""The tool-turn constraint: text or <tool_call> blocks, each a real tool with valid arguments."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from examples import get_current_temperature, get_stock_fundamentals
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layouts import BOUNDED, dumps, relaid

import structgen
from structgen.constraint.tool_calls import text_without, tool_turn_regex
from structgen.parsing.tool_calls import parse_tool_calls
from structgen.schema import WHITESPACE_MODES
from structgen.schema.tools import as_tools

ALPHABET = "<tool_call>/ x\n"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=30))
def test_text_without_a_word_is_exactly_the_text_that_avoids_it(text):
    matches = re.fullmatch(text_without("<tool_call>"), text) is not None
    assert matches == (bool(text) and "<tool_call>" not in text)


TOOLS = as_tools([get_current_temperature, get_stock_fundamentals])
CALL = ('<tool_call>\n{"name":"get_current_temperature","arguments":'
        '{"location":"Paris, France","unit":"celsius"}}\n</tool_call>')
OTHER = '<tool_call>\n{"name":"get_stock_fundamentals","arguments":{"symbol":"TSLA"}}\n</tool_call>'


@pytest.mark.parametrize(("choice", "text", "accepted"), [
    ("auto", CALL, True),
    ("auto", CALL + "\n" + OTHER, True),
    ("auto", "It is sunny.", True),
    ("auto", "Sure: " + CALL, False),  # a turn is text or calls, never both
    ("auto", CALL.replace('"celsius"', '"kelvin"'), False),  # arguments of *that* tool
    ("auto", CALL.replace("get_current_temperature", "get_stock_fundamentals"), False),
    ("required", "It is sunny.", False),
    ("required", OTHER, True),
    ("none", CALL, False),
    ("none", "I cannot call tools.", True),
    ("get_stock_fundamentals", OTHER, True),
    ("get_stock_fundamentals", CALL, False),
])
def test_what_each_tool_choice_accepts(choice, text, accepted):
    regex = tool_turn_regex(TOOLS, tool_choice=choice, whitespace="compact")
    assert (re.fullmatch(regex, text) is not None) == accepted


def test_max_calls_bounds_the_blocks():
    regex = tool_turn_regex(TOOLS, tool_choice="required", max_calls=1, whitespace="compact")
    assert re.fullmatch(regex, CALL)
    assert not re.fullmatch(regex, CALL + "\n" + OTHER)


def test_flexible_whitespace_accepts_the_card_spelling():
    regex = tool_turn_regex(TOOLS, whitespace="flexible")
    text = ('<tool_call>\n{"name": "get_stock_fundamentals", "arguments": {"symbol": "TSLA"}}\n'
            "</tool_call>")
    assert re.fullmatch(regex, text)


PAYLOADS = [
    {"name": "get_current_temperature", "arguments": {"location": "Paris, France", "unit": "celsius"}},
    {"name": "get_stock_fundamentals", "arguments": {"symbol": "TSLA"}},
]


def blocks_of(payloads, mode: str) -> str:
    return "\n".join(f"<tool_call>\n{dumps(p, mode)}\n</tool_call>" for p in payloads)


@pytest.mark.parametrize("mode", BOUNDED)
def test_a_bounded_mode_writes_the_payload_as_json_dumps_does(mode):
    """spaced is the cards' one-line spelling (name first), indented json.dumps(indent=2)."""
    regex = tool_turn_regex(TOOLS, tool_choice="required", whitespace=mode)
    assert re.fullmatch(regex, blocks_of(PAYLOADS, mode))
    for other in BOUNDED:
        if other != mode:
            assert not re.fullmatch(regex, blocks_of(PAYLOADS, other)), other
    arguments_first = [{"arguments": p["arguments"], "name": p["name"]} for p in PAYLOADS]
    assert not re.fullmatch(regex, blocks_of(arguments_first, mode))


@pytest.mark.parametrize("mode", BOUNDED)
@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_call_a_bounded_mode_admits_is_laid_out_as_json_dumps_writes_it(mode, data):
    regex = tool_turn_regex(TOOLS, tool_choice="required", max_calls=2, whitespace=mode)
    text = data.draw(st.from_regex(regex, fullmatch=True))
    calls = parse_tool_calls(text, TOOLS)
    payloads = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.DOTALL)
    assert len(payloads) == len(calls) >= 1
    for payload, call in zip(payloads, calls):
        assert relaid(payload, mode) == payload, payload
        assert list(json.loads(payload)) == ["name", "arguments"] and call.parsed is not None


def test_an_unknown_whitespace_mode_is_a_typed_error():
    with pytest.raises(structgen.InvalidSchemaError, match="'spaced', 'indented'"):
        tool_turn_regex(TOOLS, whitespace="pretty")


def test_an_unknown_tool_choice_is_a_typed_error():
    with pytest.raises(structgen.ToolDefinitionError, match="get_current_temperature"):
        tool_turn_regex(TOOLS, tool_choice="get_weather")


# --- decoding on the tiny random model: whatever the weights, calls are real and valid ------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), choice=st.sampled_from(["auto", "required", "none"]),
       budget=st.integers(70, 160), mode=st.sampled_from(WHITESPACE_MODES))
def test_random_weights_produce_only_valid_calls(tiny_model, seed, choice, budget, mode):
    turn = structgen.call_tools_with_details(TOOLS, "What's the temperature in Paris?",
                                             model=tiny_model, tool_choice=choice, temperature=1.0,
                                             seed=seed, max_tokens=budget, whitespace=mode)
    assert turn.completion_tokens <= budget
    if choice == "none":
        assert turn.calls == [] and "<tool_call>" not in turn.text
    if choice == "required":
        assert turn.calls
    by_name = {tool.name: tool for tool in TOOLS}
    for call in turn.calls:
        jsonschema.validate(call.arguments, by_name[call.name].parameters)
    assert [c.name for c in parse_tool_calls(turn.text, TOOLS)] == [c.name for c in turn.calls]
    if mode != "flexible":
        for payload in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", turn.text, re.DOTALL):
            assert relaid(payload, mode) == payload, payload


def test_a_single_special_token_tag_is_used(smollm2_tokenizer):
    """Hermes tokenizers have <tool_call> as one (special) token: the constraint must allow it."""
    import copy

    from structgen.constraint.vocabulary import TokenizerInfo

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    info = TokenizerInfo.from_huggingface(tokenizer)
    open_id = tokenizer.convert_tokens_to_ids("<tool_call>")
    constraint = structgen.compile_constraint(
        structgen.Regex(tool_turn_regex(TOOLS, tool_choice="required", whitespace="compact")), info,
        whitespace="compact")
    matcher = constraint.matcher()
    assert open_id in matcher.allowed_token_ids()
    ids = tokenizer(OTHER, add_special_tokens=False)["input_ids"]
    assert ids[0] == open_id
    for token in ids:
        assert matcher.advance(token)
    assert matcher.is_accepting()


ANSWER_ALPHABET = "<tool_cal>/respn x\n"


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet=ANSWER_ALPHABET, max_size=40))
def test_a_text_turn_is_exactly_the_text_without_either_tag(text):
    matches = re.fullmatch(text_without("<tool_call>", "<tool_response>"), text) is not None
    assert matches == (bool(text) and "<tool_call>" not in text and "<tool_response>" not in text)


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_an_assistant_text_turn_never_writes_a_tool_response(choice):
    regex = tool_turn_regex(TOOLS, tool_choice=choice)
    echo = '<tool_response>\n{"name": "get_current_temperature", "content": 22.0}\n</tool_response>'
    assert re.fullmatch(regex, "It is 22 degrees.")
    assert not re.fullmatch(regex, echo)
    assert not re.fullmatch(regex, "Result: " + echo)
    assert re.fullmatch(regex, "a <tool_respond> or <tool_> is text")


def test_a_single_special_token_tool_response_is_never_allowed_in_text(smollm2_tokenizer):
    """Hermes tokenizers have <tool_response> as one token: the text turn must mask it too."""
    import copy

    from structgen.constraint.vocabulary import TokenizerInfo

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tool_response>"]})
    info = TokenizerInfo.from_huggingface(tokenizer)
    response_id = tokenizer.convert_tokens_to_ids("<tool_response>")
    constraint = structgen.compile_constraint(
        structgen.Regex(tool_turn_regex(TOOLS, tool_choice="none")), info)
    matcher = constraint.matcher()
    assert response_id not in matcher.allowed_token_ids()
    for token in tokenizer("The answer: <tool_resp", add_special_tokens=False)["input_ids"]:
        assert matcher.advance(token)
        assert response_id not in matcher.allowed_token_ids()
    finishing_the_tag = tokenizer("onse>", add_special_tokens=False)["input_ids"]
    assert not all(matcher.advance(token) for token in finishing_the_tag)


@pytest.mark.parametrize("max_calls", ["2", 1.5, True])
def test_max_calls_of_the_wrong_type_is_a_typed_error(max_calls):
    with pytest.raises(structgen.ToolDefinitionError, match="max_calls must be an int"):
        tool_turn_regex(TOOLS, tool_choice="required", max_calls=max_calls)
