"""Budget leases (store/lease.py) on both backends: holds served from memory far from the limit, exact near it,
never past it, and correct across two replicas (two lease holders on one database)."""

from __future__ import annotations

import asyncio
import random

import pytest

from metarouter.store.lease import BudgetLeases

from .test_store_contract import gen

AMOUNT = 100


@pytest.fixture
async def leases(backend):
    """Two lease holders (two 'replicas') on one database, with small leases: a top-up holds 4 more holds and
    needs twice as much left free."""
    opened = []
    for _ in range(2):
        st = BudgetLeases(backend.open_store().store, holds=4, spare=2)
        await st.open()
        opened.append(st)
    try:
        yield opened
    finally:
        for st in opened:
            await st.close()


async def held_in_store(st, key_id: str) -> tuple[int, int]:
    """(usage, reserved) as the database says, every record written."""
    await st.store.flush()
    k = await st.store.get_key(key_id)
    return k.usage_pico, k.reserved_pico


async def test_far_from_the_limit_holds_are_served_from_the_lease(leases):
    a, _ = leases
    _, rec = await a.create_key("k", limit_pico=10**9)
    await a.budget_view(rec.public_id)
    assert await a.reserve(rec.public_id, AMOUNT)  # the first tops the lease up: itself and 4 more
    assert await held_in_store(a, rec.public_id) == (0, 5 * AMOUNT)
    calls = 0
    real = a.store.reserve

    async def counted(*args, **kw):
        nonlocal calls
        calls += 1
        return await real(*args, **kw)

    a.store.reserve = counted
    for _ in range(4):
        assert await a.reserve(rec.public_id, AMOUNT)
    assert calls == 0  # no round trip ...
    lease = a._leases[rec.public_id]
    await lease.refill  # ... but, with less than half a top-up left, one top-up in the background, before it runs dry
    granted = lease.granted
    assert calls == 1 and granted - 5 * AMOUNT >= 4 * AMOUNT  # room for another top-up's worth of holds at least
    assert await held_in_store(a, rec.public_id) == (0, granted)
    await a.release(rec.public_id, AMOUNT)  # a failed attempt: back to the lease, not to the store
    assert await held_in_store(a, rec.public_id) == (0, granted)
    for cost in (30, 60, 100, 0):  # the records settle their holds against the lease's row
        await a.record_generation(gen(rec.public_id, cost), reserved_pico=AMOUNT)
    assert await held_in_store(a, rec.public_id) == (190, granted - 4 * AMOUNT)  # the unused part: the lease's
    await a.flush()  # gives it back
    assert await held_in_store(a, rec.public_id) == (190, 0)
    assert (await a.get_key(rec.public_id)).remaining_pico == 10**9 - 190


async def test_concurrent_holds_never_exceed_the_limit_and_spend_it_exactly(leases):
    a, _ = leases
    limit = 200 * AMOUNT
    _, rec = await a.create_key("k", limit_pico=limit)
    await a.budget_view(rec.public_id)
    results = await asyncio.gather(*(a.reserve(rec.public_id, AMOUNT) for _ in range(500)))
    assert sum(results) == 200  # every picodollar held, none beyond
    assert await held_in_store(a, rec.public_id) == (0, limit)
    assert await a.reserve(rec.public_id, 1) is False
    await asyncio.gather(*(a.release(rec.public_id, AMOUNT) for _ in range(200)))
    await a.flush()
    assert await held_in_store(a, rec.public_id) == (0, 0)


async def test_spending_down_to_the_limit_is_exact(leases):
    """Requests one after another, each charged a random part of its hold, until the key is refused: the key is
    never past its limit, and it is refused only when what is left cannot pay a hold."""
    a, _ = leases
    limit = 50 * AMOUNT
    _, rec = await a.create_key("k", limit_pico=limit)
    rng = random.Random(7)
    spent = 0
    while True:
        view = await a.budget_view(rec.public_id)
        if not await a.reserve(rec.public_id, AMOUNT):
            break
        cost = rng.randint(0, AMOUNT)
        await a.record_generation(gen(rec.public_id, cost), reserved_pico=AMOUNT)
        spent += cost
        usage, reserved = await held_in_store(a, rec.public_id)
        assert usage == spent and usage + reserved <= limit
        assert view is not None
    await a.flush()
    usage, reserved = await held_in_store(a, rec.public_id)
    assert reserved == 0 and usage == spent
    assert limit - AMOUNT < usage <= limit  # refused only when less than one hold was left


async def test_two_replicas_hold_one_limit_and_give_back_what_they_do_not_use(leases):
    a, b = leases
    limit = 300 * AMOUNT
    _, rec = await a.create_key("shared", limit_pico=limit)
    await asyncio.gather(a.budget_view(rec.public_id), b.budget_view(rec.public_id))
    results = await asyncio.gather(*((a if i % 2 else b).reserve(rec.public_id, AMOUNT) for i in range(800)))
    held = sum(results)
    assert held <= 300
    usage, reserved = await held_in_store(a, rec.public_id)
    assert usage == 0 and held * AMOUNT <= reserved <= limit
    # the answers settle (each charged its whole hold) and the leases give back what they do not use: the rest
    # of the budget serves later requests, to the last hold
    for i, ok in enumerate(results):
        if ok:
            (a if i % 2 else b).record_generation(gen(rec.public_id, AMOUNT), reserved_pico=AMOUNT)
    await asyncio.gather(a.flush(), b.flush())
    assert await held_in_store(a, rec.public_id) == (held * AMOUNT, 0)
    more = 0
    while await b.reserve(rec.public_id, AMOUNT):
        more += 1
    assert held + more == 300
    assert await held_in_store(a, rec.public_id) == (held * AMOUNT, limit - held * AMOUNT)


