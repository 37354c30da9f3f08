"""The run-time router: encode the conversation, predict quality and cost per candidate, apply constraints, rank.

Numpy and the standard library only. One :class:`Router` is built from an artifact and is safe to share between
requests (its only mutable state is a cache of tokenised words and per-model parameter rows).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import Model, matches
from . import artifact as art
from .encoder import StaticEncoder

DEFAULT_ARTIFACT = Path(__file__).parent / "artifacts" / "router.npz"
CHARS_PER_TOKEN = 4.0


def tradeoff_lambda(tradeoff: float) -> float:
    """Quality points given up per USD of predicted cost: 0 at tradeoff 0, ×10 every 2 steps, 1e5 at 10."""
    t = min(max(float(tradeoff), 0.0), 10.0)
    return 10 ** (t / 2) - 1


@dataclass
class Constraints:
    """Hard limits on the candidates (OpenRouter ``provider``/``models``/``max_price`` semantics)."""

    allowed: list[str] | None = None  # wildcards: "anthropic/*", "*/claude-*"
    excluded: list[str] | None = None
    needs_tools: bool = False
    needs_vision: bool | None = None  # None: inferred from image parts in the messages
    needs_json: bool = False
    max_tokens: int | None = None
    max_price_prompt: float | None = None  # USD per 1M prompt tokens
    max_price_completion: float | None = None  # USD per 1M completion tokens
    max_price_request: float | None = None  # USD per request (predicted cost)


_NO_CONSTRAINTS = Constraints()
_max_reduce, _add_reduce = np.maximum.reduce, np.add.reduce


class Candidate:
    """One ranked model: predicted quality (P(good answer)), predicted cost in USD, tokens, score and reason.

    ``reason`` is formatted on first access (the ranking does not wait for the prose of 20 fallbacks).
    """

    __slots__ = ("model_id", "quality", "cost_usd", "prompt_tokens", "output_tokens", "score", "prior_weight",
                 "_reason", "_why")

    def __init__(self, model_id: str, quality: float, cost_usd: float, prompt_tokens: int, output_tokens: int,
                 reason: str | None, score: float, prior_weight: float = 0.0, why: tuple | None = None):
        self.model_id, self.quality, self.cost_usd = model_id, quality, cost_usd
        self.prompt_tokens, self.output_tokens, self.score = prompt_tokens, output_tokens, score
        self.prior_weight = prior_weight  # how much the quality leans on priors (0 = all learned)
        self._reason, self._why = reason, why

    @property
    def reason(self) -> str:
        if self._reason is None:
            self._reason = Router._reason(*self._why) if self._why else ""
        return self._reason

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "quality": round(self.quality, 4),
                "cost_usd": float(f"{self.cost_usd:.6g}"), "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens, "reason": self.reason, "score": float(f"{self.score:.6g}"),
                "prior_weight": round(self.prior_weight, 3)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Candidate) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"Candidate(model_id={self.model_id!r}, quality={self.quality:.4f}, cost_usd={self.cost_usd:.6g}, "
                f"output_tokens={self.output_tokens}, score={self.score:.6g}, reason={self.reason!r})")


class _Ranking:
    """The ranked candidates as columns in rank order, as :meth:`Router.route` computed them. The gateway needs
    only the routing dicts (:meth:`dicts`); :class:`Candidate` objects are made if someone asks for them."""

    __slots__ = ("ids", "quality", "cost", "score", "prior_weight", "output_tokens", "prompt_tokens", "why", "f32")

    def __init__(self, ids: Sequence[str], quality: Sequence[float], cost: Sequence[float], score: Sequence[float],
                 prior_weight: Sequence[float], output_tokens: Sequence[int], prompt_tokens: int,
                 why: tuple[float, float, float] | None, f32: bool = False):
        self.ids, self.quality, self.cost, self.score = ids, tuple(quality), tuple(cost), tuple(score)
        self.prior_weight, self.output_tokens, self.prompt_tokens = tuple(prior_weight), output_tokens, prompt_tokens
        self.why = why  # (best quality, lowest cost, tradeoff) for the reasons; None: not explained
        self.f32 = f32  # quality and prior weight hold float32 values (as route() computes them)

    def candidates(self) -> list[Candidate]:
        pt, why, n = self.prompt_tokens, self.why, len(self.ids)
        return [Candidate(m, q, c, pt, o, None if why else "", s, p,
                          (rank, q, c, why[0], why[1], p, why[2], n) if why else None)
                for rank, (m, q, c, s, p, o) in enumerate(zip(self.ids, self.quality, self.cost, self.score,
                                                              self.prior_weight, self.output_tokens))]

    def reasons(self) -> list[str]:
        """Every candidate's :attr:`Candidate.reason` (the same strings as :meth:`Router._reason`), in one go."""
        if not self.why:
            return [""] * len(self.ids)
        qmax, cmin, t = self.why
        qtop, ctop = qmax - 1e-9, cmin + 1e-15
        top = " (price no object at tradeoff 0)" if t == 0 else ""
        n = len(self.ids)
        heads = _heads(n)
        q2 = (_formats("%.2f", n) % self.quality).split("\x00")  # f"{q:.2f}" of each
        out = []
        for rank, q, c, p, qs in zip(range(n), self.quality, self.cost, self.prior_weight, q2):
            if q >= qtop:
                why = "highest predicted quality and cheapest" if c <= ctop else "highest predicted quality" + top
            elif c <= ctop:
                why = f"cheapest; quality {qmax - q:.2f} below the best"
            elif rank:
                why = f"quality {qmax - q:.2f} below the best"
            else:
                why = f"best quality for the price at tradeoff {t:g}"
            usd = f"${c:.2g}" if c < 0.01 else f"${c:.4f}"
            tail = "; quality mostly from priors" if p > 0.6 else ""
            out.append(f"{heads[rank]}: {why} (P(good)={qs}, ~{usd}){tail}")
        return out

    def dicts(self) -> list[dict[str, Any]]:
        """``[c.to_dict() for c in self.candidates()]``, without making the candidates."""
        pt, n = self.prompt_tokens, len(self.ids)
        g6 = _formats("%.6g", n)
        cost = map(float, (g6 % self.cost).split("\x00"))  # float(f"{x:.6g}") of each
        score = map(float, (g6 % self.score).split("\x00"))
        if self.f32:
            quality, prior = _round_f32(self.quality, 4), _round_f32(self.prior_weight, 3)
        else:
            quality = [round(q, 4) for q in self.quality]
            prior = [round(p, 3) for p in self.prior_weight]
        return [{"model_id": m, "quality": q, "cost_usd": c, "prompt_tokens": pt, "output_tokens": o, "reason": r,
                 "score": s, "prior_weight": p}
                for m, q, c, o, r, s, p in zip(self.ids, quality, cost, self.output_tokens, self.reasons(), score,
                                               prior)]


