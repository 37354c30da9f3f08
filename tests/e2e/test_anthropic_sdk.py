"""End to end: ``POST /v1/messages`` (Anthropic's Messages API) on the real server, called with the official
``anthropic`` SDK, in front of the fake upstreams — an OpenAI-compatible model and an Anthropic one.

Every answer and every stream event is also read raw and validated strictly against the SDK's own types, with no
field the types do not know."""

from __future__ import annotations

import base64

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import BaseModel, TypeAdapter

MODEL = "openai/gpt-4o-mini-2024-07-18"  # $0.15 / $0.60 per 1M tokens
IN_PRICE, OUT_PRICE = 0.15e-6, 0.60e-6
CLAUDE = "anthropic/claude-3.5-sonnet"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
TOOLS = [{"name": "lookup", "description": "Look something up",
          "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
EVENTS = TypeAdapter(RawMessageStreamEvent)


def no_extra(m: object) -> None:
    """No field beyond the SDK type's, at any depth."""
    if isinstance(m, BaseModel):
        assert not m.model_extra, f"{type(m).__name__} has unknown fields {sorted(m.model_extra)}"
        for name in type(m).model_fields:
            no_extra(getattr(m, name))
    elif isinstance(m, list):
        for x in m:
            no_extra(x)


def strict_message(obj: dict) -> Message:
    m = Message.model_validate(obj, strict=True)
    no_extra(m)
    return m


@pytest.fixture
def client(gateway):
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0)


def create(client, **kw) -> Message:
    """``messages.create``, with the raw JSON checked against ``Message`` strictly."""
    raw = client.messages.with_raw_response.create(**kw)
    assert raw.http_response.status_code == 200
    strict_message(raw.http_response.json())
    return raw.parse()


def key_usage(gateway) -> float:
    r = httpx.get(f"{gateway.url}/api/v1/key", headers={"Authorization": f"Bearer {gateway.api_key}"})
    return r.json()["data"]["usage"]



def raw_events(gateway, body: dict, path: str = "/v1/messages") -> list[dict]:
    """A streamed answer's events, each checked strictly against ``RawMessageStreamEvent`` and its event line."""
    events = []
    with httpx.stream("POST", gateway.url + path, json={**body, "stream": True}, timeout=30,
                      headers={"x-api-key": gateway.api_key, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                obj = orjson.loads(line[6:])
                assert obj["type"] == name
                if name == "ping":
                    assert obj == {"type": "ping"}
                elif name != "error":
                    no_extra(EVENTS.validate_python(obj, strict=True))
                events.append(obj)
                name = None
    return events


def test_plain_message_usage_cost_and_record(client, gateway, fake):
    before = key_usage(gateway)
    m = create(client, model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "What is two plus two?"}],
               metadata={"user_id": "user-42"},
               # this SDK version no longer takes sampling parameters as arguments; the API still documents them
               extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 5})
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "You said: What is two plus two?"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens == 6 and m.usage.output_tokens == 8
    sent = fake.requests_for("openai")[-1].body
    assert sent["model"] == "gpt-4o-mini-2024-07-18" and sent["max_tokens"] == 100
    assert sent["temperature"] == 0.5 and sent["top_p"] == 0.9 and sent["user"] == "user-42"
    assert sent["messages"] == [{"role": "user", "content": "What is two plus two?"}]
    # recorded and billed as a chat request, on the key that sent it
    rec = gateway.generation(m.id)
    assert rec["model"] == MODEL and rec["requested_model"] == MODEL and rec["streamed"] is False
    assert rec["tokens_prompt"] == 6 and rec["tokens_completion"] == 8 and rec["external_user"] == "user-42"
    assert rec["total_cost"] == pytest.approx(6 * IN_PRICE + 8 * OUT_PRICE, rel=1e-12)
    assert key_usage(gateway) - before == pytest.approx(rec["total_cost"], rel=1e-9)


def test_key_as_bearer_token_and_under_api_v1(gateway):
    c = anthropic.Anthropic(base_url=gateway.url + "/api", auth_token=gateway.api_key, api_key=None, max_retries=0)
    m = c.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hello"}])
    assert m.content[0].text == "You said: hello"


