"""The numbers of one decision, from the prompt's bytes to the candidates' order: the serving hot path.

:func:`decide_numpy` is the reference: the predictors' arithmetic fused for one request (one matrix product for
every linear map of the request vector) and the dial's scores and order (:mod:`.policy`). :func:`decide_compiled`
is the same arithmetic as loops compiled by numba (the ``fast`` extra: a wheel, no compiler at install time), one
call instead of some forty numpy calls on small arrays. Both give the same numbers within float32 tolerance and the
same order (tests/router/test_kernel.py).

The encoder's two loops over a long text — its whitespace chunks looked up in the vocabulary's hash index
(:func:`chunk_rows`), the sum of their table rows (:func:`row_sum`) — are here too, each beside its numpy reference.

Which one serves: the compiled one once it is ready, the reference until then and wherever numba is not installed
or ``METAROUTER_KERNEL=numpy`` is set. Compiling takes seconds the first time (numba caches the machine code next to
this file, or in its user cache), so :func:`warm_up` — called by the gateway on each ``auto`` request, acting on the
first — does it in a background thread and requests never wait for it. Its price is memory (numba and LLVM: about
45 MB of the process's own and 80 MB of shared libraries), paid only by a process that routes.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from typing import Any, NamedTuple

import numpy as np

from . import policy

log = logging.getLogger("metarouter.router")

CHARS_PER_TOKEN = 4.0
FEATURE_CLIP = 5.0  # standardised features beyond this many standard deviations of training read as this (encoder)


class Ops(NamedTuple):
    """What the kernel reads of the router, fixed per artifact: the fused linear maps and the scalars."""

    M: np.ndarray  # (request dims × [domains, familiarity (3), difficulty, length, tower]) float32
    bias: np.ndarray  # float32
    Wqc: np.ndarray  # (domains × tower) the tower's domain part, scaled, float32
    k: int  # number of domains
    # fam_lo, fam_hi, everyday_lo, everyday_hi, cov_lo, cov_hi, d_mean, beta, temperature, table_weight
    scalars: np.ndarray  # float64


class Candidates(NamedTuple):
    """What the kernel reads of one candidate list (see ``core._ModelParams``)."""

    ability_term: np.ndarray  # (n,) α·ability + γ, float32
    coverageT: np.ndarray  # (domains × n) float32
    learned_idx: np.ndarray  # (l,) int64 positions of the candidates with learned quality
    U: np.ndarray  # (l × tower) float32
    c: np.ndarray  # (l,) float32
    table: np.ndarray  # (domains × l) float32
    len_offset: np.ndarray  # (n,) float32
    hidden: np.ndarray  # (n,) float64
    pin: np.ndarray  # (n,) float64 USD per prompt token
    pout: np.ndarray  # (n,) float64 USD per output token


class Decision(NamedTuple):
    """Per candidate: quality (P(good)), prior weight, cost (USD), billed output tokens, score, within the tie
    margin of the best; the order (best first); per request: familiarity, everyday-likeness, the likeliest domain;
    and the candidates' numbers as a decision reports them (:func:`reported_numpy`)."""

    quality: np.ndarray
    prior_weight: np.ndarray
    cost: np.ndarray
    output_tokens: np.ndarray
    score: np.ndarray
    near_best: np.ndarray
    order: np.ndarray
    familiarity: float
    everyday: float
    category: int
    reported: np.ndarray


#: decimals of the reported quality, cost (USD), prior weight and score, as one column of powers of ten
REPORTED_SCALE = np.array([[1e4], [1e12], [1e3], [1e6]])


def reported_numpy(q: np.ndarray, cost: np.ndarray, prior_weight: np.ndarray, score: np.ndarray,
                   output_tokens: np.ndarray) -> np.ndarray:
    """The candidates' numbers rounded as a decision reports them, one row each: quality, cost, prior weight and
    score — ``np.round`` of each (which is this: scale, round half to even, unscale), in float64 — and the billed
    output tokens rounded to whole tokens."""
    four = np.rint(np.array((q, cost, prior_weight, score), np.float64) * REPORTED_SCALE) / REPORTED_SCALE
    return np.vstack((four, np.rint(output_tokens)))


