"""The decision's kernel: numba's compiled loops against the numpy reference (same numbers within float32
tolerance, same order), the choice between them, and routing that gives the same decisions with either."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from metarouter.catalog import default_catalog
from metarouter.router import Constraints, kernel, load_router, policy
from metarouter.router.core import as_request

pytest.importorskip("numba")  # the `fast` extra (in `dev`, so CI always runs these)

MODELS = list(default_catalog())
FIXTURES = Path(__file__).parent / "fixtures"
BODIES = [json.loads(line)["request"] for name in ("everyday_battery.jsonl", "request_battery.jsonl")
          for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def same_order(a: list, b: list, score: dict, tol: float = 1e-5) -> bool:
    """The same order, except for neighbours whose scores are within ``tol`` (float rounding may swap those)."""
    if sorted(a) != sorted(b):
        return False
    return all(x == y or abs(score[x] - score[y]) <= tol for x, y in zip(a, b))


def shape(reason: str) -> str:
    """A reason without its numbers: which explanation was given (a number may round either way at a boundary)."""
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", reason)


@pytest.fixture(scope="module")
def router():
    assert kernel.compile_now(), kernel.status()
    return load_router()


def _inputs(router, body, models=MODELS):
    req = as_request(body)
    x, cov = router.features(req)
    return np.ascontiguousarray(x, np.float32), cov, router._fused(), router.params(models).kernel, \
        float(req.prompt_tokens())


@pytest.mark.parametrize("tradeoff", [0.0, 3.0, 7.0, 9.5, 10.0])
def test_compiled_kernel_matches_numpy(router, tradeoff):
    """Every number of the compiled kernel is the numpy reference's within float32 tolerance, and the order,
    the ties and the domain are the same, over both batteries (tools, images, systems, conversations), with and
    without max_tokens, along the dial."""
    assert len(BODIES) > 50
    for i, body in enumerate(BODIES):
        x, cov, ops, cands, pt = _inputs(router, body)
        mt = (16, 64, None)[i % 3]
        a = kernel.decide_numpy(x, cov, ops, cands, pt, mt, tradeoff)
        b = kernel.decide_compiled(x, cov, ops, cands, pt, mt, tradeoff)
        for name in ("quality", "prior_weight", "cost", "output_tokens", "score"):
            assert np.allclose(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-6), (name, body)
        assert abs(a.familiarity - b.familiarity) < 1e-4 and abs(a.everyday - b.everyday) < 1e-4
        assert a.category == b.category, body
        S = dict(enumerate(a.score.tolist()))
        assert same_order(a.order.tolist(), b.order.tolist(), S), body
        # within the tie margin: the same verdict unless a quality sits on the margin's edge
        best = float(a.quality.max())
        edge = np.abs(a.quality - (best - policy.tie(tradeoff, best))) < 1e-5
        assert ((a.near_best == b.near_best) | edge).all(), body


def test_both_kernels_round_the_reported_numbers_as_reported_numpy_does(router):
    """The numbers a decision reports (quality, cost, prior weight, score, output tokens) come rounded from either
    kernel exactly as :func:`kernel.reported_numpy` rounds that kernel's own numbers."""
    for i, body in enumerate(BODIES):
        x, cov, ops, cands, pt = _inputs(router, body)
        for run in (kernel.decide_numpy, kernel.decide_compiled):
            d = run(x, cov, ops, cands, pt, (16, None)[i % 2], (0.0, 7.0, 10.0)[i % 3])
            want = kernel.reported_numpy(d.quality, d.cost, d.prior_weight, d.score, d.output_tokens)
            assert d.reported.shape == (5, len(d.quality)) and np.array_equal(d.reported, want), (run, body)


def test_compiled_order_breaks_equal_scores_by_cost_like_lexsort(router):
    """Equal scores: the cheaper first — np.lexsort's order, which the compiled sort must reproduce. At 0 price
    counts for nothing, so one model listed at several prices (the same quality) scores the same at each, and only
    cost orders them."""
    base = next(m for m in MODELS if m.id == "openai/gpt-4o-mini-2024-07-18")
    models = [replace(base, input_pico=base.input_pico * f, output_pico=base.output_pico * f) for f in (3, 1, 4, 2)]
    x, cov, ops, cands, pt = _inputs(router, {"messages": [{"role": "user", "content": "Say hi."}]}, models)
    a = kernel.decide_numpy(x, cov, ops, cands, pt, None, 0.0)
    b = kernel.decide_compiled(x, cov, ops, cands, pt, None, 0.0)
    assert len(set(b.score.tolist())) == 1 and b.near_best.all()  # the case this test is about
    assert b.order.tolist() == a.order.tolist() == [1, 3, 0, 2]