_FORMATS: dict[tuple[str, int], str] = {}


def _formats(spec: str, n: int) -> str:
    """``n`` copies of a %-format joined by NULs: one formatting call for a column, split on NUL."""
    f = _FORMATS.get((spec, n))
    if f is None:
        f = _FORMATS[(spec, n)] = "\x00".join([spec] * n)
    return f


_SCALE = {3: 1e3, 4: 1e4}


def _round_f32(values: Sequence[float], digits: int) -> list[float]:
    """``[round(v, digits) for v in values]`` for float32 values (3 or 4 digits), in three array operations.

    Exact: a float32 has at most 24 significant bits and 10**4 = 625 * 2**4 (10**3 = 125 * 2**3), so ``v * 10**d`` is
    exact in float64 (at most 34 bits); ``rint`` rounds that exact value half to even, as ``round`` does; and the
    division by 10**d is correctly rounded, i.e. the float64 nearest k / 10**d, which is what ``round`` returns
    (it converts the correctly rounded decimal back with a correctly rounded strtod).
    """
    scale = _SCALE[digits]
    return (np.rint(np.array(values, np.float64) * scale) / scale).tolist()


_HEADS: list[str] = ["choice"] + [f"fallback {i}" for i in range(1, 64)]


def _heads(n: int) -> list[str]:
    """"choice", "fallback 1", "fallback 2", ...: at least ``n`` of them."""
    global _HEADS
    heads = _HEADS
    if len(heads) < n:  # a longer list replaces the shared one whole (safe with concurrent readers)
        heads = _HEADS = ["choice"] + [f"fallback {i}" for i in range(1, max(n, 2 * len(heads)))]
    return heads


