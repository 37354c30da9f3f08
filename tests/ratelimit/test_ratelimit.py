"""Rate limits: the same behaviour from the in-memory limiter and the Redis one (on the real server)."""

from __future__ import annotations

import asyncio
import os
import secrets
from types import SimpleNamespace

import pytest

from metarouter.errors import GatewayError
from metarouter.ratelimit import WINDOW, MemoryRateLimiter, RateLimitGuard, RedisRateLimiter

REDIS_URL = os.environ.get("METAROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def make_limiter(request):
    """A factory of limiters sharing one state: ``make()`` twice gives two 'processes' of one deployment."""
    kind = request.param
    prefix = f"mr_test:{secrets.token_hex(6)}"
    made = []
    shared = MemoryRateLimiter()

    def make():
        if kind == "memory":
            return shared
        if os.environ.get("METAROUTER_TEST_NO_SERVICES") == "1":
            pytest.skip("METAROUTER_TEST_NO_SERVICES=1")
        lim = RedisRateLimiter(REDIS_URL, prefix=prefix)
        made.append(lim)
        return lim

    yield make
    if made:
        keys = [k async for k in made[0].redis.scan_iter(f"{prefix}:*")]
        if keys:
            await made[0].redis.delete(*keys)
    for lim in made:
        await lim.close()


both = pytest.mark.parametrize("make_limiter", ["memory", "redis"], indirect=True)


@both
async def test_rpm_admits_exactly_the_limit_under_concurrency(make_limiter):
    a, b = make_limiter(), make_limiter()
    decisions = await asyncio.gather(*((a if i % 2 else b).acquire("key1", 10, None) for i in range(50)))
    admitted = [d for d in decisions if d.allowed]
    refused = [d for d in decisions if not d.allowed]
    assert len(admitted) == 10
    assert sorted(d.remaining for d in admitted) == list(range(10))
    assert all(d.kind == "requests" and d.limit == 10 and 0 < d.retry_after <= WINDOW for d in refused)
    h = refused[0].headers()
    assert 1 <= int(h["Retry-After"]) <= WINDOW
    assert h["X-RateLimit-Limit"] == "10" and h["X-RateLimit-Remaining"] == "0"
    # other keys are not affected
    assert (await a.acquire("key2", 10, None)).allowed


@both
async def test_no_limits_always_admit(make_limiter):
    lim = make_limiter()
    for _ in range(20):
        d = await lim.acquire("free", None, None)
        assert d.allowed and d.headers() == {}


@both
async def test_tpm_refuses_once_the_tokens_are_used(make_limiter):
    a, b = make_limiter(), make_limiter()
    assert (await a.acquire("k", None, 100)).allowed
    await a.add_tokens("k", 60)
    assert (await b.acquire("k", None, 100)).allowed  # 60 < 100
    await b.add_tokens("k", 40)
    d = await a.acquire("k", 1000, 100)
    assert not d.allowed and d.kind == "tokens" and d.limit == 100 and 0 < d.retry_after <= WINDOW
    # a refusal for tokens does not use up a request
    assert (await a.acquire("k", 1, None)).allowed


async def test_the_window_slides():
    now = [1000.0]
    lim = MemoryRateLimiter(clock=lambda: now[0])
    for t in (1000.0, 1010.5, 1020.0):
        now[0] = t
        assert (await lim.acquire("k", 3, None)).allowed
    now[0] = 1030.0
    d = await lim.acquire("k", 3, None)
    assert not d.allowed and d.retry_after == pytest.approx(1000 + WINDOW - 1030.0)
    now[0] = 1059.9
    assert not (await lim.acquire("k", 3, None)).allowed
    now[0] = 1060.0  # the request of second 1000 has left the window
    assert (await lim.acquire("k", 3, None)).allowed
    d = await lim.acquire("k", 3, None)
    assert not d.allowed and d.retry_after == pytest.approx(1010 + WINDOW - 1060.0)
    # tokens slide the same way
    await lim.add_tokens("t", 50)
    now[0] = 1061.0
    await lim.add_tokens("t", 50)
    d = await lim.acquire("t", None, 100)
    assert not d.allowed and d.retry_after == pytest.approx(1060 + WINDOW - 1061.0)
    now[0] = 1120.0
    assert (await lim.acquire("t", None, 100)).allowed


async def test_guard_refuses_with_429_and_counts_tokens():
    guard = RateLimitGuard(MemoryRateLimiter())
    key = SimpleNamespace(public_id="abc123abc123", rpm=2, tpm=1000)
    await guard.request_hook(None, key, {}, None)
    await guard.request_hook(None, key, {}, None)
    with pytest.raises(GatewayError) as exc:
        await guard.request_hook(None, key, {}, None)
    err = exc.value
    assert err.status == 429 and "2 requests per minute" in err.message
    assert int(err.headers["Retry-After"]) >= 1 and err.headers["X-RateLimit-Limit"] == "2"
    assert key.public_id not in err.message  # nothing about the key in the error

    tkey = SimpleNamespace(public_id="def456def456", rpm=None, tpm=100)
    await guard.request_hook(None, tkey, {}, None)
    guard.observer("generation", {"key_id": tkey.public_id, "prompt_tokens": 70, "completion_tokens": 40})
    guard.observer("attempt", {"key_id": tkey.public_id})
    await asyncio.sleep(0)
    await guard.close()
    with pytest.raises(GatewayError) as exc:
        await guard.request_hook(None, tkey, {}, None)
    assert exc.value.status == 429 and "100 tokens per minute" in exc.value.message

    free = SimpleNamespace(public_id="000000000000", rpm=None, tpm=None)
    for _ in range(5):
        await guard.request_hook(None, free, {}, None)


async def test_guard_fails_open_when_redis_is_unreachable():
    guard = RateLimitGuard(RedisRateLimiter("redis://127.0.0.1:1/0"))
    key = SimpleNamespace(public_id="abc123abc123", rpm=1, tpm=None)
    for _ in range(3):
        await guard.request_hook(None, key, {}, None)  # admitted, with a warning
    await guard.close()