def test_learned_free_candidates(router):
    """Candidates without learned quality (no labels): the tower is skipped in both kernels alike."""
    unknown = [m for m in MODELS if router.models.get(m.id.lower(), {}).get("col", -1) < 0]
    labelled = [m for m in MODELS if m not in unknown]
    for models in (labelled[:3], unknown or labelled[:1]):
        x, cov, ops, cands, pt = _inputs(router, BODIES[0], models)
        a = kernel.decide_numpy(x, cov, ops, cands, pt, None, 7.0)
        b = kernel.decide_compiled(x, cov, ops, cands, pt, None, 7.0)
        assert np.allclose(a.quality, b.quality, rtol=1e-4, atol=1e-6)
        assert same_order(a.order.tolist(), b.order.tolist(), dict(enumerate(a.score.tolist())))


def test_route_gives_the_same_decision_with_either_kernel(router, monkeypatch):
    """What a user sees — models in order, reasons, reported numbers — is the same whichever kernel served."""
    compiled = [router.route(b, MODELS, Constraints(max_price_request=0.01) if i % 4 == 0 else None, (i % 11))
                for i, b in enumerate(BODIES)]
    monkeypatch.setattr(kernel, "_compiled", None)  # as if numba were not installed
    assert not kernel.compiled_ready()
    plain = [router.route(b, MODELS, Constraints(max_price_request=0.01) if i % 4 == 0 else None, (i % 11))
             for i, b in enumerate(BODIES)]
    for a, b in zip(compiled, plain):
        assert same_order(a.model_ids, b.model_ids, {c.model_id: c.score for c in a.ranked}, tol=2e-6)
        assert [m for m, _ in a.excluded] == [m for m, _ in b.excluded]
        if a.model_ids == b.model_ids:
            assert [shape(c.reason) for c in a.ranked] == [shape(c.reason) for c in b.ranked]
        by_id = {c.model_id: c for c in b.ranked}
        for ca in a.ranked:
            assert ca.quality == pytest.approx(by_id[ca.model_id].quality, abs=2e-4)
            assert ca.cost_usd == pytest.approx(by_id[ca.model_id].cost_usd, rel=1e-5, abs=1e-11)


def test_the_environment_can_keep_numpy(monkeypatch):
    monkeypatch.setenv("METAROUTER_KERNEL", "numpy")
    assert not kernel.wanted()
    monkeypatch.setenv("METAROUTER_KERNEL", "")
    assert kernel.wanted()


def _texts() -> list[str]:
    import random

    rng = random.Random(3)
    words = ["the", "eggs.", "x^2", "naïve", "café", "(a)", "λ", "—", "don't", "1234567", "foo_bar", "==", "数学",
             "tokenisation", "a\x1cb", "tab\tbed"]
    return [" ".join(rng.choice(words) for _ in range(n)) for n in (0, 1, 5, 60, 120, 300, 900, 2500)] + \
        ["   ", "ab " * 9000, "é" * 5000, "\n\nlead and trail  "]


def test_compiled_chunk_lookup_is_the_numpy_one_exactly(router):
    """Chunks, their hashes and their rows in the index: integers, so equal, not close."""
    from metarouter.router import encoder as enc

    keys, krows = router.encoder._index
    for t in _texts():
        b = np.frombuffer(t.encode(), np.uint8)
        a = kernel.chunk_rows_numpy(b, enc._WS_LUT, enc._POW, enc._INV_POW, keys, krows)
        c = kernel.chunk_rows(b, enc._WS_LUT, enc._POW, enc._INV_POW, keys, krows)
        for x, y in zip(a, c):
            assert x.tolist() == y.tolist(), t[:30]
        assert len(a[0]) == len(t.split())  # one per chunk, as str.split() makes them


def test_compiled_row_sum_matches_numpy(router):
    e = router.encoder
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 700, 9000):
        rows = rng.integers(0, e.n_vocab, n).astype(np.intp)
        (a, wa), (b, wb) = kernel.row_sum_numpy(e.table, e.weights, rows), kernel._compiled.row_sum(e.table, e.weights, rows)
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1, n) ** 0.5) and wa == pytest.approx(wb, rel=1e-4, abs=1e-6)


def test_encoder_vectors_are_the_same_with_either_kernel(router, monkeypatch):
    """Texts from a few hundred characters on go through the compiled chunk lookup and row sums: the same rows
    as the plain path's and the numpy kernel's vector."""
    texts = [t for t in _texts() if len(t) > 300]
    assert any(len(t.encode()) < 1200 for t in texts)  # the range only the compiled kernel vectorises
    for t in texts:
        assert router.encoder.rows_array(t.lower()).tolist() == router.encoder.rows(t.lower()), t[:30]
    compiled = [router.encoder._embed_text(t.lower()) for t in texts]
    monkeypatch.setattr(kernel, "_compiled", None)
    plain = [router.encoder._embed_text(t.lower()) for t in texts]
    for (a, wa, na), (b, wb, nb) in zip(compiled, plain):
        assert na == nb and wa == pytest.approx(wb, rel=1e-4)
        assert np.allclose(a, b, rtol=1e-4, atol=1e-3)


