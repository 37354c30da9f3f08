"""End to end: ``model: "auto"`` — the meta-model on the request path, its controls, fallback, stickiness, metadata."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from openrouter import OpenRouter

from metarouter.catalog import default_catalog

CATALOG = default_catalog()
OPENAI_COMPATIBLE = ["openai/*", "deepseek/*", "mistralai/*", "meta-llama/*"]
META = {"X-OpenRouter-Metadata": "enabled"}


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.api_key, max_retries=0)


def auto_plugin(**kw):
    return {"plugins": [{"id": "auto-router", **kw}]}


def ask(client, prompt: str, *, extra_body=None, headers=None, **kw):
    return client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": prompt}], extra_body=extra_body,
        extra_headers={**META, **(headers or {})}, **kw)



def cost_of(model_id: str, prompt_tokens: int, completion_tokens: int) -> float:
    m = CATALOG.get(model_id)
    return (prompt_tokens * m.input_pico + completion_tokens * m.output_pico) / 1e12


def test_auto_names_the_model_prices_it_and_explains(client, gateway):
    r = ask(client, "What is the capital of France?", extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE))
    assert r.model in CATALOG and r.model != "auto"
    assert r.usage.model_extra["cost"] == pytest.approx(cost_of(r.model, r.usage.prompt_tokens,
                                                                r.usage.completion_tokens), rel=1e-12)
    meta = r.model_extra["openrouter_metadata"]
    assert meta["strategy"] == "auto" and meta["requested"] == "auto" and meta["selected"] == r.model
    assert meta["candidates"][0]["model_id"] == r.model
    assert all(0 <= c["quality"] <= 1 and c["cost_usd"] > 0 and c["reason"] for c in meta["candidates"])
    assert meta["reason"] == meta["candidates"][0]["reason"]
    rec = gateway.generation(r.id)
    assert rec["router"] == "auto" and rec["model"] == r.model and rec["requested_model"] == "auto"
    assert rec["routing"]["candidates"] == meta["candidates"]
    assert rec["routing"]["reason"] == meta["reason"]


def test_metadata_is_kept_even_when_not_asked(client, gateway):
    r = client.chat.completions.create(model="openrouter/auto", messages=[{"role": "user", "content": "hello"}],
                                       extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE))
    assert "openrouter_metadata" not in (r.model_extra or {})
    rec = gateway.generation(r.id)
    assert rec["routing"]["candidates"][0]["model_id"] == rec["model"]


def test_allowed_and_excluded_models_with_wildcards(client):
    r = ask(client, "Explain recursion briefly.", extra_body=auto_plugin(allowed_models=["mistralai/*"]))
    assert r.model.startswith("mistralai/")
    meta = r.model_extra["openrouter_metadata"]
    assert {c["model_id"].split("/")[0] for c in meta["candidates"]} == {"mistralai"}
    r = ask(client, "Explain recursion briefly.",
            extra_body=auto_plugin(allowed_models=["openai/*"], excluded_models=["*/gpt-4o-*", "*/o1-*"]))
    assert r.model == "openai/chatgpt-4o-latest"


def test_max_price_and_cost_tier_are_obeyed(client):
    r = ask(client, "Prove that the square root of 2 is irrational, step by step.",
            extra_body={**auto_plugin(allowed_models=OPENAI_COMPATIBLE, cost_quality_tradeoff=0),
                        "provider": {"max_price": {"prompt": 1, "completion": 1}}})
    m = CATALOG.get(r.model)
    assert m.input_usd_per_mtok <= 1 and m.output_usd_per_mtok <= 1
    r = ask(client, "Prove that the square root of 2 is irrational, step by step.",
            extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE, cost_quality_tradeoff=0, cost_tier="low"))
    assert CATALOG.get(r.model).output_usd_per_mtok <= 1.5


def test_a_filter_that_leaves_nothing_is_404_naming_it(gateway):
    r = httpx.post(f"{gateway.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {gateway.api_key}"},
                   json={"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                         **auto_plugin(allowed_models=["anthropic/*"]),
                         "provider": {"max_price": {"completion": 0.5}}})
    assert r.status_code == 404, r.text
    msg = r.json()["error"]["message"]
    assert "allowed_models=['anthropic/*']" in msg and "max_price" in msg
    assert r.json()["error"]["metadata"]["excluded"]


def test_capabilities_route_only_to_models_that_can_serve(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    r = ask(client, "Look up the weather in Paris", tools=tools,
            extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE, cost_quality_tradeoff=0))
    assert CATALOG.get(r.model).tools
    meta = r.model_extra["openrouter_metadata"]
    assert all(CATALOG.get(c["model_id"]).tools for c in meta["candidates"])
    assert any("tools" in e["reason"] for e in meta["excluded"])  # o1 and deepseek-r1 take no tools
    r = ask(client, "Give me JSON", response_format={"type": "json_object"},
            extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE))
    assert CATALOG.get(r.model).json_output


def test_failing_first_choice_falls_back_and_bills_only_the_answer(client, gateway, fake):
    for p in ("openai", "deepseek", "mistral", "together"):
        fake.fail(p, status=503, times=1)
    r = ask(client, "Summarize the plot of Hamlet.", extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE))
    meta = r.model_extra["openrouter_metadata"]
    assert meta["attempts"][0]["status"] == 503
    assert meta["attempts"][0]["model"] == meta["router_choice"] != r.model
    assert meta["attempts"][-1] == {**meta["attempts"][-1], "model": r.model, "status": 200}
    rec = gateway.generation(r.id)
    assert rec["model"] == r.model
    assert rec["total_cost"] == pytest.approx(cost_of(r.model, rec["tokens_prompt"], rec["tokens_completion"]))


def test_sticky_session_holds_then_releases(client, gateway):
    sid = str(uuid.uuid4())
    body = auto_plugin(allowed_models=OPENAI_COMPATIBLE, cost_quality_tradeoff=0)
    first = ask(client, "Solve: what is 17 * 23?", extra_body={**body, "session_id": sid})
    pinned = first.model
    # the same conversation at the other end of the dial would pick something cheaper — the pin holds
    cheap = auto_plugin(allowed_models=OPENAI_COMPATIBLE, cost_quality_tradeoff=10)
    second = ask(client, "And 17 * 24?", extra_body={**cheap, "session_id": sid})
    assert second.model == pinned
    assert second.model_extra["openrouter_metadata"]["sticky"]["held"] is True
    # a different session at tradeoff 10 does not hold that pin
    other = ask(client, "And 17 * 24?", extra_body={**cheap, "session_id": sid + "-other"})
    assert other.model != pinned
    # the x-session-id header works too; a filter that excludes the pinned model releases the pin
    third = ask(client, "And 17 * 25?", headers={"x-session-id": sid},
                extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE, excluded_models=[pinned]))
    assert third.model != pinned
    assert third.model_extra["openrouter_metadata"]["sticky"]["held"] is False


def test_sticky_fingerprint_without_session_id(client):
    system = f"You are assistant {uuid.uuid4()}"
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Prove Fermat's little theorem."}]
    a = client.chat.completions.create(model="auto", messages=msgs, extra_headers=META,
                                       extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE,
                                                              cost_quality_tradeoff=0))
    msgs += [{"role": "assistant", "content": a.choices[0].message.content}, {"role": "user", "content": "thanks"}]
    b = client.chat.completions.create(model="auto", messages=msgs, extra_headers=META,
                                       extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE,
                                                              cost_quality_tradeoff=10))
    assert b.model == a.model
    assert b.model_extra["openrouter_metadata"]["sticky"]["source"] == "fingerprint"


def test_streaming_auto_with_openai_sdk(client, gateway):
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Count to three"}], stream=True,
        extra_headers=META, extra_body=auto_plugin(allowed_models=OPENAI_COMPATIBLE))
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: Count to three"
    last = chunks[-1]
    meta = last.model_extra["openrouter_metadata"]
    assert meta["selected"] == last.model and meta["strategy"] == "auto"
    rec = gateway.generation(last.id)
    assert rec["router"] == "auto" and rec["routing"]["candidates"] == meta["candidates"]


def test_openrouter_sdk_with_auto(gateway):
    c = OpenRouter(api_key=gateway.api_key, server_url=gateway.url + "/api/v1")
    r = c.chat.send(model="openrouter/auto", messages=[{"role": "user", "content": "hello"}],
                    plugins=[{"id": "auto-router", "allowed_models": OPENAI_COMPATIBLE, "cost_quality_tradeoff": 5}],
                    x_open_router_metadata="enabled")
    assert r.model in CATALOG
    assert r.openrouter_metadata.strategy == "auto" and r.openrouter_metadata.requested == "openrouter/auto"
    assert [e.model for e in r.openrouter_metadata.endpoints.available if e.selected] == [r.model]
    chunks = list(c.chat.send(model="openrouter/auto", messages=[{"role": "user", "content": "hello"}], stream=True,
                              plugins=[{"id": "auto-router", "allowed_models": OPENAI_COMPATIBLE}]))
    assert chunks[-1].usage.cost > 0 and chunks[-1].model in CATALOG


def test_models_lists_auto_without_negative_prices(gateway):
    data = httpx.get(f"{gateway.url}/api/v1/models").json()["data"]
    auto = next(m for m in data if m["id"] == "openrouter/auto")
    assert auto["context_length"] == 2_000_000
    assert float(auto["pricing"]["prompt"]) > 0 and float(auto["pricing"]["completion"]) > 0


def test_bad_controls_are_400(gateway):
    for plugin, frag in (({"cost_quality_tradeoff": 11}, "cost_quality_tradeoff"),
                         ({"cost_tier": "cheapest"}, "cost_tier"),
                         ({"cost_tier": ["low"]}, "cost_tier"),
                         ({"allowed_models": "openai/*"}, "allowed_models")):
        r = httpx.post(f"{gateway.url}/api/v1/chat/completions",
                       headers={"Authorization": f"Bearer {gateway.api_key}"},
                       json={"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                             **auto_plugin(**plugin)})
        assert r.status_code == 400 and frag in r.json()["error"]["message"]


def test_default_tradeoff_routes_easy_and_hard_prompts_differently(client, gateway):
    """Over the whole pool (every family served by its fake), at the default tradeoff."""
    easy = ask(client, "What is the capital of France?")
    hard = ask(client, "Let f(x) = x^3 - 6x^2 + 11x - 6. Find all real roots and the area enclosed between f and "
                       "the x-axis between the smallest and largest root. Show every step.")
    assert easy.model != hard.model
    e, h = (r.model_extra["openrouter_metadata"] for r in (easy, hard))
    assert e["tradeoff"] == h["tradeoff"] == pytest.approx(e["tradeoff"])  # both at the router's default
    assert len(e["candidates"]) == 20
    # the hard prompt's choice is predicted to be at least as good there as the easy prompt's choice
    q = {c["model_id"]: c["quality"] for c in h["candidates"]}
    assert q[hard.model] >= q[easy.model]
    for r in (easy, hard):
        assert gateway.generation(r.id)["model"] == r.model


def test_route_endpoint_decides_without_calling_or_charging(gateway, fake):
    from metarouter.router import load_router
    from metarouter.router.cli import _decide

    key = gateway.create_key("route-only", limit=0.01)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"messages": [{"role": "user", "content": "Prove that there are infinitely many primes."}],
            "max_tokens": 500}
    before = len(fake.requests)
    r = httpx.post(f"{gateway.url}/api/v1/route", json=body, headers=auth)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "route" and d["model"] == d["candidates"][0]["model_id"] == d["router_choice"]
    assert d["reason"].startswith("choice") and d["fallbacks"] == [c["model_id"] for c in d["candidates"][1:]]
    # the same decision as the CLI's `route` for the same request (every provider is available here)
    cli = _decide(load_router(), body, list(CATALOG), None)
    assert [c["model_id"] for c in d["candidates"]] == cli.model_ids and d["reason"] == cli.reason
    # nothing called, nothing recorded, nothing charged
    assert len(fake.requests) == before
    k = httpx.get(f"{gateway.url}/api/v1/key", headers=auth).json()["data"]
    assert k["usage"] == 0
    # controls apply as for chat; bad input gets a 400 in OpenRouter's error shape
    r = httpx.post(f"{gateway.url}/v1/route", headers=auth,
                   json={**body, **auto_plugin(allowed_models=["anthropic/*"], cost_quality_tradeoff=0)})
    assert r.status_code == 200 and r.json()["model"].startswith("anthropic/")
    for bad in ({"model": "openai/gpt-4o-2024-08-06", **body}, {"messages": "hi"}, {"messages": []}):
        r = httpx.post(f"{gateway.url}/api/v1/route", json=bad, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["message"], bad
    assert httpx.post(f"{gateway.url}/api/v1/route", json=body).status_code == 401
