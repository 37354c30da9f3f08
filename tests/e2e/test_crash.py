"""kill -9 under load, on SQLite and on PostgreSQL: every answer a client received is recorded and charged, the key's
usage is exactly the sum of its records, and the dead process's holds are given back when the gateway restarts."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sqlite3
import sys

import asyncpg
import httpx
import orjson
import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess
from tests.conftest import gateway_config
from tests.store.conftest import NO_SERVICES, PG_URL, _pg, with_search_path

MODEL = "openai/gpt-4o-mini-2024-07-18"
CLIENTS = 32
ANSWERS_BEFORE_KILL = 150  # a few seconds of load


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """(database_url or None for the default SQLite file, a function reading (usage, reserved) and records)."""
    if request.param == "sqlite":
        path = tmp_path / "gw" / "metarouter.db"

        def read(public_id):
            conn = sqlite3.connect(path)
            try:
                k = conn.execute("SELECT usage_pico, reserved_pico FROM keys WHERE public_id = ?", (public_id,)).fetchone()
                rows = conn.execute("SELECT id, cost_pico FROM generations WHERE key_id = ?", (public_id,)).fetchall()
                return tuple(k), dict(rows)
            finally:
                conn.close()

        yield None, read
        return
    if NO_SERVICES:
        pytest.skip("METAROUTER_TEST_NO_SERVICES=1")
    schema = f"mr_crash_{secrets.token_hex(6)}"
    _pg(f"CREATE SCHEMA {schema}")
    url = with_search_path(PG_URL, schema)

    def read(public_id):
        async def run():
            conn = await asyncpg.connect(url)
            try:
                k = await conn.fetchrow("SELECT usage_pico, reserved_pico FROM keys WHERE public_id = $1", public_id)
                rows = await conn.fetch("SELECT id, cost_pico FROM generations WHERE key_id = $1", public_id)
                return (k[0], k[1]), {r[0]: r[1] for r in rows}
            finally:
                await conn.close()

        return asyncio.run(run())

    try:
        yield url, read
    finally:
        _pg(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def _one(client: httpx.AsyncClient, key: str, i: int) -> tuple[str, int] | None:
    """One request, read to its end: (generation id, cost in picodollars) if the answer arrived whole."""
    body = {"model": MODEL, "stream": i % 2 == 0, "messages": [{"role": "user", "content": f"request {i}"}]}
    h = {"Authorization": f"Bearer {key}"}
    if not body["stream"]:
        r = await client.post("/api/v1/chat/completions", json=body, headers=h)
        if r.status_code != 200:
            return None
        j = r.json()
        return j["id"], round(j["usage"]["cost"] * 10**12)
    gen_id = cost = None
    async with client.stream("POST", "/api/v1/chat/completions", json=body, headers=h) as r:
        if r.status_code != 200:
            return None
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                return (gen_id, cost) if gen_id and cost is not None else None
            if line.startswith("data: "):
                chunk = orjson.loads(line[6:])
                gen_id = chunk.get("id") or gen_id
                if chunk.get("usage"):
                    cost = round(chunk["usage"]["cost"] * 10**12)
    return None  # cut off before [DONE]


async def _load(url: str, key: str, kill) -> tuple[dict[str, int], int]:
    """CLIENTS clients in a loop; ``kill()`` once ANSWERS_BEFORE_KILL answers are in. (answers received whole,
    requests cut off)"""
    answers: dict[str, int] = {}
    cut = 0
    stop = asyncio.Event()
    enough = asyncio.Event()

    async def client_loop(c: int) -> None:
        nonlocal cut
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            i = c
            while not stop.is_set():
                try:
                    got = await _one(client, key, i)
                except httpx.HTTPError:
                    cut += 1
                    return
                if got is not None:
                    answers[got[0]] = got[1]
                    if len(answers) >= ANSWERS_BEFORE_KILL:
                        enough.set()
                i += CLIENTS

    tasks = [asyncio.create_task(client_loop(c)) for c in range(CLIENTS)]
    await asyncio.wait_for(enough.wait(), 120)
    await asyncio.get_running_loop().run_in_executor(None, kill)
    stop.set()
    await asyncio.gather(*tasks)
    return answers, cut


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and /proc")
def test_kill_9_under_load_loses_no_answer(fake, tmp_path, database):
    db_url, read = database
    fake.knobs().latency = 0.01  # requests in flight at every moment
    fake.knobs().event_delay = 0.002
    config = gateway_config(fake, **({"database_url": db_url} if db_url else {}))
    gw = GatewayProcess(config, tmp_path / "gw", env=FAKE_KEYS_ENV)
    key = gw.create_key("crash", limit=100)
    public_id = key.split("-")[2]
    gw.start()
    try:
        answers, cut = asyncio.run(_load(gw.url, key, lambda: gw.stop(signal.SIGKILL)))
        assert cut > 0  # the kill cut requests off
        gw.start()  # the restarted gateway gives back the holds the dead one left
        (usage, reserved), records = read(public_id)
        assert reserved == 0
    finally:
        gw.stop()
    missing = set(answers) - set(records)
    assert not missing, f"{len(missing)} of {len(answers)} answers were never recorded"
    assert all(records[g] == c for g, c in answers.items())  # each charged what its client was told
    assert usage == sum(records.values())  # the key's usage is exactly its records
    # A record may exist for an answer whose last bytes the kill stopped (written, then killed before sending):
    # at most one per request that was cut off.
    assert len(records) - len(answers) <= cut
    print(f"\n{db_url and 'postgres' or 'sqlite'}: answered {len(answers)}, recorded {len(records)}, cut {cut}, "
          f"usage {usage} pico = sum of records")
