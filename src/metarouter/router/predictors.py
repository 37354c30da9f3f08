"""The router's predictors, each behind one scikit-learn-like contract.

Parameters live in ``__init__``; ``fit(...)`` learns the state (attributes ending in ``_``); ``predict(...)`` is
numpy only (what serves at run time); ``to_arrays()`` / ``from_arrays()`` give plain arrays for the artifact (no
pickle). Training loads the same classes from the artifact that it fitted, so what is evaluated is what serves.

- :class:`CategoryModel` — softmax regression of the prompt's domain (the training data's dataset labels).
- :class:`QualityModel` — matrix factorisation / IRT style: a shared prompt tower ``z = tanh([x, s·p_cat] W + b)`` and
  one vector per model, ``P(good) = σ((z · u_m + c_m) / T)``, the temperature ``T`` fitted on a validation split.
- :class:`PriorModel` — what is known without a prompt like the training data: a general ability per model (Arena-Hard)
  against the request's difficulty (a ridge regression over the encoded request), ``σ(α·a_m + β·d(x) + γ)``.
- :class:`FamiliarityModel` — what kind of request it is: like the training prompts (the learned quality is
  trusted), like everyday requests (the prior's difficulty is trusted: every model answers well), or neither (the
  prior ranks by general ability alone).
- :class:`LengthModel` — expected answer length: ``log(chars) = g(x) + o_m``.
- :class:`KNNPredictor` — the RouterBench-style baseline of the benchmark.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def softmax(S: np.ndarray) -> np.ndarray:
    S = S - S.max(-1, keepdims=True)
    E = np.exp(S)
    return E / E.sum(-1, keepdims=True)


def _prefixed(a: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": v for k, v in a.items()}


def _unprefixed(a: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in a.items() if k.startswith(p)}


class CategoryModel:
    """Multinomial logistic regression over the encoded prompt (fit with scikit-learn, predicted with numpy)."""

    def __init__(self, C: float = 10.0, seed: int = 0):
        self.C, self.seed = C, seed

    def fit(self, X: np.ndarray, labels: list[str]) -> CategoryModel:
        self.classes_ = sorted(set(labels))
        y = np.array([self.classes_.index(v) for v in labels])
        if len(self.classes_) < 2:
            self.W_, self.b_ = np.zeros((X.shape[1], 1), np.float32), np.zeros(1, np.float32)
            return self
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=self.C, max_iter=3000, random_state=self.seed).fit(X, y)
        W, b = clf.coef_.T, clf.intercept_
        if W.shape[1] == 1:  # binary: scikit-learn keeps one column
            W, b = np.hstack([-W / 2, W / 2]), np.array([-b[0] / 2, b[0] / 2])
        self.W_, self.b_ = W.astype(np.float32), b.astype(np.float32)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return softmax(X @ self.W_ + self.b_)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"W": self.W_, "b": self.b_}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], classes: list[str]) -> CategoryModel:
        p = cls()
        p.W_, p.b_, p.classes_ = a["W"].astype(np.float32), a["b"].astype(np.float32), list(classes)
        return p


class QualityModel:
    """P(good answer) per prompt and model column; columns are the labelled models of the training data.

    ``(1 − w) · σ(MF logit / T) + w · p_cat · A``: the factorisation, blended with each domain's accuracy per model
    (``A``, shrunk to the model's mean); ``T`` and ``w`` are chosen on validation prompts (least log loss)."""

    def __init__(self, dim: int = 48, cat_scale: float = 3.0, l2: float = 1e-4, lr: float = 0.01, epochs: int = 600,
                 seed: int = 0, ensemble: int = 1, input_dropout: float = 0.0, domain_dropout: float = 0.0):
        self.dim, self.cat_scale, self.l2, self.lr, self.epochs, self.seed = dim, cat_scale, l2, lr, epochs, seed
        self.ensemble, self.input_dropout, self.domain_dropout = ensemble, input_dropout, domain_dropout

    def _inputs(self, X: np.ndarray, P_cat: np.ndarray) -> np.ndarray:
        return np.hstack([X, self.cat_scale * P_cat]).astype(np.float32)

    def fit(self, X: np.ndarray, P_cat: np.ndarray, Y: np.ndarray, col_weight: np.ndarray | None = None,
            row_weight: np.ndarray | None = None, category: np.ndarray | None = None) -> QualityModel:
        """``Y`` (prompts × columns, NaN = unlabelled); ``col_weight`` / ``row_weight`` scale the loss; ``category``:
        each prompt's domain (index into ``P_cat``'s columns; default: its most likely one) for the accuracy table.

        ``ensemble`` > 1 fits that many towers of width ``dim`` (seeds ``seed``, ``seed + 1``, ...) and folds the
        mean of their logits into one tower of width ``ensemble · dim``: ``W = [W_1 … W_K]``, ``b = [b_1 … b_K]``,
        ``u_m = [u_1m … u_Km] / K``, ``c_m = mean_k c_km`` — the same arrays, and the same serving kernel, as one
        wider tower."""
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be ≥ 1, not {self.ensemble}")
        k = np.asarray(category) if category is not None else np.asarray(P_cat).argmax(1)
        mean = (np.nansum(Y, 0) + 1) / ((~np.isnan(Y)).sum(0) + 2)
        self.table_ = np.stack([(np.nansum(Y[k == c], 0) + 5 * mean) / ((~np.isnan(Y[k == c])).sum(0) + 5)
                                for c in range(P_cat.shape[1])]).astype(np.float32)
        self.table_weight_ = 0.0
        X2 = np.asarray(self._inputs(X, P_cat), np.float64)  # float64: the same fit on every machine's BLAS
        mask = ~np.isnan(Y)
        T = np.nan_to_num(Y).astype(np.float64)
        Wt = mask * (np.ones(Y.shape[1]) if col_weight is None else np.asarray(col_weight, float))[None, :]
        if row_weight is not None:
            Wt = Wt * np.asarray(row_weight, float)[:, None]
        Wt /= Wt.sum()
        towers = [self._fit_tower(X2, T, mask, Wt, P_cat.shape[1], self.seed + i) for i in range(self.ensemble)]
        K = len(towers)
        W = np.hstack([t[0] for t in towers])
        b = np.concatenate([t[1] for t in towers])
        U = np.hstack([t[2] for t in towers]) / K
        c = np.mean([t[3] for t in towers], axis=0)
        self.W_, self.b_, self.U_, self.c_ = (p.astype(np.float32) for p in (W, b, U, c))
        self.temperature_ = 1.0
        return self

    def _fit_tower(self, X2: np.ndarray, T: np.ndarray, mask: np.ndarray, Wt: np.ndarray, n_cat: int, seed: int
                   ) -> list[np.ndarray]:
        """One tower (W, b, U, c) by full-batch Adam on the weighted log loss. ``input_dropout``: each epoch drops
        that share of the input entries (inverted dropout), so that no prediction hangs on a few directions;
        ``domain_dropout``: each epoch hides the domain input (the last ``n_cat`` columns, ``s·p_cat``) of that share
        of the prompts, so that the tower also predicts from the prompt alone (a prompt of no known domain gets a
        confident but wrong ``p_cat``)."""
        n, d = X2.shape
        m = T.shape[1]
        rng = np.random.default_rng(seed)
        W = rng.normal(0, 1 / np.sqrt(d), (d, self.dim))
        b = np.zeros(self.dim)
        U = rng.normal(0, 0.1, (m, self.dim))
        p0 = np.clip((T * mask).sum(0) / np.maximum(mask.sum(0), 1), 0.02, 0.98)
        c = np.log(p0 / (1 - p0))
        params = [W, b, U, c]
        mom = [np.zeros_like(p) for p in params]
        vel = [np.zeros_like(p) for p in params]
        b1, b2, eps = 0.9, 0.999, 1e-8
        keep = 1.0 - self.input_dropout
        for t in range(1, self.epochs + 1):
            Xt = X2 * (rng.random(X2.shape) < keep) / keep if self.input_dropout else X2
            if self.domain_dropout:
                Xt = Xt.copy() if Xt is X2 else Xt
                Xt[rng.random(n) < self.domain_dropout, d - n_cat:] = 0.0
            Z = np.tanh(Xt @ W + b)
            P = sigmoid(Z @ U.T + c)
            G = (P - T) * Wt
            dA = (G @ U) * (1 - Z * Z)
            grads = (Xt.T @ dA + 2 * self.l2 * W, dA.sum(0), G.T @ Z + 2 * self.l2 * U, G.sum(0))
            for k, g in enumerate(grads):
                mom[k] = b1 * mom[k] + (1 - b1) * g
                vel[k] = b2 * vel[k] + (1 - b2) * g * g
                params[k] -= self.lr * (mom[k] / (1 - b1**t)) / (np.sqrt(vel[k] / (1 - b2**t)) + eps)
        return params

    def calibrate(self, X: np.ndarray, P_cat: np.ndarray, Y: np.ndarray) -> QualityModel:
        """Temperature of the logits and weight of the domain table, on labelled validation prompts (least log
        loss on a grid)."""
        L = self.logits(X, P_cat).astype(np.float64)
        A = (P_cat @ self.table_).astype(np.float64)
        mask = ~np.isnan(Y)
        y, z, a = Y[mask], L[mask], A[mask]
        best = (np.inf, 1.0, 0.0)
        for T in np.arange(0.5, 3.001, 0.05):
            s = sigmoid(z / T)
            for w in np.arange(0.0, 0.801, 0.1):
                p = np.clip((1 - w) * s + w * a, 1e-6, 1 - 1e-6)
                loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
                best = min(best, (loss, float(T), float(w)))
        self.temperature_, self.table_weight_ = best[1], best[2]
        return self

    def embed(self, X: np.ndarray, P_cat: np.ndarray) -> np.ndarray:
        return np.tanh(self._inputs(X, P_cat) @ self.W_ + self.b_)

    def logits(self, X: np.ndarray, P_cat: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        U, c = (self.U_, self.c_) if cols is None else (self.U_[cols], self.c_[cols])
        return self.embed(X, P_cat) @ U.T + c

    def predict(self, X: np.ndarray, P_cat: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        q = sigmoid(self.logits(X, P_cat, cols) / self.temperature_)
        if self.table_weight_:
            A = self.table_ if cols is None else self.table_[:, cols]
            q = (1 - self.table_weight_) * q + self.table_weight_ * (P_cat @ A)
        return q

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"W": self.W_, "b": self.b_, "U": self.U_, "c": self.c_, "table": self.table_,
                "hyper": np.array([self.cat_scale, self.temperature_, self.table_weight_], np.float32)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> QualityModel:
        p = cls(dim=a["W"].shape[1], cat_scale=float(a["hyper"][0]))
        p.W_, p.b_, p.U_, p.c_, p.table_ = (a[k].astype(np.float32) for k in ("W", "b", "U", "c", "table"))
        p.temperature_, p.table_weight_ = float(a["hyper"][1]), float(a["hyper"][2])
        return p


class PriorModel:
    """P(good) from a model's general ability and the request's difficulty (``F``: the encoded request), for prompts
    unlike the training data and models without labels.

    ``d(F)`` is a ridge regression of each training prompt's mean correctness (logit, smoothed); α, β, γ a logistic
    regression of the labels on (ability, d).
    """

    def __init__(self, l2: float = 1.0):
        self.l2 = l2

    def fit(self, F: np.ndarray, Y: np.ndarray, ability: np.ndarray, labelled: np.ndarray | None = None,
            row_weight: np.ndarray | None = None) -> PriorModel:
        """``Y`` (prompts × models, NaN = unlabelled), ``ability`` (models,) on a 0–1 scale. The difficulty is fitted
        on every prompt; the ability slope only on ``labelled`` rows (default: all), so that requests whose labels
        are a stated assumption (the everyday anchors: every model answers well) teach difficulty, not ability."""
        F = np.asarray(F, np.float64)
        mask = ~np.isnan(Y)
        keep = mask.sum(1) > 0
        mean = (np.nan_to_num(Y).sum(1)[keep] + 0.5) / (mask.sum(1)[keep] + 1.0)
        target = np.log(mean / (1 - mean))
        Fa = np.hstack([F[keep], np.ones((keep.sum(), 1))])
        rw = np.ones(keep.sum()) if row_weight is None else np.asarray(row_weight, float)[keep]
        w = np.linalg.solve((Fa * rw[:, None]).T @ Fa + self.l2 * np.eye(Fa.shape[1]), (Fa * rw[:, None]).T @ target)
        self.w_, self.w0_ = w[:-1].astype(np.float32), float(w[-1])
        d = F @ w[:-1] + w[-1]
        self.d_mean_ = float(d[np.asarray(labelled, bool)[keep]].mean() if labelled is not None else d.mean())
        if labelled is not None:
            mask = mask & np.asarray(labelled, bool)[:, None]
        rows, cols = np.nonzero(mask)
        A = np.stack([np.asarray(ability, float)[cols], d[rows], np.ones(len(rows))], 1)
        y = Y[rows, cols].astype(np.float64)
        theta = np.array([4.0, 1.0, -2.0])
        for _ in range(50):  # Newton's method on the log loss (3 parameters, a little ridge)
            p = sigmoid(A @ theta)
            g = A.T @ (p - y) / len(y) + 1e-4 * theta
            H = (A * (p * (1 - p))[:, None]).T @ A / len(y) + 1e-4 * np.eye(3)
            step = np.linalg.solve(H, g)
            theta -= step
            if np.abs(step).max() < 1e-8:
                break
        self.alpha_, self.beta_, self.gamma_ = (float(v) for v in theta)
        return self

    def difficulty(self, F: np.ndarray) -> np.ndarray:
        return np.asarray(F, np.float32) @ self.w_ + self.w0_

    def predict(self, F: np.ndarray, ability: np.ndarray, trust: np.ndarray | None = None) -> np.ndarray:
        """P(good) (prompts × models) for models of the given abilities. ``trust`` (per prompt, 0–1): how far the
        prompt's own difficulty is believed; the rest is the labelled prompts' mean difficulty, so that for a
        request of no known kind the prior ranks every request alike (the right single model by general ability)."""
        d = self.difficulty(F)
        if trust is not None:
            d = trust * d + (1.0 - trust) * self.d_mean_
        return sigmoid(self.alpha_ * np.asarray(ability, np.float32)[None, :] + self.beta_ * d[:, None] + self.gamma_)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"w": self.w_, "scalars": np.array([self.w0_, self.alpha_, self.beta_, self.gamma_, self.d_mean_],
                                                  np.float64)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> PriorModel:
        p = cls()
        p.w_ = a["w"].astype(np.float32)
        p.w0_, p.alpha_, p.beta_, p.gamma_, p.d_mean_ = (float(v) for v in a["scalars"])
        return p


class FamiliarityModel:
    """What kind of request this is, of three: like the labelled training prompts, like everyday requests (the
    anchors), or other traffic (real user prompts of no labelled domain). A multinomial classifier on the encoded
    request (the density ratios of the three). A probability of training-likeness ``≥ hi`` counts as fully
    familiar, ``≤ lo`` as not, linear between; everyday-likeness likewise between ``everyday_lo`` and
    ``everyday_hi``. 0.6/0.9 for familiarity: of six settings on the training prompts (their validation slice, and
    each source's prompts scored by a router trained without it), the best sum of OGR that still finds a word
    problem in a user's own words familiar (bench/router/tune_dial.py, bench/router/RESULTS.md); 0.1/0.4 for
    everyday-likeness: what keeps the everyday battery on cheap models.
    :meth:`predict` gives the familiarity (training-like) and the everyday-likeness."""

    def __init__(self, C: float = 1.0, lo: float = 0.6, hi: float = 0.9, everyday_lo: float = 0.1,
                 everyday_hi: float = 0.4, seed: int = 0):
        self.C, self.lo, self.hi, self.seed = C, lo, hi, seed
        self.everyday_lo, self.everyday_hi = everyday_lo, everyday_hi

    def fit(self, X_train: np.ndarray, X_everyday: np.ndarray, X_other: np.ndarray) -> FamiliarityModel:
        from sklearn.linear_model import LogisticRegression

        parts = [X_train, X_everyday, X_other]
        X = np.vstack(parts)
        y = np.concatenate([np.full(len(x), k) for k, x in enumerate(parts)])
        present = sorted(set(y.tolist()))
        W = np.zeros((X.shape[1], 3), np.float32)
        b = np.full(3, -30.0, np.float32)  # a kind without examples is never predicted
        if len(present) == 1:
            b[present[0]] = 0.0
        else:
            clf = LogisticRegression(C=self.C, max_iter=3000, class_weight="balanced",
                                     random_state=self.seed).fit(X, y)
            coef, icpt = clf.coef_, clf.intercept_
            if len(present) == 2:  # scikit-learn keeps one column for two classes
                coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
            W[:, present], b[present] = coef.T, icpt
        self.W_, self.b_ = W, b
        return self

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(X, np.float32) @ self.W_ + self.b_)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(familiarity, everyday-likeness) per request, from one pass of the classifier."""
        P = self.probabilities(X)
        return (np.clip((P[:, 0] - self.lo) / (self.hi - self.lo), 0.0, 1.0),
                np.clip((P[:, 1] - self.everyday_lo) / (self.everyday_hi - self.everyday_lo), 0.0, 1.0))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"W": self.W_, "b": self.b_,
                "range": np.array([self.lo, self.hi, self.everyday_lo, self.everyday_hi], np.float64)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> FamiliarityModel:
        r = [float(v) for v in a["range"]]
        lo, hi, elo, ehi = r if len(r) == 4 else r * 2  # an artifact of two values: one range for both
        p = cls(lo=lo, hi=hi, everyday_lo=elo, everyday_hi=ehi)
        p.W_, p.b_ = a["W"].astype(np.float32), a["b"].astype(np.float32)
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

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"w": self.w_, "w0": np.array(self.w0_, np.float64)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> LengthModel:
        p = cls()
        p.w_, p.w0_ = a["w"].astype(np.float32), float(a["w0"])
        return p


class KNNPredictor:
    """RouterBench-style baseline: cosine neighbours' label means, shrunk to each model's mean."""

    def __init__(self, k: int = 25, alpha: float = 2.0):
        self.k, self.alpha = k, alpha

    @staticmethod
    def _emb(X: np.ndarray) -> np.ndarray:
        E = np.asarray(X, np.float32)
        return E / (np.linalg.norm(E, axis=1, keepdims=True) + 1e-9)

    def fit(self, X: np.ndarray, Y: np.ndarray) -> KNNPredictor:
        self.X_ = self._emb(X)
        self.mask_ = ~np.isnan(Y)
        self.Y_ = np.nan_to_num(Y).astype(np.float32)
        self.prior_ = (self.Y_.sum(0) + 1) / (self.mask_.sum(0) + 2)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        S = self._emb(X) @ self.X_.T
        k = min(self.k, S.shape[1])
        idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
        s = self.Y_[idx].sum(1)
        n = self.mask_[idx].sum(1)
        return (s + self.alpha * self.prior_) / (n + self.alpha)