def decide_numpy(x: np.ndarray, coverage: float, ops: Ops, p: Candidates, prompt_tokens: float,
                 max_tokens: int | None, tradeoff: float) -> Decision:
    """The reference: numpy, scalars in Python floats."""
    M, bias, Wqc, k, sc = ops
    fam_lo, fam_hi, ev_lo, ev_hi, cov_lo, cov_hi, d_mean, beta, temperature, table_weight = sc.tolist()
    h = x @ M + bias
    e = np.exp(h[:k] - h[:k].max())
    P = e / e.sum()
    f0, f1, f2, d, log_len = h[k:k + 5].tolist()
    top = max(f0, f1, f2)  # the familiarity softmax over three kinds, in Python floats
    e0, e1, e2 = math.exp(f0 - top), math.exp(f1 - top), math.exp(f2 - top)
    tot = e0 + e1 + e2
    fam = min(max((e0 / tot - fam_lo) / (fam_hi - fam_lo), 0.0), 1.0)
    everyday = min(max((e1 / tot - ev_lo) / (ev_hi - ev_lo), 0.0), 1.0)
    fam = min(fam, min(max((coverage - cov_lo) / (cov_hi - cov_lo), 0.0), 1.0))
    trust = max(fam, everyday)
    d = trust * d + (1.0 - trust) * d_mean
    q_prior = 0.5 * (1.0 + np.tanh(0.5 * (p.ability_term + beta * d)))
    Q = q_prior.astype(np.float64)
    pw = 1.0 - fam * (P @ p.coverageT)
    if len(p.learned_idx):
        z = np.tanh(h[k + 5:] + P @ Wqc)
        ql = 0.5 * (1.0 + np.tanh((0.5 / temperature) * (p.U @ z + p.c)))
        if table_weight:
            ql = (1.0 - table_weight) * ql + table_weight * (P @ p.table)
        li = p.learned_idx
        Q[li] += (1.0 - pw[li]) * (ql - q_prior[li])
    out = np.exp(log_len + p.len_offset) / CHARS_PER_TOKEN
    if max_tokens:
        out = np.minimum(out, max_tokens)
    billed = out + p.hidden
    cost = prompt_tokens * p.pin + billed * p.pout
    order, S, near = policy.rank(Q, cost, tradeoff)
    return Decision(Q, pw, cost, billed, S, near, order, fam, everyday, int(P.argmax()),
                    reported_numpy(Q, cost, pw, S, billed))


