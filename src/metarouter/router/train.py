"""Train the router artifact (needs the ``[train]`` extra for the distillation step).

    python -m metarouter.router.train --data /path/to/routing --out router.npz

Reproducible: fixed seeds, deterministic split (hash of source and item id), no wall-clock in the artifact.
The held-out split (``data.split_mask``, 20 % per source) is never used here, so the shipped artifact is exactly
the one the benchmark evaluates. ``--all-data`` trains on everything (for a user's own data).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import Model, default_catalog
from . import artifact as art
from .data import RoutingData, load_any, load_arena_hard, split_mask
from .encoder import FEATURE_NAMES, StaticEncoder
from .predictors import LengthModel, MFPredictor

SEED = 0
MIN_LABELS = 150  # a model with fewer labels than this gets prior parameters
COV_LO, COV_HI = 0.7, 0.95  # share of words seen in training: ≤ 0.7 → unfamiliar, ≥ 0.95 → familiar
ARENA_PRIOR_WEIGHT = 1.0  # chosen on leave-one-source-out runs over the *training* rows of the other source
CAT_SCALE = 3.0  # the category posterior enters the MF tower scaled by this
MF_WEIGHT = 0.7  # quality = 0.7 · MF + 0.3 · category accuracy table (tuned on an inner validation split)


def softmax(S: np.ndarray) -> np.ndarray:
    S = S - S.max(1, keepdims=True)
    E = np.exp(S)
    return E / E.sum(1, keepdims=True)


def fit_category_classifier(X: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (scikit-learn, C=10); a single class gives a constant posterior."""
    if k < 2:
        return np.zeros((X.shape[1], 1), np.float32), np.zeros(1, np.float32)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=10.0, max_iter=3000, random_state=SEED).fit(X, y)
    W, b = clf.coef_.T, clf.intercept_
    if W.shape[1] == 1:  # binary: sklearn keeps one column
        W, b = np.hstack([-W / 2, W / 2]), np.array([-b[0] / 2, b[0] / 2])
    return W.astype(np.float32), b.astype(np.float32)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def kmeans(E: np.ndarray, k: int, iters: int = 25, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = min(k, len(E))
    C = E[rng.choice(len(E), k, replace=False)].copy()
    for _ in range(iters):
        a = (E @ C.T).argmax(1)
        for j in range(k):
            sel = E[a == j]
            if len(sel):
                C[j] = sel.mean(0)
        C /= np.linalg.norm(C, axis=1, keepdims=True) + 1e-9
    return C


def arena_scores(data_dir: Path | None) -> tuple[dict[str, float], dict[str, float]]:
    """Catalog id → Arena-Hard score (0–1) and → mean Arena-Hard answer tokens, via aliases of source arena_hard."""
    if data_dir is None or not (data_dir / "aliases.csv").exists():
        return {}, {}
    import csv

    _, toks, board = load_arena_hard(data_dir)
    scores, lengths = {}, {}
    with open(data_dir / "aliases.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["source"] != "arena_hard":
                continue
            cid = r["model_id"].lower()
            if r["source_model"] in board:
                scores[cid] = float(board[r["source_model"]]["score"]) / 100
            if r["source_model"] in toks:
                lengths[cid] = toks[r["source_model"]]
    return scores, lengths


def _price_feats(m: Model) -> np.ndarray:
    return np.array([1.0, math.log10(max(m.output_pico, 1) / 1e6), float(m.reasoning)])


def encode_prompts(enc: StaticEncoder, prompts: list[str]) -> np.ndarray:
    return np.stack([enc.encode(p) for p in prompts]).astype(np.float32)


def sweep_choices(Q: np.ndarray, C: np.ndarray, tradeoffs: np.ndarray) -> np.ndarray:
    """(tradeoffs × prompts) index of the best score q - λ(t)·cost."""
    from .core import tradeoff_lambda

    return np.stack([np.argmax(Q - tradeoff_lambda(t) * C, axis=1) for t in tradeoffs])


def train(data_dir: str | Path, out: str | Path, *, holdout: bool = True, dims: int = 128, mf_dim: int = 48,
          epochs: int = 600, distilled: str | Path | None = None, quiet: bool = False,
          calibrate: bool = True, encoder_from: str | Path | None = None,
          sources: list[str] | None = None) -> dict[str, Any]:
    """Train and write an artifact; ``sources`` limits training to those sources (leave-one-source-out runs)."""
    t0 = time.time()
    data_dir = Path(data_dir)
    data = load_any(data_dir)
    test = split_mask(data) if holdout else np.zeros(len(data), bool)
    keep = ~test
    if sources:
        keep &= np.isin(np.array(data.sources), sources)
    tr = data.subset(np.flatnonzero(keep))
    shared_dir = data_dir if data_dir.is_dir() else None
    arena_prompts = load_arena_hard(shared_dir)[0] if shared_dir else []
    _log(f"data: {len(data)} prompts, {len(data.models)} models; training on {len(tr)} (held out {test.sum()})", quiet)

    # 1. encoder
    if encoder_from:
        a, _, vocab, _ = art.load(encoder_from)
        table, sif = a["table"].astype(np.float32), a["sif"].astype(np.float32)
        dims = table.shape[1]
        _log(f"encoder: reusing the embedding table of {encoder_from}", quiet)
    elif distilled and Path(distilled).exists():
        z = np.load(distilled, allow_pickle=False)
        vocab, table, sif = [str(v) for v in z["vocab"]], z["table"], z["weights"]
        _log(f"encoder: reusing distilled table {distilled}", quiet)
    else:
        from .distill import distil

        vocab, table, sif = distil(tr.prompts + arena_prompts, dims=dims, seed=SEED, progress=not quiet)
        if distilled:
            np.savez(distilled, vocab=np.array(vocab), table=table, weights=sif)
    table = table.astype(np.float16).astype(np.float32)  # what ships
    sif = sif.astype(np.float16).astype(np.float32)
    nf = len(FEATURE_NAMES)
    enc = StaticEncoder(vocab, table, sif, np.zeros(nf), np.ones(nf))
    raw = encode_prompts(enc, tr.prompts)
    fmean, fstd = raw[:, dims:].mean(0), raw[:, dims:].std(0) + 1e-3
    enc = StaticEncoder(vocab, table, sif, fmean, fstd)
    X = raw.copy()
    X[:, dims:] = (raw[:, dims:] - fmean) / fstd
    _log(f"encoder: {len(vocab)} rows × {dims}; encoded in {time.time() - t0:.0f}s", quiet)

    # 2. quality: a prompt-category classifier (dataset labels; one class for a single-source CSV), then MF over
    #    every labelled column (catalog models weigh double) with the category posterior as extra input.
    cat = default_catalog()
    cats = sorted(set(tr.datasets))
    Wc, bc = fit_category_classifier(X, np.array([cats.index(x) for x in tr.datasets]), len(cats))
    Pk = softmax(X @ Wc + bc)
    X2 = np.hstack([X, CAT_SCALE * Pk]).astype(np.float32)
    col_is_cat = np.array([m in tr.catalog_ids for m in tr.models])
    cw = np.where(col_is_cat, 2.0, 1.0)
    mf = MFPredictor(dim=mf_dim, l2=1e-4, l2_model=1e-4, epochs=epochs, seed=SEED).fit(X2, tr.correct, col_weight=cw)
    lm = LengthModel().fit(X, tr.out_chars)
    _log(f"predictors fitted in {time.time() - t0:.0f}s", quiet)

    # 3. routable models: catalog models, plus custom ids of Not Diamond data
    arena, arena_len = arena_scores(shared_dir)
    col_of = {tr.catalog_ids[m].lower(): j for j, m in enumerate(tr.models) if m in tr.catalog_ids}
    models: list[Model] = list(cat)
    for cid in col_of:
        if cid not in cat:
            models.append(Model(id=cid, name=cid, provider=cid.split("/")[0], native_model=cid, context_length=0,
                                max_output_tokens=None, input_pico=0, output_pico=0))
    n_lab = np.array([(~np.isnan(tr.correct[:, col_of[m.id.lower()]])).sum() if m.id.lower() in col_of else 0
                      for m in models])
    Z = mf.embed(X2)
    H = mf_dim
    U = np.zeros((len(models), H), np.float32)
    c = np.zeros(len(models), np.float32)
    lo = np.full(len(models), np.nan, np.float32)
    pq = np.zeros(len(models), np.float32)
    for i, m in enumerate(models):
        j = col_of.get(m.id.lower())
        if j is not None:
            U[i], c[i], lo[i] = mf.U_[j], mf.c_[j], lm.offset_[j]
            pq[i] = float(np.mean(1 / (1 + np.exp(-(Z @ U[i] + c[i])))))
    min_labels = min(MIN_LABELS, max(20, len(tr) // 4))  # small custom data sets: relative threshold
    good = n_lab >= min_labels
    # lengths: models without length data get one from Arena-Hard verbosity relative to the models with both
    has_len = ~np.isnan(lo)
    both = [i for i, m in enumerate(models) if has_len[i] and m.id.lower() in arena_len]
    if both:
        base = np.mean([lo[i] - math.log(arena_len[models[i].id.lower()]) for i in both])
        for i, m in enumerate(models):
            if not has_len[i] and m.id.lower() in arena_len:
                lo[i] = base + math.log(arena_len[m.id.lower()])
    has_len = ~np.isnan(lo)
    fill = float(np.nanmedian(lo)) if has_len.any() else math.log(1500)
    # Priors. Every catalog model gets an Arena-Hard score (the leaderboard's, else imputed from price and
    # reasoning); a model without enough labels is IRT-style: the labelled models' average item response (U_avg)
    # with an ability offset from its score (slope fitted on the labelled models).
    real = np.array([good[i] and m.input_pico > 0 for i, m in enumerate(models)])
    ar = np.array([arena.get(m.id.lower(), np.nan) for m in models], float)
    F = np.stack([_price_feats(m) for m in models])
    has_ar = ~np.isnan(ar) & np.array([m.input_pico > 0 for m in models])
    arena_coef = np.linalg.solve(F[has_ar].T @ F[has_ar] + 0.1 * np.eye(3), F[has_ar].T @ ar[has_ar]) \
        if has_ar.sum() >= 3 else np.array([0.5, 0.0, 0.0])
    ar = np.where(np.isnan(ar), np.clip(F @ arena_coef, 0.05, 0.95), ar)
    if real.any():
        u_avg, c_avg, ar_mean = U[real].mean(0), float(c[real].mean()), float(ar[real].mean())
    else:
        u_avg, c_avg, ar_mean = np.zeros(H, np.float32), 0.0, 0.5
    beta = 5.0
    if real.sum() >= 3 and np.ptp(ar[real]) > 0.05:
        x_, y_ = ar[real] - ar[real].mean(), c[real] - c[real].mean()
        beta = float(np.clip((x_ @ y_) / (x_ @ x_ + 0.01), 1.0, 15.0))
    zbar_u = float((Z @ u_avg).mean())
    c_prior = c_avg + beta * (ar - ar_mean)
    pq_arena = np.array([np.mean(1 / (1 + np.exp(-(Z @ u_avg + cp)))) for cp in c_prior], np.float32)
    fill = float(np.nanmedian(lo)) if has_len.any() else math.log(1500)
    prior_weight = (min_labels / (n_lab + min_labels)).astype(np.float32)
    for i in range(len(models)):
        if not good[i]:
            U[i], c[i] = u_avg, c_prior[i]
            prior_weight[i] = 1.0
    lo = np.where(np.isnan(lo), fill, lo)
    # per-category accuracy of each routable model: labels where present, else the MF prediction
    ki = np.array([cats.index(x) for x in tr.datasets])
    Ql = 1 / (1 + np.exp(-(Z @ U.T + c)))
    Yf = Ql.copy()
    for i, m in enumerate(models):
        j = col_of.get(m.id.lower())
        if j is not None and good[i]:
            Yf[:, i] = np.where(np.isnan(tr.correct[:, j]), Ql[:, i], tr.correct[:, j])
    A = np.stack([Yf[ki == k].mean(0) for k in range(len(cats))]).astype(np.float32)
    pq_train = MF_WEIGHT * Ql.mean(0) + (1 - MF_WEIGHT) * (Pk @ A).mean(0)
    # what an unfamiliar prompt leans on: mostly the general (Arena-Hard) prior, a little the training-domain mean
    pq = np.where(good, (1 - ARENA_PRIOR_WEIGHT) * pq_train + ARENA_PRIOR_WEIGHT * pq_arena, pq_arena)
    pq = pq.astype(np.float32)
    # words of this training set, for the coverage part of familiarity
    seen = np.zeros(len(vocab), bool)
    for p_ in tr.prompts:
        ids = enc.token_ids(p_)
        if ids:
            seen[ids] = True

    # 4. familiarity: cosine to k-means centroids of the training prompts
    fam_mu = X[:, :dims].mean(0)
    E = X[:, :dims] - fam_mu
    E /= np.linalg.norm(E, axis=1, keepdims=True) + 1e-9
    cents = kmeans(E, 64)
    sims = (E @ cents.T).max(1)
    conf_hi = float(np.percentile(sims, 5))  # 95 % of training prompts count as fully familiar
    conf_lo = conf_hi - 0.15

    arrays = {
        "table": table.astype(np.float16), "sif": sif.astype(np.float16), "feat_mean": fmean.astype(np.float32),
        "feat_std": fstd.astype(np.float32), "Wc": Wc.astype(np.float32), "bc": bc.astype(np.float32),
        "cat_acc": A.T.copy(), "W": mf.W_, "b": mf.b_, "U": U, "c": c, "prior_q": pq,
        "prior_weight": prior_weight, "len_w": lm.w_, "len_w0": np.array(lm.w0_, np.float32), "len_offset": lo,
        "prior_u": u_avg.astype(np.float32),
        "prior_scalars": np.array([c_avg, beta, ar_mean, zbar_u, fill], np.float32),
        "arena_coef": arena_coef.astype(np.float32), "seen": np.packbits(seen), "centroids": cents.astype(np.float32),
        "conf_range": np.array([conf_lo, conf_hi], np.float32), "fam_mu": fam_mu.astype(np.float32),
        "cov_range": np.array([COV_LO, COV_HI], np.float32),
    }
    digest = hashlib.sha256()
    for k in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[k]).tobytes())
    meta = {
        "version": "mf-" + digest.hexdigest()[:12], "default_tradeoff": 3.0, "dims": dims, "mf_dim": mf_dim,
        "epochs": epochs, "seed": SEED, "categories": cats,
        "cat_scale": CAT_SCALE, "mf_weight": MF_WEIGHT, "holdout": holdout, "n_train_prompts": len(tr),
        "train_sources": sorted(set(tr.sources)), "arena_scores": arena,
        "n_labels": {m.id: int(n) for m, n in zip(models, n_lab)},
    }
    out = Path(out)
    art.save(out, arrays, meta, vocab, [m.id for m in models])
    if calibrate:
        meta["default_tradeoff"] = calibrate_default_tradeoff(out, tr, quiet)
        art.save(out, arrays, meta, vocab, [m.id for m in models])
    _log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f}s; "
         f"default tradeoff {meta['default_tradeoff']}", quiet)
    return meta


