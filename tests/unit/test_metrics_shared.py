"""Metrics shared by worker processes: every worker's file in one directory, added up by whichever worker answers a
scrape; a dead worker's counters still count, its gauges do not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from metarouter import metrics as M
from metarouter.metrics import GatewayMetrics, Registry, SharedSlots

from ..e2e.test_metrics import parse, total

MODEL = "openai/gpt-4o-mini-2024-07-18"


def record(i: int, **extra) -> dict:
    rec = {"requested_model": "auto", "model": MODEL, "provider": "openai", "router": "auto",
           "prompt_tokens": 3 + i, "completion_tokens": 100 * i, "cost_pico": 1_000_003 * (i + 1),
           "latency_ms": 7.0 * (i + 1), "ttft_ms": 2.5 * i, "streamed": i % 2 == 0, "status": "ok"}
    rec.update(extra)
    return rec


def samples_of(registry: Registry) -> dict:
    """name → sorted (labels, value) list of a render."""
    types, samples = parse(registry.render())
    out: dict = {}
    for name, labels, v in samples:
        out.setdefault(name, []).append((tuple(sorted(labels.items())), v))
    return {k: sorted(v) for k, v in out.items()}


def test_two_workers_render_what_one_process_would(tmp_path):
    """The same records spread over two workers' files render exactly as one process that saw them all."""
    one = GatewayMetrics()
    a, b = GatewayMetrics(Registry(SharedSlots(tmp_path))), GatewayMetrics(Registry(SharedSlots(tmp_path)))
    recs = [record(i) for i in range(9)] + [record(2, status="error", model="x/y")]
    for i, rec in enumerate(recs):
        one.observer("generation", rec)
        (a if i % 3 else b).observer("generation", rec)
    for m in (one, a):
        m.observer("attempt", {"model": MODEL, "provider": "openai", "status": 503})
    b.observer("generation", {**record(1), "overage_pico": 7})
    one.observer("generation", {**record(1), "overage_pico": 7})
    want = samples_of(one.registry)
    assert samples_of(a.registry) == want == samples_of(b.registry)  # whichever worker answers
    _, s = parse(a.registry.render())
    assert total(s, "metarouter_generations_total", status="ok") == 10
    assert total(s, "metarouter_cost_usd_total") == pytest.approx(sum(r["cost_pico"] for r in recs) / 1e12 +
                                                                    2_000_006e-12, rel=1e-12)
    # exact money: integer picodollars in the shared file too
    assert a.cost.values[(("gen_ai_response_model", MODEL), ("gen_ai_provider_name", "openai"))][0] == sum(
        r["cost_pico"] for i, r in enumerate(recs) if i % 3 and r["model"] == MODEL)


def test_buckets_are_cumulative_when_rendered():
    h = Registry().histogram("h", "help", ("a",), (1, 10))
    for v in (0.5, 5, 5, 50):
        h.observe(v, a="x")
    _, s = parse("\n".join(h.render(h.local())))
    assert [v for n, lab, v in s if n == "h_bucket"] == [1, 3, 4]
    assert total(s, "h_count") == 4 and total(s, "h_sum") == 60.5


def test_callback_modes(tmp_path):
    """Gauges: summed over the live workers, or their maximum; a series a worker no longer has leaves."""
    state = {"a": {"m1": 0, "m2": 2}, "b": {"m1": 1}}
    backlog = {"a": 3, "b": 4}
    regs = {}
    for w in ("a", "b"):
        r = regs[w] = Registry(SharedSlots(tmp_path))
        r.gauge_callback("breaker", "h", lambda w=w: [({"model": m}, v) for m, v in state[w].items()], mode=M.MAX)
        r.gauge_callback("backlog", "h", lambda w=w: [({}, backlog[w])])
        r.counter_callback("opened", "h", lambda w=w: [({"model": "m1"}, 1 + (w == "b"))])
        r.write_callbacks()
    got = samples_of(regs["a"])
    assert got["breaker"] == [((("model", "m1"),), 1), ((("model", "m2"),), 2)]
    assert got["backlog"] == [((), 7)]
    assert got["opened"] == [((("model", "m1"),), 3)]
    del state["a"]["m2"]
    regs["a"].write_callbacks()
    assert samples_of(regs["b"])["breaker"] == [((("model", "m1"),), 1)]


