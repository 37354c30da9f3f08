#!/usr/bin/env python3
# ruff: noqa: PLW1510, SIM115, BLE001, RUF046, RUF059
"""metarouter gateway benchmark: one command, every figure of issue 7, side by side with the mock and LiteLLM.

    bench/gateway/run.sh            # full run (~12-15 min)
    bench/gateway/run.sh --quick    # ~3 min: 1 and 50 connections, short runs, no LiteLLM, no profiles

What runs (all on 127.0.0.1):
  * nginx (pinned to CPU 1) serves a fixed OpenAI chat.completion JSON or a fixed SSE stream (chosen by the
    request's ``Accept: text/event-stream``, as metarouter's OpenAI adapter sends it) on POST /v1/chat/completions,
    and the same after 200 ms (``echo_sleep``, nginx's echo module) on /slow/v1/chat/completions;
  * targets (pinned to CPU 0): ``direct`` (nginx itself), ``relay`` (bare_relay.py: the same Python stack with no
    features; the ceiling), ``metarouter`` with an explicit model and with ``model: "auto"``, and ``litellm``
    (a LiteLLM proxy from a separate venv, when one is installed);
  * load: wrk (pinned to CPU 1 with nginx) at 1, 10, 50, 200 connections, JSON and streaming; ttfb.py for
    time-to-first-byte; /proc for peak RSS (VmHWM) and CPU time per request; py-spy for profiles.

Results: ``bench/gateway/results/<UTC stamp>.json`` (every raw figure) and ``.md`` (the tables, checked against the
issue's targets), both also copied to ``results/latest.*``; profiles in ``bench/gateway/profiles/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY = sys.executable
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
EXPLICIT_MODEL = "openai/gpt-4o-mini-2024-07-18"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
LITELLM_KEY = "sk-bench-litellm"
GW_CPU, LOAD_CPU = "0", "1"
SRC_OVERRIDE = ""  # --ref: a src/ exported from a commit, put first on the gateway's PYTHONPATH
KEY_LIMIT = ""  # --key-limit: the bench key's spending limit in USD (none: an unlimited key)

# --- the fixed upstream answers ---------------------------------------------------------------------------------
COMPLETION = {
    "id": "chatcmpl-bench0001", "object": "chat.completion", "created": 1767225600, "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?",
                                         "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
}


def sse_body() -> str:
    base = {"id": "chatcmpl-bench0001", "object": "chat.completion.chunk", "created": 1767225600,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench"}
    deltas = [{"role": "assistant", "content": ""}, {"content": "Hello!"}, {"content": " How can I"},
              {"content": " help you"}, {"content": " today?"}]
    frames = [{**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]} for d in deltas]
    frames.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    frames.append({**base, "choices": [], "usage": COMPLETION["usage"]})
    return "".join(f"data: {json.dumps(f, separators=(',', ':'))}\n\n" for f in frames) + "data: [DONE]\n\n"


def request_body(model: str, stream: bool, distinct: bool = False) -> bytes:
    """The request every run sends. ``distinct``: the user message carries ``__N__``, which post.lua replaces with a
    request counter, so every prompt is new to the router's text cache (the system prompt still repeats)."""
    user = "Say hello in one short sentence." + (" Ticket __N__." if distinct else "")
    body: dict[str, Any] = {"model": model, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": user}], "max_tokens": 64}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


# --- processes -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return (["taskset", "-c", cpus] if cpus else []) + argv


class Proc:
    """A child process with its log; stopped by pid (never by name)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.t_start = time.perf_counter()
        self.p = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                  start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def is_python_worker(pid: int) -> bool:
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes() or b"litellm" in Path(
            f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def check_answer(status: int, headers: dict[str, str], data: bytes, stream: bool) -> str | None:
    """None when the answer is a well-formed success, else why not."""
    if status != 200:
        return f"HTTP {status}: {data[:300].decode(errors='replace')}"
    if stream:
        if b"data: [DONE]" not in data or b"Hello" not in data.replace(b'"Hello!', b'Hello'):
            return f"stream without content or [DONE]: {data[:300]!r}"
    else:
        try:
            obj = json.loads(data)
            assert obj["choices"][0]["message"]["content"]
        except Exception:
            return f"not a chat.completion: {data[:300]!r}"
    return None


# --- nginx ------------------------------------------------------------------------------------------------------
def nginx_head(work: Path) -> str:
    """The start of a benchmark nginx config, up to the open ``http {`` block: one worker in the foreground, its
    files under ``work``, no logs, long keep-alive (the upstream and the balancer of cluster.py alike)."""
    return f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {work}/ngx-body;
    proxy_temp_path {work}/ngx-proxy;
    fastcgi_temp_path {work}/ngx-fastcgi;
    uwsgi_temp_path {work}/ngx-uwsgi;
    scgi_temp_path {work}/ngx-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    tcp_nodelay on;"""


def nginx_conf(work: Path, port: int, echo: bool) -> str:
    json_body = json.dumps(COMPLETION, separators=(",", ":"))
    sse = sse_body()
    for s in (json_body, sse):
        assert "'" not in s and "$" not in s and "\\" not in s
    slow = ""
    if echo:
        slow = f"""
        location = /slow/v1/chat/completions {{
            default_type application/json;
            echo_sleep 0.2;
            echo -n '{json_body}';
        }}"""
    return ("load_module " + str(ECHO_MODULE) + ";" if echo else "") + nginx_head(work) + f"""
    map $http_accept $bench_sse {{ default 0; "~event-stream" 1; }}
    server {{
        listen 127.0.0.1:{port} backlog=8192;
        location = /v1/chat/completions {{
            if ($bench_sse) {{ rewrite ^ /_sse last; }}
            rewrite ^ /_json last;
        }}
        location = /json/v1/chat/completions {{ rewrite ^ /_json last; }}
        location = /sse/v1/chat/completions {{ rewrite ^ /_sse last; }}
        location = /_json {{ internal; default_type application/json; return 200 '{json_body}'; }}
        location = /_sse {{ internal; default_type text/event-stream; return 200 '{sse}'; }}{slow}
    }}
}}
"""


def start_nginx(work: Path, logs: Path) -> tuple[Proc, int, bool]:
    echo = ECHO_MODULE.exists()
    port = free_port()
    for d in ("ngx-body", "ngx-proxy", "ngx-fastcgi", "ngx-uwsgi", "ngx-scgi"):
        (work / d).mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(nginx_conf(work, port, echo))
    proc = Proc("nginx", pinned(LOAD_CPU, ["nginx", "-c", str(conf), "-p", str(work), "-e",
                                          str(work / "nginx-error.log")]), logs)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http(base + "/v1/chat/completions", b"{}")[0] == 200, 10, proc)
    NGINX_PIDS[:] = descendants(proc.pid)
    return proc, port, echo


def wait_until(pred, timeout: float, proc: Proc | None = None, step: float = 0.02) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.p.returncode}: {proc.tail()}")
        try:
            if pred():
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout}s waiting for {proc.name if proc else 'a condition'}: "
                       f"{proc.tail() if proc else ''}")


