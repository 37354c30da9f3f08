"""The meta-router: encoder, predictors, policy and constraints, artifact, training on Not Diamond CSV, CLI.

Behaviour on everyday and hard requests (the batteries under fixtures/) is in test_router_behaviour.py."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import replace

import numpy as np
import pytest

from metarouter.catalog import Model, default_catalog
from metarouter.router import Constraints, RouteDecision, RouteRequest, load_router
from metarouter.router import artifact as art
from metarouter.router.core import DEFAULT_ARTIFACT, Router
from metarouter.router.data import load_notdiamond_csv, split_mask
from metarouter.router.metrics import PoolReference, aiq, upper_hull
from metarouter.router.predictors import CategoryModel, KNNPredictor, QualityModel

MODELS = list(default_catalog())
MATH = "Let x be the positive root of x^2 - 5x + 6 = 0. Compute \\frac{x^3}{2}."
CHAT = [{"role": "user", "content": "Write a haiku about autumn leaves."}]


@pytest.fixture(scope="module")
def router() -> Router:
    return load_router()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- encoder ---------------------------------------------------------------------------------------------------------
def test_encoder_is_deterministic(router):
    a = router.encoder.encode(user(MATH))
    b = router.encoder.encode(user(MATH))
    fresh = Router.from_artifact(DEFAULT_ARTIFACT).encoder.encode(user(MATH))
    assert a.shape == (router.encoder.out_dim,)
    assert np.array_equal(a, b)
    assert np.allclose(a, fresh, atol=1e-6)
    assert np.isfinite(a).all()


def test_encoder_reads_the_conversation(router):
    enc = router.encoder.encode
    follow = {"role": "user", "content": "Now do it in Rust."}
    alone = enc([follow])
    code = enc([{"role": "user", "content": "Write a Python function that parses JSON logs"},
                {"role": "assistant", "content": "def parse(lines): return [json.loads(l) for l in lines]"}, follow])
    poem = enc([{"role": "user", "content": "Write a sonnet about the sea"},
                {"role": "assistant", "content": "Shall I compare thee to a summer's sea"}, follow])
    assert not np.allclose(alone, code) and not np.allclose(code, poem)
    # the last user message weighs most: the follow-up stays closer to itself than to the earlier turn
    first = enc(user("Write a Python function that parses JSON logs"))
    d = router.encoder.dim
    cos = lambda x, y: float(x[:d] @ y[:d])  # noqa: E731
    assert cos(code, alone) > cos(code, first) - 0.5
    # list-of-parts content and an image part are understood
    parts = enc([{"role": "user", "content": [{"type": "text", "text": "Now do it in Rust."},
                                              {"type": "image_url", "image_url": {"url": "data:,"}}]}])
    assert np.allclose(parts[:d], alone[:d], atol=1e-6) and not np.allclose(parts, alone)


def test_vectorised_lookup_matches_the_dict_path(router):
    e = router.encoder
    rng = random.Random(1)
    words = ["the", "Eggs.", "x^2", "naïve", "café", "(a)", "λ", "—", "don't", "1234567", "foo_bar", "==", "数学"]
    texts = [" ".join(rng.choice(words) for _ in range(n)) for n in (0, 5, 300, 900)]
    texts += ["word\u00a0word " * 200, "a\x1cb\tc\nd " * 300, "é" * 5000, "ab " * 9000]
    for _ in range(2):  # cold, then warm (chunks folded into the hash index)
        for t in texts:
            low = t.lower()
            assert e.rows_array(low).tolist() == e.rows(low), t[:40]


def test_long_prompts_are_clipped(router):
    words = [random.Random(0).choice(["alpha", "beta", "gamma", "delta"]) for _ in range(100_000)]
    x = router.encoder.encode(user(" ".join(words)))
    assert np.isfinite(x).all()
    assert len(router.encoder.token_ids(" ".join(words))) < 8_000  # head + tail only
    # one enormous "word" is an unknown token (greedy WordPiece over it would be quadratic)
    assert router.encoder.token_ids("x" * 50_000) == [router.encoder._unk] * 2  # head and tail halves


# -- policy and constraints ------------------------------------------------------------------------------------------
def test_route_shape_and_to_dict(router):
    d = router.route(user(MATH), MODELS)
    assert isinstance(d, RouteDecision) and len(d.ranked) == len(MODELS) and not d.excluded
    top = d.ranked[0]
    assert top.model_id == d.model and 0 < top.quality < 1 and top.cost_usd > 0 and top.prompt_tokens > 0
    assert top.reason.startswith("choice") and d.ranked[1].reason.startswith("fallback 1")
    assert d.reason == top.reason and "\n" not in d.reason
    assert [c.score for c in d.ranked] == sorted((c.score for c in d.ranked), reverse=True)
    best = max(c.quality for c in d.ranked)
    assert all(c.near_best == (c.quality >= best - 0.02 - 1e-9) for c in d.ranked)
    blob = json.loads(json.dumps(d.to_dict()))
    assert blob["model"] == top.model_id and blob["tradeoff"] == router.default_tradeoff == 7.0
    assert blob["reason"] == top.reason
    assert {"model_id", "quality", "cost_usd", "prompt_tokens", "output_tokens", "reason", "score"} <= set(blob["ranked"][0])


def test_request_features_are_standardised_once_per_kind_of_request(router):
    """The request part of the vector (tools, JSON mode) is the same standardised float32 array for requests of
    the same kind — made once, shared read-only — and is what the vector ends with."""
    from metarouter.router.encoder import standardised

    plain = RouteRequest.from_body({"messages": user("hello")})
    raw = tuple(plain.features())
    part = router.request_part(raw)
    assert part is router.request_part(tuple(RouteRequest.from_body({"messages": user("other")}).features()))
    assert not part.flags.writeable and part.dtype == np.float32
    assert np.array_equal(part, standardised(np.array(raw, np.float32), router.req_mean, router.req_std))
    x, _ = router.features(plain)
    assert x.dtype == np.float32 and np.array_equal(x[-len(part):], part)
    json_mode = RouteRequest.from_body({"messages": user("hello"), "response_format": {"type": "json_object"}})
    assert not np.array_equal(router.request_part(tuple(json_mode.features())), part)


def test_a_decision_writes_the_fallbacks_reasons_only_when_they_are_read(router):
    """A decision keeps its candidates as columns (:class:`Ranking`): the model ids, the choice and its reason
    come without the twenty :class:`Candidate` objects, which are the same when built, also from the columns'
    JSON (what a generation record keeps)."""
    from metarouter.router.core import Ranking

    d = router.route(user(MATH), MODELS)
    assert d.model_ids and d.reason.startswith("choice") and "ranked" not in d.__dict__
    assert d.model_ids == [c.model_id for c in d.ranked] and d.model == d.ranked[0].model_id
    assert d.reason == d.ranked[0].reason
    again = Ranking.from_record(json.loads(json.dumps(d.to_record()["ranking"])))
    assert again.candidates() == d.ranked
    assert d.to_record()["reason"] == d.to_dict()["reason"]
    none = router.route(CHAT, MODELS, Constraints(allowed=["nobody/*"]))
    assert none.ranked == [] and none.model_ids == [] and none.model is None and none.to_record()["ranking"] is None


def test_one_request_kernel_matches_the_plain_predictors(router):
    """What serves (the fused one-request kernel) is the predictors composed as fitted, at float32 tolerance, for
    every kind of request of the batteries (tools, images, systems, long conversations) and with max_tokens."""
    from pathlib import Path

    from metarouter.router.core import as_request

    fixtures = Path(__file__).parent / "fixtures"
    bodies = [json.loads(line)["request"] for name in ("everyday_battery.jsonl", "request_battery.jsonl")
              for line in (fixtures / name).read_text().splitlines() if line.strip()]
    assert len(bodies) > 50
    for i, body in enumerate(bodies):
        req = as_request(body)
        x, cov = router.features(req)
        args = (x[None, :], np.array([cov]), MODELS, np.array([req.prompt_tokens()]), 64 if i % 2 else None)
        fast, plain = router.predict(*args), router.predict_plain(*args)
        for k in ("quality", "prior_weight", "cost", "output_tokens", "familiarity", "everyday"):
            assert np.allclose(fast[k], plain[k], rtol=1e-4, atol=1e-5), (k, body)
        assert fast["category"][0] == plain["category"][0]


def test_screening_fast_path_agrees_with_the_checks(router):
    """A request without filters that fits every candidate skips the per-model checks: same candidates, same
    order, duplicates dropped; one that does not fit some falls back to them."""
    dup = MODELS + MODELS[:3]
    kept, excluded = router.screen(dup, Constraints(), 100, False)
    assert [m.id for m in kept] == [m.id for m in MODELS] and excluded == []
    small = min(m.context_length for m in MODELS)
    kept, excluded = router.screen(dup, Constraints(max_tokens=1), small, False)
    assert excluded and all("context" in why for _, why in excluded)
    assert {m.id for m in kept} | {m for m, _ in excluded} == {m.id for m in MODELS}


def test_the_dial_at_its_ends():
    """0: only quality counts; from 1 on candidates of an easy request within the tie margin are equals (the
    cheaper wins), from 7 on those of every request; 10: the cheapest, even when it is far worse."""
    from metarouter.router import policy

    cost = np.array([0.01, 0.0001])
    hard, easy = np.array([0.80, 0.79]), np.array([0.97, 0.96])
    assert policy.rank(hard, cost, 0.0)[0][0] == 0  # a point better: chosen whatever it costs
    assert policy.rank(easy, cost, 0.0)[0][0] == 0  # at 0 even on an easy request
    assert policy.rank(easy, cost, 1.0)[0][0] == 1  # from 1 on, both answer well: the cheaper
    assert policy.rank(hard, cost, 1.0)[0][0] == 0
    assert policy.rank(hard, cost, 7.0)[0][0] == 1  # within two points at 7: a tie
    assert policy.rank(np.array([0.80, 0.50]), cost, 10.0)[0][0] == 1
    assert policy.rank(np.array([0.80, 0.50]), cost, 5.0)[0][0] == 0
    # the margin grows continuously with the setting
    margins = [policy.tie(t, 0.97) for t in (0.0, 0.25, 0.5, 1.0, 3.0)]
    assert margins == sorted(margins) and margins[0] == 0.0 and margins[-1] == policy.TIE
    # the batch form agrees with the one-request form
    Q, C = np.stack([hard, easy]), np.stack([cost, cost])
    assert policy.choose(Q, C, 0.0).tolist() == [0, 0]
    assert policy.choose(Q, C, 1.0).tolist() == [0, 1]


def test_wildcards(router):
    d = router.route(CHAT, MODELS, Constraints(allowed=["anthropic/*", "openai/gpt-4o-mini*"]))
    ids = {c.model_id for c in d.ranked}
    assert ids == {m.id for m in MODELS if m.id.startswith("anthropic/") or m.id.startswith("openai/gpt-4o-mini")}
    assert all(r == "not in the allowed models" for _, r in d.excluded)
    d = router.route(CHAT, MODELS, Constraints(excluded=["*/claude-*"]))
    assert not any("claude" in c.model_id for c in d.ranked)
    assert {m for m, _ in d.excluded} == {m.id for m in MODELS if "/claude-" in m.id}


def test_context_window_and_max_tokens(router):
    long = user("word " * 300_000)  # ≈ 375k tokens: only Gemini's 1M/2M windows fit
    d = router.route(long, MODELS)
    assert {c.model_id for c in d.ranked} == {"google/gemini-pro-1.5", "google/gemini-flash-1.5"}
    assert all("context" in r for _, r in d.excluded)
    d = router.route(CHAT, MODELS, Constraints(max_tokens=10_000))
    why = dict(d.excluded)
    assert "max_tokens" in why["anthropic/claude-3.5-sonnet"]  # max output 8192
    assert "openai/gpt-4o-2024-08-06" in {c.model_id for c in d.ranked}


def test_capabilities(router):
    d = router.route(CHAT, MODELS, Constraints(needs_tools=True, needs_json=True))
    for c in d.ranked:
        m = default_catalog().get(c.model_id)
        assert m.tools and m.json_output
    why = dict(d.excluded)
    assert why["openai/o1-mini-2024-09-12"] == "does not support tools"
    img = [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    d = router.route(img, MODELS)  # vision inferred from the image part
    assert d.ranked and all(default_catalog().get(c.model_id).vision for c in d.ranked)
    assert dict(d.excluded)["deepseek/deepseek-r1"] == "does not accept images"


def test_max_price(router):
    d = router.route(CHAT, MODELS, Constraints(max_price_prompt=1.0, max_price_completion=2.0))
    for c in d.ranked:
        m = default_catalog().get(c.model_id)
        assert m.input_pico <= 1_000_000 and m.output_pico <= 2_000_000
    why = dict(d.excluded)
    assert "max_price.prompt" in why["anthropic/claude-3-opus"]
    assert "max_price.completion" in why["deepseek/deepseek-r1"]
    d = router.route(CHAT, MODELS, Constraints(max_price_request=1e-4))
    assert d.ranked and all(c.cost_usd <= 1e-4 for c in d.ranked)
    assert any("max_price.request" in r for _, r in d.excluded)
    d = router.route(CHAT, MODELS, Constraints(max_price_request=1e-12))
    assert d.ranked == [] and d.model is None and len(d.excluded) == len(MODELS)


def test_everything_filtered_out(router):
    d = router.route(CHAT, MODELS, Constraints(allowed=["nobody/*"]))
    assert d.ranked == [] and len(d.excluded) == len(MODELS)
    assert router.route(CHAT, [], None).ranked == []


@pytest.mark.parametrize("prompt", [MATH, "Write a haiku about autumn leaves.",
                                    "def f(x):\n    return [i * i for i in x]\nassert f([1, 2]) == ??",
                                    "Which amendment of the US constitution abolished slavery?"])
def test_tradeoff_monotonic(router, prompt):
    costs = [router.route(user(prompt), MODELS, tradeoff=t).ranked[0].cost_usd for t in np.linspace(0, 10, 41)]
    assert all(b <= a + 1e-15 for a, b in zip(costs, costs[1:])), costs
    at10 = router.route(user(prompt), MODELS, tradeoff=10)
    assert at10.ranked[0].cost_usd <= 10 * min(c.cost_usd for c in at10.ranked)  # among the cheapest
    q = [router.route(user(prompt), MODELS, tradeoff=t).ranked[0].quality for t in (0, 10)]
    assert q[0] >= q[1]


def test_priors_for_models_without_labels(router):
    d = router.route(user(MATH), MODELS)
    by = {c.model_id: c for c in d.ranked}
    assert router.meta["n_labels"]["deepseek/deepseek-r1"] == 0
    assert 0.05 < by["deepseek/deepseek-r1"].quality < 0.99 and by["deepseek/deepseek-r1"].prior_weight == 1.0
    # labelled only on function calling: on a maths prompt their quality comes from the prior, not from the labels
    for mid in ("anthropic/claude-2.1", "mistralai/mixtral-8x22b-instruct"):
        assert router.meta["n_labels"][mid] > 0 and by[mid].prior_weight > 0.9
    # a reasoning model priced like R1 is expected to do better than 2023's Claude 2.1
    assert by["deepseek/deepseek-r1"].quality > by["anthropic/claude-2.1"].quality
    assert by["deepseek/deepseek-r1"].output_tokens > 800  # hidden reasoning tokens are billed
    # a model the artifact has never heard of still gets a prediction from price and capabilities
    new = Model(id="acme/brand-new", name="x", provider="openai", native_model="x", context_length=32000,
                max_output_tokens=4096, input_pico=1_000_000, output_pico=2_000_000)
    d = router.route(user(MATH), MODELS + [new])
    c = next(c for c in d.ranked if c.model_id == "acme/brand-new")
    assert 0 < c.quality < 1 and c.prior_weight == 1.0


def test_unfamiliar_prompts_lean_on_priors(router):
    # competition-maths problems in MATH's own shape are familiar; noise is not
    fam_in = [router.route(user(p), MODELS).familiarity for p in (
        "Find the number of ordered pairs $(a,b)$ of integers such that $|a + bi| \\le 5.$",
        "If $f(x) = 3x^2 - 5$, what is the value of $f(f(1))$?",
        "Let $x$ and $y$ be real numbers such that $x + y = 10$ and $xy = 21$. Find $x^3 + y^3$.")]
    fam_out = router.route(user("ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺᚾᛁᛃ zxqv wplk"), MODELS).familiarity
    assert min(fam_in) > 0.5 > fam_out
    # a greeting is not like maths, MMLU-Pro or function-calling prompts
    hi = router.route(user("Say hi."), MODELS)
    assert hi.familiarity < 0.5 and hi.category == "everyday request"
    assert all(c.prior_weight > 0.5 for c in hi.ranked)
    # and a request of no known kind says that general ability decided
    odd = router.route(user("Draft a two-page cover letter for a senior data engineer position at a logistics company, "
                            "highlighting Spark, Airflow and team leadership; keep a warm but professional tone."), MODELS)
    assert odd.category is None and "general ability decides" in odd.reason


def test_catalog_changes_are_seen(router):
    m = default_catalog().get("openai/gpt-4o-mini-2024-07-18")
    cheap = router.route(CHAT, [m]).ranked[0].cost_usd
    dear = router.route(CHAT, [replace(m, output_pico=m.output_pico * 10, input_pico=m.input_pico * 10)]).ranked[0]
    assert dear.cost_usd == pytest.approx(cheap * 10, rel=1e-6)


# -- artifact and metrics --------------------------------------------------------------------------------------------
def test_artifact_round_trip(tmp_path, router):
    arrays, meta, vocab, ids = art.load(DEFAULT_ARTIFACT)
    assert DEFAULT_ARTIFACT.stat().st_size <= 20 * 2**20 and meta["router_format"] == 2
    with np.load(DEFAULT_ARTIFACT, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
    out = art.save(tmp_path / "copy.bin", arrays, meta, vocab, ids)
    a2, m2, v2, i2 = art.load(out)
    assert m2 == meta and v2 == vocab and i2 == ids
    assert all(np.array_equal(arrays[k], a2[k], equal_nan=arrays[k].dtype.kind == "f") for k in arrays)
    r2 = load_router(out)
    assert r2.route(user(MATH), MODELS).to_dict()["ranked"] == router.route(user(MATH), MODELS).to_dict()["ranked"]
    assert set(ids) >= {m.id for m in MODELS}


def test_metrics_on_a_toy_pool():
    Y = np.array([[1, 1], [0, 1], [1, 1], [1, 1]], float)
    C = np.array([[1, 100]] * 4, float)
    ref = PoolReference(Y, C)
    assert ref.best_acc == 1.0 and ref.best_cost == 100
    assert ref.aiq_zero == pytest.approx(0.875, abs=1e-3)  # hull from (1, .75) to (100, 1)
    assert ref.oracle_point.tolist() == [[25.75, 1.0]]
    assert ref.aiq_oracle == pytest.approx((100 - 25.75) / 99, abs=1e-3)  # 0 below its only point
    s = ref.summarize(ref.points_of(np.array([[0, 0, 0, 0], [0, 1, 0, 0]])))
    assert s.aiq == pytest.approx((24.75 * 0.875 + 74.25) / 99, abs=1e-3)
    assert s.gain_pts == pytest.approx(0) and s.save == pytest.approx(1 - 25.75 / 100)
    h = upper_hull(np.array([[1, 0.5], [2, 0.4], [3, 0.9], [4, 0.8]]))
    assert h.tolist() == [[1, 0.5], [3, 0.9]]
    assert aiq(np.array([[0, 1.0]]), 0, 1) == pytest.approx(1.0)


def test_split_is_deterministic():
    from metarouter.router.data import is_test

    assert is_test("zeroeval", "gsm8k-main-test-#0") == is_test("zeroeval", "gsm8k-main-test-#0")
    rng = random.Random(0)
    frac = np.mean([is_test("s", str(rng.random())) for _ in range(4000)])
    assert 0.17 < frac < 0.23


def test_predictors_share_the_contract():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    Y = (X[:, :2] @ np.array([[2.0, -2.0], [1.0, 1.0]]) > 0).astype(np.float32)
    Y[::7, 1] = np.nan
    ok = ~np.isnan(Y)
    P = KNNPredictor(k=15).fit(X, Y).predict(X)
    assert P.shape == Y.shape and np.all((P > 0) & (P < 1)) and ((P > 0.5) == (Y > 0.5))[ok].mean() > 0.8
    cat = CategoryModel().fit(X, ["a" if v > 0 else "b" for v in X[:, 0]])
    Pc = cat.predict(X)
    assert Pc.shape == (300, 2) and np.allclose(Pc.sum(1), 1, atol=1e-5)
    q = QualityModel(dim=4, epochs=200).fit(X, Pc, Y).calibrate(X, Pc, Y)
    P = q.predict(X, Pc)
    assert P.shape == Y.shape and np.all((P > 0) & (P < 1)) and ((P > 0.5) == (Y > 0.5))[ok].mean() > 0.8
    # what serves is what was fitted: a round trip through plain arrays predicts the same numbers
    q2 = QualityModel.from_arrays(q.to_arrays())
    assert np.allclose(q2.predict(X, Pc, np.array([1])), P[:, [1]], rtol=1e-5, atol=1e-6)


def test_quality_ensemble_is_one_wider_tower():
    """An ensemble of towers over seeds serves as one tower of the summed width whose logits are the members' mean."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    Pc = np.full((200, 2), 0.5, np.float32)
    Y = (X[:, :3] @ rng.normal(size=(3, 3)) > 0).astype(np.float32)
    Y[::5, 2] = np.nan
    members = [QualityModel(dim=3, epochs=80, seed=s).fit(X, Pc, Y) for s in (4, 5, 6)]
    ens = QualityModel(dim=3, epochs=80, seed=4, ensemble=3).fit(X, Pc, Y)
    assert ens.W_.shape == (8, 9) and ens.U_.shape == (3, 9) and ens.c_.shape == (3,)
    mean = np.mean([m.logits(X, Pc) for m in members], axis=0)
    assert np.allclose(ens.logits(X, Pc), mean, atol=1e-4)
    assert not np.allclose(members[0].logits(X, Pc), mean, atol=1e-2)  # the members differ: the mean is not one
    with pytest.raises(ValueError, match="ensemble"):
        QualityModel(ensemble=0).fit(X, Pc, Y)


