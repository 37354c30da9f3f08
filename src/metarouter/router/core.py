"""The run-time router: read the request, predict quality and cost per candidate, apply constraints, rank.

Numpy and the standard library only. A :class:`Router` holds the fitted predictors of :mod:`.predictors` (loaded from
the artifact's arrays) and is safe to share between requests: its only mutable state is caches.

Quality per candidate is the learned prediction where the prompt is like the training data, and the prior (general
ability against the request's difficulty) where it is not, weighed by the prompt's familiarity::

    q = f · q_learned + (1 − f) · q_prior        f = familiarity (0–1); models without labels: q = q_prior

The prior believes the request's own difficulty where the request is like the training prompts or like everyday
requests (a greeting: every model answers well, price decides); for a request of neither kind it uses the mean
difficulty, so that it ranks every such request alike: the right single model by general ability and price.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..catalog import Model, matches
from . import artifact as art
from . import kernel, policy
from .encoder import Parsed, StaticEncoder, standardised
from .predictors import CategoryModel, FamiliarityModel, LengthModel, PriorModel, QualityModel
from .request import RouteRequest

DEFAULT_ARTIFACT = Path(__file__).parent / "artifacts" / "router.npz"
CHARS_PER_TOKEN = kernel.CHARS_PER_TOKEN
TOOL_SEGMENT_WEIGHT = 0.5  # the tools' descriptions in the prompt embedding, beside the last user message's 2.0
SATURATED = 0.97  # "every candidate is expected to answer well" above this P(good)


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

    @classmethod
    def for_request(cls, req: RouteRequest, **limits: Any) -> Constraints:
        """What the request itself demands (tools, JSON output, its max_tokens), plus the caller's ``limits``."""
        return cls(needs_tools=req.uses_tools, needs_json=req.json_mode, max_tokens=req.max_tokens, **limits)


class Candidate(NamedTuple):
    """One ranked model: predicted quality (P(good answer)), cost in USD, tokens, score, and why it is where it is.

    Numbers as reported: quality to 4 decimals, cost to the picodollar, score to 6, prior weight to 3 (the ranking
    itself was made before rounding)."""

    model_id: str
    quality: float
    cost_usd: float
    prompt_tokens: int
    output_tokens: int
    score: float
    prior_weight: float  # how much the quality leans on the prior (0 = all learned)
    near_best: bool = True  # quality within the policy's tie margin of the best candidate's
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "quality": self.quality, "cost_usd": self.cost_usd,
                "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens, "reason": self.reason,
                "score": self.score, "prior_weight": self.prior_weight}


class Excluded(NamedTuple):
    """A model that cannot serve the request, and why."""

    model_id: str
    reason: str


class Ranking(NamedTuple):
    """A decision's candidates as columns, in the order they were given, with their numbers as reported, and their
    ranking (``order``, best first) and the context of their reasons: what a decision keeps. The :class:`Candidate`
    objects and the reasons of the fallbacks are built from it only when asked for (the gateway stores it as it is,
    :meth:`record`, and shows it expanded, :func:`expand_routing`)."""

    model_id: list[str]
    quality: list[float]
    cost_usd: list[float]
    prompt_tokens: int
    output_tokens: list[int]
    score: list[float]
    prior_weight: list[float]
    near_best: list[bool]
    order: list[int]
    tradeoff: float
    familiarity: float  # unrounded: the reasons' thresholds read it
    category: str | None

    def reasons(self, first: int | None = None) -> list[str]:
        """The ranked candidates' reasons (only the ``first`` few when given)."""
        order = self.order if first is None else self.order[:first]
        return explain(self.model_id, self.quality, self.cost_usd, self.near_best, order, self.tradeoff,
                       self.familiarity, self.category, self.prior_weight)

    def candidates(self) -> list[Candidate]:
        ids, q, c, pt, o, s, pw, nb = self[:8]
        return [Candidate(ids[i], q[i], c[i], pt, o[i], s[i], pw[i], nb[i], why)
                for i, why in zip(self.order, self.reasons())]

    def record(self) -> dict[str, Any]:
        """The columns as JSON (what a generation record keeps); :meth:`from_record` reads them back."""
        return self._asdict()

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Ranking:
        return cls(**{f: d[f] for f in cls._fields})


