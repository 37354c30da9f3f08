"""The stale-while-revalidate cache behind key look-ups and the account's credit."""

from __future__ import annotations

import asyncio

import pytest

from metarouter.swr import SWRCache


class Loader:
    def __init__(self):
        self.calls = 0
        self.value = "v1"
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def __call__(self, key):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("store down")
        return f"{key}:{self.value}"


async def test_concurrent_misses_share_one_load():
    load = Loader()
    load.gate = asyncio.Event()
    c = SWRCache(load, ttl=10)
    waiting = [asyncio.ensure_future(c.get("k")) for _ in range(20)]
    await asyncio.sleep(0)
    load.gate.set()
    assert set(await asyncio.gather(*waiting)) == {"k:v1"} and load.calls == 1


async def test_stale_value_served_while_one_refresh_runs():
    load = Loader()
    c = SWRCache(load, ttl=0.05, max_stale=10)
    assert await c.get("k") == "k:v1"
    await asyncio.sleep(0.08)
    load.value, load.gate = "v2", asyncio.Event()
    # expired: every caller gets the old value at once, and only one refresh is started
    assert [await c.get("k") for _ in range(5)] == ["k:v1"] * 5
    await asyncio.sleep(0)
    assert load.calls == 2
    load.gate.set()
    await asyncio.sleep(0.01)
    assert await c.get("k") == "k:v2" and load.calls == 2


async def test_failing_refresh_keeps_serving_until_max_stale_then_raises():
    load = Loader()
    c = SWRCache(load, ttl=0.02, max_stale=0.2)
    await c.get("k")
    load.fail = True
    await asyncio.sleep(0.03)
    assert await c.get("k") == "k:v1"  # refresh fails in the background
    await asyncio.sleep(0.01)
    assert await c.get("k") == "k:v1"
    await asyncio.sleep(0.25)
    with pytest.raises(RuntimeError, match="store down"):
        await c.get("k")


async def test_invalidate_drops_the_value_and_a_load_in_flight():
    load = Loader()
    c = SWRCache(load, ttl=10)
    await c.get("k")
    load.gate = asyncio.Event()
    c.invalidate("k")
    first = asyncio.ensure_future(c.get("k"))  # a load that began before the change below
    await asyncio.sleep(0)
    c.invalidate("k")  # e.g. the key was disabled meanwhile
    load.gate.set()
    await first
    load.value = "v2"
    assert await c.get("k") == "k:v2"  # the older read was not kept
