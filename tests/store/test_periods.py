"""Budgets that reset and keys that expire, on both backends: the period's spend rolls over inside the transaction
that holds or charges (a clock is injected: time is moved, never waited for), exactly at UTC midnight, Monday and
the 1st; holds that straddle a boundary settle into the period they land in; never past the limit within a
period, with concurrent holds and two replicas; budget leases sized from the period's budget."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from metarouter.store.base import iso_utc, next_period_start, parse_expires_at
from metarouter.store.lease import BudgetLeases

from .test_store_contract import gen


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()


# Tuesday 1 December 2026, one second before midnight
BEFORE_MIDNIGHT = utc(2026, 12, 1, 23, 59, 59)
MIDNIGHT = utc(2026, 12, 2)


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(store) -> Clock:
    c = Clock(BEFORE_MIDNIGHT)
    store.clock = c
    return c


async def settle(store, key_id: str, cost: int, reserved: int) -> None:
    await store.record_generation(gen(key_id, cost), reserved_pico=reserved)


async def state(store, key_id: str) -> tuple[int, int, int]:
    """(lifetime usage, this period's usage, reserved) as the store says now."""
    await store.flush()
    k = await store.get_key(key_id)
    return k.usage_pico, k.period_usage_pico, k.reserved_pico


# --- periods -----------------------------------------------------------------------------------------------------
def test_period_boundaries_are_utc_midnight_monday_and_the_first():
    t = utc(2026, 12, 6, 15, 30)  # a Sunday
    assert next_period_start("daily", t) == utc(2026, 12, 7)
    assert next_period_start("weekly", t) == utc(2026, 12, 7)  # Monday
    assert next_period_start("weekly", utc(2026, 12, 7)) == utc(2026, 12, 14)
    assert next_period_start("monthly", t) == utc(2027, 1, 1)
    assert next_period_start("monthly", utc(2027, 1, 31, 23, 59, 59)) == utc(2027, 2, 1)


def test_expires_at_is_utc_only():
    assert parse_expires_at("2027-01-31T23:59:59Z") == utc(2027, 1, 31, 23, 59, 59)
    assert parse_expires_at("2027-01-31T23:59:59.5+00:00") == utc(2027, 1, 31, 23, 59, 59) + 0.5
    assert parse_expires_at(None) is None
    for bad in ("2027-01-31T23:59:59+01:00", "2027-01-31T23:59:59", "2027-01-31", "tomorrow", 1790000000,
                "2027-02-30T00:00:00Z", "2027-01-31T23:59:59-05:00", "2027-01-31 23:59:59Z"):
        with pytest.raises(ValueError, match="expires_at"):
            parse_expires_at(bad)
    assert iso_utc(utc(2027, 1, 31, 23, 59, 59)) == "2027-01-31T23:59:59Z"
    for text, shown in (("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),  # to the millisecond, any year
                        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999Z"),
                        ("1969-12-31T23:59:59.25Z", "1969-12-31T23:59:59.25Z")):
        assert iso_utc(parse_expires_at(text)) == shown


async def test_a_daily_limit_applies_to_the_days_spend_and_rolls_over_at_midnight(store, clock):
    _, rec = await store.create_key("daily", limit_pico=1000, limit_reset="daily")
    k = rec.public_id
    assert (rec.limit_reset, rec.period_start) == ("daily", utc(2026, 12, 1))
    assert await store.reserve(k, 600)
    await settle(store, k, 600, 600)
    assert await state(store, k) == (600, 600, 0)
    assert await store.reserve(k, 401) is False  # exact: 400 left today
    assert await store.reserve(k, 400)
    await store.release(k, 400)
    assert (await store.get_key(k)).remaining_pico == 400

    clock.t = MIDNIGHT
    view = await store.get_key(k)  # a period that has ended shows no spend, before anything is written
    assert (view.usage_pico, view.period_usage_pico, view.remaining_pico, view.period_start) == (600, 0, 1000, MIDNIGHT)
    assert await store.reserve(k, 1001) is False
    assert await store.reserve(k, 1000)
    await settle(store, k, 250, 1000)
    assert await state(store, k) == (850, 250, 0)  # lifetime usage stays; the period counts from midnight
    rows = await store.list_keys()
    assert [(r.period_usage_pico, r.remaining_pico) for r in rows] == [(250, 750)]


async def test_a_hold_that_straddles_midnight_settles_into_the_new_day_and_the_limit_holds(store, clock):
    _, rec = await store.create_key("daily", limit_pico=1000, limit_reset="daily")
    k = rec.public_id
    assert await store.reserve(k, 300)
    await settle(store, k, 300, 300)
    assert await store.reserve(k, 700)  # the rest of the day's budget, held a second before midnight
    clock.t = MIDNIGHT + 1
    # the new day has begun, but the hold taken yesterday is still in flight: it counts until it settles
    assert await store.reserve(k, 301) is False
    assert await store.reserve(k, 300)
    await settle(store, k, 700, 700)  # lands today: today's spend, whatever day it was held on
    assert await state(store, k) == (1000, 700, 300)
    assert await store.reserve(k, 1) is False  # never beyond the limit within a period
    await settle(store, k, 300, 300)
    assert await state(store, k) == (1300, 1000, 0)
    assert (await store.get_key(k)).remaining_pico == 0


async def test_weekly_and_monthly_periods_roll_over_on_monday_and_the_first(store, clock):
    _, weekly = await store.create_key("w", limit_pico=100, limit_reset="weekly")
    _, monthly = await store.create_key("m", limit_pico=100, limit_reset="monthly")
    for k in (weekly.public_id, monthly.public_id):
        assert await store.reserve(k, 100)
        await settle(store, k, 100, 100)
    for t, week_open, month_open in (
        (utc(2026, 12, 6, 23, 59, 59), False, False),  # Sunday: the week Monday 30 Nov began is still on
        (utc(2026, 12, 7), True, False),  # Monday: a new week
        (utc(2026, 12, 31, 23, 59, 59), True, False),
        (utc(2027, 1, 1), True, True),  # the first: a new month
    ):
        clock.t = t
        for k, is_open in ((weekly.public_id, week_open), (monthly.public_id, month_open)):
            assert await store.reserve(k, 1) is is_open, (t, k)
            if is_open:
                await store.release(k, 1)


async def test_concurrent_holds_in_a_new_period_spend_exactly_its_limit(store, clock):
    _, rec = await store.create_key("daily", limit_pico=1000, limit_reset="daily")
    k = rec.public_id
    assert await store.reserve(k, 1000)
    await settle(store, k, 1000, 1000)
    clock.t = MIDNIGHT
    results = await asyncio.gather(*(store.reserve(k, 100) for _ in range(50)))
    assert sum(results) == 10  # the period was zeroed once, not by every hold
    await asyncio.gather(*(settle(store, k, 100, 100) for _ in range(10)))
    assert await state(store, k) == (2000, 1000, 0)
    assert await store.reserve(k, 1) is False


async def test_two_replicas_roll_a_period_over_once_and_only_forward(backend, store, clock):
    other = backend.open_store()
    await other.open()
    late = Clock(BEFORE_MIDNIGHT)
    other.clock = late
    try:
        _, rec = await store.create_key("daily", limit_pico=1000, limit_reset="daily")
        k = rec.public_id
        assert await store.reserve(k, 1000)
        await settle(store, k, 1000, 1000)
        clock.t = MIDNIGHT
        assert await store.reserve(k, 300)
        await settle(store, k, 300, 300)
        # the other replica's clock lags: it still thinks it is yesterday, and must not zero today's spend again
        assert await other.reserve(k, 701) is False
        assert await other.reserve(k, 700)
        await settle(other, k, 700, 700)
        assert await state(store, k) == (2000, 1000, 0)
        late.t = MIDNIGHT + 5  # its clock catches up: the same day, nothing rolls over
        results = await asyncio.gather(*(st.reserve(k, 100) for st in (store, other) for _ in range(10)))
        assert sum(results) == 0
        clock.t = late.t = MIDNIGHT + 86400  # the next day, seen by both at once: one roll-over, 10 holds
        results = await asyncio.gather(*(st.reserve(k, 100) for st in (store, other) for _ in range(10)))
        assert sum(results) == 10
    finally:
        await other.close()


async def test_a_new_reset_counts_the_periods_recorded_spend(store, clock):
    _, rec = await store.create_key("k", limit_pico=1000)
    k = rec.public_id
    for cost, created in ((100, utc(2026, 11, 30, 12)), (200, utc(2026, 12, 1, 8)), (50, utc(2026, 12, 1, 20))):
        store.record_generation(gen(k, cost, created_at=created))
    await store.flush()
    assert (await store.get_key(k)).remaining_pico == 650  # no reset: the lifetime spend counts
    daily = await store.update_key(k, limit_reset="daily")
    assert (daily.period_start, daily.period_usage_pico, daily.remaining_pico) == (utc(2026, 12, 1), 250, 750)
    monthly = await store.update_key(k, limit_reset="monthly")  # 30 Nov is last month
    assert (monthly.period_start, monthly.period_usage_pico) == (utc(2026, 12, 1), 250)
    weekly = await store.update_key(k, limit_reset="weekly")  # the week began on Monday 30 Nov
    assert (weekly.period_start, weekly.period_usage_pico, weekly.remaining_pico) == (utc(2026, 11, 30), 350, 650)
    again = await store.update_key(k, limit_reset="weekly", label="same reset")  # unchanged: nothing recounted
    assert (again.period_usage_pico, again.label) == (350, "same reset")
    none = await store.update_key(k, limit_reset=None)
    assert (none.limit_reset, none.remaining_pico) == (None, 650)
    with pytest.raises(ValueError, match="limit_reset"):
        await store.update_key(k, limit_reset="hourly")
    with pytest.raises(ValueError, match="limit_reset"):
        await store.create_key("bad", limit_reset="yearly")


async def test_expires_at_is_stored_and_changed(store, clock):
    _, rec = await store.create_key("temp", expires_at=MIDNIGHT)
    got = await store.get_key(rec.public_id)
    assert got.expires_at == MIDNIGHT and not got.expired(clock()) and got.expired(MIDNIGHT)
    assert (await store.update_key(rec.public_id, expires_at=None)).expires_at is None
    assert (await store.update_key(rec.public_id, expires_at=MIDNIGHT + 0.25)).expires_at == MIDNIGHT + 0.25


async def test_a_database_from_before_resets_migrates_its_keys_unchanged(backend):
    from metarouter.store.sql import _PERIODS

    await backend.schema_before(_PERIODS)
    flag = "FALSE" if backend.kind == "postgres" else "0"
    await backend.sql(f"INSERT INTO keys (public_id, key_hash, label, limit_pico, usage_pico, reserved_pico, disabled, "
                      f"created_at) VALUES ('aaaaaaaaaaaa', 'h', 'old', 1000, 400, 0, {flag}, 0)")
    st = backend.open_store()
    await st.open()
    try:
        k = await st.get_key("aaaaaaaaaaaa")
        assert (k.limit_reset, k.expires_at, k.period_usage_pico, k.remaining_pico) == (None, None, 0, 600)
        assert await st.reserve("aaaaaaaaaaaa", 601) is False and await st.reserve("aaaaaaaaaaaa", 600)
        daily = await st.update_key("aaaaaaaaaaaa", limit_reset="daily", expires_at=MIDNIGHT)
        assert (daily.limit_reset, daily.expires_at, daily.period_usage_pico) == ("daily", MIDNIGHT, 0)
    finally:
        await st.close()


# --- budget leases -----------------------------------------------------------------------------------------------
@pytest.fixture
async def leases(backend):
    """Two lease holders ('replicas') on one database sharing one clock, with small leases (a top-up holds 4 more
    holds and needs twice as much left free)."""
    c = Clock(BEFORE_MIDNIGHT)
    opened = []
    for _ in range(2):
        st = BudgetLeases(backend.open_store().store, holds=4, spare=2)
        st.clock = c
        await st.open()
        opened.append(st)
    try:
        yield opened, c
    finally:
        for st in opened:
            await st.close()


async def test_a_lease_is_sized_from_the_periods_budget_and_sees_the_roll_over(leases):
    (a, b), clock = leases
    limit = 100 * 100
    _, rec = await a.create_key("daily", limit_pico=limit, limit_reset="daily")
    k = rec.public_id
    assert await a.store.reserve(k, limit - 1000)  # near the day's limit: spent almost all of it
    await settle(a.store, k, limit - 1000, limit - 1000)
    await a.budget_view(k)
    assert await a.reserve(k, 100)
    assert a._leases[k].keep is False  # near the limit: held per request, no lease
    assert (await a.store.get_key(k)).reserved_pico == 100
    await a.release(k, 100)

    clock.t = MIDNIGHT
    view = await a.budget_view(k)  # read afresh although its record is less than a second old: the day has ended
    assert (view.period_usage_pico, view.remaining_pico) == (0, limit)
    assert await a.reserve(k, 100)
    lease = a._leases[k]
    assert lease.keep is True and lease.granted == 5 * 100  # a lease now: the new day's budget is far from spent
    # concurrent holds from both replicas in the new day: exactly its limit, never more, leases or not
    results = await asyncio.gather(*(st.reserve(k, 100) for st in (a, b) for _ in range(150)))
    assert sum(results) == 99
    held = (await a.store.get_key(k)).reserved_pico
    assert held == limit
    assert await a.store.reserve(k, 1) is False
    for st in (a, b):
        await st.flush()


async def test_a_lease_never_holds_more_than_the_period_has_left(leases):
    (a, _), clock = leases
    limit = 10**6
    _, rec = await a.create_key("daily", limit_pico=limit, limit_reset="daily")
    k = rec.public_id
    assert await a.store.reserve(k, limit)  # yesterday: all of it
    await settle(a.store, k, limit, limit)
    clock.t = MIDNIGHT
    # today: all but 14,999; a top-up for a hold of 1000 takes 5 of them and needs twice that left free (15,000)
    assert await a.store.reserve(k, limit - 14_999)
    await settle(a.store, k, limit - 14_999, limit - 14_999)
    assert await a.store.reserve(k, 5000, spare_pico=10_000) is False  # the store refuses such a chunk
    await a.budget_view(k)
    assert await a.reserve(k, 1000)
    assert a._leases[k].keep is False and (await a.store.get_key(k)).reserved_pico == 1000  # this hold alone
    await settle(a, k, 0, 1000)
    clock.t = MIDNIGHT + 86400  # a new day: far from its limit again, although it spent twice the limit before
    await a.budget_view(k)
    assert await a.reserve(k, 1000)
    lease = a._leases[k]
    held = await a.store.get_key(k)
    assert lease.keep is True and lease.granted == 5000 == held.reserved_pico
    assert held.usage_pico == 2 * limit - 14_999 and held.period_usage_pico == 0
    await a.flush()
