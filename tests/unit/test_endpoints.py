"""Several endpoints for one model, in-process (MockTransport upstreams, a real SQLite store): the default order
(cheapest first, falling back among them), OpenRouter's ``provider`` object, ``:nitro``/``:floor``, pricing at the
serving endpoint, a breaker per endpoint, and the fast path of a model with one endpoint."""

from __future__ import annotations

import time
from typing import Any

import pytest

from metarouter.config import load_settings
from metarouter.errors import GatewayError
from metarouter.gateway.endpoints import parse_prefs
from metarouter.gateway.pipeline import Gateway, RequestContext
from metarouter.gateway.upstream import MockResponse, MockTransport, UpstreamRequest
from metarouter.store import new_generation_id

LLAMA = "meta-llama/llama-3.1-70b-instruct"  # default endpoint: Together, $0.12 / $0.30 per 1M tokens
MINI = "openai/gpt-4o-mini-2024-07-18"
ENDPOINTS = {
    "fireworks": {"native_model": "accounts/fireworks/models/llama-v3p1-70b-instruct",
                  "input_usd_per_1m": 0.9, "output_usd_per_1m": 0.9},
    "deepinfra": {"input_usd_per_1m": 0.23, "output_usd_per_1m": 0.4, "max_output_tokens": 4096},
}


def settings(providers: dict | None = None, **extra: Any):
    hosts = ("openai", "together", "fireworks", "deepinfra")
    return load_settings(env={f"{h.upper()}_KEY": "sk-test" for h in hosts}, overrides={
        "providers": {h: {"base_url": f"http://{h}.test/v1", "api_key_env": f"{h.upper()}_KEY"} for h in hosts}
        | {"deepinfra": {"base_url": "http://deepinfra.test/v1", "api_key_env": "DEEPINFRA_KEY",
                         "retains_data": False}} | (providers or {}),
        "models": {LLAMA: {"endpoints": ENDPOINTS}},
        "timeouts": {"connect": 1, "first_byte": 5, "total": 30},
        "resilience": {"retries": 0, "backoff_base": 0.0, "backoff_max": 0.0, "breaker_failures": 100},
        **extra,
    })


def answer(prompt: int = 10, completion: int = 5) -> MockResponse:
    return MockResponse(200, json={
        "id": "up", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })


class Hosts:
    """Answers per upstream host; ``failing`` hosts answer 503. ``seen``: (host, native model) of each request."""

    def __init__(self, *failing: str):
        self.failing = set(failing)
        self.seen: list[tuple[str, str]] = []

    def __call__(self, req: UpstreamRequest) -> MockResponse:
        host = req.url.split("//", 1)[1].split(".test", 1)[0]
        self.seen.append((host, req.json()["model"]))
        if host in self.failing:
            return MockResponse(503, json={"error": {"message": f"{host} is overloaded", "type": "server_error"}})
        return answer()

    @property
    def hosts(self) -> list[str]:
        return [h for h, _ in self.seen]


async def gateway(store, hosts: Hosts, **extra: Any) -> Gateway:
    gw = Gateway(settings(**extra), store, client=MockTransport(hosts))
    await gw.start()
    return gw


