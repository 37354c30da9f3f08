"""End to end: the real server, called with the official ``openai`` SDK, in front of a fake OpenAI upstream."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

MODEL = "openai/gpt-4o-mini-2024-07-18"
# gpt-4o-mini: $0.15 / $0.60 per 1M tokens
IN_PRICE, OUT_PRICE = 0.15e-6, 0.60e-6


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.api_key, max_retries=0)



def test_chat_completion_model_usage_cost_and_record(client, gateway, fake):
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is two plus two?"}],
        temperature=0.2, extra_headers={"HTTP-Referer": "https://example.app", "X-Title": "Example App"},
    )
    assert resp.model == MODEL
    assert resp.choices[0].message.content == "You said: What is two plus two?"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.id.startswith("gen-")
    extra = resp.model_extra or {}
    assert extra["provider"] == "OpenAI"
    u = resp.usage
    assert u.prompt_tokens == 6 and u.completion_tokens == 8
    assert u.model_extra["cost"] == pytest.approx(6 * IN_PRICE + 8 * OUT_PRICE, rel=1e-12)
    # the upstream saw the native model name, our parameters, and no OpenRouter-only fields
    sent = fake.requests_for("openai")[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "gpt-4o-mini-2024-07-18"
    assert sent.body["temperature"] == 0.2
    assert sent.headers["authorization"] == "Bearer sk-fake-openai"
    rec = gateway.generation(resp.id)
    assert rec["model"] == MODEL
    assert rec["provider_name"] == "openai"
    assert rec["tokens_prompt"] == 6 and rec["tokens_completion"] == 8
    assert rec["total_cost"] == pytest.approx(u.model_extra["cost"], rel=1e-12)
    assert rec["streamed"] is False
    assert rec["app"] == {"title": "Example App", "referer": "https://example.app"}
    assert rec["finish_reason"] == "stop"


def test_streaming_chunks_usage_and_record(client, gateway):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: Tell me a story"
    assert all(c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == 4 and last.usage.completion_tokens == 7
    assert last.usage.model_extra["cost"] == pytest.approx(4 * IN_PRICE + 7 * OUT_PRICE, rel=1e-12)
    rec = gateway.generation(last.id)
    assert rec["streamed"] is True and rec["tokens_completion"] == 7
    assert rec["time_to_first_token"] is not None and rec["time_to_first_token"] <= rec["latency"]


def test_tool_call_round_trip(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}}}}}]
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "find cats"}],
                                          tools=tools)
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and call.function.arguments == '{"query":"find cats"}'
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "find cats"}],
                                            tools=tools, stream=True)
    args = ""
    for c in stream:
        for ch in c.choices:
            for tc in ch.delta.tool_calls or []:
                assert tc.index == 0
                args += tc.function.arguments or ""
    assert args == '{"query":"find cats"}'


def test_upstream_error_is_mapped_and_not_charged(client, gateway, fake):
    before = httpx.get(f"{gateway.url}/api/v1/key", headers={"Authorization": f"Bearer {gateway.api_key}"}).json()
    fake.fail("openai", status=429, times=3)  # the first try and both retries
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 429
    assert ei.value.body["code"] == 429 and "fake failure 429" in ei.value.body["message"]
    after = httpx.get(f"{gateway.url}/api/v1/key", headers={"Authorization": f"Bearer {gateway.api_key}"}).json()
    assert after["data"]["usage"] == before["data"]["usage"]


def test_fallback_models_list_bills_only_the_one_that_answered(client, gateway, fake):
    fake.fail("openai", status=503, times=1)
    resp = client.chat.completions.create(
        model="openai/gpt-4o-2024-08-06", messages=[{"role": "user", "content": "hello"}],
        extra_body={"models": ["meta-llama/llama-3.1-70b-instruct"]},
        extra_headers={"X-OpenRouter-Metadata": "enabled"},
    )
    assert resp.model == "meta-llama/llama-3.1-70b-instruct"
    meta = resp.model_extra["openrouter_metadata"]
    assert [a["model"] for a in meta["attempts"]] == ["openai/gpt-4o-2024-08-06", "meta-llama/llama-3.1-70b-instruct"]
    assert meta["attempts"][0]["status"] == 503
    rec = gateway.generation(resp.id)
    assert rec["model"] == "meta-llama/llama-3.1-70b-instruct"
    # llama 3.1 70b on Together: $0.12 / $0.30
    assert rec["total_cost"] == pytest.approx(rec["tokens_prompt"] * 0.12e-6 + rec["tokens_completion"] * 0.30e-6)
    assert len(rec["attempts"]) == 2


def test_stream_broken_midway_ends_with_terminal_error_chunk(client, gateway, fake):
    fake.knobs("openai").break_stream_after = 3
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "one two three four five six"}], stream=True)
    chunks = []
    # the SDK turns the terminal chunk's `error` object into an exception, as it does with OpenRouter
    with pytest.raises(openai.APIError) as ei:
        for c in stream:
            chunks.append(c)
    assert "upstream stream broke" in ei.value.message
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said:"
    # the raw stream: a terminal chunk with finish_reason "error", then the usage chunk and [DONE]
    fake.knobs("openai").break_stream_after = 3
    with httpx.stream("POST", f"{gateway.url}/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {gateway.api_key}"},
                      json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "a b c d"}]}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    terminal = events[-2]
    assert terminal["choices"][0]["finish_reason"] == "error" and terminal["error"]["code"] == 502
    assert events[-1]["choices"] == [] and events[-1]["usage"]["cost"] > 0
    rec = gateway.generation(chunks[0].id)
    assert rec["status"] == "error" and rec["usage_estimated"] is True and rec["total_cost"] > 0
    assert rec["finish_reason"] == "error"


def test_processing_comments_while_waiting(gateway, fake):
    fake.knobs("openai").latency = 0.8
    with httpx.stream("POST", f"{gateway.url}/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {gateway.api_key}"},
                      json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == ": OPENROUTER PROCESSING"
    assert lines[-1] == "data: [DONE]"


def test_stream_error_before_first_byte_keeps_real_status(gateway, fake):
    fake.fail("openai", status=400, body={"error": {"message": "bad things", "type": "invalid_request_error"}})
    r = httpx.post(f"{gateway.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {gateway.api_key}"},
                   json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "openai: bad things"
