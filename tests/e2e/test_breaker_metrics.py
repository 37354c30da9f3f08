"""Circuit-breaker state in ``/metrics``: a gauge per model of each provider (0 closed, 1 half-open, 2 open) and a
counter of openings, read from the breakers when scraped."""

from __future__ import annotations

import httpx
import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config
from .test_metrics import parse

MODEL = "openai/gpt-4o-mini-2024-07-18"
FAILING = "meta-llama/llama-3.1-70b-instruct"  # served by "together"


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    # two failed requests open a circuit, and it stays open for the whole test (no probe, no half-open)
    cfg = gateway_config(fake, resilience={"retries": 1, "backoff_base": 0.01, "backoff_max": 0.02,
                                           "breaker_failures": 2, "breaker_cooldown": 600})
    with GatewayProcess(cfg, tmp_path_factory.mktemp("breaker-metrics"), env=FAKE_KEYS_ENV) as g:
        g.api_key = g.create_key("breaker")
        yield g


def call(gw, model):
    return httpx.post(f"{gw.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {gw.api_key}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)


def breaker_samples(gw) -> tuple[dict, dict[str, float], dict[str, float]]:
    types, samples = parse(httpx.get(gw.url + "/metrics").text)
    state = {lab["model"]: v for n, lab, v in samples if n == "metarouter_circuit_breaker_state"}
    opened = {lab["model"]: v for n, lab, v in samples if n == "metarouter_circuit_breaker_opened_total"}
    assert {lab["provider"] for n, lab, v in samples if n.startswith("metarouter_circuit_breaker")} <= {"openai", "together"}
    return types, state, opened


def test_breaker_state_and_openings_are_scraped(gw, fake):
    types, state, opened = breaker_samples(gw)
    assert types["metarouter_circuit_breaker_state"] == "gauge"
    assert types["metarouter_circuit_breaker_opened_total"] == "counter"
    assert FAILING not in state and FAILING not in opened  # no breaker before the first request

    assert call(gw, MODEL).status_code == 200
    _, state, opened = breaker_samples(gw)
    assert state[MODEL] == 0 and opened[MODEL] == 0

    fake.fail("together", status=503, times=2)
    assert call(gw, FAILING).status_code == 503  # one failed request (two tries): still closed
    _, state, opened = breaker_samples(gw)
    assert state[FAILING] == 0 and opened[FAILING] == 0
    fake.fail("together", status=503, times=2)
    r = call(gw, FAILING)  # the second failed request in a row: the circuit opens
    assert r.status_code == 503, r.text
    _, state, opened = breaker_samples(gw)
    assert state[FAILING] == 2 and opened[FAILING] == 1
    assert state[MODEL] == 0

    n = len(fake.requests_for("together"))
    r = call(gw, FAILING)  # refused while open: not sent, and the gauge still says open
    assert r.status_code == 503 and "circuit open" in r.json()["error"]["message"]
    assert len(fake.requests_for("together")) == n
    _, state, opened = breaker_samples(gw)
    assert state[FAILING] == 2 and opened[FAILING] == 1


def test_half_open_reads_as_one_and_costs_nothing_per_request():
    from types import SimpleNamespace

    from metarouter.api import _wire_breaker_metrics
    from metarouter.gateway.resilience import CircuitBreaker
    from metarouter.metrics import GatewayMetrics

    now = [0.0]
    b = CircuitBreaker(1, cooldown=5, clock=lambda: now[0])
    app = SimpleNamespace(state=SimpleNamespace(metrics=GatewayMetrics(),
                                                gateway=SimpleNamespace(breakers={("p", "p/m"): b})))
    _wire_breaker_metrics(app)

    def scrape():
        _, samples = parse(app.state.metrics.registry.render())
        return {n: v for n, lab, v in samples if lab.get("provider") == "p" and lab.get("model") == "p/m"}

    assert scrape() == {"metarouter_circuit_breaker_state": 0, "metarouter_circuit_breaker_opened_total": 0}
    b.failure()
    assert scrape() == {"metarouter_circuit_breaker_state": 2, "metarouter_circuit_breaker_opened_total": 1}
    now[0] = 6.0
    assert b.allow()  # the cool-down is over: one probe, half-open
    assert scrape() == {"metarouter_circuit_breaker_state": 1, "metarouter_circuit_breaker_opened_total": 1}
    b.failure()
    assert scrape() == {"metarouter_circuit_breaker_state": 2, "metarouter_circuit_breaker_opened_total": 2}
    app.state.gateway = None  # before startup / after shutdown: no samples, and the scrape still works
    assert scrape() == {}
