"""End to end: ``POST /responses`` (OpenAI's Responses API) with the official ``openai`` SDK, in front of the fake
OpenAI upstream. Every JSON answer and every stream event is also checked strictly against the SDK's own types."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from metarouter.catalog import default_catalog
from metarouter.providers.sse import SSEParser

MODEL = "openai/gpt-4o-mini-2024-07-18"
IN_PRICE, OUT_PRICE = 0.15e-6, 0.60e-6  # gpt-4o-mini, per token
TOOLS = [{"type": "function", "name": "lookup", "description": "Look something up",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
          "strict": True}]
#: fields metarouter adds to OpenAI's shapes (as on chat): the cost in USD
EXTENSIONS = {("ResponseUsage", "cost")}


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.api_key, max_retries=0)


def auth(gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.api_key}"}


def no_extras(obj: Any, where: str = "") -> None:
    """Every field of the parsed object is one the SDK's type declares (or a documented extension)."""
    if isinstance(obj, BaseModel):
        for k in obj.model_extra or {}:
            assert (type(obj).__name__, k) in EXTENSIONS, f"unknown field {where}.{k} on {type(obj).__name__}"
        for name in type(obj).model_fields:
            no_extras(getattr(obj, name), f"{where}.{name}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            no_extras(v, f"{where}[{i}]")


def strict(type_: Any, data: Any) -> Any:
    obj = TypeAdapter(type_).validate_python(data, strict=True)
    no_extras(obj)
    return obj


def create(client: openai.OpenAI, **kw: Any) -> Response:
    """``client.responses.create``, with the JSON it was answered checked strictly first."""
    raw = client.responses.with_raw_response.create(**kw)
    strict(Response, raw.http_response.json())
    return raw.parse()


def post(gateway, body: dict[str, Any], prefix: str = "/v1") -> httpx.Response:
    return httpx.post(f"{gateway.url}{prefix}/responses", json=body, headers=auth(gateway), timeout=30)


def stream_events(gateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The raw events of a streamed response, each validated strictly; ``event:`` names its type."""
    parser, events = SSEParser(), []
    with httpx.stream("POST", f"{gateway.url}/api/v1/responses", json={**body, "stream": True},
                      headers=auth(gateway), timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for raw in r.iter_raw():
            for ev in parser.feed(raw):
                data = orjson.loads(ev.data)
                assert ev.event == data["type"]
                strict(ResponseStreamEvent, data)
                events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events



def key_usage(gateway) -> float:
    return httpx.get(f"{gateway.url}/api/v1/key", headers=auth(gateway)).json()["data"]["usage"]


def test_string_input_is_recorded_and_billed_as_chat(client, gateway, fake):
    before = key_usage(gateway)
    raw = post(gateway, {"model": MODEL, "input": "What is two plus two?", "temperature": 0.2,
                         "metadata": {"ticket": "42"}, "max_output_tokens": 100})
    assert raw.status_code == 200, raw.text
    resp = strict(Response, raw.json())
    assert resp.output_text == "You said: What is two plus two?"
    assert resp.status == "completed" and resp.model == MODEL and resp.object == "response"
    assert resp.metadata == {"ticket": "42"} and resp.temperature == 0.2 and resp.max_output_tokens == 100
    assert [i.type for i in resp.output] == ["message"] and resp.output[0].role == "assistant"
    u = resp.usage
    assert u.input_tokens == 6 and u.output_tokens == 8 and u.total_tokens == 14
    cost = 6 * IN_PRICE + 8 * OUT_PRICE
    assert u.model_extra["cost"] == pytest.approx(cost, rel=1e-12)
    sent = fake.requests_for("openai")[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "user", "content": "What is two plus two?"}]
    assert sent.body["temperature"] == 0.2 and sent.body["max_tokens"] == 100
    assert "metadata" not in sent.body and "input" not in sent.body
    rec = gateway.generation(resp.id)  # the response id is the generation's
    assert rec["model"] == MODEL and rec["tokens_prompt"] == 6 and rec["tokens_completion"] == 8
    assert rec["total_cost"] == pytest.approx(cost, rel=1e-12) and rec["streamed"] is False
    assert key_usage(gateway) == pytest.approx(before + cost, rel=1e-9)
    # the same through the SDK, under /v1 (above: /v1 too; /api/v1 is the OpenRouter path)
    sdk = create(client, model=MODEL, input="What is two plus two?")
    assert sdk.output_text == "You said: What is two plus two?"
    assert post(gateway, {"model": MODEL, "input": "hi"}, prefix="/api/v1").status_code == 200


def test_items_with_instructions_and_an_image(client, fake):
    image = "data:image/png;base64,iVBORw0KGgo="
    resp = create(client, model=MODEL, instructions="Answer briefly.", input=[
        {"role": "developer", "content": "Be kind."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is in this picture?"},
            {"type": "input_image", "image_url": image, "detail": "low"}]},
    ])
    assert resp.output_text == "You said: What is in this picture?"
    assert resp.instructions == "Answer briefly."
    assert fake.requests_for("openai")[-1].body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                     {"type": "image_url", "image_url": {"url": image, "detail": "low"}}]},
    ]


def test_function_tool_round_trip(client, gateway, fake):
    first = create(client, model=MODEL, input="find cats", tools=TOOLS, tool_choice="auto")
    strict(Response, first.to_dict())
    call = first.output[0]
    assert call.type == "function_call" and call.name == "lookup" and call.call_id == "call_fake1"
    assert call.arguments == '{"query":"find cats"}' and call.status == "completed"
    assert first.tools[0].name == "lookup" and first.tools[0].strict is True
    sent = fake.requests_for("openai")[-1].body
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "Look something up", "parameters": TOOLS[0]["parameters"], "strict": True}}]
    assert sent["tool_choice"] == "auto"
    second = create(client, model=MODEL, tools=TOOLS, input=[
        {"role": "user", "content": "find cats"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "3 cats"},
    ])
    assert second.output_text == "You said: find cats"
    assert fake.requests_for("openai")[-1].body["messages"] == [
        {"role": "user", "content": "find cats"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_fake1", "type": "function", "function": {"name": "lookup", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": "call_fake1", "content": "3 cats"},
    ]
    forced = create(client, model=MODEL, input="find dogs", tools=TOOLS,
                                     tool_choice={"type": "function", "name": "lookup"})
    assert fake.requests_for("openai")[-1].body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert forced.tool_choice.name == "lookup"


def test_json_schema_text_format_and_reasoning_effort(client, fake):
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"],
              "additionalProperties": False}
    resp = create(client, model=MODEL, input="hello", reasoning={"effort": "low"},
                                   text={"format": {"type": "json_schema", "name": "echo", "schema": schema,
                                                    "strict": True}})
    assert orjson.loads(resp.output_text) == {"echo": "hello"}
    assert resp.text.format.type == "json_schema" and resp.reasoning.effort == "low"
    sent = fake.requests_for("openai")[-1].body
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "echo", "schema": schema,
                                                                              "strict": True}}
    assert "reasoning_effort" not in sent  # gpt-4o-mini takes none (the adapter drops it, as on chat)
    create(client, model=MODEL, input="hello", text={"format": {"type": "json_object"}})
    assert fake.requests_for("openai")[-1].body["response_format"] == {"type": "json_object"}


def test_auto_routes_and_names_the_model_that_served(client, gateway):
    resp = create(client, model="auto", input="What is the capital of France?")
    catalog = default_catalog()
    assert resp.model in catalog and resp.model != "auto"
    assert resp.output_text
    rec = gateway.generation(resp.id)
    assert rec["router"] == "auto" and rec["requested_model"] == "auto" and rec["model"] == resp.model


def test_cut_by_max_output_tokens_is_incomplete(client):
    resp = create(client, model=MODEL, input="tell me a long story about cats", max_output_tokens=2)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == "You said: tell me a long story about cats"[:8]


def test_stream_events_and_the_sdk_assembles_the_final_response(client, gateway):
    events = stream_events(gateway, {"model": MODEL, "input": "Tell me a story"})
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-5:] == ["response.output_text.delta", "response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == \
        "You said: Tell me a story"
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["usage"]["output_tokens"] == 7
    assert done["output"][0]["content"][0]["text"] == "You said: Tell me a story"
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1
    rec = gateway.generation(done["id"])
    assert rec["streamed"] is True and rec["tokens_completion"] == 7
    assert rec["total_cost"] == pytest.approx(done["usage"]["cost"], rel=1e-12)

    with client.responses.stream(model=MODEL, input="Tell me a story") as stream:
        seen = [e.type for e in stream]
        final = stream.get_final_response()
    assert seen[0] == "response.created" and seen[-1] == "response.completed"
    assert final.output_text == "You said: Tell me a story" and final.status == "completed"
    assert final.usage.input_tokens == 4 and final.usage.output_tokens == 7 and final.model == MODEL


def test_stream_function_call_events(client, gateway):
    events = stream_events(gateway, {"model": MODEL, "input": "find cats", "tools": TOOLS})
    kinds = [e["type"] for e in events]
    assert kinds[2] == "response.output_item.added" and events[2]["item"]["type"] == "function_call"
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"query":"find cats"}' and len(deltas) > 1
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == '{"query":"find cats"}'
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    with client.responses.stream(model=MODEL, input="find cats", tools=TOOLS) as stream:
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and call.call_id == "call_fake1" and call.name == "lookup"
    assert call.arguments == '{"query":"find cats"}'


def test_previous_response_id_continues_the_conversation(client, gateway, fake):
    first = create(client, model=MODEL, instructions="Be terse.", input=[
        {"role": "system", "content": "The user is a pilot."}, {"role": "user", "content": "My name is Ann."}])
    second = create(client, model=MODEL, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert fake.requests_for("openai")[-1].body["messages"] == [  # instructions are not carried over; input items are
        {"role": "system", "content": "The user is a pilot."},
        {"role": "user", "content": "My name is Ann."},
        {"role": "assistant", "content": "You said: My name is Ann."},
        {"role": "user", "content": "What is my name?"},
    ]
    # a streamed response is stored too, tool calls included
    with client.responses.stream(model=MODEL, input="find cats", tools=TOOLS,
                                 previous_response_id=second.id) as stream:
        streamed = stream.get_final_response()
    third = create(client, model=MODEL, tools=TOOLS, previous_response_id=streamed.id, input=[
        {"type": "function_call_output", "call_id": "call_fake1", "output": "3 cats"}])
    assert third.output_text == "You said: find cats"
    msgs = fake.requests_for("openai")[-1].body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "tool"]
    assert msgs[6]["tool_calls"][0]["id"] == "call_fake1" and msgs[7]["content"] == "3 cats"
    # unknown, not stored, or another key's: 404 in OpenAI's shape
    unstored = create(client, model=MODEL, input="forget me", store=False)
    other = gateway.create_key("responses-other")
    other_client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=other, max_retries=0)
    for c, rid in ((client, "gen-0-nope"), (client, unstored.id), (other_client, first.id)):
        with pytest.raises(openai.NotFoundError) as ei:
            c.responses.create(model=MODEL, input="again", previous_response_id=rid)
        assert ei.value.body["code"] == "previous_response_not_found"
        assert ei.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL}, "input"),
    ({"input": "hi"}, "model"),
    ({"model": MODEL, "input": []}, "input"),
    ({"model": MODEL, "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"model": MODEL, "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0]"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"model": MODEL, "input": "hi", "temperature": 3}, "temperature"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": MODEL, "input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning"),
    ({"model": MODEL, "input": "hi", "metadata": {"n": 1}}, "metadata"),
])
def test_bad_requests_are_400_in_openai_shape_and_not_charged(gateway, fake, body, param):
    before = key_usage(gateway)
    r = post(gateway, body)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "invalid_request_error",
                                  "param": param, "code": None}}
    assert fake.requests_for("openai") == []
    assert key_usage(gateway) == before


def test_bad_request_raises_the_sdk_error(client):
    with pytest.raises(openai.BadRequestError) as ei:
        create(client, model=MODEL, input=[{"type": "function_call_output", "output": "x"}])
    assert ei.value.status_code == 400 and ei.value.body["param"] == "input[0].call_id"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="sk-mr-nope", max_retries=0).responses.create(
            model=MODEL, input="hi")


def test_upstream_error_is_mapped_and_not_charged(client, gateway, fake):
    before = key_usage(gateway)
    fake.fail("openai", status=429, times=3)  # the first try and both retries
    with pytest.raises(openai.RateLimitError) as ei:
        create(client, model=MODEL, input="hi")
    assert ei.value.body["type"] == "rate_limit_error" and "fake failure 429" in ei.value.body["message"]
    fake.fail("openai", status=500, times=3)
    with pytest.raises(openai.InternalServerError) as ei:  # a stream that fails before it starts: a real status
        with client.responses.stream(model=MODEL, input="hi") as stream:
            list(stream)
    assert ei.value.status_code == 502 and ei.value.body["type"] == "server_error"
    assert key_usage(gateway) == before


def test_stream_broken_mid_answer_ends_in_response_failed_and_bills_what_was_served(gateway, fake):
    fake.knobs("openai").break_stream_after = 3  # the role chunk and two words
    events = stream_events(gateway, {"model": MODEL, "input": "Tell me a story"})
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed" and last["response"]["error"]["code"] == "server_error"
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["You", " said:"]
    rec = gateway.generation(last["response"]["id"])
    assert rec["status"] == "error" and rec["streamed"] is True and rec["total_cost"] > 0


def test_key_rate_limits_apply_as_on_chat(gateway):
    limited = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.create_key("responses-rpm", rpm=1),
                            max_retries=0)
    limited.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.RateLimitError) as ei:
        limited.responses.create(model=MODEL, input="hi again")
    assert ei.value.response.headers["Retry-After"] and ei.value.body["type"] == "rate_limit_error"


def test_an_unreachable_conversation_store_costs_the_follow_up_not_the_answer(fake, tmp_path):
    from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
    from metarouter.testing.gateway_process import GatewayProcess

    from ..conftest import gateway_config

    # nothing listens on port 1: Redis (rate limits admit, and conversations) fails on every call
    with GatewayProcess(gateway_config(fake, redis_url="redis://127.0.0.1:1/0"), tmp_path, env=FAKE_KEYS_ENV) as gw:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.create_key("no-redis"), max_retries=0)
        first = c.responses.create(model=MODEL, input="hi")
        assert first.output_text == "You said: hi"
        with c.responses.stream(model=MODEL, input="hi") as stream:
            assert stream.get_final_response().status == "completed"
        with pytest.raises(openai.InternalServerError) as ei:
            c.responses.create(model=MODEL, input="again", previous_response_id=first.id)
        assert ei.value.status_code == 503 and ei.value.body["type"] == "server_error"