# --- targets ----------------------------------------------------------------------------------------------------
class Target:
    name: str
    url: str
    auth: str = ""
    proc: Proc | None = None
    startup_s: float | None = None
    ready_s: float | None = None
    models: dict[str, str]  # scenario -> model id

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc else []

    def workers(self) -> list[int]:
        """The serving processes: the leaves that run Python (uvicorn's supervisor is excluded with workers>1)."""
        pids = [p for p in self.pids() if is_python_worker(p) and b"resource_tracker" not in cmdline(p)]
        if len(pids) > 1:
            pids = pids[1:]  # the first is the supervisor
        return pids

    def rss(self) -> dict[str, Any]:
        ws = self.workers()
        return {"workers": len(ws), "peak_rss_mb": [round((status_kb(p, "VmHWM") or 0) / 1024, 1) for p in ws],
                "rss_mb": [round((status_kb(p, "VmRSS") or 0) / 1024, 1) for p in ws]}

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


class Direct(Target):
    def __init__(self, port: int):
        self.name, self.url, self.models = "direct", f"http://127.0.0.1:{port}/v1/chat/completions", {
            "json": "gpt-4o-mini", "stream": "gpt-4o-mini"}


def metarouter_config(work: Path, upstream: str) -> Path:
    import yaml

    providers = {p: {"base_url": upstream, "api_key_env": UPSTREAM_KEY_ENV}
                 for p in ("openai", "deepseek", "mistral", "together")}
    cfg = {"providers": providers}
    path = work / "metarouter.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def create_key(env: dict[str, str], config: Path, data: Path, label: str, limit: str | None) -> tuple[str, str]:
    """``metarouter keys create`` on the store ``config``/``data``/``env`` name: (the key, its public id)."""
    out = subprocess.run([PY, "-m", "metarouter.cli", "keys", "create", "--label", label, "--config", str(config),
                          "--data-dir", str(data), *(["--limit", limit] if limit else [])], env=env,
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"keys create failed: {out.stderr[-2000:]}")
    public_id = out.stderr.split("created key ", 1)[1].split()[0]
    return out.stdout.strip().splitlines()[-1], public_id


