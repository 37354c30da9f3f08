"""Several endpoints for one model, end to end: the real server with Llama 3.1 70B on three fake providers
(Together, its default; DeepInfra and Fireworks from the config), called with the ``openai`` and ``openrouter``
SDKs: the default order and fallback, ``provider`` preferences, pricing at the serving endpoint, the record, and
``GET /models/{author}/{slug}/endpoints`` in OpenRouter's shape with latency and throughput measured from the
gateway's own records (response-cache hits excluded)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openrouter import OpenRouter
from openrouter.components import ListEndpointsResponse

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config

LLAMA = "meta-llama/llama-3.1-70b-instruct"  # Together: $0.12 / $0.30 per 1M tokens
PRICES = {"together": (0.12, 0.30), "deepinfra": (0.23, 0.40), "fireworks": (0.9, 0.9)}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    cfg = gateway_config(fake)
    for name in ("fireworks", "deepinfra"):  # two more OpenAI-compatible hosts (the fake serves any path prefix)
        cfg["providers"][name] = {"base_url": fake.base_url(name, "/v1"), "api_key_env": "FAKE_TOGETHER_KEY"}
    cfg["providers"]["deepinfra"]["retains_data"] = False
    cfg["models"] = {LLAMA: {"endpoints": {
        "fireworks": {"native_model": "accounts/fireworks/models/llama-v3p1-70b-instruct",
                      "input_usd_per_1m": 0.9, "output_usd_per_1m": 0.9},
        "deepinfra": {"input_usd_per_1m": 0.23, "output_usd_per_1m": 0.4, "max_output_tokens": 4096},
    }}}
    with GatewayProcess(cfg, tmp_path_factory.mktemp("endpoints"), env=FAKE_KEYS_ENV) as g:
        g.api_key = g.create_key("endpoints")
        yield g


@pytest.fixture
def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.api_key, max_retries=0)



def cost(provider: str, prompt: int, completion: int) -> float:
    inp, out = PRICES[provider]
    return (prompt * inp + completion * out) / 1e6


def test_listing_measures_latency_from_the_records_and_not_cache_hits(gw, client, fake):
    """First in this module: the listing's measurements are cached for seconds, so this test makes its traffic
    before anything here asks for them."""
    for _ in range(2):
        client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "fast"}],
                                       extra_body={"provider": {"only": ["fireworks"]}})
    # a cache hit named after DeepInfra's answer: DeepInfra served once; the hit must not count as a sample
    for _ in range(2):
        r = client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "cached"}],
                                           extra_body={"provider": {"only": ["deepinfra"]}},
                                           extra_headers={"X-OpenRouter-Cache": "true"})
    assert gw.generation(r.id)["cache_hit"] is True and gw.generation(r.id)["provider_name"] == "deepinfra"
    listing = httpx.get(f"{gw.url}/api/v1/models/{LLAMA}/endpoints").json()["data"]
    eps = {e["tag"]: e for e in listing["endpoints"]}
    assert [e["tag"] for e in listing["endpoints"]] == ["together", "deepinfra", "fireworks"]  # cheapest first
    assert eps["fireworks"]["latency_last_30m"]["p50"] > 0 and eps["fireworks"]["throughput_last_30m"]["p50"] > 0
    assert eps["together"]["latency_last_30m"] is None  # never served
    # one sample each for DeepInfra: its one real answer, not the cache hit (its p50 and p99 are that one answer)
    lat = eps["deepinfra"]["latency_last_30m"]
    assert lat is not None and lat["p50"] == lat["p99"]
    assert eps["deepinfra"]["pricing"]["prompt"] == "0.00000023" and eps["deepinfra"]["max_completion_tokens"] == 4096
    assert eps["fireworks"]["provider_name"] == "Fireworks" and eps["fireworks"]["status"] == 0
    assert listing["id"] == LLAMA and listing["architecture"]["tokenizer"] == "Llama3"


def test_default_is_cheapest_first_with_fallback_and_priced_at_the_server(gw, client, fake):
    fake.fail("together", status=503)
    r = client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "hello"}],
                                       extra_headers={"X-OpenRouter-Metadata": "enabled"})
    assert r.choices[0].message.content == "You said: hello"
    assert r.model_extra["provider"] == "DeepInfra"
    assert [len(fake.requests_for(p)) for p in ("together", "deepinfra", "fireworks")] == [1, 1, 0]
    attempts = r.model_extra["openrouter_metadata"]["attempts"]
    assert [(a["provider"], a["status"]) for a in attempts] == [("Together", 503), ("DeepInfra", 200)]
    assert r.usage.cost == pytest.approx(cost("deepinfra", r.usage.prompt_tokens, r.usage.completion_tokens))
    g = gw.generation(r.id)
    assert g["provider_name"] == "deepinfra" and g["total_cost"] == pytest.approx(r.usage.cost)
    assert [a["provider_name"] for a in g["provider_responses"]] == ["together", "deepinfra"]


def test_openai_sdk_provider_order_and_native_model(gw, client, fake):
    r = client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "order"}],
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"provider": {"order": ["Fireworks"], "allow_fallbacks": False}})
    chunks = list(r)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: order"
    assert {c.model_extra["provider"] for c in chunks} == {"Fireworks"}
    sent = fake.requests_for("fireworks")
    assert len(sent) == 1 and sent[0].body["model"] == "accounts/fireworks/models/llama-v3p1-70b-instruct"
    u = chunks[-1].usage
    assert u.model_extra["cost"] == pytest.approx(cost("fireworks", u.prompt_tokens, u.completion_tokens))


def test_openai_sdk_filters_and_bad_preferences(gw, client, fake):
    r = client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "private"}],
                                       extra_body={"provider": {"data_collection": "deny"}})
    assert r.model_extra["provider"] == "DeepInfra"  # the one configured retains_data: false
    r = client.chat.completions.create(model=LLAMA + ":floor", messages=[{"role": "user", "content": "cheap"}],
                                       extra_body={"provider": {"ignore": ["together"]}})
    assert r.model_extra["provider"] == "DeepInfra" and r.model == LLAMA
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "x"}],
                                       extra_body={"provider": {"max_price": {"prompt": 0.05}}})
    assert "max_price" in e.value.body["message"]
    for prefs, param in (({"only": ["nowhere"]}, "provider.only"), ({"sort": "fastest"}, "provider.sort"),
                         ({"max_price": {"completion": -1}}, "provider.max_price.completion"),
                         ({"order": "fireworks"}, "provider.order")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "x"}],
                                           extra_body={"provider": prefs})
        assert e.value.status_code == 400 and e.value.body["metadata"]["param"] == param
    assert not fake.requests_for("fireworks")


def test_openrouter_sdk_provider_and_endpoints_listing(gw, fake):
    client = OpenRouter(api_key=gw.api_key, server_url=gw.url + "/api/v1")
    fake.fail("fireworks", status=500)
    r = client.chat.send(model=LLAMA, messages=[{"role": "user", "content": "sdk"}],
                         provider={"order": ["fireworks", "together"], "sort": "price"})
    assert r.choices[0].message.content == "You said: sdk"
    assert [len(fake.requests_for(p)) for p in ("fireworks", "together")] == [1, 1]
    assert r.usage.cost == pytest.approx(cost("together", r.usage.prompt_tokens, r.usage.completion_tokens))
    listing = client.endpoints.list(author="meta-llama", slug="llama-3.1-70b-instruct")
    data = listing.data if hasattr(listing, "data") else listing.result.data
    assert [e.tag for e in data.endpoints] == ["together", "deepinfra", "fireworks"]
    assert data.endpoints[2].pricing.prompt == "0.0000009"
    raw = httpx.get(f"{gw.url}/api/v1/models/{LLAMA}/endpoints").json()
    ListEndpointsResponse.model_validate(raw["data"])  # the SDK's own type, strictly from the JSON


def test_the_auto_models_link_lists_the_models_it_routes_to(gw):
    """/models names auto's details link; it lists the pool, each model where auto prices it (Llama at its cheapest
    endpoint, Together), in the SDK's shape."""
    models = httpx.get(f"{gw.url}/api/v1/models").json()["data"]
    link = next(m for m in models if m["id"] == "openrouter/auto")["links"]["details"]
    raw = httpx.get(gw.url + link).json()
    assert raw["data"]["id"] == "openrouter/auto"
    ListEndpointsResponse.model_validate(raw["data"])
    eps = raw["data"]["endpoints"]
    by_model = {e["model_id"]: e["tag"] for e in eps}
    assert by_model[LLAMA] == "together" and len(by_model) == len(eps) > 5
    prices = [float(e["pricing"]["prompt"]) + float(e["pricing"]["completion"]) for e in eps]
    assert prices == sorted(prices)  # cheapest first


def test_unknown_model_endpoints_is_a_404(gw):
    r = httpx.get(f"{gw.url}/api/v1/models/nobody/nothing/endpoints")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    one = httpx.get(f"{gw.url}/v1/models/openai/gpt-4o-mini-2024-07-18/endpoints").json()["data"]
    assert [e["tag"] for e in one["endpoints"]] == ["openai"]
