"""Routing benchmark: metarouter vs baselines on the held-out split, leave-one-source-out, latency, size, memory.

    .venv/bin/python bench/router/run.py --data ../shared/data/routing          # writes bench/router/RESULTS.md

Needs the ``[train]`` extra for the RouterBench-style kNN baseline (real all-MiniLM-L6-v2 embeddings, cached under
``bench/router/.cache``) and the leave-one-source-out retraining; the router itself needs numpy only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from metarouter.catalog import default_catalog  # noqa: E402
from metarouter.router import load_router  # noqa: E402
from metarouter.router.core import DEFAULT_ARTIFACT  # noqa: E402
from metarouter.router.data import load_shared, split_mask  # noqa: E402
from metarouter.router.evaluate import (  # noqa: E402
    TRADEOFF_GRID, evaluate, format_table, plot, pool_for_source, predict_matrix, sweep,
)
from metarouter.router.predictors import KNNPredictor  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def minilm_embeddings(prompts: list[str], cache: Path) -> np.ndarray:
    import hashlib

    digest = hashlib.sha256("\x00".join(prompts).encode()).hexdigest()[:16]
    key = cache / f"minilm_{len(prompts)}_{digest}.npy"
    if key.exists():
        return np.load(key)
    from metarouter.router.minilm import embed_texts

    log(f"embedding {len(prompts)} prompts with all-MiniLM-L6-v2 (cached in {key}) ...")
    E = embed_texts(prompts, batch_size=64, progress=True).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(key, E)
    return E


def knn_points(E: np.ndarray, data, train_rows: np.ndarray, pool, k: int = 40) -> np.ndarray:
    """RouterBench-style kNN: a prompt's neighbours (cosine, MiniLM) give each model's accuracy and cost."""
    cols = [data.models.index(next(n for n, c in data.catalog_ids.items() if c == m.id)) for m in pool.models]
    tr = train_rows[~np.isnan(data.correct[np.ix_(train_rows, cols)]).any(1)]
    Ytr = data.correct[np.ix_(tr, cols)]
    # neighbour costs follow the same convention as the pool (measured answer lengths)
    from metarouter.router.data import benchmark_cost_usd
    from metarouter.router.evaluate import fill_lengths

    Ctr = benchmark_cost_usd(np.array([len(data.prompts[i]) for i in tr], float),
                             fill_lengths(data.out_chars[np.ix_(tr, cols)]),
                             np.array([m.input_pico for m in pool.models]) / 1e12,
                             np.array([m.output_pico for m in pool.models]) / 1e12,
                             np.array([m.hidden_reasoning_tokens for m in pool.models], float))
    S = E[pool.rows] @ E[tr].T
    idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
    Q, C = Ytr[idx].mean(1), Ctr[idx].mean(1)
    return pool.ref.points_of(sweep(Q, C, TRADEOFF_GRID))


def static_knn_points(router, X: np.ndarray, data, train_rows, pool, k: int = 40) -> np.ndarray:
    """Our kNN predictor on the static encoder (same interface as the MF predictor), router's cost model."""
    cols = [data.models.index(next(n for n, c in data.catalog_ids.items() if c == m.id)) for m in pool.models]
    p = KNNPredictor(k=k, emb_dims=router.encoder.dim).fit(X[train_rows], data.correct[np.ix_(train_rows, cols)])
    Q = p.predict(X[pool.rows])
    _, C = predict_matrix(router, pool.prompts, pool.models, X[pool.rows])
    return pool.ref.points_of(sweep(Q, C, TRADEOFF_GRID))


