"""Bad input gets OpenRouter's error body with the right status, never a stack trace, and never a charge."""

from __future__ import annotations

import httpx
import pytest

MODEL = "openai/gpt-4o-mini-2024-07-18"


def post(gateway, body=None, *, content=None, key=None, headers=None):
    h = {"Authorization": f"Bearer {key or gateway.api_key}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{gateway.url}/api/v1/chat/completions", json=body, content=content, headers=h, timeout=30)


def usage(gateway) -> float:
    return httpx.get(f"{gateway.url}/api/v1/key", headers={"Authorization": f"Bearer {gateway.api_key}"}).json()[
        "data"]["usage"]


def assert_error(r, status: int, fragment: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == status
    assert fragment.lower() in body["error"]["message"].lower(), body
    assert "Traceback" not in r.text


@pytest.mark.parametrize("content,status,fragment", [
    (b"{not json", 400, "invalid json"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "json object"),
    (b'{"model": "openai/gpt-4o-mini-2024-07-18"}', 400, "messages"),
    (b'{"model": "openai/gpt-4o-mini-2024-07-18", "messages": []}', 400, "non-empty"),
    (b'{"model": "openai/gpt-4o-mini-2024-07-18", "messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
    (b'{"model": "openai/gpt-4o-mini-2024-07-18", "messages": [{"role": "user", "content": 5}]}', 400, "content"),
    (b'{"model": "openai/gpt-4o-mini-2024-07-18", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}',
     400, "temperature"),
    (b'{"model": "openai/gpt-4o-mini-2024-07-18", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}',
     400, "max_tokens"),
    (b'{"model": "nobody/no-such-model", "messages": [{"role": "user", "content": "x"}]}', 400, "not a valid model"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    (b'{"model": "openai/gpt-4o-mini-2024-07-18", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400,
     "invalid json"),
    (b"[" * 100 + b"]" * 100, 400, "nested"),
    # unhashable values where a name is expected (found by schemathesis: they were a 500)
    (b'{"model": "openai/gpt-4o-mini-2024-07-18", "messages": [{"role": "user", "content": [{"type": []}]}]}', 400,
     "content part"),
    (b'{"model": "openai/gpt-4o-mini-2024-07-18", "messages": [{"role": {"a": 1}, "content": "x"}]}', 400, "role"),
])
def test_bad_bodies(gateway, fake, content, status, fragment):
    before = usage(gateway)
    r = post(gateway, content=content)
    assert_error(r, status, fragment)
    assert fake.requests == []
    assert usage(gateway) == before


def test_oversized_body_is_413(gateway, fake):
    big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (9 * 1024 * 1024) + b'"}]}'
    r = post(gateway, content=big)
    assert_error(r, 413, "too large")
    assert fake.requests == []


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer nonsense", "Basic abc",
                                  "Bearer sk-mr-000000000000-" + "0" * 48])
def test_bad_keys_are_401(gateway, fake, auth):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    r = httpx.post(f"{gateway.url}/api/v1/chat/completions", headers=headers,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert_error(r, 401, "api key")
    assert fake.requests == []


def test_stored_hash_is_not_a_key(gateway):
    import hashlib

    public_id = gateway.api_key.split("-")[2]
    stored_hash = hashlib.sha256(gateway.api_key.encode()).hexdigest()
    for forged in (stored_hash, f"sk-mr-{public_id}-{stored_hash[:48]}"):
        r = post(gateway, {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, key=forged)
        assert_error(r, 401, "api key")


def test_key_without_credit_is_402_and_not_sent(gateway, fake):
    key = gateway.create_key("broke", limit=0.000001)
    r = post(gateway, {"model": "anthropic/claude-3-opus", "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "write an essay"}]}, key=key)
    assert_error(r, 402, "insufficient credit")
    assert fake.requests == []


def test_limited_key_without_max_tokens_gets_a_capped_request(gateway, fake):
    from metarouter.gateway.accounting import EXPECTED_OUTPUT_TOKENS, prompt_token_bound

    # $0.001 at gpt-4o-mini's $0.60/1M output affords ~1,600 output tokens: the expected output is held and sent as
    # max_tokens (not the whole budget); $0.0001 affords less than that: max_tokens is what it affords, not refused
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    bound = prompt_token_bound(body)
    for limit, expected in ((0.001, EXPECTED_OUTPUT_TOKENS), (0.0001, (10**8 - bound * 150_000) // 600_000)):
        key = gateway.create_key("small", limit=limit)
        r = post(gateway, body, key=key)
        assert r.status_code == 200, r.text
        sent = fake.requests_for("openai")[-1].body
        assert sent["max_tokens"] == expected
        k = httpx.get(f"{gateway.url}/api/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        assert k["usage"] == pytest.approx(r.json()["usage"]["cost"])
        assert k["limit_remaining"] == pytest.approx(limit - k["usage"])


def test_disabled_key_is_403(gateway):
    key = gateway.create_key("gone")
    gateway.cli("keys", "disable", key.split("-")[2])
    import time

    time.sleep(0.6)  # the auth cache holds a record for auth_cache_ttl (0.5 s in tests)
    r = post(gateway, {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, key=key)
    assert_error(r, 403, "disabled")


def test_unknown_route_and_method(gateway):
    r = httpx.get(f"{gateway.url}/api/v1/nope")
    assert_error(r, 404, "not found")
    r = httpx.get(f"{gateway.url}/api/v1/chat/completions")
    assert_error(r, 405, "method not allowed")


def test_generation_of_another_key_is_404(gateway):
    r = post(gateway, {"model": MODEL, "messages": [{"role": "user", "content": "mine"}]})
    gen_id = r.json()["id"]
    other = gateway.create_key("other")
    r = httpx.get(f"{gateway.url}/api/v1/generation", params={"id": gen_id}, headers={"Authorization": f"Bearer {other}"})
    assert_error(r, 404, "not found")