class RouteDecision:
    """The ranked candidates (best first), the models excluded and why, and the decision's context.

    ``ranked`` is a list of :class:`Candidate`; a decision made by :meth:`Router.route` builds it on first access
    (:attr:`model_ids` and :meth:`to_dict` do not need it).
    """

    __slots__ = ("_ranked", "_ranking", "excluded", "tradeoff", "decision_ms", "familiarity", "router_version",
                 "extra")

    def __init__(self, ranked: list[Candidate] | None, excluded: list[tuple[str, str]], tradeoff: float,
                 decision_ms: float, familiarity: float = 1.0, router_version: str = "",
                 extra: dict[str, Any] | None = None, *, ranking: _Ranking | None = None):
        self._ranked = ranked
        self._ranking = ranking if ranked is None else None
        self.excluded = excluded
        self.tradeoff = tradeoff
        self.decision_ms = decision_ms
        self.familiarity = familiarity  # 1 = prompt like the training data, 0 = unlike it (predictions lean on priors)
        self.router_version = router_version
        self.extra = {} if extra is None else extra

    @property
    def ranked(self) -> list[Candidate]:
        if self._ranked is None:
            self._ranked = self._ranking.candidates() if self._ranking is not None else []
        return self._ranked

    @ranked.setter
    def ranked(self, value: list[Candidate]) -> None:
        self._ranked, self._ranking = value, None

    @property
    def model_ids(self) -> list[str]:
        """The ranked models' ids, best first."""
        if self._ranked is None and self._ranking is not None:
            return list(self._ranking.ids)
        return [c.model_id for c in self.ranked]

    @property
    def model(self) -> str | None:
        ids = self._ranking.ids if self._ranked is None and self._ranking is not None else self.model_ids
        return ids[0] if ids else None

    def to_dict(self) -> dict[str, Any]:
        if self._ranked is None and self._ranking is not None:
            ranked = self._ranking.dicts()
        else:  # candidates made (and perhaps changed) by the caller
            ranked = [c.to_dict() for c in self.ranked]
        return {
            "model": self.model,
            "tradeoff": self.tradeoff,
            "decision_ms": round(self.decision_ms, 4),
            "familiarity": round(self.familiarity, 3),
            "router_version": self.router_version,
            "ranked": ranked,
            "excluded": [{"model_id": m, "reason": r} for m, r in self.excluded],
            **self.extra,
        }

    def _fields(self) -> tuple:
        return (self.ranked, self.excluded, self.tradeoff, self.decision_ms, self.familiarity, self.router_version,
                self.extra)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RouteDecision) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return (f"RouteDecision(ranked={self.ranked!r}, excluded={self.excluded!r}, tradeoff={self.tradeoff!r}, "
                f"decision_ms={self.decision_ms!r}, familiarity={self.familiarity!r}, "
                f"router_version={self.router_version!r}, extra={self.extra!r})")


def _fmt_usd(x: float) -> str:
    return f"${x:.2g}" if x < 0.01 else f"${x:.4f}"