# -- training on Not Diamond's CSV format ----------------------------------------------------------------------------
def _nd_csv(path, n=120, seed=0):
    rng = random.Random(seed)
    topics = {"math": ["integral", "derivative", "equation", "prime"], "poem": ["sonnet", "haiku", "rhyme", "verse"]}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "openai/gpt-4o-mini-2024-07-18/score", "openai/gpt-4o-mini-2024-07-18/response",
                    "anthropic/claude-3.5-sonnet/score", "acme/custom-model/score"])
        for i in range(n):
            kind = "math" if i % 2 else "poem"
            words = " ".join(rng.choice(topics[kind]) for _ in range(8))
            w.writerow([f"Please help with this {kind} task: {words} #{i}", int(kind == "poem"), "ok " * (5 + i % 7),
                        1, int(kind == "math")])


def test_train_on_notdiamond_csv(tmp_path):
    from metarouter.router.train import train

    src = tmp_path / "custom.csv"
    _nd_csv(src)
    data = load_notdiamond_csv(src)
    assert data.models == ["openai/gpt-4o-mini-2024-07-18", "anthropic/claude-3.5-sonnet", "acme/custom-model"]
    assert np.nanmean(data.correct) > 0 and not np.isnan(data.out_chars[:, 0]).any()
    out = tmp_path / "custom.npz"
    meta = train(src, out, epochs=150, quiet=True, encoder_from=DEFAULT_ARTIFACT, holdout=False, anchors=None)
    meta2 = train(src, tmp_path / "again.npz", epochs=150, quiet=True, encoder_from=DEFAULT_ARTIFACT, holdout=False,
                  anchors=None)
    assert meta["version"] == meta2["version"]  # reproducible
    r = load_router(out)
    custom = Model(id="acme/custom-model", name="c", provider="openai", native_model="c", context_length=8000,
                   max_output_tokens=1000, input_pico=100_000, output_pico=100_000)
    pool = [default_catalog().get("openai/gpt-4o-mini-2024-07-18"), custom]
    poem = r.route(user("Please help with this poem task: sonnet haiku rhyme verse verse rhyme"), pool, tradeoff=0)
    math = r.route(user("Please help with this math task: integral prime equation derivative"), pool, tradeoff=0)
    q = lambda d, m: next(c.quality for c in d.ranked if c.model_id == m)  # noqa: E731
    assert q(poem, "openai/gpt-4o-mini-2024-07-18") > q(math, "openai/gpt-4o-mini-2024-07-18")
    assert q(math, "acme/custom-model") > q(poem, "acme/custom-model")


