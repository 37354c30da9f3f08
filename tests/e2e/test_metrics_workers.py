"""``serve --workers 2``: /metrics tells the same truth whichever worker answers the scrape — the request counters
equal the requests sent, on every scrape, and still after a worker is killed and restarted."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from metarouter.metrics import _read_file
from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config
from .test_metrics import parse, total

MODEL = "openai/gpt-4o-mini-2024-07-18"


def worker_generations(metrics_dir) -> dict[int, float]:
    """pid → generations that worker's own file counts (live workers only)."""
    out = {}
    for path in metrics_dir.glob("worker-*.bin"):
        entries, live = _read_file(path)
        if entries and live:
            out[int(path.name.split("-")[1])] = sum(v[0] for name, _, _, _, v in entries
                                                    if name == "metarouter_generations_total")
    return out


def test_counters_are_the_sum_over_workers(fake, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "worker-1-stale.bin").write_bytes(b"MRM1" + bytes(12))  # an earlier run's: cleared at start
    env = {**FAKE_KEYS_ENV, "METAROUTER_METRICS_DIR": str(metrics_dir)}
    with GatewayProcess(gateway_config(fake), tmp_path / "gw", env=env, workers=2) as gw:
        key = gw.create_key("workers")
        sent, costs = 0, []

        def one(i: int) -> float:
            with httpx.Client(timeout=30) as c:  # a connection of its own: either worker may take it
                r = c.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": MODEL, "messages": [{"role": "user", "content": f"q {i}"}]})
            assert r.status_code == 200, r.text
            return r.json()["usage"]["cost"]

        with ThreadPoolExecutor(8) as pool:
            # until both workers have answered some (the kernel spreads connections; keep sending until it has)
            while sent < 400:
                costs += pool.map(one, range(sent, sent + 16))
                sent += 16
                per_worker = worker_generations(metrics_dir)
                if len(per_worker) == 2 and all(per_worker.values()):
                    break
        assert len(per_worker) == 2 and all(per_worker.values()), per_worker
        assert sum(per_worker.values()) == sent
        assert not (metrics_dir / "worker-1-stale.bin").exists()

        def check(n: int) -> None:
            for _ in range(12):  # fresh connections: the scrapes reach both workers
                r = httpx.get(gw.url + "/metrics", headers={"Connection": "close"})
                assert r.status_code == 200
                types, s = parse(r.text)
                assert types["metarouter_generations_total"] == "counter"
                assert total(s, "metarouter_generations_total", status="ok", gen_ai_response_model=MODEL) == n
                assert total(s, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == n
                assert total(s, "gen_ai_server_request_duration_seconds_bucket", le="+Inf") == n
                assert total(s, "metarouter_cost_usd_total") == pytest.approx(sum(costs), rel=1e-9)
                assert types["metarouter_ledger_pending_records"] == "gauge"

        check(sent)

        # a worker killed outright: uvicorn starts another; what the dead one counted still counts
        victim = next(iter(per_worker))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alive = worker_generations(metrics_dir)
            if len(alive) == 2 and victim not in alive:
                break
            time.sleep(0.2)
        assert len(alive) == 2 and victim not in alive, alive
        check(sent)
        assert not any(p.name.startswith(f"worker-{victim}-") for p in metrics_dir.glob("worker-*.bin"))
        with ThreadPoolExecutor(4) as pool:
            costs += pool.map(one, range(sent, sent + 8))
        check(sent + 8)
