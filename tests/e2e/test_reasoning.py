"""OpenRouter's ``reasoning`` through the gateway: mapped to each family's control for models whose config entry
says ``reasoning_control``, dropped (or refused under ``require_parameters``) elsewhere; ``exclude`` everywhere."""

from __future__ import annotations

import openai
import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config

MODELS = {
    "anthropic/claude-3.7-sonnet": {"provider": "anthropic", "native_model": "claude-3-7-sonnet-20250219",
                                    "context_length": 200000, "max_output_tokens": 64000, "input_usd_per_1m": 3,
                                    "output_usd_per_1m": 15, "tools": True, "reasoning": True,
                                    "reasoning_control": True},
    "google/gemini-2.5-flash": {"provider": "google", "native_model": "gemini-2.5-flash", "context_length": 1048576,
                                "max_output_tokens": 65536, "input_usd_per_1m": 0.3, "output_usd_per_1m": 2.5,
                                "reasoning": True, "reasoning_control": True},
    "openai/o3-mini": {"provider": "openai", "native_model": "o3-mini", "context_length": 200000,
                       "max_output_tokens": 100000, "input_usd_per_1m": 1.1, "output_usd_per_1m": 4.4,
                       "reasoning": True},
}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    with GatewayProcess(gateway_config(fake, models={"add": MODELS}), tmp_path_factory.mktemp("reasoning"),
                        env=FAKE_KEYS_ENV) as g:
        g.api_key = g.create_key("reasoning")
        yield g


@pytest.fixture
def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.api_key, max_retries=0)


def ask(client, model, reasoning, stream=False, **kw):
    args = {"model": model, "messages": [{"role": "user", "content": "why blue"}], "max_tokens": 4000,
            "extra_body": {"reasoning": reasoning}, **kw}
    if not stream:
        resp = client.chat.completions.create(**args)
        return resp.choices[0].message.content, (resp.choices[0].message.model_extra or {}).get("reasoning"), resp
    chunks = list(client.chat.completions.create(stream=True, **args))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    thought = "".join((c.choices[0].delta.model_extra or {}).get("reasoning") or "" for c in chunks if c.choices)
    return text, thought, chunks[-1]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_thinking(client, fake, stream):
    text, thought, _ = ask(client, "anthropic/claude-3.7-sonnet", {"effort": "high"}, stream=stream,
                           temperature=0.2)
    body = fake.requests_for("anthropic")[-1].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3200} and "temperature" not in body
    assert text == "You said: why blue" and thought == "Thinking about: why blue"
    text, thought, _ = ask(client, "anthropic/claude-3.7-sonnet", {"max_tokens": 2000, "exclude": True},
                           stream=stream)
    assert fake.requests_for("anthropic")[-1].body["thinking"]["budget_tokens"] == 2000
    assert text == "You said: why blue" and not thought  # thought, billed, not shown


def test_anthropic_thinking_needs_room(client):
    with pytest.raises(openai.BadRequestError) as ei:
        ask(client, "anthropic/claude-3.7-sonnet", {"effort": "low"}, max_tokens=900)
    assert "1024" in ei.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_gemini_thinking(client, fake, stream):
    text, thought, last = ask(client, "google/gemini-2.5-flash", {"effort": "low"}, stream=stream)
    assert fake.requests_for("google")[-1].body["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 1024, "includeThoughts": True}  # 20 % of 4000, raised to OpenRouter's 1024 floor
    assert text == "You said: why blue" and thought == "Thinking about: why blue"
    usage = last.usage
    assert usage.completion_tokens_details.reasoning_tokens > 0


def test_openai_effort_from_a_budget(client, fake):
    ask(client, "openai/o3-mini", {"max_tokens": 3500})
    body = fake.requests_for("openai")[-1].body
    assert body["reasoning_effort"] == "high" and "reasoning" not in body and body["max_completion_tokens"] == 4000


def test_models_without_the_control_drop_it_or_refuse_it(client, fake):
    text, _, _ = ask(client, "mistralai/mistral-large-2407", {"effort": "high"})  # Mistral refuses unknown fields
    assert text == "You said: why blue" and "reasoning" not in fake.requests_for("mistral")[-1].body
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="mistralai/mistral-large-2407", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"reasoning": {"effort": "high"},
                                                   "provider": {"require_parameters": True}})
    assert "reasoning" in ei.value.message
    with pytest.raises(openai.BadRequestError) as ei:
        ask(client, "anthropic/claude-3.7-sonnet", {"effort": "high", "max_tokens": 2000})
    assert "not both" in ei.value.message