@dataclass
class RouteDecision:
    """The ranked candidates (best first), the models excluded and why, and the decision's context."""

    ranking: Ranking | None  # None: no candidate fits
    excluded: list[Excluded]
    tradeoff: float
    decision_ms: float
    familiarity: float = 1.0  # 1 = prompt like the training data, 0 = unlike it (predictions lean on the prior)
    router_version: str = ""
    category: str | None = None  # the training domain the prompt is most like, or "everyday request", or None

    @cached_property
    def ranked(self) -> list[Candidate]:
        """The candidates, best first, each with its reason (built on first use)."""
        return self.ranking.candidates() if self.ranking else []

    @property
    def model_ids(self) -> list[str]:
        if not self.ranking:
            return []
        ids = self.ranking.model_id
        return [ids[i] for i in self.ranking.order]

    @property
    def model(self) -> str | None:
        return self.ranking.model_id[self.ranking.order[0]] if self.ranking else None

    @cached_property
    def reason(self) -> str:
        """The chosen candidate's reason (the fallbacks' are written only with :attr:`ranked`)."""
        return self.ranking.reasons(first=1)[0] if self.ranking else "no candidate fits the request"

    def to_dict(self) -> dict[str, Any]:
        return {**self._head(), "ranked": [c.to_dict() for c in self.ranked], "excluded": self._excluded()}

    def to_record(self) -> dict[str, Any]:
        """:meth:`to_dict` as a generation record keeps it: the ranked candidates as the columns of their
        :class:`Ranking` (``"ranking"``, in place of ``"ranked"``); :func:`expand_routing` gives them back."""
        return {**self._head(), "ranking": self.ranking.record() if self.ranking else None,
                "excluded": self._excluded()}

    def _head(self) -> dict[str, Any]:
        return {"model": self.model, "tradeoff": self.tradeoff, "decision_ms": round(self.decision_ms, 4),
                "familiarity": round(self.familiarity, 3), "category": self.category,
                "router_version": self.router_version, "reason": self.reason}

    def _excluded(self) -> list[dict[str, str]]:
        return [{"model_id": m, "reason": r} for m, r in self.excluded]


def expand_routing(routing: dict[str, Any] | None) -> dict[str, Any] | None:
    """A generation record's routing as the API shows it: a ``"ranking"`` (:meth:`RouteDecision.to_record`) becomes
    the ``"candidates"`` list (:meth:`Candidate.to_dict` of each, best first), in its place; anything else, such as
    a record written before rankings were kept as columns (with ``"candidates"``), is returned as it is."""
    if not routing or not isinstance(routing.get("ranking"), dict):
        return routing
    shown: dict[str, Any] = {}
    for k, v in routing.items():
        if k == "ranking":
            shown["candidates"] = [c.to_dict() for c in Ranking.from_record(v).candidates()]
        else:
            shown[k] = v
    return shown


def fmt_usd(x: float) -> str:
    return f"${x:.2g}" if x < 0.01 else f"${x:.4f}"


_CATEGORY_NAMES = {"gsm": "grade-school maths", "math-l5": "competition maths", "crux": "code reasoning"}


def category_name(label: str) -> str:
    """A training dataset label as a person reads it: "mmlu_pro/law" → "law questions"."""
    if label in _CATEGORY_NAMES:
        return _CATEGORY_NAMES[label]
    head, _, tail = label.partition("/")
    if head == "mmlu_pro":
        return f"{tail} questions"
    if head == "bfcl":
        return "function calling"
    return label


