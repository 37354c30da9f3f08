"""Gemini generateContent translation, both directions, on fixtures written from Google's API reference."""

from __future__ import annotations

import random
from typing import Literal, Optional

import orjson
import pydantic
import pytest
from provider_sdkcheck import (
    accumulate,
    check_openai_chunks,
    check_openai_completion,
    fixture_bytes,
    run_stream,
)

from metarouter.catalog import default_catalog
from metarouter.errors import GatewayError
from metarouter.providers import GeminiAdapter, ProviderConfig, get_adapter
from metarouter.providers.gemini import to_gemini_schema

CAT = default_catalog()
FLASH = CAT.get("google/gemini-flash-1.5")
PROVIDER = ProviderConfig(name="google", base_url="https://generativelanguage.googleapis.com/v1beta",
                          api_key="AIza-test", wire="gemini")
ADAPTER = GeminiAdapter()
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a place",
    "parameters": {"type": "object", "additionalProperties": False,
                   "properties": {"location": {"type": "string"}, "unit": {"type": ["string", "null"],
                                                                           "enum": ["c", "f"]}},
                   "required": ["location"]}}}]


def check_request(body: dict) -> None:
    """Every part of the outgoing body validates as the google-genai SDK's types (which forbid unknown fields)."""
    from google.genai import types

    assert set(body) <= {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig",
                         "safetySettings", "cachedContent"}, set(body)
    for c in body["contents"]:
        types.Content.model_validate(c)
        assert c["role"] in ("user", "model")
    if "systemInstruction" in body:
        types.Content.model_validate(body["systemInstruction"])
    if "generationConfig" in body:
        types.GenerationConfig.model_validate(body["generationConfig"])
        types.GenerateContentConfig.model_validate(body["generationConfig"])
    for t in body.get("tools", []):
        types.Tool.model_validate(t)
    if "toolConfig" in body:
        types.ToolConfig.model_validate(body["toolConfig"])
    for s in body.get("safetySettings", []):
        types.SafetySetting.model_validate(s)


def build(body: dict, model=FLASH, stream: bool = False, provider=PROVIDER) -> dict:
    req = ADAPTER.build_request(body, model, provider, stream=stream)
    out = orjson.loads(req.body)
    check_request(out)
    return out


def test_url_and_key_header() -> None:
    assert get_adapter(PROVIDER).wire == "gemini"
    msgs = {"messages": [{"role": "user", "content": "hi"}]}
    req = ADAPTER.build_request(msgs, FLASH, PROVIDER, stream=False)
    assert req.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-1.5-flash-002:generateContent"
    assert req.headers["x-goog-api-key"] == "AIza-test" and "key=" not in req.url
    bare = ProviderConfig(name="google", base_url="http://127.0.0.1:5", wire="gemini")
    sreq = ADAPTER.build_request(msgs, FLASH, bare, stream=True)
    assert sreq.url == "http://127.0.0.1:5/v1beta/models/gemini-1.5-flash-002:streamGenerateContent?alt=sse"


def test_roles_system_generation_config() -> None:
    out = build({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "three"},
    ], "temperature": 0.3, "top_p": 0.8, "top_k": 20, "max_tokens": 100, "stop": ["a", "b", "c", "d", "e", "f"],
        "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {"5": 1}, "user": "u"})
    assert out["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user"]
    assert out["contents"][0]["parts"] == [{"text": "one"}, {"text": "two"}]
    assert out["generationConfig"] == {"temperature": 0.3, "topP": 0.8, "topK": 20, "maxOutputTokens": 100,
                                       "stopSequences": ["a", "b", "c", "d", "e"], "seed": 7,
                                       "presencePenalty": 0.1, "frequencyPenalty": 0.2}


