"""Tools (functions, BaseModels, dicts → Tool) and Hermes <tool_call> parsing and formatting."""

import asyncio
import enum
import functools
import json
import re
from typing import Annotated, Optional

import pydantic
import pytest
from examples import get_current_temperature
from hypothesis import given, settings
from hypothesis import strategies as st

from structgen.errors import (
    ToolArgumentsError,
    ToolCallParseError,
    ToolDefinitionError,
    ToolInputError,
)
from structgen.parsing import ToolCall, format_tool_call, parse_tool_calls
from structgen.parsing.tool_calls import read_tool_calls
from structgen.schema import schema_to_regex
from structgen.schema.tools import Tool, as_tool, as_tools


def get_stock_fundamentals(symbol: str) -> dict:
    """
    Get fundamental data for a given stock symbol using yfinance API.

    Args:
        symbol (str): The stock symbol.

    Returns:
        dict: A dictionary containing fundamental data.
            Keys:
                - 'symbol': The stock symbol.
                - 'company_name': The long name of the company.
    """
    return {"symbol": symbol, "company_name": "Tesla, Inc."}


class Cuisine(enum.Enum):
    ITALIAN = "italian"
    THAI = "thai"


class Address(pydantic.BaseModel):
    """Where to deliver."""

    street: str
    city: str = "Paris"


def order_food(
    cuisine: Cuisine,
    address: Address,
    guests: int,
    note: Optional[str] = None,
    dishes: list[str] = ["chef's choice"],
    budget: dict[str, float] = {},
    drink: str = "water",
) -> str:
    """Order food for delivery.

    Args:
        cuisine: Which kitchen.
        address: Where to deliver.
        guests: How many people eat.
        note: A note for the driver.
        dishes: What to order.
        budget: Spending limit per person name.
        drink: What to drink with it (choices: ["water", " wine ", "tea"])
    """
    return "ordered"


WEATHER = as_tool(get_current_temperature)
STOCK = as_tool(get_stock_fundamentals)
FOOD = as_tool(order_food)
TOOLS = [WEATHER, STOCK, FOOD]


# --- functions ----------------------------------------------------------------------------------


def test_weather_tool_signature_is_the_hermes_openai_shape():
    assert WEATHER.signature() == {
        "type": "function",
        "function": {
            "name": "get_current_temperature",
            "description": "Get the current temperature at a location.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": 'The location, in the format "City, Country"',
                    },
                    "unit": {
                        "type": "string",
                        "enum": ["celsius", "fahrenheit"],
                        "description": "The unit to return the temperature in.",
                    },
                },
                "required": ["location", "unit"],
                "additionalProperties": False,
            },
        },
    }
    assert WEATHER.function is get_current_temperature
    assert WEATHER.validate_arguments({"location": "Paris, France", "unit": "celsius"}) == {
        "location": "Paris, France",
        "unit": "celsius",
    }


def test_stock_tool_from_the_model_card_reads_the_typed_google_docstring():
    assert STOCK.name == "get_stock_fundamentals"
    assert STOCK.description == "Get fundamental data for a given stock symbol using yfinance API."
    assert STOCK.parameters == {
        "type": "object",
        "properties": {"symbol": {"type": "string", "description": "The stock symbol."}},
        "required": ["symbol"],
        "additionalProperties": False,
    }
    card_output = (
        '<tool_call>\n{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}\n'
        "</tool_call>"
    )
    [call] = parse_tool_calls(card_output, [STOCK])
    assert (call.name, call.arguments, call.parsed) == (
        "get_stock_fundamentals", {"symbol": "TSLA"}, {"symbol": "TSLA"})
    assert STOCK.function(**call.parsed)["symbol"] == "TSLA"