class _Pool:
    """A candidate list under one set of constraints, with what does not depend on the prompt worked out once:
    duplicates dropped (the first of an id is kept), the check each model fails before and after the context
    window's, and the parameter arrays of the models that pass every check (the usual case)."""

    __slots__ = ("router", "models", "uniq", "early", "late", "kept", "excluded", "min_context", "rows", "st")

    def __init__(self, router: Router, models: Sequence[Model], c: Constraints, needs_vision: bool):
        self.router = router
        self.models = tuple(models)  # keeps the ids in the cache key alive
        uniq: list[Model] = []
        seen: set[str] = set()
        for m in models:
            if m.id not in seen:
                seen.add(m.id)
                uniq.append(m)
        self.uniq = uniq
        self.early = [router._early_violation(m, c, needs_vision) for m in uniq]
        self.late = [router._late_violation(m, c) for m in uniq]
        #: a prompt (+ max_tokens) up to this size fits every model that passes the other checks
        self.min_context = min((m.context_length for m, e in zip(uniq, self.early) if e is None), default=math.inf)
        self.kept = [m for m, e, lt in zip(uniq, self.early, self.late) if e is None and lt is None]
        self.excluded = [(m.id, e or lt) for m, e, lt in zip(uniq, self.early, self.late) if e or lt]
        self.rows = {m.id: router._row(m) for m in self.kept}
        self.st = router.stacked([self.rows[m.id] for m in self.kept]) if self.kept else None

    def fit(self, c: Constraints, prompt_tokens: int, want: int) -> tuple[list[Model], list[tuple[str, str]], Any]:
        """Kept models, exclusions (in the candidates' order) and parameter arrays for a prompt that does not fit
        every context window."""
        kept: list[Model] = []
        excluded: list[tuple[str, str]] = []
        for m, early, late in zip(self.uniq, self.early, self.late):
            if early is not None:
                excluded.append((m.id, early))
            elif want > m.context_length:
                excluded.append((m.id, f"context {m.context_length} tokens < {prompt_tokens} prompt + "
                                       f"{c.max_tokens or 0} max_tokens"))
            elif late is not None:
                excluded.append((m.id, late))
            else:
                kept.append(m)
        st = self.router.stacked([self.rows[m.id] for m in kept]) if kept else None
        return kept, excluded, st