def test_images_inline_and_file_data() -> None:
    files_api = "https://generativelanguage.googleapis.com/v1beta/files/abc-123"
    out = build({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/a/cat.webp"}},
        {"type": "image_url", "image_url": {"url": files_api}},
    ]}]})
    parts = out["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert parts[2] == {"fileData": {"mimeType": "image/webp", "fileUri": "gs://bucket/a/cat.webp"}}
    assert parts[3] == {"fileData": {"mimeType": "image/jpeg", "fileUri": files_api}}
    # a web URL is no fileUri to Gemini: the pipeline fetches it and sends it inline; never sent as fileData
    assert GeminiAdapter.inline_images_only
    with pytest.raises(GatewayError) as ei:
        build({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a/cat.webp?x=1"}}]}]})
    assert ei.value.status == 400 and "inline" in ei.value.message


def test_tools_history_and_schema_conversion() -> None:
    out = build({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                 "messages": [
                     {"role": "user", "content": "Weather in Paris?"},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18}'},
                     {"role": "tool", "tool_call_id": "call_2", "name": "other", "content": "plain text"},
                 ]})
    decl = out["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_weather" and decl["description"] == "Weather for a place"
    assert decl["parameters"] == {"type": "OBJECT", "required": ["location"], "properties": {
        "location": {"type": "STRING"}, "unit": {"type": "STRING", "nullable": True, "enum": ["c", "f"]}}}
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert out["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]}
    assert out["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
        {"functionResponse": {"name": "other", "response": {"content": "plain text"}}}]}


@pytest.mark.parametrize("choice,mode", [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")])
def test_tool_choice_modes(choice: str, mode: str) -> None:
    out = build({"messages": [{"role": "user", "content": "x"}], "tools": TOOLS, "tool_choice": choice})
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array",
              "items": {"type": "string"}}}, "required": ["name"], "additionalProperties": False,
              "$schema": "http://json-schema.org/draft-07/schema#"}
    out = build({"messages": [{"role": "user", "content": "x"}],
                 "response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": True,
                                                                            "schema": schema}}})
    assert out["generationConfig"]["responseMimeType"] == "application/json"
    assert out["generationConfig"]["responseSchema"] == {
        "type": "OBJECT", "required": ["name"],
        "properties": {"name": {"type": "STRING"}, "tags": {"type": "ARRAY", "items": {"type": "STRING"}}}}
    obj = build({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})
    assert obj["generationConfig"] == {"responseMimeType": "application/json"}
    from google.genai import types

    types.Schema.model_validate(to_gemini_schema(TOOLS[0]["function"]["parameters"]))


class Address(pydantic.BaseModel):
    street: str
    city: Optional[str] = None


class Node(pydantic.BaseModel):
    value: int
    children: list["Node"] = []


class Person(pydantic.BaseModel):
    name: str
    address: Address
    previous: list[Address] = []
    home: Optional[Address] = None
    mood: Literal["ok", "meh"]
    either: int | str
    tree: Node


def _untitled(schema):
    """(google-genai also drops the title beside a nullable anyOf; metarouter keeps a field's words)"""
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items() if k != "title"}
    return [_untitled(v) for v in schema] if isinstance(schema, list) else schema


