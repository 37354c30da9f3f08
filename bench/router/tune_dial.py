"""How the familiarity thresholds and the dial's tie rule were chosen, on training prompts only.

    .venv/bin/python bench/router/tune_dial.py --data ../shared/data/routing        # ~10 min on 2 cores

Never touches the held-out split (``split_mask``). In distribution: the validation slice of the training prompts
(what training itself holds out for calibration), scored with the shipped router. Out of distribution: for each
source, a router trained without it (``train(..., sources=others)``), scored on that source's *training* prompts,
none of which it has seen. For each setting of the grid: OGR per source both ways, and the sum of the two means (the
criterion). Prints a table; bench/router/RESULTS.md ("What was tried") records the run that chose the shipped values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from metarouter.catalog import default_catalog  # noqa: E402
from metarouter.router import policy  # noqa: E402
from metarouter.router.core import DEFAULT_ARTIFACT, Router  # noqa: E402
from metarouter.router.data import is_test, load_shared, split_mask  # noqa: E402
from metarouter.router.evaluate import TRADEOFF_GRID, pool_for_source, predict_matrix, sweep  # noqa: E402
from metarouter.router.train import VAL_FRACTION, train  # noqa: E402

SHIPPED_TIE = policy.tie
FAMILIARITY = [(0.1, 0.4), (0.3, 0.6), (0.5, 0.8), (0.6, 0.9), (0.7, 0.95), (0.8, 0.98)]


def tie_rule(kind: str):
    """``fixed``: :data:`policy.TIE` at every setting; ``shrink``: shrinking below 7; ``easy0``: shrinking below 7
    except for easy requests (best P(good) ≥ :data:`policy.EASY`), which keep the full margin even at 0 (the rule
    until session 6); ``easy``: the shipped rule (an easy request's margin grows from none at 0 to full at
    :data:`policy.EASY_RAMP`)."""
    if kind == "fixed":
        return lambda t, best=0.0: policy.TIE
    if kind == "shrink":
        return lambda t, best=0.0: policy.TIE * min(max(float(t), 0.0) / 7.0, 1.0)
    if kind == "easy0":
        def easy0(t, best=0.0):
            scaled = policy.TIE * min(max(float(t), 0.0) / 7.0, 1.0)
            if isinstance(best, float):
                return policy.TIE if best >= policy.EASY else scaled
            return np.where(np.asarray(best) >= policy.EASY, policy.TIE, scaled)
        return easy0
    return SHIPPED_TIE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "routing"))
    ap.add_argument("--loso-dir", help="reuse routers trained without each source (without_<source>.npz) from here")
    args = ap.parse_args()
    data = load_shared(args.data)
    test = split_mask(data)
    val = np.array([is_test(s, "val\x00" + i, VAL_FRACTION) for s, i in zip(data.sources, data.item_ids)]) & ~test
    cat = default_catalog()
    sources = sorted(set(data.sources))
    with tempfile.TemporaryDirectory() as tmp:
        loso_dir = Path(args.loso_dir or tmp)
        for s in sources:
            path = loso_dir / f"without_{s}.npz"
            if not path.exists():
                print(f"training without {s} ...", file=sys.stderr, flush=True)
                train(args.data, path, sources=[x for x in sources if x != s], encoder_from=DEFAULT_ARTIFACT,
                      quiet=True)
        cases = []  # (kind, source, router, pool, features)
        full = Router.from_artifact(DEFAULT_ARTIFACT)
        for s in sources:
            for kind, r, rows in (("in", full, np.flatnonzero(val)),
                                  ("out", Router.from_artifact(loso_dir / f"without_{s}.npz"), np.flatnonzero(~test))):
                pool = pool_for_source(data, s, cat, rows=rows)
                if pool is not None:
                    cases.append((kind, s, r, pool, r.featurize(pool.prompts)))
        print("| familiarity lo/hi | tie | in: " + " ".join(sources) + " | out: " + " ".join(sources) +
              " | in (mean) | out (mean) | sum |")
        print("|---|---|---|---|---|---|---|")
        for tie in ("fixed", "shrink", "easy0", "easy"):
            policy.tie = tie_rule(tie)
            for lo, hi in FAMILIARITY:
                ogr = {"in": [], "out": []}
                for kind, _, r, pool, (X, cov) in cases:
                    r.fam.lo, r.fam.hi = lo, hi
                    Q, C = predict_matrix(r, pool.prompts, pool.models, (X, cov))
                    pts = pool.ref.points_of(sweep(Q, C, TRADEOFF_GRID))
                    ogr[kind].append(pool.ref.summarize(pts).ogr)
                mi, mo = float(np.mean(ogr["in"])), float(np.mean(ogr["out"]))
                print(f"| {lo}/{hi} | {tie} | " + " ".join(f"{x:.3f}" for x in ogr["in"]) + " | " +
                      " ".join(f"{x:.3f}" for x in ogr["out"]) + f" | {mi:.3f} | {mo:.3f} | {mi + mo:.3f} |",
                      flush=True)
        policy.tie = SHIPPED_TIE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