# -- CLI -------------------------------------------------------------------------------------------------------------
def test_cli_route_explain(capsys):
    from metarouter.router.cli import main

    assert main(["route", "What is 17 * 23?", "--models", "openai/*,anthropic/*", "--explain", "--tradeoff", "5"]) == 0
    out = capsys.readouterr().out
    assert "P(good)" in out and "fallback 1" in out and "excluded" not in out and "familiarity" in out
    assert out.split()[0].startswith(("openai/", "anthropic/"))
    assert main(["route", "hello", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]


def test_cli_route_batch(tmp_path, capsys):
    from metarouter.router.cli import main

    src = tmp_path / "in.jsonl"
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    src.write_text(json.dumps({"id": "a", "prompt": MATH}) + "\n" +
                   json.dumps({"id": 7, "messages": [{"role": "user", "content": "Write a limerick"}]}) + "\n" +
                   json.dumps({"id": "w", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                               "tools": tools, "max_tokens": 300}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["route", "--batch", str(src), "--tradeoff", "0,10", "--out", str(out),
                 "--models", "openai/*,google/*"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["id"], x["tradeoff"]) for x in lines] == [("a", 0.0), ("a", 10.0), (7, 0.0), (7, 10.0), ("w", 0.0),
                                                          ("w", 10.0)]
    for x in lines:
        assert x["model"] == x["ranked"][0]["model_id"] and x["model"].startswith(("openai/", "google/"))
        assert x["reason"] == x["ranked"][0]["reason"]
    r = load_router()
    pool = default_catalog().select(["openai/*", "google/*"])
    one = r.route(user(MATH), pool, tradeoff=10)
    assert lines[1]["model"] == one.model  # batch and single routing agree
    # the tools line: models without tools are excluded, as the gateway's auto would
    assert {e["model_id"] for e in lines[4]["excluded"]} == {m.id for m in pool if not m.tools}
    assert "requests/s" in capsys.readouterr().err


def test_cli_route_batch_bad_lines(tmp_path, capsys):
    from metarouter.router.cli import main

    out = tmp_path / "out.jsonl"
    for bad, what in (('{"id": 1, "prompt": "ok"}\n{not json\n', "line 2"),
                      ('{"id": 1, "messages": "hello"}\n', "`messages`"),
                      ('{"id": 1, "prompt": "x", "max_tokens": -3}\n', "max_tokens"),
                      ('{"id": 1, "prompt": "x", "tools": {"a": 1}}\n', "`tools`")):
        src = tmp_path / "bad.jsonl"
        src.write_text(bad)
        assert main(["route", "--batch", str(src), "--out", str(out)]) == 2
        assert what in capsys.readouterr().err
        assert not out.exists()  # nothing half-written


def test_request_reading():
    tools = [{"type": "function", "function": {"name": "lookup_order", "description": "Find an order by id",
                                               "parameters": {"type": "object"}}}]
    r = RouteRequest.from_body({"messages": [{"role": "user", "content": "Where is order 42?"}], "tools": tools,
                                "response_format": {"type": "json_object"}, "max_completion_tokens": 50})
    assert r.uses_tools and r.json_mode and not r.json_schema and r.max_tokens == 50
    assert "lookup order: Find an order by id" in r.tool_text()
    assert r.prompt_tokens() > RouteRequest.from_body({"messages": r.messages}).prompt_tokens()  # tools are sent
    assert not RouteRequest.from_body({"prompt": "x", "tools": tools, "tool_choice": "none"}).uses_tools
    assert RouteRequest.from_prompt("hi").messages == [{"role": "user", "content": "hi"}]
    c = Constraints.for_request(r, allowed=["openai/*"])
    assert c.needs_tools and c.needs_json and c.max_tokens == 50 and c.allowed == ["openai/*"]


def test_the_whole_request_changes_the_prediction(router):
    """Tools, the response format and the conversation are features, not only filters."""
    tools = [{"type": "function", "function": {"name": "search_flights", "description": "Search flights between two "
              "airports on a date", "parameters": {"type": "object", "properties": {"origin": {"type": "string"}}}}}]
    ask = user("Find me a flight from Oslo to Rome next Friday.")
    pool = [m for m in MODELS if m.tools]
    plain = router.route({"messages": ask}, pool)
    with_tools = router.route({"messages": ask, "tools": tools}, pool)
    assert with_tools.familiarity != plain.familiarity or \
        [c.quality for c in with_tools.ranked] != [c.quality for c in plain.ranked]
    x0, _ = router.features(RouteRequest.from_body({"messages": ask}))
    x1, _ = router.features(RouteRequest.from_body({"messages": ask, "response_format": {"type": "json_object"}}))
    assert not np.array_equal(x0, x1)


def test_split_mask_matches_data():
    from metarouter.router.data import RoutingData

    d = RoutingData(["a", "b"], ["s", "s"], ["s", "s"], ["1", "2"], ["m"], np.zeros((2, 1)), np.zeros((2, 1)))
    assert split_mask(d).dtype == bool


def test_cli_train_and_eval_bad_input(tmp_path, capsys):
    from metarouter.router.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("question,openai/gpt-4o-mini-2024-07-18/score\nhi,1\n")
    out = tmp_path / "r.npz"
    assert main(["train", "--data", str(bad), "--out", str(out), "--quiet"]) == 2
    assert "'prompt'" in capsys.readouterr().err and not out.exists()
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out), "--quiet"]) == 2
    assert "no routing data" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit, match="no catalog model matches"):
        main(["route", "hello", "--models", "nobody/*"])
    assert main(["eval", "--data", str(bad), "--quiet"]) == 2
    assert "'prompt'" in capsys.readouterr().err


