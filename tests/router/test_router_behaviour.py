"""What users see of the shipped router, held on our own batteries (fixtures/*.jsonl, written for these tests and
never trained on): everyday requests go to cheap models, hard ones keep capable models, the dial means what
OpenRouter's means, explanations say why, and the gateway's ``auto`` and the CLI decide alike.

Thresholds are behaviours, not benchmark figures (those are in bench/router/RESULTS.md); they leave room for the
float32 rounding of another machine's BLAS: every comparison is of choices or of shares over dozens of requests.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from metarouter.catalog import Catalog, default_catalog
from metarouter.config import Settings
from metarouter.gateway.auto import AutoResolver, StickySessions
from metarouter.gateway.pipeline import RequestContext
from metarouter.providers.base import ProviderConfig
from metarouter.router import Constraints, RouteRequest, load_router

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = list(default_catalog())
REASONING = {m.id for m in MODELS if m.reasoning}
#: capable models for a hard proof or algorithm (the frontier models of the catalog's time and the reasoning ones)
STRONG = REASONING | {"anthropic/claude-3.5-sonnet", "anthropic/claude-3-opus", "openai/gpt-4o-2024-08-06",
                      "openai/gpt-4o-2024-05-13", "openai/chatgpt-4o-latest", "google/gemini-pro-1.5",
                      "meta-llama/llama-3.1-405b-instruct", "mistralai/mistral-large-2407"}


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


BATTERY = _load("everyday_battery.jsonl")
TRIVIAL = [b["request"] for b in BATTERY if b["kind"] == "trivial"]
HARD = [b["request"] for b in BATTERY if b["kind"] == "hard"]


@pytest.fixture(scope="module")
def router():
    return load_router()


def _route(router, body, tradeoff=None):
    req = RouteRequest.from_body(body)
    return router.route(req, MODELS, Constraints.for_request(req), tradeoff)


def test_the_batteries_are_what_they_say():
    assert len(TRIVIAL) >= 50 and len(HARD) >= 40
    from metarouter.router.train import ANCHORS

    def texts(bodies):
        return {b.get("prompt") or b["messages"][-1]["content"] for b in bodies}

    anchors = texts(json.loads(x) for x in ANCHORS.read_text(encoding="utf-8").splitlines() if x.strip())
    assert not anchors & texts(TRIVIAL + HARD)  # never trained on


def test_everyday_requests_go_to_cheap_models_at_the_default(router):
    decisions = [_route(router, b) for b in TRIVIAL]
    assert not [d.model for d in decisions if d.model in REASONING]  # no hidden reasoning for a greeting
    assert np.mean([d.ranked[0].cost_usd for d in decisions]) <= 0.0005
    # and they say why: the choice does not matter, so price decides
    said = [d.reason for d in decisions]
    assert sum(any(w in r for w in ("expected to answer well", "as good as the best", "less cost")) for r in said) \
        >= 0.8 * len(said), said[:5]


def test_hard_requests_keep_capable_models(router):
    strong = {t: np.mean([_route(router, b, t).model in STRONG for b in HARD]) for t in (0, 5, None)}
    assert strong[0] >= 0.95 and strong[5] >= 0.9
    assert strong[None] >= 0.8


def test_the_dial_is_a_per_request_judgment(router):
    """At the default a hard request costs far more than a trivial one: the dial does not move every prompt to one
    model; along the dial each request's choice only gets cheaper."""
    for t in (5, 7):
        hard = np.mean([_route(router, b, t).ranked[0].cost_usd for b in HARD])
        easy = np.mean([_route(router, b, t).ranked[0].cost_usd for b in TRIVIAL])
        assert hard > 3 * easy
        assert len({_route(router, b, t).model for b in HARD + TRIVIAL}) >= 3
    for b in HARD[:10] + TRIVIAL[:10]:
        costs = [_route(router, b, t).ranked[0].cost_usd for t in np.linspace(0, 10, 21)]
        assert all(y <= x * (1 + 1e-6) for x, y in zip(costs, costs[1:])), costs


