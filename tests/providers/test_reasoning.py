"""OpenRouter's ``reasoning: {effort | max_tokens, exclude, enabled}`` mapped to each family's own control, on models
whose catalog entry says ``reasoning_control``, and checked against the providers' SDK types."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest
import test_anthropic
import test_gemini
import test_quirks

from metarouter.catalog import default_catalog
from metarouter.errors import GatewayError
from metarouter.providers import ProviderConfig, get_adapter
from metarouter.providers.anthropic import JSON_TOOL
from metarouter.providers.params import check_parameters

CAT = default_catalog()
# models of each family that take a reasoning control, as a config file would add them
CLAUDE37 = replace(CAT.get("anthropic/claude-3.5-sonnet"), id="anthropic/claude-3.7-sonnet",
                   native_model="claude-3-7-sonnet-20250219", reasoning=True, reasoning_control=True)
FLASH25 = replace(CAT.get("google/gemini-flash-1.5"), id="google/gemini-2.5-flash", native_model="gemini-2.5-flash",
                  reasoning=True, reasoning_control=True)
GPT5 = replace(CAT.get("openai/gpt-4o-2024-08-06"), id="openai/gpt-5", native_model="gpt-5", reasoning_control=True)
O3MINI = replace(CAT.get("openai/o1-mini-2024-09-12"), id="openai/o3-mini", native_model="o3-mini")
MSGS = [{"role": "user", "content": "Why is the sky blue?"}]


def openai_body(body: dict, model) -> dict:
    out = test_quirks.build("", body, model=model, prov="openai")
    test_quirks.check_openai_request(out)
    return out


@pytest.mark.parametrize("reasoning,limit,effort", [
    ({"effort": "high"}, None, "high"),
    ({"effort": "minimal"}, None, "minimal"),
    ({"max_tokens": 8000}, 10000, "high"),  # a budget → the effort of its share of max_tokens
    ({"max_tokens": 5000}, 10000, "medium"),
    ({"max_tokens": 1000}, 10000, "low"),
    ({"effort": "none"}, None, "none"),
    ({"enabled": True}, None, None),  # the model's default
    ({"exclude": True}, None, None),
])
def test_openai_reasoning_effort(reasoning: dict, limit: int | None, effort: str | None) -> None:
    for model in (O3MINI, GPT5):
        body = {"messages": MSGS, "reasoning": reasoning, **({"max_completion_tokens": limit} if limit else {})}
        assert openai_body(body, model).get("reasoning_effort") == effort
    explicit = openai_body({"messages": MSGS, "reasoning": {"effort": "low"}, "reasoning_effort": "high"}, GPT5)
    assert explicit["reasoning_effort"] == "high"  # OpenAI's own parameter wins


def test_openai_models_without_the_control_drop_it() -> None:
    for model_id in ("openai/gpt-4o-2024-08-06", "openai/o1-mini-2024-09-12"):
        out = openai_body({"messages": MSGS, "reasoning": {"effort": "high"}}, CAT.get(model_id))
        assert "reasoning_effort" not in out and "reasoning" not in out


def anthropic_body(body: dict, model=CLAUDE37) -> dict:
    return test_anthropic.build(body, model=model)


def test_anthropic_thinking_budget_from_effort_or_max_tokens() -> None:
    out = anthropic_body({"messages": MSGS, "max_tokens": 10000, "reasoning": {"effort": "high"},
                          "temperature": 0.3, "top_k": 5, "top_p": 0.5})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 8000}  # OpenRouter: 80 % of max_tokens
    assert not {"temperature", "top_k", "top_p"} & set(out)  # Anthropic refuses them with thinking
    assert anthropic_body({"messages": MSGS, "max_tokens": 100000, "reasoning": {"effort": "high"}}
                          )["thinking"]["budget_tokens"] == 32000  # within OpenRouter's bounds
    assert anthropic_body({"messages": MSGS, "max_tokens": 4000, "reasoning": {"effort": "low"}}
                          )["thinking"]["budget_tokens"] == 1024
    assert anthropic_body({"messages": MSGS, "max_tokens": 4000, "reasoning": {"max_tokens": 2500}, "top_p": 0.97}
                          ) | {"messages": None} == {
        "model": "claude-3-7-sonnet-20250219", "max_tokens": 4000, "messages": None, "top_p": 0.97,
        "thinking": {"type": "enabled", "budget_tokens": 2500}}
    # without max_tokens: the model's max output; a budget never reaches max_tokens
    assert anthropic_body({"messages": MSGS, "reasoning": {"enabled": True}})["thinking"]["budget_tokens"] == 4096
    assert anthropic_body({"messages": MSGS, "max_tokens": 3000, "reasoning": {"max_tokens": 9000}}
                          )["thinking"]["budget_tokens"] == 2999
    for off in ({"effort": "none"}, {"enabled": False}, {"exclude": True}):
        assert "thinking" not in anthropic_body({"messages": MSGS, "reasoning": off})
    assert "thinking" not in anthropic_body({"messages": MSGS, "reasoning": {"effort": "high"}},
                                            CAT.get("anthropic/claude-3.5-sonnet"))


def test_anthropic_thinking_refusals_and_forced_tools() -> None:
    with pytest.raises(GatewayError) as ei:
        anthropic_body({"messages": MSGS, "max_tokens": 1000, "reasoning": {"effort": "high"}})
    assert ei.value.status == 400 and "1024" in ei.value.message
    tools = test_anthropic.TOOLS
    with pytest.raises(GatewayError) as ei:
        anthropic_body({"messages": MSGS, "tools": tools, "tool_choice": "required", "reasoning": {"effort": "low"}})
    assert ei.value.status == 400 and "force a tool call" in ei.value.message
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    out = anthropic_body({"messages": MSGS, "response_format": rf, "reasoning": {"effort": "low"}})
    assert out["tool_choice"] == {"type": "auto"} and out["tools"][0]["name"] == JSON_TOOL
    assert f"calling the {JSON_TOOL} tool" in out["system"]


def gemini_config(body: dict, model=FLASH25) -> dict:
    return test_gemini.build(body, model=model).get("generationConfig", {})


def test_gemini_thinking_config() -> None:
    assert gemini_config({"messages": MSGS, "max_tokens": 10000, "reasoning": {"effort": "low"}}) == {
        "maxOutputTokens": 10000, "thinkingConfig": {"thinkingBudget": 2000, "includeThoughts": True}}
    assert gemini_config({"messages": MSGS, "reasoning": {"max_tokens": 512, "exclude": True}})["thinkingConfig"] == {
        "thinkingBudget": 512, "includeThoughts": False}
    assert gemini_config({"messages": MSGS, "reasoning": {"enabled": True}})["thinkingConfig"] == {
        "thinkingBudget": -1, "includeThoughts": True}
    assert gemini_config({"messages": MSGS, "reasoning": {"effort": "none"}})["thinkingConfig"] == {"thinkingBudget": 0}
    assert gemini_config({"messages": MSGS, "max_tokens": 100000, "reasoning": {"effort": "high"}}
                         )["thinkingConfig"]["thinkingBudget"] == 24576
    assert "thinkingConfig" not in gemini_config({"messages": MSGS, "reasoning": {"exclude": True}})
    assert "thinkingConfig" not in gemini_config({"messages": MSGS, "reasoning": {"effort": "high"}},
                                                 CAT.get("google/gemini-flash-1.5"))


@pytest.mark.parametrize("model,supported", [
    (CLAUDE37, True), (FLASH25, True), (GPT5, True), (O3MINI, True),
    (CAT.get("anthropic/claude-3.5-sonnet"), False), (CAT.get("mistralai/mistral-large-2407"), False),
    (CAT.get("deepseek/deepseek-r1"), False), (CAT.get("cohere/command-r"), False),
    (CAT.get("meta-llama/llama-3.1-70b-instruct"), False),
])
def test_require_parameters_refuses_reasoning_where_it_would_be_dropped(model, supported: bool) -> None:
    adapter = get_adapter(ProviderConfig(name=model.provider, base_url="http://x", wire={
        "anthropic": "anthropic", "google": "gemini", "cohere": "cohere"}.get(model.provider, "openai")))
    assert ("reasoning" in adapter.supported_parameters(model)) is supported
    asked = {"messages": MSGS, "reasoning": {"effort": "high"}}
    assert check_parameters(asked, adapter, model) == ([] if supported else ["reasoning"])
    assert check_parameters({"messages": MSGS, "reasoning": {"exclude": True}}, adapter, model) == []
    body = orjson.loads(adapter.build_request(asked, model, ProviderConfig(name=model.provider, base_url="http://x"),
                                              stream=False).body)
    assert "reasoning" not in body  # never forwarded as is