def test_typed_parameters_get_their_schemas():
    properties = FOOD.parameters["properties"]
    assert FOOD.parameters["required"] == ["cuisine", "address", "guests"]
    assert properties["cuisine"]["$ref"] == "#/$defs/Cuisine"
    assert FOOD.parameters["$defs"]["Cuisine"]["enum"] == ["italian", "thai"]
    assert FOOD.parameters["$defs"]["Address"]["required"] == ["street"]
    assert properties["guests"]["type"] == "integer"
    assert properties["note"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert properties["dishes"]["items"] == {"type": "string"}
    assert properties["budget"]["additionalProperties"] == {"type": "number"}
    assert all("title" not in schema for schema in properties.values())
    assert "title" not in FOOD.parameters


def test_choices_in_a_description_become_an_enum():
    drink = FOOD.parameters["properties"]["drink"]
    assert drink["enum"] == ["water", "wine", "tea"]
    assert drink["description"] == "What to drink with it"
    assert FOOD.validate_arguments(_food(drink="tea"))["drink"] == "tea"
    with pytest.raises(ToolArgumentsError, match="drink"):
        FOOD.validate_arguments(_food(drink="beer"))


def _food(**overrides):
    return {"cuisine": "thai", "address": {"street": "1 Rue X"}, "guests": 2, **overrides}


def test_validation_returns_typed_keyword_arguments_with_defaults_filled():
    kwargs = FOOD.validate_arguments(_food(note="ring twice"))
    assert kwargs == {
        "cuisine": Cuisine.THAI,
        "address": Address(street="1 Rue X", city="Paris"),
        "guests": 2,
        "note": "ring twice",
        "dishes": ["chef's choice"],
        "budget": {},
        "drink": "water",
    }
    assert order_food(**kwargs) == "ordered"


@pytest.mark.parametrize(("arguments", "where"), [
    (_food(cuisine="french"), "cuisine"),
    (_food(guests="many"), "guests"),
    (_food(address={"city": "Rome"}), "address.street"),
    (_food(budget={"ann": "lots"}), "budget.ann"),
    ({"cuisine": "thai", "address": {"street": "x"}}, "guests"),
    (_food(tip=5), "tip"),  # the schema is closed, so unknown arguments are refused too
])
def test_invalid_arguments_raise_tool_arguments_error_naming_the_place(arguments, where):
    with pytest.raises(ToolArgumentsError) as caught:
        FOOD.validate_arguments(arguments)
    assert caught.value.tool == "order_food"
    assert caught.value.arguments == arguments
    assert where in caught.value.reason
    assert "pydantic" not in str(caught.value)


def test_arguments_that_are_not_an_object_raise_tool_arguments_error():
    with pytest.raises(ToolArgumentsError, match="JSON object"):
        WEATHER.validate_arguments(["Paris"])


def test_parameter_names_that_pydantic_reserves_still_work():
    def lookup(json: str, schema: int = 1, model_config: bool = False, _private: str = "x"):
        """Look something up."""

    tool = as_tool(lookup)
    assert list(tool.parameters["properties"]) == ["json", "schema", "model_config", "_private"]
    assert tool.validate_arguments({"json": "a", "_private": "b"}) == {
        "json": "a", "schema": 1, "model_config": False, "_private": "b"}


def test_async_function_without_docstring_is_a_tool_with_empty_description():
    async def ping(host: str) -> bool:
        return True

    tool = as_tool(ping)
    assert tool.description == ""
    assert "description" not in tool.parameters["properties"]["host"]
    assert asyncio.run(tool.function(**tool.validate_arguments({"host": "a"}))) is True


def test_function_without_parameters_takes_an_empty_object():
    def now() -> str:
        """The time."""

    tool = as_tool(now)
    assert tool.parameters == {
        "type": "object", "properties": {}, "required": [], "additionalProperties": False}
    assert tool.validate_arguments({}) == {}


class Opaque:
    pass


def _missing_hint(location, unit: str):
    """Doc."""


def _star_args(*places: str):
    """Doc."""


def _star_kwargs(place: str, **options: str):
    """Doc."""


def _positional_only(place: str, /):
    """Doc."""


def _opaque(thing: Opaque):
    """Doc."""


def _bad_choices(unit: str):
    """Doc.

    Args:
        unit: Unit (choices: celsius or fahrenheit)
    """


@pytest.mark.parametrize(("function", "parameter", "reason"), [
    (_missing_hint, "location", "no type hint"),
    (_star_args, "places", "*args"),
    (_star_kwargs, "options", "**kwargs"),
    (_positional_only, "place", "positional-only"),
    (_opaque, "thing", "pydantic cannot describe"),
    (_bad_choices, "unit", "choices"),
])
def test_bad_function_definitions_name_the_function_and_parameter(function, parameter, reason):
    with pytest.raises(ToolDefinitionError, match=re.escape(reason)) as caught:
        as_tool(function)
    assert caught.value.tool == function.__name__
    assert caught.value.parameter == parameter
    assert f"tool {function.__name__!r}, parameter {parameter!r}" in str(caught.value)


@pytest.mark.parametrize("function", [
    lambda x: x,
    functools.partial(get_current_temperature, unit="celsius"),
])
def test_callables_without_a_usable_name_are_refused(function):
    with pytest.raises(ToolDefinitionError, match="no name usable"):
        as_tool(function)


def test_things_that_are_no_tool_are_refused():
    with pytest.raises(ToolDefinitionError, match="cannot describe 42"):
        as_tool(42)


# --- BaseModels and dicts ------------------------------------------------------------------------


class SearchFlights(pydantic.BaseModel):
    """
    Search flights between two airports.
    """

    origin: str = pydantic.Field(pattern="^[A-Z]{3}$")
    destination: str
    passengers: int = 1


def test_basemodel_tool_returns_model_instances():
    tool = as_tool(SearchFlights)
    assert (tool.name, tool.description, tool.function) == (
        "SearchFlights", "Search flights between two airports.", None)
    assert tool.parameters == SearchFlights.model_json_schema()
    assert tool.validate_arguments({"origin": "CDG", "destination": "JFK"}) == SearchFlights(
        origin="CDG", destination="JFK", passengers=1)
    with pytest.raises(ToolArgumentsError, match="origin"):
        tool.validate_arguments({"origin": "Paris", "destination": "JFK"})


def test_basemodel_without_docstring_has_empty_description():
    class Empty(pydantic.BaseModel):
        pass

    assert as_tool(Empty).description == ""


BOOK = {
    "name": "book_room",
    "description": "Book a hotel room.",
    "parameters": {
        "type": "object",
        "properties": {
            "hotel": {"type": "string"},
            "night": {"type": "string", "format": "date"},
            "rooms": {"type": "integer", "minimum": 1},
        },
        "required": ["hotel", "night"],
    },
}


@pytest.mark.parametrize("spec", [BOOK, {"type": "function", "function": BOOK}])
def test_dict_tool_in_both_forms_validates_with_jsonschema(spec):
    tool = as_tool(spec)
    assert tool.signature() == {"type": "function", "function": BOOK}
    arguments = {"hotel": "Ritz", "night": "2024-06-01"}
    assert tool.validate_arguments(arguments) is arguments
    with pytest.raises(ToolArgumentsError, match="is not a 'date'"):
        tool.validate_arguments({"hotel": "Ritz", "night": "June 1st"})
    with pytest.raises(ToolArgumentsError, match=r"\$.rooms"):
        tool.validate_arguments({**arguments, "rooms": 0})


def test_dict_tool_without_parameters_takes_no_arguments():
    tool = as_tool({"type": "function", "function": {"name": "get_time"}})
    assert (tool.description, tool.parameters) == ("", {"type": "object", "properties": {}})
    assert tool.validate_arguments({}) == {}


@pytest.mark.parametrize(("spec", "reason"), [
    ({"type": "tool", "function": BOOK}, '"type" (= "function")'),
    ({"type": "function", "function": BOOK, "id": 1}, '"type" (= "function")'),
    ({"type": "function", "function": "book_room"}, '"function" must be a dict'),
    ({"description": "no name"}, "tool name"),
    ({"name": ""}, "tool name"),
    ({"name": "book room"}, "tool name"),
    ({"name": "x" * 65}, "tool name"),
    ({"name": 7}, "tool name"),
    ({"name": "f", "parameter": {}}, "unknown key(s) ['parameter']"),
    ({"name": "f", "description": None}, "description must be a string"),
    ({"name": "f", "parameters": {"type": "string"}}, '"type": "object"'),
    ({"name": "f", "parameters": {"properties": {}}}, '"type": "object"'),
    ({"name": "f", "parameters": None}, '"type": "object"'),
    ({"name": "f", "parameters": {"type": "object", "properties": 3}}, "not a valid JSON schema"),
    ({"name": "f", "parameters": {"type": "object", "required": "x"}}, "not a valid JSON schema"),
])
def test_bad_dict_tools_are_refused(spec, reason):
    with pytest.raises(ToolDefinitionError, match=re.escape(reason)):
        as_tool(spec)


def test_a_tool_is_returned_as_is():
    assert as_tool(WEATHER) is WEATHER
    tool = Tool("noop", "", {"type": "object"})
    assert tool.validate_arguments({"any": 1}) == {"any": 1}


def test_as_tools_converts_each_and_takes_a_single_tool():
    assert [t.name for t in as_tools([get_current_temperature, SearchFlights, BOOK])] == [
        "get_current_temperature", "SearchFlights", "book_room"]
    assert as_tools(get_current_temperature) == [WEATHER]


@pytest.mark.parametrize(("tools", "reason"), [
    ([], "no tools"),
    ((t for t in []), "no tools"),
    ([get_current_temperature, WEATHER], "same name"),
    ([BOOK, {"type": "function", "function": BOOK}], "same name"),
    (3, "list of tools"),
])
def test_as_tools_refuses_empty_lists_and_duplicate_names(tools, reason):
    with pytest.raises(ToolDefinitionError, match=reason):
        as_tools(tools)


@pytest.mark.parametrize("tool", [
    WEATHER, STOCK, FOOD, as_tool(SearchFlights), as_tool(BOOK),
    as_tool({"name": "get_time"}), as_tool(order_food),
], ids=lambda tool: tool.name)
def test_every_good_tool_compiles_to_a_regex(tool):
    pattern = schema_to_regex(tool.parameters, whitespace="compact")
    assert re.fullmatch(pattern, json.dumps(_an_example(tool.name), separators=(",", ":")))


def _an_example(name):
    return {
        "get_current_temperature": {"location": "Paris, France", "unit": "celsius"},
        "get_stock_fundamentals": {"symbol": "TSLA"},
        "order_food": _food(),
        "SearchFlights": {"origin": "CDG", "destination": "JFK"},
        "book_room": {"hotel": "Ritz", "night": "2024-06-01"},
        "get_time": {},
    }[name]


# --- parsing -------------------------------------------------------------------------------------


def test_both_key_orders_parse():
    name_first = '{"name": "get_stock_fundamentals", "arguments": {"symbol": "TSLA"}}'
    arguments_first = '{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}'
    for payload in (name_first, arguments_first):
        [call] = parse_tool_calls(f"<tool_call>{payload}</tool_call>", TOOLS)
        assert (call.name, call.arguments) == ("get_stock_fundamentals", {"symbol": "TSLA"})


def test_several_calls_among_text_and_whitespace():
    text = (
        "Let me check both.\n<tool_call>\n\n  {\n  \"name\": \"get_current_temperature\",\n"
        '  "arguments": {"location": "Paris, France", "unit": "celsius"}\n}\n\t </tool_call>'
        " and then <tool_call>"
        '{"arguments": {"cuisine": "italian", "address": {"street": "2 Via Roma", "city": "Rome"},'
        ' "guests": 4}, "name": "order_food"}</tool_call>\nDone.'
    )
    weather, food = parse_tool_calls(text, TOOLS)
    assert weather.parsed == {"location": "Paris, France", "unit": "celsius"}
    assert food.arguments["guests"] == 4
    assert food.parsed["cuisine"] is Cuisine.ITALIAN
    assert food.parsed["address"] == Address(street="2 Via Roma", city="Rome")


def test_text_without_blocks_has_no_calls():
    assert parse_tool_calls("It is 22 degrees in Paris.", TOOLS) == []
    assert parse_tool_calls("", TOOLS) == []


def test_arguments_given_as_a_json_string_are_decoded():
    payload = {"name": "get_stock_fundamentals", "arguments": json.dumps({"symbol": "TSLA"})}
    [call] = parse_tool_calls(f"<tool_call>{json.dumps(payload)}</tool_call>", TOOLS)
    assert call.arguments == {"symbol": "TSLA"}


def test_a_tag_inside_a_string_argument_does_not_end_the_block():
    arguments = {"location": "</tool_call> <tool_call>", "unit": "celsius"}
    [call] = parse_tool_calls(format_tool_call("get_current_temperature", arguments), TOOLS)
    assert call.arguments == arguments


GOOD = format_tool_call("get_stock_fundamentals", {"symbol": "TSLA"})


@pytest.mark.parametrize(("bad", "reason"), [
    ("<tool_call>get_stock_fundamentals(symbol='TSLA')</tool_call>", "not JSON"),
    ("<tool_call>{'name': 'get_stock_fundamentals', 'arguments': {}}</tool_call>", "not JSON"),
    ('<tool_call>{"name": "f", "arguments": {}} trailing</tool_call>', "not JSON"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": {"symbol": NaN}}</tool_call>',
     "NaN is not a JSON value"),
    ("<tool_call>" + "[" * 100_000 + "</tool_call>", "not JSON"),
    ('<tool_call>["get_stock_fundamentals", {"symbol": "TSLA"}]</tool_call>', "not a JSON object"),
    ('<tool_call>{"name": "get_stock_fundamentals"}</tool_call>', "keys missing: ['arguments']"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": {}, "id": 1}</tool_call>',
     "unexpected: ['id']"),
    ('<tool_call>{"name": ["x"], "arguments": {}}</tool_call>', "name is not a string"),
    ('<tool_call>{"name": "get_weather", "name": "get_stock_fundamentals", "arguments": '
     '{"symbol": "TSLA"}}</tool_call>', "the key 'name' appears twice in one object: the call is ambiguous"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": {}, "arguments": {"symbol": "TSLA"}}'
     "</tool_call>", "the key 'arguments' appears twice in one object: the call is ambiguous"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": {"symbol": "F", "symbol": "TSLA"}}'
     "</tool_call>", "do not validate: the key 'symbol' appears twice in one object"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": "{\\"symbol\\": \\"F\\", '
     '\\"symbol\\": \\"TSLA\\"}"}</tool_call>', "do not validate: the key 'symbol' appears twice"),
    ('<tool_call>{"name": "order_food", "arguments": {"cuisine": "thai", "address": {"street": "x", '
     '"street": "y"}, "guests": 2}}</tool_call>', "do not validate: the key 'street' appears twice"),
    ('<tool_call>{"name": "order_food", "arguments": {"cuisine": "thai", "address": {"street": "x"}, '
     '"guests": 2, "budget": {"ann": 1e999}}}</tool_call>', "a number is not finite (at $.budget.ann)"),
    ('<tool_call>{"name": "order_food", "arguments": {"cuisine": "thai", "address": {"street": "x"}, '
     '"guests": 2, "budget": {"ann": "-inf"}}}</tool_call>', "budget.ann: Input should be a finite number"),
    ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>',
     "unknown tool 'get_weather'; the tools are ['get_current_temperature', "
     "'get_stock_fundamentals', 'order_food']"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": ["TSLA"]}</tool_call>',
     "arguments is not a JSON object but an array"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": "TSLA"}</tool_call>',
     "arguments is a string but not JSON"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": {"ticker": "TSLA"}}</tool_call>',
     "arguments for tool 'get_stock_fundamentals' do not validate: symbol: Field required"),
    ('<tool_call>{"name": "get_stock_fundamentals", "arguments": {"symbol": "TSLA"}}',
     "<tool_call> has no matching </tool_call>"),
    (' {"name": "get_stock_fundamentals", "arguments": {"symbol": "TSLA"}}</tool_call>',
     "</tool_call> has no matching <tool_call>"),
])
def test_each_malformed_block_is_reported_with_its_index_and_raw_text(bad, reason):
    with pytest.raises(ToolCallParseError) as caught:
        parse_tool_calls(f"Sure.\n{GOOD}\n{bad}", TOOLS)
    [(index, message, raw)] = caught.value.problems
    assert index == 1
    assert reason in message
    assert raw.strip() == bad.strip()  # a stray closing tag's block starts after the last block


def test_all_malformed_blocks_are_collected_into_one_error():
    text = (
        f"<tool_call>nope</tool_call>{GOOD}"
        '<tool_call>{"name": "order_food", "arguments": {}}</tool_call>'
        f"<tool_call>{{\"name\": \"x\"<tool_call>oops</tool_call>{GOOD}<tool_call>"
    )
    with pytest.raises(ToolCallParseError) as caught:
        parse_tool_calls(text, TOOLS)
    assert [(index, raw) for index, _, raw in caught.value.problems] == [
        (0, "<tool_call>nope</tool_call>"),
        (2, '<tool_call>{"name": "order_food", "arguments": {}}</tool_call>'),
        (3, '<tool_call>{"name": "x"'),
        (4, "<tool_call>oops</tool_call>"),
        (6, "<tool_call>"),
    ]
    assert "block 2: arguments for tool 'order_food' do not validate" in str(caught.value)


def test_parse_accepts_anything_as_tools_does():
    [call] = parse_tool_calls(GOOD, get_stock_fundamentals)
    assert call.parsed == {"symbol": "TSLA"}
    with pytest.raises(ToolDefinitionError):
        parse_tool_calls(GOOD, [])


def test_call_ids_are_random_unless_given():
    first, second = parse_tool_calls(GOOD + GOOD, TOOLS)
    assert re.fullmatch(r"call_[0-9a-f]{24}", first.id)
    assert first.id != second.id
    assert ToolCall("f", {}, id="call_1").id == "call_1"
    assert ToolCall("f", {}).parsed is None


# --- formatting ----------------------------------------------------------------------------------


def test_format_tool_call_is_the_canonical_name_first_block():
    expected = (
        '<tool_call>\n{"name": "get_current_temperature", '
        '"arguments": {"location": "Zürich, CH", "unit": "celsius"}}\n</tool_call>'
    )
    arguments = {"location": "Zürich, CH", "unit": "celsius"}
    assert format_tool_call("get_current_temperature", arguments) == expected
    assert format_tool_call(ToolCall("get_current_temperature", arguments)) == expected
    no_arguments = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert format_tool_call("get_time") == no_arguments
    with pytest.raises(ToolInputError, match="only together with a tool name"):
        format_tool_call(ToolCall("get_time", {}), {})


@pytest.mark.parametrize(("name", "arguments", "reason"), [
    (7, {}, "tool name must be a str, not int"),
    ("f", ["x"], "arguments must be a dict, not list"),
    ("f", {"x": object()}, "cannot be written as JSON"),
    ("f", {"x": float("inf")}, "cannot be written as JSON"),
])
def test_format_tool_call_refuses_what_is_no_call(name, arguments, reason):
    with pytest.raises(ToolInputError, match=re.escape(reason)):
        format_tool_call(name, arguments)


# --- properties ----------------------------------------------------------------------------------

FRAGMENTS = ["<tool_call>", "</tool_call>", "<tool_", "call>", '"', "{", "}"]
TAGGY = st.lists(st.one_of(st.text(), st.sampled_from(FRAGMENTS)), max_size=8).map("".join)

WEATHER_ARGUMENTS = st.fixed_dictionaries({
    "location": st.one_of(st.text(), TAGGY),
    "unit": st.sampled_from(["celsius", "fahrenheit"]),
})


@settings(max_examples=200, deadline=None)
@given(WEATHER_ARGUMENTS, st.booleans(), st.sampled_from(["", " ", "\n\t \u3000"]))
def test_formatted_calls_round_trip(arguments, name_first, padding):
    if name_first:
        text = format_tool_call("get_current_temperature", arguments)
    else:
        payload = json.dumps({"arguments": arguments, "name": "get_current_temperature"})
        text = f"<tool_call>{padding}{payload}{padding}</tool_call>"
    [call] = parse_tool_calls(f"Calling.{padding}{text}{padding}", [WEATHER])
    assert call.name == "get_current_temperature"
    assert call.arguments == arguments
    assert call.parsed == arguments


@settings(max_examples=300, deadline=None)
@given(text=TAGGY)
def test_parsing_arbitrary_text_raises_only_tool_call_parse_error(text):
    try:
        calls = parse_tool_calls(text, TOOLS)
    except ToolCallParseError as error:
        assert error.problems
        assert all(raw and raw in text for _, _, raw in error.problems)
    else:
        assert calls == [] or "<tool_call>" in text


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_text_around_a_block_is_ignored(before, after):
    text = before + GOOD + after
    if "<tool_call>" in text.replace(GOOD, "") or "</tool_call>" in text.replace(GOOD, ""):
        return
    [call] = parse_tool_calls(text, TOOLS)
    assert call.arguments == {"symbol": "TSLA"}


# --- refusals: repeated keys, non-finite numbers, stricter validators, wrong input ---------------

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                        st.floats(allow_nan=False, allow_infinity=False))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=4)), max_leaves=20)
ANY_OBJECT = as_tool({"name": "anything", "parameters": {"type": "object"}})


