"""Budgets against upstreams that misreport or misbehave: no key is charged beyond its limit or an answer beyond
its hold, every answer is capped (tokens and bytes, gzip included), and a request without ``max_tokens`` holds a
realistic amount, so that a small budget serves concurrent requests until it is spent."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import orjson
import pytest

from metarouter.gateway.accounting import EXPECTED_OUTPUT_TOKENS, prompt_token_bound
from metarouter.gateway.pipeline import CUT_CHARS_PER_TOKEN
from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess
from metarouter.testing.hostile_upstream import endless_stream, gzip_bomb, inflating_usage, one_line_stream
from tests.conftest import gateway_config

MODEL = "openai/gpt-4o-mini-2024-07-18"  # $0.15 / $0.60 per 1M tokens: 150,000 / 600,000 picodollars a token
IN_PICO, OUT_PICO = 150_000, 600_000
MAX_OUTPUT = 16_384


@pytest.fixture(scope="module")
def gateway(fake, tmp_path_factory):
    """A gateway of its own: requests queued behind a small budget's holds wait as long as a slow machine needs."""
    with GatewayProcess(gateway_config(fake, budget_wait=300), tmp_path_factory.mktemp("budgets"), env=FAKE_KEYS_ENV) as gw:
        yield gw


@pytest.fixture
def upstream(fake):
    """Swap the fake's OpenAI handler for one test."""
    saved = dict(fake.handlers)
    yield lambda handler: fake.handlers.__setitem__("openai", handler)
    fake.handlers.clear()
    fake.handlers.update(saved)


def ledger(gateway, public_id: str) -> tuple[tuple[int, int], list[dict]]:
    """The key's (usage, reserved) and its generation records, read from the gateway's database."""
    conn = sqlite3.connect(gateway.data_dir / "metarouter.db")
    conn.row_factory = sqlite3.Row
    try:
        k = conn.execute("SELECT usage_pico, reserved_pico FROM keys WHERE public_id = ?", (public_id,)).fetchone()
        rows = [dict(r) for r in conn.execute("SELECT * FROM generations WHERE key_id = ?", (public_id,))]
        return (k[0], k[1]), rows
    finally:
        conn.close()


def public(key: str) -> str:
    return key.split("-")[2]


