"""The OpenAI-compatible families' quirks: o-series, DeepSeek, Mistral, Llama hosts."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest
from provider_sdkcheck import (
    accumulate,
    check_openai_chunks,
    check_openai_completion,
    fixture_bytes,
    run_stream,
    validate_known_fields,
    validate_typeddict,
)

from metarouter.catalog import default_catalog
from metarouter.providers import ProviderConfig, get_adapter
from metarouter.providers.quirks import LLAMA_NAMES, mistral_tool_id

CAT = default_catalog()


def provider(name: str) -> ProviderConfig:
    return ProviderConfig(name=name, base_url=f"https://api.{name}.example/v1", api_key="k", wire="openai")


def build(model_id: str, body: dict, *, stream: bool = False, prov: str | None = None, model=None) -> dict:
    model = model or CAT.get(model_id)
    p = provider(prov or model.provider)
    req = get_adapter(p).build_request(body, model, p, stream=stream)
    return orjson.loads(req.body)


def check_openai_request(body: dict) -> None:
    from openai.types.chat import CompletionCreateParams

    validate_typeddict(CompletionCreateParams, body)


MSGS = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]


# ---------------------------------------------------------------------------------------------------- OpenAI

def test_o1_mini_no_system_no_sampling() -> None:
    out = build("openai/o1-mini-2024-09-12", {"messages": MSGS, "max_tokens": 500, "temperature": 0.2,
                                               "top_p": 0.5, "presence_penalty": 1, "stop": ["x"]})
    check_openai_request(out)
    assert [m["role"] for m in out["messages"]] == ["user", "user"]
    assert out["messages"][0]["content"] == "Be terse."
    assert out["max_completion_tokens"] == 500 and "max_tokens" not in out
    assert not {"temperature", "top_p", "presence_penalty"} & set(out) and out["stop"] == ["x"]


def test_o1_preview_drops_tools_full_o1_uses_developer() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    pre = build("openai/o1-preview-2024-09-12", {"messages": MSGS, "tools": tools, "tool_choice": "auto"})
    assert "tools" not in pre and "tool_choice" not in pre
    o1 = replace(CAT.get("openai/o1-preview-2024-09-12"), native_model="o1-2024-12-17", tools=True)
    full = build("", {"messages": MSGS, "tools": tools, "max_completion_tokens": 9, "reasoning_effort": "low"},
                 model=o1, prov="openai")
    check_openai_request(full)
    assert full["messages"][0]["role"] == "developer" and full["tools"] == tools
    assert full["reasoning_effort"] == "low" and full["max_completion_tokens"] == 9


def test_gpt4o_untouched_and_stream_usage() -> None:
    out = build("openai/gpt-4o-2024-08-06", {"messages": MSGS, "max_tokens": 5, "temperature": 0.5,
                                              "reasoning_effort": "high", "models": ["a"]}, stream=True)
    check_openai_request(out)
    assert out["messages"] == MSGS and out["max_tokens"] == 5 and out["temperature"] == 0.5
    assert out["stream_options"] == {"include_usage": True}
    assert "reasoning_effort" not in out and "models" not in out


# -------------------------------------------------------------------------------------------------- DeepSeek

def test_deepseek_reasoner_request() -> None:
    out = build("deepseek/deepseek-r1", {"messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "reasoning_content": "secret", "reasoning": "secret"},
        {"role": "user", "content": "c"}], "temperature": 0.7, "top_p": 0.1, "logprobs": True,
        "max_completion_tokens": 64, "tools": [{"type": "function", "function": {"name": "f"}}], "seed": 1})
    check_openai_request(out)
    assert out["model"] == "deepseek-reasoner"
    assert out["messages"][1] == {"role": "assistant", "content": "b"}
    assert out["max_tokens"] == 64
    assert not {"temperature", "top_p", "logprobs", "tools", "seed", "max_completion_tokens"} & set(out)


def test_deepseek_chat_keeps_sampling_json_schema_downgraded() -> None:
    chat = replace(CAT.get("deepseek/deepseek-r1"), native_model="deepseek-chat", reasoning=False, tools=True,
                   json_output=True)
    out = build("", {"messages": MSGS, "temperature": 0.7, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}, model=chat,
        prov="deepseek")
    assert out["temperature"] == 0.7 and out["response_format"] == {"type": "json_object"}


def test_deepseek_reasoning_content_becomes_reasoning() -> None:
    ad = get_adapter(provider("deepseek"))
    resp = ad.parse_response(fixture_bytes("deepseek/reasoner_response.json"))
    check_openai_completion(resp)
    msg = resp["choices"][0]["message"]
    assert msg["reasoning"].startswith("Compare the decimals") and "reasoning_content" not in msg
    assert resp["usage"]["completion_tokens_details"] == {"reasoning_tokens": 140}
    tr = ad.stream_translator(CAT.get("deepseek/deepseek-r1"))
    chunks = run_stream(tr, fixture_bytes("deepseek/reasoner_stream.sse"), splits=1)
    check_openai_chunks(chunks)
    acc = accumulate(chunks)
    assert acc["reasoning"] == "Compare decimals." and acc["content"] == "9.8 is larger."
    assert all("reasoning_content" not in c["choices"][0]["delta"] for c in chunks)
    assert tr.done and tr.usage["completion_tokens_details"] == {"reasoning_tokens": 30}


# --------------------------------------------------------------------------------------------------- Mistral

def test_mistral_tool_ids_rewritten_consistently() -> None:
    body = {"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "D681PevKs", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "1"},
        {"role": "tool", "tool_call_id": "D681PevKs", "content": "2"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "required", "seed": 42, "safe_prompt": True, "max_completion_tokens": 30, "logit_bias": {}}
    out = build("mistralai/mistral-large-2407", body)
    calls = out["messages"][1]["tool_calls"]
    new = calls[0]["id"]
    assert len(new) == 9 and new.isalnum() and new != "toolu_01A09q90qw90lq917835lq9"
    assert out["messages"][2]["tool_call_id"] == new
    assert calls[1]["id"] == "D681PevKs" and out["messages"][3]["tool_call_id"] == "D681PevKs"
    assert out["messages"][1]["content"] == ""
    assert out["random_seed"] == 42 and "seed" not in out and out["safe_prompt"] is True
    assert out["tool_choice"] == "any" and out["max_tokens"] == 30 and "logit_bias" not in out
    assert body["messages"][1]["tool_calls"][0]["id"] == "toolu_01A09q90qw90lq917835lq9"  # caller's body untouched
    assert mistral_tool_id("call_abc") == mistral_tool_id("call_abc") != mistral_tool_id("call_abd")


#: a history as clients send it back: this gateway's `reasoning` and the response's `refusal`/`annotations` echoed,
#: a user `name`, a developer message, an Anthropic cache hint on a part, a tool without `parameters`
ECHOED = {"messages": [
    {"role": "developer", "content": "Be terse."},
    {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
    {"role": "assistant", "content": "Hello.", "refusal": None, "annotations": [], "reasoning": "They greet me.",
     "reasoning_details": [{"type": "reasoning.text", "text": "They greet me."}]},
    {"role": "user", "content": "Weather?"}],
    "tools": [{"type": "function", "function": {"name": "f"}}]}


def check_mistral_request(body: dict, *, stream: bool) -> None:
    """The body validates as the mistralai SDK's request model, with no field the SDK does not know."""
    from mistralai.client.models import ChatCompletionRequest, ChatCompletionStreamRequest

    validate_known_fields(ChatCompletionStreamRequest if stream else ChatCompletionRequest, body)