def _objects(value, path=()):
    """The paths of every object inside ``value``."""
    if isinstance(value, dict):
        yield path
        for key, item in value.items():
            yield from _objects(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _objects(item, path + (index,))


def _dumps_with_repeat(value, target, path=()):
    """``value`` as JSON text, the object at ``target`` with its first key written twice."""
    if isinstance(value, dict):
        items = [json.dumps(k) + ":" + _dumps_with_repeat(v, target, path + (k,)) for k, v in value.items()]
        if path == target:
            items.insert(0, json.dumps(next(iter(value))) + ":0")
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps_with_repeat(v, target, path + (i,)) for i, v in enumerate(value)) + "]"
    return json.dumps(value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=3), JSON_VALUES, min_size=1, max_size=4), st.data())
def test_a_key_repeated_anywhere_in_the_arguments_refuses_the_call(arguments, data):
    target = data.draw(st.sampled_from([p for p in _objects(arguments) if _at(arguments, p)]))
    repeated = _dumps_with_repeat(arguments, target)
    text = f'<tool_call>{{"name": "anything", "arguments": {repeated}}}</tool_call>'
    with pytest.raises(ToolCallParseError, match="appears twice in one object"):
        parse_tool_calls(text, [ANY_OBJECT])
    [call] = read_tool_calls(text, [ANY_OBJECT])
    assert call.parsed is None and "appears twice" in call.error.reason
    plain = f'<tool_call>{{"name": "anything", "arguments": {json.dumps(arguments)}}}</tool_call>'
    assert parse_tool_calls(plain, [ANY_OBJECT])[0].arguments == arguments