def body(model: str = LLAMA, **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def key(store):
    _, k = await store.create_key("t", limit_pico=10**12)
    return k


# --- the catalog ---------------------------------------------------------------------------------------------------
def test_endpoints_come_from_the_config_with_the_default_first():
    s = settings()
    llama = s.catalog.get(LLAMA)
    eps = s.catalog.endpoints(llama)
    assert [e.provider for e in eps] == ["together", "fireworks", "deepinfra"]
    fw = eps[1]
    assert (fw.id, fw.native_model, fw.input_pico, fw.output_pico) == (
        LLAMA, "accounts/fireworks/models/llama-v3p1-70b-instruct", 900_000, 900_000)
    di = eps[2]  # the fields it does not set are the default endpoint's
    assert (di.native_model, di.context_length, di.max_output_tokens) == (llama.native_model, llama.context_length,
                                                                          4096)
    assert s.catalog.endpoints(s.catalog.get(MINI)) == (s.catalog.get(MINI),)


def test_bad_endpoint_config_is_refused():
    with pytest.raises(ValueError, match="cannot set"):
        settings(models={LLAMA: {"endpoints": {"fireworks": {"provider": "x"}}}})
    with pytest.raises(ValueError, match="already its default provider"):
        settings(models={LLAMA: {"endpoints": {"together": {"input_usd_per_1m": 1}}}})
    with pytest.raises(ValueError, match="without configuration: nowhere"):
        settings(models={LLAMA: {"endpoints": {"nowhere": {}}}})


def test_disabling_the_default_provider_keeps_the_model_on_its_other_endpoints():
    s = load_settings(env={}, overrides={
        "providers": {"together": False, "fireworks": {"base_url": "http://fireworks.test/v1"}},
        "models": {LLAMA: {"endpoints": {"fireworks": ENDPOINTS["fireworks"]}}}})
    m = s.catalog.get(LLAMA)
    assert m.provider == "fireworks" and s.catalog.endpoints(m) == (m,)


# --- the default order -------------------------------------------------------------------------------------------
async def test_cheapest_first_falls_back_to_the_next_and_bills_the_serving_endpoint(store):
    hosts = Hosts("together")
    gw = await gateway(store, hosts)
    k = await key(store)
    r = await gw.complete(body(), RequestContext(key=k, want_metadata=True))
    assert hosts.hosts == ["together", "deepinfra"]  # $0.12/$0.30 failed, then $0.23/$0.40; never Fireworks
    assert r["provider"] == "DeepInfra"
    # 10 prompt tokens at DeepInfra's $0.23/M and 5 completion tokens at its $0.40/M
    assert r["usage"]["cost"] == pytest.approx((10 * 0.23 + 5 * 0.4) / 1e6)
    meta = r["openrouter_metadata"]
    assert [(a["provider"], a["status"]) for a in meta["attempts"]] == [("Together", 503), ("DeepInfra", 200)]
    assert [e["provider"] for e in meta["endpoints"]["available"]] == ["Together", "DeepInfra", "Fireworks"]
    assert [e["selected"] for e in meta["endpoints"]["available"]] == [False, True, False]
    rec = (await store.list_generations(key_id=k.public_id))[0]
    assert (rec["model"], rec["provider"], rec["cost_pico"]) == (LLAMA, "deepinfra", 10 * 230_000 + 5 * 400_000)
    assert (await store.get_key(k.public_id)).usage_pico == 10 * 230_000 + 5 * 400_000


async def test_the_native_model_id_of_the_endpoint_is_sent(store):
    hosts = Hosts()
    gw = await gateway(store, hosts)
    await gw.complete(body(provider={"only": ["fireworks"]}), RequestContext(key=None))
    assert hosts.seen == [("fireworks", "accounts/fireworks/models/llama-v3p1-70b-instruct")]


async def test_a_breaker_per_endpoint(store):
    hosts = Hosts("together")
    gw = await gateway(store, hosts, resilience={"retries": 0, "backoff_base": 0.0, "breaker_failures": 1,
                                                 "breaker_cooldown": 60})
    await gw.complete(body(), RequestContext(key=None))
    hosts.seen.clear()
    r = await gw.complete(body(), RequestContext(key=None, want_metadata=True))
    assert hosts.hosts == ["deepinfra"]  # Together's circuit is open: not sent to
    attempts = r["openrouter_metadata"]["attempts"]
    assert attempts[0]["provider"] == "Together" and "circuit open" in attempts[0]["error"]
    hosts.seen.clear()
    await gw.complete(body(provider={"only": ["deepinfra"]}), RequestContext(key=None))
    assert hosts.hosts == ["deepinfra"]  # the model's other endpoints are healthy


# --- the provider object -----------------------------------------------------------------------------------------
async def test_order_goes_first_then_the_rest_unless_fallbacks_are_off(store):
    hosts = Hosts("fireworks")
    gw = await gateway(store, hosts)
    r = await gw.complete(body(provider={"order": ["Fireworks"]}), RequestContext(key=None))
    assert hosts.hosts == ["fireworks", "together"] and r["provider"] == "Together"
    hosts.seen.clear()
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(provider={"order": ["fireworks"], "allow_fallbacks": False}), RequestContext(key=None))
    assert hosts.hosts == ["fireworks"] and e.value.status == 503
    hosts.seen.clear()
    hosts.failing = {"together"}
    with pytest.raises(GatewayError):
        await gw.complete(body(provider={"allow_fallbacks": False}), RequestContext(key=None))
    assert hosts.hosts == ["together"]  # without order: the first endpoint only


async def test_only_and_ignore(store):
    hosts = Hosts()
    gw = await gateway(store, hosts)
    await gw.complete(body(provider={"ignore": ["together", "deepinfra"]}), RequestContext(key=None))
    await gw.complete(body(provider={"only": ["deepinfra", "fireworks"]}), RequestContext(key=None))
    assert hosts.hosts == ["fireworks", "deepinfra"]
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(provider={"only": ["openai"]}), RequestContext(key=None))
    assert e.value.status == 404 and e.value.message == "No allowed providers are available for the selected model."
    assert e.value.metadata["available_providers"] == ["together", "fireworks", "deepinfra"]
    assert e.value.metadata["requested_providers"] == ["openai"]


