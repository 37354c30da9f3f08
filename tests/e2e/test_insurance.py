"""End to end: zero completion insurance. An answer that delivered no content and ended in an error, or came with no
output tokens, is recorded (``insured``) and not charged; the key's hold is given back and its usage is untouched.
The real server, the official ``openai`` SDK, the fake OpenAI upstream."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest

from metarouter.testing.fake_upstream import openai_chat

MODEL = "openai/gpt-4o-mini-2024-07-18"


@pytest.fixture
def key(gateway):
    return gateway.create_key("insurance", limit=1)


@pytest.fixture
def client(gateway, key):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture
def empty_answers(fake):
    """The fake OpenAI upstream answers with no content and no output tokens (a model that gave up at once)."""

    def empty(path, headers, body, query):
        reply = openai_chat(path, headers, body, query)
        if reply.json is not None:
            reply.json["choices"][0]["message"]["content"] = ""
            reply.json["usage"].update(completion_tokens=0, total_tokens=reply.json["usage"]["prompt_tokens"])
        elif reply.sse is not None:  # the role chunk, the finish and the usage (no output tokens), [DONE]
            reply.sse = [f for f in map(without_output, reply.sse) if f is not None]
        return reply

    fake.handlers["openai"] = empty
    try:
        yield
    finally:
        fake.handlers["openai"] = openai_chat


def without_output(frame: bytes) -> bytes | None:
    """An OpenAI stream frame with its content gone: None for a chunk of words, output tokens set to 0."""
    data = frame.removeprefix(b"data: ").strip()
    if data == b"[DONE]":
        return frame
    chunk = orjson.loads(data)
    if chunk.get("usage"):
        chunk["usage"].update(completion_tokens=0, total_tokens=chunk["usage"]["prompt_tokens"])
    elif chunk["choices"][0]["delta"].get("content"):
        return None
    return b"data: " + orjson.dumps(chunk) + b"\n\n"



def key_usage(gateway, key) -> float:
    return httpx.get(f"{gateway.url}/api/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]["usage"]


def activity_record(gateway, key, gen_id: str) -> dict:
    r = httpx.get(f"{gateway.url}/api/v1/activity/generations", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return next(g for g in r.json()["data"] if g["id"] == gen_id)


def test_a_stream_broken_before_any_content_is_not_charged(client, gateway, key, fake):
    fake.knobs("openai").break_stream_after = 1  # the role chunk goes out, then the connection is cut
    ids = []
    with pytest.raises(openai.APIError, match="broke"):
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                    stream=True):
            ids.append(chunk.id)
            assert not chunk.choices or not chunk.choices[0].delta.content
    g = gateway.generation(ids[0], key)
    assert g["insured"] is True and g["total_cost"] == 0 and g["status"] == "error" and g["streamed"]
    assert activity_record(gateway, key, ids[0])["insured"] is True
    assert key_usage(gateway, key) == 0


def test_a_stream_broken_after_content_is_charged(client, gateway, key, fake):
    fake.knobs("openai").break_stream_after = 3  # the role chunk and two words
    ids, text = [], ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one two"}],
                                                    stream=True):
            ids.append(chunk.id)
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == "You said:"
    g = gateway.generation(ids[0], key)
    assert g["insured"] is False and g["total_cost"] > 0 and g["status"] == "error"
    assert key_usage(gateway, key) == pytest.approx(g["total_cost"], rel=1e-9)


def test_an_empty_answer_with_no_output_tokens_is_not_charged(client, gateway, key, empty_answers):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi there"}])
    assert r.choices[0].message.content == "" and r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0
    assert r.usage.model_extra["cost"] == 0
    g = gateway.generation(r.id, key)
    assert g["insured"] is True and g["total_cost"] == 0 and g["tokens_prompt"] == r.usage.prompt_tokens
    assert activity_record(gateway, key, r.id)["insured"] is True

    with client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi there"}],
                                        stream=True, stream_options={"include_usage": True}) as s:
        chunks = list(s)
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 0 and chunks[-1].usage.model_extra["cost"] == 0
    assert gateway.generation(chunks[0].id, key)["insured"] is True
    assert key_usage(gateway, key) == 0


def test_an_answer_is_charged_as_ever(client, gateway, key):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    g = gateway.generation(r.id, key)
    assert g["insured"] is False and g["total_cost"] > 0 and key_usage(gateway, key) == pytest.approx(g["total_cost"])