def _at(value, path):
    for step in path:
        value = value[step]
    return value


def takes_a_float(x: float, xs: list[float] = []) -> float:
    """A float parameter.

    Args:
        x: Any number.
        xs: More numbers.
    """
    return x


class Measured(pydantic.BaseModel):
    x: float


@settings(max_examples=200, deadline=None)
@given(mantissa=st.integers(1, 9), exponent=st.integers(-400, 400), sign=st.sampled_from(["", "-"]),
       tool=st.sampled_from([as_tool(takes_a_float), as_tool(Measured),
                             as_tool({"name": "number", "parameters": {"type": "object"}})]))
def test_numbers_too_large_for_a_float_are_refused_like_infinity(mantissa, exponent, sign, tool):
    number = f"{sign}{mantissa}e{exponent}"
    text = f'<tool_call>{{"name": "{tool.name}", "arguments": {{"x": {number}}}}}</tool_call>'
    if abs(float(number)) == float("inf"):
        with pytest.raises(ToolCallParseError, match=re.escape("a number is not finite (at $.x)")):
            parse_tool_calls(text, [tool])
    else:
        [call] = parse_tool_calls(text, [tool])
        assert call.arguments == {"x": float(number)}


@pytest.mark.parametrize("arguments", [{"x": float("inf")}, {"x": 1.0, "xs": [2.0, float("nan")]},
                                       {"x": "inf"}, {"x": 1.0, "xs": ["-Infinity"]}])
