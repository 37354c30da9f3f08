"""Every recorded fixture is valid according to its provider's official SDK types (and uses no unknown field)."""

from __future__ import annotations

import pathlib

import orjson
import pydantic
import pytest
from provider_sdkcheck import (
    FIXTURES,
    assert_no_extra,
    fixture_bytes,
    fixture_json,
    sse_events,
    validate_known_fields,
    validate_model,
)


def _files(family: str, pattern: str) -> list[str]:
    return sorted(str(p.relative_to(FIXTURES)) for p in (FIXTURES / family).glob(pattern))


@pytest.mark.parametrize("name", [f for f in _files("anthropic", "message_*.json")])
def test_anthropic_messages(name: str) -> None:
    from anthropic.types import Message

    msg = Message.model_validate(fixture_json(name))
    assert_no_extra(msg)


@pytest.mark.parametrize("name", _files("anthropic", "error_*.json"))
def test_anthropic_errors(name: str) -> None:
    from anthropic.types import ErrorResponse

    assert_no_extra(ErrorResponse.model_validate(fixture_json(name)))


@pytest.mark.parametrize("name", _files("anthropic", "*.sse"))
def test_anthropic_streams(name: str) -> None:
    from anthropic.types import ErrorResponse, RawMessageStreamEvent

    events = sse_events(fixture_bytes(name))
    assert events
    for ev in events:
        payload = orjson.loads(ev.data)
        assert ev.event == payload["type"], "Anthropic names each SSE event after its payload type"
        if payload["type"] == "ping":
            assert payload == {"type": "ping"}
        elif payload["type"] == "error":
            assert_no_extra(ErrorResponse.model_validate(payload))
        else:
            validate_model(RawMessageStreamEvent, payload)


@pytest.mark.parametrize("name", _files("gemini", "response_*.json"))
def test_gemini_responses(name: str) -> None:
    from google.genai.types import GenerateContentResponse

    GenerateContentResponse.model_validate(fixture_json(name))  # genai models forbid unknown fields


@pytest.mark.parametrize("name", _files("gemini", "*.sse"))
def test_gemini_streams(name: str) -> None:
    from google.genai.types import GenerateContentResponse

    raw = fixture_bytes(name)
    assert b"\r\n\r\n" in raw  # Google frames its SSE with CRLF
    events = sse_events(raw)
    assert events
    for ev in events:
        GenerateContentResponse.model_validate(orjson.loads(ev.data))


@pytest.mark.parametrize("name", _files("gemini", "error_*.json"))
def test_gemini_errors(name: str) -> None:
    from google.genai.errors import APIError

    body = fixture_json(name)
    err = APIError(body["error"]["code"], body)
    assert err.status == body["error"]["status"] and err.message == body["error"]["message"]


@pytest.mark.parametrize("name", _files("cohere", "response_*.json"))
def test_cohere_responses(name: str) -> None:
    from cohere.v2.types import V2ChatResponse

    validate_model(V2ChatResponse, fixture_json(name))


@pytest.mark.parametrize("name", _files("cohere", "*.sse"))
def test_cohere_streams(name: str) -> None:
    from cohere.v2.types import V2ChatStreamResponse

    for ev in sse_events(fixture_bytes(name)):
        if ev.data == "[DONE]":
            continue
        payload = orjson.loads(ev.data)
        value = validate_model(V2ChatStreamResponse, payload)
        assert value.type == payload["type"] == ev.event


@pytest.mark.parametrize("name", _files("deepseek", "*.json") + _files("mistral", "response_*.json"))
def test_openai_compatible_responses(name: str) -> None:
    from openai.types.chat import ChatCompletion

    ChatCompletion.model_validate(fixture_json(name))


def test_deepseek_stream() -> None:
    from openai.types.chat import ChatCompletionChunk

    for ev in sse_events(fixture_bytes("deepseek/reasoner_stream.sse")):
        if ev.data != "[DONE]":
            ChatCompletionChunk.model_validate(orjson.loads(ev.data))


def test_mistral_stream() -> None:
    """Mistral's stream: its own chunk type, usage on the last chunk (unasked: Mistral takes no stream_options)."""
    from mistralai.client.models import CompletionChunk

    chunks = [validate_known_fields(CompletionChunk, orjson.loads(ev.data))
              for ev in sse_events(fixture_bytes("mistral/stream_text.sse")) if ev.data != "[DONE]"]
    assert chunks[-1].usage.prompt_tokens == 9 and chunks[-1].choices[0].finish_reason == "stop"


def test_every_fixture_is_checked() -> None:
    checked = set()
    for fam, pats in {"anthropic": ["message_*.json", "error_*.json", "*.sse"],
                      "gemini": ["response_*.json", "*.sse", "error_*.json"],
                      "cohere": ["response_*.json", "*.sse"], "deepseek": ["*.json", "*.sse"],
                      "mistral": ["response_*.json", "*.sse"]}.items():
        for p in pats:
            checked.update(_files(fam, p))
    every = {str(p.relative_to(FIXTURES)) for p in pathlib.Path(FIXTURES).rglob("*") if p.is_file()}
    # error bodies of OpenAI-compatible hosts and Cohere have no SDK type: they are plain {"message": ...}
    unchecked = {n for n in every - checked if not n.startswith(("cohere/error_", "mistral/error_"))}
    assert not unchecked, unchecked


def test_the_strict_checks_can_fail() -> None:
    """The SDK checks used everywhere here reject unknown fields and wrong literals, at any depth."""
    from anthropic.types import Message, MessageCreateParams
    from cohere.v2.types import V2ChatResponse
    from google.genai.types import GenerateContentResponse
    from provider_sdkcheck import validate_typeddict

    good = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}
    validate_typeddict(MessageCreateParams, good)
    for bad in (
        {**good, "bogus": 1},
        {**good, "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "bogus": 1}]}]},
        {**good, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "uri": "x"}}]}]},
        {**good, "tool_choice": {"type": "anything"}},
    ):
        with pytest.raises(AssertionError):
            validate_typeddict(MessageCreateParams, bad)
    msg = fixture_json("anthropic/message_text.json")
    msg["content"][0]["txt"] = "typo"
    with pytest.raises(AssertionError):
        assert_no_extra(Message.model_validate(msg))
    resp = fixture_json("cohere/response_text.json")
    resp["usage"]["tokens"]["input"] = 3
    with pytest.raises(AssertionError):
        validate_model(V2ChatResponse, resp)
    g = fixture_json("gemini/response_text.json")
    g["candidates"][0]["finish_reason_typo"] = "STOP"
    with pytest.raises(pydantic.ValidationError):
        GenerateContentResponse.model_validate(g)
