"""Two ``metarouter serve`` processes sharing one PostgreSQL (a fresh schema) and one Redis, under concurrent load.

Rate limits and budgets hold globally, nothing is charged twice, and a replica stopped with SIGTERM mid-load
loses nothing: every answered request has its record, charged once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import urllib.parse

import asyncpg
import httpx
import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config

PG_URL = os.environ.get("METAROUTER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("METAROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = "openai/gpt-4o-mini-2024-07-18"

pytestmark = pytest.mark.skipif(os.environ.get("METAROUTER_TEST_NO_SERVICES") == "1",
                                reason="METAROUTER_TEST_NO_SERVICES=1")


def _schema_url(schema: str) -> str:
    parts = urllib.parse.urlsplit(PG_URL)
    query = urllib.parse.parse_qsl(parts.query) + [("search_path", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def _pg(statement: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def cluster(fake, tmp_path_factory):
    schema = f"mr_test_{secrets.token_hex(6)}"
    asyncio.run(_pg(f"CREATE SCHEMA {schema}"))
    url = _schema_url(schema)
    env = {**FAKE_KEYS_ENV, "METAROUTER_DATABASE_URL": url, "METAROUTER_REDIS_URL": REDIS_URL}
    cfg = gateway_config(fake)
    servers = [GatewayProcess(cfg, tmp_path_factory.mktemp(f"replica{i}"), env=env) for i in range(2)]
    try:
        for s in servers:
            s.start()
        yield servers, url
    finally:
        for s in servers:
            s.stop()
        asyncio.run(_pg(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


async def query(url: str, sql: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def flush_all(servers, key: str) -> None:
    """``GET /key`` flushes that server's pending ledger writes before it answers."""
    async with httpx.AsyncClient(timeout=30) as c:
        for s in servers:
            if s.proc is not None:
                r = await c.get(f"{s.url}/api/v1/key", headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text


async def one(client: httpx.AsyncClient, base: str, key: str, i: int, *, stream: bool = False,
              max_tokens: int = 20) -> tuple[int, str | None, float | None]:
    """One chat request: (status or 0 on a transport error, generation id, cost in USD)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"request number {i}"}],
            "max_tokens": max_tokens, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    try:
        if not stream:
            r = await client.post(f"{base}/api/v1/chat/completions", json=body, headers=headers)
            if r.status_code != 200:
                return r.status_code, None, None
            data = r.json()
            return 200, data["id"], data["usage"]["cost"]
        async with client.stream("POST", f"{base}/api/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                return r.status_code, None, None
            gen_id, cost, done = None, None, False
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    import json

                    chunk = json.loads(line[6:])
                    gen_id = chunk.get("id") or gen_id
                    if chunk.get("usage"):
                        cost = chunk["usage"]["cost"]
            return (200 if done else 0), gen_id, cost
    except httpx.TransportError:
        return 0, None, None


async def load(servers, key: str, n: int, concurrency: int, **kw) -> list[tuple[int, str | None, float | None]]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        async def run(i: int):
            async with sem:
                return await one(client, servers[i % len(servers)].url, key, i, **kw)

        return list(await asyncio.gather(*(run(i) for i in range(n))))


async def key_row(url: str, key: str):
    public_id = key.split("-")[2]
    rows = await query(url, "SELECT usage_pico, reserved_pico, limit_pico FROM keys WHERE public_id = $1", public_id)
    return public_id, rows[0]


async def test_rpm_holds_across_replicas(cluster):
    servers, url = cluster
    key = servers[0].create_key("rpm", rpm=25)  # the CLI, against PostgreSQL
    results = await load(servers, key, 150, 30)
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) == 25, statuses
    assert statuses.count(429) == 125
    await flush_all(servers, key)
    public_id, _ = await key_row(url, key)
    n = await query(url, "SELECT count(*) FROM generations WHERE key_id = $1", public_id)
    assert n[0][0] == 25


async def test_budget_holds_across_replicas_without_double_charges(cluster):
    servers, url = cluster
    key = servers[1].create_key("budget", limit=0.0005)
    results = await load(servers, key, 240, 40)
    statuses = [s for s, _, _ in results]
    ok = [(gid, cost) for s, gid, cost in results if s == 200]
    assert statuses.count(402) > 0, "the limit never bound: the test proves nothing"
    assert set(statuses) <= {200, 402}, statuses
    await flush_all(servers, key)
    public_id, row = await key_row(url, key)
    assert row["usage_pico"] <= row["limit_pico"]
    assert row["reserved_pico"] == 0  # every hold was released
    recs = await query(url, "SELECT id, cost_pico FROM generations WHERE key_id = $1", public_id)
    assert sorted(r["id"] for r in recs) == sorted(gid for gid, _ in ok)  # one record per answer, no more
    assert row["usage_pico"] == sum(r["cost_pico"] for r in recs)  # charged once each
    by_id = {r["id"]: r["cost_pico"] for r in recs}
    for gid, cost in ok:
        assert by_id[gid] / 1e12 == pytest.approx(cost, rel=1e-9)
    account = await query(url, "SELECT usage_pico, reserved_pico FROM account")
    total = await query(url, "SELECT COALESCE(SUM(cost_pico), 0)::bigint FROM generations")
    assert account[0]["usage_pico"] == total[0][0] and account[0]["reserved_pico"] == 0


async def test_a_response_served_by_one_replica_is_continued_by_the_other(cluster, fake):
    servers, _ = cluster
    key = servers[0].create_key("responses")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as c:
        first = await c.post(f"{servers[0].url}/v1/responses", headers=headers,
                             json={"model": MODEL, "input": "My name is Ann."})
        assert first.status_code == 200, first.text
        fake.reset()
        second = await c.post(f"{servers[1].url}/v1/responses", headers=headers,
                              json={"model": MODEL, "input": "And mine?", "previous_response_id": first.json()["id"]})
        assert second.status_code == 200, second.text
    assert fake.requests_for("openai")[-1].body["messages"] == [
        {"role": "user", "content": "My name is Ann."}, {"role": "assistant", "content": "You said: My name is Ann."},
        {"role": "user", "content": "And mine?"}]


async def test_sigterm_mid_load_loses_nothing(cluster, fake):
    servers, url = cluster
    fake.knobs("openai").latency = 0.05  # keep requests in flight when the signal comes
    fake.knobs("openai").event_delay = 0.01
    key = servers[0].create_key("sigterm", limit=100)
    done = 0
    first_wave = asyncio.Event()

    async def counted(client, i):
        nonlocal done
        res = await one(client, servers[i % 2].url, key, i, stream=(i % 3 == 0))
        done += 1
        if done >= 60:
            first_wave.set()
        return res

    async def run_load():
        sem = asyncio.Semaphore(24)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            async def run(i):
                async with sem:
                    return await counted(client, i)

            return await asyncio.gather(*(run(i) for i in range(300)))

    task = asyncio.create_task(run_load())
    await first_wave.wait()
    code = await asyncio.to_thread(servers[1].stop, signal.SIGTERM)
    results = await task
    # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is a clean exit too (the ledger says)
    assert code in (0, -signal.SIGTERM), servers[1].log_path.read_text()[-3000:]
    answered = [(gid, cost) for s, gid, cost in results if s == 200]
    failed = [s for s, _, _ in results if s != 200]
    assert len(answered) > 100 and set(failed) <= {0}  # only requests the stopped replica could not take
    await flush_all(servers, key)
    public_id, row = await key_row(url, key)
    recs = await query(url, "SELECT id, cost_pico FROM generations WHERE key_id = $1", public_id)
    by_id = {r["id"]: r["cost_pico"] for r in recs}
    missing = [gid for gid, _ in answered if gid not in by_id]
    assert not missing, f"{len(missing)} answered requests have no record"
    for gid, cost in answered:
        assert by_id[gid] / 1e12 == pytest.approx(cost, rel=1e-9)
    assert row["usage_pico"] == sum(by_id.values())  # each record charged exactly once
    assert row["reserved_pico"] == 0
    servers[1].start()  # the fixture's other tests (and its teardown) expect both replicas


async def test_tpm_holds_across_replicas(cluster):
    """Tokens counted by either replica count for both: requests alternate between them, and once the key's
    tokens in the window reach its tpm, both refuse (429, the tokens named) — the answer that crossed the line
    completes, the next ones wait."""
    import redis.asyncio as aioredis

    servers, _ = cluster
    tpm = 300
    key = servers[0].create_key("tpm", tpm=tpm)
    tokens = aioredis.from_url(REDIS_URL)
    bucket = f"metarouter:rl:{{{key.split('-')[2]}}}:tok"
    counted, statuses = 0, []
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(40):
                used_before = counted
                r = await client.post(f"{servers[i % 2].url}/api/v1/chat/completions",
                                      headers={"Authorization": f"Bearer {key}"},
                                      json={"model": MODEL, "max_tokens": 20,
                                            "messages": [{"role": "user", "content": f"request number {i}"}]})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert used_before >= tpm and r.json()["error"]["metadata"]["kind"] == "tokens", r.text
                    assert int(r.headers["Retry-After"]) >= 1
                    continue
                assert r.status_code == 200 and used_before < tpm, (used_before, r.text)
                counted += r.json()["usage"]["total_tokens"]
                # tokens are added after the answer, in the background: wait until Redis has them
                for _ in range(200):
                    if sum(int(v) for v in (await tokens.hgetall(bucket)).values()) == counted:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"the replica never counted the tokens: {await tokens.hgetall(bucket)}")
    finally:
        await tokens.aclose()
    answered = statuses.count(200)
    assert statuses == [200] * answered + [429] * (40 - answered)
    assert 0 < answered < 40 and counted >= tpm
