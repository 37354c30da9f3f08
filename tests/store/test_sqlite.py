"""SQLite-only behaviour: the Activity page's reads do not queue behind the writer thread."""

from __future__ import annotations

import asyncio
import threading

from metarouter.store.base import ActivityQuery
from metarouter.store.sqlite import SQLiteStore

from .test_store_contract import gen


async def test_activity_reads_do_not_wait_for_the_writer_thread(tmp_path):
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    try:
        _, rec = await store.create_key("k")
        store.record_generation(gen(rec.public_id, 7))
        await store.flush()
        release = threading.Event()
        busy = asyncio.ensure_future(store._call(lambda conn: release.wait(30)))  # the writer thread is taken
        try:
            # (before the reader connection, these queued behind the writer and timed out here)
            (totals,) = await asyncio.wait_for(store.activity_breakdown(ActivityQuery()), 10)
            page = await asyncio.wait_for(store.search_generations(ActivityQuery(key_id=rec.public_id)), 10)
        finally:
            release.set()
            await busy
        assert totals["requests"] == 1 and totals["cost_pico"] == 7 and [g["cost_pico"] for g in page] == [7]
    finally:
        await store.close()