def explain(ids: Sequence[str], q: Sequence[float], cost: Sequence[float], near_best: Sequence[bool],
            order: Sequence[int], tradeoff: float, familiarity: float, category: str | None,
            prior_weight: Sequence[float]) -> list[str]:
    """One line per ranked candidate (in ``order``) on why it is where it is; the first is the decision's reason."""
    qbest, qmin = max(q), min(q)
    best, cheapest = q.index(qbest), cost.index(min(cost))  # the first of equals, in the candidates' order
    out = []
    for rank, i in enumerate(order):  # the fallbacks' numbers are their candidates' fields, not repeated here
        qi, ci = q[i], cost[i]
        if rank:
            if i == cheapest:
                out.append(f"fallback {rank}: cheapest; {(qbest - qi) * 100:.0f} pts below the best")
            elif i == best:
                out.append(f"fallback {rank}: highest expected quality")
            elif near_best[i]:
                out.append(f"fallback {rank}: as good as the best")
            else:
                out.append(f"fallback {rank}: {(qbest - qi) * 100:.0f} pts below the best")
            continue
        qs = f"P(good)={qi:.2f}, ~{fmt_usd(ci)}"
        if qmin >= SATURATED:
            why = f"all candidates expected to answer well (P≥{qmin:.2f}); " + \
                ("cheapest chosen" if i == cheapest else "best for the price")
        elif near_best[i] and i != best:
            margin = float(policy.tie(tradeoff, qbest)) * 100
            why = f"as good as the best ({ids[best]}, within {margin:.2g} pts) and cheaper"
        elif i == best:
            lead = (qi - q[cheapest]) * 100
            why = "highest expected quality" + (f", +{lead:.0f} pts over the cheapest ({ids[cheapest]})"
                                                if i != cheapest and lead >= 0.5 else "")
            if tradeoff == 0:
                why += " (price no object at tradeoff 0)"
        else:
            ratio = cost[best] / max(ci, 1e-12)
            why = (f"within {(qbest - qi) * 100:.0f} pts of the best ({ids[best]}) at " +
                   (f"{ratio:.0f}× less cost" if ratio >= 1.5 else "a lower cost") + f", tradeoff {tradeoff:g}")
        where = f"{category}: " if category else ""
        tail = "; unlike any labelled domain, so general ability decides" if familiarity < 0.5 and not category else \
            "; quality mostly from priors" if prior_weight[i] > 0.6 and familiarity >= 0.5 else ""
        out.append(f"choice: {where}{why} ({qs}){tail}")
    return out


@dataclass(frozen=True)
class _ModelParams:
    """Per-candidate parameters of one candidate list, as arrays in the candidates' order."""

    col: np.ndarray  # quality column (int), -1: no labels (prior only)
    learned: np.ndarray  # bool
    ability: np.ndarray
    #: prices, lengths, coverage and the quality model's rows of the learned candidates (the kernel's operands)
    kernel: kernel.Candidates


