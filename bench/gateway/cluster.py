#!/usr/bin/env python3
# ruff: noqa: BLE001
"""Budget leases in a cluster (issue 16, item 1): a key with a spending limit against an unlimited key, on
PostgreSQL + Redis with two metarouter replicas behind a load-balancing nginx.

    .venv/bin/python bench/gateway/cluster.py                          # 3 runs of 8 s per key (~2 min)
    .venv/bin/python bench/gateway/cluster.py --repeat 1 --duration 3  # a smoke run

What runs (all on 127.0.0.1):
  * a fresh PostgreSQL database ``mr_bench_<pid>`` (dropped at the end) and a Redis db number of its own (flushed at
    the start and the end);
  * the fake upstream nginx of run.py (pinned to CPU 1);
  * two ``metarouter serve`` replicas (one worker each, both pinned to CPU 0) on that database and Redis;
  * a load-balancing nginx (round robin over the two, keep-alive upstream connections; pinned to CPU 1);
  * wrk (CPU 1) through the balancer, explicit model, JSON, 50 connections; the unlimited and the limited key
    alternate (U L, L U, U L, ...) after a warm-up of both;
  * then ``--exact`` requests per key whose answers are read to the end and matched to their records by id.

Per run: req/s, p50/p99, errors, CPU per request of the replicas, of PostgreSQL (this database's backends and the
server's own processes: walwriter, checkpointer, ...) and of redis-server, and the CPU the rest of the machine used.
After the runs: the ledger's checks (every answered request recorded, the limited key's usage equal to its
records' costs, no key over its limit, every hold given back once the replicas stop).

Results: ``bench/gateway/results/cluster-<UTC stamp>.json`` and ``cluster-latest.md`` (also printed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402  (bench/gateway/run.py: nginx, wrk, /proc helpers)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379"
KINDS = ("unlimited", "limited")


# --- PostgreSQL and Redis ---------------------------------------------------------------------------------------
def pg(url: str, sql: str, *args: Any) -> list[Any]:
    """One statement on its own connection (rows as records)."""
    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def with_database(url: str, db: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + db))


def flush_redis(url: str) -> int:
    """FLUSHDB of the db the URL names; returns how many keys it held."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        n = r.dbsize()
        r.flushdb()
        return n
    finally:
        r.close()