def _decide_loops(x, coverage, M, bias, Wqc, k, sc, ability_term, coverageT, learned_idx, U, c, table, len_offset,
                  hidden, pin, pout, prompt_tokens, max_tokens, usd_weight, tie_scaled, tie_easy, easy):
    """:func:`decide_numpy` as loops (what numba compiles; float64 throughout). ``max_tokens`` 0: none."""
    D, H = M.shape
    h = np.empty(H)
    for j in range(H):
        h[j] = bias[j]
    for i in range(D):
        xi = np.float64(x[i])
        if xi != 0.0:
            for j in range(H):
                h[j] += xi * M[i, j]
    hmax = h[0]
    cat = 0
    for j in range(1, k):
        if h[j] > hmax:
            hmax, cat = h[j], j
    P = np.empty(k)
    tot = 0.0
    for j in range(k):
        P[j] = math.exp(h[j] - hmax)
        tot += P[j]
    for j in range(k):
        P[j] /= tot
    f0, f1, f2, d, log_len = h[k], h[k + 1], h[k + 2], h[k + 3], h[k + 4]
    top = max(f0, max(f1, f2))
    e0, e1, e2 = math.exp(f0 - top), math.exp(f1 - top), math.exp(f2 - top)
    tot = e0 + e1 + e2
    fam = min(max((e0 / tot - sc[0]) / (sc[1] - sc[0]), 0.0), 1.0)
    everyday = min(max((e1 / tot - sc[2]) / (sc[3] - sc[2]), 0.0), 1.0)
    fam = min(fam, min(max((coverage - sc[4]) / (sc[5] - sc[4]), 0.0), 1.0))
    trust = max(fam, everyday)
    d = trust * d + (1.0 - trust) * sc[6]
    beta, temperature, table_weight = sc[7], sc[8], sc[9]
    n = ability_term.shape[0]
    Q = np.empty(n)
    q_prior = np.empty(n)
    pw = np.empty(n)
    # Each P-weighted sum over the domains j (Σ_j P[j]·A[j, col]) runs along the rows of the row-major matrix for
    # all its columns at once, which the compiler vectorises: per column, the same additions in the same order.
    cover = np.zeros(n)
    for j in range(k):
        for m in range(n):
            cover[m] += P[j] * coverageT[j, m]
    for m in range(n):
        q_prior[m] = 0.5 * (1.0 + math.tanh(0.5 * (ability_term[m] + beta * d)))
        Q[m] = q_prior[m]
        pw[m] = 1.0 - fam * cover[m]
    nl = learned_idx.shape[0]
    if nl:
        T = Wqc.shape[1]
        z = h[k + 5:k + 5 + T].copy()
        tab = np.zeros(nl)
        for j in range(k):
            for t in range(T):
                z[t] += P[j] * Wqc[j, t]
            for r in range(nl):
                tab[r] += P[j] * table[j, r]
        for t in range(T):
            z[t] = math.tanh(z[t])
        for r in range(nl):
            s = c[r]
            for t in range(T):
                s += U[r, t] * z[t]
            ql = 0.5 * (1.0 + math.tanh((0.5 / temperature) * s))
            if table_weight != 0.0:
                ql = (1.0 - table_weight) * ql + table_weight * tab[r]
            m = learned_idx[r]
            Q[m] += (1.0 - pw[m]) * (ql - q_prior[m])
    billed = np.empty(n)
    cost = np.empty(n)
    best = -1.0
    for m in range(n):
        out = math.exp(log_len + len_offset[m]) / CHARS_PER_TOKEN
        if max_tokens > 0 and out > max_tokens:
            out = float(max_tokens)
        billed[m] = out + hidden[m]
        cost[m] = prompt_tokens * pin[m] + billed[m] * pout[m]
        if Q[m] > best:
            best = Q[m]
    cap = best - (tie_easy if best >= easy else tie_scaled)
    S = np.empty(n)
    near = np.empty(n, np.bool_)
    for m in range(n):
        S[m] = min(Q[m], cap) - usd_weight * cost[m]
        near[m] = Q[m] >= cap
    order = np.empty(n, np.int64)  # insertion sort by (−score, cost), stable: np.lexsort((cost, −S))
    for m in range(n):
        j = m
        while j > 0 and (S[order[j - 1]] < S[m] or (S[order[j - 1]] == S[m] and cost[order[j - 1]] > cost[m])):
            order[j] = order[j - 1]
            j -= 1
        order[j] = m
    rep = np.empty((5, n))  # reported_numpy's rows: the same float64 operations, element by element
    for m in range(n):
        rep[0, m] = np.rint(Q[m] * 1e4) / 1e4
        rep[1, m] = np.rint(cost[m] * 1e12) / 1e12
        rep[2, m] = np.rint(pw[m] * 1e3) / 1e3
        rep[3, m] = np.rint(S[m] * 1e6) / 1e6
        rep[4, m] = np.rint(billed[m])
    return Q, pw, cost, billed, S, near, order, fam, everyday, cat, rep