def test_non_finite_floats_never_reach_a_function(arguments):
    with pytest.raises(ToolArgumentsError, match="finite"):
        as_tool(takes_a_float).validate_arguments(arguments)


def test_arguments_that_hold_themselves_are_checked_once():
    looped: dict = {"x": 1.0}
    looped["xs"] = [looped]
    with pytest.raises(ToolArgumentsError, match="xs.0"):
        as_tool(takes_a_float).validate_arguments(looped)


def _not_a_palindrome(word: str) -> str:
    if word == word[::-1]:
        raise ValueError("a palindrome")
    return word


class Unprintable(ValueError):
    def __str__(self):
        raise RuntimeError("no text")


def _picky(word: str) -> str:
    if word == "type":
        raise TypeError("a validator bug")
    if word == "unprintable":
        raise Unprintable()
    return word


def stricter(word: Annotated[str, pydantic.AfterValidator(_not_a_palindrome)],
             other: Annotated[str, pydantic.AfterValidator(_picky)] = "") -> str:
    """A tool whose validators refuse what its schema (two strings) allows."""
    return word


STRICTER = as_tool(stricter)


def test_a_validator_stricter_than_the_schema_refuses_only_its_call():
    assert STRICTER.parameters["properties"]["word"] == {"type": "string"}
    text = (format_tool_call("stricter", {"word": "level"}) + "\n"
            + format_tool_call("get_stock_fundamentals", {"symbol": "TSLA"}))
    refused, valid = read_tool_calls(text, [STRICTER, STOCK])
    assert isinstance(refused.error, ToolArgumentsError) and refused.parsed is None
    assert "word: Value error, a palindrome" in str(refused.error)
    assert (valid.error, valid.parsed) == (None, {"symbol": "TSLA"})
    with pytest.raises(ToolCallParseError) as caught:
        parse_tool_calls(text, [STRICTER, STOCK])
    assert [index for index, _, _ in caught.value.problems] == [0]