class Metarouter(Target):
    def __init__(self, name: str, work: Path, logs: Path, upstream: str, workers: int = 1, cpus: str | None = GW_CPU):
        self.name = name
        self.data = work / name
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = metarouter_config(self.data, upstream)
        self.env = {**os.environ, UPSTREAM_KEY_ENV: "bench", "METAROUTER_HOME": str(self.data)}
        if SRC_OVERRIDE:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC_OVERRIDE, os.environ.get("PYTHONPATH")]))
        self.models = {"json": EXPLICIT_MODEL, "stream": EXPLICIT_MODEL}
        self.auth, _ = create_key(self.env, self.config, self.data, "bench", KEY_LIMIT)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
        self.proc = Proc(name, pinned(cpus, [PY, "-m", "metarouter.cli", "serve", "--config", str(self.config),
                                             "--port", str(port), "--data-dir", str(self.data), "--workers",
                                             str(workers), "--log-level", "warning"]), logs, env=self.env, cwd=REPO)
        t0 = self.proc.t_start
        body = request_body(EXPLICIT_MODEL, False)
        hdrs = {"Authorization": f"Bearer {self.auth}", "Content-Type": "application/json"}
        wait_until(lambda: http(self.url, body, hdrs, timeout=2)[0] == 200, 60, self.proc, step=0.005)
        self.startup_s = round(time.perf_counter() - t0, 3)


class Relay(Target):
    def __init__(self, logs: Path, upstream: str):
        self.name, self.models = "relay", {"json": "gpt-4o-mini", "stream": "gpt-4o-mini"}
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.proc = Proc("relay", pinned(GW_CPU, [PY, str(HERE / "bare_relay.py"), str(port), upstream]), logs)
        body = request_body("x", False)
        wait_until(lambda: http(self.url, body, {"Content-Type": "application/json"})[0] == 200, 30, self.proc)
        self.startup_s = round(time.perf_counter() - self.proc.t_start, 3)


class LiteLLM(Target):
    def __init__(self, work: Path, logs: Path, exe: Path, nginx_base: str):
        import yaml

        self.name, self.auth = "litellm", LITELLM_KEY
        self.models = {"json": "bench-json", "stream": "bench-sse"}
        cfg = {
            "model_list": [
                {"model_name": "bench-json", "litellm_params": {
                    "model": "openai/gpt-4o-mini", "api_base": nginx_base + "/json/v1", "api_key": "bench"}},
                {"model_name": "bench-sse", "litellm_params": {
                    "model": "openai/gpt-4o-mini", "api_base": nginx_base + "/sse/v1", "api_key": "bench"}},
            ],
            "general_settings": {"master_key": LITELLM_KEY},
            "litellm_settings": {"telemetry": False, "drop_params": True},
        }
        path = work / "litellm.yaml"
        path.write_text(yaml.safe_dump(cfg))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True",
               "DISABLE_ADMIN_UI": "True"}
        env.pop("VIRTUAL_ENV", None)
        self.proc = Proc("litellm", pinned(GW_CPU, [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port",
                                                    str(port), "--num_workers", "1"]), logs, env=env, cwd=work)
        body = request_body("bench-json", False)
        hdrs = {"Authorization": f"Bearer {LITELLM_KEY}", "Content-Type": "application/json"}
        wait_until(lambda: http(self.url, body, hdrs, timeout=5)[0] == 200, 180, self.proc, step=0.1)
        self.startup_s = round(time.perf_counter() - self.proc.t_start, 3)


# --- load -------------------------------------------------------------------------------------------------------
def body_file(work: Path, model: str, stream: bool, distinct: bool = False) -> Path:
    p = work / f"body-{model.replace('/', '_')}-{'sse' if stream else 'json'}{'-distinct' if distinct else ''}.json"
    if not p.exists():
        p.write_bytes(request_body(model, stream, distinct))
    return p


NGINX_PIDS: list[int] = []


