"""Fault injection through the fake upstream: retries, circuit breaker, timeouts, resets — ledger checked after."""

from __future__ import annotations

import time

import httpx
import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config

MODEL = "openai/gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    cfg = gateway_config(fake, resilience={"retries": 2, "backoff_base": 0.01, "backoff_max": 0.05,
                                           "breaker_failures": 3, "breaker_cooldown": 1.0},
                         timeouts={"connect": 2, "first_byte": 0.5, "total": 10})
    with GatewayProcess(cfg, tmp_path_factory.mktemp("resilience"), env=FAKE_KEYS_ENV) as g:
        g.api_key = g.create_key("resilience")
        yield g


def call(gw, model=MODEL, **kw):
    return httpx.post(f"{gw.url}/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {gw.api_key}", "X-OpenRouter-Metadata": "enabled"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}, timeout=30)


def ledger(gw):
    k = httpx.get(f"{gw.url}/api/v1/key", headers={"Authorization": f"Bearer {gw.api_key}"}).json()["data"]
    rows = httpx.get(f"{gw.url}/api/v1/activity", headers={"Authorization": f"Bearer {gw.api_key}"}).json()["data"]
    return k["usage"], sum(r["requests"] for r in rows), sum(r["usage"] for r in rows)


def test_5xx_burst_is_retried_and_charged_once(gw, fake):
    usage0, count0, _ = ledger(gw)
    fake.fail("openai", status=502, times=2)
    r = call(gw)
    assert r.status_code == 200, r.text
    statuses = [a["status"] for a in r.json()["openrouter_metadata"]["attempts"]]
    assert statuses == [502, 502, 200]
    usage1, count1, spent = ledger(gw)
    assert count1 == count0 + 1
    assert usage1 - usage0 == pytest.approx(r.json()["usage"]["cost"], rel=1e-9)


def test_connection_reset_and_timeout_are_retried(gw, fake):
    fake.fail("openai", status=None, times=1)  # connection dropped without an answer
    r = call(gw)
    assert r.status_code == 200
    assert [a["status"] for a in r.json()["openrouter_metadata"]["attempts"]] == [502, 200]
    fake.knobs("mistral").latency = 1.0  # longer than first_byte (0.5 s): every try times out
    r = call(gw, "mistralai/mistral-nemo")
    assert r.status_code == 408 and "timed out" in r.json()["error"]["message"]
    assert [a["status"] for a in r.json()["error"]["metadata"]["attempts"]] == [408, 408, 408]


def test_circuit_opens_refuses_fast_then_recovers(gw, fake):
    fake.fail("together", status=503, times=3)
    r = call(gw, "meta-llama/llama-3.1-70b-instruct")  # 3 tries, 3 failures: the circuit opens
    assert r.status_code == 503
    n = len(fake.requests_for("together"))
    r = call(gw, "meta-llama/llama-3.1-70b-instruct")
    assert r.status_code == 503 and "circuit open" in r.json()["error"]["message"]
    assert "Retry-After" in r.headers
    assert len(fake.requests_for("together")) == n  # not sent while open
    # a fallback list skips the open provider and answers from the next
    r = call(gw, "meta-llama/llama-3.1-70b-instruct", models=[MODEL])
    assert r.status_code == 200 and r.json()["model"] == MODEL
    time.sleep(1.1)  # cool-down: one probe goes through and closes the circuit
    r = call(gw, "meta-llama/llama-3.1-70b-instruct")
    assert r.status_code == 200


def test_stream_that_stops_midway_is_recorded_once(gw, fake):
    usage0, count0, _ = ledger(gw)
    fake.knobs("openai").break_stream_after = 2
    with httpx.stream("POST", f"{gw.url}/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {gw.api_key}"},
                      json={"model": MODEL, "stream": True,
                            "messages": [{"role": "user", "content": "a b c d e f"}]}) as r:
        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    fake.knobs("openai").break_stream_after = None
    assert lines[-1] == "data: [DONE]" and '"finish_reason":"error"' in lines[-3]
    usage1, count1, _ = ledger(gw)
    assert count1 == count0 + 1 and usage1 > usage0


def test_client_disconnect_mid_stream_is_recorded_and_cancels_upstream(gw, fake):
    _, count0, _ = ledger(gw)
    fake.knobs("openai").event_delay = 0.2
    with httpx.stream("POST", f"{gw.url}/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {gw.api_key}"},
                      json={"model": MODEL, "stream": True,
                            "messages": [{"role": "user", "content": " ".join(["word"] * 40)}]}) as r:
        for line in r.iter_lines():
            if '"content":"You"' in line:
                break  # leave after the first token
    fake.knobs("openai").event_delay = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, count1, _ = ledger(gw)
        if count1 == count0 + 1:
            break
        time.sleep(0.1)
    assert count1 == count0 + 1
    recent = httpx.get(f"{gw.url}/api/v1/activity/generations", params={"limit": 1},
                       headers={"Authorization": f"Bearer {gw.api_key}"}).json()["data"][0]
    assert recent["status"] == "cancelled" and recent["cancelled"] is True and recent["total_cost"] > 0
