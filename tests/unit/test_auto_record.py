"""What an ``auto`` request's generation record keeps of the decision: the ranked candidates as columns (cheap to
write), shown expanded — the same candidates, reasons and key order as the decision's own dicts — wherever the API
shows them; records written before (with their ``candidates`` list) read as they were."""

from __future__ import annotations

import orjson

from metarouter.api.app import generation_view
from metarouter.catalog import default_catalog
from metarouter.config import Settings
from metarouter.gateway.auto import AutoResolver
from metarouter.gateway.pipeline import RequestContext, routing_view
from metarouter.providers.base import ProviderConfig
from metarouter.router import RouteRequest


def _resolver() -> AutoResolver:
    catalog = default_catalog()
    providers = {m.provider: ProviderConfig(name=m.provider, base_url="http://127.0.0.1:9", api_key="k")
                 for m in catalog}
    return AutoResolver(Settings(providers=providers, catalog=catalog), catalog)


BODY = {"model": "auto", "max_tokens": 300,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Prove that the square root of 2 is irrational."}]}


async def test_the_record_keeps_columns_and_the_plan_shows_the_decisions_candidates():
    resolver = _resolver()
    plan = await resolver.plan(BODY, RequestContext(key=None), ["auto"])
    rec = plan.record_routing
    assert "candidates" not in rec and set(rec["ranking"]) >= {"model_id", "quality", "order", "familiarity"}
    shown = plan.routing
    assert list(shown) == [("candidates" if k == "ranking" else k) for k in rec]  # same keys, same places
    req = RouteRequest.from_body(BODY)
    constraints, tradeoff = resolver.constraints(req, {})
    d = resolver.router.route(req, resolver.pool(), constraints, tradeoff)
    assert shown["candidates"] == [c.to_dict() for c in d.ranked]  # every reason, as the decision writes it
    assert shown["reason"] == d.reason == shown["candidates"][0]["reason"]
    assert [c["model_id"] for c in shown["candidates"]] == [m.id for m in plan.candidates]


async def test_a_stored_ranking_reads_back_as_candidates_and_an_older_record_as_it_was():
    plan = await _resolver().plan(BODY, RequestContext(key=None), ["auto"])
    stored = orjson.loads(orjson.dumps(plan.record_routing))  # what the store writes and reads back
    assert routing_view(stored) == plan.routing
    rec = {"id": "gen-1", "created_at": 0.0, "model": "m", "requested_model": "auto", "provider": "p",
           "cost_pico": 0, "prompt_tokens": 1, "completion_tokens": 1, "reasoning_tokens": 0, "cached_tokens": 0,
           "usage_estimated": False, "latency_ms": 1.0, "ttft_ms": 1.0, "finish_reason": "stop",
           "native_finish_reason": "stop", "streamed": False, "status": "ok", "routing": stored}
    assert generation_view(rec)["routing"] == plan.routing
    older = orjson.loads(orjson.dumps(plan.routing))  # a record written with the candidates' dicts
    assert generation_view({**rec, "routing": older})["routing"] == older
    cache_hit = {"reason": "served from the response cache", "cache": {"hit": True}}
    assert generation_view({**rec, "routing": cache_hit})["routing"] == cache_hit