@pytest.mark.parametrize(("other", "reason"), [
    ("type", "the validator raised TypeError: a validator bug"),
    ("unprintable", "the validator raised RuntimeError: no text"),
])
def test_a_validator_that_fails_another_way_is_a_refusal_too(other, reason):
    with pytest.raises(ToolArgumentsError, match=re.escape(reason)):
        STRICTER.validate_arguments({"word": "ab", "other": other})


NOT_TEXT = st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text()),
                     st.dictionaries(st.text(), st.text()), st.builds(bytearray, st.binary()))


@settings(max_examples=100, deadline=None)
@given(NOT_TEXT)
def test_text_that_is_not_a_str_is_a_typed_error(text):
    for parse in (parse_tool_calls, read_tool_calls):
        with pytest.raises(ToolInputError, match=f"must be a str, not {type(text).__name__}"):
            parse(text, TOOLS)


@settings(max_examples=300, deadline=None)
@given(st.one_of(NOT_TEXT, st.dictionaries(st.text(max_size=8), st.one_of(
    JSON_VALUES, st.just(float("inf")), st.just(float("nan")), st.builds(object)), max_size=6)))
def test_validating_anything_raises_only_tool_arguments_error(arguments):
    for tool in (WEATHER, FOOD, STRICTER, as_tool(SearchFlights), as_tool(BOOK), ANY_OBJECT):
        try:
            tool.validate_arguments(arguments)
        except ToolArgumentsError as error:
            assert error.tool == tool.name


def _broken_annotation(x: "1 +") -> None:  # noqa: F722 - the point of the test
    """Doc."""


def test_a_signature_that_cannot_be_read_is_a_definition_error():
    with pytest.raises(ToolDefinitionError, match="cannot read the signature: SyntaxError"):
        as_tool(_broken_annotation)
