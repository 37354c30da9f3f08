"""The Messages API translator (``api/messages.py``): its checks agree with the OpenAPI description, its chat bodies
pass the chat endpoint's checks, and its answers and stream events are the anthropic SDK's types exactly."""

from __future__ import annotations

import jsonschema_rs
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from metarouter.api.messages import StreamTranslator, translate_request, translate_response
from metarouter.api.openapi import messages_request_schema
from metarouter.api.validation import validate_chat_body
from metarouter.errors import GatewayError

BASE = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
PNG = "iVBORw0KGgo="
EVENTS = TypeAdapter(RawMessageStreamEvent)


def turn(*blocks, role="user"):
    return {"messages": [{"role": role, "content": list(blocks)}]}


REFUSED = [
    {"model": None}, {"model": ""}, {"model": "m" * 257}, {"max_tokens": None}, {"max_tokens": 0}, {"max_tokens": 1.5},
    {"max_tokens": True}, {"messages": []}, {"messages": "hi"}, {"messages": [{"role": "system", "content": "x"}]},
    {"messages": [{"role": "user"}]}, {"messages": [{"role": "user", "content": []}]},
    {"messages": [{"role": "user", "content": 5}]}, turn({"type": "text"}), turn({"type": "text", "text": 5}),
    turn({"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG}}),
    turn({"type": "image", "source": {"type": "url", "url": "ftp://x"}}), turn({"type": "image"}),
    turn({"type": "tool_result"}), turn({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}),
    turn({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use"}]}),
    turn({"type": "tool_use", "id": "t", "name": "f"}, role="assistant"),
    turn({"type": "tool_use", "id": "t", "name": "f", "input": []}, role="assistant"),
    turn({"type": "thinking", "thinking": 5, "signature": "s"}, role="assistant"),
    turn({"type": "redacted_thinking"}, role="assistant"), turn({"type": "document"}),
    {"system": 5}, {"system": [{"type": "image"}]}, {"system": [{"type": "text", "text": None}]},
    {"temperature": 1.5}, {"temperature": "1"}, {"top_p": -0.1}, {"top_k": -1}, {"top_k": 1.5},
    {"stop_sequences": "x"}, {"stop_sequences": [""]}, {"stop_sequences": ["x"] * 17}, {"stream": "yes"},
    {"metadata": []}, {"metadata": {"user_id": 5}}, {"tools": {}}, {"tools": [{"name": "f"}]},
    {"tools": [{"name": "", "input_schema": {}}]}, {"tools": [{"name": "f", "input_schema": {}, "type": "bash_20250124"}]},
    {"tools": [{"name": "f", "input_schema": {}, "description": 5}]}, {"tool_choice": "auto"},
    {"tool_choice": {"type": "tool"}}, {"tool_choice": {"type": "auto", "disable_parallel_tool_use": "no"}},
    {"thinking": {"type": "enabled"}}, {"thinking": {"type": "enabled", "budget_tokens": 1000}},
    {"thinking": {"type": "on"}}, {"models": [5]}, {"provider": []}, {"plugins": {}}, {"session_id": 5},
]


@pytest.mark.parametrize("extra", REFUSED)
def test_schema_and_translator_refuse_the_same_bodies(extra):
    body = {**BASE, **extra}
    body = {k: v for k, v in body.items() if v is not None}
    assert not jsonschema_rs.Draft202012Validator(messages_request_schema(5)).is_valid(body)
    with pytest.raises(GatewayError) as exc:
        validate_chat_body(translate_request(body, max_messages=5).chat, max_messages=5)
    assert exc.value.status == 400


ACCEPTED = [
    {}, {"system": "s"}, {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]},
    {"temperature": 0}, {"temperature": 1}, {"top_p": 1}, {"top_k": 0}, {"stop_sequences": ["x"] * 16},
    {"stream": True}, {"stream": None}, {"metadata": {"user_id": "u"}}, {"metadata": {}},
    {"tools": [{"name": "f", "input_schema": {"type": "object"}, "description": "d"}], "tool_choice": {"type": "any"}},
    {"tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True}},
    {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048}, {"thinking": {"type": "disabled"}},
    {"thinking": {"type": "adaptive"}},
    turn({"type": "text", "text": "a"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                    "data": PNG}},
         {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}),
    {"messages": [{"role": "user", "content": "q"},
                  {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                                    {"type": "text", "text": "a"},
                                                    {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                      {"type": "text", "text": "r"}], "is_error": False}, {"type": "text", "text": "more"}]}]},
    {"models": ["x"], "provider": {"order": ["openai"]}, "plugins": [], "session_id": "s"},
]


@pytest.mark.parametrize("extra", ACCEPTED)
def test_schema_and_translator_accept_the_same_bodies(extra):
    body = {**BASE, **extra}
    validator = jsonschema_rs.Draft202012Validator(messages_request_schema(5))
    assert validator.is_valid(body), list(validator.iter_errors(body))
    validate_chat_body(translate_request(body, max_messages=5).chat, max_messages=5)


def test_translation_of_a_tool_round_trip():
    body = ACCEPTED[-2] | {"model": "m", "max_tokens": 10, "system": "s", "stop_sequences": ["X"],
                           "metadata": {"user_id": "u"}, "tool_choice": {"type": "none"}}
    chat = translate_request(body, max_messages=5).chat
    assert chat["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a",
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "r"}]},
        {"role": "user", "content": [{"type": "text", "text": "more"}]},
    ]
    assert chat["stop"] == ["X"] and chat["user"] == "u" and chat["tool_choice"] == "none"
    assert chat["reasoning"] == {"exclude": True} and "stream" not in chat


