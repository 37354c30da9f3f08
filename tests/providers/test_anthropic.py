"""Anthropic Messages API translation, both directions, on fixtures written from Anthropic's API reference."""

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
    validate_typeddict,
)

from metarouter.catalog import default_catalog
from metarouter.errors import GatewayError
from metarouter.providers import AnthropicAdapter, ProviderConfig, get_adapter
from metarouter.providers.anthropic import JSON_TOOL
from metarouter.providers.base import SSEEvent

CAT = default_catalog()
SONNET = CAT.get("anthropic/claude-3.5-sonnet")
CLAUDE2 = CAT.get("anthropic/claude-2.1")
PROVIDER = ProviderConfig(name="anthropic", base_url="https://api.anthropic.com", api_key="sk-ant-test",
                          wire="anthropic")
ADAPTER = AnthropicAdapter()
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="

#: sampling parameters of the 2023-06-01 Messages API that the installed SDK's params type no longer lists
LEGACY_SAMPLING = {"temperature": float, "top_p": float, "top_k": int}


def check_request(body: dict) -> None:
    """The outgoing body is a valid ``MessageCreateParams`` per the official SDK."""
    from anthropic.types import MessageCreateParams

    body = dict(body)
    for key, typ in LEGACY_SAMPLING.items():
        if key in body:
            assert isinstance(body.pop(key), typ | int)
    validate_typeddict(MessageCreateParams, body)


def build(body: dict, model=SONNET, stream: bool = False) -> dict:
    req = ADAPTER.build_request(body, model, PROVIDER, stream=stream)
    out = orjson.loads(req.body)
    check_request(out)
    return out


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a place",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]


def test_registry_and_headers() -> None:
    assert get_adapter(PROVIDER) is not None and get_adapter(PROVIDER).wire == "anthropic"
    req = ADAPTER.build_request({"messages": [{"role": "user", "content": "hi"}]}, SONNET, PROVIDER, stream=True)
    assert req.method == "POST" and req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant-test" and req.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in req.headers
    v1 = ProviderConfig(name="anthropic", base_url="http://127.0.0.1:9/v1/", wire="anthropic")
    assert ADAPTER.build_request({"messages": [{"role": "user", "content": "x"}]}, SONNET, v1,
                                 stream=False).url == "http://127.0.0.1:9/v1/messages"


def test_system_lifted_roles_merged_default_max_tokens() -> None:
    out = build({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "developer", "content": "And polite."},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "three"},
    ]})
    assert out["system"] == "Be terse.\n\nAnd polite."
    assert out["max_tokens"] == SONNET.max_output_tokens == 8192
    assert out["model"] == "claude-3-5-sonnet-20241022"
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][0]["content"] == [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert "stream" not in out


def test_sampling_stop_user_and_dropped_params() -> None:
    out = build({"messages": [{"role": "user", "content": "hi"}], "temperature": 1.7, "top_p": 0.9, "top_k": 40,
                 "stop": "END", "max_completion_tokens": 77, "user": "u-42", "seed": 3, "logit_bias": {"1": 2},
                 "presence_penalty": 0.5, "provider": {"order": ["anthropic"]}}, stream=True)
    assert out["temperature"] == 1.0  # clamped into Anthropic's 0..1
    assert out["top_p"] == 0.9 and out["top_k"] == 40 and out["max_tokens"] == 77
    assert out["stop_sequences"] == ["END"] and out["metadata"] == {"user_id": "u-42"}
    assert out["stream"] is True
    for dropped in ("seed", "logit_bias", "presence_penalty", "provider", "stop", "user"):
        assert dropped not in out
    assert "seed" not in ADAPTER.supported_parameters(SONNET)


def test_images_base64_and_url() -> None:
    out = build({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
    ]}]})
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


