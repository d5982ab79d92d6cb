"""structgen serve: the real openai client and instructor against uvicorn on a free loopback port.

The tiny random model writes adversarial text fast, so every guarantee is checked on answers no
real model would give; the embedded model runs the docs page end to end (integration).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import instructor
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

import structgen
from structgen.cli import main
from structgen.decoding.generate import constraint_for, messages_for, prepare_row
from structgen.decoding.loop import Sampling
from structgen.serve.app import create_app
from structgen.serve.scheduler import Job, Scheduler
from structgen.serve.server import BackgroundServer
from structgen.testing import tiny_random_model

ROOT = Path(__file__).parent.parent
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"]}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
STOCK = {"type": "function", "function": {
    "name": "get_stock", "description": "A stock's price.",
    "parameters": {"type": "object", "properties": {"symbol": {"type": "string", "maxLength": 5}},
                   "required": ["symbol"]}}}
TOOLS = [WEATHER, STOCK]
ASK = [{"role": "user", "content": "Weather in Paris, and the TSLA price?"}]
CHAT = {"model": "any", "messages": [{"role": "user", "content": "Alice, 31"}]}


def json_schema(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def server(tiny_model):
    app = create_app(tiny_model, max_batch=8)
    with BackgroundServer(app) as running:
        running.scheduler = app.state.scheduler
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def check_calls(calls, tools=TOOLS):
    by_name = {tool["function"]["name"]: tool["function"]["parameters"] for tool in tools}
    assert calls
    for call in calls:
        assert call.type == "function" and re.fullmatch(r"call_[0-9a-f]{24}", call.id)
        jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])


# --- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [60, 16])
def test_json_schema_answers_validate_also_at_the_token_limit(client, max_tokens):
    response = client.chat.completions.create(model="any", messages=CHAT["messages"],
                                              response_format=json_schema(PERSON), max_tokens=max_tokens)
    choice = response.choices[0]
    jsonschema.validate(json.loads(choice.message.content), PERSON)
    assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    assert response.usage.completion_tokens <= max_tokens
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")


def test_a_list_closed_by_the_budget_says_length(client):
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    response = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "List."}],
                                              response_format=json_schema(schema), max_completion_tokens=20)
    assert response.choices[0].finish_reason == "length"
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_json_object_and_text(client):
    answer = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}],
                                            response_format={"type": "json_object"}, max_tokens=30)
    assert isinstance(json.loads(answer.choices[0].message.content), dict)
    text = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}],
                                          response_format={"type": "text"}, max_tokens=30)
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 30
    assert text.choices[0].message.content


def test_stop_strings_cut_text_where_they_first_appear(client):
    ask = dict(model="any", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=40)
    full = client.chat.completions.create(**ask).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = client.chat.completions.create(**ask, stop=[stop, "\x00never"]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[:full.find(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        **ask, stop=stop, stream=True) if c.choices)
    assert streamed == cut.message.content


def test_streamed_content_equals_the_whole_answer(client):
    ask = dict(model="any", messages=[{"role": "user", "content": "Bob, 67"}],
               response_format=json_schema(PERSON), max_tokens=40)
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1]) and len({c.id for c in chunks}) == 1


# --- tools --------------------------------------------------------------------------------------


def test_required_tool_calls_name_real_tools_with_valid_arguments(client):
    response = client.chat.completions.create(model="any", messages=ASK, tools=TOOLS, tool_choice="required",
                                              max_tokens=120)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    check_calls(choice.message.tool_calls)


def test_a_named_tool_choice_object_and_no_parallel_calls(client):
    response = client.chat.completions.create(
        model="any", messages=ASK, tools=TOOLS, parallel_tool_calls=False, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "get_stock"}})
    calls = response.choices[0].message.tool_calls
    check_calls(calls)
    assert len(calls) == 1 and calls[0].function.name == "get_stock"


def test_auto_answers_in_text_or_valid_calls_and_none_in_text(client):
    auto = client.chat.completions.create(model="any", messages=ASK, tools=TOOLS, tool_choice="auto",
                                          max_tokens=60).choices[0]
    if auto.message.tool_calls:
        check_calls(auto.message.tool_calls)
    else:
        assert "<tool_call>" not in auto.message.content
    none = client.chat.completions.create(model="any", messages=ASK, tools=TOOLS, tool_choice="none",
                                          max_tokens=30).choices[0]
    assert none.message.tool_calls is None and "<tool_call>" not in none.message.content


def test_streamed_tool_call_deltas_reassemble_to_the_final_calls(client):
    ask = dict(model="any", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=160)
    whole = client.chat.completions.create(**ask).choices[0].message.tool_calls
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(**ask, stream=True):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.index not in calls:  # the first delta of a call: index, id, name
                assert delta.id and delta.function.name and delta.type == "function"
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None and delta.function.name is None
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls" and sorted(calls) == list(range(len(whole)))
    assert [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)] == \
        [(call.function.name, call.function.arguments) for call in whole]


def test_a_conversation_with_tool_results_continues(client):
    first = client.chat.completions.create(model="any", messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=120).choices[0].message
    messages = [*ASK, first.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": True})}
                 for call in first.tool_calls]
    answer = client.chat.completions.create(model="any", messages=messages, max_tokens=40,
                                            response_format=json_schema(PERSON))
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)


# --- concurrency --------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_each_answers_its_own_schema(client, server):
    schemas = [{"type": "object", "properties": {f"field_{i}": {"enum": [f"value_{i}", i]}},
                "required": [f"field_{i}"], "additionalProperties": False} for i in range(8)]
    for schema in schemas:  # compiled first, so the requests meet in the batch
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "warm"}],
                                       response_format=json_schema(schema), max_tokens=12)
    before = dict(server.scheduler.stats)
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        results[i] = client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": f"Request {i}: " + "word " * (3 * i)}],
            response_format=json_schema(schemas[i]), max_tokens=24)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(8))
    assert len({response.id for response in results.values()}) == 8
    for i, response in results.items():
        jsonschema.validate(json.loads(response.choices[0].message.content), schemas[i])
    stats = server.scheduler.stats
    assert stats["finished"] - before.get("finished", 0) == 8
    assert stats["max_live"] > 1  # they shared steps


@pytest.fixture(scope="module")
def double_model(smollm2_tokenizer):
    """float64 weights: padded and unpadded rows agree to ~1e-12, so greedy choices match."""
    model = tiny_random_model(smollm2_tokenizer, seed=3, context_length=512)
    model.hf_model.double()
    return model


@pytest.mark.parametrize("merge", [True, False])
def test_rows_joining_a_running_batch_decode_as_they_would_alone(double_model, merge):
    constraint = constraint_for(PERSON, double_model, "compact")
    prompts = ["Alice, 31", "Bob is a retired sailor who turned 67 last week.", "Carol", "Dan, 40"]

    def row(prompt):
        return prepare_row(double_model, constraint, messages_for(constraint, prompt), 40)

    alone = [structgen.generate_with_details(PERSON, p, model=double_model, max_tokens=40,
                                             whitespace="compact").text for p in prompts]
    scheduler = Scheduler(double_model, max_batch=4, merge=merge)
    done = threading.Semaphore(0)
    rows, first_tokens = [], threading.Event()
    scheduler.start()
    try:
        for i, prompt in enumerate(prompts):  # each arrives while the ones before it are decoding
            rows.append(row(prompt))
            first_tokens.clear()
            scheduler.submit(Job(rows[-1], Sampling(), on_token=lambda _t: first_tokens.set(),
                                 on_done=lambda _e: done.release()))
            first_tokens.wait(10)
        for _ in prompts:
            assert done.acquire(timeout=60)
    finally:
        scheduler.stop()
    texts = [structgen.decoding.generate.completion_text(double_model, constraint, r.tokens) for r in rows]
    assert texts == alone
    assert scheduler.stats["max_live"] > 1 and scheduler.stats["finished"] == 4


def test_a_client_that_leaves_frees_its_row_and_a_full_queue_answers_429(tiny_model):
    app = create_app(tiny_model, max_batch=1, max_queue=1)
    long_text = dict(model="any", messages=[{"role": "user", "content": "Go on forever."}],
                     max_tokens=1500, stream=True)
    with BackgroundServer(app) as running:
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        stats = app.state.scheduler.stats

        def first_content(stream):
            return next(c for c in stream if c.choices and c.choices[0].delta.content)

        first = client.chat.completions.create(**long_text)
        first_content(first)  # decoding: it holds the batch's only place
        second = client.chat.completions.create(**long_text)  # waits in the queue
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**long_text)
        assert refused.value.status_code == 429
        assert set(refused.value.body) == {"message", "type", "param", "code"}
        assert refused.value.body["code"] == "rate_limit_exceeded"
        first.close()
        first_content(second)  # the first row left, so the second got its place
        assert stats["cancelled"] == 1 and stats["refused"] == 1
        second.close()
        deadline = time.monotonic() + 10
        while stats["cancelled"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats["cancelled"] == 2 and stats["finished"] == 0
        health = httpx.get(running.url.removesuffix("/v1") + "/health").json()
        assert health["live"] == 0 and health["waiting"] == 0


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body, param, code, says", [
    ("{not json", None, "invalid_json", "not valid JSON"),
    ({**CHAT, "messages": "hi"}, "messages", "list_type", "messages"),
    ({**CHAT, "max_tokens": "many"}, "max_tokens", "int_parsing", "max_tokens"),
    ({**CHAT, "temperature": 9}, "temperature", "less_than_equal", "temperature"),
    ({**CHAT, "response_format": {"type": "json_schema"}}, "response_format", "value_error", "json_schema"),
    ({**CHAT, "response_format": json_schema({"type": "array", "uniqueItems": True})},
     "response_format.json_schema.schema", "unsupported_schema", "/uniqueItems"),
    ({**CHAT, "response_format": json_schema({"$ref": "https://example.com/person.json"})},
     "response_format.json_schema.schema", "unsupported_schema", "never fetches"),
    ({**CHAT, "response_format": json_schema(PERSON), "max_tokens": 3}, "max_tokens", "budget_too_small",
     "at least"),
    ({**CHAT, "messages": [{"role": "user", "content": "word " * 3000}]}, "messages",
     "context_length_exceeded", "context window"),
    ({**CHAT, "n": 2}, "n", "unsupported_parameter", "n=1"),
    ({**CHAT, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "invalid_value", "nope"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}}}}]},
     "tools", None, "tool"),
    ({**CHAT, "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments", "invalid_value", "not JSON"),
])
def test_bad_input_is_a_400_in_openai_shape(server, body, param, code, says):
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(server.url + "/chat/completions", content=content, timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and says in error["message"] and "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code


def test_unknown_fields_are_ignored_and_unknown_routes_are_404s(server, client):
    response = httpx.post(server.url + "/chat/completions", json={**CHAT, "user": "u1", "metadata": {"a": 1},
                                                                  "max_tokens": 10}, timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
    missing = httpx.get(server.url + "/nothing/here")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert [m.id for m in client.models.list()] == ["tiny-random-0"]


def test_an_api_key_is_checked_on_every_request(tiny_model):
    with BackgroundServer(create_app(tiny_model, api_key="s3cret")) as running:
        for key in ("wrong", "S3CRET", "s3cret2"):
            with pytest.raises(openai.AuthenticationError) as refused:
                openai.OpenAI(base_url=running.url, api_key=key, max_retries=0).models.list()
            assert refused.value.body["code"] == "invalid_api_key"
        assert httpx.get(running.url.removesuffix("/v1") + "/health").status_code == 401
        good = openai.OpenAI(base_url=running.url, api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="any", messages=CHAT["messages"], max_tokens=5).choices


# --- instructor ---------------------------------------------------------------------------------


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    email: str | None = Field(default=None, pattern=r"^[a-z]{1,8}@[a-z]{1,8}\.com$")


@pytest.mark.parametrize("mode", [instructor.Mode.JSON_SCHEMA, instructor.Mode.TOOLS])
def test_an_instructor_pipeline_gets_a_valid_model_on_the_first_try(server, mode):
    patched = instructor.from_openai(openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0),
                                     mode=mode)
    before = server.scheduler.stats["submitted"]
    person = patched.chat.completions.create(model="any", response_model=Person, max_retries=0, max_tokens=60,
                                             messages=[{"role": "user", "content": "Alice, 31, alice@x.com"}])
    assert isinstance(person, Person)
    assert server.scheduler.stats["submitted"] == before + 1  # no re-ask was needed


# --- the Python API takes the same shapes -------------------------------------------------------


def test_the_python_api_takes_openai_shapes(tiny_model):
    value = structgen.generate(json_schema(PERSON), "Alice, 31", model=tiny_model, max_tokens=40)
    jsonschema.validate(value, PERSON)
    assert isinstance(structgen.generate({"type": "json_object"}, "Hi", model=tiny_model, max_tokens=20),
                      dict)
    with pytest.raises(structgen.InvalidSchemaError):
        structgen.generate({"type": "text"}, "Hi", model=tiny_model)
    (call,) = structgen.call_tools(TOOLS, "TSLA?", model=tiny_model, max_tokens=80, parallel=False,
                                   tool_choice={"type": "function", "function": {"name": "get_stock"}})
    assert call.name == "get_stock"
    openai_call = call.to_openai()
    assert openai_call == {"id": call.id, "type": "function",
                           "function": {"name": "get_stock", "arguments": json.dumps(call.arguments)}}
    with pytest.raises(structgen.ToolDefinitionError):
        structgen.call_tools(TOOLS, "TSLA?", model=tiny_model, tool_choice={"type": "function"})


# --- the command ----------------------------------------------------------------------------------


def test_the_serve_command_binds_to_loopback_and_answers(tmp_path, smollm2_tokenizer):
    tiny_random_model(smollm2_tokenizer, seed=0).hf_model.save_pretrained(tmp_path / "model")
    smollm2_tokenizer.save_pretrained(tmp_path / "model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "structgen", "serve", "--model",
                                str(tmp_path / "model"), "--port", str(port), "--max-batch", "2"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
                time.sleep(0.25)
        assert health.json()["status"] == "ok"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="any", messages=CHAT["messages"],
                                                response_format=json_schema(PERSON), max_tokens=40)
        jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=60)
    assert f"http://127.0.0.1:{port}/v1 (loopback only" in err
    assert "Traceback" not in err


def test_limits_that_admit_no_request_are_a_typed_error_before_any_model_loads(tiny_model, capsys):
    assert main(["serve", "--model", "/nonexistent/model", "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err  # refused before the model (which is absent)
    with pytest.raises(structgen.GenerationError, match="max_queue"):
        Scheduler(tiny_model, max_batch=2, max_queue=-1)


# --- the embedded model, and the docs page as written ---------------------------------------------


@pytest.fixture(scope="module")
def embedded_server(embedded_model):
    with BackgroundServer(create_app(embedded_model, max_batch=4)) as running:
        yield running


def fenced(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.integration
def test_the_docs_page_examples_run_against_the_embedded_model(embedded_server):
    """docs/serve.md as written, with its base URL pointed at this test's port."""
    page = ROOT / "docs" / "serve.md"
    documented = "http://127.0.0.1:8000"
    here = embedded_server.url.removesuffix("/v1")
    blocks = [block for block in fenced(page, "python") if "BackgroundServer" not in block]
    assert len(blocks) >= 3 and all(documented in block for block in blocks)
    for block in blocks:
        exec(compile(block.replace(documented, here), str(page), "exec", dont_inherit=True),
             {"__name__": "docs_example"})
    curls = [block for block in fenced(page, "bash") if block.startswith("curl")]
    assert curls
    for block in curls:
        command = block.replace(documented, here)
        if shutil.which("curl"):
            out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True,
                                 timeout=300).stdout
        else:  # the same JSON body through httpx
            body = re.search(r"-d '(.*)'", block, flags=re.S).group(1)
            out = httpx.post(here + "/v1/chat/completions", content=body, timeout=300,
                             headers={"content-type": "application/json"}).text
        reply = json.loads(out)
        assert reply["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


@pytest.mark.integration
def test_the_docs_page_example_from_python_starts_its_own_server(embedded_model, capsys):
    """docs/serve.md, "From Python": create_app + BackgroundServer on a free port, as written."""
    page = ROOT / "docs" / "serve.md"
    [block] = [block for block in fenced(page, "python") if "BackgroundServer" in block]
    exec(compile(block, str(page), "exec", dont_inherit=True), {"__name__": "docs_example"})
    assert isinstance(json.loads(capsys.readouterr().out), dict)


@pytest.mark.integration
def test_end_to_end_on_the_embedded_model(embedded_server):
    client = openai.OpenAI(base_url=embedded_server.url, api_key="unused", max_retries=0)
    extract = [{"role": "user", "content": "Extract: Alice Martin is a 31-year-old nurse."}]
    person = client.chat.completions.create(model="smollm2", messages=extract, max_tokens=60,
                                            response_format=json_schema(PERSON)).choices[0].message
    jsonschema.validate(json.loads(person.content), PERSON)
    ask = dict(model="smollm2", messages=[{"role": "user", "content": "What's the weather in Paris?"}],
               tools=TOOLS, tool_choice="required", max_tokens=80)
    whole = client.chat.completions.create(**ask).choices[0].message.tool_calls
    check_calls(whole)
    streamed: dict[int, list[str]] = {}
    for chunk in client.chat.completions.create(**ask, stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            streamed.setdefault(delta.index, [delta.function.name, ""])
            streamed[delta.index][1] += delta.function.arguments or ""
    assert [tuple(streamed[i]) for i in sorted(streamed)] == [(c.function.name, c.function.arguments)
                                                             for c in whole]
