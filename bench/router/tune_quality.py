"""How the quality model's configuration was chosen, on training prompts only.

    .venv/bin/python bench/router/tune_quality.py --data ../shared/data/routing --cache /tmp/quality [CONFIG ...]

For each configuration of :class:`metarouter.router.predictors.QualityModel` (``CONFIGS``; default: all of them):
one router trained on the training split, and one per source trained without that source (4 trainings, about a
minute each on 2 cores; kept in ``--cache``, reused when present). Scored like ``tune_dial.py`` at the shipped dial
(familiarity thresholds and tie rule of the artifact): in distribution, OGR on the validation slice of the training
prompts; out of distribution, OGR on each left-out source's *training* prompts. The held-out split is never read.
Criterion: mean OGR in + mean OGR out. Beside it, the everyday battery (tests/router/fixtures/everyday_battery.jsonl)
at the default, 7 and 10. Prints one table row per configuration;
bench/router/RESULTS.md ("What was tried") records the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from run import battery  # noqa: E402

from metarouter.catalog import default_catalog  # noqa: E402
from metarouter.router.core import DEFAULT_ARTIFACT, Router  # noqa: E402
from metarouter.router.data import is_test, load_shared, split_mask  # noqa: E402
from metarouter.router.evaluate import TRADEOFF_GRID, pool_for_source, predict_matrix, sweep  # noqa: E402
from metarouter.router.train import VAL_FRACTION, train  # noqa: E402

# the configuration before this comparison (artifact r2-49d2e56653d4); the shipped one, train.QUALITY_PARAMS, is
# ens4x24_drop0.2
BEFORE = {"dim": 48, "epochs": 600, "ensemble": 1, "l2": 1e-4, "input_dropout": 0.0, "domain_dropout": 0.0, "seed": 0}
# name → changes to BEFORE (the tower width served is dim × ensemble, ≤ 96)
CONFIGS: dict[str, dict] = {
    "before": {},
    "seed1": {"seed": 1},
    "seed2": {"seed": 2},
    "ens2x48": {"ensemble": 2},
    "ens3x32": {"ensemble": 3, "dim": 32},
    "ens4x24": {"ensemble": 4, "dim": 24},
    "w96": {"dim": 96},
    "ep1200": {"epochs": 1200},
    "ens2x48_ep1200": {"ensemble": 2, "epochs": 1200},
    "ens4x24_ep1200": {"ensemble": 4, "epochs": 1200, "dim": 24},
    "l2_1e-3": {"l2": 1e-3},
    "ens4x24_l2_1e-3": {"ensemble": 4, "dim": 24, "l2": 1e-3},
    "drop0.2": {"input_dropout": 0.2},
    "ens4x24_drop0.2": {"ensemble": 4, "dim": 24, "input_dropout": 0.2},
    "ens4x24_drop0.2_ep1200": {"ensemble": 4, "dim": 24, "input_dropout": 0.2, "epochs": 1200},
    "drop0.2_seed1": {"input_dropout": 0.2, "seed": 1},
    "drop0.2_seed2": {"input_dropout": 0.2, "seed": 2},
    "drop0.35": {"input_dropout": 0.35},
    "drop0.5": {"input_dropout": 0.5},
    "ens2x48_drop0.2": {"ensemble": 2, "input_dropout": 0.2},
    "ens2x48_drop0.35": {"ensemble": 2, "input_dropout": 0.35},
    "domdrop0.5": {"domain_dropout": 0.5},
    "ens4x24_drop0.35": {"ensemble": 4, "dim": 24, "input_dropout": 0.35},
    "ens4x24_drop0.2_seed10": {"ensemble": 4, "dim": 24, "input_dropout": 0.2, "seed": 10},
    "ens4x24_drop0.2_seed20": {"ensemble": 4, "dim": 24, "input_dropout": 0.2, "seed": 20},
    "ens4x24_domdrop0.5": {"ensemble": 4, "dim": 24, "domain_dropout": 0.5},
}


def artifacts(data_dir: str, cache: Path, name: str, sources: list[str]) -> dict[str, Path]:
    """``full`` and ``without_<source>`` artifacts of one configuration, trained unless cached."""
    out = {"full": cache / name / "full.npz", **{s: cache / name / f"without_{s}.npz" for s in sources}}
    for key, path in out.items():
        if path.exists():
            continue
        print(f"{name}: training {'on every source' if key == 'full' else 'without ' + key} ...", file=sys.stderr,
              flush=True)
        train(data_dir, path, sources=None if key == "full" else [s for s in sources if s != key],
              encoder_from=DEFAULT_ARTIFACT, quality_params={**BEFORE, **CONFIGS[name]}, quiet=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "routing"))
    ap.add_argument("--cache", required=True, help="folder for the trained routers (<config>/full.npz, ...)")
    ap.add_argument("configs", nargs="*", help=f"of {', '.join(CONFIGS)} (default: all)")
    args = ap.parse_args()
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {', '.join(unknown)}")
    data = load_shared(args.data)
    test = split_mask(data)
    val = np.array([is_test(s, "val\x00" + i, VAL_FRACTION) for s, i in zip(data.sources, data.item_ids)]) & ~test
    cat = default_catalog()
    sources = sorted(set(data.sources))
    print("| config | width | in: " + " ".join(sources) + " | out: " + " ".join(sources) +
          " | in (mean) | out (mean) | sum | trivial → reasoning, mean cost (default) | hard → strong (default / 7 / 10) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs or list(CONFIGS):
        paths = artifacts(args.data, Path(args.cache), name, sources)
        full = Router.from_artifact(paths["full"])
        ogr = {"in": [], "out": []}
        for s in sources:
            for kind, r, rows in (("in", full, np.flatnonzero(val)),
                                  ("out", Router.from_artifact(paths[s]), np.flatnonzero(~test))):
                pool = pool_for_source(data, s, cat, rows=rows)
                Q, C = predict_matrix(r, pool.prompts, pool.models)
                ogr[kind].append(pool.ref.summarize(pool.ref.points_of(sweep(Q, C, TRADEOFF_GRID))).ogr)
        bat = battery(full, tradeoffs=(None, 7, 10))
        d = bat["default"]
        mi, mo = float(np.mean(ogr["in"])), float(np.mean(ogr["out"]))
        print(f"{name}: full artifact {full.version}", file=sys.stderr, flush=True)
        print(f"| {name} | {full.quality.W_.shape[1]} | " + " ".join(f"{x:.3f}" for x in ogr["in"]) + " | " +
              " ".join(f"{x:.3f}" for x in ogr["out"]) + f" | {mi:.3f} | {mo:.3f} | {mi + mo:.3f} | "
              f"{d['trivial']['to_reasoning']}/{d['trivial']['n']}, ${d['trivial']['mean_cost']:.5f} | "
              + " / ".join(f"{bat[t]['hard']['to_strong']:.0%}" for t in ("default", "7", "10")) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
