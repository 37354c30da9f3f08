"""PostgreSQL-only behaviour: several replicas on one database, abandoned holds, a lost connection."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from metarouter.store.postgres import MIGRATIONS, PostgresStore

from .test_store_contract import gen


@pytest.fixture
async def replicas(pg_schema):
    """Two stores (two 'replicas', each with its own pool) on one fresh schema."""
    url, _ = pg_schema
    stores = [PostgresStore(url), PostgresStore(url)]
    await asyncio.gather(*(s.open() for s in stores))  # migrating concurrently is safe
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_open_migrates_once(replicas, pg_schema):
    conn = await asyncpg.connect(pg_schema[0])
    try:
        assert [r[0] for r in await conn.fetch("SELECT version FROM schema_version")] == list(
            range(1, len(MIGRATIONS) + 1))
    finally:
        await conn.close()


async def test_reserves_from_two_replicas_hold_the_limit(replicas):
    a, b = replicas
    _, rec = await a.create_key("shared", limit_pico=1000)
    results = await asyncio.gather(*((a if i % 2 else b).reserve(rec.public_id, 100) for i in range(60)))
    assert sum(results) == 10
    assert (await b.get_key(rec.public_id)).reserved_pico == 1000


async def test_records_from_two_replicas_charge_once(replicas):
    a, b = replicas
    _, rec = await a.create_key("shared", limit_pico=10**9)
    records = [gen(rec.public_id, 10) for _ in range(200)]
    for r in records:  # every record written by both replicas (e.g. a retried write): charged once
        a.record_generation(r)
        b.record_generation(dict(r))
    await asyncio.gather(a.flush(), b.flush())
    k = await a.get_key(rec.public_id)
    assert k.usage_pico == 2000
    assert (await a.get_credits())[1] == 2000
    assert len(await b.list_generations(limit=1000)) == 200


async def test_holds_of_a_replica_whose_lease_ran_out_are_given_back(replicas, pg_schema):
    a, b = replicas
    await a.add_credits(1000)
    _, rec = await a.create_key("k", limit_pico=1000)
    assert await a.reserve(rec.public_id, 700)
    assert await b.reserve(rec.public_id, 300)
    assert await b.reserve(rec.public_id, 1) is False
    # replica a hangs (it stops renewing its lease, e.g. on another host that lost the network) until it runs out
    a._reaper.cancel()
    conn = await asyncpg.connect(pg_schema[0])
    try:
        await conn.execute("UPDATE instances SET lease_until = now() - interval '1 second' WHERE holder = $1",
                           a.holder)
    finally:
        await conn.close()
    assert await b.reclaim_reservations() == 1
    assert await b.reclaim_reservations() == 0
    k = await b.get_key(rec.public_id)
    assert k.reserved_pico == 300
    assert await b.reserve(rec.public_id, 700) is True
    # a late release of the reclaimed hold gives back nothing more
    await a.release(rec.public_id, 700)
    a.record_generation(gen(rec.public_id, 50), reserved_pico=700)
    await a.flush()
    k = await b.get_key(rec.public_id)
    assert (k.reserved_pico, k.usage_pico) == (1000, 50)


async def test_live_holds_are_not_reclaimed(replicas):
    a, b = replicas
    _, rec = await a.create_key("k", limit_pico=1000)
    assert await a.reserve(rec.public_id, 400)
    assert await a.reclaim_reservations() == 0
    assert await b.reclaim_reservations() == 0
    assert (await a.get_key(rec.public_id)).reserved_pico == 400


async def test_writes_survive_a_lost_connection(pg_schema):
    url, schema = pg_schema
    a = PostgresStore(f"{url}&application_name={schema}")
    await a.open()
    try:
        _, rec = await a.create_key("k")
        for _ in range(50):
            a.record_generation(gen(rec.public_id, 1))
        await a.flush()
        conn = await asyncpg.connect(url)
        try:  # the database drops every connection of this store's pool
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", schema)
            assert killed >= 1
        finally:
            await conn.close()
        for _ in range(50):
            a.record_generation(gen(rec.public_id, 1))
        await asyncio.wait_for(a.flush(), 30)
        assert (await a.get_key(rec.public_id)).usage_pico == 100
    finally:
        await a.close()


async def test_a_connection_given_back_mid_transaction_is_rolled_back(pg_schema):
    """The pool's lean reset (no full asyncpg reset per release): an unfinished transaction does not survive the
    connection's return to the pool, and nothing it wrote is kept."""
    url, _ = pg_schema
    a = PostgresStore(url, min_size=1, max_size=1)  # one connection: the next acquire gets the same one back
    await a.open()
    try:
        _, rec = await a.create_key("k")
        conn = await a._pool.acquire()
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE keys SET usage_pico = 12345 WHERE public_id = $1", rec.public_id)
        await a._pool.release(conn)  # given back without commit or rollback
        async with a._pool.acquire() as c2:
            assert not c2.is_in_transaction()
        assert (await a.get_key(rec.public_id)).usage_pico == 0
    finally:
        await a.close()
