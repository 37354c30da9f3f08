"""The store contract: every backend (SQLite, PostgreSQL) passes the same tests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from metarouter.store import hash_key, new_generation_id, parse_key
from metarouter.store.base import spend_window_starts

DAY = 86400.0


def gen(key_id: str | None, cost: int, *, gid: str | None = None, created_at: float | None = None,
        model: str = "openai/gpt-4o-mini", prompt: int = 10, completion: int = 5, **extra) -> dict:
    rec = {
        "id": gid or new_generation_id(), "created_at": time.time() if created_at is None else created_at,
        "key_id": key_id, "requested_model": model, "model": model, "provider": "openai", "streamed": False,
        "status": "ok", "prompt_tokens": prompt, "completion_tokens": completion, "reasoning_tokens": 1,
        "cached_tokens": 0, "usage_estimated": False, "cost_pico": cost, "latency_ms": 12.5, "ttft_ms": 3.25,
        "finish_reason": "stop", "native_finish_reason": "stop", "attempts": [{"model": model, "status": 200}],
        "routing": {"reason": "test", "scores": [0.5, 0.25]},
    }
    rec.update(extra)
    return rec


# --- keys ------------------------------------------------------------------------------------------------------
async def test_keys_create_get_list_update(store):
    plaintext, rec = await store.create_key("alpha", limit_pico=10**12, rpm=60, tpm=1000)
    assert parse_key(plaintext) == rec.public_id
    got = await store.get_key(rec.public_id)
    assert got is not None
    assert (got.label, got.limit_pico, got.rpm, got.tpm, got.disabled) == ("alpha", 10**12, 60, 1000, False)
    assert got.key_hash == hash_key(plaintext) and got.usage_pico == 0 and got.reserved_pico == 0
    _, other = await store.create_key("beta")
    assert [k.public_id for k in await store.list_keys()] == [rec.public_id, other.public_id]
    assert (await store.get_key(other.public_id)).limit_pico is None

    upd = await store.update_key(rec.public_id, disabled=True, limit_pico=None, rpm=5, label="alpha2")
    assert (upd.disabled, upd.limit_pico, upd.rpm, upd.tpm, upd.label) == (True, None, 5, 1000, "alpha2")
    assert (await store.get_key(rec.public_id)).disabled is True
    assert (await store.update_key(rec.public_id, disabled=False)).disabled is False
    assert await store.update_key("000000000000", disabled=True) is None
    assert await store.get_key("000000000000") is None
    assert await store.get_key("x' OR '1'='1") is None
    with pytest.raises(ValueError):
        await store.update_key(rec.public_id, usage_pico=0)
    with pytest.raises(ValueError):
        await store.update_key(rec.public_id, **{"disabled = 1 --": 1})


async def test_only_hashes_are_stored(store, backend):
    plaintexts = [(await store.create_key(f"k{i}"))[0] for i in range(3)]
    await store.flush()
    text = await backend.dump()
    for p in plaintexts:
        secret = p.rsplit("-", 1)[1]
        assert p not in text and secret not in text
        assert hash_key(p) in text  # what is stored is the hash
    assert all(not hasattr(k, "plaintext") and "key_hash" not in k.public_dict() for k in await store.list_keys())


# --- budgets ---------------------------------------------------------------------------------------------------
async def test_concurrent_reserves_never_exceed_the_key_limit(store):
    _, rec = await store.create_key("budget", limit_pico=1000)
    results = await asyncio.gather(*(store.reserve(rec.public_id, 100) for _ in range(50)))
    assert sum(results) == 10
    assert (await store.get_key(rec.public_id)).reserved_pico == 1000
    assert await store.reserve(rec.public_id, 1) is False
    await asyncio.gather(*(store.release(rec.public_id, 100) for _ in range(10)))
    k = await store.get_key(rec.public_id)
    assert (k.reserved_pico, k.usage_pico, k.remaining_pico) == (0, 0, 1000)
    assert await store.reserve(rec.public_id, 1000) is True


async def test_concurrent_reserves_never_exceed_the_account_credit(store):
    await store.add_credits(1000)
    keys = [(await store.create_key(f"k{i}"))[1].public_id for i in range(5)]  # keys without limits
    results = await asyncio.gather(*(store.reserve(keys[i % 5], 100) for i in range(50)))
    assert sum(results) == 10
    assert await store.get_credits() == (1000, 0)


async def test_a_refused_reserve_holds_nothing(store):
    await store.add_credits(150)
    _, rec = await store.create_key("k", limit_pico=1000)
    assert await store.reserve(rec.public_id, 100) is True
    assert await store.reserve(rec.public_id, 100) is False  # the account refuses: the key keeps only the first
    assert (await store.get_key(rec.public_id)).reserved_pico == 100
    assert await store.reserve("000000000000", 1) is False  # unknown key


async def test_record_charges_and_releases_the_reservation(store):
    await store.add_credits(10_000)
    _, rec = await store.create_key("k", limit_pico=1000)
    assert await store.reserve(rec.public_id, 600)
    store.record_generation(gen(rec.public_id, 250), reserved_pico=600)
    await store.flush()
    k = await store.get_key(rec.public_id)
    assert (k.usage_pico, k.reserved_pico, k.remaining_pico) == (250, 0, 750)
    assert await store.get_credits() == (10_000, 250)
    assert await store.reserve(rec.public_id, 750) is True
    assert await store.reserve(rec.public_id, 1) is False


async def test_the_same_record_twice_is_charged_once(store):
    _, rec = await store.create_key("k", limit_pico=10_000)
    assert await store.reserve(rec.public_id, 500)
    record = gen(rec.public_id, 300)
    store.record_generation(record, reserved_pico=500)
    store.record_generation(dict(record), reserved_pico=500)  # the same batch
    await store.flush()
    store.record_generation(dict(record), reserved_pico=500)  # a later batch
    await store.flush()
    k = await store.get_key(rec.public_id)
    assert (k.usage_pico, k.reserved_pico) == (300, 0)
    assert (await store.get_credits())[1] == 300
    assert len(await store.list_generations(key_id=rec.public_id)) == 1


async def test_a_resent_record_settles_nothing_again(store):
    """A record written again (a write retried after its acknowledgement was lost, or sent twice) is a no-op: it is
    not charged again, and it does not settle a second hold: a hold of the same size that another request holds
    now stays held (giving it back would let that request's key spend past its limit)."""
    _, rec = await store.create_key("k", limit_pico=10_000)
    assert await store.reserve(rec.public_id, 500)
    record = gen(rec.public_id, 300)
    assert await store.record_generation(record, reserved_pico=500) is True
    assert await store.reserve(rec.public_id, 500)  # another request's hold, live
    assert await store.record_generation(dict(record), reserved_pico=500) is True  # the retried write
    await store.flush()
    k = await store.get_key(rec.public_id)
    assert (k.usage_pico, k.reserved_pico) == (300, 500)
    assert await store.reserve(rec.public_id, 10_000 - 300 - 500) is True
    assert await store.reserve(rec.public_id, 1) is False
    await store.release(rec.public_id, 500)  # the live hold is given back once, by its own request
    k = await store.get_key(rec.public_id)
    assert (k.usage_pico, k.reserved_pico) == (300, 9_200)


async def test_records_are_batched_and_flush_waits_for_all(store):
    _, rec = await store.create_key("k")
    records = [gen(rec.public_id, i + 1) for i in range(1200)]
    for r in records:
        store.record_generation(r)  # synchronous: no await between them
    await store.flush()
    k = await store.get_key(rec.public_id)
    assert k.usage_pico == sum(range(1, 1201))
    assert len(await store.list_generations(key_id=rec.public_id, limit=5000)) == 1200
    assert (await store.get_credits())[1] == k.usage_pico


async def test_a_batch_mixing_keys_charges_and_settles_each(store):
    await store.add_credits(1_000_000)
    _, a = await store.create_key("a", limit_pico=100_000)
    _, b = await store.create_key("b", limit_pico=100_000)
    for _ in range(5):
        assert await store.reserve(a.public_id, 700)
        assert await store.reserve(b.public_id, 900)
    for i in range(5):  # interleaved in one batch, each settling its own hold
        store.record_generation(gen(a.public_id, 100 + i), reserved_pico=700)
        store.record_generation(gen(b.public_id, 10 + i), reserved_pico=900)
    store.record_generation(gen(None, 7))  # no key: charged to the account only
    await store.flush()
    ka, kb = await store.get_key(a.public_id), await store.get_key(b.public_id)
    assert (ka.usage_pico, ka.reserved_pico) == (510, 0)
    assert (kb.usage_pico, kb.reserved_pico) == (60, 0)
    assert await store.get_credits() == (1_000_000, 577)


async def test_record_generation_is_synchronous_and_survives_cancellation(store):
    _, rec = await store.create_key("k")
    ids = []

    async def request():
        try:
            await asyncio.sleep(10)
        finally:
            r = gen(rec.public_id, 7)
            ids.append(r["id"])
            store.record_generation(r)  # in the finally block of a cancelled task

    tasks = [asyncio.create_task(request()) for _ in range(20)]
    await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.flush()
    assert (await store.get_key(rec.public_id)).usage_pico == 140
    for gid in ids:
        assert await store.get_generation(gid) is not None


async def test_generation_roundtrip_and_listing(store):
    _, rec = await store.create_key("k")
    old = gen(rec.public_id, 5, created_at=time.time() - 100, streamed=True, usage_estimated=True, overage_pico=3,
              insured=True, app_title="My App", app_referer="https://example.com", user_tag="u1", session_id="s1")
    new = gen(rec.public_id, 6)
    other = gen(None, 1)
    for r in (old, new, other):
        store.record_generation(r)
    await store.flush()
    got = await store.get_generation(old["id"])
    for f, v in old.items():
        assert got[f] == (pytest.approx(v) if isinstance(v, float) else v), f
    assert got["streamed"] is True and got["usage_estimated"] is True and got["insured"] is True
    assert (await store.get_generation(new["id"]))["insured"] is False  # a record that does not say: charged
    assert got["attempts"] == [{"model": "openai/gpt-4o-mini", "status": 200}]
    assert got["routing"] == {"reason": "test", "scores": [0.5, 0.25]}
    assert await store.get_generation("gen-nope") is None
    assert [g["id"] for g in await store.list_generations(key_id=rec.public_id)] == [new["id"], old["id"]]
    assert [g["id"] for g in await store.list_generations(limit=1)] in ([new["id"]], [other["id"]])
    assert {g["id"] for g in await store.list_generations(since=time.time() - 50)} == {new["id"], other["id"]}
    assert len(await store.list_generations()) == 3


# --- reports ---------------------------------------------------------------------------------------------------
async def test_activity_aggregates_per_day_and_model(store):
    _, a = await store.create_key("a")
    _, b = await store.create_key("b")
    today = spend_window_starts(time.time())["day"] + 60
    yesterday = today - DAY
    rows = [
        gen(a.public_id, 10, created_at=today, model="m1", prompt=1, completion=2, app_title="App"),
        gen(a.public_id, 20, created_at=today, model="m1", prompt=3, completion=4),
        gen(b.public_id, 40, created_at=today, model="m2", prompt=5, completion=6),
        gen(a.public_id, 80, created_at=yesterday, model="m1", prompt=7, completion=8),
    ]
    for r in rows:
        store.record_generation(r)
    d0 = time.strftime("%Y-%m-%d", time.gmtime(today))
    d1 = time.strftime("%Y-%m-%d", time.gmtime(yesterday))
    act = await store.activity()
    assert act == [
        {"date": d0, "model": "m1", "requests": 2, "prompt_tokens": 4, "completion_tokens": 6, "reasoning_tokens": 2,
         "cost_pico": 30},
        {"date": d0, "model": "m2", "requests": 1, "prompt_tokens": 5, "completion_tokens": 6, "reasoning_tokens": 1,
         "cost_pico": 40},
        {"date": d1, "model": "m1", "requests": 1, "prompt_tokens": 7, "completion_tokens": 8, "reasoning_tokens": 1,
         "cost_pico": 80},
    ]
    assert [r["cost_pico"] for r in await store.activity(key_id=a.public_id)] == [30, 80]
    assert [r["cost_pico"] for r in await store.activity(since=today - 1)] == [30, 40]
    assert [r["cost_pico"] for r in await store.activity(until=today - 1)] == [80]
    assert [(r["requests"], r["cost_pico"]) for r in await store.activity(app="App")] == [(1, 10)]


async def test_key_spend_windows(store):
    _, rec = await store.create_key("k")
    now = time.time()
    starts = spend_window_starts(now)
    placed = [(now, 1), (starts["day"], 2), (starts["day"] - 1, 10), (starts["week"] - 1, 100),
              (starts["month"] - 1, 1000), (min(starts.values()) - 40 * DAY, 10000)]
    for t, cost in placed:
        store.record_generation(gen(rec.public_id, cost, created_at=t))
    store.record_generation(gen(None, 5, created_at=now))  # spend without this key does not count
    w = await store.key_spend_windows(rec.public_id)
    assert w == {name: sum(c for t, c in placed if t >= start) for name, start in starts.items()}
    assert w["day"] == 3 and w["month"] < 10000
    assert await store.key_spend_windows("000000000000") == {"day": 0, "week": 0, "month": 0}


async def test_credits(store):
    assert await store.get_credits() == (None, 0)  # unset: unlimited
    assert await store.add_credits(500) == (500, 0)
    assert await store.add_credits(250) == (750, 0)
    store.record_generation(gen(None, 100))
    assert await store.get_credits() == (750, 100)


async def test_reopen_keeps_data_and_migrations_are_idempotent(store, backend):
    plaintext, rec = await store.create_key("persist", limit_pico=99)
    store.record_generation(gen(rec.public_id, 9))
    await store.close()  # close flushes
    for _ in range(2):
        again = backend.open_store()
        await again.open()
        try:
            k = await again.get_key(rec.public_id)
            assert k is not None and k.key_hash == hash_key(plaintext) and k.usage_pico == 9
            assert len(await again.list_generations()) == 1
        finally:
            await again.close()
    versions = await backend.sql("SELECT version FROM schema_version ORDER BY version")
    assert [v[0] for v in versions] == list(range(1, len(versions) + 1)) and versions
    await store.open()  # the fixture closes it again


async def test_app_ranking_by_tokens(store):
    _, a = await store.create_key("a")
    for title, referer, tokens in (("Big", None, 100), ("Small", None, 10), (None, "https://ref.example", 50),
                                   ("Big", None, 100), (None, None, 1000)):
        store.record_generation(gen(a.public_id, 1, prompt=tokens, completion=0, app_title=title,
                                    app_referer=referer))
    ranking = await store.app_ranking()
    assert [(r["app"], int(r["requests"]), int(r["tokens"])) for r in ranking] == [
        ("Big", 2, 200), ("https://ref.example", 1, 50), ("Small", 1, 10)]
    assert await store.app_ranking(key_id="nobody") == []
    assert len(await store.app_ranking(limit=1)) == 1


async def test_another_process_opening_the_store_keeps_live_holds(backend, store):
    """A second process (a worker, the CLI) opening the database must not wipe the first one's holds."""
    _, rec = await store.create_key("k", limit_pico=100)
    assert await store.reserve(rec.public_id, 60)
    other = backend.open_store()
    await other.open()
    try:
        assert not await other.reserve(rec.public_id, 60)  # the first hold still counts
    finally:
        await other.close()
    assert (await store.get_key(rec.public_id)).reserved_pico == 60


_HOLDER = """
import asyncio, sys
from metarouter.store import open_store

async def main():
    st = open_store(sys.argv[1])
    await st.open()
    print("held" if await st.reserve(sys.argv[2], int(sys.argv[3])) else "refused", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _crashed_holder(backend, key_id: str, amount: int) -> None:
    """Another process holds ``amount`` on the key, then is killed with SIGKILL (nothing of it runs after)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, backend.url, key_id, str(amount)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
    finally:
        proc.kill()
        proc.wait()


async def test_holds_of_a_killed_process_are_given_back_at_start_up(backend, store):
    _, rec = await store.create_key("k", limit_pico=100)
    _crashed_holder(backend, rec.public_id, 70)
    assert (await store.get_key(rec.public_id)).reserved_pico == 70  # still held: nobody has looked yet
    restarted = backend.open_store()
    await restarted.open()  # the start-up sweep sees that process gone
    try:
        assert (await restarted.get_key(rec.public_id)).reserved_pico == 0
        assert await restarted.reserve(rec.public_id, 100)
    finally:
        await restarted.close()


async def test_holds_of_a_killed_process_are_given_back_by_the_next_sweep(backend, store):
    _, rec = await store.create_key("k", limit_pico=100)
    assert await store.reserve(rec.public_id, 20)
    _crashed_holder(backend, rec.public_id, 70)
    assert await store.reclaim_reservations() == 1
    assert await store.reclaim_reservations() == 0
    assert (await store.get_key(rec.public_id)).reserved_pico == 20  # this store's own hold stays


async def test_holds_are_given_back_when_the_lease_runs_out_and_only_once(backend, store):
    _, rec = await store.create_key("k", limit_pico=100)
    other = backend.open_store()
    await other.open()
    try:
        assert await other.reserve(rec.public_id, 70)
        assert await store.reclaim_reservations() == 0  # a live lease: its holds stay
        past = time.time() - 1
        if backend.kind == "sqlite":
            await backend.sql("UPDATE instances SET lease_until = $1 WHERE holder = $2", past, other.holder)
        else:
            await backend.sql("UPDATE instances SET lease_until = to_timestamp($1) WHERE holder = $2", past,
                              other.holder)
        assert await store.reclaim_reservations() == 1
        assert (await store.get_key(rec.public_id)).reserved_pico == 0
        await other.release(rec.public_id, 70)  # the late release of the reclaimed hold
        assert await store.reserve(rec.public_id, 100)
        assert (await store.get_key(rec.public_id)).reserved_pico == 100
    finally:
        await other.close()


async def test_a_record_is_durable_when_its_future_is_done(backend, store):
    _, rec = await store.create_key("k", limit_pico=1000)
    assert await store.reserve(rec.public_id, 600)
    r = gen(rec.public_id, 250)
    fut = store.record_generation(r, reserved_pico=600)
    assert await fut is True
    # another connection sees the record and its charge, with no flush in between
    assert await backend.sql("SELECT cost_pico FROM generations WHERE id = $1", r["id"]) == [(250,)]
    assert await backend.sql("SELECT usage_pico, reserved_pico FROM keys WHERE public_id = $1", rec.public_id) == [
        (250, 0)]


# --- the Activity page's queries -------------------------------------------------------------------------------
T0 = 1_699_920_000.0  # 2023-11-14 00:00 UTC: hour and day buckets start on round numbers


async def _activity_fixture(store):
    """Six records over two keys, two models, three statuses and two days; two share one timestamp."""
    _, a = await store.create_key("a")
    _, b = await store.create_key("b")
    ka, kb = a.public_id, b.public_id
    rows = [
        gen(ka, 10, gid="gen-1", created_at=T0 + 60, model="m1", prompt=1, completion=2, router="auto",
            app_title="Alpha", latency_ms=10.0),
        gen(ka, 20, gid="gen-2", created_at=T0 + 3605, model="m1", prompt=3, completion=4, status="error",
            error="upstream said no", app_title="Alpha", latency_ms=30.0),
        gen(kb, 40, gid="gen-3", created_at=T0 + 3610, model="m2", provider="anthropic", prompt=5, completion=6,
            router="auto", app_referer="https://b.example", latency_ms=0.5),
        gen(ka, 80, gid="gen-4", created_at=T0 + 7200, model="m2", provider="anthropic", prompt=7, completion=8,
            router="auto", status="cancelled", latency_ms=None),
        gen(ka, 5, gid="gen-5", created_at=T0 + 7200, model="m1", prompt=1, completion=1, latency_ms=2.0),
        gen(kb, 160, gid="gen-6", created_at=T0 + DAY, model="m1", prompt=9, completion=10, app_title="Alpha",
            app_referer="https://alpha.example", latency_ms=7.5),
    ]
    for r in rows:
        store.record_generation(r)
    return ka, kb


async def test_search_generations_filters_and_pages(store):
    from metarouter.store.base import ActivityQuery as Q

    ka, kb = await _activity_fixture(store)

    async def ids(q, **kw):
        return [g["id"] for g in await store.search_generations(q, **kw)]

    # newest first; the two records of one instant by id, descending
    assert await ids(Q()) == ["gen-6", "gen-5", "gen-4", "gen-3", "gen-2", "gen-1"]
    assert await ids(Q(key_id=kb)) == ["gen-6", "gen-3"]
    assert await ids(Q(model="m2")) == ["gen-4", "gen-3"]
    assert await ids(Q(provider="anthropic", key_id=ka)) == ["gen-4"]
    assert await ids(Q(status="error")) == ["gen-2"]
    assert await ids(Q(app="Alpha")) == ["gen-6", "gen-2", "gen-1"]  # the title wins over the referer
    assert await ids(Q(app="https://b.example")) == ["gen-3"]
    assert await ids(Q(app="https://alpha.example")) == []
    assert await ids(Q(since=T0 + 3605, until=T0 + 7200)) == ["gen-3", "gen-2"]  # since inclusive, until not
    assert await ids(Q(app="x' OR '1'='1")) == [] and await ids(Q(model="m1", status="cancelled")) == []
    # pages by offset, and by keyset from the last record seen, both cover everything once
    pages = [await ids(Q(), limit=4, offset=off) for off in (0, 4, 8)]
    assert pages == [["gen-6", "gen-5", "gen-4", "gen-3"], ["gen-2", "gen-1"], []]
    seen, before = [], None
    while batch := await store.search_generations(Q(), limit=2, before=before):
        seen += [g["id"] for g in batch]
        before = (batch[-1]["created_at"], batch[-1]["id"])
    assert seen == await ids(Q())
    # whole records, with the error and the provider
    (rec,) = await store.search_generations(Q(status="error"))
    assert (rec["error"], rec["provider"], rec["key_id"], rec["latency_ms"]) == ("upstream said no", "openai", ka, 30.0)
    assert rec["attempts"] == [{"model": "m1", "status": 200}]


async def test_activity_breakdown_totals_groups_and_buckets(store):
    from metarouter.store.base import ActivityQuery as Q
    from metarouter.store.base import merge_breakdown

    ka, kb = await _activity_fixture(store)
    (total,) = await store.activity_breakdown(Q())
    assert total == {"requests": 6, "auto_requests": 3, "errors": 1, "cancelled": 1, "prompt_tokens": 26,
                     "completion_tokens": 31, "reasoning_tokens": 6, "cost_pico": 315, "latency_ms_sum": 50.0,
                     "latency_count": 5, "first_at": T0 + 60, "last_at": T0 + DAY}
    (none,) = await store.activity_breakdown(Q(since=T0 + 2 * DAY))
    assert none["requests"] == 0 and none["cost_pico"] == 0 and none["latency_ms_sum"] == 0
    assert none["first_at"] is None and merge_breakdown([]) == none
    assert await store.activity_breakdown(Q(since=T0 + 2 * DAY), by="model") == []

    def pick(rows, *names):
        return [tuple(r[n] for n in names) for r in rows]

    by_model = await store.activity_breakdown(Q(), by="model")
    assert merge_breakdown(by_model) == total  # groups merge back into the totals
    assert pick(by_model, "model", "requests", "auto_requests", "errors", "cancelled", "cost_pico") == [
        ("m1", 4, 1, 1, 0, 195), ("m2", 2, 2, 0, 1, 120)]
    assert pick(await store.activity_breakdown(Q(key_id=ka), by="model"), "model", "requests") == [("m1", 3), ("m2", 1)]
    # apps: most requests first, records without an app last
    by_app = await store.activity_breakdown(Q(), by="app")
    assert pick(by_app, "app", "requests", "cost_pico") == [("Alpha", 3, 190), (None, 2, 85), ("https://b.example", 1, 40)]
    assert pick(await store.activity_breakdown(Q(), by="app", limit=1), "app") == [("Alpha",)]
    assert pick(await store.activity_breakdown(Q(), by="key"), "key", "requests") == [(ka, 4), (kb, 2)]
    assert pick(await store.activity_breakdown(Q(), by="status"), "status", "requests") == [
        ("ok", 4), ("cancelled", 1), ("error", 1)]
    # hour buckets (UTC), per model
    hourly = await store.activity_breakdown(Q(until=T0 + DAY), by="model", bucket=3600)
    assert pick(hourly, "bucket", "model", "requests", "cost_pico") == [
        (T0, "m1", 1, 10), (T0 + 3600, "m1", 1, 20), (T0 + 3600, "m2", 1, 40), (T0 + 7200, "m1", 1, 5),
        (T0 + 7200, "m2", 1, 80)]
    daily = await store.activity_breakdown(Q(model="m1"), bucket=86400)
    assert pick(daily, "bucket", "requests", "cost_pico") == [(T0, 3, 35), (T0 + DAY, 1, 160)]
    assert merge_breakdown(hourly) == (await store.activity_breakdown(Q(until=T0 + DAY)))[0]
    with pytest.raises(ValueError):
        await store.activity_breakdown(Q(), by="model; DROP TABLE generations")


async def test_an_older_schema_keeps_its_holds_summed_per_instance_and_key(backend):
    """Migrating from one row per hold to one row per instance and key keeps every hold (nothing is freed)."""
    from metarouter.store.sql import _HOLD_PER_KEY

    await backend.schema_before(_HOLD_PER_KEY)
    flag = "FALSE" if backend.kind == "postgres" else "0"
    await backend.sql(f"INSERT INTO keys (public_id, key_hash, label, limit_pico, usage_pico, reserved_pico, disabled, "
                      f"created_at) VALUES ('aaaaaaaaaaaa', 'h', 'k', 1000, 0, 450, {flag}, 0)")
    until = "now() + interval '1 hour'" if backend.kind == "postgres" else str(time.time() + 3600)
    await backend.sql(f"INSERT INTO instances (holder, host, pid, lease_until) VALUES ('live', 'elsewhere', 1, {until})")
    created = "now()" if backend.kind == "postgres" else str(time.time())
    for amount in (100, 200, 150):
        await backend.sql("INSERT INTO reservations (holder, key_id, amount_pico, created_at) VALUES "
                          f"('live', 'aaaaaaaaaaaa', {amount}, {created})")
    st = backend.open_store()
    await st.open()
    try:
        assert (await st.get_key("aaaaaaaaaaaa")).reserved_pico == 450
        assert await st.reserve("aaaaaaaaaaaa", 551) is False and await st.reserve("aaaaaaaaaaaa", 550) is True
    finally:
        await st.close()
    rows = await backend.sql("SELECT holder, key_id, amount_pico FROM reservations ORDER BY holder")
    assert [r for r in rows if r[0] == "live"] == [("live", "aaaaaaaaaaaa", 450)]


# --- endpoint stats ------------------------------------------------------------------------------------------------
async def test_endpoint_samples_exclude_cache_hits_failures_and_old_records(store):
    """Latency and throughput per endpoint come from the answered records of the window, newest first, at most
    ``per_endpoint`` of each; response-cache hits (the endpoint was not called) never count."""
    from metarouter.store.base import endpoint_stats

    now = time.time()
    llama = "meta-llama/llama-3.1-70b-instruct"
    rows = [
        # streamed on fireworks: 100 tokens in 0.5 s after a 200 ms first token -> 200 tokens/s
        gen(None, 0, model=llama, provider="fireworks", streamed=True, completion=100, latency_ms=700.0,
            ttft_ms=200.0, created_at=now - 10),
        # JSON on together: 50 tokens in 1 s -> 50 tokens/s, latency the whole second
        gen(None, 0, model=llama, provider="together", completion=50, latency_ms=1000.0, ttft_ms=1000.0,
            created_at=now - 20),
        # a cache hit "on" together: instant, and no upstream was called
        gen(None, 0, model=llama, provider="together", completion=0, latency_ms=1.0, ttft_ms=1.0, created_at=now - 5,
            routing={"reason": "served from the response cache", "cache": {"hit": True, "original_id": "gen-x"}}),
        gen(None, 0, model=llama, provider="together", status="error", latency_ms=5.0, created_at=now - 6),
        gen(None, 0, model=llama, provider="deepinfra", latency_ms=5.0, created_at=now - 7200),  # out of the window
    ]
    for r in rows:
        store.record_generation(r)
    await store.flush()
    samples = await store.endpoint_samples(now - 1800, 200)
    assert sorted((m, p) for m, p, *_ in samples) == [(llama, "fireworks"), (llama, "together")]
    stats = endpoint_stats(samples)
    assert stats[(llama, "fireworks")]["throughput"]["p50"] == 200.0
    assert stats[(llama, "fireworks")]["latency"]["p50"] == 200.0
    assert stats[(llama, "together")]["throughput"]["p50"] == 50.0
    assert stats[(llama, "together")]["latency"] == {"p50": 1000.0, "p75": 1000.0, "p90": 1000.0, "p99": 1000.0}
    assert stats[(llama, "together")]["requests"] == 1
    for i in range(3):
        store.record_generation(gen(None, 0, model=llama, provider="fireworks", streamed=True, completion=10,
                                    latency_ms=1100.0 + i, ttft_ms=100.0, created_at=now - 1 + i / 10))
    await store.flush()
    recent = [s for s in await store.endpoint_samples(now - 1800, 2) if s[1] == "fireworks"]
    assert sorted(s[4] for s in recent) == [1101.0, 1102.0]  # the two newest only
    # busy traffic: only the newest answered records are read at all (here 3: the fireworks ones just written)
    assert sorted(s[4] for s in await store.endpoint_samples(now - 1800, 200, scan=3)) == [1100.0, 1101.0, 1102.0]