def test_system_string_and_blocks(client, fake):
    m = create(client, model=CLAUDE, max_tokens=200, system="Be brief.", messages=[{"role": "user", "content": "hi"}],
               metadata={"user_id": "u-7"}, extra_body={"temperature": 0.3, "top_k": 40})
    assert m.content[0].text == "You said: hi (system: Be brief.)" and m.model == CLAUDE
    sent = fake.requests_for("anthropic")[-1].body
    assert sent["system"] == "Be brief." and sent["max_tokens"] == 200
    assert sent["temperature"] == 0.3 and sent["top_k"] == 40 and sent["metadata"] == {"user_id": "u-7"}
    m = create(client, model=CLAUDE, max_tokens=200, messages=[{"role": "user", "content": "hi"}],
               system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}])
    assert m.content[0].text == "You said: hi (system: Be brief.)"
    assert fake.requests_for("anthropic")[-1].body["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]


def test_multi_turn(client, fake):
    m = create(client, model=MODEL, max_tokens=100, messages=[
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ])
    assert m.content[0].text == "You said: What is my name?"
    assert [x["role"] for x in fake.requests_for("openai")[-1].body["messages"]] == ["user", "assistant", "user"]
    assert fake.requests_for("openai")[-1].body["messages"][1]["content"] == "Hello Ada."


@pytest.mark.parametrize("model", [MODEL, CLAUDE])
def test_tool_use_then_tool_result(client, fake, model):
    first = create(client, model=model, max_tokens=200, tools=TOOLS, tool_choice={"type": "auto"},
                   messages=[{"role": "user", "content": "find cats"}])
    assert first.stop_reason == "tool_use"
    use = [b for b in first.content if b.type == "tool_use"][0]
    assert use.name == "lookup" and use.input == {"query": "find cats"} and use.id
    second = create(client, model=model, max_tokens=200, tools=TOOLS, messages=[
        {"role": "user", "content": "find cats"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "3 cats"}]},
    ])
    assert second.stop_reason == "end_turn"
    provider = model.split("/")[0]
    sent = fake.requests_for(provider)[-1].body
    if provider == "openai":
        assert second.content[0].text == "You said: find cats"  # the OpenAI fake echoes the last user text
        assert sent["messages"][1]["tool_calls"][0]["function"] == {"name": "lookup",
                                                                    "arguments": '{"query":"find cats"}'}
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "3 cats"}
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "lookup", "parameters": TOOLS[0]["input_schema"], "description": "Look something up"}}]
    else:
        assert second.content[0].text == "The tool said: 3 cats"
        assert sent["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": use.id, "content": "3 cats"}


def test_tool_choice_forms(client, fake):
    create(client, model=MODEL, max_tokens=50, tools=TOOLS, messages=[{"role": "user", "content": "x"}],
           tool_choice={"type": "tool", "name": "lookup", "disable_parallel_tool_use": True})
    sent = fake.requests_for("openai")[-1].body
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert sent["parallel_tool_calls"] is False
    create(client, model=MODEL, max_tokens=50, tools=TOOLS, messages=[{"role": "user", "content": "x"}],
           tool_choice={"type": "any"})
    assert fake.requests_for("openai")[-1].body["tool_choice"] == "required"
    m = create(client, model=MODEL, max_tokens=50, tools=TOOLS, messages=[{"role": "user", "content": "x"}],
               tool_choice={"type": "none"})
    assert fake.requests_for("openai")[-1].body["tool_choice"] == "none" and m.stop_reason == "end_turn"


def test_images_base64_and_url(client, fake):
    m = create(client, model=CLAUDE, max_tokens=200, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/otter.jpg"}},
    ]}])
    assert m.content[0].text == "You said: What is this? [2 image(s)]"
    blocks = fake.requests_for("anthropic")[-1].body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/otter.jpg"}}


def test_stop_sequences_and_max_tokens(client, fake):
    m = create(client, model=CLAUDE, max_tokens=200, stop_sequences=["two"],
               messages=[{"role": "user", "content": "one two three"}])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "two"
    assert m.content[0].text == "You said: one "
    assert fake.requests_for("anthropic")[-1].body["stop_sequences"] == ["two"]
    create(client, model=MODEL, max_tokens=50, stop_sequences=["x", "y"], messages=[{"role": "user", "content": "a"}])
    assert fake.requests_for("openai")[-1].body["stop"] == ["x", "y"]
    m = create(client, model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "a long question indeed"}])
    assert m.stop_reason == "max_tokens"


