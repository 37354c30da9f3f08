"""Evaluation helpers shared by ``metarouter eval``, training calibration and ``bench/router``.

A *pool* is one source's held-out prompts with the catalog models labelled on (nearly) every prompt of it; prompts
missing a label of a pool model are dropped, so every prompt has the full pool. Costs follow the shared benchmark
convention with the measured answer length (estimated where unmeasured, see :func:`fill_lengths`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..catalog import Catalog, Model
from . import policy
from .core import Router
from .data import RoutingData, benchmark_cost_usd
from .metrics import PoolReference


@dataclass
class Pool:
    source: str
    rows: np.ndarray  # indices into the RoutingData
    prompts: list  # the requests (RouteRequest) of those rows
    models: list[Model]
    Y: np.ndarray
    C: np.ndarray
    ref: PoolReference


def fill_lengths(out_chars: np.ndarray) -> np.ndarray:
    """Unmeasured answer lengths: the prompt's median over measured models × the model's typical ratio to it."""
    L = np.array(out_chars, float)
    med = np.nanmedian(np.where(np.isnan(L).all(1, keepdims=True), 1.0, L), axis=1, keepdims=True)
    R = L / med
    has = ~np.isnan(R).all(0)
    ratio = np.ones(L.shape[1])
    if has.any():
        ratio[has] = np.nanmedian(R[:, has], axis=0)
    ratio = np.where(np.isnan(ratio), 1.0, ratio)
    return np.where(np.isnan(L), med * ratio[None, :], L)


def pool_for_source(data: RoutingData, source: str, catalog: Catalog, rows: np.ndarray | None = None,
                    coverage: float = 0.99, allowed: list[str] | None = None) -> Pool | None:
    src = np.array(data.sources) == source
    sel = src if rows is None else (src & np.isin(np.arange(len(data)), rows))
    if not sel.any():
        return None
    cols, models = [], []
    for j, name in enumerate(data.models):
        cid = data.catalog_ids.get(name)
        m = catalog.get(cid) if cid else None
        if m is None or (allowed and m.id not in allowed):
            continue
        if (~np.isnan(data.correct[src, j])).mean() >= coverage:
            cols.append(j)
            models.append(m)
    if len(cols) < 2:
        return None
    sel &= ~np.isnan(data.correct[:, cols]).any(1)
    idx = np.flatnonzero(sel)
    Y = data.correct[np.ix_(idx, cols)].astype(float)
    L = fill_lengths(data.out_chars[np.ix_(idx, cols)])
    pc = data.prompt_chars()[idx]
    C = benchmark_cost_usd(pc, L, np.array([m.input_pico for m in models]) / 1e12,
                           np.array([m.output_pico for m in models]) / 1e12,
                           np.array([m.hidden_reasoning_tokens for m in models], float))
    return Pool(source, idx, [data.request(i) for i in idx], models, Y, C, PoolReference(Y, C))


def predict_matrix(router: Router, requests: list, models: list[Model],
                   X: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Router.predict` for many requests: quality and predicted cost (requests × models).

    ``X``: the requests' features and coverage (:meth:`Router.featurize`) when already computed."""
    from .core import as_request

    reqs = [as_request(r) for r in requests]
    feats, cov = X if X is not None else router.featurize(reqs)
    ptok = np.array([r.prompt_tokens() for r in reqs], np.float64)
    pred = router.predict(feats, cov, models, ptok)
    return pred["quality"], pred["cost"]


def sweep(Q: np.ndarray, C: np.ndarray, tradeoffs) -> np.ndarray:
    """(tradeoffs × prompts) the policy's choice at each tradeoff (:func:`.policy.choose`)."""
    return np.stack([policy.choose(Q, C, t) for t in tradeoffs])