def median_run(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median req/s (the lower middle one of an even count), with every run's figures attached."""
    r = sorted(rs, key=lambda x: x["rps"])[(len(rs) - 1) // 2]
    if len(rs) > 1:
        r["repeats"] = [{k: x[k] for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "foreign_cpu_pct")}
                        for x in rs]
    return r


def system_ticks() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, steal seconds) from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wrk(target: Target, work: Path, scenario: str, conns: int, duration: float, timeout: str = "5s",
        url: str | None = None, threads: int = 1, wrk_cpus: str | None = LOAD_CPU) -> dict[str, Any]:
    stream = scenario.endswith("stream")
    distinct = "distinct" in scenario
    model = target.models[scenario]
    env = {**os.environ, "WRK_BODY": str(body_file(work, model, stream, distinct)), "WRK_AUTH": target.auth,
           "WRK_STREAM": "1" if stream else "0", "WRK_DISTINCT": "1" if distinct else "0"}
    pids = target.pids()
    cpu0, ng0, busy0, ch0, t0 = cpu_seconds(pids), cpu_seconds(NGINX_PIDS), system_ticks(), children_cpu(), time.time()
    argv = pinned(wrk_cpus, ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, int(round(duration)))}s", f"--timeout={timeout}",
                             "-s", str(HERE / "post.lua"), url or target.url])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    cpu = cpu_seconds(pids) - cpu0
    busy1, wall = system_ticks(), time.time() - t0
    ours = cpu + (cpu_seconds(NGINX_PIDS) - ng0) + (children_cpu() - ch0)
    foreign = max(0.0, (busy1[0] - busy0[0]) - ours)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    r = json.loads(line[len("WRKJSON "):])
    secs = r["duration_us"] / 1e6
    ok = r["requests"] - r["err_status"]
    r.update(target=target.name, scenario=scenario, conns=conns, rps=round(r["requests"] / secs, 1),
             ok_rps=round(ok / secs, 1), p50_ms=r["p50_us"] / 1000, p90_ms=r["p90_us"] / 1000,
             p99_ms=r["p99_us"] / 1000, errors=r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"]
             + r["err_timeout"], target_cpu_s=round(cpu, 3),
             cpu_us_per_req=round(cpu / r["requests"] * 1e6, 1) if r["requests"] else None,
             foreign_cpu_pct=round(100 * foreign / (wall * (os.cpu_count() or 1)), 1),
             steal_pct=round(100 * (busy1[1] - busy0[1]) / (wall * (os.cpu_count() or 1)), 1))
    if isinstance(target, Metarouter) and model == "auto":
        r.update(decision_times(target.data / "metarouter.db", t0, t0 + wall))
    return r


def decision_times(db: Path, since: float, until: float) -> dict[str, Any]:
    """The router's own time per decision inside the loaded server (``routing.decision_ms`` of the run's
    records, read from the SQLite ledger once it has written them): p50 and p99 in µs."""
    import sqlite3

    time.sleep(0.5)  # the ledger writes in batches
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute("SELECT json_extract(routing, '$.decision_ms') FROM generations "
                           "WHERE created_at BETWEEN ? AND ? AND routing IS NOT NULL", (since, until)).fetchall()
        con.close()
    except sqlite3.Error as e:
        return {"decision_error": str(e)}
    ms = sorted(v for (v,) in rows if v is not None)
    if not ms:
        return {}
    pick = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))] * 1000, 1)  # noqa: E731
    return {"decision_us_p50": pick(0.5), "decision_us_p99": pick(0.99), "decisions": len(ms)}


def ttfb(target: Target, work: Path, concurrency: int, duration: float) -> dict[str, Any]:
    model = target.models["stream"]
    argv = pinned(LOAD_CPU, [PY, str(HERE / "ttfb.py"), "--url", target.url, "--body",
                             str(body_file(work, model, True)), "--auth", target.auth, "--stream", "--concurrency",
                             str(concurrency), "--duration", str(duration)])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"ttfb.py failed: {out.stderr[-1500:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r.update(target=target.name)
    return r