CHAT = {"id": "gen-1", "object": "chat.completion", "model": "openai/x", "choices": [{
    "index": 0, "finish_reason": "tool_calls", "native_finish_reason": "tool_calls",
    "message": {"role": "assistant", "content": "Let me look.", "reasoning": "hm",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
    "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35, "cost": 0.1,
              "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 4}}}


@pytest.mark.parametrize("thinking", [False, True])
def test_answer_is_a_message(thinking):
    req = translate_request({**BASE, **({"thinking": {"type": "adaptive"}} if thinking else {})}, max_messages=5)
    out = translate_response(CHAT, req)
    m = Message.model_validate(out, strict=True)
    assert not m.model_extra
    assert [b.type for b in m.content] == (["thinking"] if thinking else []) + ["text", "tool_use"]
    assert m.content[-1].input == {"a": 1} and m.stop_reason == "tool_use"
    assert out["usage"] == {"input_tokens": 16, "output_tokens": 5, "cache_creation_input_tokens": 4,
                            "cache_read_input_tokens": 10}


def chunk(**kw):
    return {"id": "gen-1", "object": "chat.completion.chunk", "model": "openai/x", **kw}


def delta(d, finish=None):
    return chunk(choices=[{"index": 0, "delta": d, "finish_reason": finish}])


def events(chunks, **extra):
    t = StreamTranslator(translate_request({**BASE, **extra}, max_messages=5))
    out = []
    for c in chunks:
        for frame in t.feed(c):
            head, data = frame.split(b"\n", 1)
            obj = orjson.loads(data.removeprefix(b"data: "))
            assert head == b"event: " + obj["type"].encode() and frame.endswith(b"\n\n")
            if obj["type"] not in ("ping", "error"):
                assert EVENTS.validate_python(obj, strict=True).model_extra == {}
            out.append(obj)
    return out


def test_stream_blocks_follow_the_deltas():
    got = events([delta({"role": "assistant", "content": "", "reasoning": "r"}), delta({"content": "Hi"}),
                  delta({"content": " there"}),
                  delta({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                         "function": {"name": "f", "arguments": ""}}]}),
                  delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
                  delta({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
                  delta({"tool_calls": [{"index": 1, "id": "c2", "type": "function",
                                         "function": {"name": "g", "arguments": "{}"}}]}),
                  delta({}, "tool_calls"), chunk(choices=[], usage=CHAT["usage"])], thinking={"type": "adaptive"})
    assert [(e["type"], e.get("index")) for e in got] == [
        ("message_start", None), ("ping", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("content_block_start", 3), ("content_block_delta", 3), ("content_block_stop", 3),
        ("message_delta", None), ("message_stop", None)]
    assert [e["content_block"]["type"] for e in got if e["type"] == "content_block_start"] == [
        "thinking", "text", "tool_use", "tool_use"]
    assert got[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert got[-2]["usage"]["input_tokens"] == 16


def test_stream_without_thinking_drops_reasoning_and_an_error_ends_it():
    got = events([delta({"role": "assistant", "content": "", "reasoning": "r"}), delta({"content": "Hi"}),
                  chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "error"}],
                        error={"code": 502, "message": "upstream stream broke"}),
                  chunk(choices=[], usage=CHAT["usage"])])
    assert [e["type"] for e in got] == ["message_start", "ping", "content_block_start", "content_block_delta", "error"]
    assert got[2]["content_block"] == {"type": "text", "text": ""}
    assert got[-1] == {"type": "error", "error": {"type": "api_error", "message": "upstream stream broke"}}


def test_an_error_before_anything_is_only_an_error():
    got = events([chunk(id=None, model=None, choices=[{"index": 0, "delta": {}, "finish_reason": "error"}],
                        error={"code": 429, "message": "slow down"})])
    assert got == [{"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}]