def latency(router, data, test_rows: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """Decision latency on one core: 1,000-token prompts (≈4,000 chars of held-out prompts), all 20 models."""
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    except (AttributeError, OSError):
        pass
    rng = random.Random(seed)
    pool_text = [data.prompts[i] for i in test_rows]

    def prompt() -> list[dict]:
        s = ""
        while len(s) < 4000:
            s += rng.choice(pool_text) + "\n"
        return [{"role": "user", "content": s[:4000]}]

    models = list(default_catalog())
    for _ in range(300):  # warm-up (caches of frequent words), then distinct prompts
        router.route(prompt(), models)
    ms, cpu = [], []
    for _ in range(n):
        m = prompt()
        c0, t = time.thread_time(), time.perf_counter()
        router.route(m, models)
        ms.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    ms, cpu = np.array(ms), np.array(cpu)
    short = [[{"role": "user", "content": data.prompts[i]}] for i in test_rows[:2000]]
    t = time.perf_counter()
    for m in short:
        router.route(m, models)
    short_ms = (time.perf_counter() - t) / len(short) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "n": n,
            "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p99_ms": float(np.percentile(cpu, 99)),
            "load_avg": os.getloadavg(),
            "prompt_tokens": router.route(prompt(), models).ranked[0].prompt_tokens,
            "short_prompt_mean_ms": short_ms, "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def batch_throughput(tmp: Path, data, test_rows) -> float:
    src = tmp / "batch.jsonl"
    with open(src, "w") as f:
        for i in test_rows[:2000]:
            f.write(json.dumps({"id": int(i), "prompt": data.prompts[i]}) + "\n")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "metarouter.router.cli", "route", "--batch", str(src), "--out",
                        str(tmp / "out.jsonl")], check=True, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(HERE.parents[1] / "src")))
    total = len(test_rows[:2000]) / (time.perf_counter() - t)
    inner = float(p.stderr.rsplit("(", 1)[1].split(" prompts/s")[0].replace(",", ""))
    return total, inner


MEMORY_PROBE = """
import resource, json, sys
import numpy as np
from metarouter.catalog import default_catalog
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
base = rss()
from metarouter.router import load_router
r = load_router(sys.argv[1]); models = list(default_catalog())
after_load = rss()
for i in range(3000):
    r.route([{"role": "user", "content": f"question {i}: " + "some varied words number %d " % (i * 7919) * 60}], models)
print(json.dumps({"rss_before_mb": base, "router_loaded_mb": after_load - base, "after_3000_routes_mb": rss() - base}))
"""


def memory(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(HERE.parents[1] / "src")))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(HERE.parents[2] / "shared" / "data" / "routing"))
    ap.add_argument("--artifact", default=str(DEFAULT_ARTIFACT))
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--skip-loso", action="store_true")
    ap.add_argument("--skip-knn", action="store_true")
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

    res = evaluate(router, data, test_rows, cat, progress=True)
    extra_rows: dict = {s: {} for s in res}
    extra_pts: dict = {s: {} for s in res}
    X = np.stack([router.encoder.encode(p) for p in data.prompts]).astype(np.float32)
    for src in res:
        pool = pool_for_source(data, src, cat, rows=test_rows)
        pts = static_knn_points(router, X, data, train_rows, pool)
        s = pool.ref.summarize(pts).as_dict()
        extra_rows[src]["kNN (static encoder, ours)"] = s
        res[src]["knn_static"] = s
    if not args.skip_knn:
        E = minilm_embeddings(data.prompts, HERE / ".cache")
        for src in res:
            pool = pool_for_source(data, src, cat, rows=test_rows)
            pts = knn_points(E, data, train_rows, pool)
            s = pool.ref.summarize(pts)
            extra_rows[src]["kNN (MiniLM, RouterBench-style)"] = s.as_dict()
            extra_pts[src]["kNN MiniLM"] = (pts, s.ogr)
            res[src]["knn_minilm"] = s.as_dict()

    loso = {}
    if not args.skip_loso:
        from metarouter.router.train import train

        sources = sorted(res)
        with tempfile.TemporaryDirectory() as tmp:
            for tr_src in sources:
                for ev_src in sources:
                    if ev_src == tr_src:
                        continue
                    path = Path(tmp) / f"loso_{tr_src}.npz"
                    if not path.exists():
                        log(f"LOSO: training on {tr_src} only ...")
                        train(args.data, path, sources=[tr_src], encoder_from=args.artifact, quiet=True)
                    r = load_router(path)
                    ev = evaluate(r, data, test_rows, cat, progress=False)[ev_src]
                    row = {"router": ev["router"], "default_tradeoff": ev["default_tradeoff"],
                           "default_point": ev["default_point"]}
                    if not args.skip_knn:
                        pool = pool_for_source(data, ev_src, cat, rows=test_rows)
                        tr_rows = train_rows[np.array([data.sources[i] == tr_src for i in train_rows])]
                        row["knn_minilm"] = pool.ref.summarize(knn_points(E, data, tr_rows, pool)).as_dict()
                    loso[f"{tr_src} -> {ev_src}"] = row

    lat = latency(router, data, test_rows, n=args.latency_n)
    with tempfile.TemporaryDirectory() as tmp:
        thr, thr_inner = batch_throughput(Path(tmp), data, test_rows)
    mem = memory(Path(args.artifact))
    size_mb = Path(args.artifact).stat().st_size / 2**20

    plot(res, str(out / "router_quality_cost.png"), extra_pts)
    summary = {"per_source": res, "loso": loso, "latency": lat, "batch_prompts_per_s": thr,
               "batch_prompts_per_s_routing": thr_inner, "memory": mem,
               "artifact_mb": size_mb, "artifact_version": router.version, "default_tradeoff": router.default_tradeoff,
               "runtime_s": time.time() - t0}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    md = render(summary, extra_rows) + kept_sections(out / "RESULTS.md")
    (out / "RESULTS.md").write_text(md)
    print(md)
    return 0