def calibrate_default_tradeoff(path: Path, tr: RoutingData, quiet: bool) -> float:
    """The largest tradeoff whose training-set accuracy still matches the best single model in every source pool.

    Uses training prompts only (the held-out split stays unseen); rounded down to a 0.25 step to stay on the safe side.
    """
    from .core import Router
    from .evaluate import pool_for_source, predict_matrix

    router = Router(*art.load(path))
    grid = np.round(np.arange(0, 10.001, 0.25), 2)
    best_t = []
    for src in sorted(set(tr.sources)):
        pool = pool_for_source(tr, src, default_catalog())
        if pool is None or len(pool.models) < 2:
            continue
        Q, Cp = predict_matrix(router, pool.prompts, pool.models)
        ch = sweep_choices(Q, Cp, grid)
        pts = pool.ref.points_of(ch)
        ok = [t for t, (_, a) in zip(grid, pts) if a >= pool.ref.best_acc]
        if ok:
            best_t.append(max(ok))
        _log(f"calibrate {src}: tradeoffs matching the best single model: {ok[-1] if ok else None}", quiet)
    return float(min(best_t)) if best_t else 3.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metarouter train", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", required=True, help="shared routing folder, or Not Diamond CSV file/folder")
    ap.add_argument("--out", required=True, help="artifact path (.npz)")
    ap.add_argument("--all-data", action="store_true", help="train on every prompt (no held-out split)")
    ap.add_argument("--distilled", default=None, help="cache file for the distilled embedding table")
    ap.add_argument("--encoder-from", default=None, metavar="ARTIFACT",
                    help="reuse the embedding table of an artifact ('shipped' = the packaged one) instead of "
                         "distilling all-MiniLM-L6-v2 again (no torch needed; e.g. for your own CSV data)")
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    enc = args.encoder_from
    if enc == "shipped":
        from .core import DEFAULT_ARTIFACT

        enc = DEFAULT_ARTIFACT
    train(args.data, args.out, holdout=not args.all_data, distilled=args.distilled, epochs=args.epochs,
          quiet=args.quiet, encoder_from=enc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
