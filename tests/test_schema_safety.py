"""A schema or tool definition never makes structgen open a URL or a file, never crashes it from
deep inside a dependency, and never costs more time than it was given (docs/security.md).

A loopback HTTP server counts every request: each test that hands structgen a URL asserts that
the server saw none. A FIFO stands in for ``file://`` targets: opening one blocks forever, so a
test that returns at all proves it was not opened."""

from __future__ import annotations

import http.server
import json
import math
import os
import re
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import structgen
from structgen.schema import schema_to_regex
from structgen.schema.validation import (
    KNOWN_DRAFTS,
    MAX_DEPTH,
    check_schema,
    first_problem,
    validator,
    without_ref_cycles,
)
from structgen.types import as_output_type


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Counting.hits.append(self.path)
        body = json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/schema+json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    assert _Counting.hits == [], f"structgen fetched {_Counting.hits}"


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "meta.json"
    os.mkfifo(path)
    return f"file://{path}"


def _returns_within(seconds: float, function, *args, **kwargs):
    """Run ``function`` in a thread; fail (instead of hanging) if it does not return in time."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} did not return within {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- $schema is a draft selector ---------------------------------------------------------------


def test_a_remote_schema_uri_is_a_typed_error_naming_it_and_never_fetched(server):
    schema = {"$schema": f"{server}/meta", "tpye": "object"}  # a permissive meta-schema would pass it
    with pytest.raises(structgen.UnsupportedSchemaError) as refused:
        schema_to_regex(schema)
    assert refused.value.pointer == "/$schema" and "/meta" in str(refused.value)


def test_a_file_schema_uri_is_never_opened(fifo):
    with pytest.raises(structgen.UnsupportedSchemaError, match="never fetches"):
        _returns_within(10, schema_to_regex, {"$schema": fifo, "type": "string"})


def test_an_unknown_schema_uri_is_refused_before_any_engine_sees_it(server, smollm2_tokenizer):
    # llguidance would happily compile it, ignoring $schema: the refusal must come first.
    schema = {"$schema": f"{server}/meta", "type": "string"}
    for engine in ("auto", "llguidance", "outlines-core"):
        with pytest.raises(structgen.UnsupportedSchemaError):
            structgen.compile_constraint(schema, smollm2_tokenizer, engine=engine)


def test_a_nested_unknown_schema_uri_is_refused_at_its_pointer(server):
    schema = {"type": "object", "properties": {"a": {"$schema": f"{server}/x", "type": "string"}}}
    with pytest.raises(structgen.UnsupportedSchemaError) as refused:
        schema_to_regex(schema)
    assert refused.value.pointer == "/properties/a/$schema"


@pytest.mark.parametrize("uri", sorted(KNOWN_DRAFTS))
def test_every_spelling_of_a_published_draft_selects_it(uri):
    if "draft-03" in uri:
        schema = {"$schema": uri, "type": "object", "properties": {"a": {"type": "string"}}}
    else:
        schema = {"$schema": uri, "type": "object", "properties": {"a": {"type": "string"}},
                  "required": ["a"]}
    assert schema_to_regex(schema)
    assert first_problem(validator(schema), {"a": 1}) is not None


def test_a_known_draft_keeps_its_own_meaning():
    # draft-07's list-form items is a tuple; 2020-12 reads it as invalid (prefixItems there).
    https_draft7 = {"$schema": "https://json-schema.org/draft-07/schema#", "type": "array",
                    "items": [{"type": "integer"}], "additionalItems": False}
    check_schema(https_draft7)
    assert first_problem(validator(https_draft7), [1]) is None
    assert first_problem(validator(https_draft7), [1, 2]) is not None


# --- $ref is local, every validator refuses retrieval --------------------------------------------


def test_a_remote_ref_is_a_typed_error_everywhere(server, smollm2_tokenizer):
    schema = {"type": "object", "properties": {"a": {"$ref": f"{server}/a.json"}}}
    with pytest.raises(structgen.UnsupportedSchemaError) as refused:
        schema_to_regex(schema)
    assert refused.value.pointer == "/properties/a/$ref"
    with pytest.raises(structgen.UnsupportedSchemaError):
        structgen.compile_constraint(schema, smollm2_tokenizer)  # no llguidance fallback either


def test_a_tool_with_a_remote_ref_is_refused_where_it_is_defined(server):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"a": {"$ref": f"{server}/a.json"}}}}}
    call = '<tool_call>\n{"name": "lookup", "arguments": {"a": 1}}\n</tool_call>'
    with pytest.raises(structgen.ToolDefinitionError, match="not local"):
        structgen.parse_tool_calls(call, [tool])


def test_a_tool_with_a_file_schema_uri_is_refused_without_opening_it(fifo):
    tool = {"name": "f", "parameters": {"$schema": fifo, "type": "object"}}
    with pytest.raises(structgen.ToolDefinitionError, match=r"\$schema"):
        _returns_within(10, structgen.as_tool, tool)


def test_a_validator_built_directly_still_never_retrieves(server):
    unchecked = {"$ref": f"{server}/a.json"}  # check_schema would refuse it; the validator too
    with pytest.raises(structgen.UnsupportedSchemaError, match="cannot be resolved"):
        first_problem(validator(unchecked), 1)


def test_a_ref_to_the_root_id_is_local():
    schema = {"$id": "https://example.com/person.json", "type": "object",
              "properties": {"friend": {"$ref": "https://example.com/person.json#/$defs/name"}},
              "$defs": {"name": {"type": "string"}}}
    assert schema_to_regex(schema)
    assert first_problem(validator(schema), {"friend": 3}) is not None


# --- bounded depth, valid Unicode ----------------------------------------------------------------


def _nested(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize("levels", [MAX_DEPTH, 500, 5000])
def test_a_schema_nested_too_deep_is_a_typed_error_not_a_recursion_error(levels, smollm2_tokenizer):
    with pytest.raises(structgen.UnsupportedSchemaError, match="nests deeper"):
        schema_to_regex(_nested(levels))
    with pytest.raises(structgen.UnsupportedSchemaError, match="nests deeper"):
        structgen.compile_constraint(_nested(levels), smollm2_tokenizer)
    tool = {"name": "deep", "parameters": _nested(levels)}
    with pytest.raises(structgen.ToolDefinitionError, match="nests deeper"):
        structgen.as_tool(tool)


def test_a_ref_chain_that_nests_too_deep_once_inlined_is_a_typed_error():
    defs = {f"d{i}": {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}} for i in range(300)}
    defs["d300"] = {"type": "integer"}
    with pytest.raises(structgen.UnsupportedSchemaError, match="once its \\$refs are inlined"):
        schema_to_regex({"$defs": defs, "$ref": "#/$defs/d0"})


def test_real_world_depths_are_far_below_the_limit():
    assert schema_to_regex(_nested(MAX_DEPTH // 2 - 1))


@pytest.mark.parametrize("schema, pointer", [
    ({"type": "object", "properties": {"\ud800x": {"type": "string"}}}, "/properties"),
    ({"enum": ["a", "\udc00"]}, "/enum/1"),
    ({"const": "x\udfff"}, "/const"),
])
def test_a_lone_surrogate_is_a_typed_error_at_its_pointer(schema, pointer, tiny_model):
    with pytest.raises(structgen.InvalidSchemaError) as refused:
        structgen.generate(schema, "hi", model=tiny_model, max_tokens=8)
    assert refused.value.pointer == pointer and "surrogate" in refused.value.reason


# --- {"$ref": "#"} and other endless chains of refs mean any value -------------------------------


@pytest.mark.parametrize("schema", [
    {"$ref": "#"},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"$defs": {"loop": {"$ref": "#/$defs/loop", "title": "anything"}}, "$ref": "#/$defs/loop"},
])
def test_an_endless_ref_chain_is_any_value(schema, tiny_model):
    regex = schema_to_regex(schema, whitespace="compact")
    for text in ("1", '"x"', "null", "[true]", '{"a":1}', '{"a":[1]}'):  # max_any_depth levels
        assert re.fullmatch(regex, text), text
        assert first_problem(validator(schema), json.loads(text)) is None
    result = structgen.generate_with_details(schema, "Any JSON.", model=tiny_model, max_tokens=24)
    assert result.text and json.loads(result.text) == result.value


def test_a_ref_cycle_through_keywords_is_still_recursion():
    schema = {"type": "object", "properties": {"child": {"$ref": "#"}}}
    assert without_ref_cycles(schema) is schema
    with pytest.raises(structgen.RecursionLimitError):
        schema_to_regex(schema)


# --- time ---------------------------------------------------------------------------------------


def _many_branches(count: int) -> dict:
    return {"oneOf": [{"type": "object", "properties": {"kind": {"const": f"k{i}"},
                                                        "v": {"type": "integer", "minimum": i}},
                       "required": ["kind", "v"]} for i in range(count)]}


def test_schema_to_regex_keeps_to_its_timeout():
    started = time.monotonic()
    with pytest.raises(structgen.CompileTimeoutError):
        schema_to_regex(_many_branches(400), timeout=0.5)
    assert time.monotonic() - started < 3


def test_a_compile_that_ran_out_of_time_is_remembered(smollm2_tokenizer):
    schema = _many_branches(401)
    started = time.monotonic()
    with pytest.raises(structgen.CompileTimeoutError):
        structgen.compile_constraint(schema, smollm2_tokenizer, timeout=0.5, engine="outlines-core")
    first = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(structgen.CompileTimeoutError, match="remembered"):
        structgen.compile_constraint(schema, smollm2_tokenizer, timeout=0.5, engine="outlines-core")
    assert time.monotonic() - started < first
    # auto falls back to llguidance at once, saying why
    constraint = structgen.compile_constraint(schema, smollm2_tokenizer, timeout=0.5)
    assert constraint.engine == "llguidance" and "timeout" in constraint.fallback_reason


# --- no input makes the checks themselves fail untyped -----------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["$ref", "$schema", "type", "properties", "items", "anyOf", "$defs", "x"]),
        inner, max_size=3),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=st.dictionaries(st.sampled_from(["$ref", "$schema", "properties", "items", "$defs"]),
                              _JSON, max_size=4))
def test_any_document_gets_a_verdict_or_a_typed_error(schema):
    try:
        schema_to_regex(schema)
    except structgen.StructgenError:
        pass


# --- answers hold only what JSON can hold --------------------------------------------------------


_NUMBER = schema_to_regex({"type": "number"})


@settings(max_examples=300, deadline=None)
@given(text=st.from_regex(_NUMBER, fullmatch=True))
def test_every_number_the_regex_writes_is_finite(text):
    assert math.isfinite(float(text))


@pytest.mark.parametrize("text", ['{"x":1e999}', '{"x":-1e400}', '{"x":NaN}', '{"x":Infinity}',
                                  '{"x":' + "9" * 5000 + "}", "[" * 5000 + "]" * 5000])
@pytest.mark.parametrize("output_type", [{"type": "object"}, dict[str, float]])
def test_an_answer_json_cannot_hold_is_an_output_error(text, output_type):
    with pytest.raises(structgen.OutputError):
        as_output_type(output_type).parse(text)
    assert not re.fullmatch(_NUMBER, "1e999")
