"""The fake upstreams answer in each provider's real format (per the official SDKs' types), and a request
translated by an adapter, answered by a fake and translated back, round-trips (pure: no server)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import test_anthropic
import test_cohere
import test_gemini
import test_quirks
from provider_sdkcheck import (
    accumulate,
    check_openai_chunks,
    check_openai_completion,
    run_stream,
    validate_model,
)

from metarouter.catalog import default_catalog
from metarouter.catalog.providers import provider_wire
from metarouter.providers import ProviderConfig, get_adapter
from metarouter.testing.fake_providers import HANDLERS

CAT = default_catalog()
MODELS = {"anthropic": "anthropic/claude-3.5-sonnet", "google": "google/gemini-flash-1.5",
          "cohere": "cohere/command-r-plus", "deepseek": "deepseek/deepseek-r1",
          "mistral": "mistralai/mistral-large-2407"}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look something up",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                          "required": ["query"]}}}]


def validate_native(family: str, status: int, payload: bytes, stream: bool) -> None:
    """The fake's reply validates as the family's SDK types."""
    if family == "anthropic":
        from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
        if status != 200:
            validate_model(ErrorResponse, orjson.loads(payload))
        elif not stream:
            validate_model(Message, orjson.loads(payload))
        else:
            from provider_sdkcheck import sse_events
            for ev in sse_events(payload):
                obj = orjson.loads(ev.data)
                if obj["type"] == "error":
                    validate_model(ErrorResponse, obj)
                elif obj["type"] != "ping":
                    validate_model(RawMessageStreamEvent, obj)
    elif family == "google":
        from google.genai.types import GenerateContentResponse
        from provider_sdkcheck import sse_events
        if status == 200:
            for obj in ([orjson.loads(e.data) for e in sse_events(payload)] if stream else [orjson.loads(payload)]):
                if "error" not in obj:
                    GenerateContentResponse.model_validate(obj)
    elif family == "cohere":
        from cohere.v2.types import V2ChatResponse, V2ChatStreamResponse
        from provider_sdkcheck import sse_events
        if status == 200 and not stream:
            validate_model(V2ChatResponse, orjson.loads(payload))
        elif status == 200:
            for e in sse_events(payload):
                if e.data != "[DONE]":
                    validate_model(V2ChatStreamResponse, orjson.loads(e.data))
    else:
        from openai.types.chat import ChatCompletion, ChatCompletionChunk
        from provider_sdkcheck import sse_events
        if status == 200 and not stream:
            ChatCompletion.model_validate(orjson.loads(payload))
        elif status == 200:
            for e in sse_events(payload):
                if e.data != "[DONE]":
                    ChatCompletionChunk.model_validate(orjson.loads(e.data))


def call(family: str, body: dict, *, stream: bool = False):
    """Adapter → fake → adapter; returns (OpenAI response or accumulated stream, native request body)."""
    model = CAT.get(MODELS[family])
    provider = ProviderConfig(name=family, base_url=f"http://fake/{family}", api_key="k",
                              wire=provider_wire(family))
    adapter = get_adapter(provider)
    req = adapter.build_request(body, model, provider, stream=stream)
    parts = urlsplit(req.url)
    native = orjson.loads(req.body)
    {"anthropic": test_anthropic.check_request, "google": test_gemini.check_request,
     "cohere": test_cohere.check_request,
     "mistral": lambda b: test_quirks.check_mistral_request(b, stream=stream)}.get(family, lambda b: None)(native)
    path = parts.path[len(f"/{family}"):]
    reply = HANDLERS[family](path, {k.lower(): v for k, v in req.headers.items()}, native, dict(parse_qsl(parts.query)))
    payload = b"".join(reply.sse) if reply.sse is not None else orjson.dumps(reply.json)
    validate_native(family, reply.status, payload, reply.sse is not None)
    if reply.status != 200:
        return adapter.parse_error(reply.status, payload, provider), native
    if not stream:
        out = adapter.parse_response(payload)
        check_openai_completion(out)
        return out, native
    tr = adapter.stream_translator(model)
    chunks = run_stream(tr, payload)
    check_openai_chunks(chunks)
    return {**accumulate(chunks), "usage": tr.usage, "done": tr.done}, native


FAMILIES = list(MODELS)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stream", [False, True])
def test_plain_and_system(family: str, stream: bool) -> None:
    out, _ = call(family, {"messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hello fake"}]}, stream=stream)
    text = out["content"] if stream else out["choices"][0]["message"]["content"]
    assert text.startswith("You said: Hello fake")
    if family in ("anthropic", "google", "cohere"):
        assert "(system: Be brief.)" in text
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    if family == "deepseek":
        reasoning = out["reasoning"] if stream else out["choices"][0]["message"]["reasoning"]
        assert reasoning == "Let me think about it."


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "deepseek"])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_then_result(family: str, stream: bool) -> None:
    first, _ = call(family, {"tools": TOOLS, "messages": [{"role": "user", "content": "find cats twice"}]},
                    stream=stream)
    if stream:
        calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for c in first["tool_calls"]]
        finish = first["finish_reason"]
    else:
        calls = first["choices"][0]["message"]["tool_calls"]
        finish = first["choices"][0]["finish_reason"]
    expected = [{"query": "find cats twice"}, {"query": "find cats twice #2"}]
    if family == "mistral":  # the OpenAI-format fake makes one call
        expected = expected[:1]
    assert finish == "tool_calls"
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == expected
    assert len({c["id"] for c in calls}) == len(expected)
    second, _ = call(family, {"tools": TOOLS, "messages": [
        {"role": "user", "content": "find cats twice"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"found": 3}'},
        *[{"role": "tool", "tool_call_id": c["id"], "content": '{"found": 4}'} for c in calls[1:]]]}, stream=stream)
    text = second["content"] if stream else second["choices"][0]["message"]["content"]
    if family == "mistral":  # the OpenAI-format fake echoes the user; what matters is Mistral took the ids
        assert text == "You said: find cats twice"
    else:
        assert text.startswith("The tool said:") and "3" in text


@pytest.mark.parametrize("family", ["anthropic", "google", "cohere"])
def test_image_and_json(family: str) -> None:
    out, _ = call(family, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/x.jpg" if family == "google" else
                                            "https://example.com/x.jpg"}}]}]})
    assert out["choices"][0]["message"]["content"] == "You said: look [2 image(s)]"
    js, _ = call(family, {"messages": [{"role": "user", "content": "json please"}],
                          "response_format": {"type": "json_object"}})
    assert orjson.loads(js["choices"][0]["message"]["content"]) == {"echo": "json please"}


@pytest.mark.parametrize("family,status,expected", [("anthropic", 529, 503), ("google", 429, 429),
                                                    ("cohere", 500, 502), ("mistral", 400, 400)])
def test_errors(family: str, status: int, expected: int) -> None:
    err, _ = call(family, {"messages": [{"role": "user", "content": f"FAIL {status}"}]})
    assert err.status == expected and err.message.startswith(f"{family}: ")


@pytest.mark.parametrize("family", ["anthropic", "google", "cohere"])
def test_in_stream_error(family: str) -> None:
    from metarouter.errors import GatewayError

    with pytest.raises(GatewayError):
        call(family, {"messages": [{"role": "user", "content": "STREAM_ERROR now"}]}, stream=True)


def test_gemini_blocked_prompt() -> None:
    from metarouter.errors import GatewayError

    with pytest.raises(GatewayError) as e:
        call("google", {"messages": [{"role": "user", "content": "BLOCK me"}]})
    assert e.value.status == 403


def test_mistral_fake_rejects_what_mistral_rejects() -> None:
    """The quirks matter: sent untranslated, these requests fail at the fake as they would at Mistral."""
    bad_id = {"model": "mistral-large-2407", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_123456789", "type": "function",
                                                             "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_123456789", "content": "1"}]}
    assert HANDLERS["mistral"]("/v1/chat/completions", {"authorization": "Bearer k"}, bad_id, {}).status == 422
    seed = {"model": "mistral-large-2407", "messages": [{"role": "user", "content": "x"}], "seed": 1}
    assert HANDLERS["mistral"]("/v1/chat/completions", {"authorization": "Bearer k"}, seed, {}).status == 422
    # through the adapter both go through
    out, native = call("mistral", {"messages": bad_id["messages"], "seed": 1, "tools": TOOLS})
    assert native["random_seed"] == 1 and out["choices"][0]["message"]["content"].startswith("You said")