DEAD_WORKER = textwrap.dedent("""
    import sys
    from metarouter.metrics import GatewayMetrics, Registry, SharedSlots
    m = GatewayMetrics(Registry(SharedSlots(sys.argv[1])))
    m.registry.gauge_callback("backlog", "h", lambda: [({}, 5)])
    m.registry.write_callbacks()
    for i in range(4):
        m.observer("generation", {"requested_model": "auto", "model": "openai/gpt-4o-mini-2024-07-18",
                                  "provider": "openai", "router": "auto", "prompt_tokens": 10,
                                  "completion_tokens": 20, "cost_pico": 1000, "latency_ms": 5.0,
                                  "streamed": False, "status": "ok"})
    # killed, not closed: nothing is flushed at exit, the values are already in the shared file
    import os; os._exit(0)
""")


def test_a_dead_workers_counters_still_count_and_its_gauges_do_not(tmp_path):
    live = GatewayMetrics(Registry(SharedSlots(tmp_path)))
    live.registry.gauge_callback("backlog", "h", lambda: [({}, 1)])
    live.observer("generation", record(0))
    subprocess.run([sys.executable, "-c", DEAD_WORKER, str(tmp_path)], check=True, timeout=60)
    assert len(list(tmp_path.glob("worker-*.bin"))) == 2
    for _ in range(2):  # the first scrape folds the dead file into the archive; the second reads the archive
        _, s = parse(live.registry.render())
        assert total(s, "metarouter_generations_total") == 5
        assert total(s, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 80
        assert total(s, "metarouter_cost_usd_total") == pytest.approx((4000 + 1_000_003) / 1e12, rel=1e-12)
        assert total(s, "backlog") == 1  # the dead worker's 5 is not a backlog any more
        assert [p.name for p in tmp_path.glob("worker-*.bin")] == [live.registry.shared.path.name]
        assert (tmp_path / M.ARCHIVE).exists()
    # a worker that closes at shutdown leaves its counters too
    other = GatewayMetrics(Registry(SharedSlots(tmp_path)))
    other.observer("generation", record(1))
    other.registry.shared.close()
    _, s = parse(live.registry.render())
    assert total(s, "metarouter_generations_total") == 6


def test_earlier_runs_do_not_count(tmp_path):
    old = GatewayMetrics(Registry(SharedSlots(tmp_path)))
    old.observer("generation", record(0))
    old.registry.shared.close()
    M.clear_shared_dir(tmp_path)
    fresh = GatewayMetrics(Registry(SharedSlots(tmp_path)))
    _, s = parse(fresh.registry.render())
    assert total(s, "metarouter_generations_total") == 0


def test_a_full_file_drops_new_series_and_keeps_counting_the_old(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "FILE_BYTES", 4096)
    r = Registry(SharedSlots(tmp_path))
    c = r.counter("c", "h", ("n",))
    for i in range(200):
        c.inc(1, n=str(i))
    kept = len(c.values)
    assert 0 < kept < 200
    c.inc(1, n="0")
    _, s = parse(r.render())
    assert total(s, "c", n="0") == 2 and total(s, "c") == kept + 1


def test_registry_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(M.METRICS_DIR_ENV, raising=False)
    assert Registry.from_environment().shared is None
    monkeypatch.setenv(M.METRICS_DIR_ENV, str(tmp_path / "m"))
    r = Registry.from_environment()
    assert r.shared is not None and r.shared.path.parent == tmp_path / "m"


def test_serve_gives_several_workers_a_fresh_directory(tmp_path, monkeypatch):
    from metarouter.cli import _shared_metrics_dir

    # (set first, so that the variable's absence before the test is what monkeypatch restores: a bare delenv of an
    # unset variable records nothing, and the directory set below would leak into every later test's servers)
    monkeypatch.setenv(M.METRICS_DIR_ENV, "")
    monkeypatch.delenv(M.METRICS_DIR_ENV)
    made = _shared_metrics_dir()  # a directory of this start's own, named to the workers; serve removes it at exit
    try:
        assert made and os.environ[M.METRICS_DIR_ENV] == made and os.path.isdir(made) and not os.listdir(made)
    finally:
        os.rmdir(made)
    given = tmp_path / "given"
    given.mkdir()
    (given / "worker-1-old.bin").write_bytes(b"x")
    (given / M.ARCHIVE).write_bytes(b"[]")
    (given / "keep.txt").write_text("not ours")
    monkeypatch.setenv(M.METRICS_DIR_ENV, str(given))
    assert _shared_metrics_dir() is None  # the operator's directory: emptied of an earlier run's files, kept
    assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]


def test_a_file_being_created_is_skipped(tmp_path):
    r = GatewayMetrics(Registry(SharedSlots(tmp_path)))
    r.observer("generation", record(0))
    (tmp_path / "worker-9-new.bin").write_bytes(b"")  # created, not yet sized: a worker starting
    (tmp_path / "worker-9-half.bin").write_bytes(bytes(64))  # sized, header not yet written
    _, s = parse(r.registry.render())
    assert total(s, "metarouter_generations_total") == 1
