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


LLAMA_70B, LLAMA_405B = "meta-llama/llama-3.1-70b-instruct", "meta-llama/llama-3.1-405b-instruct"  # both "together"


def breaker_state(gw, model: str) -> float | None:
    from .test_metrics import parse

    _, samples = parse(httpx.get(gw.url + "/metrics").text)
    return next((v for n, lab, v in samples if n == "metarouter_circuit_breaker_state" and lab["model"] == model), None)


def test_circuit_opens_refuses_fast_then_recovers(gw, fake):
    # three failed requests in a row (3 tries each) open the circuit of the model (breaker_failures: 3)
    for i in range(3):
        fake.fail("together", status=503, times=3)
        r = call(gw, LLAMA_70B)
        assert r.status_code == 503 and "circuit open" not in r.json()["error"]["message"], (i, r.text)
    n = len(fake.requests_for("together"))
    r = call(gw, LLAMA_70B)
    assert r.status_code == 503 and "circuit open" in r.json()["error"]["message"]
    assert "fake failure 503" in r.json()["error"]["message"]  # names the upstream error that opened it
    assert r.json()["error"]["metadata"]["last_error"]["code"] == 503
    assert "Retry-After" in r.headers
    assert len(fake.requests_for("together")) == n  # not sent while open
    # a fallback list skips the open model and answers from the next
    r = call(gw, LLAMA_70B, models=[MODEL])
    assert r.status_code == 200 and r.json()["model"] == MODEL
    time.sleep(1.1)  # cool-down: one probe goes through and closes the circuit
    r = call(gw, LLAMA_70B)
    assert r.status_code == 200


def test_one_failing_request_does_not_open_the_circuit_for_others(gw, fake):
    """A request and its retries count once; an SDK retrying a failing request twice (3 × 3 tries) still leaves
    the circuit closed for the next one, and the client sees the upstream's own error every time."""
    for _ in range(2):  # the request and one SDK retry of it: 6 failed tries, 2 failed requests (breaker: 3)
        fake.fail("together", status=500, times=3)
        r = call(gw, LLAMA_70B)
        assert r.status_code == 502 and "fake failure 500" in r.json()["error"]["message"], r.text
        assert "circuit" not in r.json()["error"]["message"]
    assert breaker_state(gw, LLAMA_70B) == 0
    r = call(gw, LLAMA_70B)  # the upstream is healthy again: answered, not refused
    assert r.status_code == 200, r.text


def test_an_open_circuit_of_one_model_leaves_its_siblings_alone(gw, fake):
    for _ in range(3):
        fake.fail("together", status=503, times=3)
        assert call(gw, LLAMA_70B).status_code == 503
    assert breaker_state(gw, LLAMA_70B) == 2
    r = call(gw, LLAMA_405B)  # the same provider, another model: still served
    assert r.status_code == 200, r.text
    assert breaker_state(gw, LLAMA_405B) == 0
    time.sleep(1.1)
    assert call(gw, LLAMA_70B).status_code == 200  # and the open one closes after its cool-down


@pytest.fixture(scope="module")
def slow_gw(fake, tmp_path_factory):
    """Patient with a slow first byte (10 s), but 3 s for a whole request; one failed request opens a circuit."""
    cfg = gateway_config(fake, resilience={"retries": 2, "backoff_base": 0.01, "backoff_max": 0.05,
                                           "breaker_failures": 1, "breaker_cooldown": 1.0},
                         timeouts={"connect": 2, "first_byte": 10, "total": 3})
    with GatewayProcess(cfg, tmp_path_factory.mktemp("resilience-slow"), env=FAKE_KEYS_ENV) as g:
        g.api_key = g.create_key("slow")
        yield g


def test_a_cancelled_probe_does_not_leave_the_circuit_half_open(slow_gw, fake):
    """Open the circuit, wait out the cool-down, send a probe the client gives up on: the next requests must be
    answered again (within a cool-down of a healthy upstream), not refused with "circuit open for another 0 s"."""
    gw = slow_gw
    fake.fail("together", status=503, times=3)
    assert call(gw, LLAMA_70B).status_code == 503
    assert "circuit open" in call(gw, LLAMA_70B).json()["error"]["message"]
    time.sleep(1.1)  # the cool-down is over: the next request is the probe
    fake.knobs("together").latency = 2.5  # slow, but within first_byte and total
    probe_sent = len(fake.requests_for("together"))
    with httpx.stream("POST", f"{gw.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {gw.api_key}"},
                      json={"model": LLAMA_70B, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                      timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_raw())  # ": processing" while the probe waits upstream; then the client goes away
    assert len(fake.requests_for("together")) == probe_sent + 1  # it did go upstream
    fake.knobs("together").latency = 0
    r = None
    deadline = time.monotonic() + 15  # generous: a cool-down is 1 s
    while time.monotonic() < deadline:
        r = call(gw, LLAMA_70B)
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        time.sleep(0.2)
    assert r.status_code == 200, f"still refused: {r.text}"
    assert breaker_state(gw, LLAMA_70B) == 0


def test_timeouts_total_bounds_the_whole_request(slow_gw, fake):
    """`total: 3` with an upstream that takes 2 s to fail: the first try fails at 2 s, the second is cut at 3 s and
    no third is sent (before: 3 tries of up to 3 s each)."""
    fake.knobs("mistral").latency = 2.0
    fake.fail("mistral", status=500, times=3)
    r = call(slow_gw, "mistralai/mistral-nemo")
    fake.knobs("mistral").latency = 0
    assert r.status_code == 408, r.text
    assert "timeouts.total (3 s)" in r.json()["error"]["message"]
    assert [a["status"] for a in r.json()["error"]["metadata"]["attempts"]] == [502, 408]
    assert len(fake.requests_for("mistral")) == 2


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