class Router:
    """Ranks candidate models for one conversation. Build with :func:`load_router`."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], vocab: list[str], model_ids: list[str]):
        self.meta = meta
        self.version = str(meta.get("version", ""))
        self.default_tradeoff = float(meta.get("default_tradeoff", 3.0))
        seen = np.unpackbits(arrays["seen"])[: len(vocab)].astype(bool) if "seen" in arrays else None
        self.encoder = StaticEncoder(vocab, arrays["table"].astype(np.float32), arrays["sif"].astype(np.float32),
                                     arrays["feat_mean"], arrays["feat_std"], seen=seen)
        self.Wc = arrays["Wc"].astype(np.float32)
        self.bc = arrays["bc"].astype(np.float32)
        self.cat_acc = arrays["cat_acc"].astype(np.float32)  # (models, categories)
        self.cat_scale = float(meta.get("cat_scale", 3.0))
        self.mf_weight = float(meta.get("mf_weight", 0.7))
        self.W = arrays["W"].astype(np.float32)
        self.b = arrays["b"].astype(np.float32)
        d_in = arrays["feat_mean"].shape[0] + arrays["table"].shape[1]
        self.W_x = np.ascontiguousarray(self.W[:d_in])  # prompt vector part of the MF tower
        self.W_k = np.ascontiguousarray(self.cat_scale * self.W[d_in:])  # category-posterior part
        self._stacked: dict[tuple, dict[str, np.ndarray]] = {}
        self.U = arrays["U"].astype(np.float32)
        self.c = arrays["c"].astype(np.float32)
        self.prior_q = arrays["prior_q"].astype(np.float32)
        self.prior_weight = arrays["prior_weight"].astype(np.float32)  # per model: 1 = params come from priors only
        self.len_w = arrays["len_w"].astype(np.float32)
        self.len_w0 = float(arrays["len_w0"])
        self.len_offset = arrays["len_offset"].astype(np.float32)
        self.prior_u = arrays["prior_u"].astype(np.float32)
        self.prior_scalars = arrays["prior_scalars"].astype(np.float32)  # c_avg, beta, arena mean, mean z·u, length
        self.arena_coef = arrays["arena_coef"].astype(np.float32)
        self.centroids = arrays["centroids"].astype(np.float32)
        self.conf_lo, self.conf_hi = float(arrays["conf_range"][0]), float(arrays["conf_range"][1])
        self.cov_lo, self.cov_hi = float(arrays["cov_range"][0]), float(arrays["cov_range"][1])
        self.fam_mu = arrays["fam_mu"].astype(np.float32)
        self.arena = {k: float(v) for k, v in meta.get("arena_scores", {}).items()}
        self.index = {m.lower(): i for i, m in enumerate(model_ids)}
        self.model_ids = list(model_ids)
        self._rows: dict[str, tuple[Model, tuple]] = {}
        self._pools: dict[tuple, _Pool] = {}
        self._lock = threading.Lock()
        self.dim = self.encoder.dim

    # -- per-model parameters -----------------------------------------------------------------------------------
    def arena_score(self, m: Model) -> float:
        """Arena-Hard score (0–1): the leaderboard's, else imputed from price and reasoning."""
        score = self.arena.get(m.id.lower())
        if score is not None:
            return score
        f = np.array([1.0, math.log10(max(m.output_pico, 1) / 1e6), float(m.reasoning)], np.float32)
        return float(np.clip(f @ self.arena_coef, 0.05, 0.95))

    def _params_from_prior(self, m: Model) -> tuple[np.ndarray, float, float, float]:
        """A model the artifact has no parameters for: average item response, ability from its Arena-Hard score."""
        c_avg, beta, ar_mean, zbar_u, len_fill = self.prior_scalars.tolist()
        c = c_avg + beta * (self.arena_score(m) - ar_mean)
        return self.prior_u, c, len_fill, 1.0 / (1.0 + math.exp(-(zbar_u + c)))

    def _row(self, m: Model) -> tuple:
        hit = self._rows.get(m.id)  # keyed by id, checked by identity: hashing a Model hashes all its fields
        if hit is not None and (hit[0] is m or hit[0] == m):
            return hit[1]
        row = None
        if row is None:
            i = self.index.get(m.id.lower())
            if i is not None:
                u, c, lo, pq, pw = self.U[i], float(self.c[i]), float(self.len_offset[i]), float(self.prior_q[i]), \
                    float(self.prior_weight[i])
                acc = self.cat_acc[i]
            else:
                u, c, lo, pq = self._params_from_prior(m)
                pw = 1.0
                acc = np.full(self.cat_acc.shape[1], pq, np.float32)
            hidden = int(m.hidden_reasoning_tokens or 0)
            row = (u, c, lo, pq, pw, m.input_pico / 1e12, m.output_pico / 1e12, hidden, acc)
            with self._lock:
                self._rows[m.id] = (m, row)
        return row

    # -- checks ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _violation(m: Model, c: Constraints, prompt_tokens: int, needs_vision: bool) -> str | None:
        why = Router._early_violation(m, c, needs_vision)
        if why is not None:
            return why
        want = prompt_tokens + (c.max_tokens or 0)
        if want > m.context_length:
            return f"context {m.context_length} tokens < {prompt_tokens} prompt + {c.max_tokens or 0} max_tokens"
        return Router._late_violation(m, c)

    @staticmethod
    def _early_violation(m: Model, c: Constraints, needs_vision: bool) -> str | None:
        """The checks before the context window's (none depends on the prompt's length)."""
        if c.allowed and not matches(m.id, c.allowed):
            return "not in the allowed models"
        if c.excluded and matches(m.id, c.excluded):
            return "excluded by request"
        if c.needs_tools and not m.tools:
            return "does not support tools"
        if needs_vision and not m.vision:
            return "does not accept images"
        if c.needs_json and not m.json_output:
            return "does not support JSON output"
        return None

    @staticmethod
    def _late_violation(m: Model, c: Constraints) -> str | None:
        """The checks after the context window's (none depends on the prompt's length either)."""
        if c.max_tokens and m.max_output_tokens and c.max_tokens > m.max_output_tokens:
            return f"max_tokens {c.max_tokens} > model's max output {m.max_output_tokens}"
        if c.max_price_prompt is not None and m.input_pico / 1e6 > c.max_price_prompt:
            return f"prompt price ${m.input_pico / 1e6:g}/M > max_price.prompt ${c.max_price_prompt:g}/M"
        if c.max_price_completion is not None and m.output_pico / 1e6 > c.max_price_completion:
            return f"completion price ${m.output_pico / 1e6:g}/M > max_price.completion ${c.max_price_completion:g}/M"
        return None

    def _candidates(self, models: Sequence[Model], c: Constraints, needs_vision: bool) -> _Pool:
        """The candidate list under the request's constraints, cached per (models, constraints): the gateway
        asks with the same pool and the same few constraint sets request after request."""
        try:
            key = (tuple(map(id, models)), tuple(c.allowed) if c.allowed else None,
                   tuple(c.excluded) if c.excluded else None, bool(c.needs_tools), needs_vision, bool(c.needs_json),
                   c.max_tokens, type(c.max_tokens), c.max_price_prompt, type(c.max_price_prompt),
                   c.max_price_completion, type(c.max_price_completion))
            pool = self._pools.get(key)
        except TypeError:  # unhashable constraint values: checked every time
            key, pool = None, None
        if pool is None:
            pool = _Pool(self, models, c, needs_vision)
            if key is not None:
                with self._lock:
                    if len(self._pools) >= 256:
                        self._pools.clear()
                    self._pools[key] = pool
        return pool

    # -- prediction -----------------------------------------------------------------------------------------------
    def familiarity(self, X: np.ndarray, coverage: np.ndarray | None = None) -> np.ndarray:
        """Per prompt: 1 = like the training prompts, 0 = unlike them.

        The lower of two signs: cosine of the (centred) embedding to the nearest training centroid, and the share
        of the last message's words that training saw (``coverage``).
        """
        E = X[:, : self.dim] - self.fam_mu
        E /= np.sqrt((E * E).sum(1, keepdims=True)) + 1e-9
        sim = (E @ self.centroids.T).max(1)
        fam = np.clip((sim - self.conf_lo) / max(self.conf_hi - self.conf_lo, 1e-6), 0.0, 1.0)
        if coverage is not None:
            cov = np.clip((np.asarray(coverage, np.float32) - self.cov_lo) / (self.cov_hi - self.cov_lo), 0.0, 1.0)
            fam = np.minimum(fam, cov)
        return fam

    def stacked(self, rows: Sequence[tuple]) -> dict[str, np.ndarray]:
        """Per-model parameters of a candidate set as arrays (cached: the same sets recur request after request)."""
        key = tuple(map(id, rows))
        st = self._stacked.get(key)
        if st is None:
            st = {
                "UT": np.ascontiguousarray(np.stack([r[0] for r in rows]).T), "c": np.array([r[1] for r in rows], np.float32),
                "accT": np.ascontiguousarray(np.stack([r[8] for r in rows]).T),
                "lo": np.array([r[2] for r in rows], np.float32), "pq": np.array([r[3] for r in rows], np.float32),
                "pw": np.array([r[4] for r in rows], np.float32), "pin": np.array([r[5] for r in rows], np.float64),
                "pout": np.array([r[6] for r in rows], np.float64), "hidden": np.array([r[7] for r in rows], np.float64),
                "rows": rows,  # keeps the ids in the key alive
            }
            # for predict_one: terms that predict_quality computes on every call
            st["omp"] = 1.0 - st["pw"]
            st["prior_only"] = st["pw"] >= 1.0
            st["any_prior_only"] = bool(st["prior_only"].any())
            st["half_pq"] = 0.5 * st["pq"]
            with self._lock:
                if len(self._stacked) > 256:
                    self._stacked.clear()
                self._stacked[key] = st
        return st

    def predict_quality(self, X: np.ndarray, rows: Sequence[tuple], coverage: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P(good answer) (prompts × models), how much each leans on priors, and each prompt's familiarity."""
        st = self.stacked(rows)
        S = X @ self.Wc + self.bc
        S -= S.max(1, keepdims=True)
        Pk = np.exp(S)
        Pk /= Pk.sum(1, keepdims=True)
        Z = np.tanh(X @ self.W_x + Pk @ self.W_k + self.b)
        q_learned = self.mf_weight * 0.5 * (1.0 + np.tanh(0.5 * (Z @ st["UT"] + st["c"]))) + \
            (1 - self.mf_weight) * (Pk @ st["accT"])
        pq, pw_model = st["pq"], st["pw"]
        fam = self.familiarity(X, coverage)
        pw = 1.0 - fam[:, None] * (1.0 - pw_model[None, :])  # unfamiliar prompt or prior-only model → prior
        # Prior-only models keep half of their (prior-parameter) prompt-dependent prediction.
        Q = np.where(pw_model >= 1.0, 0.5 * q_learned + 0.5 * pq, (1 - pw) * q_learned + pw * pq)
        return Q, pw, fam

    def predict_cost(self, X: np.ndarray, rows: Sequence[tuple], prompt_tokens: np.ndarray,
                     max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predicted cost in USD and billed output tokens (visible + hidden reasoning), prompts × models."""
        st = self.stacked(rows)
        shared = X @ self.len_w + self.len_w0
        out_tok = np.exp(shared[:, None] + st["lo"][None, :]) / CHARS_PER_TOKEN
        if max_tokens:
            out_tok = np.minimum(out_tok, max_tokens)
        billed = out_tok + st["hidden"][None, :]
        return np.asarray(prompt_tokens, np.float64)[:, None] * st["pin"][None, :] + billed * st["pout"][None, :], \
            billed

    def predict(self, x: np.ndarray, rows: Sequence[tuple], prompt_tokens: int, max_tokens: int | None,
                coverage: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """One prompt: quality, cost (USD), billed output tokens, prior weight per row, and familiarity."""
        X = x[None, :]
        Q, pw, fam = self.predict_quality(X, rows, np.array([coverage]))
        C, out = self.predict_cost(X, rows, np.array([prompt_tokens]), max_tokens)
        return Q[0], C[0], out[0], pw[0], float(fam[0])

    def predict_one(self, x: np.ndarray, st: dict[str, np.ndarray], prompt_tokens: int, max_tokens: int | None,
                    coverage: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """:meth:`predict` for a stacked candidate set (:meth:`stacked`) with fewer array operations: the same
        operations on the same values in the same order (in place where the batch version makes a new array, on
        float32 scalars where it works on a 1-element array), so the same numbers to the last bit.

        Quality, cost (USD), billed output tokens and prior weight per model (1-D), and familiarity.
        """
        X = x[None, :]
        S = X @ self.Wc
        S += self.bc
        S -= _max_reduce(S, 1, keepdims=True)  # = S.max(1, keepdims=True) without the method's Python wrapper
        Pk = np.exp(S, out=S)
        Pk /= _add_reduce(Pk, 1, keepdims=True)  # = Pk.sum(1, keepdims=True)
        H = X @ self.W_x
        H += Pk @ self.W_k
        H += self.b
        Z = np.tanh(H, out=H)
        q = (Z @ st["UT"])[0]
        q += st["c"]
        q *= 0.5
        np.tanh(q, out=q)
        q += 1.0
        q *= self.mf_weight * 0.5
        a = (Pk @ st["accT"])[0]
        a *= 1 - self.mf_weight
        q += a  # learned quality
        # familiarity(), for one prompt: the tail is float32 scalar arithmetic
        E = X[:, : self.dim] - self.fam_mu
        E /= np.sqrt(_add_reduce(E * E, 1, keepdims=True)) + 1e-9
        sim = _max_reduce(E @ self.centroids.T, None)
        fam = (sim - self.conf_lo) / max(self.conf_hi - self.conf_lo, 1e-6)
        fam = 0.0 if fam < 0.0 else 1.0 if fam > 1.0 else fam
        cov = (np.float32(coverage) - self.cov_lo) / (self.cov_hi - self.cov_lo)
        cov = 0.0 if cov < 0.0 else 1.0 if cov > 1.0 else cov
        if cov < fam:
            fam = cov
        pw = fam * st["omp"]
        np.subtract(1.0, pw, out=pw)
        Q = 1 - pw
        Q *= q
        Q += pw * st["pq"]
        if st["any_prior_only"]:
            half = 0.5 * q
            half += st["half_pq"]
            Q = np.where(st["prior_only"], half, Q)
        # predict_cost()
        shared = X @ self.len_w
        shared += self.len_w0
        out_tok = shared + st["lo"]
        np.exp(out_tok, out=out_tok)
        out_tok /= CHARS_PER_TOKEN
        if max_tokens:
            out_tok = np.minimum(out_tok, max_tokens)
        billed = out_tok + st["hidden"]
        cost = float(prompt_tokens) * st["pin"]
        cost += billed * st["pout"]
        return Q, cost, billed, pw, float(fam)

    # -- the decision -----------------------------------------------------------------------------------------------
    def route(self, messages: list[dict] | str, models: Iterable[Model], constraints: Constraints | None = None,
              tradeoff: float | None = None, explain: bool = True) -> RouteDecision:
        t0 = time.perf_counter()
        c = constraints or _NO_CONSTRAINTS
        t = self.default_tradeoff if tradeoff is None else min(max(float(tradeoff), 0.0), 10.0)
        segs, prompt_tokens = self.encoder.parse_with_tokens(messages)
        needs_vision = segs[5] if c.needs_vision is None else bool(c.needs_vision)
        if not isinstance(models, (list, tuple)):
            models = list(models)
        pool = self._candidates(models, c, needs_vision)
        want = prompt_tokens + (c.max_tokens or 0)
        if want <= pool.min_context:  # every model that passes the other checks has room: as cached
            kept, excluded, st = pool.kept, list(pool.excluded), pool.st
        else:
            kept, excluded, st = pool.fit(c, prompt_tokens, want)
        if not kept:
            return RouteDecision([], excluded, t, (time.perf_counter() - t0) * 1e3, 1.0, self.version)
        x, coverage = self.encoder.encode(messages, segs, with_coverage=True)
        q, cost, out_tok, pw, fam = self.predict_one(x, st, prompt_tokens, c.max_tokens, coverage)
        if c.max_price_request is not None:
            over = cost > c.max_price_request
            if over.any():
                for i in np.flatnonzero(over):
                    excluded.append((kept[i].id, f"predicted cost {_fmt_usd(cost[i])} > max_price.request "
                                                 f"{_fmt_usd(c.max_price_request)}"))
                keep = np.flatnonzero(~over)
                kept = [kept[i] for i in keep]
                q, cost, out_tok, pw = q[keep], cost[keep], out_tok[keep], pw[keep]
                if not kept:
                    return RouteDecision([], excluded, t, (time.perf_counter() - t0) * 1e3, fam, self.version)
        lam = tradeoff_lambda(t)
        score = q - lam * cost
        order = np.lexsort((cost, -score)).tolist()
        if len(order) > 1:
            pick = itemgetter(*order)  # a tuple of the items in rank order
        else:
            pick = lambda xs: (xs[0],)  # noqa: E731
        ql, cl = pick(q.tolist()), pick(cost.tolist())
        ranking = _Ranking(pick([m.id for m in kept]), ql, cl, pick(score.tolist()), pick(pw.tolist()),
                           tuple(map(int, pick(np.rint(out_tok).tolist()))), prompt_tokens,
                           (max(ql), min(cl), t) if explain else None, f32=q.dtype == np.float32 == pw.dtype)
        return RouteDecision(None, excluded, t, (time.perf_counter() - t0) * 1e3, fam, self.version, ranking=ranking)

    @staticmethod
    def _reason(rank: int, q: float, cost: float, qmax: float, cmin: float, pw: float, t: float, n: int) -> str:
        if q >= qmax - 1e-9 and cost <= cmin + 1e-15:
            why = "highest predicted quality and cheapest"
        elif q >= qmax - 1e-9:
            why = "highest predicted quality" + (" (price no object at tradeoff 0)" if t == 0 else "")
        elif cost <= cmin + 1e-15:
            why = f"cheapest; quality {qmax - q:.2f} below the best"
        else:
            why = f"best quality for the price at tradeoff {t:g}" if rank == 0 else \
                f"quality {qmax - q:.2f} below the best"
        head = "choice" if rank == 0 else f"fallback {rank}"
        tail = "; quality mostly from priors" if pw > 0.6 else ""
        return f"{head}: {why} (P(good)={q:.2f}, ~{_fmt_usd(cost)}){tail}"


_CACHE: dict[str, Router] = {}
_CACHE_LOCK = threading.Lock()


def load_router(path: str | Path | None = None) -> Router:
    """The router of an artifact (default: the one shipped in the package), loaded once per path."""
    p = str(Path(path or DEFAULT_ARTIFACT).resolve())
    with _CACHE_LOCK:
        r = _CACHE.get(p)
        if r is None:
            r = Router(*art.load(p))
            _CACHE[p] = r
        return r
