"""The response cache on its own: keys, the in-process LRU and its TTL, what is stored and what never is, hits as
free generations of their own, stream capture and replay, a backend that fails, Redis for real."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import orjson
import pytest

from metarouter.errors import GatewayError
from metarouter.gateway import cache as C
from metarouter.gateway.pipeline import RequestContext
from metarouter.providers.sse import SSE_DONE, sse_data
from metarouter.store import KeyRecord

REDIS_URL = os.environ.get("METAROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = "openai/gpt-4o-mini-2024-07-18"
CACHE_ON = {"X-OpenRouter-Cache": "true"}


def run(coro):
    return asyncio.run(coro)


def test_cache_key_is_canonical_and_scoped():
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    k = C.cache_key("key1", body, stream=False, metadata=False, session_id=None)
    assert k == C.cache_key("key1", dict(reversed(list(body.items()))), stream=False, metadata=False,
                            session_id=None)
    others = {C.cache_key("key2", body, stream=False, metadata=False, session_id=None),
              C.cache_key("key1", body, stream=True, metadata=False, session_id=None),
              C.cache_key("key1", body, stream=False, metadata=True, session_id=None),
              C.cache_key("key1", body, stream=False, metadata=False, session_id="s"),
              C.cache_key("key1", {**body, "temperature": 0.1}, stream=False, metadata=False, session_id=None)}
    assert k not in others and len(others) == 5


def test_memory_backend_ttl_and_bounds():
    now = [0.0]
    b = C.MemoryBackend(max_entries=3, max_bytes=100, clock=lambda: now[0])
    run(b.put("a", b"1" * 10, ttl=5))
    now[0] = 4.99
    assert run(b.get("a")) == b"1" * 10
    now[0] = 5.0
    assert run(b.get("a")) is None and len(b) == 0 and b.bytes == 0  # expired exactly at its TTL
    for k in "abc":
        run(b.put(k, b"x", ttl=60))
    run(b.get("a"))  # used: "b" is now the least recently used
    run(b.put("d", b"x", ttl=60))
    assert [k for k in "abcd" if run(b.get(k)) is not None] == ["a", "c", "d"]
    run(b.put("big", b"y" * 99, ttl=60))  # the byte bound evicts the oldest until it fits
    assert b.bytes == 100 and run(b.get("big")) == b"y" * 99 and len(b) == 2  # "d" and "big": a, c went
    run(b.put("huge", b"z" * 101, ttl=60))  # larger than the whole cache: not kept
    assert run(b.get("huge")) is None and b.bytes <= 100


def test_settings_are_checked():
    assert C.CacheSettings.from_config({}) == C.CacheSettings()
    assert C.CacheSettings.from_config({"response_cache": {"enabled": True, "ttl": 60}}).ttl == 60
    for bad, needle in (({"ttl": 0}, "ttl"), ({"ttl": 86401}, "at most"), ({"max_entries": "x"}, "max_entries"),
                        ({"enabled": "yes"}, "enabled"), ({"size": 1}, "unknown"), ("on", "mapping")):
        with pytest.raises(ValueError, match=needle):
            C.CacheSettings.from_config({"response_cache": bad})


def test_what_may_be_stored():
    assert C._complete_answer({}, "stop") and C._complete_answer({}, "tool_calls") and C._complete_answer({}, None)
    assert not C._complete_answer({}, "error")
    assert not C._complete_answer({}, "length")  # cut by the budget's hold, not by the request
    assert C._complete_answer({"max_tokens": 5}, "length") and C._complete_answer({"max_completion_tokens": 5}, "length")


def test_usage_is_zeroed_and_nothing_else():
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost": 1.5e-6, "is_byok": False,
             "cost_details": {"upstream_inference_cost": None, "x": 2}, "prompt_tokens_details": {"cached_tokens": 1}}
    out = C._fresh({"id": "gen-old", "created": 1, "usage": usage, "choices": [{"index": 3}]}, "gen-new", 99)
    assert out["id"] == "gen-new" and out["created"] == 99 and out["choices"] == [{"index": 3}]
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0,
                            "is_byok": False, "cost_details": {"upstream_inference_cost": None, "x": 0},
                            "prompt_tokens_details": {"cached_tokens": 0}}
    assert usage["prompt_tokens"] == 3  # the stored entry is not changed


class FakeGateway:
    """What the cache uses of the Gateway: the catalog, servable, complete/stream, record and durable."""

    def __init__(self):
        self.catalog = {MODEL: SimpleNamespace(id=MODEL, provider="openai")}
        self.available = True
        self.calls = 0
        self.records: list[dict] = []
        self.fail: GatewayError | None = None
        self.frames: list[bytes] = []

    def servable(self, model_id, served_by=None):
        model = self.catalog.get(model_id)
        return model.provider if model is not None and self.available else None

    async def complete(self, body, ctx):
        assert ctx.cache is None  # the miss comes back without the cache
        self.calls += 1
        if self.fail:
            raise self.fail
        return {"id": f"gen-{self.calls}", "created": 1, "model": MODEL, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "answer"},
                             "finish_reason": "stop", "native_finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "cost": 1e-6}}

    async def stream(self, body, ctx):
        assert ctx.cache is None
        self.calls += 1

        async def gen():
            for f in self.frames:
                yield f
        return gen()

    def record(self, record, reserved):
        assert reserved == 0
        self.records.append(record)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(True)
        return fut

    async def durable(self, fut, record):
        assert await fut


def request_for(cache, body, headers=None, key="k1"):
    req = SimpleNamespace(headers={k.lower(): v for k, v in (CACHE_ON if headers is None else headers).items()},
                          scope={})
    ctx = RequestContext(key=KeyRecord(public_id=key, label="t", key_hash="h"))
    run(cache.request_hook(req, ctx.key, body, ctx))
    return req, ctx


def memory_cache(**cfg) -> C.ResponseCache:
    s = C.CacheSettings(**cfg)
    return C.ResponseCache(s, C.MemoryBackend(s.max_entries, s.max_bytes))


BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def test_the_request_hook_decides():
    cache = memory_cache()
    req, ctx = request_for(cache, BODY, headers={})
    assert ctx.cache is None and C.SCOPE_KEY not in req.scope
    req, ctx = request_for(cache, BODY, headers={"X-OpenRouter-Cache": "TRUE", "X-OpenRouter-Cache-TTL": " 42 "})
    assert ctx.cache is req.scope[C.SCOPE_KEY] and ctx.cache.ttl == 42 and ctx.cache.headers() == []
    everything = memory_cache(enabled=True)
    assert request_for(everything, BODY, headers={})[1].cache is not None
    assert request_for(everything, BODY, headers={"X-OpenRouter-Cache": "false"})[1].cache is None
    for headers in ({"X-OpenRouter-Cache": "sometimes"}, {"X-OpenRouter-Cache": "1", "X-OpenRouter-Cache-TTL": "1.5"}):
        with pytest.raises(GatewayError) as exc:
            request_for(cache, BODY, headers=headers)
        assert exc.value.status == 400


def test_json_miss_then_free_hit():
    cache, gw = memory_cache(), FakeGateway()
    _, ctx = request_for(cache, BODY)
    first = run(ctx.cache.complete(gw, BODY, ctx))
    assert ctx.cache.status == "MISS" and gw.calls == 1 and gw.records == []  # the pipeline recorded the miss
    _, ctx = request_for(cache, BODY)
    hit = run(ctx.cache.complete(gw, BODY, ctx))
    assert ctx.cache.status == "HIT" and gw.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert dict(ctx.cache.headers())[b"x-openrouter-cache-status"] == b"HIT"
    assert hit["id"] != first["id"] and hit["choices"] == first["choices"] and hit["usage"]["cost"] == 0
    (rec,) = gw.records
    assert rec["id"] == hit["id"] and rec["cost_pico"] == 0 and rec["prompt_tokens"] == 0 and C.is_cache_hit(rec)
    assert rec["routing"]["cache"]["original_id"] == first["id"] and rec["provider"] == "openai"
    assert rec["status"] == "ok" and rec["finish_reason"] == "stop" and rec["key_id"] == "k1"
    # another key never sees it
    _, ctx = request_for(cache, BODY, key="k2")
    run(ctx.cache.complete(gw, BODY, ctx))
    assert ctx.cache.status == "MISS" and gw.calls == 2
    # a model that left the catalog (or whose provider went) is asked again
    gw.available = False
    _, ctx = request_for(cache, BODY)
    run(ctx.cache.complete(gw, BODY, ctx))
    assert ctx.cache.status == "MISS" and gw.calls == 3


def test_errors_are_never_stored():
    cache, gw = memory_cache(), FakeGateway()
    gw.fail = GatewayError(503, "upstream down")
    _, ctx = request_for(cache, BODY)
    with pytest.raises(GatewayError):
        run(ctx.cache.complete(gw, BODY, ctx))
    assert len(cache.backend) == 0


def frames_of(chunks: list[dict], done: bool = True) -> list[bytes]:
    out = [b": OPENROUTER PROCESSING\n\n"] + [sse_data(c) for c in chunks[:-1]]
    last = sse_data(chunks[-1]) + (SSE_DONE if done else b"")
    return out + [last]


STREAM_BODY = {**BODY, "stream": True}
CHUNKS = [{"id": "gen-s", "model": MODEL, "created": 1, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
          {"id": "gen-s", "model": MODEL, "created": 1, "choices": [{"index": 0, "delta": {"content": "lo"},
                                                                     "finish_reason": "stop"}]},
          {"id": "gen-s", "model": MODEL, "created": 1, "choices": [],
           "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6, "cost": 2e-6}}]


async def drain(it, stop_after: int | None = None) -> list[bytes]:
    out = []
    async for f in it:
        out.append(f)
        if stop_after is not None and len(out) >= stop_after:
            await it.aclose()
            break
    return out


def events(frames: list[bytes]) -> list[dict]:
    return [orjson.loads(e[6:]) for f in frames for e in f.split(b"\n\n")
            if e.startswith(b"data: ") and e != b"data: [DONE]"]


def test_stream_capture_and_replay():
    cache, gw = memory_cache(), FakeGateway()
    gw.frames = frames_of(CHUNKS)
    _, ctx = request_for(cache, STREAM_BODY)
    sent = run(drain(_Lazy(ctx, gw)))
    assert sent == gw.frames  # passed on unchanged
    _, ctx = request_for(cache, STREAM_BODY)
    replayed = run(drain(_Lazy(ctx, gw)))
    assert ctx.cache.status == "HIT" and gw.calls == 1
    assert replayed[-1].endswith(SSE_DONE)
    got = events(replayed)
    assert [c["choices"] for c in got] == [c["choices"] for c in CHUNKS]
    assert len({c["id"] for c in got}) == 1 and got[0]["id"] != "gen-s"
    assert got[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0}
    (rec,) = gw.records
    assert rec["id"] == got[0]["id"] and rec["streamed"] and rec["finish_reason"] == "stop" and rec["cost_pico"] == 0
    # the same body without streaming is another request
    _, ctx = request_for(cache, BODY)
    run(ctx.cache.complete(gw, BODY, ctx))
    assert ctx.cache.status == "MISS"


class _Lazy:
    """The stream of a cached request, opened on the loop that drains it."""

    def __init__(self, ctx, gw):
        self.ctx, self.gw, self.it = ctx, gw, None

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.it is None:
            self.it = await self.ctx.cache.stream(self.gw, STREAM_BODY, self.ctx)
        return await self.it.__anext__()

    async def aclose(self):
        if self.it is not None:
            await self.it.aclose()


@pytest.mark.parametrize("frames", [
    frames_of(CHUNKS, done=False),  # ended before [DONE]: partial
    frames_of(CHUNKS[:1] + [{"id": "gen-s", "model": MODEL, "choices": [
        {"index": 0, "delta": {}, "finish_reason": "error"}], "error": {"code": 502, "message": "broke"}}]),
    frames_of(CHUNKS[:1] + [{"id": "gen-s", "model": MODEL, "choices": [
        {"index": 0, "delta": {}, "finish_reason": "length"}]}] + CHUNKS[2:]),  # cut by the hold
])
def test_streams_that_did_not_complete_are_not_stored(frames):
    cache, gw = memory_cache(), FakeGateway()
    gw.frames = frames
    _, ctx = request_for(cache, STREAM_BODY)
    run(drain(_Lazy(ctx, gw)))
    assert len(cache.backend) == 0


def test_a_replay_left_by_the_client_is_recorded_as_cancelled():
    cache, gw = memory_cache(), FakeGateway()
    gw.frames = frames_of(CHUNKS)
    _, ctx = request_for(cache, STREAM_BODY)
    run(drain(_Lazy(ctx, gw)))
    _, ctx = request_for(cache, STREAM_BODY)
    run(drain(_Lazy(ctx, gw), stop_after=1))
    (rec,) = gw.records
    assert rec["status"] == "cancelled" and rec["cost_pico"] == 0 and C.is_cache_hit(rec)


class BrokenBackend:
    async def get(self, key):
        raise ConnectionError("redis is away")

    async def put(self, key, value, ttl):
        raise ConnectionError("redis is away")

    async def close(self):
        pass


def test_a_cache_that_is_away_is_a_miss_not_a_failure():
    cache, gw = C.ResponseCache(C.CacheSettings(), BrokenBackend()), FakeGateway()
    for _ in range(2):
        _, ctx = request_for(cache, BODY)
        assert run(ctx.cache.complete(gw, BODY, ctx))["choices"]
        assert ctx.cache.status == "MISS"
    assert gw.calls == 2


def test_entries_over_the_size_bound_are_not_stored():
    cache, gw = memory_cache(max_entry_bytes=64), FakeGateway()
    _, ctx = request_for(cache, BODY)
    run(ctx.cache.complete(gw, BODY, ctx))
    assert len(cache.backend) == 0


def test_redis_backend():
    from metarouter.ratelimit import redis_client

    async def go():
        backend = C.RedisBackend(redis_client(REDIS_URL))
        key = os.urandom(8).hex()
        try:
            assert await backend.get(key) is None
            await backend.put(key, b"entry", ttl=30)
            assert await backend.get(key) == b"entry"
            assert 0 < await backend.client.ttl(C.REDIS_PREFIX + key) <= 30
        finally:
            await backend.client.delete(C.REDIS_PREFIX + key)
            await backend.close()

    run(go())


def test_two_accounts_on_one_redis_never_share():
    """Deployments with their own stores (accounts) sharing one cache backend: the same key id and body are
    different entries."""
    backend = C.MemoryBackend(10, 10_000)
    a, b = (C.ResponseCache(C.CacheSettings(), backend, account=n) for n in ("store-a", "store-b"))
    gw = FakeGateway()
    _, ctx = request_for(a, BODY)
    run(ctx.cache.complete(gw, BODY, ctx))
    _, ctx = request_for(b, BODY)
    run(ctx.cache.complete(gw, BODY, ctx))
    assert ctx.cache.status == "MISS" and gw.calls == 2 and len(backend) == 2
