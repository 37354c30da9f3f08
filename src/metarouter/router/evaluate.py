"""Evaluation helpers shared by ``metarouter eval``, training calibration and ``bench/router``.

A *pool* is one source's held-out prompts with the catalog models labelled on (nearly) every prompt of it; prompts
missing a label of a pool model are dropped, so every prompt has the full pool. Costs follow the shared benchmark
convention with the measured answer length (estimated where unmeasured, see :func:`fill_lengths`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..catalog import Catalog, Model
from .core import Router, tradeoff_lambda
from .data import RoutingData, benchmark_cost_usd
from .encoder import estimate_prompt_tokens
from .metrics import PoolReference


@dataclass
class Pool:
    source: str
    rows: np.ndarray  # indices into the RoutingData
    prompts: list[str]
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
    pc = np.array([len(data.prompts[i]) for i in idx], float)
    C = benchmark_cost_usd(pc, L, np.array([m.input_pico for m in models]) / 1e12,
                           np.array([m.output_pico for m in models]) / 1e12,
                           np.array([m.hidden_reasoning_tokens for m in models], float))
    return Pool(source, idx, [data.prompts[i] for i in idx], models, Y, C, PoolReference(Y, C))


def predict_matrix(router: Router, prompts: list, models: list[Model],
                   X: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :meth:`Router.predict` for many prompts: quality and predicted cost (prompts × models)."""
    cov = None
    if X is None:
        enc = [router.encoder.encode(p, with_coverage=True) for p in prompts]
        X = np.stack([e[0] for e in enc]).astype(np.float32)
        cov = np.array([e[1] for e in enc], np.float32)
    rows = [router._row(m) for m in models]
    Q, _, _ = router.predict_quality(X, rows, cov)
    ptok = np.array([estimate_prompt_tokens(p) for p in prompts], np.float64)
    C, _ = router.predict_cost(X, rows, ptok)
    return Q, C


def sweep(Q: np.ndarray, C: np.ndarray, tradeoffs) -> np.ndarray:
    """(tradeoffs × prompts) choices maximising q - λ(t)·cost (ties: the cheaper)."""
    out = []
    for t in tradeoffs:
        S = Q - tradeoff_lambda(t) * C
        out.append(np.argmax(S - 1e-12 * C, axis=1))
    return np.stack(out)


TRADEOFF_GRID = np.round(np.arange(0, 10.001, 0.05), 2)  # the dial is continuous: 201 settings


def random_points(pool: Pool, n_mix: int = 21, seed: int = 0) -> np.ndarray:
    """Random router: each prompt to a uniformly random pool model (one point), and its mixes with the cheapest."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(pool.models), len(pool.prompts))
    return pool.ref.points_of(pick[None, :])


def router_points(router: Router, pool: Pool, tradeoffs=TRADEOFF_GRID, X: np.ndarray | None = None):
    Q, C = predict_matrix(router, pool.prompts, pool.models, X)
    ch = sweep(Q, C, tradeoffs)
    return pool.ref.points_of(ch), ch


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
        pts, ch = router_points(router, pool)
        dflt = pool.ref.points_of(sweep(*predict_matrix(router, pool.prompts, pool.models), [router.default_tradeoff]))
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