#: sections of RESULTS.md written by other scripts (plan_cost.py), carried over when this run rewrites the file
KEPT_SECTIONS = ("## Decision cost in the gateway (plan_cost.py)",)


def kept_sections(path: Path) -> str:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    out = []
    for head in KEPT_SECTIONS:
        i = text.find("\n" + head)
        if i >= 0:
            j = text.find("\n## ", i + 1 + len(head))
            out.append(text[i: j if j >= 0 else len(text)].rstrip())
    return "\n".join(out) + "\n" if out else ""


NOTES = """## Where targets are missed, and what was tried

- **MMLU-Pro OGR.** Tried, measured on an inner validation slice of the training rows: kNN over real MiniLM
  embeddings and over the static encoder (OGR ≈ 0.03–0.10), an MF/IRT predictor over all 86 labelled models
  (≈ 0.10–0.15), the same with MiniLM embeddings as input instead of the static encoder (no better: the encoder is
  not the bottleneck), latent size 32–96, L2 1e-5–3e-4, longer training, seed ensembles (no change), and a prompt
  category classifier whose posterior feeds the MF tower and weights a per-category accuracy table (≈ 0.18–0.21:
  kept). A ceiling check: routing on each prompt's *true* MMLU-Pro category with per-category accuracies reaches only
  OGR 0.235 on this 5-model pool; the rest of the oracle gap (oracle = "any of the five was right", 0.873) is
  item-level variation among five similar models that the prompt text barely predicts.
- **ZeroEval Save.** The router reaches o1-mini's accuracy at about half its cost; the 60 % target needs the
  cheaper models to be trusted on more of the GSM8K/CRUXEval items than the predictions allow.
- **Out of distribution.** Unfamiliar prompts (low cosine to the training centroids, or words the training set never
  saw) lean on each model's general prior (Arena-Hard score mapped to the training accuracy scale). Shrinking to the
  training-domain mean instead gave OGR −0.20 (ZeroEval → MMLU-Pro); half/half −0.08; the Arena-Hard prior alone
  ≈ 0 (kept). MMLU-Pro → ZeroEval suffers from seven of its twelve pool models having no labels in MMLU-Pro at all
  (pure priors), o1-mini among them.
- **Latency.** First version: 1.9 ms p50 (regex tokeniser, regex hand features). Then: one table row per whitespace
  chunk (multi-piece chunks get a summed row, so a prompt is one dict look-up per word and one gather), count columns
  in the table instead of regex features, cached per-candidate-set parameters, a fast path without constraints, no
  per-candidate numpy scalar access. On a quiet core the same 1,000-token prompt routed repeatedly takes ≈ 0.3 ms;
  the recorded figures are for distinct prompts (colder caches) on a 2-core machine shared with other load tests
  (load average above; across this session's runs the wall-clock p50 ranged 0.43–0.74 ms with the load). What
  remains is Python-level: ~700 dict look-ups per prompt (≈ 40 % of the time) and ~20
  small numpy calls. Next steps, not done: a smaller table (64 dims), or tokenising in a compiled extension.
"""


