"""Sticky sessions for ``auto``: the in-process store and the Redis one (on the real server) behave alike."""

from __future__ import annotations

import os
import secrets

import pytest

from metarouter.gateway.auto import RedisStickySessions, StickySessions

REDIS_URL = os.environ.get("METAROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def test_in_process_pins_expire_after_inactivity():
    s = StickySessions(ttl=300)
    assert await s.get("k") is None
    await s.pin("k", "openai/gpt-4o")
    assert await s.get("k") == "openai/gpt-4o"
    s.ttl = -1  # every pin is now older than the TTL
    assert await s.get("k") is None
    await s.unpin("k")


@pytest.fixture
async def redis_client():
    if os.environ.get("METAROUTER_TEST_NO_SERVICES") == "1":
        pytest.skip("METAROUTER_TEST_NO_SERVICES=1")
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


class _BeforeGetex:
    """A client of a server older than Redis 6.2: no GETEX."""

    def __init__(self, client):
        self.client, self.getex_calls = client, 0

    async def getex(self, *a, **kw):
        from redis.exceptions import ResponseError

        self.getex_calls += 1
        raise ResponseError("unknown command 'getex', with args beginning with: ")

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.mark.parametrize("server", ["current", "before 6.2"])
async def test_redis_pins_are_read_and_refreshed(redis_client, server):
    prefix = f"mr_test:sticky:{secrets.token_hex(6)}:"
    client = redis_client if server == "current" else _BeforeGetex(redis_client)
    s = RedisStickySessions(client, ttl=300, prefix=prefix)
    try:
        assert await s.get("a") is None
        await s.pin("a", "anthropic/claude-3.5-haiku")
        await redis_client.expire(prefix + "a", 5)  # almost expired ...
        assert await s.get("a") == "anthropic/claude-3.5-haiku"
        assert await redis_client.ttl(prefix + "a") > 290  # ... and a read counts as activity
        assert await s.get("a") == "anthropic/claude-3.5-haiku"
        await s.unpin("a")
        assert await s.get("a") is None
        if server == "before 6.2":
            assert s.getex is False and client.getex_calls == 1  # asked once, then GET + EXPIRE
        else:
            assert s.getex is True
    finally:
        await redis_client.delete(prefix + "a")
