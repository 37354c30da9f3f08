"""Response caching, opt in (OpenRouter's ``X-OpenRouter-Cache``): an identical request of the same key is answered
from the cache for ``ttl`` seconds, at no cost, without calling a model.

- **Asking.** ``X-OpenRouter-Cache: true`` on a request (``false`` turns it off where the config's
  ``response_cache.enabled`` turns it on for every request); ``X-OpenRouter-Cache-TTL: N`` (1–86400 seconds) sets how
  long a new entry lives (default ``response_cache.ttl``, 300). The answer says ``X-OpenRouter-Cache-Status: HIT`` or
  ``MISS`` and ``X-OpenRouter-Cache-TTL``; a hit also ``Age`` (seconds since the entry was stored).
- **Identical** means, hashed together (:func:`cache_key`): the API key (never another key's, let alone another
  account's: the key is named with its store's identity, so deployments that share a Redis never share entries),
  the chat body as validated — canonical JSON, so property order does not matter — streaming or not,
  ``X-OpenRouter-Metadata`` and the session id. The Messages and Responses APIs run as
  chat requests and share the cache through the chat body they translate to.
- **What is stored.** Only answers that completed: a JSON answer, or a stream that reached ``[DONE]`` without an error
  chunk. Never an error, never a cut-off or cancelled stream, never an answer cut at ``length`` by a budget's hold
  (a request without ``max_tokens``: with more budget the answer would be longer).
- **A hit** is a new generation (its own id, and ``created`` now; in a stream every chunk carries them) with the same
  content — a stream replays the same chunks — and every usage figure 0: nothing is charged. It is recorded like any
  other (``GET /generation``, Activity) with cost 0, ``cache_hit: true`` and the reason "served from the response
  cache", before the answer leaves.
- **``auto``.** The router is not asked again on a hit: an identical body (with its ``plugins`` and ``provider``
  settings) gets the answer the model it chose then gave, and the record names that model. Its reason says so. An
  entry is not served once its model has left the catalog or its provider is no longer available; a change of the
  router's defaults shows once entries expire.
- **Where.** In this process (an LRU bounded by ``max_entries`` and ``max_bytes``), or in Redis when ``redis_url`` is
  set (shared by every worker and replica; each entry expires by Redis' own TTL). An entry over ``max_entry_bytes``
  is not stored. Concurrent identical requests are not coalesced: each miss calls the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncIterator

import orjson

from ..errors import GatewayError
from ..providers.sse import SSE_DONE, sse_data
from ..store import new_generation_id

log = logging.getLogger("metarouter.cache")

MAX_TTL = 86400
SCOPE_KEY = "metarouter.response_cache"  # where a request's CacheRequest waits for the response headers
REDIS_PREFIX = "metarouter:response-cache:v1:"
_ON = ("true", "1", "yes", "enabled", "on")
_OFF = ("false", "0", "no", "disabled", "off")


@dataclass
class CacheSettings:
    enabled: bool = False  # cache every request (unless it says X-OpenRouter-Cache: false)
    ttl: int = 300
    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_entry_bytes: int = 4 * 1024 * 1024

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> CacheSettings:
        """``response_cache:`` of the config file; a bad value is a clear error at start."""
        cfg = raw.get("response_cache") or {}
        if not isinstance(cfg, dict):
            raise ValueError("response_cache must be a mapping (enabled, ttl, max_entries, max_bytes, max_entry_bytes)")
        unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"response_cache: unknown setting(s) {', '.join(unknown)}")
        s = cls(**cfg)
        if not isinstance(s.enabled, bool):
            raise ValueError("response_cache.enabled must be true or false")
        for name in ("ttl", "max_entries", "max_bytes", "max_entry_bytes"):
            v = getattr(s, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"response_cache.{name} must be a positive integer")
        if s.ttl > MAX_TTL:
            raise ValueError(f"response_cache.ttl must be at most {MAX_TTL} seconds")
        return s


def cache_key(key_id: str, body: dict[str, Any], *, stream: bool, metadata: bool, session_id: str | None) -> str:
    """The hash two requests share exactly when one may be answered with the other's answer."""
    canonical = orjson.dumps({"v": 1, "key": key_id, "stream": stream, "metadata": metadata, "session": session_id,
                              "body": body}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


class MemoryBackend:
    """Entries in this process: least recently used first out, within ``max_entries`` and ``max_bytes``."""

    def __init__(self, max_entries: int, max_bytes: int, clock=time.monotonic):
        self.max_entries, self.max_bytes, self.clock = max_entries, max_bytes, clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key → (expiry, entry)
        self.bytes = 0

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self.clock():
            self._pop(key)
            return None
        self._items.move_to_end(key)
        return item[1]

    async def put(self, key: str, value: bytes, ttl: int) -> None:
        if key in self._items:
            self._pop(key)
        self._items[key] = (self.clock() + ttl, value)
        self.bytes += len(value)
        while self._items and (len(self._items) > self.max_entries or self.bytes > self.max_bytes):
            self._pop(next(iter(self._items)))

    def _pop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(value)

    def __len__(self) -> int:
        return len(self._items)

    async def close(self) -> None:
        self._items.clear()
        self.bytes = 0


class RedisBackend:
    """Entries in Redis, shared by every worker and replica; each expires by Redis' TTL."""

    def __init__(self, client: Any):
        self.client = client

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(REDIS_PREFIX + key)

    async def put(self, key: str, value: bytes, ttl: int) -> None:
        await self.client.set(REDIS_PREFIX + key, value, ex=ttl)

    async def close(self) -> None:
        await self.client.aclose()


class ResponseCache:
    def __init__(self, settings: CacheSettings, backend: MemoryBackend | RedisBackend, account: str = ""):
        self.settings, self.backend = settings, backend
        self.account = account  # the store's identity: deployments sharing one Redis never share entries
        self._warned = 0.0
        self.hits = self.misses = 0  # for /metrics

    async def request_hook(self, request, key, body: dict[str, Any], ctx) -> None:
        """Run where every chat request is admitted (chat, Messages, Responses): decide whether this one uses the
        cache; if it does, ``ctx.cache`` carries it to the pipeline and the request's scope to the headers."""
        h = request.headers
        raw = h.get("x-openrouter-cache")
        if raw is None and not self.settings.enabled:
            return  # the common case, at the cost of one header lookup
        asked = (raw or "").strip().lower()
        if asked and asked not in _ON + _OFF:
            raise GatewayError(400, "X-OpenRouter-Cache must be true or false")
        if not (asked in _ON or (self.settings.enabled and asked not in _OFF)):
            return
        ttl = self.settings.ttl
        raw_ttl = h.get("x-openrouter-cache-ttl")
        if raw_ttl is not None:
            digits = raw_ttl.strip()  # plain ASCII digits: not "1_0", "+5", "١٢" or 5,000 digits
            ttl = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 6 else 0
            if not 1 <= ttl <= MAX_TTL:
                raise GatewayError(400, f"X-OpenRouter-Cache-TTL must be a whole number of seconds, 1 to {MAX_TTL}")
        stream = bool(body.get("stream"))
        ctx.cache = request.scope[SCOPE_KEY] = CacheRequest(
            self, cache_key(f"{self.account}/{key.public_id}", body, stream=stream, metadata=ctx.want_metadata,
                            session_id=ctx.session_id), ttl)

    async def _get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.backend.get(key)
            return orjson.loads(raw) if raw is not None else None
        except Exception as exc:  # a cache that is away is a miss, never a failed request
            self._warn("read", exc)
            return None

    async def _put(self, key: str, entry: dict[str, Any], ttl: int) -> None:
        raw = orjson.dumps(entry)
        if len(raw) > self.settings.max_entry_bytes:
            return
        try:
            await self.backend.put(key, raw, ttl)
        except Exception as exc:
            self._warn("write", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.warning("response cache %s failed (%s: %s): answering without it", what, type(exc).__name__, exc)

    async def close(self) -> None:
        await self.backend.close()


class CacheRequest:
    """One request's use of the cache: looked up, answered from it or called and stored. ``status`` (HIT, MISS)
    and ``age`` become the response's headers (:func:`with_cache_headers`)."""

    def __init__(self, cache: ResponseCache, key: str, ttl: int):
        self.cache, self.key, self.ttl = cache, key, ttl
        self.status: str | None = None
        self.age: int | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.status is None:
            return []
        out = [(b"x-openrouter-cache-status", self.status.encode()), (b"x-openrouter-cache-ttl", str(self.ttl).encode())]
        if self.age is not None:
            out.append((b"age", str(self.age).encode()))
        return out

    async def _hit(self, gateway) -> dict[str, Any] | None:
        entry = await self.cache._get(self.key)
        if entry is None:
            return None
        served = gateway.servable(entry["model"], entry.get("served_by"))
        if served is None:
            return None  # its model is gone, or no provider of it is available: ask again
        self.status, self.age = "HIT", max(0, int(time.time() - entry["stored_at"]))
        self.cache.hits += 1
        entry["provider"] = served  # the record names the endpoint whose answer it replays
        return entry

    async def complete(self, gateway, body: dict[str, Any], ctx) -> dict[str, Any]:
        """``Gateway.complete`` through the cache."""
        started = time.perf_counter()
        entry = await self._hit(gateway)
        if entry is not None:
            response = _fresh(entry["response"], new_generation_id(), int(time.time()))
            choice0 = (response.get("choices") or [{}])[0]
            record = _hit_record(body, ctx, entry, response["id"], started, False, choice0.get("finish_reason"),
                                 choice0.get("native_finish_reason"))
            await gateway.durable(gateway.record(record, 0), record)  # written before the answer leaves
            return response
        self.status = "MISS"
        self.cache.misses += 1
        response = await gateway.complete(body, dataclasses.replace(ctx, cache=None))
        choice0 = (response.get("choices") or [{}])[0]
        if _complete_answer(body, choice0.get("finish_reason")):
            await self.cache._put(self.key, _entry(response["model"], response["id"], response.get("provider"),
                                                   response=response), self.ttl)
        return response

    async def stream(self, gateway, body: dict[str, Any], ctx) -> AsyncIterator[bytes]:
        """``Gateway.stream`` through the cache: a hit replays the stored chunks; a miss is captured as it goes."""
        started = time.perf_counter()
        entry = await self._hit(gateway)
        if entry is not None:
            return self._replay(gateway, body, ctx, entry, started)
        self.status = "MISS"
        self.cache.misses += 1
        return self._capture(await gateway.stream(body, dataclasses.replace(ctx, cache=None)), body)

    async def _replay(self, gateway, body, ctx, entry, started) -> AsyncIterator[bytes]:
        gen_id, created = new_generation_id(), int(time.time())
        chunks = [_fresh(c, gen_id, created) for c in entry["chunks"]]
        ends = [c for chunk in chunks for c in chunk.get("choices") or () if c.get("finish_reason")]
        finish = (ends[0].get("finish_reason"), ends[0].get("native_finish_reason")) if ends else (None, None)
        *body_chunks, last = chunks
        recorded = False
        try:
            if body_chunks:
                yield b"".join(sse_data(c) for c in body_chunks)
            record = _hit_record(body, ctx, entry, gen_id, started, True, *finish)
            recorded = True
            await gateway.durable(gateway.record(record, 0), record)
            yield sse_data(last) + SSE_DONE  # as the pipeline: the last chunk leaves once the record is written
        finally:
            if not recorded:  # the client left during the replay: what it was sent is recorded all the same
                gateway.record(_hit_record(body, ctx, entry, gen_id, started, True, *finish, status="cancelled"), 0)

    async def _capture(self, frames: AsyncIterator[bytes], body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The frames as they go, kept; stored once the last one (``[DONE]``) has come, before it is passed on
        (the client may close the stream as soon as it has it)."""
        chunks: list[dict[str, Any]] = []
        failed = False
        finish = None
        try:
            async for frame in frames:
                done = False
                for event in frame.split(b"\n\n"):
                    if not event.startswith(b"data: "):
                        continue  # the keep-alive comments are not part of the answer
                    data = event[6:]
                    if data == b"[DONE]":
                        done = True
                        continue
                    chunk = orjson.loads(data)
                    chunks.append(chunk)
                    failed = failed or "error" in chunk
                    for c in chunk.get("choices") or ():
                        finish = c.get("finish_reason") or finish
                        failed = failed or c.get("finish_reason") == "error"
                if done and chunks and not failed and _complete_answer(body, finish):
                    await self.cache._put(self.key, _entry(chunks[0].get("model"), chunks[0].get("id"),
                                                           chunks[0].get("provider"), chunks=chunks), self.ttl)
                yield frame
        finally:
            await frames.aclose()  # type: ignore[attr-defined]


def _complete_answer(body: dict[str, Any], finish_reason: str | None) -> bool:
    """Whether an answer may be stored: not an error, and not cut at ``length`` by a hold the request did not ask
    for (without ``max_tokens`` the length was the budget's)."""
    if finish_reason == "error":
        return False
    return finish_reason != "length" or body.get("max_tokens") is not None or \
        body.get("max_completion_tokens") is not None


def _entry(model: str | None, gen_id: str | None, served_by: str | None, **content: Any) -> dict[str, Any]:
    return {"model": model, "original_id": gen_id, "served_by": served_by, "stored_at": time.time(), **content}


def _fresh(obj: dict[str, Any], gen_id: str, created: int) -> dict[str, Any]:
    """A stored response or chunk as a new generation's: its id and time, every usage figure 0."""
    out = {**obj, "id": gen_id, "created": created}
    if isinstance(out.get("usage"), dict):
        out["usage"] = _zeroed(out["usage"])
    return out


def _zeroed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _zeroed(v) for k, v in value.items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0
    return value


def _hit_record(body, ctx, entry, gen_id: str, started: float, streamed: bool, finish: str | None,
                native: str | None, status: str = "ok") -> dict[str, Any]:
    """The record of a hit, a generation of its own: cost 0, no tokens billed, flagged as the cache's."""
    latency = round((time.perf_counter() - started) * 1000, 2)
    requested = body.get("model") or (body.get("models") or [None])[0]
    return {
        "id": gen_id, "created_at": time.time(), "key_id": ctx.key.public_id if ctx.key else None,
        "app_referer": ctx.app_referer, "app_title": ctx.app_title, "requested_model": requested, "router": None,
        "routing": {"reason": f"served from the response cache: the answer of {entry['original_id']}, "
                              f"{entry['model']} was not called again",
                    "cache": {"hit": True, "original_id": entry["original_id"],
                              "age_s": max(0, round(time.time() - entry["stored_at"], 3))}},
        "streamed": streamed, "session_id": ctx.session_id, "model": entry["model"], "provider": entry["provider"],
        "status": status, "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "cached_tokens": 0,
        "usage_estimated": False, "cost_pico": 0, "latency_ms": latency, "ttft_ms": latency,
        "finish_reason": finish, "native_finish_reason": native, "upstream_id": None, "user_tag": body.get("user"),
        "attempts": [],
    }


def is_cache_hit(record: dict[str, Any]) -> bool:
    """Whether a stored generation was answered from the response cache."""
    return bool(((record.get("routing") or {}).get("cache") or {}).get("hit"))


def make_cache(settings) -> ResponseCache:
    """The cache the settings ask for: Redis with ``redis_url``, else in this process."""
    cs = CacheSettings.from_config(settings.raw)
    account = hashlib.sha256(settings.db_url.encode()).hexdigest()[:16]  # the keys' store: the account
    if settings.redis_url:
        from ..ratelimit import redis_client

        return ResponseCache(cs, RedisBackend(redis_client(settings.redis_url)), account)
    return ResponseCache(cs, MemoryBackend(cs.max_entries, cs.max_bytes), account)


def with_cache_headers(app, every_request: bool):
    """The ASGI app with the cache's response headers added to the answers of requests that used it (the handlers
    need not know: the request hook left the request's CacheRequest in its scope). Unless the config caches
    ``every_request``, only requests that carry ``X-OpenRouter-Cache`` are looked at."""

    async def asgi(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not (
                every_request or any(k == b"x-openrouter-cache" for k, _ in scope["headers"])):
            return await app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                creq = scope.get(SCOPE_KEY)
                if creq is not None and creq.status is not None:
                    message = {**message, "headers": [*message.get("headers", ()), *creq.headers()]}
            await send(message)

        await app(scope, receive, send_with_headers)

    asgi.state = getattr(app, "state", None)
    return asgi