def test_json_schema_references_inlined_as_google_genai_does() -> None:
    """pydantic's $defs/$ref, anyOf-with-null and unions: the same Gemini Schema google-genai's own conversion
    makes, where the old translation sent `"address": {}` (its structure lost)."""
    from google.genai import types

    js = Person.model_json_schema()
    out = build({"messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "person", "schema": js}}})
    ours = out["generationConfig"]["responseSchema"]
    sdk = types.Schema.from_json_schema(json_schema=types.JSONSchema(**js)).model_dump(
        mode="json", by_alias=True, exclude_none=True)
    assert _untitled(ours) == _untitled(sdk)
    props = ours["properties"]
    assert props["address"] == {"type": "OBJECT", "required": ["street"], "properties": {
        "street": {"type": "STRING"}, "city": {"type": "STRING", "nullable": True}}}
    assert props["home"]["nullable"] is True and props["home"]["properties"] == props["address"]["properties"]
    assert props["previous"]["items"] == props["address"]
    assert props["either"]["anyOf"] == [{"type": "INTEGER"}, {"type": "STRING"}]
    # a recursive reference is inlined once, then cut where it recurses
    assert props["tree"] == {"type": "OBJECT", "required": ["value"], "properties": {
        "value": {"type": "INTEGER"}, "children": {"type": "ARRAY", "default": []}}}


def test_tool_parameters_references_enums_and_nullable() -> None:
    params = {"type": "object", "$defs": {"Unit": {"type": "string", "enum": ["c", "f"], "title": "Unit"}},
              "properties": {
                  "unit": {"$ref": "#/$defs/Unit", "description": "Which scale"},
                  "days": {"type": "integer", "enum": [1, 3, 7], "description": "Forecast length"},
                  "level": {"enum": [1, 2, None]},
                  "note": {"anyOf": [{"type": "string", "maxLength": 9}, {"type": "null"}]},
                  "flags": {"allOf": [{"$ref": "#/$defs/Unit"}], "description": "merged"}},
              "required": ["unit"]}
    out = build({"tools": [{"type": "function", "function": {"name": "f", "parameters": params}}],
                 "messages": [{"role": "user", "content": "x"}]})
    props = out["tools"][0]["functionDeclarations"][0]["parameters"]["properties"]
    assert props["unit"] == {"type": "STRING", "enum": ["c", "f"], "description": "Which scale"}
    # Gemini takes enums on STRING schemas only: an integer enum stays an integer, bounded and described
    assert props["days"] == {"type": "INTEGER", "minimum": 1, "maximum": 7,
                             "description": "Forecast length (one of 1, 3, 7)"}
    assert props["level"] == {"type": "INTEGER", "nullable": True, "minimum": 1, "maximum": 2,
                              "description": "One of 1, 2"}
    assert props["note"] == {"type": "STRING", "maxLength": 9, "nullable": True}
    assert props["flags"] == {"type": "STRING", "enum": ["c", "f"], "description": "merged"}
    with pytest.raises(GatewayError) as ei:
        build({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"$ref": "https://example.com/schema.json"}}}}}],
            "messages": [{"role": "user", "content": "x"}]})
    assert ei.value.status == 400 and "$ref" in ei.value.message


def test_safety_settings_from_provider_config() -> None:
    cfg = ProviderConfig(name="google", base_url="http://x", wire="gemini", extra={"safety_threshold": "BLOCK_NONE"})
    out = build({"messages": [{"role": "user", "content": "x"}]}, provider=cfg)
    assert len(out["safetySettings"]) == 4
    assert {s["threshold"] for s in out["safetySettings"]} == {"BLOCK_NONE"}
    assert "safetySettings" not in build({"messages": [{"role": "user", "content": "x"}]})


# ------------------------------------------------------------------------------------------------ responses

def test_response_text() -> None:
    resp = ADAPTER.parse_response(fixture_bytes("gemini/response_text.json"))
    check_openai_completion(resp)
    c = resp["choices"][0]
    assert c["message"]["content"] == "Hello there! How can I help you today?"
    assert c["finish_reason"] == "stop" and c["native_finish_reason"] == "STOP"
    assert resp["usage"] == {"prompt_tokens": 8, "completion_tokens": 11, "total_tokens": 19,
                             "prompt_tokens_details": {"cached_tokens": 4}}


def test_response_function_calls() -> None:
    resp = ADAPTER.parse_response(fixture_bytes("gemini/response_function_call.json"))
    check_openai_completion(resp)
    c = resp["choices"][0]
    assert c["finish_reason"] == "tool_calls" and c["native_finish_reason"] == "STOP"
    calls = c["message"]["tool_calls"]
    assert [tc["function"]["name"] for tc in calls] == ["get_weather", "get_time"]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"location": "Boston, MA", "unit": "celsius"}
    assert calls[0]["id"] != calls[1]["id"] and all(tc["id"].startswith("call_") for tc in calls)
    # deterministic: the same response gives the same ids
    again = ADAPTER.parse_response(fixture_bytes("gemini/response_function_call.json"))
    assert again["choices"][0]["message"]["tool_calls"][0]["id"] == calls[0]["id"]


@pytest.mark.parametrize("fixture,finish", [("gemini/response_max_tokens.json", "length"),
                                            ("gemini/response_safety.json", "content_filter")])
