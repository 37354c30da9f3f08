"""Train the router artifact.

    metarouter train --data ../shared/data/routing --out router.npz

What it fits (all in :mod:`.predictors`; the runtime loads the same classes from the artifact):

1. features: the static embedding table (reused from an artifact, by default the shipped one; ``--distill`` makes a
   new one from all-MiniLM-L6-v2, which needs the ``[train]`` extra) + hand features + request features (tools,
   response format), standardised on the training prompts (a feature that never varies there reads as 0, and every
   standardised value is clipped to ±5); a share of the requests is read behind a generic system prompt or earlier
   turns (:mod:`.shapes`), so that a conversation's shape alone decides nothing;
2. a domain classifier, and the quality model over every labelled column (catalog models weigh double), its
   temperature calibrated on a validation split of the training prompts;
3. the prior (general ability from Arena-Hard against the request's difficulty), for unfamiliar prompts and models
   without labels;
4. familiarity: centroids of the training prompts, thresholds from validation prompts (familiar) and from each
   source's prompts against the other sources' centroids (unfamiliar);
5. answer lengths per model.

Training data: the shared routing folder (or Not Diamond CSVs) plus the everyday anchors shipped beside this module
(``anchors.jsonl``: requests every pool model answers well). Reproducible: fixed seeds, deterministic splits (hashes
of source and item id), no wall-clock in the artifact. The held-out split (:func:`.data.split_mask`, 20 % per source)
is never used here, so the shipped artifact is the one the benchmark evaluates; ``--all-data`` trains on everything.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import Model, default_catalog
from . import artifact as art
from . import shapes
from .data import RoutingData, is_test, load_anchors, load_any, load_arena_hard, split_mask
from .encoder import FEATURE_NAMES, StaticEncoder, feature_scale, standardised
from .predictors import CategoryModel, FamiliarityModel, LengthModel, PriorModel, QualityModel
from .policy import DEFAULT_TRADEOFF
from .request import REQUEST_FEATURES

SEED = 0
ANCHORS = Path(__file__).parent / "anchors.jsonl"
MIN_LABELS = 150  # a model with fewer labels than this is served by the prior
VAL_FRACTION = 0.15  # of the training prompts: calibration and familiarity thresholds
ANCHOR_WEIGHT = 10.0  # an everyday anchor's weight in the difficulty regression (a few hundred beside ~10k prompts)
COV_RANGE = (0.7, 0.95)  # share of words seen in training: ≤ 0.7 → unfamiliar, ≥ 0.95 → familiar
# the quality model's parameters (:class:`.predictors.QualityModel`): four towers of width 24 over seeds (served as
# one of width 96), trained with 20 % input dropout — of the configurations of bench/router/tune_quality.py, the best
# on training prompts out of distribution (each source under a router trained without it) and in it, over 3 seeds
# (bench/router/RESULTS.md, "What was tried")
QUALITY_PARAMS: dict[str, Any] = {"dim": 24, "epochs": 600, "ensemble": 4, "l2": 1e-4, "input_dropout": 0.2,
                                  "domain_dropout": 0.0, "seed": SEED}


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def arena_scores(data_dir: Path | None) -> dict[str, float]:
    """Catalog id → Arena-Hard score (0–1), via aliases of source arena_hard."""
    if data_dir is None or not (data_dir / "aliases.csv").exists():
        return {}
    import csv

    _, _, board = load_arena_hard(data_dir)
    scores = {}
    with open(data_dir / "aliases.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["source"] == "arena_hard" and r["source_model"] in board:
                scores[r["model_id"].lower()] = float(board[r["source_model"]]["score"]) / 100
    return scores


def _price_feats(m: Model) -> np.ndarray:
    return np.array([1.0, math.log10(max(m.output_pico, 1) / 1e6), float(m.reasoning)])


def embedding_table(encoder_from: str | Path | None, distill_corpus: list[str] | None, dims: int, quiet: bool
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(vocabulary, table, SIF weights): an artifact's, or freshly distilled from all-MiniLM-L6-v2."""
    if distill_corpus is not None:
        from .distill import distil

        return distil(distill_corpus, dims=dims, seed=SEED, progress=not quiet)
    from .core import DEFAULT_ARTIFACT

    a, _, vocab, _ = art.load(encoder_from or DEFAULT_ARTIFACT)
    table = a.get("enc.table", a.get("table"))
    sif = a.get("enc.sif", a.get("sif"))
    if table is None or sif is None:
        raise ValueError(f"{encoder_from}: no embedding table in this artifact")
    return vocab, table.astype(np.float32), sif.astype(np.float32)


