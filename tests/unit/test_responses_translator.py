"""The Responses translator on its own: request mapping, stream events (reasoning included), the conversation store.
Every event and response is validated strictly against the ``openai`` SDK's types."""

from __future__ import annotations

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from metarouter.api.responses import ConversationStore, ResponsesStream, response_from_chat, to_chat, \
    validate_responses_body
from metarouter.errors import GatewayError

EVENT = TypeAdapter(ResponseStreamEvent)
RESPONSE = TypeAdapter(Response)


def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> dict:
    return {"id": "gen-1-abc", "object": "chat.completion.chunk", "created": 1, "model": "m/x",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if delta is not None or finish
            else [], **extra}


def run(body: dict, chunks: list[dict]) -> list[dict]:
    t = ResponsesStream(body)
    events = [e for c in chunks for e in t.feed(c)] + t.finish()
    for e in events:
        EVENT.validate_python(e, strict=True)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_request_mapping():
    body = validate_responses_body({
        "model": "m/x", "input": "hi", "instructions": "Be brief", "reasoning": {"effort": "high"},
        "max_output_tokens": 50, "parallel_tool_calls": False, "store": False, "metadata": {"a": "b"},
        "provider": {"order": ["openai"]}, "plugins": [{"id": "auto-router"}],
    }, max_items=10)
    chat = to_chat(body, [{"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"}], max_items=10)
    assert chat == {
        "model": "m/x",
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "before"},
                     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "hi"}],
        "max_tokens": 50, "parallel_tool_calls": False, "reasoning_effort": "high",
        "provider": {"order": ["openai"]}, "plugins": [{"id": "auto-router"}],
    }


def test_consecutive_function_calls_are_one_assistant_turn():
    chat = to_chat({"model": "m", "input": [
        {"role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "a", "output": [{"type": "input_text", "text": "1"}]},
    ]}, [], max_items=10)
    assert chat["messages"] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
    ]


def test_too_many_items_is_a_400():
    with pytest.raises(GatewayError) as ei:
        validate_responses_body({"model": "m", "input": [{"role": "user", "content": "x"}] * 3}, max_items=2)
    assert ei.value.status == 400 and ei.value.metadata["param"] == "input"


def test_reasoning_then_text_stream():
    events = run({"model": "m/x", "input": "hi"}, [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning": "Think"}), chunk({"reasoning": "ing."}),
        chunk({"content": "Hello"}), chunk(finish="stop"),
        chunk(usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
                     "completion_tokens_details": {"reasoning_tokens": 2}, "cost": 0.5}),
    ])
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    final = RESPONSE.validate_python(events[-1]["response"], strict=True)
    assert [i.type for i in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "Thinking." and final.output_text == "Hello"
    assert final.usage.output_tokens_details.reasoning_tokens == 2 and final.usage.model_extra["cost"] == 0.5


def test_empty_answer_is_an_empty_message():
    events = run({"model": "m/x", "input": "hi"}, [chunk({"role": "assistant", "content": ""}), chunk(finish="stop")])
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ""


def test_error_before_any_answer_fails_with_an_id_and_no_items():
    events = run({"model": "m/x", "input": "hi"}, [
        {"id": None, "object": "chat.completion.chunk", "created": 1, "model": None,
         "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
         "error": {"code": 429, "message": "slow down"}}])
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    failed = events[-1]["response"]
    assert failed["id"].startswith("gen-") and failed["model"] == "m/x"
    assert failed["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}


def test_refusal_and_content_filter_are_incomplete():
    resp = response_from_chat({"model": "m", "input": "x"}, {
        "id": "gen-1-a", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "content_filter",
                     "message": {"role": "assistant", "content": None, "refusal": "No."}}]})
    RESPONSE.validate_python(resp, strict=True)
    assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "content_filter"}
    assert resp["output"][0]["content"] == [{"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                                            {"type": "refusal", "refusal": "No."}]


async def test_conversation_store_is_per_key_bounded_and_expires():
    now = [0.0]
    store = ConversationStore(ttl=10, max_bytes=130, clock=lambda: now[0])
    await store.put("a", "k1", [{"role": "user", "content": "x" * 30}])
    assert await store.get("a", "k1") == [{"role": "user", "content": "x" * 30}]
    assert await store.get("a", "k2") is None  # another key's response is not found
    await store.put("b", "k1", [{"role": "user", "content": "y" * 30}])
    await store.put("c", "k1", [{"role": "user", "content": "z" * 30}])  # 60 bytes each, 130 at most: the oldest goes
    assert await store.get("a", "k1") is None and await store.get("b", "k1") is not None
    assert store.bytes == 120
    await store.put("huge", "k1", [{"role": "user", "content": "h" * 200}])  # larger than the whole store: not kept
    assert await store.get("huge", "k1") is None and await store.get("c", "k1") is not None
    now[0] = 10.0
    assert await store.get("b", "k1") is None and await store.get("c", "k1") is None and store.bytes == 0


async def test_redis_conversations_are_per_key_bounded_and_expire():
    import os
    import secrets

    if os.environ.get("METAROUTER_TEST_NO_SERVICES") == "1":
        pytest.skip("METAROUTER_TEST_NO_SERVICES=1")
    import redis.asyncio as aioredis

    from metarouter.api.responses import RedisConversations

    client = aioredis.from_url(os.environ.get("METAROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    prefix = f"mr:test:{secrets.token_hex(4)}:"
    try:
        store = RedisConversations(client, ttl=60, max_bytes=200, prefix=prefix)
        await store.put("a", "k1", [{"role": "user", "content": "x"}])
        assert await store.get("a", "k1") == [{"role": "user", "content": "x"}]
        assert await store.get("a", "k2") is None and await store.get("b", "k1") is None
        assert 0 < await client.ttl(prefix + "a") <= 60  # Redis expires it
        await store.put("big", "k1", [{"role": "user", "content": "h" * 300}])  # over max_bytes: not kept
        assert await store.get("big", "k1") is None
    finally:
        keys = await client.keys(prefix + "*")
        if keys:
            await client.delete(*keys)
        await client.aclose()
