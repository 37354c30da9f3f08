"""Per-model quality predictors behind one scikit-learn-like contract.

``fit(X, Y)`` takes encoded prompts ``X`` (n × d) and a correctness matrix ``Y`` (n × models, NaN = unlabelled);
``predict(X)`` returns P(correct) (n × models). Parameters live in ``__init__``; fitted state ends in ``_``.
``to_arrays()`` / ``from_arrays()`` give plain numpy arrays for the artifact (no pickle).

- :class:`KNNPredictor` — the baseline: cosine neighbours' label means, shrunk to each model's mean.
- :class:`MFPredictor` — IRT / matrix-factorisation style: a shared prompt tower ``z = tanh(X W + b)`` and one
  embedding per model, ``P(correct) = σ(z · u_m + c_m)``; trained on every labelled model (catalog or not) so that
  the prompt tower learns from all of them. Numpy only, full-batch Adam, fixed seed.
- :class:`LengthModel` — expected answer length: ``log(chars) = g(X) + o_m`` (shared prompt part, per-model offset).
"""

from __future__ import annotations

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class KNNPredictor:
    def __init__(self, k: int = 25, alpha: float = 2.0, emb_dims: int | None = None):
        self.k, self.alpha, self.emb_dims = k, alpha, emb_dims

    def _emb(self, X: np.ndarray) -> np.ndarray:
        E = np.asarray(X, np.float32)[:, : self.emb_dims] if self.emb_dims else np.asarray(X, np.float32)
        return E / (np.linalg.norm(E, axis=1, keepdims=True) + 1e-9)

    def fit(self, X: np.ndarray, Y: np.ndarray) -> KNNPredictor:
        self.X_ = self._emb(X)
        self.mask_ = ~np.isnan(Y)
        self.Y_ = np.nan_to_num(Y).astype(np.float32)
        self.prior_ = (self.Y_.sum(0) + 1) / (self.mask_.sum(0) + 2)
        return self

    def neighbours(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        S = self._emb(X) @ self.X_.T
        k = min(self.k, S.shape[1])
        idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
        return idx, np.take_along_axis(S, idx, 1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        idx, _ = self.neighbours(X)
        s = self.Y_[idx].sum(1)
        n = self.mask_[idx].sum(1)
        return (s + self.alpha * self.prior_) / (n + self.alpha)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"X": self.X_.astype(np.float16), "Y": self.Y_.astype(np.uint8), "mask": self.mask_,
                "prior": self.prior_, "k": np.array(self.k), "alpha": np.array(self.alpha)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> KNNPredictor:
        p = cls(k=int(a["k"]), alpha=float(a["alpha"]))
        p.X_, p.Y_, p.mask_, p.prior_ = a["X"].astype(np.float32), a["Y"].astype(np.float32), a["mask"], a["prior"]
        return p


class MFPredictor:
    def __init__(self, dim: int = 48, l2: float = 1e-3, l2_model: float = 1e-3, lr: float = 0.01,
                 epochs: int = 600, seed: int = 0, sample_weight_power: float = 0.0):
        self.dim, self.l2, self.l2_model, self.lr, self.epochs, self.seed = dim, l2, l2_model, lr, epochs, seed
        self.sample_weight_power = sample_weight_power

    def fit(self, X: np.ndarray, Y: np.ndarray, col_weight: np.ndarray | None = None) -> MFPredictor:
        """``col_weight`` (models,) scales each model's loss (e.g. catalog models count more)."""
        X = np.asarray(X, np.float64)
        n, d = X.shape
        m = Y.shape[1]
        mask = ~np.isnan(Y)
        T = np.nan_to_num(Y).astype(np.float64)
        cw = np.ones(m) if col_weight is None else np.asarray(col_weight, float)
        Wt = mask * cw[None, :]
        Wt /= Wt.sum()
        rng = np.random.default_rng(self.seed)
        W = rng.normal(0, 1 / np.sqrt(d), (d, self.dim))
        b = np.zeros(self.dim)
        U = rng.normal(0, 0.1, (m, self.dim))
        p0 = np.clip((T * mask).sum(0) / np.maximum(mask.sum(0), 1), 0.02, 0.98)
        c = np.log(p0 / (1 - p0))
        params = [W, b, U, c]
        mom = [np.zeros_like(p) for p in params]
        vel = [np.zeros_like(p) for p in params]
        b1, b2, eps = 0.9, 0.999, 1e-8
        for t in range(1, self.epochs + 1):
            Z = np.tanh(X @ W + b)
            P = _sigmoid(Z @ U.T + c)
            G = (P - T) * Wt
            gU = G.T @ Z + 2 * self.l2_model * U
            gc = G.sum(0)
            dA = (G @ U) * (1 - Z * Z)
            gW = X.T @ dA + 2 * self.l2 * W
            gb = dA.sum(0)
            for k, g in enumerate((gW, gb, gU, gc)):
                mom[k] = b1 * mom[k] + (1 - b1) * g
                vel[k] = b2 * vel[k] + (1 - b2) * g * g
                params[k] -= self.lr * (mom[k] / (1 - b1**t)) / (np.sqrt(vel[k] / (1 - b2**t)) + eps)
        self.W_, self.b_, self.U_, self.c_ = (p.astype(np.float32) for p in params)
        return self

    def embed(self, X: np.ndarray) -> np.ndarray:
        return np.tanh(np.asarray(X, np.float32) @ self.W_ + self.b_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _sigmoid(self.embed(X) @ self.U_.T + self.c_)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"W": self.W_, "b": self.b_, "U": self.U_, "c": self.c_}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> MFPredictor:
        p = cls(dim=a["W"].shape[1])
        p.W_, p.b_, p.U_, p.c_ = (a[k].astype(np.float32) for k in ("W", "b", "U", "c"))
        return p


class LengthModel:
    """Ridge regression of log answer length: shared prompt part + per-model offset (alternating least squares)."""

    def __init__(self, l2: float = 1.0, iters: int = 5):
        self.l2, self.iters = l2, iters

    def fit(self, X: np.ndarray, L: np.ndarray) -> LengthModel:
        X = np.asarray(X, np.float64)
        mask = ~np.isnan(L) & (np.nan_to_num(L) > 0)
        logL = np.log(np.where(mask, L, 1.0))
        o = np.array([logL[mask[:, j], j].mean() if mask[:, j].any() else np.nan for j in range(L.shape[1])])
        Xa = np.hstack([X, np.ones((len(X), 1))])
        w = np.zeros(Xa.shape[1])
        for _ in range(self.iters):
            R = np.where(mask, logL - np.nan_to_num(o)[None, :], 0.0)
            cnt = mask.sum(1)
            keep = cnt > 0
            yy = R[keep].sum(1) / cnt[keep]
            Xk = Xa[keep] * np.sqrt(cnt[keep])[:, None]
            A = Xk.T @ Xk + self.l2 * np.eye(Xa.shape[1])
            w = np.linalg.solve(A, Xk.T @ (yy * np.sqrt(cnt[keep])))
            g = Xa @ w
            o = np.array([(logL[mask[:, j], j] - g[mask[:, j]]).mean() if mask[:, j].any() else np.nan
                          for j in range(L.shape[1])])
        self.w_ = w[:-1].astype(np.float32)
        self.w0_ = float(w[-1])
        self.offset_ = o.astype(np.float32)  # NaN where a model has no length data
        return self

    def shared(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, np.float32) @ self.w_ + self.w0_

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Expected answer length in characters (n × models); NaN where the model has no offset."""
        return np.exp(self.shared(X)[:, None] + self.offset_[None, :])
