"""Provider keys never reach a client: an upstream that echoes the Authorization header (or any key-shaped string)
in an error, JSON or in a stream, is masked in the answer, in the stored record and in the log."""

from __future__ import annotations

import contextlib

import httpx
import orjson

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV, FakeReply

MODEL = "openai/gpt-4o-mini-2024-07-18"
FALLBACK = "mistralai/mistral-nemo"
OPENAI_KEY = FAKE_KEYS_ENV["FAKE_OPENAI_KEY"]  # "sk-fake-openai": too short to look like a key, but configured
FOREIGN = "sk-proj-" + "Q7x" * 16  # key-shaped, and configured nowhere


def echo_401(path, headers, body, query) -> FakeReply:
    auth = headers.get("authorization", "")
    return FakeReply(401, {"error": {"message": f"Incorrect API key provided: {auth}; also tried {FOREIGN}",
                                     "type": "invalid_request_error", "param": auth, "code": "invalid_api_key"}})


def echo_in_stream(path, headers, body, query) -> FakeReply:
    auth = headers.get("authorization", "")
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}
    error = {"error": {"message": f"session expired for {auth}", "type": "server_error", "code": auth}}
    return FakeReply(200, sse=[b"data: " + orjson.dumps(chunk) + b"\n\n", b"data: " + orjson.dumps(error) + b"\n\n"])


@contextlib.contextmanager
def openai_handler(fake, handler):
    old = fake.handlers["openai"]
    fake.handlers["openai"] = handler
    try:
        yield
    finally:
        fake.handlers["openai"] = old


def assert_no_secret(text: str) -> None:
    assert OPENAI_KEY not in text and FOREIGN not in text, text
    assert "Q7xQ7x" not in text, text  # not even a part of it


def post(gateway, body, **headers):
    return httpx.post(f"{gateway.url}/api/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {gateway.api_key}", **headers})


def test_an_echoed_key_in_an_upstream_error_is_masked(gateway, fake):
    with openai_handler(fake, echo_401):
        r = post(gateway, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert fake.requests_for("openai")[-1].headers["authorization"] == f"Bearer {OPENAI_KEY}"  # it was echoed
    assert r.status_code == 401, r.text
    assert_no_secret(r.text)
    assert "Incorrect API key provided: Bearer [redacted]" in r.json()["error"]["message"]


def test_an_echoed_key_in_a_stream_error_is_masked(gateway, fake):
    with openai_handler(fake, echo_in_stream):
        with httpx.stream("POST", f"{gateway.url}/api/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {gateway.api_key}"},
                          json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
            text = r.read().decode()
    assert '"finish_reason":"error"' in text and "session expired for Bearer [redacted]" in text, text
    assert_no_secret(text)
    gen_id = next(orjson.loads(line[6:])["id"] for line in text.splitlines() if line.startswith("data: {"))
    stored = httpx.get(f"{gateway.url}/api/v1/generation", params={"id": gen_id},
                       headers={"Authorization": f"Bearer {gateway.api_key}"}).text
    assert "session expired" in stored
    assert_no_secret(stored)


def test_an_echoed_key_in_a_fallback_attempt_is_masked_in_metadata_record_and_log(gateway, fake):
    with openai_handler(fake, echo_401):
        r = post(gateway, {"model": MODEL, "models": [FALLBACK], "messages": [{"role": "user", "content": "hi"}]},
                 **{"X-OpenRouter-Metadata": "enabled"})
    assert r.status_code == 200 and r.json()["model"] == FALLBACK, r.text
    attempts = r.json()["openrouter_metadata"]["attempts"]
    assert attempts[0]["status"] == 401 and "[redacted]" in attempts[0]["error"]
    assert_no_secret(r.text)
    stored = httpx.get(f"{gateway.url}/api/v1/generation", params={"id": r.json()["id"]},
                       headers={"Authorization": f"Bearer {gateway.api_key}"}).text
    assert "Incorrect API key provided" in stored
    assert_no_secret(stored)
    assert_no_secret(gateway.log_path.read_text(errors="replace"))


def test_only_a_number_of_seconds_is_passed_on_from_an_upstream_retry_after(gateway, fake):
    fake.fail("openai", status=429, times=3, headers={"Retry-After": f"Bearer {OPENAI_KEY}"})
    r = post(gateway, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and "retry-after" not in r.headers, r.headers
    assert_no_secret(str(r.headers) + r.text)
    fake.fail("openai", status=429, times=3, headers={"Retry-After": "7"})
    r = post(gateway, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
