"""Cohere Chat v2 translation, both directions, on fixtures written from Cohere's API reference."""

from __future__ import annotations

import random

import orjson
import pytest
from provider_sdkcheck import (
    accumulate,
    check_openai_chunks,
    check_openai_completion,
    fixture_bytes,
    run_stream,
    signature_params,
    validate_model,
)

from metarouter.catalog import default_catalog
from metarouter.errors import GatewayError
from metarouter.providers import CohereAdapter, ProviderConfig, get_adapter

CAT = default_catalog()
CMD_R = CAT.get("cohere/command-r-plus")
PROVIDER = ProviderConfig(name="cohere", base_url="https://api.cohere.com", api_key="co-test", wire="cohere")
ADAPTER = CohereAdapter()
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a place",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


def check_request(body: dict) -> None:
    """The outgoing body uses only ``ClientV2.chat`` arguments, and each part validates as the SDK's types."""
    import cohere

    allowed = signature_params(cohere.ClientV2.chat) | {"stream"}
    assert set(body) <= allowed, set(body) - allowed
    validate_model(list[cohere.ChatMessageV2], body["messages"])
    if "tools" in body:
        validate_model(list[cohere.ToolV2], body["tools"])
    if "response_format" in body:
        validate_model(cohere.ResponseFormatV2, body["response_format"])
    if "tool_choice" in body:
        assert body["tool_choice"] in ("REQUIRED", "NONE")


def build(body: dict, model=CMD_R, stream: bool = False) -> dict:
    req = ADAPTER.build_request(body, model, PROVIDER, stream=stream)
    out = orjson.loads(req.body)
    check_request(out)
    return out


def test_url_and_auth() -> None:
    assert get_adapter(PROVIDER).wire == "cohere"
    req = ADAPTER.build_request({"messages": [{"role": "user", "content": "hi"}]}, CMD_R, PROVIDER, stream=True)
    assert req.url == "https://api.cohere.com/v2/chat" and req.headers["Authorization"] == "Bearer co-test"
    assert req.headers["Accept"] == "text/event-stream"
    assert orjson.loads(req.body)["stream"] is True


