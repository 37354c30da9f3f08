"""The cost–quality dial, as OpenRouter defines ``cost_quality_tradeoff``: 0 = the most capable model regardless of
price, 10 = the cheapest model that can plausibly handle *this* request, values between blend continuously.

Per request, with predicted quality ``q`` (P(good answer)) and cost ``c`` (USD) of each candidate, the choice maximises

    score = min(q, max(q) − tie(t)) − λ(t) · c

- ``λ(t)``: quality points given up per USD, 0 at tradeoff 0, :data:`USD_WEIGHT_AT_7` at 7, :data:`USD_WEIGHT_AT_10`
  at 10 (geometric in between). One price of quality for every request is what traces the efficient frontier of mean
  cost against mean quality (a Lagrangian of "most quality for this budget"), so each setting is a point on it.
- ``tie(t)``: differences of quality smaller than this do not count: when every candidate is expected to answer
  well (a greeting), they are equals and the cheapest wins, while a hard proof, where a capable model is expected to
  be tens of points better, keeps it until its price outweighs that at the setting's λ. :data:`TIE` from 7 on
  (from 1 on for a request every candidate is expected to answer well), shrinking linearly to none at 0, where only
  quality counts.

At 10, λ is so high that the cheapest candidate wins unless another is better by more than there is to gain: the
cheap end of the curve reaches the cheapest model. (A plausibility floor at 10 — the cheapest candidate within some
points of the best — would keep hard prompts on strong models there, but every floor that did so for our hard
battery also moved a fifth to a half of benchmark prompts off the cheapest model, and with it the cheap end of the
curve that AIQ counts as 0 below the router's cheapest point: see bench/router/RESULTS.md.)
"""

from __future__ import annotations

import numpy as np

DEFAULT_TRADEOFF = 7.0  # OpenRouter's default for cost_quality_tradeoff
TIE = 0.02  # P(good) differences below two points are ties
USD_WEIGHT_AT_7 = 10.0  # at 7: a cent more must buy a tenth more chance of a good answer
USD_WEIGHT_AT_10 = 10000.0  # at 10: a tenth of a cent outweighs ten times the whole P(good) scale: the cheapest


def usd_weight(tradeoff: float) -> float:
    """λ: quality points given up per USD at this setting (continuous, increasing, 0 at 0)."""
    t = min(max(float(tradeoff), 0.0), 10.0)
    if t <= 7.0:
        return (1.0 + USD_WEIGHT_AT_7) ** (t / 7.0) - 1.0
    return USD_WEIGHT_AT_7 * (USD_WEIGHT_AT_10 / USD_WEIGHT_AT_7) ** ((t - 7.0) / 3.0)


EASY = 0.9  # the best candidate's P(good) from which a request counts as easy (every capable model answers well)
EASY_RAMP = 1.0  # the setting from which an easy request's equals are always equals


def tie(tradeoff: float, best: np.ndarray | float = 0.0) -> np.ndarray | float:
    """The tie margin at this setting for a request whose best candidate has P(good) ``best``: none at 0, where only
    quality counts ("the most capable model regardless of price"), growing with the setting to :data:`TIE` — by
    :data:`EASY_RAMP` where the best is :data:`EASY` (a greeting: from there its equals are equals and the cheapest
    wins), by 7 on harder requests. Growing continuously on both, so that each setting near 0 gives up a little
    more quality for price than the one before (chosen on training prompts: bench/router/RESULTS.md)."""
    t = min(max(float(tradeoff), 0.0), 10.0)
    easy, scaled = TIE * min(t / EASY_RAMP, 1.0), TIE * min(t / 7.0, 1.0)
    if isinstance(best, float):
        return easy if best >= EASY else scaled
    return np.where(np.asarray(best) >= EASY, easy, scaled)


def scores(Q: np.ndarray, C: np.ndarray, tradeoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores (higher is better) and whether each candidate is within the tie margin of the best (… × candidates)."""
    Q = np.asarray(Q, np.float64)
    C = np.asarray(C, np.float64)
    best = float(Q.max()) if Q.ndim == 1 else Q.max(-1, keepdims=True)  # one request: Python floats
    top = best - tie(tradeoff, best)
    S = np.minimum(Q, top) - usd_weight(tradeoff) * C
    return S, Q >= top


def rank(q: np.ndarray, cost: np.ndarray, tradeoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One request: candidate order (best first; equal scores: the cheaper first), scores, and which candidates
    are within the tie margin of the best."""
    S, tied = scores(q, cost, tradeoff)
    return np.lexsort((np.asarray(cost), -S)), S, tied


def choose(Q: np.ndarray, C: np.ndarray, tradeoff: float) -> np.ndarray:
    """Many requests (requests × candidates): the index of each one's choice (equal scores: the cheaper)."""
    S, _ = scores(Q, C, tradeoff)
    return np.argmax(S - 1e-9 * (C / np.maximum(C.max(1, keepdims=True), 1e-12)), axis=1)
