"""``/metrics`` on the real server: OpenTelemetry GenAI names, values that match the answers, no secrets."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from metarouter.metrics import GatewayMetrics
from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config

MODEL = "openai/gpt-4o-mini-2024-07-18"
_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """(metric name → TYPE, samples); fails on any line that is not valid exposition format."""
    types, samples = {}, []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = _LINE.match(line)
        assert m, f"not exposition format: {line!r}"
        labels = dict(_LABEL.findall(m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return types, samples


def total(samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


@pytest.fixture(scope="module")
def metrics_gw(fake, tmp_path_factory):
    with GatewayProcess(gateway_config(fake), tmp_path_factory.mktemp("metrics"), env=FAKE_KEYS_ENV) as g:
        g.api_key = g.create_key("metrics")
        yield g


def test_metrics_after_requests(metrics_gw, fake):
    gw = metrics_gw
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.api_key, max_retries=0)
    answers = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"question {i}"}])
               for i in range(2)]
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream please"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    stream_usage = chunks[-1].usage
    fake.fail("openai", status=400, times=1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fails"}])

    r = httpx.get(gw.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    types, samples = parse(r.text)
    assert types["gen_ai_client_token_usage"] == "histogram"
    assert types["gen_ai_server_time_to_first_token_seconds"] == "histogram"
    assert types["gen_ai_server_request_duration_seconds"] == "histogram"
    assert types["metarouter_upstream_errors_total"] == "counter"
    assert types["metarouter_cost_usd_total"] == "counter"
    assert types["metarouter_router_choices_total"] == "counter"

    sel = {"gen_ai_response_model": MODEL, "gen_ai_provider_name": "openai"}
    prompt = sum(a.usage.prompt_tokens for a in answers) + stream_usage.prompt_tokens
    completion = sum(a.usage.completion_tokens for a in answers) + stream_usage.completion_tokens
    assert total(samples, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **sel) == 3
    assert total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **sel) == prompt
    assert total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **sel) == completion
    inf = total(samples, "gen_ai_client_token_usage_bucket", gen_ai_token_type="output", le="+Inf", **sel)
    assert inf == 3
    assert total(samples, "gen_ai_server_time_to_first_token_seconds_count", **sel) == 1
    assert total(samples, "gen_ai_server_request_duration_seconds_count", **sel) == 3
    assert total(samples, "gen_ai_server_request_duration_seconds_sum", **sel) > 0
    cost = sum(a.usage.model_extra["cost"] for a in answers) + stream_usage.model_extra["cost"]
    assert total(samples, "metarouter_cost_usd_total", **sel) == pytest.approx(cost, rel=1e-9)
    assert total(samples, "metarouter_upstream_errors_total", gen_ai_provider_name="openai", status="400") >= 1
    assert total(samples, "metarouter_generations_total", status="ok", **sel) == 3
    # buckets are cumulative
    buckets = [(float(lab["le"]), v) for n, lab, v in samples
               if n == "gen_ai_client_token_usage_bucket" and lab.get("gen_ai_token_type") == "input"
               and lab.get("gen_ai_response_model") == MODEL]
    values = [v for _, v in sorted(buckets)]
    assert values == sorted(values) and values[-1] == 3
    # nothing about the caller's key in any label or value
    public_id = gw.api_key.split("-")[2]
    assert gw.api_key not in r.text and public_id not in r.text and "sk-mr" not in r.text and "sk-fake" not in r.text


def test_router_choices_and_label_safety():
    m = GatewayMetrics()
    rec = {"requested_model": "auto", "model": 'evil"model\n{x}', "provider": "openai", "router": "auto",
           "prompt_tokens": 3, "completion_tokens": 4, "cost_pico": 1500000, "latency_ms": 20.0, "ttft_ms": 5.0,
           "streamed": True, "status": "ok", "key_id": "0123456789ab", "user_tag": "secret-user"}
    m.observer("generation", rec)
    m.observer("generation", {**rec, "status": "error"})
    m.observer("attempt", {"model": "x", "provider": "anthropic", "status": 529, "error": "overloaded"})
    text = m.registry.render()
    _, samples = parse(text)
    assert "0123456789ab" not in text and "secret-user" not in text
    assert total(samples, "metarouter_router_choices_total", router="auto", gen_ai_request_model="auto") == 2
    assert total(samples, "metarouter_cost_usd_total") == pytest.approx(3e-6)
    assert total(samples, "gen_ai_server_request_duration_seconds_count", error_type="error") == 1
    assert total(samples, "metarouter_upstream_errors_total", gen_ai_provider_name="anthropic", status="529") == 1
    assert m.token_usage.count(gen_ai_operation_name="chat", gen_ai_request_model="auto",
                               gen_ai_response_model=rec["model"], gen_ai_provider_name="openai",
                               gen_ai_token_type="input") == 2


async def test_ledger_backlog_gauge(tmp_path):
    from types import SimpleNamespace

    from metarouter.api import _wire_store_metrics
    from metarouter.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "m.db", linger=0.5)  # a long group-commit wait keeps records queued
    await store.open()
    app = SimpleNamespace(state=SimpleNamespace(metrics=GatewayMetrics(), store=store))
    _wire_store_metrics(app)

    def backlog() -> float:
        _, samples = parse(app.state.metrics.registry.render())
        return total(samples, "metarouter_ledger_pending_records")

    assert backlog() == 0
    for i in range(3):
        store.record_generation({"id": f"gen-{i}", "created_at": 1.0, "status": "ok", "cost_pico": 0})
    assert backlog() == 3
    await store.flush()
    assert backlog() == 0
    await store.close()
    app.state.store = None  # before start-up / after shutdown: no sample, and the scrape still works
    _, samples = parse(app.state.metrics.registry.render())
    assert not [s for s in samples if s[0] == "metarouter_ledger_pending_records"]
