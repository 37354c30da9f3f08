"""End to end with the official ``openrouter`` SDK: its own response types validate every answer."""

from __future__ import annotations

from decimal import Decimal

import pytest
from openrouter import OpenRouter

MODEL = "openai/gpt-4o-mini-2024-07-18"


@pytest.fixture
def client(gateway):
    return OpenRouter(api_key=gateway.api_key, server_url=gateway.url + "/api/v1")


def test_chat_send_and_generation(client):
    r = client.chat.send(model=MODEL, messages=[{"role": "user", "content": "hello there"}],
                         http_referer="https://sdk.test", x_open_router_title="SDK test")
    assert r.model == MODEL
    assert r.choices[0].message.content == "You said: hello there"
    assert r.usage.cost == pytest.approx(r.usage.prompt_tokens * 0.15e-6 + r.usage.completion_tokens * 0.6e-6)
    g = client.generations.get_generation(id=r.id).data
    assert g.model == MODEL and g.total_cost == pytest.approx(r.usage.cost)
    assert g.tokens_prompt == r.usage.prompt_tokens and g.streamed is False
    assert g.http_referer == "https://sdk.test"
    assert g.provider_responses[0].status == 200


def test_chat_send_streaming(client):
    chunks = list(client.chat.send(model=MODEL, messages=[{"role": "user", "content": "stream me"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: stream me"
    assert chunks[-1].usage.cost > 0
    g = client.generations.get_generation(id=chunks[0].id).data
    assert g.streamed is True and g.total_cost == pytest.approx(chunks[-1].usage.cost)


def test_models_list_validates(client):
    models = client.models.list()
    assert models.result.total_count == 21
    models = models.result
    by_id = {m.id: m for m in models.data}
    sonnet = by_id["anthropic/claude-3.5-sonnet"]
    assert sonnet.pricing.prompt == "0.000003" and sonnet.pricing.completion == "0.000015"
    assert sonnet.context_length == 200000
    assert by_id["google/gemini-flash-1.5"].pricing.prompt == "0.000000075"
    # prompt-cache rates in the SDK's own fields (PublicPricing.input_cache_read / input_cache_write)
    assert (sonnet.pricing.input_cache_read, sonnet.pricing.input_cache_write) == ("0.0000003", "0.00000375")
    assert by_id[MODEL].pricing.input_cache_read == "0.000000075" and by_id[MODEL].pricing.input_cache_write is None
    assert by_id["cohere/command-r"].pricing.input_cache_read is None


def test_usage_cost_details_validate(client):
    """A cache hit's usage as the SDK's ChatUsage: cached tokens, cost at the cache rate, cost_details."""
    r = client.chat.send(model=MODEL, messages=[{"role": "user", "content": "a long prompt CACHED 4"}])
    u = r.usage
    assert u.prompt_tokens_details.cached_tokens == 4
    assert u.cost_details.upstream_inference_prompt_cost == float(
        Decimal((u.prompt_tokens - 4) * 150_000 + 4 * 75_000) / 10**12)
    assert u.cost_details.upstream_inference_completions_cost == float(Decimal(u.completion_tokens * 600_000) / 10**12)


def test_key_and_credits(client, gateway):
    key = client.api_keys.get_current_key_metadata().data
    assert key.label == "e2e" and key.limit is None and key.usage >= 0
    gateway.cli("credits", "--add", "25")
    credits = client.credits.get_credits().data
    assert credits.total_credits == 25.0
    assert credits.total_usage == pytest.approx(key.usage, abs=1e-9) or credits.total_usage >= key.usage