async def test_models_fallback_after_every_endpoint_of_the_first(store):
    hosts = Hosts("together", "deepinfra", "fireworks")
    gw = await gateway(store, hosts)
    r = await gw.complete(body(models=[MINI]), RequestContext(key=None))
    assert hosts.hosts == ["together", "deepinfra", "fireworks", "openai"] and r["model"] == MINI
    hosts.seen.clear()
    # a model the preferences leave no endpoint of is passed over for the next
    r = await gw.complete(body(models=[MINI], provider={"only": ["openai"]}), RequestContext(key=None))
    assert hosts.hosts == ["openai"]


async def test_max_price_filters_endpoints(store):
    hosts = Hosts("together")
    gw = await gateway(store, hosts)
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(provider={"max_price": {"prompt": 0.2}}), RequestContext(key=None))
    assert hosts.hosts == ["together"] and e.value.status == 503  # DeepInfra ($0.23) and Fireworks are above
    hosts.seen.clear()
    r = await gw.complete(body(provider={"max_price": {"prompt": "0.5", "completion": 0.4}}), RequestContext(key=None))
    assert hosts.hosts == ["together", "deepinfra"] and r["provider"] == "DeepInfra"
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(provider={"max_price": {"completion": 0.1}}), RequestContext(key=None))
    assert e.value.status == 404 and "max_price" in e.value.message


async def test_data_collection_deny_keeps_endpoints_that_retain_nothing(store):
    hosts = Hosts()
    gw = await gateway(store, hosts)
    r = await gw.complete(body(provider={"data_collection": "deny"}), RequestContext(key=None))
    assert hosts.hosts == ["deepinfra"] and r["provider"] == "DeepInfra"  # configured retains_data: false
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(MINI, provider={"data_collection": "deny"}), RequestContext(key=None))
    assert e.value.status == 404 and "data policy" in e.value.message


def _sample(provider: str, tokens_per_s: float, *, cache_hit: bool = False) -> dict:
    """A streamed answer of 100 tokens at ``tokens_per_s`` after a first token at 1000 / ``tokens_per_s`` ms."""
    ttft = 1000.0 / tokens_per_s * 10
    routing = {"cache": {"hit": True}} if cache_hit else None
    return {"id": new_generation_id(), "created_at": time.time(), "key_id": None, "requested_model": LLAMA,
            "model": LLAMA, "provider": provider, "streamed": True, "status": "ok", "prompt_tokens": 5,
            "completion_tokens": 100, "reasoning_tokens": 0, "cached_tokens": 0, "usage_estimated": False,
            "cost_pico": 0, "latency_ms": ttft + 100 * 1000.0 / tokens_per_s, "ttft_ms": ttft, "attempts": [],
            "routing": routing}


async def test_sort_by_throughput_and_latency_from_the_records_and_nitro(store):
    for provider, speed in (("fireworks", 300.0), ("deepinfra", 100.0), ("together", 30.0)):
        store.record_generation(_sample(provider, speed))
    store.record_generation(_sample("together", 100_000.0, cache_hit=True))  # a hit: Together was not called
    await store.flush()
    hosts = Hosts("fireworks", "deepinfra", "together")
    gw = await gateway(store, hosts)
    for request in (body(provider={"sort": "throughput"}), body(LLAMA + ":nitro"),
                    body(provider={"sort": {"by": "latency"}})):
        hosts.seen.clear()
        with pytest.raises(GatewayError):
            await gw.complete(request, RequestContext(key=None))
        assert hosts.hosts == ["fireworks", "deepinfra", "together"], request
    hosts.seen.clear()
    with pytest.raises(GatewayError):
        await gw.complete(body(LLAMA + ":floor"), RequestContext(key=None))
    assert hosts.hosts == ["together", "deepinfra", "fireworks"]


async def test_endpoints_without_samples_sort_after_those_with_them(store):
    store.record_generation(_sample("fireworks", 50.0))
    await store.flush()
    hosts = Hosts("fireworks", "deepinfra", "together")
    gw = await gateway(store, hosts)
    with pytest.raises(GatewayError):
        await gw.complete(body(provider={"sort": "throughput"}), RequestContext(key=None))
    assert hosts.hosts == ["fireworks", "together", "deepinfra"]  # then cheapest first


