"""A small read-through cache for values that many concurrent requests need and that may be a moment stale:
API key records and the account's credit.

- A miss is loaded once, however many requests ask at the same time (they share one load).
- Once an entry is older than ``ttl`` it is still served while one background load replaces it, so requests never
  queue on the store for a value they had a moment ago (with several workers on one SQLite file, a store call can
  wait behind another process's write lock; with PostgreSQL it is a round trip).
- An entry older than ``max_stale`` (a refresh that keeps failing or hanging) is not served: the request waits for
  a load, and a failing load raises to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

V = TypeVar("V")
log = logging.getLogger("metarouter.cache")


class SWRCache(Generic[V]):
    def __init__(self, load: Callable[[Hashable], Awaitable[V]], ttl: float, max_stale: float | None = None,
                 max_entries: int = 10_000):
        self._load = load
        self.ttl = ttl
        self.max_stale = max_stale if max_stale is not None else max(30.0, 6 * ttl)
        self.max_entries = max_entries
        self._values: dict[Hashable, tuple[float, V]] = {}
        self._loading: dict[Hashable, asyncio.Future] = {}

    async def get(self, key: Hashable) -> V:
        hit = self._values.get(key)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age <= self.ttl:
                return hit[1]
            if age <= self.max_stale:
                if key not in self._loading:
                    self._start(key)
                return hit[1]
        fut = self._loading.get(key) or self._start(key)
        return await asyncio.shield(fut)

    def _start(self, key: Hashable) -> asyncio.Future:
        task = asyncio.ensure_future(self._fetch(key))
        task.add_done_callback(_retrieve)
        self._loading[key] = task
        return task

    async def _fetch(self, key: Hashable) -> V:
        me = asyncio.current_task()
        started = time.monotonic()
        try:
            value = await self._load(key)
        except Exception:
            if key in self._values:  # a background refresh: the stale value keeps serving until max_stale
                log.warning("refreshing a cached %r failed; serving the previous value", key, exc_info=True)
            raise
        finally:
            current = self._loading.get(key) is me
            if current:
                del self._loading[key]
        if current:  # not invalidated while loading (else the value read may predate the change)
            if len(self._values) >= self.max_entries:
                self._values.clear()
            self._values[key] = (started, value)  # its age counts from before the read began
        return value

    def invalidate(self, key: Hashable) -> None:
        """Forget ``key``: the next ``get`` loads it afresh (a load already running is not kept)."""
        self._values.pop(key, None)
        self._loading.pop(key, None)

    def put(self, key: Hashable, value: Any) -> None:
        self._values[key] = (time.monotonic(), value)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a failed background refresh was logged in _fetch; don't warn again at collection