def chunk_rows_numpy(b: np.ndarray, ws: np.ndarray, pow_: np.ndarray, inv_pow: np.ndarray, keys: np.ndarray,
                     krows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The whitespace chunks of the bytes ``b`` (``ws``: which bytes are whitespace): for each, its row in the
    sorted hash index ``keys``/``krows`` (−1: not there), start, end and hash ``Σ b[start + j]·P^j mod 2^64``."""
    word = ~ws[b]
    edge = np.diff(np.concatenate(([False], word, [False])).view(np.int8))
    starts = np.flatnonzero(edge == 1)
    ends = np.flatnonzero(edge == -1)
    S = np.empty(len(b) + 1, np.uint64)
    S[0] = 0
    np.cumsum(b.astype(np.uint64) * pow_[:len(b)], out=S[1:])
    h = (S[ends] - S[starts]) * inv_pow[starts]  # wraps mod 2^64: the hash of each chunk from its first byte
    idx = np.searchsorted(keys, h)
    idx[idx >= len(keys)] = 0
    rows = np.where(keys[idx] == h, krows[idx], -1)
    return rows, starts, ends, h


_FIB = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: a slot from a hash's high bits


def _slots_loops(keys, krows, bits):
    """An open-addressing table of the index ``keys`` → ``krows`` (2**bits slots; row −1: empty), the first of
    equal keys kept (as ``searchsorted`` finds it)."""
    size = 1 << bits
    sk = np.zeros(size, np.uint64)
    sr = np.full(size, -1, np.int64)
    shift = np.uint64(64 - bits)
    for i in range(keys.shape[0]):
        j = np.int64((keys[i] * _FIB) >> shift)
        while sr[j] != -1 and sk[j] != keys[i]:
            j = (j + 1) & (size - 1)
        if sr[j] == -1:
            sk[j], sr[j] = keys[i], krows[i]
    return sk, sr


def _chunk_rows_loops(b, ws, pow_, sk, sr):
    """:func:`chunk_rows_numpy` as loops, each chunk looked up in the table of :func:`_slots_loops` (one or two
    probes where a binary search over some 26,000 keys takes fifteen steps)."""
    n = b.shape[0]
    cap = n // 2 + 1
    rows = np.empty(cap, np.int64)
    starts = np.empty(cap, np.int64)
    ends = np.empty(cap, np.int64)
    hashes = np.empty(cap, np.uint64)
    size = sr.shape[0]
    shift = np.uint64(64 - int(np.log2(size)))
    m = 0
    i = 0
    while i < n:
        while i < n and ws[b[i]]:
            i += 1
        if i >= n:
            break
        start = i
        h = np.uint64(0)
        while i < n and not ws[b[i]]:
            h += np.uint64(b[i]) * pow_[i - start]
            i += 1
        j = np.int64((h * _FIB) >> shift)
        r = -1
        while sr[j] != -1:
            if sk[j] == h:
                r = sr[j]
                break
            j = (j + 1) & (size - 1)
        rows[m] = r
        starts[m], ends[m], hashes[m] = start, i, h
        m += 1
    return rows[:m], starts[:m], ends[:m], hashes[:m]


class Slots(NamedTuple):
    """The compiled lookup's table of one hash index (:func:`slots`)."""

    keys: np.ndarray  # the index's sorted keys it was made from (identifies it)
    slot_keys: np.ndarray
    slot_rows: np.ndarray


def slots(keys: np.ndarray, krows: np.ndarray) -> Slots | None:
    """The compiled lookup's table of the sorted hash index ``keys`` → ``krows`` (at most half full); None while
    the numpy kernel serves."""
    if _compiled is None:
        return None
    bits = max(4, int(2 * len(keys) - 1).bit_length())
    return Slots(keys, *_compiled.slots(keys, krows, bits))


def chunk_rows(b: np.ndarray, ws: np.ndarray, pow_: np.ndarray, inv_pow: np.ndarray, keys: np.ndarray,
               krows: np.ndarray, table: Slots | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`chunk_rows_numpy`, compiled when ready (the same rows, starts, ends and hashes: integers, exact),
    looked up in ``table`` (:func:`slots` of this index: the caller keeps it; made here when missing or stale)."""
    if _compiled is None:
        return chunk_rows_numpy(b, ws, pow_, inv_pow, keys, krows)
    if table is None or table.keys is not keys:
        table = slots(keys, krows)
    return _compiled.chunk_rows(b, ws, pow_, table.slot_keys, table.slot_rows)


def row_sum_numpy(table: np.ndarray, weights: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """The sum of the table's ``rows`` (float32) and of their weights."""
    n = len(rows)
    tot = np.ones(n, np.float32) @ table[rows] if n <= 8192 else table[rows].sum(0)
    return tot, float(np.add.reduce(weights[rows]))  # = .sum(), without the method's Python wrapper


def _row_sum_loops(table, weights, rows):
    D = table.shape[1]
    acc = np.zeros(D, np.float32)
    w = 0.0
    for r in rows:
        for j in range(D):
            acc[j] += table[r, j]
        w += weights[r]
    return acc, w


def row_sum(table: np.ndarray, weights: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`row_sum_numpy`, compiled when ready (float32 sums in another order: within float32 tolerance)."""
    if _compiled is None:
        return row_sum_numpy(table, weights, rows)
    return _compiled.row_sum(table, weights, rows)


def standardised(f: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Features in training's standard deviations, clipped to ±:data:`FEATURE_CLIP` (no value far outside
    training moves a linear predictor further than one at its edge would)."""
    return np.clip((f - mean) / scale, -FEATURE_CLIP, FEATURE_CLIP)


def prompt_vector_numpy(vec: np.ndarray, sq: float, counts: np.ndarray, n_tokens: int, n_chars: int, newlines: int,
                        total_chars: int, n_turns: int, has_system: bool, has_image: bool, feat_mean: np.ndarray,
                        feat_scale: np.ndarray, tail: np.ndarray, standardise: bool = True) -> np.ndarray:
    """A prompt's vector from its parts (float32): ``vec``, the weighted sum of its segments' rows, divided by its
    norm (``sq``: ``vec @ vec``; ``vec`` may be divided in place); the hand features of the last user message (its
    token ``counts`` and statistics), :func:`standardised` by ``feat_mean``/``feat_scale`` (``standardise``
    False: as measured, for training); then ``tail``."""
    norm = math.sqrt(sq)  # rounded to float32 by the division: float32's own square root, exactly
    if norm > 0:
        vec /= norm
    n = max(n_tokens, 1)
    code, mathm, number, question, nonascii, punct = counts.tolist()[:6]
    f = np.array([
        math.log1p(n_chars), math.log1p(total_chars), math.log1p(n_turns), math.log1p(n_tokens),
        code * 100.0 / n, mathm * 100.0 / n, number * 100.0 / n, min(question, 10.0), nonascii * 100.0 / n,
        punct * 100.0 / n, newlines * 100.0 / max(n_chars, 1), float(has_system), float(has_image),
    ], np.float32)
    if standardise:
        f = standardised(f, feat_mean, feat_scale)
    return np.concatenate((vec, f, tail))


def _prompt_vector_loops(vec, sq, counts, n_tokens, n_chars, newlines, total_chars, n_turns, has_system, has_image,
                         feat_mean, feat_scale, tail, standardise):
    """:func:`prompt_vector_numpy` element by element: the same float32 and float64 operations, the same bits."""
    d, nf, nt = vec.shape[0], feat_mean.shape[0], tail.shape[0]
    out = np.empty(d + nf + nt, np.float32)
    norm = np.float32(math.sqrt(sq))
    for j in range(d):
        out[j] = vec[j] / norm if norm > 0 else vec[j]
    n = max(n_tokens, 1)
    f = np.empty(13)
    f[0], f[1], f[2], f[3] = math.log1p(n_chars), math.log1p(total_chars), math.log1p(n_turns), math.log1p(n_tokens)
    f[4], f[5], f[6] = np.float64(counts[0]) * 100.0 / n, np.float64(counts[1]) * 100.0 / n, \
        np.float64(counts[2]) * 100.0 / n
    f[7] = min(np.float64(counts[3]), 10.0)
    f[8], f[9] = np.float64(counts[4]) * 100.0 / n, np.float64(counts[5]) * 100.0 / n
    f[10] = newlines * 100.0 / max(n_chars, 1)
    f[11], f[12] = 1.0 if has_system else 0.0, 1.0 if has_image else 0.0
    lo, hi = np.float32(-FEATURE_CLIP), np.float32(FEATURE_CLIP)
    for j in range(nf):
        v = np.float32(f[j])
        if standardise:
            v = min(max((v - feat_mean[j]) / feat_scale[j], lo), hi)
        out[d + j] = v
    for j in range(nt):
        out[d + nf + j] = tail[j]
    return out


def prompt_vector(vec: np.ndarray, sq: float, counts: np.ndarray, n_tokens: int, n_chars: int, newlines: int,
                  total_chars: int, n_turns: int, has_system: bool, has_image: bool, feat_mean: np.ndarray,
                  feat_scale: np.ndarray, tail: np.ndarray, standardise: bool = True) -> np.ndarray:
    """:func:`prompt_vector_numpy`, compiled when ready (one call instead of some ten numpy calls; the same bits)."""
    if _compiled is None:
        return prompt_vector_numpy(vec, sq, counts, n_tokens, n_chars, newlines, total_chars, n_turns, has_system,
                                   has_image, feat_mean, feat_scale, tail, standardise)
    return _compiled.prompt_vector(vec, float(sq), counts, n_tokens, n_chars, newlines, total_chars, n_turns,
                                   has_system, has_image, feat_mean, feat_scale, tail, standardise)


class _Compiled(NamedTuple):
    decide: Any
    chunk_rows: Any
    row_sum: Any
    prompt_vector: Any
    slots: Any


_compiled: _Compiled | None = None  # numba's dispatchers, once compiled
_state = {"status": "not started"}
_lock = threading.Lock()


def decide_compiled(x: np.ndarray, coverage: float, ops: Ops, p: Candidates, prompt_tokens: float,
                    max_tokens: int | None, tradeoff: float) -> Decision:
    """:func:`decide_numpy` by the compiled loops (call only when :func:`compiled_ready`)."""
    return Decision(*_compiled.decide(
        x, float(coverage), ops.M, ops.bias, ops.Wqc, ops.k, ops.scalars, *p, float(prompt_tokens),
        int(max_tokens or 0), *dial(tradeoff), policy.EASY))


@functools.lru_cache(maxsize=256)
def dial(tradeoff: float) -> tuple[float, float, float]:
    """The compiled kernel's constants of a setting of the dial (:mod:`.policy`): λ, the tie margin of a hard
    request and that of an easy one (cached: a few settings serve nearly every request)."""
    return policy.usd_weight(tradeoff), float(policy.tie(tradeoff)), float(policy.tie(tradeoff, 1.0))


def compiled_ready() -> bool:
    return _compiled is not None


def status() -> str:
    """``compiled``, ``compiling``, ``numpy (…why)``: which kernel serves, for logs and ``/health``-like views."""
    return _state["status"]


def wanted() -> bool:
    return os.environ.get("METAROUTER_KERNEL", "").lower() not in ("numpy", "off", "0")


def compile_now() -> bool:
    """Compile (or load from numba's cache) the loops; True when the compiled kernel serves from now on."""
    global _compiled
    with _lock:
        if _compiled is not None:
            return True
        if not wanted():
            _state["status"] = "numpy (METAROUTER_KERNEL=numpy)"
            return False
        try:
            import numba
        except ImportError:
            _state["status"] = "numpy (numba not installed: pip install 'metarouter[fast]')"
            return False
        _state["status"] = "compiling"
        try:
            jit = numba.njit(cache=True, nogil=True, error_model="numpy")
            fns = _Compiled(jit(_decide_loops), jit(_chunk_rows_loops), jit(_row_sum_loops), jit(_prompt_vector_loops),
                            jit(_slots_loops))
            _exercise(fns)
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot compile leaves the numpy one serving
            log.warning("router kernel: numba could not compile it (%s); the numpy kernel serves", exc)
            _state["status"] = f"numpy (numba failed: {type(exc).__name__})"
            return False
        _compiled = fns
        _state["status"] = "compiled"
        log.info("router kernel: compiled (numba %s)", numba.__version__)
        return True


def _exercise(fns: _Compiled) -> None:
    """One call of each with the serving argument types, so that the compiled code exists before it is used."""
    f32, f64 = np.float32, np.float64
    z = lambda *s, t=f32: np.zeros(s, t)  # noqa: E731
    fns.decide(z(3), 1.0, z(3, 10), z(10), z(2, 3), 2, np.ones(10), z(2), z(2, 2), np.array([0], np.int64), z(1, 3),
               z(1), z(2, 1), z(2), z(2, t=f64), z(2, t=f64), z(2, t=f64), 10.0, 0, 1.0, 0.01, 0.02, 0.9)
    u64 = np.ones(4, np.uint64)
    sk, sr = fns.slots(u64, np.zeros(4, np.intp), 4)
    fns.chunk_rows(np.frombuffer(b"a b", np.uint8), np.zeros(256, np.bool_), u64, sk, sr)
    fns.row_sum(z(2, 3), z(2), np.zeros(1, np.intp))
    shared = z(7)
    shared.flags.writeable = False  # as the encoder's cached row sums and the router's request part are
    for counts in (shared, z(7)):
        fns.prompt_vector(z(3), 0.0, counts, 1, 1, 0, 1, 1, False, False, z(13), np.ones(13, f32), shared, True)


def warm_up(background: bool = True) -> None:
    """Start compiling the kernel (once per process: later calls return at once); requests use the numpy kernel
    until it is ready."""
    if _state["status"] != "not started":
        return
    if not wanted():
        _state["status"] = "numpy (METAROUTER_KERNEL=numpy)"
        return
    _state["status"] = "compiling"
    if background:
        threading.Thread(target=compile_now, name="router-kernel-compile", daemon=True).start()
    else:
        compile_now()
