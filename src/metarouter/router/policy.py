"""The cost–quality dial, as OpenRouter defines ``cost_quality_tradeoff``: 0 = the most capable model regardless of
price, 10 = the cheapest model that can plausibly handle *this* request, values between blend continuously.

Per request, with predicted quality ``q`` (P(good answer)) and cost ``c`` (USD) of each candidate, the choice maximises

    score = min(q, max(q) − TIE) − λ(t) · c

- ``λ(t)``: quality points given up per USD, 0 at tradeoff 0, :data:`USD_WEIGHT_AT_7` at 7, :data:`USD_WEIGHT_AT_10`
  at 10 (geometric in between). One price of quality for every request is what traces the efficient frontier of mean
  cost against mean quality (a Lagrangian of "most quality for this budget"), so each setting is a point on it.
- ``TIE``: differences of quality smaller than this do not count: when every candidate is expected to answer well
  (a greeting), they are equals and the cheapest wins at any setting, while a hard proof, where a capable model is
  expected to be tens of points better, keeps it until its price outweighs that at the setting's λ.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TRADEOFF = 7.0  # OpenRouter's default for cost_quality_tradeoff
TIE = 0.02  # P(good) differences below two points are ties
USD_WEIGHT_AT_7 = 10.0  # at 7: a cent more must buy a tenth more chance of a good answer
USD_WEIGHT_AT_10 = 1000.0  # at 10: a cent more must buy ten times more than there is: the cheapest plausible


def usd_weight(tradeoff: float) -> float:
    """λ: quality points given up per USD at this setting (continuous, increasing, 0 at 0)."""
    t = min(max(float(tradeoff), 0.0), 10.0)
    if t <= 7.0:
        return (1.0 + USD_WEIGHT_AT_7) ** (t / 7.0) - 1.0
    return USD_WEIGHT_AT_7 * (USD_WEIGHT_AT_10 / USD_WEIGHT_AT_7) ** ((t - 7.0) / 3.0)


def scores(Q: np.ndarray, C: np.ndarray, tradeoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores (higher is better) and whether each candidate is within :data:`TIE` of the best (… × candidates)."""
    Q = np.asarray(Q, np.float64)
    C = np.asarray(C, np.float64)
    top = Q.max(-1, keepdims=True) - TIE
    S = np.minimum(Q, top) - usd_weight(tradeoff) * C
    return S, Q >= top


def rank(q: np.ndarray, cost: np.ndarray, tradeoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One request: candidate order (best first; equal scores: the cheaper first), scores, and which candidates
    are within :data:`TIE` of the best."""
    S, tied = scores(q, cost, tradeoff)
    return np.lexsort((np.asarray(cost), -S)), S, tied


def choose(Q: np.ndarray, C: np.ndarray, tradeoff: float) -> np.ndarray:
    """Many requests (requests × candidates): the index of each one's choice (equal scores: the cheaper)."""
    S, _ = scores(Q, C, tradeoff)
    return np.argmax(S - 1e-9 * (C / np.maximum(C.max(1, keepdims=True), 1e-12)), axis=1)