def fit(tr: RoutingData, *, vocab: list[str], table: np.ndarray, sif: np.ndarray, arena: dict[str, float],
        anchors: RoutingData | None = None, reference: list[str] | None = None,
        quality_params: dict[str, Any] | None = None, quiet: bool = False
        ) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    """Fit every predictor on the labelled prompts ``tr``; ``anchors`` (everyday requests, every model correct) teach
    the prior's difficulty; ``anchors`` and ``reference`` (unlabelled real user prompts) are what the familiarity
    classifier learns to tell apart from ``tr``; ``quality_params`` override :data:`QUALITY_PARAMS`. Returns the
    artifact's arrays, metadata and routable model ids."""
    from .core import as_request

    t0 = time.time()
    table = table.astype(np.float16).astype(np.float32)  # what ships
    sif = sif.astype(np.float16).astype(np.float32)
    dims = table.shape[1]
    nf = len(FEATURE_NAMES)
    enc = StaticEncoder(vocab, table, sif, np.zeros(nf), np.ones(nf))
    requests = tr.requests()
    raw = np.stack([_raw_vector(enc, r) for r in requests]).astype(np.float32)
    val = np.array([is_test(s, "val\x00" + i, VAL_FRACTION) for s, i in zip(tr.sources, tr.item_ids)])
    # a share of the training requests is read in another conversation shape (a system prompt, earlier turns:
    # shapes.py), with its labels; validation prompts stay as they are
    picks = [(i, shapes.pick(f"{tr.sources[i]}\x00{tr.item_ids[i]}")) for i in np.flatnonzero(~val)]
    shaped = np.array([i for i, k in picks if k is not None], np.int64)
    raw_shaped = np.stack([_raw_vector(enc, shapes.reshape(requests[i], k)) for i, k in picks if k is not None]
                          ).astype(np.float32) if len(shaped) else np.zeros((0, raw.shape[1]), np.float32)
    anchor_reqs = _with_shapes("anchor", anchors.requests() if anchors is not None else [])
    extra = anchor_reqs + _with_shapes("reference", [as_request(p) for p in reference or []])
    n_anchor = len(anchor_reqs)
    raw_extra = np.stack([_raw_vector(enc, r) for r in extra]).astype(np.float32) if extra else \
        np.zeros((0, raw.shape[1]), np.float32)
    both = np.vstack([raw, raw_shaped])  # the statistics of the labelled requests, bare and reshaped
    fmean, fstd = both[:, dims:dims + nf].mean(0), feature_scale(both[:, dims:dims + nf].std(0))
    rmean, rstd = both[:, dims + nf:].mean(0), feature_scale(both[:, dims + nf:].std(0))

    def standardise(R: np.ndarray) -> np.ndarray:
        X = R.copy()
        X[:, dims:dims + nf] = standardised(R[:, dims:dims + nf], fmean, fstd)
        X[:, dims + nf:] = standardised(R[:, dims + nf:], rmean, rstd)
        return X

    X, X_shaped, X_extra = standardise(raw), standardise(raw_shaped), standardise(raw_extra)
    _log(f"features: {len(X)} labelled ({len(X_shaped)} reshaped) + {n_anchor} anchor + "
         f"{len(X_extra) - n_anchor} reference requests × {X.shape[1]} in {time.time() - t0:.0f}s", quiet)

    fit_rows = ~val
    X_shown = X.copy()  # what the predictors learn from: each training request once, a share of them reshaped
    X_shown[shaped] = X_shaped
    X_fit = X_shown[fit_rows]

    # domain classifier and quality model (labelled prompts only)
    cat = CategoryModel(seed=SEED).fit(X_fit, [tr.datasets[i] for i in np.flatnonzero(fit_rows)])
    P_cat = cat.predict(X)
    col_is_cat = np.array([m in tr.catalog_ids for m in tr.models])
    ki = np.array([cat.classes_.index(x) for x in tr.datasets])
    qp = quality_parameters(quality_params)
    quality = QualityModel(**qp).fit(
        X_fit, cat.predict(X_fit), tr.correct[fit_rows], col_weight=np.where(col_is_cat, 2.0, 1.0),
        category=ki[fit_rows])
    quality.calibrate(X[val], P_cat[val], tr.correct[val])
    _log(f"quality model fitted in {time.time() - t0:.0f}s (temperature {quality.temperature_:.2f}, domain table "
         f"weight {quality.table_weight_:.1f})", quiet)

    # routable models: the catalog plus labelled custom ids (Not Diamond data)
    catalog = default_catalog()
    col_of = {tr.catalog_ids[m].lower(): j for j, m in enumerate(tr.models) if m in tr.catalog_ids}
    models: list[Model] = list(catalog)
    for cid in col_of:
        if cid not in catalog:
            models.append(Model(id=cid, name=cid, provider=cid.split("/")[0], native_model=cid, context_length=0,
                                max_output_tokens=None, input_pico=0, output_pico=0))
    n_lab = np.array([int((~np.isnan(tr.correct[:, col_of[m.id.lower()]])).sum()) if m.id.lower() in col_of
                      else 0 for m in models])
    min_labels = min(MIN_LABELS, max(20, len(tr) // 4))
    col_arr = np.array([col_of[m.id.lower()] if m.id.lower() in col_of and n_lab[i] >= min_labels else -1
                        for i, m in enumerate(models)], np.int32)
    # where each model's labels are: share of each domain's prompts labelled for it (the learned quality is
    # trusted for a model only in the domains it was labelled in)
    coverage = np.zeros((len(models), len(cat.classes_)), np.float32)
    for i, j in enumerate(col_arr):
        if j >= 0:
            lab = ~np.isnan(tr.correct[:, j])
            coverage[i] = [lab[ki == k].mean() if (ki == k).any() else 0.0 for k in range(len(cat.classes_))]

    # general ability: Arena-Hard where known, else imputed from price and reasoning (fitted on the known ones)
    F_price = np.stack([_price_feats(m) for m in models])
    ar = np.array([arena.get(m.id.lower(), np.nan) for m in models], float)
    has_ar = ~np.isnan(ar) & np.array([m.input_pico > 0 for m in models])
    arena_coef = np.linalg.solve(F_price[has_ar].T @ F_price[has_ar] + 0.1 * np.eye(3),
                                 F_price[has_ar].T @ ar[has_ar]) if has_ar.sum() >= 3 else np.array([0.5, 0.0, 0.0])
    ability = np.where(np.isnan(ar), np.clip(F_price @ arena_coef, 0.05, 0.95), ar)
    if not has_ar.any():  # no leaderboard (e.g. the user's own data): ability from the labels' mean
        for i, m in enumerate(models):
            if m.id.lower() in col_of:
                ability[i] = float(np.nanmean(tr.correct[:, col_of[m.id.lower()]]))

    # prior: difficulty from the request's shape (labelled prompts and anchors), ability slope from the labels
    lab_models = [i for i, m in enumerate(models) if m.id.lower() in col_of]
    cols = [col_of[models[i].id.lower()] for i in lab_models]
    Y_prior = tr.correct[fit_rows][:, cols]
    F_prior = X_fit
    labelled = np.ones(len(Y_prior), bool)
    if n_anchor:
        Y_prior = np.vstack([Y_prior, np.ones((n_anchor, len(cols)), np.float32)])
        F_prior = np.vstack([F_prior, X_extra[:n_anchor]])
        labelled = np.r_[labelled, np.zeros(n_anchor, bool)]
    prior = PriorModel().fit(F_prior, Y_prior, ability[lab_models], labelled=labelled,
                             row_weight=np.where(labelled, 1.0, ANCHOR_WEIGHT))

    # familiarity: the labelled prompts against everyday requests and other traffic
    fam = FamiliarityModel(seed=SEED).fit(X_fit, X_extra[:n_anchor], X_extra[n_anchor:])
    _log(f"familiarity: validation prompts familiar (≥ 0.5): {(fam.predict(X[val])[0] >= 0.5).mean():.0%}", quiet)

    # answer lengths
    length = LengthModel().fit(X_shown, tr.out_chars)
    lo = np.array([length.offset_[col_of[m.id.lower()]] if m.id.lower() in col_of else np.nan for m in models],
                  np.float32)
    len_fill = float(np.nanmedian(lo)) if (~np.isnan(lo)).any() else math.log(1500.0)

    seen = np.zeros(len(vocab), bool)
    for p in tr.prompts:
        ids = enc.token_ids(p)
        if ids:
            seen[ids] = True
    arrays: dict[str, np.ndarray] = {
        "enc.table": table.astype(np.float16), "enc.sif": sif.astype(np.float16),
        "enc.feat_mean": fmean.astype(np.float32), "enc.feat_std": fstd.astype(np.float32),
        "enc.seen": np.packbits(seen), "req.mean": rmean.astype(np.float32), "req.std": rstd.astype(np.float32),
        "models.col": col_arr, "models.ability": ability.astype(np.float32), "models.len_offset": lo,
        "models.coverage": coverage,
    }
    for prefix, p in (("cat", cat), ("quality", quality), ("prior", prior), ("fam", fam), ("length", length)):
        arrays.update({f"{prefix}.{k}": v for k, v in p.to_arrays().items()})
    digest = hashlib.sha256()
    for k in sorted(arrays):
        digest.update(k.encode())
        digest.update(np.ascontiguousarray(arrays[k]).tobytes())
    meta = {
        "router_format": 2, "version": "r2-" + digest.hexdigest()[:12], "default_tradeoff": DEFAULT_TRADEOFF, "dims": dims,
        "mf_dim": int(quality.W_.shape[1]), "epochs": qp["epochs"], "quality_params": qp, "seed": SEED,
        "categories": cat.classes_,
        "n_train_prompts": int(fit_rows.sum()), "n_reshaped": int(len(shaped)),
        "n_validation_prompts": int(val.sum()), "n_anchors": n_anchor,
        "n_reference": len(X_extra) - n_anchor, "train_sources": sorted(set(tr.sources)),
        "arena_coef": arena_coef.tolist(), "len_fill": len_fill, "cov_range": list(COV_RANGE),
        "request_features": list(REQUEST_FEATURES), "n_labels": {m.id: int(n) for m, n in zip(models, n_lab)},
    }
    _log(f"fitted in {time.time() - t0:.0f}s", quiet)
    return arrays, meta, [m.id for m in models]


def quality_parameters(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """:data:`QUALITY_PARAMS` with ``overrides``; an unknown name is an error, not ignored."""
    unknown = sorted(set(overrides or {}) - set(QUALITY_PARAMS))
    if unknown:
        raise ValueError(f"unknown quality parameter(s) {', '.join(unknown)}; known: {', '.join(QUALITY_PARAMS)}")
    return {**QUALITY_PARAMS, **(overrides or {})}


def _with_shapes(kind: str, requests: list) -> list:
    """``requests``, then the reshaped copies of a share of them (:mod:`.shapes`)."""
    return requests + [shapes.reshape(r, k) for j, r in enumerate(requests)
                       if (k := shapes.pick(f"{kind}\x00{j}")) is not None]


def _raw_vector(enc: StaticEncoder, req) -> np.ndarray:
    """The request's vector before standardisation (what :meth:`Router.features` computes, unstandardised)."""
    from .core import encode_request

    x, _ = encode_request(enc, req, raw=True)
    return np.concatenate([x, np.array(req.features(), np.float32)])


def train(data_dir: str | Path, out: str | Path, *, holdout: bool = True, epochs: int | None = None,
          encoder_from: str | Path | None = None, distill: bool = False, anchors: Path | None = ANCHORS,
          sources: list[str] | None = None, quality_params: dict[str, Any] | None = None, quiet: bool = False
          ) -> dict[str, Any]:
    """Train and write an artifact; ``sources`` limits training to those sources (leave-one-source-out runs);
    ``quality_params`` (and ``epochs``, one of them) override :data:`QUALITY_PARAMS`.

    The artifact is written to a temporary file beside ``out`` and renamed into place, so a failed run leaves
    nothing half-written."""
    t0 = time.time()
    quality_params = dict(quality_params or {})
    if epochs is not None:
        quality_params["epochs"] = epochs
    quality_parameters(quality_params)  # unknown names fail before anything is loaded
    data_dir = Path(data_dir)
    data = load_any(data_dir)
    test = split_mask(data) if holdout else np.zeros(len(data), bool)
    keep = ~test
    if sources:
        unknown = sorted(set(sources) - set(data.sources))
        if unknown:
            raise ValueError(f"unknown source(s) {', '.join(unknown)}; the data has {', '.join(sorted(set(data.sources)))}")
        keep &= np.isin(np.array(data.sources), sources)
    tr = data.subset(np.flatnonzero(keep))
    anchor_data = None
    if anchors is not None:
        anchor_data = load_anchors(anchors, [m for m in tr.models if m in tr.catalog_ids])
        if holdout:  # the same 20 % of anchors stay out as of every source
            anchor_data = anchor_data.subset(np.flatnonzero(~split_mask(anchor_data)))
    shared_dir = data_dir if data_dir.is_dir() else None
    reference = load_arena_hard(shared_dir)[0] if shared_dir else []
    _log(f"data: {len(data)} prompts, {len(data.models)} models; training on {len(tr)} (held out {int(test.sum())})",
         quiet)
    corpus = None
    if distill:
        corpus = tr.prompts + (load_arena_hard(shared_dir)[0] if shared_dir else [])
    vocab, table, sif = embedding_table(encoder_from, corpus, 128, quiet)
    arrays, meta, ids = fit(tr, vocab=vocab, table=table, sif=sif, arena=arena_scores(shared_dir),
                            anchors=anchor_data, reference=reference, quality_params=quality_params, quiet=quiet)
    meta["holdout"] = holdout
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        art.save(tmp, arrays, meta, vocab, ids)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f}s", quiet)
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metarouter train", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", required=True, help="shared routing folder, or Not Diamond CSV file/folder")
    ap.add_argument("--out", required=True, help="artifact path (.npz)")
    ap.add_argument("--all-data", action="store_true", help="train on every prompt (no held-out split)")
    ap.add_argument("--encoder-from", default=None, metavar="ARTIFACT",
                    help="reuse the embedding table of this artifact (default: the shipped one)")
    ap.add_argument("--distill", action="store_true",
                    help="distil a new embedding table from all-MiniLM-L6-v2 (needs the [train] extra and torch)")
    ap.add_argument("--no-anchors", action="store_true", help="leave out the shipped everyday anchors")
    ap.add_argument("--sources", default=None, help="comma-separated sources to train on (default: all)")
    ap.add_argument("--epochs", type=int, default=None, help=f"quality model epochs (default {QUALITY_PARAMS['epochs']})")
    ap.add_argument("--mf-dim", type=int, default=None,
                    help=f"width of one quality tower (default {QUALITY_PARAMS['dim']})")
    ap.add_argument("--ensemble", type=int, default=None,
                    help=f"quality towers over seeds, folded into one (default {QUALITY_PARAMS['ensemble']})")
    ap.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    enc = args.encoder_from
    if enc == "shipped":
        enc = None
    qp = {k: v for k, v in (("dim", args.mf_dim), ("ensemble", args.ensemble)) if v is not None}
    try:
        train(args.data, args.out, holdout=not args.all_data, epochs=args.epochs, encoder_from=enc, quality_params=qp,
              distill=args.distill, anchors=None if args.no_anchors else ANCHORS,
              sources=[s for s in args.sources.split(",") if s] if args.sources else None, quiet=args.quiet)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