def rss_kb(gateway) -> int:
    for line in open(f"/proc/{gateway.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def send(client: httpx.AsyncClient, key: str, body: dict) -> tuple[int, dict]:
    """One request; a stream is read to its end: (status, {"id", "cost", "finish", "content", "bytes", "error"})."""
    h = {"Authorization": f"Bearer {key}"}
    if not body.get("stream"):
        r = await client.post("/api/v1/chat/completions", json=body, headers=h)
        if r.status_code != 200:
            return r.status_code, {"bytes": len(r.content)}
        j = r.json()
        return 200, {"id": j["id"], "cost": j["usage"]["cost"], "finish": j["choices"][0]["finish_reason"],
                     "content": j["choices"][0]["message"]["content"], "bytes": len(r.content)}
    out = {"content": "", "bytes": 0, "finish": None, "error": None, "done": False}
    async with client.stream("POST", "/api/v1/chat/completions", json=body, headers=h) as r:
        if r.status_code != 200:
            out["bytes"] = len(await r.aread())
            return r.status_code, out
        async for line in r.aiter_lines():
            out["bytes"] += len(line) + 1
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["done"] = True
                continue
            chunk = orjson.loads(line[6:])
            out["id"] = chunk.get("id")
            out["error"] = out["error"] or chunk.get("error")
            for c in chunk.get("choices") or ():
                out["content"] += (c.get("delta") or {}).get("content") or ""
                out["finish"] = c.get("finish_reason") or out["finish"]
            if chunk.get("usage"):
                out["cost"] = chunk["usage"]["cost"]
    return 200, out


def answered(results: list[tuple[int, dict]]) -> list[dict]:
    """The answers (a stream that committed and then was refused ends in an error chunk: not an answer)."""
    return [r for s, r in results if s == 200 and not r.get("error")]


def refused(results: list[tuple[int, dict]]) -> int:
    return sum(1 for s, r in results if s == 402 or (s == 200 and (r.get("error") or {}).get("code") == 402))


def burst(gateway, key: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    async def run():
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60,
                                     limits=httpx.Limits(max_connections=len(bodies))) as client:
            return await asyncio.gather(*(send(client, key, b) for b in bodies))

    return asyncio.run(run())


def test_an_upstream_that_over_reports_usage_never_overspends_the_key(gateway, upstream):
    upstream(inflating_usage(20_000))  # 20,000 prompt tokens for "hi": $0.003 a request on a $0.001 key
    key = gateway.create_key("tiny", limit=0.001)
    bodies = [{"model": MODEL, "stream": i % 2 == 1, "messages": [{"role": "user", "content": "hi"}],
               **({"max_tokens": 20} if i % 3 == 0 else {})} for i in range(40)]
    results = burst(gateway, key, bodies)
    answers = answered(results)
    assert len(answers) + refused(results) == len(results)
    (usage, _), rows = ledger(gateway, public(key))
    assert usage <= 10**9  # never past the limit
    assert answers and len(rows) == len(answers)
    bound = prompt_token_bound(bodies[1])
    for row in rows:  # each charged exactly its hold; the upstream's claim beyond it is recorded as overage
        held_tokens = row["cost_pico"] - bound * IN_PICO
        assert held_tokens % OUT_PICO == 0 and held_tokens // OUT_PICO in (20, EXPECTED_OUTPUT_TOKENS) or (
            row["cost_pico"] + sum(x["cost_pico"] for x in rows if x is not row) == usage)
        assert row["overage_pico"] == 20_000 * IN_PICO + row["completion_tokens"] * OUT_PICO - row["cost_pico"] > 0
    assert usage == sum(r["cost_pico"] for r in rows)
    assert sorted(round(r["cost"] * 10**12) for r in answers) == sorted(r["cost_pico"] for r in rows)
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert "metarouter_overage_usd_total{" in metrics
    gen = httpx.get(f"{gateway.url}/api/v1/generation", params={"id": rows[0]["id"]},
                    headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert gen["overage"] == pytest.approx(rows[0]["overage_pico"] / 10**12)


def test_without_max_tokens_concurrent_requests_can_spend_most_of_a_small_budget(gateway, upstream):
    # each answer costs ~$0.0000093 (10 prompt + 13 completion tokens): 200 of them cost more than the $0.001 limit
    key = gateway.create_key("tiny", limit=0.001)
    text = "tell me about budgets and holds, briefly"
    bodies = [{"model": MODEL, "stream": i % 2 == 1, "messages": [{"role": "user", "content": text}]} for i in range(200)]
    results = burst(gateway, key, bodies)
    answers = answered(results)
    assert len(answers) + refused(results) == len(results)
    (usage, _), rows = ledger(gateway, public(key))
    assert usage <= 10**9
    assert usage >= 0.8 * 10**9, f"only {usage / 10**9:.0%} of the budget used: {len(answers)} answered"
    assert usage == sum(r["cost_pico"] for r in rows) and len(rows) == len(answers)


def test_a_stream_is_cut_where_its_hold_ends(gateway, fake, upstream):
    upstream(endless_stream())  # ignores max_tokens, never ends, reports no usage
    key = gateway.create_key("small", limit=0.001)  # affords ~1,600 output tokens: without max_tokens 512 are held
    for extra, allowed in (({"max_tokens": 50}, 50), ({}, EXPECTED_OUTPUT_TOKENS)):
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "go on"}], **extra}
        status, out = burst(gateway, key, [body])[0]
        assert status == 200 and out["done"] and out["finish"] == "length"
        assert len(out["content"]) <= CUT_CHARS_PER_TOKEN * allowed
        assert fake.requests_for("openai")[-1].body["max_tokens"] == allowed  # and the upstream was told
        (usage, _), rows = ledger(gateway, public(key))
        row = max(rows, key=lambda r: r["created_at"])
        assert row["finish_reason"] == "length"
        assert row["cost_pico"] <= prompt_token_bound(body) * IN_PICO + allowed * OUT_PICO  # at most the hold
    assert usage <= 10**9


def test_one_100_mb_sse_line_is_refused_with_bounded_memory(gateway, upstream):
    upstream(one_line_stream(100 * 1024 * 1024))
    key = gateway.create_key("small", limit=0.01)
    before = rss_kb(gateway)
    status, out = burst(gateway, key, [{"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}])[0]
    # a clean end either way: a 502 before the stream committed, or an error chunk and [DONE] after
    assert status == 502 or (status == 200 and out["error"] and out["done"])
    assert out["bytes"] < 64 * 1024
    assert rss_kb(gateway) - before < 50 * 1024
    (usage, _), _ = ledger(gateway, public(key))
    assert usage <= 10**10


def test_a_gzip_bomb_is_refused_with_bounded_memory(gateway, upstream):
    upstream(gzip_bomb(256 * 1024 * 1024))  # 256 MiB of JSON in under 1 MB of gzip
    key = gateway.create_key("small", limit=0.01)
    before = rss_kb(gateway)
    status, out = burst(gateway, key, [{"model": MODEL, "messages": [{"role": "user", "content": "x"}]}])[0]
    assert status == 502
    assert rss_kb(gateway) - before < 50 * 1024
    (usage, _), rows = ledger(gateway, public(key))
    assert usage == 0 and rows == []


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_beyond_any_integer_column_is_clamped_to_the_model(gateway, fake, stream):
    key = gateway.create_key("limited", limit=1)
    for n in (2**63, 2**64 - 1, 10**6):
        status, out = burst(gateway, key, [{"model": MODEL, "stream": stream, "max_tokens": n,
                                            "messages": [{"role": "user", "content": "x"}]}])[0]
        assert status == 200, out
        assert fake.requests_for("openai")[-1].body["max_tokens"] == MAX_OUTPUT
    r = httpx.post(f"{gateway.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   content=b'{"model": "%s", "max_tokens": 18446744073709551616, "messages": [{"role": "user", '
                           b'"content": "x"}]}' % MODEL.encode())
    assert r.status_code == 400 and "max_tokens" in r.text
