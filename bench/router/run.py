"""Routing benchmark: the shipped router on held-out prompts of every source, leave-one-source-out, calibration,
our everyday/hard batteries along the dial, and the cost of a decision.

    .venv/bin/python bench/router/run.py --data ../shared/data/routing          # writes bench/router/RESULTS.md

The held-out split (20 % of each source by hash of the item id, ``metarouter.router.data.split_mask``) is never
used in training or tuning. Leave-one-source-out retrains the router without one source (its anchors and reference
prompts kept) and evaluates it on that source's held-out prompts: how the router does on a domain it has no labels
for. Needs scikit-learn (the ``[train]`` extra) for the retraining and matplotlib for the plots.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from metarouter.catalog import default_catalog  # noqa: E402
from metarouter.router import Constraints, RouteRequest, kernel, load_router  # noqa: E402
from metarouter.router.core import DEFAULT_ARTIFACT  # noqa: E402
from metarouter.router.data import load_shared, split_mask  # noqa: E402
from metarouter.router.evaluate import (  # noqa: E402
    TRADEOFF_GRID, calibration, evaluate, format_table, plot, pool_for_source, predict_matrix, sweep,
)
from metarouter.router.predictors import KNNPredictor  # noqa: E402

BATTERY = ROOT / "tests" / "router" / "fixtures" / "everyday_battery.jsonl"
REASONING = {m.id for m in default_catalog() if m.reasoning}
STRONG = REASONING | {"anthropic/claude-3.5-sonnet", "anthropic/claude-3-opus", "openai/gpt-4o-2024-08-06",
                      "openai/gpt-4o-2024-05-13", "openai/chatgpt-4o-latest", "google/gemini-pro-1.5",
                      "meta-llama/llama-3.1-405b-instruct", "mistralai/mistral-large-2407"}
IN_DIST_TARGETS = {"zeroeval": 0.35, "mmlu_pro": 0.25, "bfcl": 0.15}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def knn_points(router, data, train_rows: np.ndarray, pool, k: int = 40) -> dict:
    """Baseline: kNN over our static encoder (RouterBench-style), the router's cost model."""
    cols = [data.models.index(next(n for n, c in data.catalog_ids.items() if c == m.id)) for m in pool.models]
    tr = train_rows[~np.isnan(data.correct[np.ix_(train_rows, cols)]).any(1)]
    Xtr, _ = router.featurize([data.request(i) for i in tr])
    Xte, cov = router.featurize(pool.prompts)
    p = KNNPredictor(k=k).fit(Xtr[:, : router.dim], data.correct[np.ix_(tr, cols)])
    Q = p.predict(Xte[:, : router.dim])
    _, C = predict_matrix(router, pool.prompts, pool.models, (Xte, cov))
    return pool.ref.summarize(pool.ref.points_of(sweep(Q, C, TRADEOFF_GRID))).as_dict()


def battery(router, tradeoffs=(0, 3, 5, None, 7, 10)) -> dict:
    items = [json.loads(x) for x in BATTERY.read_text(encoding="utf-8").splitlines() if x.strip()]
    models = list(default_catalog())
    out = {}
    for t in tradeoffs:
        row: dict = {}
        for kind in ("trivial", "hard"):
            ds = []
            for it in items:
                if it["kind"] != kind:
                    continue
                req = RouteRequest.from_body(it["request"])
                ds.append(router.route(req, models, Constraints.for_request(req), t))
            picks = [d.model for d in ds]
            row[kind] = {"n": len(ds), "to_reasoning": sum(p in REASONING for p in picks),
                         "to_strong": float(np.mean([p in STRONG for p in picks])),
                         "mean_cost": float(np.mean([d.ranked[0].cost_usd for d in ds])),
                         "mean_familiarity": float(np.mean([d.familiarity for d in ds])),
                         "top": Counter(picks).most_common(3),
                         "example_reason": ds[0].reason}
        out["default" if t is None else f"{t:g}"] = row
    return out