def test_response_finish_reasons(fixture: str, finish: str) -> None:
    resp = ADAPTER.parse_response(fixture_bytes(fixture))
    check_openai_completion(resp)
    assert resp["choices"][0]["finish_reason"] == finish


def test_blocked_prompt_is_a_clear_error() -> None:
    with pytest.raises(GatewayError) as e:
        ADAPTER.parse_response(fixture_bytes("gemini/response_blocked_prompt.json"))
    assert e.value.status == 403 and "blocked" in e.value.message and "SAFETY" in e.value.message
    assert e.value.metadata["reasons"] == ["SAFETY"]
    assert e.value.metadata["categories"] == ["HARM_CATEGORY_DANGEROUS_CONTENT"]


# -------------------------------------------------------------------------------------------------- streams

def test_stream_text_crlf() -> None:
    tr = ADAPTER.stream_translator(FLASH)
    chunks = run_stream(tr, fixture_bytes("gemini/stream_text.sse"))
    check_openai_chunks(chunks)
    acc = accumulate(chunks)
    assert acc["content"] == "The quick brown fox jumps over the lazy dog."
    assert acc["finish_reason"] == "stop" and tr.done
    assert tr.usage == {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}


def test_stream_function_calls() -> None:
    tr = ADAPTER.stream_translator(FLASH)
    chunks = run_stream(tr, fixture_bytes("gemini/stream_function_call.sse"))
    check_openai_chunks(chunks)
    acc = accumulate(chunks)
    assert acc["content"] == "Let me look that up."
    assert [(c["name"], orjson.loads(c["arguments"])) for c in acc["tool_calls"]] == [
        ("get_weather", {"location": "Boston, MA"}), ("get_weather", {"location": "Paris"})]
    assert acc["finish_reason"] == "tool_calls" and acc["native"] == "STOP"


@pytest.mark.parametrize("fixture", ["gemini/stream_text.sse", "gemini/stream_function_call.sse"])
def test_stream_chunk_boundaries(fixture: str) -> None:
    data = fixture_bytes(fixture)
    whole = accumulate(run_stream(ADAPTER.stream_translator(FLASH), data))
    assert accumulate(run_stream(ADAPTER.stream_translator(FLASH), data, splits=1)) == whole
    # a split between \r and \n must not produce a phantom blank line
    crs = [i + 1 for i in range(len(data)) if data[i : i + 1] == b"\r"]
    assert accumulate(run_stream(ADAPTER.stream_translator(FLASH), data, splits=crs)) == whole
    rnd = random.Random(3)
    for _ in range(20):
        cuts = rnd.sample(range(1, len(data)), 8)
        assert accumulate(run_stream(ADAPTER.stream_translator(FLASH), data, splits=cuts)) == whole


def test_stream_blocked_prompt_raises() -> None:
    with pytest.raises(GatewayError) as e:
        run_stream(ADAPTER.stream_translator(FLASH), fixture_bytes("gemini/stream_blocked.sse"))
    assert e.value.status == 403 and "PROHIBITED_CONTENT" in e.value.message


def test_stream_error_object_raises() -> None:
    data = b'data: {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}\r\n\r\n'
    with pytest.raises(GatewayError) as e:
        run_stream(ADAPTER.stream_translator(FLASH), data)
    assert e.value.status == 503 and "overloaded" in e.value.message


# --------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("status,fixture,expected,google_status", [
    (429, "gemini/error_429.json", 429, "RESOURCE_EXHAUSTED"),
    (400, "gemini/error_400.json", 400, "INVALID_ARGUMENT"),
    (503, "gemini/error_503.json", 503, "UNAVAILABLE"),
])
def test_errors(status: int, fixture: str, expected: int, google_status: str) -> None:
    err = ADAPTER.parse_error(status, fixture_bytes(fixture), PROVIDER)
    assert err.status == expected and err.metadata["status"] == google_status
    assert err.message.startswith("google: ") and err.metadata["raw_status"] == status


def test_error_array_wrapped() -> None:
    err = ADAPTER.parse_error(404, b'[{"error": {"code": 404, "message": "models/x is not found", "status": "NOT_FOUND"}}]',
                              PROVIDER)
    assert err.status == 404 and "not found" in err.message