def py_spy(target: Target, work: Path, scenario: str, conns: int, duration: float, out_stem: Path,
           svg: bool) -> dict[str, Any]:
    """Profile the (first) worker while wrk drives it: collapsed stacks (open them in speedscope.app), an SVG."""
    exe = Path(PY).parent / "py-spy"
    if not exe.exists() and not shutil.which("py-spy"):
        return {"skipped": "py-spy not installed (.venv/bin/pip install py-spy)"}
    exe_s = str(exe) if exe.exists() else shutil.which("py-spy")
    pid = target.workers()[0]
    results: dict[str, Any] = {"scenario": scenario, "conns": conns, "files": []}
    formats = [("raw", out_stem.with_suffix(".collapsed.txt"))] + ([("flamegraph", out_stem.with_suffix(".svg"))]
                                                                     if svg else [])
    for fmt, path in formats:
        spy = subprocess.Popen(pinned(LOAD_CPU, [exe_s, "record", "--pid", str(pid), "--rate", "250", "--duration",
                                                 str(int(duration)), "--format", fmt, "-o", str(path), "--threads"]),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        load = wrk(target, work, scenario, conns, duration)
        log = spy.communicate(timeout=duration + 60)[0]
        if spy.returncode != 0 or not path.exists():
            return {"skipped": f"py-spy failed: {log[-800:]}"}
        results["files"].append(str(path.relative_to(REPO)))
        results.setdefault("load", load)
    results["top"] = summarize_collapsed(formats[0][1])
    return results


def summarize_collapsed(path: Path, top: int = 60) -> dict[str, Any]:
    """Where the event loop's time goes: per function (self = leaf frame, inclusive = anywhere on the stack) and
    per component (package of the leaf frame), as % of the event-loop thread's (MainThread's) samples. Other
    threads are reported beside it, as % of the same count; the writer thread's samples while it waits for work
    (leaf ``SQLiteStore._run``, or a ``threading`` wait under it; py-spy does not always see these as idle) are
    left out."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    comp: dict[str, int] = {}
    threads: dict[str, int] = {}
    main = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        frames = [f for f in stack.split(";") if f]
        thread = "MainThread"
        if frames and frames[0].startswith("thread ("):
            thread = frames.pop(0).split(": ", 1)[-1]
        frames = [_short(f) for f in frames]
        if thread != "MainThread":
            if frames and (frames[-1].startswith("SQLiteStore._run ") or (
                    frames[-1].endswith("(threading.py)") and any(f.startswith("SQLiteStore._run ") for f in frames))):
                continue  # waiting for work (on its queue, or on the group commit's event)
            threads[thread] = threads.get(thread, 0) + k
            continue
        main += k
        if frames:
            leaf = frames[-1]
            self_c[leaf] = self_c.get(leaf, 0) + k
            c = component(leaf)
            comp[c] = comp.get(c, 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k

    def pct(d: dict[str, int], n: int = top) -> list[list[Any]]:
        return [[name, round(100 * v / max(main, 1), 1)] for name, v in sorted(d.items(), key=lambda x: -x[1])[:n]]

    return {"samples": main, "other_threads_busy": pct(threads), "self": pct(self_c), "inclusive": pct(incl, 200),
            "by_component": pct(comp)}


def _short(frame: str) -> str:
    """``fn (path/to/site-packages/pkg/mod.py:123)`` -> ``fn (pkg/mod.py)``."""
    if " (" not in frame:
        return frame
    fn, loc = frame.split(" (", 1)
    loc = loc.rstrip(")").rsplit(":", 1)[0].split("site-packages/")[-1].split("src/")[-1]
    return f"{fn} ({loc})"


def component(frame: str) -> str:
    f = frame.lower()
    if "metarouter/gateway/upstream.py" in f:
        return "metarouter upstream client"
    if "metarouter/store/" in f:
        return "metarouter store"
    for key in ("metarouter/", "starlette/", "uvicorn/", "aiohttp/", "yarl/", "multidict/", "asyncio/", "uvloop",
                "sqlite", "orjson", "httptools", "threading", "logging/", "selectors", "ssl", "json/"):
        if key in f:
            return key.rstrip("/")
    return "other: " + frame.split(" (", 1)[-1].rstrip(")")


# --- the run ----------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = status_mem()

    def ver(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "absent"

    def pyver(mod: str, py: str = PY) -> str:
        r = subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version('{mod}'))"],
                           capture_output=True, text=True)
        return r.stdout.strip() or "absent"

    git = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %ci %s"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True).stdout.strip()
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": os.cpu_count(), "cpu_model": cpu, "mem_total_gb": mem, "kernel": platform.release(),
        "python": platform.python_version(), "git_head": git,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3], "src_uncommitted_changes": bool(dirty),
        "versions": {"nginx": ver(["nginx", "-v"]), "wrk": ver(["wrk", "-v"]),
                     **{m: pyver(m) for m in ("metarouter", "starlette", "uvicorn", "uvloop", "httptools",
                                              "aiohttp", "orjson", "py-spy")}},
    }


def status_mem() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~3 minutes: 1 and 50 connections, 3 s runs")
    ap.add_argument("--duration", type=float, help="seconds per wrk run (default 8, quick 3)")
    ap.add_argument("--conns", help="comma-separated connection counts (default 1,10,50,200; quick 1,50)")
    ap.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm",
                    help="the litellm executable of a separate venv ('' or 'none' to skip; skipped by --quick "
                         "unless given explicitly)")
    ap.add_argument("--no-profile", action="store_true", help="skip py-spy profiles")
    ap.add_argument("--profile", action="store_true", help="take py-spy profiles even with --quick")
    ap.add_argument("--only", default="", help="comma-separated targets to run (direct,relay,explicit,auto,litellm)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for the machine to be idle (others' CPU < 10%% over 3 s)")
    ap.add_argument("--disturbed", type=float, default=15.0, metavar="PCT",
                    help="a run during which other processes used more than PCT%% of the CPUs is repeated")
    ap.add_argument("--retries", type=int, default=2, help="repeats of a disturbed run (the least disturbed is kept)")
    ap.add_argument("--repeat", type=int, help="runs at 1 and 50 connections (the targets' figures) and of the "
                    "--workers comparison, per target and kind; the median by req/s is kept, all are recorded "
                    "(default 3, quick 1)")
    ap.add_argument("--src", help="benchmark the metarouter package under this src/ directory (e.g. a patched copy)")
    ap.add_argument("--ref", help="benchmark this commit's src/ (git archive to a temp dir) instead of the working tree")
    ap.add_argument("--key-limit", metavar="USD", help="give the bench key this spending limit (budget holds on every "
                         "request) instead of none")
    ap.add_argument("--out", default=str(HERE / "results"), help="where the results go")
    a = ap.parse_args()

    # stop cleanly (children stopped, partial results written) on Ctrl-C or kill, also when started in the
    # background, where SIGINT arrives ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    dur = a.duration or (3.0 if a.quick else 8.0)
    repeat = max(1, a.repeat or (1 if a.quick else 3))
    conns = [int(c) for c in (a.conns or ("1,50" if a.quick else "1,10,50,200")).split(",")]
    litellm_exe = None if (a.litellm in ("", "none") or (a.quick and "--litellm" not in sys.argv)) else Path(a.litellm)
    profile = a.profile or (not a.no_profile and not a.quick)
    only = set(filter(None, a.only.split(",")))
    want = lambda name: not only or name in only
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            print(f"missing `{tool}`: apt-get update && apt-get install -y nginx wrk util-linux "
                  "libnginx-mod-http-echo", file=sys.stderr)
            return 2
    try:  # 1,000 connections in, 1,000 out, plus nginx's: raise the descriptor limit for us and our children
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    except (ValueError, OSError):
        pass

    if a.wait_quiet:
        deadline = time.time() + a.wait_quiet
        while True:
            b0 = system_ticks()[0]
            time.sleep(3)
            busy = 100 * (system_ticks()[0] - b0) / (3 * (os.cpu_count() or 1))
            if busy < 10 or time.time() > deadline:
                print(f"machine busy {busy:.0f}% before the run", flush=True)
                break
    global SRC_OVERRIDE, KEY_LIMIT
    KEY_LIMIT = a.key_limit or ""
    if a.ref:
        ref_dir = Path(tempfile.mkdtemp(prefix="mr-bench-src-"))
        arch = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", a.ref, "src"], capture_output=True,
                              check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(ref_dir)], input=arch, check=True)
        SRC_OVERRIDE = str(ref_dir / "src")
        print(f"benchmarking {a.ref} from {SRC_OVERRIDE}", flush=True)
    if a.src:
        SRC_OVERRIDE = str(Path(a.src).resolve())
        print(f"benchmarking the package under {SRC_OVERRIDE}", flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if a.quick else "")
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    prof_dir = HERE / "profiles"
    work = Path(tempfile.mkdtemp(prefix="mr-bench-"))
    logs = work / "logs"
    logs.mkdir()
    print(f"work dir {work}; {dur:g} s per run at {conns} connections", flush=True)
    t_begin = time.perf_counter()
    meta = machine()
    meta["key_limit_usd"] = KEY_LIMIT or None
    if a.src:
        meta["src"] = SRC_OVERRIDE
    if a.ref:
        meta["git_head"] = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %ci %s", a.ref],
                                          capture_output=True, text=True).stdout.strip()
        meta["src_uncommitted_changes"] = False
        meta["ref"] = a.ref
    R: dict[str, Any] = {"meta": meta, "mode": "quick" if a.quick else "full", "duration_s": dur,
                         "conns": conns, "pinning": {"targets": f"taskset -c {GW_CPU}",
                                                     "wrk_nginx_ttfb_pyspy": f"taskset -c {LOAD_CPU}"},
                         "runs": [], "availability": {}, "startup_s": {}, "rss": {}, "ttfb": [], "profiles": {},
                         "inflight": {}, "workers": {}}
    if litellm_exe is not None:
        R["meta"]["versions"]["litellm"] = (subprocess.run(
            [str(litellm_exe.parent / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True).stdout.strip() or "absent") if litellm_exe.exists() else "not installed"
    live: list[Target] = []
    nginx = None

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_begin:6.1f}s] {msg}", flush=True)

    def measured(t: Target, sc: str, c: int) -> dict[str, Any]:
        """One wrk run, repeated (least disturbed kept) while other work on the machine used too much CPU."""
        r = wrk(t, work, sc, c, dur)
        tries = [r]
        while r["foreign_cpu_pct"] > a.disturbed and len(tries) <= a.retries:
            log(f"{t.name} {sc} c={c}: others used {r['foreign_cpu_pct']}% of the CPUs; again")
            time.sleep(2)
            tries.append(wrk(t, work, sc, c, dur))
            r = min(tries, key=lambda x: x["foreign_cpu_pct"])
        r["attempts"] = len(tries)
        return r

    def series(t: Target, scenarios: list[str]) -> None:
        log(f"{t.name}: warm-up")
        for sc in scenarios:
            wrk(t, work, sc, 10, min(2.0, dur))
        for sc in scenarios:
            for c in conns:
                n = repeat if (c in (1, 50) and t.name != "direct") else 1
                rs = [measured(t, sc, c) for _ in range(n)]
                r = median_run(rs)
                R["runs"].append(r)
                log(f"{t.name:10s} {sc:7s} c={c:<4d} {r['rps']:9.1f} req/s  p50 {r['p50_ms']:8.3f} ms  "
                    f"p99 {r['p99_ms']:8.3f} ms  errors {r['errors']}  cpu {r['cpu_us_per_req']} us/req  "
                    f"foreign {r['foreign_cpu_pct']}%" +
                    (f"  decision p50 {r['decision_us_p50']} us" if r.get("decision_us_p50") is not None else ""))

    def availability(t: Target, scenario: str) -> bool:
        stream = scenario.endswith("stream")
        hdrs = {"Content-Type": "application/json"}
        if t.auth:
            hdrs["Authorization"] = f"Bearer {t.auth}"
        if stream:
            hdrs["Accept"] = "text/event-stream"
        st, h, data = http(t.url, request_body(t.models[scenario], stream), hdrs, timeout=30)
        why = check_answer(st, h, data, stream)
        R["availability"][f"{t.name}/{scenario}"] = why or "ok"
        R.setdefault("samples", {})[f"{t.name}/{scenario}"] = data[:1500].decode(errors="replace")
        if why:
            log(f"{t.name}/{scenario} UNAVAILABLE: {why}")
        return why is None

    try:
        nginx, nport, echo = start_nginx(work, logs)
        base = f"http://127.0.0.1:{nport}"
        log(f"nginx on {base} (echo module for the 200 ms upstream: {'yes' if echo else 'no'})")
        direct = Direct(nport)
        if want("direct"):
            for sc in ("json", "stream"):
                availability(direct, sc)
            series(direct, ["json", "stream"])
            R["ttfb"].append(ttfb(direct, work, 1, min(5.0, dur)))

        if want("relay"):
            relay = Relay(logs, base + "/v1")
            live.append(relay)
            R["startup_s"]["relay"] = relay.startup_s
            series(relay, ["json", "stream"])
            R["ttfb"].append(ttfb(relay, work, 1, min(5.0, dur)))
            if profile:
                log("py-spy: relay json at 50 connections")
                R["profiles"]["relay-json"] = py_spy(relay, work, "json", 50, min(dur, 10), prof_dir / "relay-json",
                                                     svg=False)
            R["rss"]["relay"] = relay.rss()
            relay.stop()
            live.remove(relay)

        if want("explicit") or want("auto"):
            mr = Metarouter("metarouter", work, logs, base + "/v1")
            live.append(mr)
            R["startup_s"]["metarouter"] = mr.startup_s
            R["rss"]["metarouter_idle"] = mr.rss()
            log(f"metarouter up in {mr.startup_s} s (process start to first 200 on a chat request)")
            if want("explicit"):
                ok = [sc for sc in ("json", "stream") if availability(mr, sc)]
                series(mr, ok)
                if "stream" in ok:
                    R["ttfb"].append(ttfb(mr, work, 1, min(5.0, dur)))
                    R["ttfb"].append({**ttfb(mr, work, 10, min(5.0, dur)), "note": "10 connections"})
                    R["ttfb"].append({**ttfb(direct, work, 10, min(5.0, dur)), "note": "10 connections"})
                if profile and ok:
                    for sc in ok:
                        log(f"py-spy: metarouter explicit {sc} at 50 connections")
                        R["profiles"][f"explicit-{sc}"] = py_spy(mr, work, sc, 50, min(dur, 10), prof_dir /
                                                                 f"metarouter-explicit-{sc}", svg=(sc == "json"))
            if want("auto"):
                auto = Metarouter.__new__(Metarouter)
                auto.__dict__.update(mr.__dict__)
                auto.name = "metarouter-auto"
                auto.models = {"json": "auto", "json-distinct": "auto", "stream": "auto"}
                auto.proc = mr.proc
                ok = [sc for sc in ("json", "json-distinct", "stream") if availability(auto, sc)]
                if ok:
                    series(auto, ok)
                    if profile:
                        log("py-spy: metarouter auto json at 50 connections")
                        R["profiles"]["auto-json"] = py_spy(auto, work, "json", 50, min(dur, 10),
                                                            prof_dir / "metarouter-auto-json", svg=True)
            R["rss"]["metarouter"] = mr.rss()
            mr.stop()
            live.remove(mr)

        if want("explicit"):  # --workers 2 vs 1: both unpinned, wrk and nginx on CPU 1 as everywhere
            for w in (1, 2):
                g = Metarouter(f"metarouter-w{w}", work, logs, base + "/v1", workers=w, cpus=None)
                live.append(g)
                R["startup_s"][f"metarouter-w{w}-unpinned"] = g.startup_s
                wrk(g, work, "json", 50, min(2.0, dur))
                r = median_run([wrk(g, work, "json", 50, dur) for _ in range(repeat)])
                R["workers"][str(w)] = r
                R["rss"][f"metarouter-w{w}"] = g.rss()
                log(f"metarouter --workers {w} (unpinned): {r['rps']} req/s p99 {r['p99_ms']} ms")
                g.stop()
                live.remove(g)

        if echo and want("explicit"):  # 1,000 concurrent in-flight requests against the 200 ms upstream
            slow_direct = Direct(nport)
            slow_direct.name, slow_direct.url = "direct-200ms", base + "/slow/v1/chat/completions"
            R["inflight"]["direct"] = wrk(slow_direct, work, "json", 1000, dur, timeout="10s")
            g = Metarouter("metarouter-200ms", work, logs, base + "/slow/v1")
            live.append(g)
            wrk(g, work, "json", 100, min(2.0, dur), timeout="10s")
            r = wrk(g, work, "json", 1000, dur, timeout="10s")
            R["inflight"]["metarouter"] = r
            R["rss"]["metarouter-200ms-1000-inflight"] = g.rss()
            log(f"1,000 in flight, 200 ms upstream: direct {R['inflight']['direct']['rps']} req/s, "
                f"metarouter {r['rps']} req/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms errors {r['errors']}")
            g.stop()
            live.remove(g)
        elif not echo:
            R["inflight"]["skipped"] = "nginx echo module missing: apt-get install -y libnginx-mod-http-echo"

        if litellm_exe is not None and want("litellm"):
            if not litellm_exe.exists():
                R["availability"]["litellm"] = (f"not installed at {litellm_exe} (python3 -m venv /tmp/litellm-venv "
                                                "&& /tmp/litellm-venv/bin/pip install 'litellm[proxy]')")
                log(R["availability"]["litellm"])
            else:
                try:
                    ll = LiteLLM(work, logs, litellm_exe, base)
                    live.append(ll)
                    R["startup_s"]["litellm"] = ll.startup_s
                    log(f"litellm up in {ll.startup_s} s")
                    ok = [sc for sc in ("json", "stream") if availability(ll, sc)]
                    series(ll, ok)
                    if "stream" in ok:
                        R["ttfb"].append(ttfb(ll, work, 1, min(5.0, dur)))
                    R["rss"]["litellm"] = ll.rss()
                    ll.stop()
                    live.remove(ll)
                except Exception as exc:
                    R["availability"]["litellm"] = f"failed: {exc}"[:2000]
                    log(f"litellm failed: {exc}")
    finally:
        for t in live:
            t.stop()
        if nginx is not None:
            nginx.stop(signal.SIGQUIT)
        R["elapsed_s"] = round(time.perf_counter() - t_begin, 1)
        R["logs"] = str(logs)
        js = out_dir / f"{stamp}.json"
        js.write_text(json.dumps(R, indent=1))
        md = out_dir / f"{stamp}.md"
        from report import render

        md.write_text(render(R))
        for src_, name in ((js, "latest.json"), (md, "latest.md")):
            if not a.quick or a.out != str(HERE / "results"):
                shutil.copyfile(src_, out_dir / name)
            else:
                shutil.copyfile(src_, out_dir / name.replace("latest", "latest-quick"))
        log(f"results: {js} and {md}")
    print((out_dir / f"{stamp}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