async def test_one_endpoint_and_no_preferences_ask_nothing_of_the_store(store, monkeypatch):
    calls = []

    async def samples(*args):
        calls.append(args)
        return []

    monkeypatch.setattr(store, "endpoint_samples", samples)
    hosts = Hosts()
    gw = await gateway(store, hosts)
    await gw.complete(body(MINI), RequestContext(key=None))
    await gw.complete(body(MINI, provider={"sort": "throughput"}), RequestContext(key=None))  # one endpoint
    await gw.complete(body(), RequestContext(key=None))  # several, sorted by price: no stats needed
    assert calls == []
    await gw.complete(body(provider={"sort": "throughput"}), RequestContext(key=None))
    await gw.complete(body(LLAMA + ":nitro"), RequestContext(key=None))
    assert len(calls) == 1  # measured once, then served from the process's cache


async def test_auto_applies_the_endpoint_order_to_the_model_it_chose(store):
    from metarouter.gateway.auto import AutoResolver

    hosts = Hosts("together")
    gw = await gateway(store, hosts)
    gw.resolver = AutoResolver(gw.settings, gw.catalog)
    r = await gw.complete(body("auto", plugins=[{"id": "auto-router", "allowed_models": [LLAMA]}],
                               provider={"order": ["fireworks"], "allow_fallbacks": False}),
                          RequestContext(key=None))
    assert r["model"] == LLAMA and hosts.hosts == ["fireworks"] and r["provider"] == "Fireworks"


# --- bad preferences: a 400 naming the field -----------------------------------------------------------------------
KNOWN = {"together": "together", "fireworks": "fireworks", "deepinfra": "deepinfra"}


@pytest.mark.parametrize("prefs, param", [
    ("together", "provider"),
    ({"only": ["nowhere"]}, "provider.only"),
    ({"order": "together"}, "provider.order"),
    ({"ignore": [1]}, "provider.ignore"),
    ({"sort": "fastest"}, "provider.sort"),
    ({"sort": {"by": "price", "partition": "none"}}, "provider.sort.partition"),
    ({"max_price": {"prompt": -1}}, "provider.max_price.prompt"),
    ({"max_price": {"completion": "cheap"}}, "provider.max_price.completion"),
    ({"max_price": {"prompt": "NaN"}}, "provider.max_price.prompt"),
    ({"max_price": {"tokens": 1}}, "provider.max_price"),
    ({"max_price": 1}, "provider.max_price"),
    ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
    ({"require_parameters": 1}, "provider.require_parameters"),
    ({"data_collection": "never"}, "provider.data_collection"),
    ({"quantizations": ["int4"]}, "provider.quantizations"),
    ({"fastest": True}, "provider"),
])
def test_bad_preferences(prefs, param):
    with pytest.raises(GatewayError) as e:
        parse_prefs(prefs, KNOWN)
    assert e.value.status == 400 and e.value.metadata["param"] == param, e.value.message


def test_names_resolve_case_and_display_insensitively():
    gw_names = Gateway(settings(), store=None).provider_names  # type: ignore[arg-type]
    p = parse_prefs({"order": ["DeepInfra", "TOGETHER"], "only": ["Fireworks", "deepinfra", "together"],
                     "quantizations": [], "zdr": None}, gw_names)
    assert p.order == ("deepinfra", "together") and p.only == {"fireworks", "deepinfra", "together"}


async def test_a_model_whose_default_provider_has_no_key_is_served_by_its_others(store):
    from metarouter.gateway.auto import AutoResolver

    s = settings()
    s.providers["together"].api_key = None  # Together configured, but without its key
    hosts = Hosts()
    gw = Gateway(s, store, client=MockTransport(hosts))
    await gw.start()
    assert LLAMA in {m.id for m in AutoResolver(s, s.catalog).pool()}
    r = await gw.complete(body(), RequestContext(key=None, want_metadata=True))
    assert hosts.hosts == ["deepinfra"] and r["provider"] == "DeepInfra"
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(provider={"only": ["together"]}), RequestContext(key=None))
    assert e.value.status == 503 and "provider 'together'" in e.value.message


async def test_a_self_hosted_openai_compatible_server_is_an_endpoint_of_its_own_name(store):
    hosts = Hosts()
    s = settings(providers={"my-vllm": {"base_url": "http://my-vllm.test/v1"}},
                 models={LLAMA: {"endpoints": {"my-vllm": {"native_model": "llama3.1:70b", "input_usd_per_1m": 0,
                                                           "output_usd_per_1m": 0}}}})
    gw = Gateway(s, store, client=MockTransport(hosts))
    await gw.start()
    r = await gw.complete(body(), RequestContext(key=None))  # free: the cheapest
    assert hosts.seen == [("my-vllm", "llama3.1:70b")] and r["provider"] == "my-vllm" and r["usage"]["cost"] == 0
    hosts.seen.clear()
    await gw.complete(body(provider={"ignore": ["MY-VLLM"]}), RequestContext(key=None))
    assert hosts.hosts == ["together"]


