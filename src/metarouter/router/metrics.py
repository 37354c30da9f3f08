"""Routing-benchmark metrics as defined in shared/data/README.md: AIQ, OGR, Gain, Save (numpy only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def upper_hull(points: np.ndarray) -> np.ndarray:
    """Non-decreasing upper convex hull of (cost, accuracy) points, sorted by cost."""
    pts = np.asarray(points, float)
    pts = pts[np.lexsort((-pts[:, 1], pts[:, 0]))]
    hull: list[tuple[float, float]] = []
    for c, a in pts:
        if hull and c == hull[-1][0]:
            continue  # same cost: the first (highest accuracy) kept
        while len(hull) >= 2:
            (c1, a1), (c2, a2) = hull[-2], hull[-1]
            if (c2 - c1) * (a - a1) - (a2 - a1) * (c - c1) >= 0:  # hull[-1] under the chord: drop it
                hull.pop()
            else:
                break
        hull.append((c, a))
    h = np.array(hull)
    top = int(np.argmax(h[:, 1]))
    return h[: top + 1]


def hull_value(hull: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Best accuracy reachable at each cost: interpolated hull, flat after its end, 0 before its start."""
    v = np.interp(cost, hull[:, 0], hull[:, 1])
    return np.where(cost < hull[0, 0], 0.0, v)


def aiq(points: np.ndarray, c_min: float, c_max: float, grid: int = 4001) -> float:
    """Mean of the hull over [c_min, c_max] (the cheapest to the dearest single model of the pool)."""
    cs = np.linspace(c_min, c_max, grid)
    return float(np.trapezoid(hull_value(upper_hull(points), cs), cs) / (c_max - c_min))


@dataclass
class Summary:
    aiq: float
    ogr: float
    gain_pts: float
    save: float  # NaN when the router never reaches the best single model's accuracy
    best_acc: float
    points: np.ndarray

    def as_dict(self) -> dict:
        f = lambda x: None if (x is None or (isinstance(x, float) and math.isnan(x))) else round(float(x), 4)
        return {"aiq": f(self.aiq), "ogr": f(self.ogr), "gain_pts": f(self.gain_pts), "save": f(self.save),
                "best_acc": f(self.best_acc)}


class PoolReference:
    """Single models, zero router and oracle of one pool: correctness ``Y`` and cost ``C`` (prompts × models)."""

    def __init__(self, Y: np.ndarray, C: np.ndarray):
        self.Y, self.C = np.asarray(Y, float), np.asarray(C, float)
        self.single = np.stack([self.C.mean(0), self.Y.mean(0)], 1)  # (models, 2): cost, accuracy
        self.c_min, self.c_max = float(self.single[:, 0].min()), float(self.single[:, 0].max())
        self.aiq_zero = aiq(self.single, self.c_min, self.c_max)
        # Oracle: per prompt the cheapest correct model (or the cheapest model when none is correct).
        cc = np.where(self.Y > 0.5, self.C, np.inf)
        pick = np.where(np.isfinite(cc.min(1)), cc.argmin(1), self.C.argmin(1))
        r = np.arange(len(self.Y))
        self.oracle_point = np.array([[self.C[r, pick].mean(), self.Y[r, pick].mean()]])
        self.aiq_oracle = aiq(self.oracle_point, self.c_min, self.c_max)
        best = int(np.lexsort((self.single[:, 0], -self.single[:, 1]))[0])
        self.best_model = best
        self.best_acc, self.best_cost = float(self.single[best, 1]), float(self.single[best, 0])

    def points_of(self, choices: np.ndarray) -> np.ndarray:
        """(settings × prompts) model indices → (settings, 2) mean cost and accuracy."""
        r = np.arange(self.Y.shape[0])
        ch = np.atleast_2d(choices)
        return np.stack([[self.C[r, c].mean(), self.Y[r, c].mean()] for c in ch])

    def summarize(self, points: np.ndarray) -> Summary:
        pts = np.asarray(points, float)
        a = aiq(pts, self.c_min, self.c_max)
        ogr = (a - self.aiq_zero) / (self.aiq_oracle - self.aiq_zero)
        gain = (pts[:, 1].max() - self.best_acc) * 100
        ok = pts[:, 1] >= self.best_acc - 1e-12
        save = 1 - pts[ok, 0].min() / self.best_cost if ok.any() else float("nan")
        return Summary(a, ogr, gain, save, float(pts[:, 1].max()), pts)