def test_warm_up_compiles_once_and_the_environment_can_refuse(router, monkeypatch):
    """The gateway calls warm_up on every auto request: the first starts the (cached) compilation, the others
    return at once; METAROUTER_KERNEL=numpy keeps the numpy kernel."""
    monkeypatch.setattr(kernel, "_compiled", None)
    monkeypatch.setitem(kernel._state, "status", "not started")
    monkeypatch.setenv("METAROUTER_KERNEL", "numpy")
    kernel.warm_up(background=False)
    assert kernel.status().startswith("numpy") and not kernel.compiled_ready()
    monkeypatch.setitem(kernel._state, "status", "not started")
    monkeypatch.delenv("METAROUTER_KERNEL")
    kernel.warm_up(background=False)
    assert kernel.status() == "compiled" and kernel.compiled_ready()
    again = kernel._compiled
    kernel.warm_up(background=False)
    assert kernel._compiled is again  # (the module's state is put back by monkeypatch)


def test_compiled_prompt_vector_is_the_numpy_one_exactly(router, monkeypatch):
    """The prompt's vector (embedding normalised, hand features standardised, the request features after them)
    is the same bit for bit from the compiled step and from numpy, over both batteries and texts of every size,
    with and without a last user message; and the raw hand features (training's) are what is standardised."""
    from metarouter.router.core import encode_request
    from metarouter.router.encoder import standardised

    e, rng = router.encoder, np.random.default_rng(1)
    for n_tok, counts in ((0, np.zeros(7, np.float32)), (37, rng.integers(0, 9, 7).astype(np.float32))):
        vec = rng.normal(size=e.dim).astype(np.float32)
        for standardise in (True, False):
            args = (counts, n_tok, 120, 3, 400, 2, True, False, e.feat_mean, e.feat_std,
                    np.arange(5, dtype=np.float32), standardise)
            a = kernel._compiled.prompt_vector(vec.copy(), float(vec @ vec), *args)
            assert a.tobytes() == kernel.prompt_vector_numpy(vec.copy(), vec @ vec, *args).tobytes()
    reqs = [as_request(b) for b in BODIES] + [as_request(t or "x") for t in _texts()] + \
        [as_request([{"role": "assistant", "content": "no user turn"}])]
    compiled = [router.features(r) for r in reqs]
    raw = [encode_request(router.encoder, r, raw=True)[0] for r in reqs]
    monkeypatch.setattr(kernel, "_compiled", None)
    plain = [router.features(r) for r in reqs]
    for (a, ca), (b, cb), r, x in zip(compiled, plain, reqs, raw):
        assert a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes() and ca == cb, r.messages
        d, nf = router.encoder.dim, router.encoder.n_features
        assert np.array_equal(standardised(x[d:], router.encoder.feat_mean, router.encoder.feat_std), a[d:d + nf])
        assert np.array_equal(a[-len(router.req_mean):], router.request_part(tuple(r.features())))


def test_the_dials_constants_are_the_policys_and_made_once_per_setting():
    for t in (0.0, 0.5, 1.0, 3.0, 7.0, 9.5, 10.0):
        assert kernel.dial(t) == (policy.usd_weight(t), float(policy.tie(t)), float(policy.tie(t, 1.0)))
        assert kernel.dial(t) is kernel.dial(t)


def test_the_compiled_lookup_by_slots_finds_what_the_sorted_index_does(router):
    """The open-addressing table of the hash index (kernel.slots) gives each chunk the row the sorted index's
    binary search gives (−1 where none), on the vocabulary and on an index grown by merged chunks; the encoder
    makes a new table when its index changes."""
    from metarouter.router import encoder as enc

    e = router.encoder
    keys, krows = e._index
    table = kernel.slots(keys, krows)
    assert table.keys is keys and len(table.slot_rows) >= 2 * len(keys) and (table.slot_rows >= 0).sum() == len(keys)
    words = [" ".join(e.vocab[::97][:400])]
    for t in _texts() + words:
        b = np.frombuffer(t.encode(), np.uint8)
        a = kernel.chunk_rows_numpy(b, enc._WS_LUT, enc._POW, enc._INV_POW, keys, krows)
        c = kernel.chunk_rows(b, enc._WS_LUT, enc._POW, enc._INV_POW, keys, krows, table)
        for x, y in zip(a, c):
            assert x.tolist() == y.tolist(), t[:30]
    assert (kernel.chunk_rows_numpy(np.frombuffer(words[0].encode(), np.uint8), enc._WS_LUT, enc._POW,
                                    enc._INV_POW, keys, krows)[0] >= 0).mean() > 0.5  # mostly hits
    fresh = " ".join(f"zq{i}xv." for i in range(600))  # 600 chunks outside the vocabulary: a merge
    before = e._index
    rows = e.rows_array(fresh.lower())
    assert rows.tolist() == e.rows(fresh.lower())
    assert e._index is not before  # merged after the look-up: the next one makes the new index's table
    assert e.rows_array(fresh.lower()).tolist() == rows.tolist() and e._slots.keys is e._index[0]
