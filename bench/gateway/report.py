# ruff: noqa: ISC004, SIM115
"""Render a run's JSON (``results/*.json``) as Markdown tables checked against issue 7's targets.

``python bench/gateway/report.py results/latest.json`` re-renders a stored run.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _run(R: dict, target: str, scenario: str, conns: int) -> dict | None:
    return next((r for r in R["runs"] if r["target"] == target and r["scenario"] == scenario and r["conns"] == conns),
                None)


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _ttfb(R: dict, target: str, conc: int = 1) -> dict | None:
    return next((t for t in R["ttfb"] if t["target"] == target and t.get("concurrency", 1) == conc), None)


def _spread(r: dict) -> str:
    """The range over repeated runs, when the figure is the median of several."""
    reps = r.get("repeats")
    if not reps:
        return ""
    lo, hi = min(x["rps"] for x in reps), max(x["rps"] for x in reps)
    return f" (median of {len(reps)}: {lo:,.0f}–{hi:,.0f})"


def _reps(r: dict) -> str:
    return ", ".join(f"{x['rps']:,.0f}" for x in r.get("repeats") or []) or "—"


def _disturbed(*runs: dict, limit: float = 15.0) -> str:
    """A note when other work on the machine used more than ``limit``% of the CPUs during one of these runs."""
    bad = [f"{r['target']} {r.get('foreign_cpu_pct')}%" for r in runs if (r.get("foreign_cpu_pct") or 0) > limit]
    return f" (others' CPU during: {', '.join(bad)})" if bad else ""


def targets(R: dict) -> list[tuple[str, str, str, str]]:
    """(target, goal, measured, verdict) rows."""
    rows = []

    def verdict(ok: bool | None, miss: str) -> str:
        return "n/a" if ok is None else ("**PASS**" if ok else f"**MISS** {miss}")

    d1, m1, a1 = (_run(R, t, "json", 1) for t in ("direct", "metarouter", "metarouter-auto"))
    if d1 and m1:
        o50, o99 = m1["p50_ms"] - d1["p50_ms"], m1["p99_ms"] - d1["p99_ms"]
        note = _disturbed(d1, m1)
        rows.append(("overhead p50, 1 conn, explicit", "≤ 0.4 ms", f"{o50:.3f} ms{note}",
                     verdict(o50 <= 0.4, f"by {o50 - 0.4:.3f} ms ({o50 / 0.4:.1f}× the budget)")))
        if o99 < 0 or note:
            rows.append(("overhead p99, 1 conn, explicit", "≤ 1.5 ms", f"{o99:.3f} ms{note}: gateway p99 "
                         f"{m1['p99_ms']:.3f} ms, direct p99 {d1['p99_ms']:.3f} ms", "**unclear** (baseline noisy)"))
        else:
            rows.append(("overhead p99, 1 conn, explicit", "≤ 1.5 ms", f"{o99:.3f} ms",
                         verdict(o99 <= 1.5, f"by {o99 - 1.5:.3f} ms")))
    if m1:
        if a1:
            extra = a1["p50_ms"] - m1["p50_ms"]
            rows.append(("auto adds (p50, 1 conn)", "≤ 0.3 ms", f"{extra:.3f} ms",
                         verdict(extra <= 0.3, f"by {extra - 0.3:.3f} ms")))
        else:
            rows.append(("auto adds (p50, 1 conn)", "≤ 0.3 ms", "auto unavailable", "**not measured**"))
    ad = _run(R, "metarouter-auto", "json-distinct", 1)
    if m1 and ad:
        extra = ad["p50_ms"] - m1["p50_ms"]
        rows.append(("auto adds (p50, 1 conn), a new prompt every request", "≤ 0.3 ms", f"{extra:.3f} ms",
                     verdict(extra <= 0.3, f"by {extra - 0.3:.3f} ms")))
    for tgt, goal, label, sc in (("metarouter", 4000, "explicit", "json"), ("metarouter-auto", 3000, "auto", "json"),
                                 ("metarouter-auto", 3000, "auto, a new prompt every request", "json-distinct")):
        r = _run(R, tgt, sc, 50)
        if r:
            rows.append((f"throughput, 50 conns, {label}", f"≥ {goal:,} req/s",
                         f"{r['rps']:,.0f} req/s{_spread(r)}{_disturbed(r)}",
                         verdict(r["rps"] >= goal, f"by {goal - r['rps']:,.0f} req/s ({r['rps'] / goal:.0%} of it)")))
            rows.append((f"p99 at 50 conns, {label}", "≤ 30 ms", f"{r['p99_ms']:.2f} ms",
                         verdict(r["p99_ms"] <= 30, f"by {r['p99_ms'] - 30:.2f} ms")))
        elif R["availability"].get(f"{tgt}/json", "ok") != "ok":
            rows.append((f"throughput, 50 conns, {label}", f"≥ {goal:,} req/s", "unavailable", "**not measured**"))
    rl = _run(R, "relay", "json", 50)
    for tgt, goal, label in (("metarouter", 4000, "explicit"), ("metarouter-auto", 3000, "auto")):
        r = _run(R, tgt, "json", 50)
        if r and rl:
            want = goal / 8800  # the targets as a share of its bare relay's 8,800 req/s
            got = r["rps"] / rl["rps"]
            note = _disturbed(r, rl)
            rows.append((f"same, as a share of the bare relay on this machine ({rl['rps']:,.0f} req/s), {label}",
                         f"≥ {want:.0%} (= {goal:,} / 8,800)", f"{got:.0%}{note}",
                         "**unclear** (a run was disturbed)" if note else
                         verdict(got >= want, f"({got / want:.0%} of the target share)")))
    w = R.get("workers") or {}
    if "1" in w and "2" in w:
        ratio = w["2"]["rps"] / w["1"]["rps"]
        rows.append(("2 workers vs 1 (both unpinned)", "≥ 1.7×", f"{ratio:.2f}× ({w['2']['rps']:,.0f}{_spread(w['2'])} / "
                     f"{w['1']['rps']:,.0f}{_spread(w['1'])})", verdict(ratio >= 1.7, f"by {1.7 - ratio:.2f}×")))
        p = _run(R, "metarouter", "json", 50)
        if p:
            ratio2 = w["2"]["rps"] / p["rps"]
            rows.append(("2 workers (unpinned) vs 1 pinned to CPU 0", "≥ 1.7×", f"{ratio2:.2f}×",
                         verdict(ratio2 >= 1.7, f"by {1.7 - ratio2:.2f}×")))
    inf = (R.get("inflight") or {}).get("metarouter")
    if inf:
        rows.append(("1,000 in flight, 200 ms upstream", "0 errors/timeouts",
                     f"{inf['errors']} errors ({inf['err_timeout']} timeouts, {inf['err_status']} non-2xx, "
                     f"{inf['err_connect'] + inf['err_read'] + inf['err_write']} socket) in {inf['requests']:,} req; "
                     f"p50 {inf['p50_ms']:.0f} ms, p99 {inf['p99_ms']:.0f} ms, max {inf['lat_max_us'] / 1000:.0f} ms "
                     "(wrk timeout 10 s)",
                     verdict(inf["errors"] == 0, f"{inf['errors']} errors")))
    td, tm = _ttfb(R, "direct"), _ttfb(R, "metarouter")
    if td and tm and td["ttfb_ms"]["p50"] is not None and tm["ttfb_ms"]["p50"] is not None:
        o = tm["ttfb_ms"]["p50"] - td["ttfb_ms"]["p50"]
        rows.append(("stream TTFB overhead p50, 1 conn", "≤ 1 ms", f"{o:.3f} ms", verdict(o <= 1, f"by {o - 1:.3f} ms")))
    peaks = [(k, max(v["peak_rss_mb"] or [0])) for k, v in (R.get("rss") or {}).items() if k.startswith("metarouter")]
    if peaks:
        k, mx = max(peaks, key=lambda x: x[1])
        rows.append(("peak RSS per worker", "≤ 150 MB", f"{mx:.1f} MB (max over runs: {k})",
                     verdict(mx <= 150, f"by {mx - 150:.1f} MB")))
    st = (R.get("startup_s") or {}).get("metarouter")
    if st is not None:
        rows.append(("start-up to first request", "≤ 2 s", f"{st:.2f} s", verdict(st <= 2, f"by {st - 2:.2f} s")))
    return rows


def render(R: dict) -> str:
    m = R["meta"]
    out = [f"# Gateway benchmark — {m['date_utc']} UTC ({R['mode']}, {R['duration_s']:g} s per wrk run)", ""]
    out.append(f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gb']} GB RAM, Linux {m['kernel']}, "
               f"Python {m['python']}.  ")
    out.append(f"Code: `{m['git_head']}`{' + uncommitted changes under src/' if m.get('src_uncommitted_changes') else ''}"
               ".  ")
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".  ")
    out.append(f"Pinning: targets `{R['pinning']['targets']}`; wrk, nginx, ttfb.py, py-spy "
               f"`{R['pinning']['wrk_nginx_ttfb_pyspy']}` (except the --workers comparison, see below).")
    out += ["", "## Targets (issue 7)", "", "| figure | target | measured | verdict |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(R)]

    bad = {k: v for k, v in R["availability"].items() if v != "ok"}
    if bad:
        out += ["", "Unavailable:"] + [f"- `{k}`: {v}" for k, v in bad.items()]

    out += ["", "## Latency and throughput (wrk, closed loop)", "",
            "Overhead = target − direct at the same connections and kind. CPU/req = the target's own CPU time "
            "(user+sys, all its processes) divided by the requests served; 1e6 / that = the req/s one dedicated core "
            "could serve (noise-robust). Others' CPU = the machine's busy time not used by the target, nginx or wrk "
            "(other work on the machine), as % of all CPUs: runs with much of it are disturbed.", "",
            "| target | kind | conns | req/s | p50 ms | p90 ms | p99 ms | max ms | overhead p50 | overhead p99 | errors "
            "| CPU µs/req | req/s per core | others' CPU | req/s of each repeat |", "|---|---|" + "---:|" * 12 + "---|"]
    for r in R["runs"]:
        d = _run(R, "direct", r["scenario"], r["conns"])
        o50 = o99 = "—"
        if d and r["target"] != "direct":
            o50, o99 = f"{r['p50_ms'] - d['p50_ms']:+.3f}", f"{r['p99_ms'] - d['p99_ms']:+.3f}"
        out.append(f"| {r['target']} | {r['scenario']} | {r['conns']} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | "
                   f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['lat_max_us'] / 1000:.1f} | {o50} | {o99} | {r['errors']} | "
                   f"{_f(r['cpu_us_per_req'], 0)} | {_f(1e6 / r['cpu_us_per_req'], 0) if r['cpu_us_per_req'] else '—'} | "
                   f"{r.get('foreign_cpu_pct', '—')}% | "
                   f"{_reps(r)} |")

    conns = sorted({r["conns"] for r in R["runs"]})
    tg = [t for t in ("relay", "metarouter", "metarouter-auto", "litellm") if any(r["target"] == t for r in R["runs"])]
    if "metarouter" in tg and len(tg) > 1:
        out += ["", "## Side by side (req/s; ratio to metarouter explicit)", "",
                "| kind | conns | " + " | ".join(tg) + " |", "|---|---:|" + "---:|" * len(tg)]
        for sc in ("json", "json-distinct", "stream"):
            for c in conns:
                if not any(_run(R, t, sc, c) for t in tg):
                    continue
                base = _run(R, "metarouter", sc, c)
                cells = []
                for t in tg:
                    r = _run(R, t, sc, c)
                    cells.append("—" if r is None else f"{r['rps']:,.0f}" + (
                        f" ({r['rps'] / base['rps']:.2f}×)" if base and t != "metarouter" else ""))
                out.append(f"| {sc} | {c} | " + " | ".join(cells) + " |")
    timed = [r for r in R["runs"] if r.get("decision_us_p50") is not None]
    if timed:
        out += ["", "## The router's decision inside the loaded server (`routing.decision_ms` of the run's records)", "",
                "| kind | conns | decisions | p50 µs | p99 µs |", "|---|---:|---:|---:|---:|"]
        for r in timed:
            out.append(f"| {r['scenario']} | {r['conns']} | {r['decisions']:,} | {r['decision_us_p50']:.0f} | "
                       f"{r['decision_us_p99']:.0f} |")
    if R["ttfb"]:
        out += ["", "## Streaming time to first byte (ttfb.py: first body byte after the headers)", "",
                "| target | conns | requests | TTFB p50 ms | p90 | p99 | total p50 ms | total p99 | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for t in R["ttfb"]:
            a, b = t["ttfb_ms"], t["total_ms"]
            out.append(f"| {t['target']} | {t['concurrency']} | {t['requests']:,} | {_f(a['p50'])} | {_f(a['p90'])} | "
                       f"{_f(a['p99'])} | {_f(b['p50'])} | {_f(b['p99'])} | {t['errors']} |")
    if R.get("workers"):
        out += ["", "## --workers (both unpinned: the gateway may use both CPUs; wrk and nginx stay on CPU 1)", "",
                "| workers | req/s | p50 ms | p99 ms | errors | CPU µs/req |", "|---:|---:|---:|---:|---:|---:|"]
        for w, r in sorted(R["workers"].items()):
            out.append(f"| {w} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} | "
                       f"{_f(r['cpu_us_per_req'], 0)} |")
    inf = R.get("inflight") or {}
    if inf.get("skipped"):
        out += ["", f"1,000 in flight: skipped ({inf['skipped']})."]
    elif inf:
        out += ["", "## 1,000 connections against the 200 ms upstream (wrk -c1000 --timeout 10s)", "",
                "| target | req/s | p50 ms | p99 ms | max ms | timeouts | non-2xx | socket errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k, r in inf.items():
            out.append(f"| {k} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['lat_max_us'] / 1000:.1f} "
                       f"| {r['err_timeout']} | {r['err_status']} | {r['err_connect'] + r['err_read'] + r['err_write']} |")
    out += ["", "## Start-up and memory", "", "| process | start-up s (spawn → first 200 on a chat request) |",
            "|---|---:|"]
    out += [f"| {k} | {v:.2f} |" for k, v in (R.get("startup_s") or {}).items()]
    out += ["", "| process (when) | workers | peak RSS MB (VmHWM) | RSS MB now |", "|---|---:|---:|---:|"]
    out += [f"| {k} | {v['workers']} | {', '.join(map(str, v['peak_rss_mb']))} | {', '.join(map(str, v['rss_mb']))} |"
            for k, v in (R.get("rss") or {}).items()]
    for name, p in (R.get("profiles") or {}).items():
        out += ["", f"## Profile: {name}"]
        if "skipped" in p:
            out.append(f"skipped: {p['skipped']}")
            continue
        top = p["top"]
        load = p.get("load") or {}
        out.append(f"py-spy at 250 Hz while wrk drove {p['conns']} connections "
                   f"({load.get('rps', 0):,.0f} req/s under the profiler). Files: "
                   + ", ".join(f"`{f}`" for f in p["files"]) + ".")
        cpu = load.get("cpu_us_per_req")
        out.append("")
        out.append(f"Shares are of the event-loop thread's {top['samples']:,} samples; the target used "
                   f"{_f(cpu, 0)} µs of CPU per request in this run (so 10% ≈ {_f(cpu / 10 if cpu else None, 0)} µs)."
                   " Other threads' busy samples, as % of the same count: "
                   + (", ".join(f"{n} {v}%" for n, v in top.get("other_threads_busy", [])) or "none") + ".")
        out += ["", "| event-loop thread, by component (leaf frame) | % |", "|---|---:|"]
        out += [f"| {n} | {v} |" for n, v in top["by_component"][:12]]
        out += ["", "| event-loop thread, self (leaf) | % |", "|---|---:|"] + [f"| `{n}` | {v} |" for n, v in top["self"][:20]]
        out += ["", "| event-loop thread, inclusive (metarouter and starlette frames) | % |", "|---|---:|"]
        out += [f"| `{n}` | {v} |" for n, v in top["inclusive"]
                if ("metarouter/" in n or "starlette" in n) and "cli.py" not in n][:30]
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(json.loads(open(sys.argv[1]).read())))
