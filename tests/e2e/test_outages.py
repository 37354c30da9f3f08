"""PostgreSQL and Redis going away under load and coming back, and the tokens-per-minute limit across replicas.

PostgreSQL is reached through a TCP proxy the test cuts (the shared server itself is never stopped); Redis is a
throwaway ``redis-server`` on its own port, killed and started again. What must hold (docs/cluster.md):

- nothing answered is lost: every 200 has its record, charged once, once the database is back;
- what cannot be served fails clearly (a 503 that says the store is unreachable), never a 500 or a hang;
- Redis away: requests are admitted without limits (fail open), and the limits hold again once it is back;
- the service recovers by itself, with no restart.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse

import httpx
import pytest

from metarouter.store.postgres import PostgresStore
from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess, free_port
from metarouter.testing.tcp_proxy import TcpProxy

from ..conftest import gateway_config
from .test_cluster import PG_URL, _pg, _schema_url, one, query

MODEL = "openai/gpt-4o-mini-2024-07-18"

pytestmark = [
    pytest.mark.skipif(os.environ.get("METAROUTER_TEST_NO_SERVICES") == "1", reason="METAROUTER_TEST_NO_SERVICES=1"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


class ThrowawayRedis:
    """A ``redis-server`` of our own (no persistence): killed, it comes back empty, as a restarted cache would."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "ThrowawayRedis":
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def services(fake, tmp_path_factory):
    """A fresh schema behind a proxy, a throwaway Redis, and one gateway using both."""
    schema = f"mr_outage_{secrets.token_hex(6)}"
    asyncio.run(_pg(f"CREATE SCHEMA {schema}"))
    pg = urllib.parse.urlsplit(PG_URL)
    proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432).start()
    direct = _schema_url(schema)
    proxied = urllib.parse.urlunsplit(urllib.parse.urlsplit(direct)._replace(
        netloc=f"{pg.username + '@' if pg.username else ''}127.0.0.1:{proxy.port}"))
    redis = ThrowawayRedis().start()
    redis_proxy = TcpProxy("127.0.0.1", redis.port).start()  # to stall it
    env = {**FAKE_KEYS_ENV, "METAROUTER_DATABASE_URL": proxied,
           "METAROUTER_REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/0"}
    gw = GatewayProcess(gateway_config(fake), tmp_path_factory.mktemp("outage"), env=env)
    gw.redis_proxy = redis_proxy
    try:
        gw.start()
        yield gw, proxy, redis, direct
    finally:
        gw.stop()
        redis.kill()
        redis_proxy.stop()
        proxy.stop()
        asyncio.run(_pg(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


async def load_while(gw, keys: list[str], n: int, concurrency: int, during) -> list[tuple[str, int, str | None, float | None]]:
    """``n`` requests (every third streamed) spread over ``keys``; ``during(done)`` runs in a thread once a third
    of them are done, while the rest go on. Returns (key, status, generation id, cost) per request."""
    done = 0
    third = asyncio.Event()
    sem = asyncio.Semaphore(concurrency)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        async def run(i: int):
            nonlocal done
            key = keys[i % len(keys)]
            async with sem:
                status, gid, cost = await one(client, gw.url, key, i, stream=(i % 3 == 0))
            done += 1
            if done >= n // 3:
                third.set()
            return key, status, gid, cost

        task = asyncio.gather(*(run(i) for i in range(n)))
        await third.wait()
        await asyncio.to_thread(during)
        return list(await task)


def chat(gw, key: str, model: str = MODEL, timeout: float = 30, **extra) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, **extra})


async def records_of(url: str, key: str) -> dict[str, int]:
    rows = await query(url, "SELECT id, cost_pico FROM generations WHERE key_id = $1", key.split("-")[2])
    return {r["id"]: r["cost_pico"] for r in rows}


async def key_money(url: str, key: str):
    rows = await query(url, "SELECT usage_pico, reserved_pico FROM keys WHERE public_id = $1", key.split("-")[2])
    return rows[0]["usage_pico"], rows[0]["reserved_pico"]


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


