"""The OpenAPI description is a valid 3.1 document whose chat constraints are validation.py's."""

from __future__ import annotations

import copy

import jsonschema_rs
import pytest
import schemathesis

from metarouter.api.openapi import chat_request_schema, openapi_document
from metarouter.api.validation import validate_chat_body
from metarouter.errors import GatewayError
from metarouter.gateway.cache import MAX_TTL


def test_document_is_valid_openapi_3_1():
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(copy.deepcopy(doc))
    schema.validate()  # the OpenAPI 3.1 meta-schema; raises on an invalid document
    ops = [r.ok() for r in schema.get_all_operations()]
    names = {(op.method.upper(), op.path) for op in ops}
    for expected in [("POST", "/chat/completions"), ("POST", "/messages"), ("POST", "/route"), ("POST", "/responses"),
                     ("GET", "/models"), ("GET", "/generation"), ("GET", "/key"), ("GET", "/credits"), ("POST", "/credits"),
                     ("GET", "/activity"), ("GET", "/activity/generations"), ("GET", "/activity/apps"),
                     ("GET", "/activity/summary"), ("GET", "/activity/export.csv"), ("GET", "/keys"),
                     ("POST", "/keys"), ("GET", "/keys/{public_id}"), ("PATCH", "/keys/{public_id}"),
                     ("DELETE", "/keys/{public_id}")]:
        assert expected in names
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "anthropicKey", "adminKey"}
    assert doc["paths"]["/keys"]["post"]["security"] == [{"adminKey": []}]


def test_document_with_a_broken_schema_is_refused():
    doc = openapi_document()
    doc["paths"]["/models"]["get"]["responses"] = "nope"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(doc).validate()


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("extra", [
    {"temperature": 2.5}, {"temperature": -0.1}, {"top_p": 1.01}, {"max_tokens": 0}, {"n": 0}, {"n": 129},
    {"stop": ["x"] * 17}, {"stream": "yes"}, {"presence_penalty": 3}, {"top_logprobs": 21},
    {"tool_choice": "sometimes"}, {"response_format": {"type": "xml"}}, {"response_format": {"type": "json_schema"}},
    {"session_id": 5}, {"provider": []}, {"plugins": {}}, {"model": 5}, {"messages": []},
    {"messages": [{"role": "wizard", "content": "x"}]}, {"messages": [{"role": "user"}]},
    {"messages": [{"role": "tool", "content": "x"}]}, {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]},
    {"messages": MSG * 6}, {"model": "m" * 257}, {"models": [5]}, {"models": ["m" * 257]}, {"models": "m"},
    {"logprobs": "yes"}, {"stream_options": 5},
    {"reasoning": "high"}, {"reasoning": {"effort": "max"}}, {"reasoning": {"effort": "high", "max_tokens": 100}},
    {"reasoning": {"max_tokens": -1}}, {"reasoning": {"max_tokens": 1.5}}, {"reasoning": {"exclude": "yes"}},
    {"reasoning_effort": "extreme"},
])
def test_schema_and_validation_refuse_the_same_bodies(extra):
    body = {"model": "m", "messages": MSG, **extra}
    validator = jsonschema_rs.Draft202012Validator(chat_request_schema(max_messages=5))
    assert not validator.is_valid(body)
    with pytest.raises(GatewayError) as exc:
        validate_chat_body(body, max_messages=5)
    assert exc.value.status == 400


@pytest.mark.parametrize("extra", [
    {}, {"temperature": 0}, {"temperature": 2}, {"top_p": 1}, {"max_tokens": 1}, {"n": 1}, {"n": 128}, {"stop": ["x"] * 16},
    {"stop": "x"}, {"stream": True}, {"stream": None}, {"tool_choice": {"type": "function", "function": {"name": "f"}}},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                         "function": {"name": "f"}}]},
                  {"role": "tool", "tool_call_id": "1", "content": "42"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "image_url", "image_url": {"url": "data:x"}}]}]},
    {"reasoning": {"effort": "high", "exclude": True}}, {"reasoning": {"max_tokens": 2000, "enabled": True}},
    {"reasoning": {"effort": "none", "max_tokens": None}}, {"reasoning_effort": "minimal"}, {"reasoning": None},
    {"messages": MSG * 5}, {"session_id": "s", "provider": {"order": ["openai"]},
                            "plugins": [{"id": "auto-router", "allowed_models": ["openai/*"]}]},
])
def test_schema_and_validation_accept_the_same_bodies(extra):
    body = {"model": "m", "messages": MSG, **extra}
    validator = jsonschema_rs.Draft202012Validator(chat_request_schema(max_messages=5))
    assert validator.is_valid(body), list(validator.iter_errors(body))
    validate_chat_body(body, max_messages=5)