def _targets(s: dict) -> list[str]:
    res, lat, mem = s["per_source"], s["latency"], s["memory"]
    ok = lambda b: "met" if b else "**missed**"  # noqa: E731
    rows = ["| target | value | |", "|---|---|---|"]
    for src, r in res.items():
        o, g, sv = r["router"]["ogr"], r["router"]["gain_pts"], r["router"]["save"]
        rows.append(f"| {src}: OGR ≥ 0.35 | {o:.3f} | {ok(o >= 0.35)} |")
        rows.append(f"| {src}: Gain ≥ +1 pt | {g:+.2f} | {ok(g >= 1)} |")
        rows.append(f"| {src}: Save ≥ 60 % | {'—' if sv is None else f'{sv:.0%}'} | {ok(sv is not None and sv >= 0.6)} |")
    for k, v in s["loso"].items():
        rows.append(f"| OOD {k}: OGR ≥ 0 | {v['router']['ogr']:.3f} | {ok(v['router']['ogr'] >= 0)} |")
    rows.append(f"| latency p50 ≤ 0.3 ms (wall / CPU) | {lat['p50_ms']:.3f} / {lat['cpu_p50_ms']:.3f} ms | "
                f"{ok(lat['p50_ms'] <= 0.3)} |")
    rows.append(f"| latency p99 ≤ 1 ms (wall / CPU) | {lat['p99_ms']:.3f} / {lat['cpu_p99_ms']:.3f} ms | "
                f"{ok(lat['p99_ms'] <= 1.0)} |")
    rows.append(f"| artifact ≤ 20 MB | {s['artifact_mb']:.1f} MiB | {ok(s['artifact_mb'] <= 20)} |")
    rows.append(f"| router memory ≤ 100 MB | {mem['after_3000_routes_mb']:.0f} MiB | "
                f"{ok(mem['after_3000_routes_mb'] <= 100)} |")
    return rows


def render(s: dict, extra_rows: dict) -> str:
    res = s["per_source"]
    L = ["# Router benchmark results", "",
         f"Artifact `{s['artifact_version']}` (`src/metarouter/router/artifacts/router.npz`), default tradeoff "
         f"{s['default_tradeoff']:g}. Held-out split: 20 % of each source by hash of the item id, never used in "
         "training or tuning. Regenerate: see README.md.", "", "## Targets", ""] + _targets(s) + [
         "", "## In distribution (held-out prompts of each source)", "", format_table(res, extra_rows), ""]
    L += ["| source | pool | prompts | router at default tradeoff | best single model |", "|---|---|---|---|---|"]
    for src, r in res.items():
        b = r["single"][r["best_single"]]
        d = r["default_point"]
        L.append(f"| {src} | {len(r['pool'])} models | {r['n_prompts']} | acc {d['acc']:.3f} at "
                 f"{d['cost'] * 1e6:.0f} µUSD | {r['best_single']}: acc {b['acc']:.3f} at {b['cost'] * 1e6:.0f} µUSD |")
    L += ["", "![quality vs cost](router_quality_cost.png)", ""]
    if s["loso"]:
        L += ["## Leave one source out (train on one source, evaluate on the other's held-out prompts)", "",
              "| train → eval | router OGR | router Gain | router Save | kNN MiniLM OGR | default point |",
              "|---|---|---|---|---|---|"]
        for k, v in s["loso"].items():
            r = v["router"]
            kn = v.get("knn_minilm", {}).get("ogr")
            save = "—" if r["save"] is None else f"{r['save']:.0%}"
            L.append(f"| {k} | {r['ogr']:.3f} | {r['gain_pts']:+.2f} | {save} | "
                     f"{'—' if kn is None else f'{kn:.3f}'} | acc {v['default_point']['acc']:.3f} at "
                     f"{v['default_point']['cost'] * 1e6:.0f} µUSD |")
        L.append("")
    lat, mem = s["latency"], s["memory"]
    L += ["## Cost of a decision", "",
          f"- latency, {lat['prompt_tokens']}-token prompt, 20 models, one core ({lat['cpu']}): "
          f"**p50 {lat['p50_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms** wall clock "
          f"({lat['n']} distinct prompts); thread CPU time p50 {lat['cpu_p50_ms']:.3f} ms, p99 {lat['cpu_p99_ms']:.3f} ms "
          f"(load average {lat['load_avg'][0]:.1f} on 2 shared cores while measuring)",
          f"- short prompts (held-out, median ~70 tokens): mean {lat['short_prompt_mean_ms']:.3f} ms",
          f"- batch CLI (`metarouter route --batch`, 2,000 held-out prompts): {s['batch_prompts_per_s_routing']:,.0f} "
          f"prompts/s routing, {s['batch_prompts_per_s']:,.0f} prompts/s with process start and artifact load",
          f"- artifact: {s['artifact_mb']:.1f} MiB; router memory: {mem['router_loaded_mb']:.0f} MiB loaded, "
          f"{mem['after_3000_routes_mb']:.0f} MiB after 3,000 routes (RSS over a numpy + catalog baseline)", "",
          NOTES]
    return "\n".join(L)


if __name__ == "__main__":
    raise SystemExit(main())