async def test_postgres_away_mid_load_and_back(services, fake):
    gw, proxy, _, url = services
    free = gw.create_key("pg-free")  # no limit: a request needs no database round trip
    # near its limit (a few dozen requests' worth of budget from it) a key is held per request: needs the database
    capped = gw.create_key("pg-capped", limit=0.001)
    # far from its limit a key is held from its replica's budget lease: like the unlimited key, its requests need
    # the database only for their records (and, once a second, to look at the key again)
    leased = gw.create_key("pg-leased", limit=100)
    for key in (free, capped, leased):
        assert chat(gw, key).status_code == 200  # known to the gateway (its cache) before the outage
    fake.knobs("openai").latency = 0.02  # keep requests in flight when the connection goes
    outage: dict[str, httpx.Response] = {}

    def go_away_and_back():
        proxy.cut()
        # the unlimited key needs no database to be served, but its answer waits until its record is durable
        # (up to 30 s), so it is awaited across the database's return
        free_call = threading.Thread(target=lambda: outage.__setitem__("free", chat(gw, free, timeout=60)))
        free_call.start()
        try:
            outage["capped"] = chat(gw, capped)
            time.sleep(1.0)  # more load meets the outage
        finally:
            proxy.restore()
            free_call.join()

    try:
        results = await load_while(gw, [free, capped, leased], 240, 16, go_away_and_back)
    finally:
        fake.knobs("openai").latency = 0
    # during the outage: the unlimited key is still served (once its record is written); the capped one is refused
    assert outage["free"].status_code == 200, outage["free"].text
    assert outage["capped"].status_code == 503, outage["capped"].text
    assert "database" in outage["capped"].json()["error"]["message"].lower()
    assert "Retry-After" in outage["capped"].headers
    statuses = {s for _, s, _, _ in results}
    assert statuses <= {200, 503}, statuses
    # back by itself: the capped key is answered again, and every answer of the outage is written
    wait_for(lambda: chat(gw, capped).status_code == 200, "the capped key is served again")
    assert httpx.get(f"{gw.url}/api/v1/key", headers={"Authorization": f"Bearer {free}"}).status_code == 200  # flush
    for key in (free, capped, leased):
        answered = {gid: cost for k, s, gid, cost in results if k == key and s == 200}
        answered.update({outage["free"].json()["id"]: outage["free"].json()["usage"]["cost"]} if key == free else {})
        recorded = await records_of(url, key)
        missing = set(answered) - set(recorded)
        assert not missing, f"{len(missing)} answered requests of {key[:12]} have no record"
        for gid, cost in answered.items():
            assert recorded[gid] / 1e12 == pytest.approx(cost, rel=1e-9)
        usage, reserved = await key_money(url, key)
        assert usage == sum(recorded.values())  # each record charged once
        # A hold whose COMMIT went through while its acknowledgement was lost with the connection is still held:
        # it is a row of `reservations` under its replica's lease (given back once that lease runs out), never a
        # phantom.
        held = await query(url, "SELECT COALESCE(SUM(amount_pico), 0)::bigint AS n FROM reservations WHERE key_id = $1",
                           key.split("-")[2])
        assert reserved == held[0]["n"]
    store = PostgresStore(url)
    await store.open()
    try:  # the gateway's lease runs out (as when it stops renewing it): another replica gives its holds back
        await query(url, "UPDATE instances SET lease_until = now() - interval '1 second' WHERE holder <> $1",
                    store.holder)
        await store.reclaim_reservations()
    finally:
        await store.close()
    assert (await key_money(url, capped))[1] == 0
    assert (await key_money(url, leased))[1] == 0  # its lease was a hold of that replica too


async def test_redis_away_mid_load_and_back(services, fake):
    gw, _, redis, url = services
    key = gw.create_key("redis", rpm=400)
    warm = [chat(gw, key).status_code for _ in range(10)]  # counted in Redis
    assert warm == [200] * 10

    outage: list[httpx.Response] = []

    def go_away_and_back():
        redis.kill()
        # `auto` keeps its sticky sessions in the same Redis: routed afresh, not refused
        outage.extend([chat(gw, key, "auto"), chat(gw, key, "auto", stream=True), chat(gw, key)])
        time.sleep(1.0)
        redis.start()  # empty: the window starts again

    results = await load_while(gw, [key], 150, 16, go_away_and_back)
    statuses = [s for _, s, _, _ in results]
    assert set(statuses) == {200}, statuses  # fail open while it is away (and 400 rpm never binds here)
    assert [r.status_code for r in outage] == [200, 200, 200], [r.text for r in outage]
    # the limit holds again: a key with rpm 15 gets exactly 15 answers in a burst of 25
    tight = gw.create_key("redis-tight", rpm=15)
    burst = [chat(gw, tight).status_code for _ in range(25)]
    assert burst.count(200) == 15 and burst.count(429) == 10, burst
    assert httpx.get(f"{gw.url}/api/v1/key", headers={"Authorization": f"Bearer {key}"}).status_code == 200  # flush
    answered = {gid for _, s, gid, _ in results if s == 200}
    recorded = await records_of(url, key)
    assert answered <= set(recorded) and len(recorded) == len(answered) + 10 + len(outage)


async def test_a_stalled_redis_costs_a_request_a_moment_not_seconds(services, fake):
    """Redis that takes connections and answers nothing: requests go on without it after a short timeout (redis-py's
    own default would hold each one 5 s and more, past this client's patience)."""
    gw, _, _, _ = services
    key = gw.create_key("redis-stall", rpm=100)
    assert chat(gw, key).status_code == 200
    gw.redis_proxy.stall()
    try:
        for model in (MODEL, "auto"):
            r = chat(gw, key, model, timeout=4)
            assert r.status_code == 200, r.text
    finally:
        gw.redis_proxy.resume()
    tight = gw.create_key("redis-tight-again", rpm=5)
    burst = [chat(gw, tight).status_code for _ in range(8)]
    assert burst.count(200) == 5 and burst.count(429) == 3, burst