def processes(comm: str) -> dict[int, str]:
    """pid -> process title (``cmdline``) of every process whose name (``comm``) is ``comm``."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == comm:
                    out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def postgres_pids(db: str) -> tuple[list[int], list[int]]:
    """The PostgreSQL processes whose work is this run's: (the backends and autovacuum workers of database ``db``,
    the server's own processes: postmaster, walwriter, checkpointer, background writer, ...). Backends of other
    databases are someone else's; the server's processes also work for them."""
    backends, server = [], []
    for pid, title in processes("postgres").items():
        if f" {db} " in f"{title} ":
            backends.append(pid)
        elif not (any(w in title for w in (" 127.0.0.1(", " [local]", " ::1(")) or "autovacuum worker" in title):
            server.append(pid)
    return backends, server


#: seconds after which every backend has reported its transactions to ``pg_stat_database``: a busy one reports at
#: most once a second, one gone idle with some unreported 10 s later (PostgreSQL 15+: PGSTAT_IDLE_INTERVAL)
PG_STATS_WAIT = 11.0


def db_stats(admin_url: str, db: str) -> dict[str, int]:
    """The database's transaction and row counters (``pg_stat_database``), and per table the rows inserted,
    updated and deleted and the scans (``pg_stat_user_tables``: ``<table>.ins`` ...)."""
    row = pg(admin_url, "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated FROM pg_stat_database "
                        "WHERE datname = $1", db)[0]
    out = {k: int(v) for k, v in row.items()}
    for t in pg(with_database(admin_url, db), "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, "
                                              "COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0) AS scans "
                                              "FROM pg_stat_user_tables"):
        for col, short in (("n_tup_ins", "ins"), ("n_tup_upd", "upd"), ("n_tup_del", "del"), ("scans", "scans")):
            out[f"{t['relname']}.{short}"] = int(t[col])
    return out


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {p: run.cpu_seconds([p]) for p in pids}


def cpu_since(before: dict[int, float], now_pids: list[int]) -> float:
    """CPU seconds used since ``before`` by the processes in ``now_pids`` (one that started since counts whole;
    one that exited since is lost)."""
    return sum(max(0.0, run.cpu_seconds([p]) - before.get(p, 0.0)) for p in now_pids)


# --- the cluster ------------------------------------------------------------------------------------------------
class Replica:
    """One ``metarouter serve`` (started here; :meth:`wait_ready` waits for its first answer)."""

    def __init__(self, i: int, work: Path, logs: Path, env: dict[str, str], config: Path):
        self.name = f"replica{i}"
        self.data = work / self.name
        self.data.mkdir()
        self.port = run.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = run.Proc(self.name, run.pinned(run.GW_CPU, [
            run.PY, "-m", "metarouter.cli", "serve", "--config", str(config), "--port", str(self.port),
            "--data-dir", str(self.data), "--workers", "1", "--log-level", "warning"]), logs, env=env, cwd=run.REPO)

    def wait_ready(self, probe_key: str) -> None:
        self.timed_out = 0  # readiness probes given up on (the replica may have answered and recorded them)
        hdrs = {"Authorization": f"Bearer {probe_key}", "Content-Type": "application/json"}
        body = run.request_body(run.EXPLICIT_MODEL, False)

        def answers() -> bool:
            try:
                return run.http(self.url + "/api/v1/chat/completions", body, hdrs, timeout=2)[0] == 200
            except OSError as exc:
                if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
                    self.timed_out += 1
                raise

        run.wait_until(answers, 90, self.proc, step=0.05)
        self.startup_s = round(time.perf_counter() - self.proc.t_start, 3)

    def pids(self) -> list[int]:
        return run.descendants(self.proc.pid)


class Balanced(run.Target):
    """What wrk drives: the balancer's URL with one key; the CPU counted as the target's is both replicas'."""

    def __init__(self, name: str, url: str, auth: str, replicas: list[Replica]):
        self.name, self.url, self.auth, self.replicas = name, url, auth, replicas
        self.models = {"json": run.EXPLICIT_MODEL}

    def pids(self) -> list[int]:
        return [p for r in self.replicas for p in r.pids()]