@pytest.mark.parametrize("model", [MODEL, CLAUDE])
def test_streaming_text_assembled_by_the_sdk(client, gateway, model):
    with client.messages.stream(model=model, max_tokens=200,
                                messages=[{"role": "user", "content": "Tell me a story"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "You said: Tell me a story"
    assert final.model == model and final.stop_reason == "end_turn"
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    rec = gateway.generation(final.id)
    assert rec["streamed"] is True and rec["model"] == model
    assert rec["tokens_prompt"] == final.usage.input_tokens and rec["tokens_completion"] == final.usage.output_tokens


@pytest.mark.parametrize("model", [MODEL, CLAUDE])
def test_streaming_tool_use_assembled_by_the_sdk(client, model):
    with client.messages.stream(model=model, max_tokens=200, tools=TOOLS,
                                messages=[{"role": "user", "content": "find cats"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = [b for b in final.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].name == "lookup" and use[0].input == {"query": "find cats"}


def test_stream_events_are_anthropics_exactly(gateway):
    events = raw_events(gateway, {"model": MODEL, "max_tokens": 100, "tools": TOOLS,
                                  "messages": [{"role": "user", "content": "find cats"}]})
    types = [e["type"] for e in events]
    assert types[:2] == ["message_start", "ping"] and types[-2:] == ["message_delta", "message_stop"]
    assert types[2] == "content_block_start" and events[2]["content_block"]["type"] == "tool_use"
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"input_json_delta"}
    assert "".join(d["partial_json"] for d in deltas) == '{"query":"find cats"}'
    assert types.count("content_block_stop") == 1
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[-2]["usage"]["output_tokens"] > 0
    text = raw_events(gateway, {"model": CLAUDE, "max_tokens": 100, "stop_sequences": ["three"],
                                "messages": [{"role": "user", "content": "one two three"}]}, "/api/v1/messages")
    assert {d["delta"]["type"] for d in text if d["type"] == "content_block_delta"} == {"text_delta"}
    assert text[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "three"}
    assert text[0]["message"]["model"] == CLAUDE and text[0]["message"]["id"].startswith("gen-")


def test_auto_routes_and_names_the_model(client, gateway):
    m = create(client, model="auto", max_tokens=100, messages=[{"role": "user", "content": "What is 2+2?"}],
               extra_body={"plugins": [{"id": "auto-router", "allowed_models": [MODEL, "openai/gpt-4o-2024-08-06"]}]})
    assert m.model in (MODEL, "openai/gpt-4o-2024-08-06")
    rec = gateway.generation(m.id)
    assert rec["router"] == "auto" and rec["requested_model"] == "auto" and rec["model"] == m.model


def test_upstream_error_in_anthropics_shape_and_not_charged(client, gateway, fake):
    before = key_usage(gateway)
    fake.fail("openai", status=429, times=3)  # the first try and both retries
    with pytest.raises(anthropic.RateLimitError) as ei:
        client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 429
    ErrorResponse.model_validate(ei.value.body, strict=True)
    assert ei.value.body["error"]["type"] == "rate_limit_error" and "fake failure 429" in ei.value.body["error"]["message"]
    assert key_usage(gateway) == before


def test_stream_broken_midway_ends_with_an_error_event(client, gateway, fake):
    fake.knobs("openai").break_stream_after = 3
    with pytest.raises(anthropic.APIStatusError) as ei:
        with client.messages.stream(model=MODEL, max_tokens=100,
                                    messages=[{"role": "user", "content": "one two three four"}]) as stream:
            for _ in stream:
                pass
    assert ei.value.body["type"] == "error" and ei.value.body["error"]["type"] == "api_error"
    ErrorResponse.model_validate(ei.value.body, strict=True)


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": MODEL, "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_use"}]}]},
     "messages.0.content.0.type"),
    ({"model": MODEL, "max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "hi"}]},
     "temperature"),
    ({"model": MODEL, "max_tokens": 5, "tool_choice": {"type": "required"},
      "messages": [{"role": "user", "content": "hi"}]}, "tool_choice"),
    ({"model": MODEL, "max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 10},
      "messages": [{"role": "user", "content": "hi"}]}, "thinking.budget_tokens"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "not base64!"}}]}]},
     "messages.0.content.0.source.data"),
])
def test_bad_request_is_a_400_in_anthropics_shape(client, gateway, fake, body, param):
    before = key_usage(gateway)
    with pytest.raises(anthropic.BadRequestError) as ei:
        client.post("/v1/messages", cast_to=Message, body=body)
    assert ei.value.status_code == 400
    err = ei.value.body
    assert set(err) == {"type", "error"} and err["type"] == "error"
    ErrorResponse.model_validate(err, strict=True)
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["message"].startswith(param + ":")
    assert fake.requests == [] and key_usage(gateway) == before


