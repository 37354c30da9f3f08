"""Per-key rate limits: requests per minute (``rpm``) and tokens per minute (``tpm``).

Algorithm (both backends): a **sliding window of 60 one-second buckets**. Each key has two counters per epoch
second, requests and tokens; a check sums the buckets of the last 60 seconds (the current one included), so the
limit applies to any 60-second span at one-second resolution, with no burst at a fixed minute boundary. A
request is admitted when fewer than ``rpm`` requests *and* fewer than ``tpm`` tokens were counted in the window,
and the admitted request is counted in the same atomic step — the check-and-count is one Lua script in Redis, so
the limit is the same whether one worker, four workers or several replicas serve the key.

Tokens are known only after an answer: the gateway's ``"generation"`` observer adds each request's prompt and
completion tokens, and a key that has used its ``tpm`` is refused until enough of the window has passed. (So the
request that crosses the line completes; the following ones wait.)

A refusal is HTTP 429 with ``Retry-After`` (seconds until the window admits again) and ``X-RateLimit-Limit``,
``X-RateLimit-Remaining``, ``X-RateLimit-Reset`` (epoch milliseconds, as OpenRouter sends).

``MemoryRateLimiter`` is for one process; ``RedisRateLimiter`` (chosen when ``redis_url`` is set) for several.
If Redis is unreachable, or does not answer within :data:`REDIS_TIMEOUT`, requests are admitted (the gateway stays
up) and a warning is logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import GatewayError, require_extra
from .logutil import ThrottledWarning

log = logging.getLogger("metarouter.ratelimit")

WINDOW = 60  # seconds
REDIS_TIMEOUT = 0.5  # seconds a Redis call may take before the gateway goes on without it


def redis_client(url: str) -> Any:
    """A Redis client for the gateway's hot path: a Redis that is away or stalled costs a request at most
    ``REDIS_TIMEOUT`` (redis-py's defaults, a 5 s timeout and 10 retries, would hold every request for seconds);
    one retry on a broken connection, as after a Redis restart."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return aioredis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT,
                             retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int | None = None  # the limit that decided (the rpm, or the tpm when tokens refused)
    remaining: int | None = None  # requests left in the window after this one (rpm), when rpm is set
    retry_after: float = 0.0  # seconds until the window admits again (refusals only)
    kind: str = "requests"  # "requests" or "tokens"

    def headers(self, now: float | None = None) -> dict[str, str]:
        now = time.time() if now is None else now
        h: dict[str, str] = {}
        if self.limit is not None:
            h["X-RateLimit-Limit"] = str(self.limit)
            h["X-RateLimit-Remaining"] = str(max(0, self.remaining or 0))
            h["X-RateLimit-Reset"] = str(int((now + self.retry_after) * 1000))
        if not self.allowed:
            h["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return h


class RateLimiter(Protocol):
    async def acquire(self, key_id: str, rpm: int | None, tpm: int | None) -> Decision:
        """Check both limits and, if admitted, count one request. Atomic per key."""
        ...

    async def add_tokens(self, key_id: str, tokens: int) -> None: ...

    async def close(self) -> None: ...


def _retry_after(buckets: list[tuple[int, int]], used: int, limit: int, now: float) -> float:
    """Seconds until the oldest buckets have left the window enough that ``used`` drops below ``limit``."""
    for sec, n in sorted(buckets):
        used -= n
        if used < limit:
            return max(0.0, sec + WINDOW - now)
    return float(WINDOW)


class MemoryRateLimiter:
    """One process: per-key dicts of second → count, under the event loop (no awaits inside a check)."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._req: dict[str, dict[int, int]] = defaultdict(dict)
        self._tok: dict[str, dict[int, int]] = defaultdict(dict)

    @staticmethod
    def _window(buckets: dict[int, int], now: float) -> int:
        start = int(now) - WINDOW + 1
        for sec in [s for s in buckets if s < start]:
            del buckets[sec]
        return sum(buckets.values())

    async def acquire(self, key_id: str, rpm: int | None, tpm: int | None) -> Decision:
        now = self.clock()
        sec = int(now)
        if tpm is not None:
            toks = self._tok[key_id]
            used = self._window(toks, now)
            if used >= tpm:
                return Decision(False, tpm, 0, _retry_after(list(toks.items()), used, tpm, now), "tokens")
        if rpm is None:
            return Decision(True)
        reqs = self._req[key_id]
        count = self._window(reqs, now)
        if count >= rpm:
            return Decision(False, rpm, 0, _retry_after(list(reqs.items()), count, rpm, now))
        reqs[sec] = reqs.get(sec, 0) + 1
        return Decision(True, rpm, rpm - count - 1)

    async def add_tokens(self, key_id: str, tokens: int) -> None:
        if tokens > 0:
            sec = int(self.clock())
            toks = self._tok[key_id]
            toks[sec] = toks.get(sec, 0) + int(tokens)

    async def close(self) -> None:
        pass


# KEYS[1]: the key's request buckets (hash second → count), KEYS[2]: its token buckets.
# ARGV: rpm (or -1), tpm (or -1), window. Time is Redis's own, so replicas agree on it.
# Returns {allowed, kind (1 requests, 2 tokens), limit, remaining, retry_after_ms}.
_ACQUIRE = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sec = tonumber(t[1])
local rpm, tpm, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = sec - window + 1

local function load(key)
  local flat = redis.call('HGETALL', key)
  local buckets, total, stale = {}, 0, {}
  for i = 1, #flat, 2 do
    local s, n = tonumber(flat[i]), tonumber(flat[i + 1])
    if s < start then
      stale[#stale + 1] = flat[i]
    else
      buckets[#buckets + 1] = {s, n}
      total = total + n
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return buckets, total
end

local function retry_ms(buckets, used, limit)
  for _, b in ipairs(buckets) do
    used = used - b[2]
    if used < limit then
      return math.max(0, (b[1] + window) * 1000 - now_ms)
    end
  end
  return window * 1000
end

if tpm >= 0 then
  local buckets, used = load(KEYS[2])
  if used >= tpm then
    return {0, 2, tpm, 0, retry_ms(buckets, used, tpm)}
  end
end
if rpm < 0 then
  return {1, 1, -1, -1, 0}
end
local buckets, count = load(KEYS[1])
if count >= rpm then
  return {0, 1, rpm, 0, retry_ms(buckets, count, rpm)}
end
redis.call('HINCRBY', KEYS[1], sec, 1)
redis.call('EXPIRE', KEYS[1], window + 1)
return {1, 1, rpm, rpm - count - 1, 0}
"""

_ADD_TOKENS = """
local sec = redis.call('TIME')[1]
redis.call('HINCRBY', KEYS[1], sec, tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) + 1)
return 1
"""


class RedisRateLimiter:
    """Several processes or replicas: the same algorithm as one Lua script per check, on Redis's clock."""

    def __init__(self, url_or_client: Any, prefix: str = "metarouter:rl"):
        if isinstance(url_or_client, str):
            self.redis = redis_client(url_or_client)
            self._own = True
        else:
            self.redis, self._own = url_or_client, False
        self.prefix = prefix
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._add = self.redis.register_script(_ADD_TOKENS)

    def _keys(self, key_id: str) -> list[str]:
        # a hash tag keeps both of a key's hashes on one Redis Cluster slot
        return [f"{self.prefix}:{{{key_id}}}:req", f"{self.prefix}:{{{key_id}}}:tok"]

    async def acquire(self, key_id: str, rpm: int | None, tpm: int | None) -> Decision:
        res = await self._acquire(keys=self._keys(key_id),
                                  args=[-1 if rpm is None else rpm, -1 if tpm is None else tpm, WINDOW])
        allowed, kind, limit, remaining, retry_ms = (int(x) for x in res)
        if limit < 0:
            return Decision(True)
        return Decision(bool(allowed), limit, remaining, retry_ms / 1000.0, "tokens" if kind == 2 else "requests")

    async def add_tokens(self, key_id: str, tokens: int) -> None:
        if tokens > 0:
            await self._add(keys=self._keys(key_id)[1:], args=[int(tokens), WINDOW])

    async def close(self) -> None:
        if self._own:
            await self.redis.aclose()


def make_limiter(redis_url: str | None) -> RateLimiter:
    if redis_url:
        require_extra("redis", "redis", "A redis_url")
    return RedisRateLimiter(redis_url) if redis_url else MemoryRateLimiter()


class RateLimitGuard:
    """The app's side: a request hook that refuses with 429, and a gateway observer that counts tokens."""

    def __init__(self, limiter: RateLimiter):
        self.limiter = limiter
        self._tpm_keys: set[str] = set()  # keys seen with a tpm: only their tokens are counted
        self._tasks: set[asyncio.Task] = set()
        self._warn = ThrottledWarning(log, "rate limiter unavailable (%s): admitting requests without limits")

    async def request_hook(self, request: Any, key: Any, body: Any, ctx: Any) -> None:
        rpm, tpm = getattr(key, "rpm", None), getattr(key, "tpm", None)
        if not rpm and not tpm:
            return
        if tpm:
            self._tpm_keys.add(key.public_id)
        try:
            d = await self.limiter.acquire(key.public_id, rpm or None, tpm or None)
        except Exception as exc:  # noqa: BLE001 - fail open: a rate-limit store outage must not stop the gateway
            self._warn(exc)
            return
        if not d.allowed:
            what = "requests" if d.kind == "requests" else "tokens"
            raise GatewayError(
                429,
                f"Rate limit exceeded: this key allows {d.limit} {what} per minute. "
                f"Retry after {max(1, math.ceil(d.retry_after))} s.",
                metadata={"limit": d.limit, "window": f"{WINDOW}s", "kind": what},
                retryable=False,
                headers=d.headers(),
            )

    def observer(self, event: str, data: dict[str, Any]) -> None:
        if event != "generation":
            return
        key_id = data.get("key_id")
        if not key_id or key_id not in self._tpm_keys:
            return
        tokens = int(data.get("prompt_tokens") or 0) + int(data.get("completion_tokens") or 0)
        if tokens <= 0:
            return
        task = asyncio.get_running_loop().create_task(self._add(key_id, tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, key_id: str, tokens: int) -> None:
        try:
            await self.limiter.add_tokens(key_id, tokens)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)


    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.limiter.close()