GSM = {"messages": [{"role": "user", "content": "A baker makes 24 muffins each hour for 6 hours and sells 3/4 of them "
                                              "at $2 each. How much money does she make?"}]}
def test_familiarity_means_something(router):
    fam_trivial = np.mean([_route(router, b).familiarity for b in TRIVIAL])
    assert fam_trivial < 0.5 < _route(router, GSM).familiarity


#: conversations' heads written for this test (not the training's shapes, router/shapes.py)
HEADS = ([{"role": "system", "content": "You are an assistant. Answer carefully and completely."}],
         [{"role": "user", "content": "hey there"}, {"role": "assistant", "content": "Hi! What can I do for you?"}],
         [{"role": "system", "content": "You work for Acme support."}, {"role": "user", "content": "hello again"},
          {"role": "assistant", "content": "Welcome back! What do you need?"}])


def test_a_system_prompt_or_earlier_turns_do_not_decide_alone(router):
    """No labelled prompt has a system prompt or a conversation before it; real requests often do. Neither makes a
    hard request an everyday one (a competition problem behind "You are a helpful assistant." once went to the
    cheapest model as "everyday"), nor a request of a labelled domain unfamiliar."""
    bare = [{"messages": [{"role": "user", "content": b["prompt"]}]} if "prompt" in b else b for b in HARD]
    bare = [b for b in bare if [m["role"] for m in b["messages"]] == ["user"]]
    assert len(bare) >= 30
    strong = np.mean([_route(router, b).model in STRONG for b in bare])
    fam = np.mean([_route(router, b).familiarity for b in bare])
    for head in HEADS:
        shaped = [{**b, "messages": head + b["messages"]} for b in bare]
        assert np.mean([_route(router, b).model in STRONG for b in shaped]) >= strong - 0.1, head
        assert np.mean([_route(router, b).familiarity for b in shaped]) >= fam - 0.15, head
        assert _route(router, {"messages": head + GSM["messages"]}).familiarity > 0.5, head


def test_quality_saturates_on_easy_requests_and_separates_on_hard_ones(router):
    def spread(body):
        q = sorted(c.quality for c in _route(router, body).ranked)
        return q[-1] - q[len(q) // 4]

    assert np.median([spread(b) for b in TRIVIAL]) < np.median([spread(b) for b in HARD])


@pytest.fixture(scope="module")
def resolver():
    catalog = default_catalog()
    providers = {m.provider: ProviderConfig(name=m.provider, base_url="http://127.0.0.1:9", api_key="k")
                 for m in catalog}
    return AutoResolver(Settings(providers=providers, catalog=Catalog(catalog)), catalog, sticky=StickySessions())


def test_gateway_and_cli_decide_alike(router, resolver):
    from metarouter.router.cli import _decide

    requests = [r["request"] for r in _load("request_battery.jsonl")] + TRIVIAL[:5] + HARD[:5]

    async def plan(body):
        return await resolver.plan({"model": "auto", **body}, RequestContext(key=None), ["auto"])

    for body in requests:
        if "prompt" in body:
            body = {"messages": [{"role": "user", "content": body["prompt"]}],
                    **{k: v for k, v in body.items() if k != "prompt"}}
        p = asyncio.run(plan(body))
        d = _decide(router, body, MODELS, None)
        assert [m.id for m in p.candidates] == d.model_ids
        assert p.routing["reason"] == d.reason


def test_request_battery_features(router):
    """Tools exclude models without them; images exclude models without vision; JSON mode those without it."""
    for item in _load("request_battery.jsonl"):
        d = _route(router, item["request"])
        kept = {c.model_id for c in d.ranked}
        cat = default_catalog()
        if item["category"] == "tools" and item["request"].get("tool_choice") != "none":
            assert all(cat.get(m).tools for m in kept)
        if item["category"] == "image":
            assert all(cat.get(m).vision for m in kept)
        if item["category"] == "json":
            assert all(cat.get(m).json_output for m in kept)
        assert d.ranked and d.reason.startswith("choice")