def test_unknown_model_and_bad_key(client, gateway):
    with pytest.raises(anthropic.BadRequestError) as ei:
        client.messages.create(model="nope/nothing", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert "not a valid model" in ei.value.body["error"]["message"]
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="sk-mr-000000000000-" + "0" * 48, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        bad.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.body["error"]["type"] == "authentication_error"
    r = httpx.post(gateway.url + "/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": []})
    assert r.status_code == 401 and r.json()["type"] == "error" and "x-api-key" in r.json()["error"]["message"]


def test_thinking_maps_to_reasoning(client, fake):
    m = create(client, model=MODEL, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024},
               messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
                   {"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "Hello."}]},
                   {"role": "user", "content": "again"}])
    assert m.content[0].text == "You said: again"
    sent = fake.requests_for("openai")[-1].body
    assert "reasoning" not in sent  # a gateway field: not sent to OpenAI-compatible upstreams
    assert sent["messages"][1] == {"role": "assistant", "content": "Hello."}  # the thinking block is not sent back


def test_reasoning_comes_back_as_thinking_only_when_enabled(client, gateway):
    r1 = "deepseek/deepseek-r1"  # its fake answers with reasoning_content "Let me think about it."
    ask = {"model": r1, "max_tokens": 2000, "messages": [{"role": "user", "content": "why?"}]}
    m = create(client, **ask, thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "Let me think about it." and m.content[1].text == "You said: why?"
    assert [b.type for b in create(client, **ask).content] == ["text"]
    assert [b.type for b in create(client, **ask, thinking={"type": "disabled"}).content] == ["text"]
    with client.messages.stream(**ask, thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[0].thinking == m.content[0].thinking
    events = raw_events(gateway, {**ask, "thinking": {"type": "enabled", "budget_tokens": 1024}})
    assert [d["delta"]["type"] for d in events if d["type"] == "content_block_delta"][0] == "thinking_delta"
    events = raw_events(gateway, ask)
    assert {d["content_block"]["type"] for d in events if d["type"] == "content_block_start"} == {"text"}


def test_slow_first_byte_keeps_the_stream_alive_and_a_late_failure_is_an_error_event(client, gateway, fake):
    # the fake waits longer than the gateway's stream_commit_after (0.3 s) before it answers: the stream is
    # committed first, with keep-alive comments (which SSE clients skip) until the answer comes
    fake.knobs("openai").latency = 1.0
    with httpx.stream("POST", gateway.url + "/v1/messages", headers={"x-api-key": gateway.api_key}, timeout=30,
                      json={"model": MODEL, "max_tokens": 50, "stream": True,
                            "messages": [{"role": "user", "content": "slow"}]}) as r:
        lines = list(r.iter_lines())
    assert lines[0].startswith(": ") and "event: message_start" in lines
    with client.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "slow"}]) as s:
        assert s.get_final_message().content[0].text == "You said: slow"
    before = key_usage(gateway)
    fake.fail("openai", status=429, times=3)
    with pytest.raises(anthropic.APIStatusError) as ei:
        with client.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "x"}]) as s:
            s.get_final_message()
    ErrorResponse.model_validate(ei.value.body, strict=True)
    assert ei.value.body["error"]["type"] == "rate_limit_error"
    assert key_usage(gateway) == before
