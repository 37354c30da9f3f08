"""The real server (one process, in-memory limiter) refuses a key over its rpm with 429 and Retry-After."""

from __future__ import annotations

import httpx

MODEL = "openai/gpt-4o-mini-2024-07-18"


def chat(gateway, key: str, content: str = "hi") -> httpx.Response:
    return httpx.post(f"{gateway.url}/api/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 5})


def test_rpm_429_with_retry_after_and_no_charge(gateway, fake):
    key = gateway.create_key("limited", rpm=3)
    answers = [chat(gateway, key) for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    refused = answers[3]
    assert set(refused.json()) == {"error"} and refused.json()["error"]["code"] == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == "3" and refused.headers["x-ratelimit-remaining"] == "0"
    assert key not in refused.text and key.split("-")[2] not in refused.text
    assert len(fake.requests_for("openai")) == 3  # the refused ones never reached the upstream
    info = httpx.get(f"{gateway.url}/api/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert info["rate_limit"]["requests"] == 3
    # another key is not limited by this one
    assert chat(gateway, gateway.api_key).status_code == 200


def test_tpm_429_after_the_tokens_are_used(gateway, fake):
    key = gateway.create_key("tokens", tpm=10)
    first = chat(gateway, key, "tell me about rate limits " * 3)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used >= 10
    r = chat(gateway, key)
    assert r.status_code == 429 and "tokens per minute" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1