def latency(router, data, test_rows: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """Decision cost on one core: 1,000-token prompts (≈4,000 chars of held-out prompts) and short ones, all 20
    models, a new prompt every time."""
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    except (AttributeError, OSError):
        pass
    kernel.compile_now()  # the gateway's kernel (numba's where installed; the report names it)
    rng = random.Random(seed)
    texts = [data.prompts[i] for i in test_rows]

    def long_prompt() -> list[dict]:
        s = ""
        while len(s) < 4000:
            s += rng.choice(texts) + "\n"
        return [{"role": "user", "content": s[:4000]}]

    models = list(default_catalog())
    for _ in range(200):
        router.route(long_prompt(), models)

    def timed(make) -> np.ndarray:
        ms = []
        for _ in range(n):
            m = make()
            t = time.perf_counter()
            router.route(m, models)
            ms.append((time.perf_counter() - t) * 1e3)
        return np.array(ms)

    long_ms = timed(long_prompt)
    short_ms = timed(lambda: [{"role": "user", "content": rng.choice(texts)[:300] + f" #{rng.random()}"}])
    return {"long_p50_ms": float(np.percentile(long_ms, 50)), "long_p99_ms": float(np.percentile(long_ms, 99)),
            "short_p50_ms": float(np.percentile(short_ms, 50)), "short_p99_ms": float(np.percentile(short_ms, 99)),
            "n": n, "load_avg": os.getloadavg()[0], "kernel": kernel.status(),
            "prompt_tokens": router.route(long_prompt(), models).ranked[0].prompt_tokens}


def reliability_plot(cal: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cal), figsize=(4.5 * len(cal), 4.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], cal.items()):
        xs = [b["mean_p"] for b in c["bins"]]
        ys = [b["rate"] for b in c["bins"]]
        ax.plot([0, 1], [0, 1], "--", c="grey")
        ax.plot(xs, ys, "o-", c="C0")
        for b in c["bins"]:
            ax.annotate(str(b["n"]), (b["mean_p"], b["rate"]), fontsize=6, color="grey")
        ax.set_title(f"{name}: ECE {c['ece']:.3f} ({c['n']} labels)")
        ax.set_xlabel("predicted P(good)")
        ax.set_ylabel("observed rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "routing"))
    ap.add_argument("--artifact", default=str(DEFAULT_ARTIFACT))
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--skip-loso", action="store_true")
    ap.add_argument("--latency-n", type=int, default=2000)
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    data = load_shared(args.data)
    test = split_mask(data)
    test_rows, train_rows = np.flatnonzero(test), np.flatnonzero(~test)
    cat = default_catalog()
    router = load_router(args.artifact)
    log(f"held-out: {len(test_rows)} prompts; training rows: {len(train_rows)}")

    res = evaluate(router, data, test_rows, cat, progress=False)
    extra_rows: dict = {s: {} for s in res}
    for src in res:
        pool = pool_for_source(data, src, cat, rows=test_rows)
        res[src]["knn_static"] = extra_rows[src]["kNN (static encoder)"] = knn_points(router, data, train_rows, pool)
    cal = {src: r["calibration"] for src, r in res.items()}
    allQ, allY = [], []
    for src in res:
        pool = pool_for_source(data, src, cat, rows=test_rows)
        Q, _ = predict_matrix(router, pool.prompts, pool.models)
        allQ.append(Q.ravel())
        allY.append(pool.Y.ravel())
    cal["all held-out"] = calibration(np.concatenate(allQ), np.concatenate(allY))

    loso = {}
    if not args.skip_loso:
        from metarouter.router.train import train

        sources = sorted(res)
        with tempfile.TemporaryDirectory() as tmp:
            for left_out in sources:
                path = Path(tmp) / f"without_{left_out}.npz"
                log(f"leave-one-source-out: training without {left_out} ...")
                train(args.data, path, sources=[s for s in sources if s != left_out], encoder_from=args.artifact,
                      quiet=True)
                r = load_router(path)
                ev = evaluate(r, data, test_rows, cat, progress=False)[left_out]
                loso[left_out] = {"router": ev["router"], "default_point": ev["default_point"],
                                  "calibration_ece": ev["calibration"]["ece"]}

    bat = battery(router)
    lat = latency(router, data, test_rows, n=args.latency_n)
    size_mb = Path(args.artifact).stat().st_size / 2**20
    plot(res, str(out / "router_quality_cost.png"))
    reliability_plot(cal, out / "reliability.png")
    summary = {"per_source": res, "loso": loso, "calibration": {k: v["ece"] for k, v in cal.items()},
               "battery": bat, "latency": lat, "artifact_mb": size_mb, "artifact_version": router.version,
               "default_tradeoff": router.default_tradeoff, "runtime_s": time.time() - t0}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    md = render(summary, extra_rows) + kept_sections(out / "RESULTS.md")
    (out / "RESULTS.md").write_text(md)
    print(md)
    return 0


#: sections of RESULTS.md written by hand or by other scripts, carried over when this run rewrites the file
KEPT_SECTIONS = ("## What was tried", "## Decision cost in the gateway (plan_cost.py)")


def kept_sections(path: Path) -> str:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    out = []
    for head in KEPT_SECTIONS:
        i = text.find("\n" + head)
        if i >= 0:
            j = text.find("\n## ", i + 1 + len(head))
            out.append(text[i: j if j >= 0 else len(text)].rstrip())
    return "\n" + "\n\n".join(out) + "\n" if out else ""


def _targets(s: dict) -> list[str]:
    res, lat, bat = s["per_source"], s["latency"], s["battery"]
    ok = lambda b: "met" if b else "**missed**"  # noqa: E731
    rows = ["| target | value | |", "|---|---|---|"]
    for src, r in res.items():
        o, g = r["router"]["ogr"], r["router"]["gain_pts"]
        want = IN_DIST_TARGETS.get(src, 0.0)
        rows.append(f"| {src}: OGR ≥ {want:g} (held-out) | {o:.3f} | {ok(o >= want)} |")
        rows.append(f"| {src}: Gain ≥ +1 pt | {g:+.2f} | {ok(g >= 1)} |")
    for src, v in s["loso"].items():
        rows.append(f"| leave {src} out: OGR ≥ 0 | {v['router']['ogr']:.3f} | {ok(v['router']['ogr'] >= 0)} |")
    ece = s["calibration"]["all held-out"]
    rows.append(f"| ECE of P(good), held out ≤ 0.05 | {ece:.3f} | {ok(ece <= 0.05)} |")
    d = bat["default"]["trivial"]
    rows.append(f"| trivial battery at the default: none to a hidden-reasoning model | {d['to_reasoning']} of "
                f"{d['n']} | {ok(d['to_reasoning'] == 0)} |")
    rows.append(f"| trivial battery at the default: mean cost ≤ $0.0005 | ${d['mean_cost']:.5f} | "
                f"{ok(d['mean_cost'] <= 0.0005)} |")
    for key, want in (("default", 0.9), ("7", 0.75), ("10", 0.5)):
        h = bat[key]["hard"]
        rows.append(f"| hard battery at {key}: ≥ {want:.0%} to a strong model | {h['to_strong']:.0%} | "
                    f"{ok(h['to_strong'] >= want)} |")
    rows.append(f"| decision, {lat['prompt_tokens']}-token prompt, one core: p50 ≤ 0.3 ms | {lat['long_p50_ms']:.3f} ms | "
                f"{ok(lat['long_p50_ms'] <= 0.3)} |")
    return rows


def render(s: dict, extra_rows: dict) -> str:
    res = s["per_source"]
    L = ["# Router benchmark results", "",
         f"Artifact `{s['artifact_version']}` (`src/metarouter/router/artifacts/router.npz`), default tradeoff "
         f"{s['default_tradeoff']:g}. Held-out split: 20 % of each source by hash of the item id, never used in "
         "training or tuning. Regenerate: `.venv/bin/python bench/router/run.py` (see README.md).", "",
         "## Targets (issue 12)", ""] + _targets(s) + [
         "", "## In distribution (held-out prompts of each source)", "", format_table(res, extra_rows), ""]
    L += ["| source | pool | prompts | router at the default | best single model | ECE |", "|---|---|---|---|---|---|"]
    for src, r in res.items():
        b = r["single"][r["best_single"]]
        d = r["default_point"]
        L.append(f"| {src} | {len(r['pool'])} models | {r['n_prompts']} | acc {d['acc']:.3f} at "
                 f"{d['cost'] * 1e6:.0f} µUSD | {r['best_single']}: acc {b['acc']:.3f} at {b['cost'] * 1e6:.0f} µUSD | "
                 f"{r['calibration']['ece']:.3f} |")
    L += ["", "![quality vs cost](router_quality_cost.png)", "", "Reliability of P(good) on held-out labels:", "",
          "![reliability](reliability.png)", ""]
    if s["loso"]:
        L += ["## Leave one source out (trained without it, evaluated on its held-out prompts)", "",
              "| left out | OGR | Gain | Save | ECE | default point |", "|---|---|---|---|---|---|"]
        for k, v in s["loso"].items():
            r = v["router"]
            save = "—" if r["save"] is None else f"{r['save']:.0%}"
            L.append(f"| {k} | {r['ogr']:.3f} | {r['gain_pts']:+.2f} | {save} | {v['calibration_ece']:.3f} | acc "
                     f"{v['default_point']['acc']:.3f} at {v['default_point']['cost'] * 1e6:.0f} µUSD |")
        L.append("")
    L += ["## Everyday and hard requests along the dial (tests/router/fixtures/everyday_battery.jsonl)", "",
          "| tradeoff | trivial: to reasoning | trivial: mean cost | trivial: top choices | hard: to a strong model | "
          "hard: top choices |", "|---|---|---|---|---|---|"]
    for t, row in s["battery"].items():
        tr, hd = row["trivial"], row["hard"]
        top = lambda x: ", ".join(f"{m.split('/')[-1]} {n}" for m, n in x["top"])  # noqa: E731
        L.append(f"| {t} | {tr['to_reasoning']}/{tr['n']} | ${tr['mean_cost']:.5f} | {top(tr)} | "
                 f"{hd['to_strong']:.0%} | {top(hd)} |")
    d = s["battery"]["default"]
    L += ["", f"Explanations at the default, e.g. trivial: “{d['trivial']['example_reason']}”; hard: "
              f"“{d['hard']['example_reason']}”.", ""]
    lat = s["latency"]
    L += ["## Cost of a decision", "",
          f"- {lat['prompt_tokens']}-token prompts, 20 candidates, one core, a new prompt every time: p50 "
          f"{lat['long_p50_ms']:.3f} ms, p99 {lat['long_p99_ms']:.3f} ms; short prompts: p50 {lat['short_p50_ms']:.3f} ms, "
          f"p99 {lat['short_p99_ms']:.3f} ms ({lat['n']} each; load average {lat['load_avg']:.1f} on the 2-core machine; "
          f"kernel: {lat.get('kernel', 'numpy')})",
          f"- artifact: {s['artifact_mb']:.1f} MiB", ""]
    return "\n".join(L)


if __name__ == "__main__":
    raise SystemExit(main())