def test_features_that_never_varied_in_training_read_as_zero_and_outliers_are_clipped():
    """A feature no training request had (images, JSON mode) teaches nothing: it reads as 0, not as thousands of
    standard deviations; any other value far outside training reads as the clip."""
    from metarouter.router.encoder import FEATURE_CLIP, feature_scale, standardised

    scale = feature_scale(np.array([0.0, 2.0], np.float32))
    x = standardised(np.array([1.0, 1000.0], np.float32), np.zeros(2, np.float32), scale)
    assert abs(float(x[0])) < 1e-5 and float(x[1]) == FEATURE_CLIP
    assert float(standardised(np.array([3.0], np.float32), np.array([1.0], np.float32), np.array([2.0], np.float32))[0]) \
        == pytest.approx(1.0)


def test_training_shapes_reshape_a_share_of_requests_keeping_the_request():
    from metarouter.router import shapes

    picks = [shapes.pick(f"src\x00{i}") for i in range(4000)]
    assert abs(np.mean([k is not None for k in picks]) - shapes.SHARE) < 0.03
    assert picks == [shapes.pick(f"src\x00{i}") for i in range(4000)]  # the same requests on every run
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    for messages in ([{"role": "user", "content": "Q"}],
                     [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]):
        req = RouteRequest.from_body({"messages": messages, "tools": tools})
        seen = set()
        for k in range(64):
            r = shapes.reshape(req, k)
            roles = [m["role"] for m in r.messages]
            assert r.messages[-1] == {"role": "user", "content": "Q"} and r.tools == req.tools
            assert roles.count("system") <= 1 and roles.index("user") >= roles.count("system")  # system first
            assert roles[:-1].count("user") == roles.count("assistant")  # earlier turns come in exchanges
            if messages[0]["role"] == "system":
                assert r.messages[0] == messages[0]  # a request's own system prompt is kept (no second one)
            seen.add(tuple(roles))
        assert len(seen) >= 2