async def test_the_listing_shows_each_endpoints_health_and_measurements(store):
    from metarouter.api.app import ENDPOINT_DOWN, ENDPOINT_UP, endpoint_schema

    store.record_generation(_sample("fireworks", 100.0))
    await store.flush()
    hosts = Hosts("together")
    gw = await gateway(store, hosts, resilience={"retries": 0, "backoff_base": 0.0, "breaker_failures": 1,
                                                 "breaker_cooldown": 60})
    await gw.complete(body(), RequestContext(key=None))  # Together fails once: its circuit opens
    stats = await gw.endpoint_stats.get()
    by = {e.provider: endpoint_schema(e, gw, stats) for e in gw.catalog.endpoints(gw.catalog.get(LLAMA))}
    assert (by["together"]["status"], by["deepinfra"]["status"]) == (ENDPOINT_DOWN, ENDPOINT_UP)
    assert by["fireworks"]["throughput_last_30m"]["p50"] == 100.0 and by["fireworks"]["latency_last_30m"]["p50"] == 100.0
    # DeepInfra's answer just now counts too (measured after it); Together never answered
    assert by["deepinfra"]["latency_last_30m"] is not None and by["together"]["latency_last_30m"] is None
    assert by["deepinfra"]["pricing"]["completion"] == "0.0000004" and by["deepinfra"]["max_completion_tokens"] == 4096


# --- auto prices a model at its cheapest endpoint; endpoints too small for a request go last ------------------------
CHEAP = {**ENDPOINTS, "deepinfra": {**ENDPOINTS["deepinfra"], "input_usd_per_1m": 0.05, "output_usd_per_1m": 0.08,
                                    "max_output_tokens": 2048}}


def test_the_routing_view_is_the_cheapest_available_endpoint_with_the_widest_limits():
    s = settings(models={LLAMA: {"endpoints": CHEAP}})
    llama = s.catalog.get(LLAMA)
    view = s.catalog.routing_view(llama, {"together", "fireworks", "deepinfra"})
    assert (view.provider, view.input_pico, view.output_pico) == ("deepinfra", 50_000, 80_000)
    assert view.max_output_tokens == llama.max_output_tokens > 2048  # DeepInfra's own is 2,048: the widest counts
    assert s.catalog.endpoints(view) == s.catalog.endpoints(llama)  # any endpoint leads to all of them
    assert s.catalog.routing_view(llama, {"fireworks"}).provider == "fireworks"
    assert s.catalog.routing_view(llama, set()) is None
    mini = s.catalog.get(MINI)
    assert s.catalog.routing_view(mini, {"openai"}) is mini


async def test_auto_prices_a_model_at_its_cheapest_endpoint_and_is_served_there(store):
    from metarouter.gateway.auto import AutoResolver

    hosts = Hosts()
    gw = Gateway(settings(models={LLAMA: {"endpoints": CHEAP}}), store, client=MockTransport(hosts))
    await gw.start()
    gw.resolver = AutoResolver(gw.settings, gw.catalog)
    b = body("auto", plugins=[{"id": "auto-router", "allowed_models": [LLAMA]}])
    plan = await gw.resolver.plan(b, RequestContext(key=None), ["auto"])
    c = plan.routing["candidates"][0]
    tokens = c["prompt_tokens"], c["output_tokens"]
    # DeepInfra's $0.05/$0.08 (the output tokens are reported rounded), not the default Together's $0.12/$0.30
    assert c["cost_usd"] == pytest.approx((tokens[0] * 0.05 + tokens[1] * 0.08) / 1e6, rel=0.02)
    r = await gw.complete(b, RequestContext(key=None))
    assert r["model"] == LLAMA and hosts.hosts == ["deepinfra"]
    await gw.close()


async def test_an_endpoint_whose_limits_do_not_take_the_request_is_tried_after_those_that_do(store):
    hosts = Hosts()
    gw = Gateway(settings(models={LLAMA: {"endpoints": CHEAP}}), store, client=MockTransport(hosts))
    await gw.start()
    await gw.complete(body(max_tokens=100), RequestContext(key=None))
    await gw.complete(body(max_tokens=3000), RequestContext(key=None))  # beyond DeepInfra's 2,048
    assert hosts.hosts == ["deepinfra", "together"]
    await gw.close()