class Router:
    """Ranks candidate models for one request. Build with :func:`load_router` (or :meth:`from_artifact`)."""

    def __init__(self, encoder: StaticEncoder, req_mean: np.ndarray, req_std: np.ndarray, category: CategoryModel,
                 quality: QualityModel, prior: PriorModel, familiarity: FamiliarityModel, length: LengthModel,
                 models: dict[str, dict[str, float]], meta: dict[str, Any]):
        self.encoder = encoder
        self.req_mean, self.req_std = np.asarray(req_mean, np.float32), np.asarray(req_std, np.float32)
        self.category, self.quality, self.prior, self.fam, self.length = category, quality, prior, familiarity, length
        self.models = models  # lower-cased id -> {"col", "ability", "len_offset", "coverage"}
        self.meta = meta
        self.version = str(meta.get("version", ""))
        self.default_tradeoff = float(meta.get("default_tradeoff", policy.DEFAULT_TRADEOFF))
        self.arena_coef = np.asarray(meta.get("arena_coef", [0.5, 0.0, 0.0]), np.float64)
        self.len_fill = float(meta.get("len_fill", math.log(1500.0)))
        self.cov_lo, self.cov_hi = (float(v) for v in meta.get("cov_range", (0.7, 0.95)))
        self.dim = encoder.dim
        self._params: dict[tuple, tuple[tuple, _ModelParams]] = {}
        self._screens: dict[tuple, tuple] = {}
        self._request_parts: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_artifact(cls, path: str | Path) -> Router:
        a, meta, vocab, model_ids = art.load(path)
        if meta.get("router_format") != 2:
            raise ValueError(f"{path}: not a second-generation router artifact (retrain with `metarouter train`)")
        seen = np.unpackbits(a["enc.seen"])[: len(vocab)].astype(bool)
        enc = StaticEncoder(vocab, a["enc.table"].astype(np.float32), a["enc.sif"].astype(np.float32),
                            a["enc.feat_mean"], a["enc.feat_std"], seen=seen)
        sub = lambda p: {k[len(p) + 1:]: v for k, v in a.items() if k.startswith(p + ".")}  # noqa: E731
        models = {mid.lower(): {"col": int(col), "ability": float(ab), "len_offset": float(lo), "coverage": cov}
                  for mid, col, ab, lo, cov in zip(model_ids, a["models.col"], a["models.ability"],
                                                   a["models.len_offset"], a["models.coverage"].astype(np.float32))}
        return cls(enc, a["req.mean"], a["req.std"], CategoryModel.from_arrays(sub("cat"), meta["categories"]),
                   QualityModel.from_arrays(sub("quality")), PriorModel.from_arrays(sub("prior")),
                   FamiliarityModel.from_arrays(sub("fam")), LengthModel.from_arrays(sub("length")), models, meta)

    # -- per-model parameters ---------------------------------------------------------------------------------------
    def ability(self, m: Model) -> float:
        """General ability (Arena-Hard score, 0–1): the artifact's, else imputed from price and reasoning."""
        hit = self.models.get(m.id.lower())
        if hit is not None:
            return hit["ability"]
        f = np.array([1.0, math.log10(max(m.output_pico, 1) / 1e6), float(m.reasoning)])
        return float(np.clip(f @ self.arena_coef, 0.05, 0.95))

    def params(self, models: Sequence[Model]) -> _ModelParams:
        key = tuple(map(id, models))
        hit = self._params.get(key)
        if hit is not None:
            return hit[1]
        cols, abil, lens, covs = [], [], [], []
        none = np.zeros(len(self.category.classes_), np.float32)
        for m in models:
            row = self.models.get(m.id.lower())
            cols.append(row["col"] if row else -1)
            covs.append(row["coverage"] if row and row["col"] >= 0 else none)
            abil.append(self.ability(m))
            lo = row["len_offset"] if row else float("nan")
            lens.append(self.len_fill if math.isnan(lo) else lo)
        col = np.array(cols, np.int64)
        learned = col >= 0
        lcols = col[learned]
        ability = np.array(abil, np.float32)
        f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731 - the kernel's operand types
        K = kernel.Candidates(
            ability_term=f32(self.prior.alpha_ * ability + self.prior.gamma_),
            coverageT=f32(np.stack(covs).T), learned_idx=np.flatnonzero(learned).astype(np.int64),
            U=f32(self.quality.U_[lcols]), c=f32(self.quality.c_[lcols]), table=f32(self.quality.table_[:, lcols]),
            len_offset=f32(lens), hidden=np.array([float(m.hidden_reasoning_tokens or 0) for m in models]),
            pin=np.array([m.input_pico / 1e12 for m in models]), pout=np.array([m.output_pico / 1e12 for m in models]))
        p = _ModelParams(col, learned, ability, K)
        with self._lock:
            if len(self._params) >= 256:
                self._params.clear()
            self._params[key] = (tuple(models), p)  # the models keep their ids in the key alive
        return p

    # -- features -----------------------------------------------------------------------------------------------------
    def features(self, request: RouteRequest, parsed: Parsed | None = None) -> tuple[np.ndarray, float]:
        """The request's vector (embedding, hand features, request features) and its word coverage (0–1);
        ``parsed``: :meth:`StaticEncoder.parse` of its messages, when already made."""
        return encode_request(self.encoder, request, parsed, tail=self.request_part(tuple(request.features())))

    def request_part(self, raw: tuple[float, ...]) -> np.ndarray:
        """The request features (:meth:`RouteRequest.features`) standardised, float32; cached per value (a few
        kinds of request — no tools, JSON mode, some tools — come back again and again)."""
        r = self._request_parts.get(raw)
        if r is None:
            r = standardised(np.array(raw, np.float32), self.req_mean, self.req_std)
            r.flags.writeable = False  # shared between requests
            if len(self._request_parts) >= 1024:
                self._request_parts.clear()
            self._request_parts[raw] = r
        return r

    def featurize(self, requests: Iterable[RouteRequest]) -> tuple[np.ndarray, np.ndarray]:
        out = [self.features(r) for r in requests]
        n = self.dim + len(self.encoder.feat_mean) + len(self.req_mean)
        if not out:
            return np.zeros((0, n), np.float32), np.zeros(0, np.float32)
        return np.stack([o[0] for o in out]), np.array([o[1] for o in out], np.float32)

    def familiarity(self, X: np.ndarray, coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt: how like the training prompts (1) or unlike them (0) — the lower of the classifier's answer
        and the share of the last message's words seen in training — and how like an everyday request (0–1)."""
        fam, everyday = self.fam.predict(X)
        cov = np.clip((np.asarray(coverage, np.float32) - self.cov_lo) / (self.cov_hi - self.cov_lo), 0.0, 1.0)
        return np.minimum(fam, cov), everyday

    # -- prediction -----------------------------------------------------------------------------------------------
    def predict(self, X: np.ndarray, coverage: np.ndarray, models: Sequence[Model], prompt_tokens: np.ndarray,
                max_tokens: int | None = None) -> dict[str, np.ndarray]:
        """Prompts × candidates: ``quality``, ``prior_weight``, ``cost`` (USD), ``output_tokens`` (billed, with hidden
        reasoning); per prompt ``familiarity``, ``everyday`` (how like an everyday request, 0–1) and ``category``
        (index of the most likely training domain).

        One request goes through :meth:`decide` (the same arithmetic, fused: what serves); many through
        :meth:`predict_plain`, the predictors composed as they were fitted (the reference it is tested against)."""
        X = np.asarray(X, np.float32)
        if X.shape[0] != 1:
            return self.predict_plain(X, coverage, models, prompt_tokens, max_tokens)
        r = self.decide(X[0], float(np.asarray(coverage).reshape(-1)[0]), self.params(models),
                        float(np.asarray(prompt_tokens).reshape(-1)[0]), max_tokens, self.default_tradeoff)
        return {"quality": r.quality[None, :], "prior_weight": r.prior_weight[None, :], "cost": r.cost[None, :],
                "output_tokens": r.output_tokens[None, :], "familiarity": np.array([r.familiarity]),
                "everyday": np.array([r.everyday]), "category": np.array([r.category])}

    def decide(self, x: np.ndarray, coverage: float, p: _ModelParams, prompt_tokens: float, max_tokens: int | None,
               tradeoff: float) -> kernel.Decision:
        """One request's predictions, scores and order: the compiled kernel once it is ready, else its numpy
        reference (the same numbers within float32 tolerance, the same order)."""
        run = kernel.decide_compiled if kernel.compiled_ready() else kernel.decide_numpy
        return run(np.ascontiguousarray(x, np.float32), coverage, self._fused(), p.kernel, prompt_tokens, max_tokens,
                   tradeoff)

    def predict_plain(self, X: np.ndarray, coverage: np.ndarray, models: Sequence[Model], prompt_tokens: np.ndarray,
                      max_tokens: int | None = None) -> dict[str, np.ndarray]:
        """:meth:`predict` by the predictors' own ``predict`` methods, for any number of prompts."""
        p = self.params(models)
        X = np.asarray(X, np.float32)
        P_cat = self.category.predict(X)
        fam, everyday = self.familiarity(X, coverage)
        q_prior = self.prior.predict(X, p.ability, trust=np.maximum(fam, everyday))
        q_learned = q_prior
        if p.learned.any():
            q_learned = q_prior.copy()
            q_learned[:, p.learned] = self.quality.predict(X, P_cat, p.col[p.learned])
        k = p.kernel
        pw = 1.0 - fam[:, None] * (P_cat @ k.coverageT)  # 1 where unfamiliar, or where the model has no labels
        Q = (1.0 - pw) * q_learned + pw * q_prior
        out = np.exp(self.length.shared(X)[:, None] + k.len_offset[None, :]) / CHARS_PER_TOKEN
        if max_tokens:
            out = np.minimum(out, max_tokens)
        billed = out + k.hidden[None, :]
        cost = np.asarray(prompt_tokens, np.float64)[:, None] * k.pin[None, :] + billed * k.pout[None, :]
        return {"quality": Q, "prior_weight": pw, "cost": cost, "output_tokens": billed, "familiarity": fam,
                "everyday": everyday, "category": P_cat.argmax(1)}

    def _fused(self) -> kernel.Ops:
        """Every linear map of the request vector side by side — domain logits, familiarity logits, prior
        difficulty, answer length, the quality tower's prompt part — as one matrix (and bias), so that one request
        costs one product; the tower's domain part (scaled); and the scalars of the familiarity, prior and tower."""
        f = self.__dict__.get("_fused_ops")
        if f is None:
            q, d, fm = self.quality, self.category.W_.shape[0], self.fam
            M = np.hstack([self.category.W_, fm.W_, self.prior.w_[:, None], self.length.w_[:, None], q.W_[:d]])
            bias = np.concatenate([self.category.b_, fm.b_, [self.prior.w0_, self.length.w0_], q.b_])
            scalars = np.array([fm.lo, fm.hi, fm.everyday_lo, fm.everyday_hi, self.cov_lo, self.cov_hi,
                                self.prior.d_mean_, self.prior.beta_, q.temperature_, q.table_weight_], np.float64)
            f = self._fused_ops = kernel.Ops(np.ascontiguousarray(M, np.float32), bias.astype(np.float32),
                                             np.ascontiguousarray(q.cat_scale * q.W_[d:], np.float32),
                                             len(self.category.b_), scalars)
        return f

    # -- constraints --------------------------------------------------------------------------------------------------
    @staticmethod
    def violation(m: Model, c: Constraints, prompt_tokens: int, needs_vision: bool) -> str | None:
        """Why ``m`` cannot serve this request, or None."""
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
        too_big = m.limit_violation(prompt_tokens, c.max_tokens)
        if too_big:
            return too_big
        if c.max_price_prompt is not None and m.input_pico / 1e6 > c.max_price_prompt:
            return f"prompt price ${m.input_pico / 1e6:g}/M > max_price.prompt ${c.max_price_prompt:g}/M"
        if c.max_price_completion is not None and m.output_pico / 1e6 > c.max_price_completion:
            return f"completion price ${m.output_pico / 1e6:g}/M > max_price.completion ${c.max_price_completion:g}/M"
        return None

    def screen(self, models: Iterable[Model], c: Constraints, prompt_tokens: int, needs_vision: bool
               ) -> tuple[list[Model], list[Excluded]]:
        """The candidates that can serve the request (first of each id), and the others with why not. A request
        with no filters whose size fits every candidate's limits skips the per-model checks (same answer)."""
        ms = tuple(models)
        key = tuple(map(id, ms))
        hit = self._screens.get(key)
        if hit is None:
            unique, seen = [], set()
            for m in ms:
                if m.id not in seen:
                    seen.add(m.id)
                    unique.append(m)
            min_ctx = min((m.context_length for m in unique), default=0)
            min_out = min((m.max_output_tokens or math.inf for m in unique), default=math.inf)
            hit = (ms, unique, min_ctx, min_out)
            with self._lock:
                if len(self._screens) >= 256:
                    self._screens.clear()
                self._screens[key] = hit  # the models keep their ids in the key alive
        _, unique, min_ctx, min_out = hit
        if not (c.allowed or c.excluded or c.needs_tools or needs_vision or c.needs_json
                or c.max_price_prompt is not None or c.max_price_completion is not None) \
                and prompt_tokens + (c.max_tokens or 0) <= min_ctx and (c.max_tokens or 0) <= min_out:
            return list(unique), []
        kept: list[Model] = []
        excluded: list[Excluded] = []
        for m in unique:
            why = self.violation(m, c, prompt_tokens, needs_vision)
            if why is None:
                kept.append(m)
            else:
                excluded.append(Excluded(m.id, why))
        return kept, excluded

    # -- the decision -----------------------------------------------------------------------------------------------
    def route(self, request: RouteRequest | dict | list | str, models: Iterable[Model],
              constraints: Constraints | None = None, tradeoff: float | None = None) -> RouteDecision:
        """Rank ``models`` for a request (a :class:`RouteRequest`, a chat body, a message list or a prompt)."""
        t0 = time.perf_counter()
        req = as_request(request)
        c = constraints or Constraints()
        t = self.default_tradeoff if tradeoff is None else min(max(float(tradeoff), 0.0), 10.0)
        if c.max_tokens is None and req.max_tokens is not None:
            c = replace(c, max_tokens=req.max_tokens)
        prompt_tokens = req.prompt_tokens()
        parsed = self.encoder.parse(req.messages)
        needs_vision = c.needs_vision if c.needs_vision is not None else parsed.has_image
        kept, excluded = self.screen(models, c, prompt_tokens, needs_vision)
        if not kept:
            return RouteDecision(None, excluded, t, (time.perf_counter() - t0) * 1e3, 1.0, self.version)
        x, coverage = self.features(req, parsed)
        r = self.decide(x, coverage, self.params(kept), prompt_tokens, c.max_tokens, t)
        q, cost, pw, out, fam = r.quality, r.cost, r.prior_weight, r.output_tokens, r.familiarity
        order, S, near_best, rep = r.order, r.score, r.near_best, r.reported
        if c.max_price_request is not None:
            over = cost > c.max_price_request
            for i in np.flatnonzero(over):
                excluded.append(Excluded(kept[i].id, f"predicted cost {fmt_usd(cost[i])} > max_price.request "
                                             f"{fmt_usd(c.max_price_request)}"))
            if over.all():
                return RouteDecision(None, excluded, t, (time.perf_counter() - t0) * 1e3, fam, self.version)
            if over.any():
                keep = np.flatnonzero(~over)
                kept = [kept[i] for i in keep]
                q, cost, pw, out = q[keep], cost[keep], pw[keep], out[keep]
                order, S, near_best = policy.rank(q, cost, t)  # ranked again among what is left
                rep = kernel.reported_numpy(q, cost, pw, S, out)
        order = order.tolist()
        ids = [m.id for m in kept]
        cat = category_name(self.category.classes_[r.category]) if self.category.classes_ else None
        if fam < 0.5:
            cat = "everyday request" if r.everyday >= 0.5 else None
        # the candidates carry their numbers as the decision reports them (rounded by the kernel, for all at once)
        ql, cl, pl, sl, ol = rep.tolist()
        ol, nb = [int(v) for v in ol], near_best.tolist()
        d = RouteDecision(Ranking(ids, ql, cl, prompt_tokens, ol, sl, pl, nb, order, t, fam, cat), excluded, t, 0.0,
                          fam, self.version, cat)
        d.reason  # noqa: B018 - the choice's reason is part of the decision (the fallbacks' are written when shown)
        d.decision_ms = (time.perf_counter() - t0) * 1e3
        return d


def encode_request(encoder: StaticEncoder, request: RouteRequest, parsed: Parsed | None = None, raw: bool = False,
                   tail: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The request's conversation — with the tools' descriptions as one more segment — as the encoder's vector
    (``raw``: hand features unstandardised, as training needs them first; ``tail`` appended) and its word
    coverage."""
    parsed = parsed or encoder.parse(request.messages)
    tool_text = request.tool_text() if request.uses_tools else ""
    if tool_text:
        parsed = parsed._replace(segments=[*parsed.segments, (tool_text, TOOL_SEGMENT_WEIGHT)])
    return encoder.encode(request.messages, parsed, raw=raw, with_coverage=True, tail=tail)


def as_request(request: RouteRequest | dict | list | str) -> RouteRequest:
    if isinstance(request, RouteRequest):
        return request
    if isinstance(request, str):
        return RouteRequest.from_prompt(request)
    if isinstance(request, list):
        return RouteRequest.from_body({"messages": request})
    return RouteRequest.from_body(request)


_CACHE: dict[str, Router] = {}
_CACHE_LOCK = threading.Lock()


def load_router(path: str | Path | None = None) -> Router:
    """The router of an artifact (default: the one shipped in the package), loaded once per path."""
    p = str(Path(path or DEFAULT_ARTIFACT).resolve())
    with _CACHE_LOCK:
        r = _CACHE.get(p)
        if r is None:
            r = _CACHE[p] = Router.from_artifact(p)
        return r