def test_tool_round_trip_history() -> None:
    out = build({"tools": TOOLS, "tool_choice": "auto", "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_abc.1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": '{"location": "Paris"}'}},
            {"id": "D681PevKs", "type": "function", "function": {"name": "get_weather",
                                                                 "arguments": '{"location": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc.1", "content": "18C"},
        {"role": "tool", "tool_call_id": "D681PevKs", "content": [{"type": "text", "text": "22C"}]},
        {"role": "user", "content": "Thanks, summarize."},
    ]})
    assert out["tools"] == [{"name": "get_weather", "description": "Weather for a place",
                             "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert out["tool_choice"] == {"type": "auto"}
    asst, results = out["messages"][1], out["messages"][2]
    assert asst["content"][1] == {"type": "tool_use", "id": "call_abc_1", "name": "get_weather",
                                  "input": {"location": "Paris"}}
    assert asst["content"][2]["id"] == "D681PevKs"
    # tool results and the following user text share one user turn, results first
    assert results["role"] == "user" and len(out["messages"]) == 3
    assert results["content"][0] == {"type": "tool_result", "tool_use_id": "call_abc_1", "content": "18C"}
    assert results["content"][1] == {"type": "tool_result", "tool_use_id": "D681PevKs",
                                     "content": [{"type": "text", "text": "22C"}]}
    assert results["content"][2] == {"type": "text", "text": "Thanks, summarize."}


@pytest.mark.parametrize("choice,parallel,expected", [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
])
def test_tool_choice(choice, parallel, expected) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert build(body)["tool_choice"] == expected


def test_tools_dropped_for_models_without_tools() -> None:
    out = build({"messages": [{"role": "user", "content": "x"}], "tools": TOOLS, "tool_choice": "required"},
                model=CLAUDE2)
    assert "tools" not in out and "tool_choice" not in out
    assert out["max_tokens"] == 4096


def test_json_schema_emulated_with_forced_tool() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    out = build({"messages": [{"role": "user", "content": "x"}],
                 "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}})
    assert out["tools"][-1]["name"] == JSON_TOOL and out["tools"][-1]["input_schema"] == schema
    assert out["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    obj = build({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})
    assert "JSON" in obj["system"] and "tools" not in obj


def test_json_schema_with_user_tools_still_forced_to_json() -> None:
    """With tools of the user's, a free tool choice would let the model answer in prose: some tool must be called,
    and the answer's tool is how it answers."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    msgs = [{"role": "user", "content": "x"}]
    out = build({"messages": msgs, "tools": TOOLS, "response_format": rf})
    assert [t["name"] for t in out["tools"]] == ["get_weather", JSON_TOOL]
    assert out["tool_choice"] == {"type": "any"}
    serial = build({"messages": msgs, "tools": TOOLS, "response_format": rf, "tool_choice": "auto",
                    "parallel_tool_calls": False})
    assert serial["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    forced = build({"messages": msgs, "tools": TOOLS, "response_format": rf,
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert forced["tool_choice"] == {"type": "tool", "name": "get_weather"}
    none = build({"messages": msgs, "tools": TOOLS, "response_format": rf, "tool_choice": "none"})
    assert [t["name"] for t in none["tools"]] == [JSON_TOOL] and none["tool_choice"] == {"type": "tool",
                                                                                        "name": JSON_TOOL}


def test_whitespace_only_stop_sequences_dropped() -> None:
    out = build({"messages": [{"role": "user", "content": "x"}], "stop": ["\n", " ", "END", "\t\n"]})
    assert out["stop_sequences"] == ["END"]
    assert "stop_sequences" not in build({"messages": [{"role": "user", "content": "x"}], "stop": "\n\n"})


def test_cache_control_kept_and_prefill_trimmed() -> None:
    out = build({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Sure:  "},
    ]})
    assert out["system"] == [{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}]
    assert out["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Sure:"}]}


def test_bad_requests() -> None:
    with pytest.raises(GatewayError) as e:
        build({"messages": [{"role": "system", "content": "only system"}]})
    assert e.value.status == 400
    with pytest.raises(GatewayError) as e:
        build({"messages": [{"role": "assistant", "content": "", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]})
    assert e.value.status == 400


# ------------------------------------------------------------------------------------------------ responses

def test_response_text_with_cache_usage() -> None:
    resp = ADAPTER.parse_response(fixture_bytes("anthropic/message_text.json"))
    check_openai_completion(resp)
    choice = resp["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello! How can I help you today?"}
    assert choice["finish_reason"] == "stop" and choice["native_finish_reason"] == "end_turn"
    assert resp["usage"] == {"prompt_tokens": 21 + 2048 + 100, "completion_tokens": 12, "total_tokens": 2181,
                             "prompt_tokens_details": {"cached_tokens": 2048, "cache_write_tokens": 100}}


def test_response_tool_use() -> None:
    resp = ADAPTER.parse_response(fixture_bytes("anthropic/message_tool_use.json"))
    check_openai_completion(resp)
    msg = resp["choices"][0]["message"]
    assert resp["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["content"] == "I'll check the weather in San Francisco and Paris."
    assert [tc["id"] for tc in msg["tool_calls"]] == ["toolu_01A09q90qw90lq917835lq9", "toolu_01B18r81rx81mr826924mr8"]
    assert orjson.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"location": "San Francisco, CA",
                                                                          "unit": "celsius"}
    assert msg["tool_calls"][1]["function"]["name"] == "get_weather"


def test_response_stop_sequence_and_json_tool() -> None:
    resp = ADAPTER.parse_response(fixture_bytes("anthropic/message_stop_sequence.json"))
    assert resp["choices"][0]["finish_reason"] == "stop"
    assert resp["choices"][0]["native_finish_reason"] == "stop_sequence"
    js = ADAPTER.parse_response(fixture_bytes("anthropic/message_json_tool.json"))
    check_openai_completion(js)
    assert orjson.loads(js["choices"][0]["message"]["content"]) == {"name": "Ada", "age": 36}
    assert js["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in js["choices"][0]["message"]


# -------------------------------------------------------------------------------------------------- streams

def test_stream_text() -> None:
    tr = ADAPTER.stream_translator(SONNET)
    chunks = run_stream(tr, fixture_bytes("anthropic/stream_text.sse"))
    check_openai_chunks(chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    acc = accumulate(chunks)
    assert acc["content"] == "Hello! Ça va?" and acc["finish_reason"] == "stop" and acc["native"] == "end_turn"
    assert tr.done
    assert tr.usage == {"prompt_tokens": 35, "completion_tokens": 15, "total_tokens": 50,
                        "prompt_tokens_details": {"cached_tokens": 10}}


def test_stream_tool_calls_indexed_by_tool_not_block() -> None:
    tr = ADAPTER.stream_translator(SONNET)
    chunks = run_stream(tr, fixture_bytes("anthropic/stream_tool_use.sse"))
    check_openai_chunks(chunks)
    acc = accumulate(chunks)
    assert acc["content"] == "Checking both cities."
    assert acc["tool_calls"] == [
        {"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "arguments": '{"location": "San Francisco, CA"}'},
        {"id": "toolu_02U2y2gK45rBnl3uOUsO8Vq7", "name": "get_weather", "arguments": '{"location": "Paris"}'},
    ]
    # content blocks 1 and 2 are tool calls 0 and 1
    indexes = [tc["index"] for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert set(indexes) == {0, 1}
    assert acc["finish_reason"] == "tool_calls" and tr.usage["completion_tokens"] == 89


@pytest.mark.parametrize("fixture", ["anthropic/stream_text.sse", "anthropic/stream_tool_use.sse"])
def test_stream_chunk_boundaries(fixture: str) -> None:
    data = fixture_bytes(fixture)
    whole = accumulate(run_stream(ADAPTER.stream_translator(SONNET), data))
    assert accumulate(run_stream(ADAPTER.stream_translator(SONNET), data, splits=1)) == whole
    rnd = random.Random(7)
    for _ in range(20):
        cuts = rnd.sample(range(1, len(data)), 12)
        assert accumulate(run_stream(ADAPTER.stream_translator(SONNET), data, splits=cuts)) == whole
    # the UTF-8 "Ç" split across two reads survives
    if "text" in fixture:
        i = data.index("Ç".encode())
        assert accumulate(run_stream(ADAPTER.stream_translator(SONNET), data, splits=[i + 1]))["content"] == \
            "Hello! Ça va?"


def test_stream_error_event_raises_mapped_error() -> None:
    tr = ADAPTER.stream_translator(SONNET)
    with pytest.raises(GatewayError) as e:
        run_stream(tr, fixture_bytes("anthropic/stream_error.sse"))
    assert e.value.status == 503 and "Overloaded" in e.value.message and e.value.retryable
    assert not tr.done


def test_stream_json_tool_becomes_content() -> None:
    tr = ADAPTER.stream_translator(SONNET)
    events = [
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                              "model": "c", "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a":'}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": " 1}"}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    chunks = [c for ev in events for c in tr.feed(SSEEvent(ev["type"], orjson.dumps(ev).decode()))]
    acc = accumulate(chunks)
    assert acc["content"] == '{"a": 1}' and not acc["tool_calls"] and acc["finish_reason"] == "stop"


# --------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("status,fixture,expected,kind", [
    (529, "anthropic/error_overloaded.json", 503, "overloaded_error"),
    (400, "anthropic/error_invalid_request.json", 400, "invalid_request_error"),
    (429, "anthropic/error_rate_limit.json", 429, "rate_limit_error"),
])
def test_errors(status: int, fixture: str, expected: int, kind: str) -> None:
    err = ADAPTER.parse_error(status, fixture_bytes(fixture), PROVIDER)
    assert err.status == expected and err.metadata["type"] == kind and err.metadata["raw_status"] == status
    assert err.message.startswith("anthropic: ")
    assert err.body()["error"]["code"] == expected


def test_error_unparseable_body() -> None:
    err = ADAPTER.parse_error(502, b"<html>Bad gateway</html>", PROVIDER)
    assert err.status == 502 and "Bad gateway" in err.message