def test_messages_and_params() -> None:
    out = build({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "bye"},
    ], "temperature": 0.2, "top_p": 0.7, "top_k": 5, "max_tokens": 50, "stop": "##", "seed": 1,
        "presence_penalty": 0.1, "frequency_penalty": 0.3, "logit_bias": {"1": 1}, "user": "u", "n": 2})
    assert out["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hello there"},
                               {"role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}]
    assert out["model"] == "command-r-plus"
    assert {k: out[k] for k in ("temperature", "p", "k", "max_tokens", "stop_sequences", "seed", "presence_penalty",
                                "frequency_penalty")} == {
        "temperature": 0.2, "p": 0.7, "k": 5, "max_tokens": 50, "stop_sequences": ["##"], "seed": 1,
        "presence_penalty": 0.1, "frequency_penalty": 0.3}
    assert not {"logit_bias", "user", "n", "top_p", "stop"} & set(out)


def test_image_parts() -> None:
    out = build({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}]})
    assert out["messages"][0]["content"] == [{"type": "text", "text": "What is it?"},
                                             {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]


def test_tool_history() -> None:
    out = build({"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Toronto?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"location":"Toronto"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": '{"temp": -3}'},
        {"role": "tool", "tool_call_id": "call_8", "content": "sunny"},
    ]})
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "call_8", "content": "sunny"}
    assert out["tools"][0] == TOOLS[0] and "tool_choice" not in out
    assert out["messages"][1] == {"role": "assistant", "tool_plan": "Let me check.", "tool_calls": [
        {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Toronto"}'}}]}
    assert out["messages"][2] == {"role": "tool", "tool_call_id": "call_9",
                                  "content": [{"type": "document", "document": {"data": {"temp": -3}}}]}


@pytest.mark.parametrize("choice,expected,names", [
    ("auto", None, ["get_weather", "get_time"]),
    ("none", "NONE", ["get_weather", "get_time"]),
    ("required", "REQUIRED", ["get_weather", "get_time"]),
    ({"type": "function", "function": {"name": "get_time"}}, "REQUIRED", ["get_time"]),
])
def test_tool_choice(choice, expected, names) -> None:
    out = build({"messages": [{"role": "user", "content": "x"}], "tools": TOOLS, "tool_choice": choice})
    assert out.get("tool_choice") == expected
    assert [t["function"]["name"] for t in out["tools"]] == names


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    out = build({"messages": [{"role": "user", "content": "x"}],
                 "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}})
    assert out["response_format"] == {"type": "json_object", "json_schema": schema}
    assert build({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
                 )["response_format"] == {"type": "json_object"}


def test_response_text_usage_prefers_tokens() -> None:
    resp = ADAPTER.parse_response(fixture_bytes("cohere/response_text.json"))
    check_openai_completion(resp)
    assert resp["choices"][0]["message"]["content"].startswith("LLMs, or Large Language Models")
    assert resp["choices"][0]["finish_reason"] == "stop" and resp["choices"][0]["native_finish_reason"] == "COMPLETE"
    assert resp["usage"] == {"prompt_tokens": 71, "completion_tokens": 16, "total_tokens": 87}


def test_response_tool_call() -> None:
    resp = ADAPTER.parse_response(fixture_bytes("cohere/response_tool_call.json"))
    check_openai_completion(resp)
    msg = resp["choices"][0]["message"]
    assert resp["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["content"] is None and msg["reasoning"] == "I will look up the weather in Toronto."
    assert msg["tool_calls"] == [{"id": "get_weather_1byjy32y4hvq", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"location":"Toronto"}'}}]


def test_response_max_tokens() -> None:
    resp = ADAPTER.parse_response(fixture_bytes("cohere/response_max_tokens.json"))
    assert resp["choices"][0]["finish_reason"] == "length"


def test_stream_text() -> None:
    tr = ADAPTER.stream_translator(CMD_R)
    chunks = run_stream(tr, fixture_bytes("cohere/stream_text.sse"))
    check_openai_chunks(chunks)
    acc = accumulate(chunks)
    assert acc["content"] == "Hello world!" and acc["finish_reason"] == "stop" and tr.done
    assert tr.usage == {"prompt_tokens": 69, "completion_tokens": 3, "total_tokens": 72}


def test_stream_tool_calls() -> None:
    tr = ADAPTER.stream_translator(CMD_R)
    chunks = run_stream(tr, fixture_bytes("cohere/stream_tool_call.sse"))
    check_openai_chunks(chunks)
    acc = accumulate(chunks)
    assert acc["reasoning"] == "I will check the weather in both cities."
    assert [(c["id"], c["name"], orjson.loads(c["arguments"])) for c in acc["tool_calls"]] == [
        ("get_weather_nsz5zm3w56q3", "get_weather", {"location": "Toronto"}),
        ("get_weather_a1b2c3d4e5f6", "get_weather", {"location": "Paris"})]
    assert acc["finish_reason"] == "tool_calls" and tr.usage["completion_tokens"] == 81


@pytest.mark.parametrize("fixture", ["cohere/stream_text.sse", "cohere/stream_tool_call.sse"])
def test_stream_chunk_boundaries(fixture: str) -> None:
    data = fixture_bytes(fixture)
    whole = accumulate(run_stream(ADAPTER.stream_translator(CMD_R), data))
    assert accumulate(run_stream(ADAPTER.stream_translator(CMD_R), data, splits=1)) == whole
    rnd = random.Random(11)
    for _ in range(20):
        assert accumulate(run_stream(ADAPTER.stream_translator(CMD_R), data,
                                     splits=rnd.sample(range(1, len(data)), 10))) == whole


def test_stream_error_at_end() -> None:
    data = (b'event: message-start\ndata: {"type":"message-start","id":"x","delta":{"message":{"role":"assistant"}}}\n\n'
            b'event: message-end\ndata: {"type":"message-end","delta":{"finish_reason":"ERROR","error":"internal"}}\n\n')
    with pytest.raises(GatewayError) as e:
        run_stream(ADAPTER.stream_translator(CMD_R), data)
    assert e.value.status == 502 and "internal" in e.value.message


@pytest.mark.parametrize("status,fixture,expected", [
    (429, "cohere/error_429.json", 429), (400, "cohere/error_400.json", 400), (498, "cohere/error_400.json", 401),
])
def test_errors(status: int, fixture: str, expected: int) -> None:
    err = ADAPTER.parse_error(status, fixture_bytes(fixture), PROVIDER)
    body = orjson.loads(fixture_bytes(fixture))
    assert err.status == expected and err.message == f"cohere: {body['message']}"