@pytest.mark.parametrize("stream", [False, True])
def test_mistral_takes_only_its_own_fields(stream: bool) -> None:
    out = build("mistralai/mistral-large-2407", {**ECHOED, "max_tokens": 9, "seed": 3}, stream=stream)
    check_mistral_request(out, stream=stream)
    assert "stream_options" not in out and out.get("stream", False) is stream  # Mistral sends usage unasked
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "user"]
    assert out["messages"][1] == {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    assert out["messages"][2] == {"role": "assistant", "content": "Hello."}
    assert out["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert ECHOED["messages"][2]["reasoning"] == "They greet me."  # the caller's body is untouched


def test_mistral_stream_usage_from_the_last_chunk() -> None:
    tr = get_adapter(provider("mistral")).stream_translator(CAT.get("mistralai/mistral-large-2407"))
    chunks = run_stream(tr, fixture_bytes("mistral/stream_text.sse"), splits=1)
    check_openai_chunks(chunks)
    assert accumulate(chunks)["content"] == "Bonjour !" and tr.done
    assert tr.usage == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


@pytest.mark.parametrize("model_id,prov", [("openai/gpt-4o-2024-08-06", "openai"),
                                           ("meta-llama/llama-3.1-70b-instruct", "together"),
                                           ("deepseek/deepseek-r1", "deepseek")])
def test_openai_compatible_hosts_drop_echoed_reasoning(model_id: str, prov: str) -> None:
    out = build(model_id, ECHOED, prov=prov, stream=True)
    check_openai_request(out)
    assert out["messages"][2] == {"role": "assistant", "content": "Hello.", "refusal": None}
    assert out["messages"][1]["name"] == "ann" and out["messages"][1]["content"] == [{"type": "text", "text": "Hi"}]


def test_mistral_response_and_error() -> None:
    p = provider("mistral")
    ad = get_adapter(p)
    resp = ad.parse_response(fixture_bytes("mistral/response_tool_call.json"))
    check_openai_completion(resp)
    assert resp["choices"][0]["finish_reason"] == "tool_calls"
    err = ad.parse_error(422, fixture_bytes("mistral/error_422.json"), p)
    assert err.status == 400 and "length 9" in err.message


# ----------------------------------------------------------------------------------------------- Llama hosts

@pytest.mark.parametrize("host", ["together", "fireworks", "deepinfra"])
def test_llama_host_names(host: str) -> None:
    out = build("meta-llama/llama-3.1-70b-instruct", {"messages": MSGS, "top_k": 40, "repetition_penalty": 1.1,
                                                       "max_completion_tokens": 12}, prov=host)
    assert out["model"] == LLAMA_NAMES[host]["meta-llama/llama-3.1-70b-instruct"]
    assert out["top_k"] == 40 and out["repetition_penalty"] == 1.1 and out["max_tokens"] == 12
    assert "max_completion_tokens" not in out


def test_llama_catalog_name_wins_on_its_own_provider() -> None:
    out = build("meta-llama/llama-3.1-405b-instruct", {"messages": MSGS})
    assert out["model"] == CAT.get("meta-llama/llama-3.1-405b-instruct").native_model


# -------------------------------------------------------------------------------------------- prompt caching

@pytest.mark.parametrize("prov,usage", [
    ("openai", {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0}}),
    # DeepSeek: its own fields, with or without OpenAI's (which it reports as 0 on older deployments)
    ("deepseek", {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                  "prompt_cache_hit_tokens": 1920, "prompt_cache_miss_tokens": 86}),
    ("deepseek", {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                  "prompt_tokens_details": {"cached_tokens": 0}, "prompt_cache_hit_tokens": 1920,
                  "prompt_cache_miss_tokens": 86}),
])
def test_cached_prompt_tokens_parsed(prov: str, usage: dict) -> None:
    resp = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    out = get_adapter(provider(prov)).parse_response(orjson.dumps(resp))
    check_openai_completion(out)
    assert out["usage"] == {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                            "prompt_tokens_details": {"cached_tokens": 1920}}


@pytest.mark.parametrize("model_id", ["deepseek/deepseek-r1", "mistralai/mistral-large-2407",
                                      "meta-llama/llama-3.1-70b-instruct"])
@pytest.mark.parametrize("first", ["max_tokens", "max_completion_tokens"])
def test_a_renamed_parameter_never_overwrites_the_one_of_its_target_name(model_id, first):
    """Upstreams with only ``max_tokens``: ``max_completion_tokens`` is sent as it, unless both came (whatever
    their order in the body): then ``max_tokens`` is the one sent."""
    second = "max_completion_tokens" if first == "max_tokens" else "max_tokens"
    both = build(model_id, {"messages": MSGS, first: 10 if first == "max_tokens" else 20,
                            second: 10 if second == "max_tokens" else 20})
    assert both["max_tokens"] == 10 and "max_completion_tokens" not in both
    alone = build(model_id, {"messages": MSGS, "max_completion_tokens": 20})
    assert alone["max_tokens"] == 20 and "max_completion_tokens" not in alone