def calibration(P: np.ndarray, Y: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error of predicted P(good) against 0/1 labels, and the reliability diagram's bins
    (equal-width; per bin: mean prediction, observed rate, count)."""
    p, y = np.asarray(P, float).ravel(), np.asarray(Y, float).ravel()
    keep = ~np.isnan(y)
    p, y = p[keep], y[keep]
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            mp, rate = float(p[sel].mean()), float(y[sel].mean())
            ece += sel.mean() * abs(mp - rate)
            rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "mean_p": mp, "rate": rate,
                         "n": int(sel.sum())})
    return {"ece": float(ece), "n": int(len(p)), "bins": rows}


TRADEOFF_GRID = np.round(np.arange(0, 10.001, 0.05), 2)  # the dial is continuous: 201 settings


def random_points(pool: Pool, n_mix: int = 21, seed: int = 0) -> np.ndarray:
    """Random router: each prompt to a uniformly random pool model (one point), and its mixes with the cheapest."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(pool.models), len(pool.prompts))
    return pool.ref.points_of(pick[None, :])


def evaluate(router: Router, data: RoutingData, rows: np.ndarray, catalog: Catalog, allowed: list[str] | None = None,
             progress: bool = True) -> dict:
    """Router vs random / single models / zero router / oracle on each source's pool over ``rows``."""
    results = {}
    sources = sorted(set(data.sources[i] for i in rows))
    it = sources
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(sources), desc="eval", unit="source")
        except ImportError:
            pass
    for src in it:
        pool = pool_for_source(data, src, catalog, rows=rows, allowed=allowed)
        if pool is None:
            if bar:
                bar.update(1)
            continue
        Q, C = predict_matrix(router, pool.prompts, pool.models)
        pts = pool.ref.points_of(sweep(Q, C, TRADEOFF_GRID))
        dflt = pool.ref.points_of(sweep(Q, C, [router.default_tradeoff]))
        s = pool.ref.summarize(pts)
        results[src] = {
            "pool": [m.id for m in pool.models], "n_prompts": len(pool.prompts),
            "router": s.as_dict(), "router_points": pts.tolist(),
            "default_tradeoff": router.default_tradeoff,
            "default_point": {"cost": float(dflt[0, 0]), "acc": float(dflt[0, 1])},
            "random": pool.ref.summarize(random_points(pool)).as_dict(),
            "zero": {"aiq": pool.ref.aiq_zero}, "oracle": {"aiq": pool.ref.aiq_oracle,
                                                           "cost": float(pool.ref.oracle_point[0, 0]),
                                                           "acc": float(pool.ref.oracle_point[0, 1])},
            "single": {m.id: {"cost": float(c), "acc": float(a)} for m, (c, a) in zip(pool.models, pool.ref.single)},
            "best_single": pool.models[pool.ref.best_model].id,
            "calibration": calibration(Q, pool.Y),
        }
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return results


def format_table(results: dict, extra_rows: dict | None = None) -> str:
    """Markdown table: per source, AIQ / OGR / Gain / Save of router and baselines."""
    lines = ["| source | method | AIQ | OGR | Gain (pts) | Save | best acc |", "|---|---|---|---|---|---|---|"]
    f = lambda x, p=4: "—" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))
    for src, r in results.items():
        rows = [("router", r["router"]), ("random", r["random"])]
        rows += [(k, v) for k, v in (extra_rows or {}).get(src, {}).items()]
        for name, s in rows:
            save = s.get("save")
            lines.append(f"| {src} | {name} | {f(s.get('aiq'))} | {f(s.get('ogr'), 3)} | {f(s.get('gain_pts'), 2)} | "
                         f"{'—' if save is None else f'{save:.0%}'} | {f(s.get('best_acc'), 3)} |")
        lines.append(f"| {src} | zero router | {r['zero']['aiq']:.4f} | 0 | 0 | — | "
                     f"{r['single'][r['best_single']]['acc']:.3f} ({r['best_single']}) |")
        lines.append(f"| {src} | oracle | {r['oracle']['aiq']:.4f} | 1 | — | — | {r['oracle']['acc']:.3f} |")
    return "\n".join(lines)


def plot(results: dict, path: str, extra_points: dict | None = None) -> None:
    """Quality–cost plot per source (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import upper_hull

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    for ax, (src, r) in zip(axes[0], results.items()):
        for mid, p in r["single"].items():
            ax.scatter(p["cost"] * 1e6, p["acc"], c="grey", s=18)
            ax.annotate(mid.split("/")[-1][:18], (p["cost"] * 1e6, p["acc"]), fontsize=6, color="grey")
        sp = np.array([[p["cost"], p["acc"]] for p in r["single"].values()])
        h = upper_hull(sp)
        ax.plot(h[:, 0] * 1e6, h[:, 1], "--", c="grey", label="zero router")
        pts = np.array(r["router_points"])
        h = upper_hull(pts)
        ax.plot(h[:, 0] * 1e6, h[:, 1], "-", c="C0", label=f"metarouter (OGR {r['router']['ogr']:.2f})")
        ax.scatter([r["default_point"]["cost"] * 1e6], [r["default_point"]["acc"]], marker="*", s=120, c="C0",
                   label=f"default tradeoff {r['default_tradeoff']:g}")
        for i, (name, (p, ogr)) in enumerate((extra_points or {}).get(src, {}).items()):
            hh = upper_hull(np.asarray(p))
            ax.plot(hh[:, 0] * 1e6, hh[:, 1], ":", c=f"C{i + 1}", label=f"{name} (OGR {ogr:.2f})")
        ax.scatter([r["oracle"]["cost"] * 1e6], [r["oracle"]["acc"]], marker="x", c="red", label="oracle")
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per prompt (µUSD, log)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{src} (held-out, {r['n_prompts']} prompts)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