async def test_a_lowered_limit_binds_the_lease_at_once(leases):
    a, _ = leases
    _, rec = await a.create_key("k", limit_pico=10**9)
    await a.budget_view(rec.public_id)
    assert await a.reserve(rec.public_id, AMOUNT)
    await a.update_key(rec.public_id, limit_pico=3 * AMOUNT)  # the lease's unused part goes back
    assert await held_in_store(a, rec.public_id) == (0, AMOUNT)
    await a.budget_view(rec.public_id)
    assert await a.reserve(rec.public_id, AMOUNT) and await a.reserve(rec.public_id, AMOUNT)
    assert await a.reserve(rec.public_id, AMOUNT) is False
    assert await held_in_store(a, rec.public_id) == (0, 3 * AMOUNT)


async def test_a_lease_is_not_served_once_its_instance_lease_may_have_run_out(leases):
    a, _ = leases
    _, rec = await a.create_key("k", limit_pico=10**9)
    await a.budget_view(rec.public_id)
    assert await a.reserve(rec.public_id, AMOUNT)
    assert await held_in_store(a, rec.public_id) == (0, 5 * AMOUNT)
    stop_renewing(a)
    a.store.renewed_at = float("-inf")  # as if it had not been renewed for a whole lease (the database away)
    assert await a.reserve(rec.public_id, AMOUNT)  # from the store, alone; the lease's unused part goes back
    assert await held_in_store(a, rec.public_id) == (0, 2 * AMOUNT)


async def test_a_dead_replicas_lease_is_reclaimed(leases):
    a, b = leases
    _, rec = await a.create_key("k", limit_pico=10**9)
    await a.budget_view(rec.public_id)
    assert await a.reserve(rec.public_id, AMOUNT)
    # replica a is gone without a word (its lease rows stay), as after kill -9: its instance row goes
    await backend_forget(a)
    assert await b.reclaim_reservations() == 1
    assert await held_in_store(b, rec.public_id) == (0, 0)


def stop_renewing(st) -> None:
    """The store of ``st`` renews its instance lease no more."""
    if hasattr(st.store, "_reaper"):  # PostgreSQL
        st.store._reaper.cancel()
    else:
        st.store._next_sweep = float("inf")


async def backend_forget(st) -> None:
    """Delete the instance row of ``st`` (what a lease that ran out comes to) and stop it renewing."""
    raw = st.store
    stop_renewing(st)
    if hasattr(raw, "_reaper"):
        await raw._pool.execute("DELETE FROM instances WHERE holder = $1", raw.holder)
    else:
        await raw._call(lambda conn: conn.execute("DELETE FROM instances WHERE holder = ?", (raw.holder,)))


async def test_an_idle_lease_elsewhere_is_what_a_refused_replica_waits_for(leases):
    """Near the limit, what one replica's lease holds unused is not the other's until it is given back (when idle,
    or on a flush): then the other is served, to the last hold."""
    a, b = leases
    limit = 30 * AMOUNT  # a top-up of 5 holds needs three times that free: a leases while 30 are
    _, rec = await a.create_key("k", limit_pico=limit)
    await a.budget_view(rec.public_id)
    assert await a.reserve(rec.public_id, AMOUNT)  # a's lease: 5 holds, 1 of them in use
    assert await held_in_store(a, rec.public_id) == (0, 5 * AMOUNT)
    for _ in range(25):
        assert await b.reserve(rec.public_id, AMOUNT)  # b, near the limit: one by one
    assert await b.reserve(rec.public_id, AMOUNT) is False  # a holds the last 4 unused
    await a.give_back()  # what a's ticker does once the lease is idle
    assert await held_in_store(a, rec.public_id) == (0, 26 * AMOUNT)
    for _ in range(4):
        assert await b.reserve(rec.public_id, AMOUNT)
    assert await b.reserve(rec.public_id, AMOUNT) is False
    assert await held_in_store(a, rec.public_id) == (0, limit)


async def test_requests_that_find_the_view_stale_share_one_read(leases):
    """When a key's view expires, the requests arriving before the store answers wait for one read of it, not one
    each; one of them cancelled does not cancel the read for the others; a change of the key is read afresh."""
    a, _ = leases
    _, rec = await a.create_key("k", limit_pico=10**9)
    reads = 0
    gate = asyncio.Event()
    real = a.store.get_key

    async def slow(key_id):
        nonlocal reads
        reads += 1
        await gate.wait()
        return await real(key_id)

    a.store.get_key = slow
    waiters = [asyncio.ensure_future(a.budget_view(rec.public_id)) for _ in range(25)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    gate.set()
    views = await asyncio.gather(*waiters[1:])
    assert reads == 1 and all(v.public_id == rec.public_id and v.limit_pico == 10**9 for v in views)
    assert waiters[0].cancelled()
    await a.update_key(rec.public_id, limit_pico=5 * 10**8)
    a._leases[rec.public_id].view_at = float("-inf")  # expired: the next request reads the changed key
    assert (await a.budget_view(rec.public_id)).limit_pico == 5 * 10**8 and reads == 2