@pytest.mark.parametrize("extra", [
    {"model": ""}, {"model": "m" * 257}, {"input": None}, {"input": []}, {"input": 5},
    {"input": [{"role": "robot", "content": "x"}]}, {"input": [{"role": "user"}]},
    {"input": [{"role": "user", "content": []}]}, {"input": [{"type": "item_reference", "id": "x"}]},
    {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": ""}]}]},
    {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u", "detail": "max"}]}]},
    {"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}]},
    {"input": [{"type": "function_call", "call_id": "a", "name": "f"}]},
    {"input": [{"type": "function_call_output", "call_id": 1, "output": "x"}]},
    {"input": [{"role": "user", "content": "x"}] * 6}, {"input": [{"type": "reasoning"}]},
    {"instructions": 5}, {"store": "no"}, {"temperature": 2.5}, {"top_p": -1}, {"max_output_tokens": 0},
    {"metadata": {"a": 1}}, {"metadata": {str(i): "v" for i in range(17)}}, {"reasoning": {"effort": "huge"}},
    {"truncation": "sometimes"}, {"tools": [{"type": "web_search"}]}, {"tools": [{"type": "function", "name": ""}]},
    {"tools": [{"type": "function", "name": "f", "parameters": []}]}, {"tool_choice": "sometimes"},
    {"tool_choice": {"type": "function"}}, {"text": {"format": {"type": "xml"}}},
    {"text": {"format": {"type": "json_schema", "name": "x"}}}, {"text": 5},
])
def test_responses_schema_and_validation_refuse_the_same_bodies(extra):
    from metarouter.api.openapi import responses_request_schema
    from metarouter.api.responses import validate_responses_body

    body = {"model": "m", "input": "hi", **extra}
    validator = jsonschema_rs.Draft202012Validator(responses_request_schema(max_items=5))
    assert not validator.is_valid(body)
    with pytest.raises(GatewayError) as exc:
        validate_responses_body(body, max_items=5)
    assert exc.value.status == 400


@pytest.mark.parametrize("extra", [
    {}, {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"},
                                                {"type": "input_image", "image_url": "u", "detail": None}]}]},
    {"input": [{"role": "assistant", "content": []}, {"type": "reasoning"},
               {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
               {"type": "function_call_output", "call_id": "a", "output": [{"type": "output_text", "text": "1"}]}]},
    {"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "f"}},
    {"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, {"reasoning": {}},
    {"metadata": {"a": "b"}, "truncation": None, "max_output_tokens": 1, "temperature": 0, "top_p": 1},
])
def test_responses_schema_and_validation_accept_the_same_bodies(extra):
    from metarouter.api.openapi import responses_request_schema
    from metarouter.api.responses import validate_responses_body

    body = {"model": "m", "input": "hi", **extra}
    assert jsonschema_rs.Draft202012Validator(responses_request_schema(max_items=5)).is_valid(body)
    validate_responses_body(body, max_items=5)


def test_response_cache_headers_are_described():
    doc = openapi_document()
    for path in ("/chat/completions", "/messages", "/responses"):
        op = doc["paths"][path]["post"]
        names = {p["name"] for p in op["parameters"] if p["in"] == "header"}
        assert {"X-OpenRouter-Cache", "X-OpenRouter-Cache-TTL"} <= names
        assert set(op["responses"]["200"]["headers"]) == {"X-OpenRouter-Cache-Status", "X-OpenRouter-Cache-TTL", "Age"}
    ttl = next(p for p in doc["paths"]["/chat/completions"]["post"]["parameters"] if p["name"] == "X-OpenRouter-Cache-TTL")
    assert (ttl["schema"]["minimum"], ttl["schema"]["maximum"]) == (1, MAX_TTL)
    assert doc["components"]["schemas"]["Generation"]["properties"]["cache_hit"]["type"] == "boolean"