def balancer_conf(work: Path, port: int, upstreams: list[int]) -> str:
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstreams)
    return run.nginx_head(work) + f"""
    upstream replicas {{
{servers}        keepalive 128;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=8192;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_balancer(work: Path, logs: Path, upstreams: list[int], procs: list[run.Proc]) -> str:
    """Start the balancer (added to ``procs`` at once, to be stopped whatever happens next); returns its URL."""
    lb = work / "balancer"
    for d in ("", "ngx-body", "ngx-proxy", "ngx-fastcgi", "ngx-uwsgi", "ngx-scgi"):
        (lb / d).mkdir(exist_ok=True)
    port = run.free_port()
    conf = lb / "nginx.conf"
    conf.write_text(balancer_conf(lb, port, upstreams))
    proc = run.Proc("balancer", run.pinned(run.LOAD_CPU, ["nginx", "-c", str(conf), "-p", str(lb), "-e",
                                                          str(lb / "nginx-error.log")]), logs)
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    run.wait_until(lambda: run.http(url + "/health", timeout=2)[0] == 200, 10, proc)
    return url


# --- one measured run -------------------------------------------------------------------------------------------
def measure(target: Balanced, work: Path, conns: int, duration: float, admin_url: str, db: str,
            lb_pids: list[int]) -> dict[str, Any]:
    """One wrk run through the balancer, with the CPU of the replicas, PostgreSQL, Redis and the rest around it,
    and the database's transactions."""
    stats0 = db_stats(admin_url, db)
    reps = {r.name: run.cpu_seconds(r.pids()) for r in target.replicas}
    (be0, sv0), redis0 = map(cpu_by_pid, postgres_pids(db)), cpu_by_pid(list(processes("redis-server")))
    ng0 = run.cpu_seconds(run.NGINX_PIDS + lb_pids)
    busy0, ch0, t0 = run.system_ticks()[0], run.children_cpu(), time.time()
    r = run.wrk(target, work, "json", conns, duration)
    wall = time.time() - t0
    per_replica = {r_.name: round(run.cpu_seconds(r_.pids()) - reps[r_.name], 3) for r_ in target.replicas}
    backends, server = postgres_pids(db)
    pg_backends_s, pg_server_s = cpu_since(be0, backends), cpu_since(sv0, server)
    pg_s = pg_backends_s + pg_server_s
    redis_s = cpu_since(redis0, list(processes("redis-server")))
    nginx_s = run.cpu_seconds(run.NGINX_PIDS + lb_pids) - ng0
    wrk_s = run.children_cpu() - ch0
    replicas_s = sum(per_replica.values())
    others = max(0.0, run.system_ticks()[0] - busy0 - (replicas_s + pg_s + redis_s + nginx_s + wrk_s))
    time.sleep(PG_STATS_WAIT)  # until every backend, busy or idle since, has reported the run's transactions
    stats = {k: v - stats0.get(k, 0) for k, v in db_stats(admin_url, db).items()}
    n = r["requests"] or 1
    us = lambda s: round(s / n * 1e6, 1)  # noqa: E731
    return {
        "key": target.name, "conns": conns, "duration_s": duration, "rps": r["rps"], "ok_rps": r["ok_rps"],
        "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "requests": r["requests"],
        "errors": r["errors"], "err_status": r["err_status"],
        "errors_detail": {k: r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")},
        "replicas_cpu_us_per_req": us(replicas_s), "replica_cpu_s": per_replica,
        "postgres_cpu_us_per_req": us(pg_s), "postgres_backends_cpu_us_per_req": us(pg_backends_s),
        "postgres_server_cpu_us_per_req": us(pg_server_s), "redis_cpu_us_per_req": us(redis_s),
        "nginx_cpu_us_per_req": us(nginx_s), "wrk_cpu_us_per_req": us(wrk_s),
        "cluster_cpu_us_per_req": us(replicas_s + pg_s + redis_s),
        "pg_commits_per_req": round(stats["xact_commit"] / n, 3),
        "pg_rollbacks_per_req": round(stats["xact_rollback"] / n, 3),
        "pg_rows_inserted_per_req": round(stats["tup_inserted"] / n, 3),
        "pg_rows_updated_per_req": round(stats["tup_updated"] / n, 3),
        "pg_tables_per_req": {k: round(v / n, 4) for k, v in sorted(stats.items()) if "." in k and v},
        "others_cpu_pct": round(100 * others / (wall * (os.cpu_count() or 1)), 1),
        "steal_pct": r["steal_pct"],
    }


# --- the ledger's checks ----------------------------------------------------------------------------------------
def ledger(url: str) -> dict[str, Any]:
    keys = {row["public_id"]: dict(row) for row in pg(url, "SELECT public_id, label, limit_pico, usage_pico, "
                                                           "reserved_pico FROM keys")}
    for row in pg(url, "SELECT key_id, status, COUNT(*) AS n, SUM(cost_pico) AS cost, SUM(overage_pico) AS overage "
                       "FROM generations GROUP BY key_id, status"):
        k = keys.setdefault(row["key_id"], {"public_id": row["key_id"]})
        k.setdefault("records", {})[row["status"]] = int(row["n"])
        k["records_cost_pico"] = k.get("records_cost_pico", 0) + int(row["cost"] or 0)
        k["records_overage_pico"] = k.get("records_overage_pico", 0) + int(row["overage"] or 0)
    acct = dict(pg(url, "SELECT credits_pico, usage_pico, reserved_pico FROM account WHERE id = 1")[0])
    holds = pg(url, "SELECT holder, key_id, amount_pico FROM reservations")
    return {"keys": keys, "account": acct, "holds": [dict(h) for h in holds]}


def settle(url: str, replicas: list[Replica], keys: dict[str, str], timeout: float = 30) -> int:
    """Wait until the ledger is written: ``GET /api/v1/key`` flushes a replica's queued records; repeated until
    the count of records stops changing (requests still in flight when wrk stopped finish meanwhile)."""
    last, t0 = -1, time.time()
    while time.time() - t0 < timeout:
        for r in replicas:
            for key in keys.values():
                run.http(r.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        n = int(pg(url, "SELECT COUNT(*) FROM generations")[0][0])
        if n == last:
            return n
        last = n
        time.sleep(1)
    return last


def exact_phase(url: str, key: str, n: int, conns: int) -> tuple[list[str], int]:
    """``n`` requests through the balancer, ``conns`` at a time, each answer read to its end (unlike wrk's last
    ones): (the generation ids of the 200s, how many were not 200)."""
    import aiohttp

    body = run.request_body(run.EXPLICIT_MODEL, False)
    hdrs = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ids: list[str] = []
    failed = 0

    async def go() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns),
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def one() -> None:
                nonlocal failed
                async with session.post(url, data=body, headers=hdrs) as r:
                    data = await r.read()
                    if r.status == 200:
                        ids.append(json.loads(data)["id"])
                    else:
                        failed += 1

            await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(go())
    return ids, failed


def check_exact(url: str, public_id: str, kind: str, since: float, ids: list[str], failed: int) -> dict[str, Any]:
    """The records written since ``since`` for the key are exactly the answered requests (by generation id)."""
    stored = [r["id"] for r in pg(url, "SELECT id FROM generations WHERE key_id = $1 AND created_at >= $2",
                                  public_id, since)]
    lost, extra = set(ids) - set(stored), set(stored) - set(ids)
    passed = not lost and not extra and len(stored) == len(set(stored)) == len(ids)
    return {"check": f"{kind}: {len(ids)} answers read to the end, each with exactly one record", "ok": passed,
            "detail": f"{len(stored)} records; answered without a record {sorted(lost)[:5]} ({len(lost)}), records "
                      f"of no answer {sorted(extra)[:5]} ({len(extra)}); {failed} answers were not 200"}


def check(state: dict[str, Any], ids: dict[str, str], answered: dict[str, int], slack: dict[str, int]) -> list[dict]:
    """The ledger against what wrk saw: ``answered`` (2xx responses wrk and the probes counted, per key), ``slack``
    (requests that may have been answered after wrk stopped counting: its connections, per run)."""
    out = []

    def ok(name: str, passed: bool, detail: str) -> None:
        out.append({"check": name, "ok": bool(passed), "detail": detail})

    for kind in KINDS:
        k = state["keys"][ids[kind]]
        recs = k.get("records", {})
        stored = recs.get("ok", 0)
        ok(f"{kind}: every answered request has a record",
           answered[kind] <= stored <= answered[kind] + slack[kind],
           f"{stored} records with status ok ({recs}); wrk and the probes counted {answered[kind]} answers, up to "
           f"{slack[kind]} more may have been answered after wrk stopped counting")
        ok(f"{kind}: usage equals the records' costs", int(k["usage_pico"]) == k.get("records_cost_pico", 0),
           f"usage {k['usage_pico']} pUSD, records {k.get('records_cost_pico', 0)} pUSD "
           f"(overage beyond holds {k.get('records_overage_pico', 0)} pUSD)")
        if k["limit_pico"] is not None:
            ok(f"{kind}: within its limit", int(k["usage_pico"]) + int(k["reserved_pico"]) <= int(k["limit_pico"]),
               f"usage {k['usage_pico']} + reserved {k['reserved_pico']} <= limit {k['limit_pico']} pUSD")
    total = sum(k.get("records_cost_pico", 0) for k in state["keys"].values())
    ok("account usage equals all records' costs", int(state["account"]["usage_pico"]) == total,
       f"account {state['account']['usage_pico']} pUSD, records {total} pUSD")
    return out


def check_released(state: dict[str, Any]) -> dict[str, Any]:
    held = {k: int(v["reserved_pico"]) for k, v in state["keys"].items() if int(v.get("reserved_pico") or 0)}
    passed = not state["holds"] and not held and int(state["account"]["reserved_pico"]) == 0
    return {"check": "every hold given back once the replicas stopped", "ok": passed,
            "detail": f"reservations rows {state['holds']}, keys' reserved {held or 0}, account reserved "
                      f"{state['account']['reserved_pico']} pUSD"}


# --- the summary ------------------------------------------------------------------------------------------------
METRICS = ("rps", "p50_ms", "p99_ms", "errors", "replicas_cpu_us_per_req", "postgres_cpu_us_per_req",
           "redis_cpu_us_per_req", "cluster_cpu_us_per_req", "pg_commits_per_req", "others_cpu_pct")


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {kind: {m: round(statistics.median(r[m] for r in runs if r["key"] == kind), 3) for m in METRICS}
            for kind in KINDS if any(r["key"] == kind for r in runs)}


def render(R: dict[str, Any]) -> str:
    m = R.get("medians", {})
    lines = [f"# Budget leases in a cluster: limited vs unlimited key ({R['meta']['date_utc']} UTC)", "",
             f"PostgreSQL + Redis, two replicas (one worker each, both on CPU {run.GW_CPU}) behind nginx; wrk and the "
             f"nginxes on CPU {run.LOAD_CPU}; {R['conns']} connections, explicit model, JSON; {R['repeat']} run(s) "
             f"of {R['duration_s']:g} s per key, alternating. Git: {R['meta']['git_head']}. Limited key: "
             f"${R['key_limit_usd']}.", "",
             "CPU columns are µs of CPU per request (`1e6 / µs` = what one core could serve); *cluster* = replicas "
             "+ PostgreSQL + Redis. *others* = CPU the rest of the machine used, % of all CPUs (figures from a run "
             "with much of it are disturbed). *PG commits/req*: the database's committed transactions per request "
             "(`pg_stat_database`), what a budget hold in the store would add to.", "",
             "| key | req/s | p50 ms | p99 ms | errors | replicas | PostgreSQL | Redis | cluster | PG commits/req "
             "| others % |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, v in m.items():
        lines.append(f"| {kind} (median) | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['errors']:g} | "
                     f"{v['replicas_cpu_us_per_req']:.0f} | {v['postgres_cpu_us_per_req']:.1f} | "
                     f"{v['redis_cpu_us_per_req']:.1f} | {v['cluster_cpu_us_per_req']:.0f} | "
                     f"{v['pg_commits_per_req']:.3f} | {v['others_cpu_pct']:g} |")
    if len(m) == 2:
        u, lim = m["unlimited"], m["limited"]
        ratio = lambda a, b: f"{a / b:.3f}" if b else "-"  # noqa: E731
        lines += ["", "| limited / unlimited | req/s | replicas CPU/req | PostgreSQL CPU/req | cluster CPU/req "
                  "| PG commits/req |", "|---|---|---|---|---|---|",
                  f"| ratio | {ratio(lim['rps'], u['rps'])} | "
                  f"{ratio(lim['replicas_cpu_us_per_req'], u['replicas_cpu_us_per_req'])} | "
                  f"{ratio(lim['postgres_cpu_us_per_req'], u['postgres_cpu_us_per_req'])} | "
                  f"{ratio(lim['cluster_cpu_us_per_req'], u['cluster_cpu_us_per_req'])} | "
                  f"{ratio(lim['pg_commits_per_req'], u['pg_commits_per_req'])} |"]
    lines += ["", "Every run:", "", "| # | key | req/s | p50 ms | p99 ms | errors | replicas | replica0 / replica1 CPU s "
              "| PostgreSQL | Redis | PG commits/req | others % |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(R["runs"], 1):
        split = " / ".join(f"{s:.2f}" for s in r["replica_cpu_s"].values())
        lines.append(f"| {i} | {r['key']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
                     f"{r['replicas_cpu_us_per_req']:.0f} | {split} | {r['postgres_cpu_us_per_req']:.1f} | "
                     f"{r['redis_cpu_us_per_req']:.1f} | {r['pg_commits_per_req']:.3f} | {r['others_cpu_pct']:g} |")
    lines += ["", "Ledger checks:", ""]
    lines += [f"- {'ok' if c['ok'] else 'FAILED'}: {c['check']} ({c['detail']})" for c in R.get("checks", [])]
    if R.get("error"):
        lines += ["", f"The run failed: {R['error']}"]
    return "\n".join(lines) + "\n"


# --- the run ----------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per key (alternating; medians reported)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--conns", type=int, default=50, help="wrk connections")
    ap.add_argument("--exact", type=int, default=1000, help="requests per key, after the runs, whose answers are "
                    "matched one by one to their records")
    ap.add_argument("--key-limit", default="1000000", metavar="USD", help="the limited key's limit (far from "
                    "exhausted by the run, so its budget is served from leases)")
    ap.add_argument("--pg", default=PG_ADMIN, help="a PostgreSQL URL whose user may create databases (the run's "
                    "database is created beside it and dropped at the end)")
    ap.add_argument("--redis", default=REDIS, help="the Redis server (no db number)")
    ap.add_argument("--redis-db", type=int, default=7, help="the Redis db number the run uses (flushed at the start "
                    "and the end)")
    ap.add_argument("--out", default=str(HERE / "results"), help="where the results go")
    a = ap.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            print(f"missing `{tool}`: apt-get update && apt-get install -y nginx wrk util-linux", file=sys.stderr)
            return 2

    db = f"mr_bench_{os.getpid()}"
    db_url = with_database(a.pg, db)
    redis_url = f"{a.redis.rstrip('/')}/{a.redis_db}"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mr-cluster-"))
    logs = work / "logs"
    logs.mkdir()
    t_begin = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_begin:6.1f}s] {msg}", flush=True)

    R: dict[str, Any] = {"meta": run.machine(), "database": db, "redis": redis_url, "conns": a.conns,
                         "duration_s": a.duration, "repeat": a.repeat, "key_limit_usd": a.key_limit,
                         "pinning": {"replicas": f"taskset -c {run.GW_CPU}",
                                     "wrk_upstream_balancer": f"taskset -c {run.LOAD_CPU}"},
                         "runs": [], "checks": [], "logs": str(logs)}
    procs: list[run.Proc] = []
    replicas: list[Replica] = []
    created = False
    try:
        pg(a.pg, f'CREATE DATABASE "{db}"')
        created = True
        R["redis_keys_flushed_at_start"] = flush_redis(redis_url)
        log(f"database {db}, redis {redis_url}, work dir {work}")
        upstream, nport, _ = run.start_nginx(work, logs)
        procs.append(upstream)
        config = run.metarouter_config(work, f"http://127.0.0.1:{nport}/v1")
        env = {**os.environ, run.UPSTREAM_KEY_ENV: "bench", "METAROUTER_DATABASE_URL": db_url,
               "METAROUTER_REDIS_URL": redis_url, "METAROUTER_HOME": str(work / "home")}
        keys, ids = {}, {}
        keys["unlimited"], ids["unlimited"] = run.create_key(env, config, work / "home", "bench-unlimited", None)
        keys["limited"], ids["limited"] = run.create_key(env, config, work / "home", "bench-limited", a.key_limit)
        R["key_ids"] = ids
        answered = {k: 0 for k in KINDS}  # 2xx answers counted by wrk or the probes, per key
        slack = {k: 0 for k in KINDS}  # requests wrk may not have counted (in flight at its end), per key
        for i in range(2):
            replicas.append(Replica(i, work, logs, env, config))
            procs.append(replicas[-1].proc)
        for r in replicas:
            r.wait_ready(keys["unlimited"])
            answered["unlimited"] += 1  # its readiness probe
            slack["unlimited"] += r.timed_out
        R["startup_s"] = {r.name: r.startup_s for r in replicas}
        lb_url = start_balancer(work, logs, [r.port for r in replicas], procs)
        lb_pids = run.descendants(procs[-1].pid)
        targets = {k: Balanced(k, lb_url + "/api/v1/chat/completions", keys[k], replicas) for k in KINDS}
        for k in KINDS:  # each key answers through the balancer, on both replicas
            for _ in replicas:
                st, h, data = run.http(targets[k].url, run.request_body(run.EXPLICIT_MODEL, False),
                                       {"Authorization": f"Bearer {keys[k]}", "Content-Type": "application/json"})
                why = run.check_answer(st, h, data, False)
                if why:
                    raise RuntimeError(f"{k} key through the balancer: {why}")
                answered[k] += 1
        log(f"replicas up in {R['startup_s']} s; balancer {lb_url}; warm-up")
        for k in KINDS:
            w = run.wrk(targets[k], work, "json", a.conns, min(2.0, a.duration))
            answered[k] += w["requests"] - w["err_status"]
            slack[k] += a.conns
        time.sleep(PG_STATS_WAIT)  # the warm-up's transactions reported before the first run counts from there
        for i in range(a.repeat):
            for k in (KINDS if i % 2 == 0 else KINDS[::-1]):
                r = measure(targets[k], work, a.conns, a.duration, a.pg, db, lb_pids)
                answered[k] += r["requests"] - r["err_status"]
                slack[k] += a.conns
                R["runs"].append(r)
                log(f"{k:9s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors "
                    f"{r['errors']}  CPU/req: replicas {r['replicas_cpu_us_per_req']} us, postgres "
                    f"{r['postgres_cpu_us_per_req']} us, redis {r['redis_cpu_us_per_req']} us  others "
                    f"{r['others_cpu_pct']}%")
        R["medians"] = medians(R["runs"])
        R["records_after_wrk"] = settle(db_url, replicas, keys)
        exact = []
        for k in KINDS:  # a count wrk cannot give: every answer read, matched to its record by id
            since = time.time()
            got, failed = exact_phase(targets[k].url, keys[k], a.exact, a.conns)
            answered[k] += len(got)
            exact.append((k, since, got, failed))
        R["records"] = settle(db_url, replicas, keys)
        R["answered"], R["slack"] = answered, slack
        R["ledger_running"] = ledger(db_url)
        R["checks"] = check(R["ledger_running"], ids, answered, slack)
        R["checks"] += [check_exact(db_url, ids[k], k, since, got, failed) for k, since, got, failed in exact]
        for r in replicas:  # SIGTERM: a graceful stop gives the leases back
            r.proc.stop()
        R["ledger_stopped"] = ledger(db_url)
        R["checks"].append(check_released(R["ledger_stopped"]))
        for c in R["checks"]:
            log(f"{'ok' if c['ok'] else 'FAILED'}: {c['check']}: {c['detail']}")
    except BaseException as exc:
        R["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        log(f"failed: {R['error']}")
        raise
    finally:
        for p in reversed(procs):
            p.stop(signal.SIGQUIT if p.name in ("nginx", "balancer") else signal.SIGTERM)
        if created:
            try:
                pg(a.pg, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            except Exception as exc:
                print(f"could not drop database {db}: {exc}", file=sys.stderr)
        try:
            flush_redis(redis_url)
        except Exception as exc:
            print(f"could not flush {redis_url}: {exc}", file=sys.stderr)
        R["elapsed_s"] = round(time.perf_counter() - t_begin, 1)
        (out_dir / f"cluster-{stamp}.json").write_text(json.dumps(R, indent=1, default=str))
        md = render(R)
        (out_dir / "cluster-latest.md").write_text(md)
        print(md)
        log(f"results: {out_dir / f'cluster-{stamp}.json'} and {out_dir / 'cluster-latest.md'}")
    return 0 if all(c["ok"] for c in R["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
