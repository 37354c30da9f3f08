"""Masking of secrets in what upstreams say: configured keys anywhere, key-shaped strings, and nothing else."""

from __future__ import annotations

import pytest

from metarouter.errors import GatewayError
from metarouter.redact import MASK, redact, redact_obj, register_secret


@pytest.mark.parametrize("text, expected", [
    ("Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz0123.", f"Incorrect API key provided: {MASK}."),
    ("invalid x-api-key: sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv", f"invalid x-api-key: {MASK}"),
    ("Authorization: Bearer abc.def-ghi_jkl", f"Authorization: Bearer {MASK}"),
    ("authorization: Basic dXNlcjpwYXNzd29yZA==", f"authorization: Basic {MASK}"),
    ("x-goog-api-key: 0123456789abcdef", f"x-goog-api-key: {MASK}"),
    ("GET /v1beta/models/m:generateContent?alt=sse&key=AIzaSyA-1234567890abcdefghijklmnopqrs failed",
     f"GET /v1beta/models/m:generateContent?alt=sse&key={MASK} failed"),
    ("the key AIzaSyA-1234567890abcdefghijklmnopqrs is invalid", f"the key {MASK} is invalid"),
    ("api_key=hunter2hunter2 rejected", f"api_key={MASK} rejected"),
])
def test_key_shaped_strings_are_masked(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "Missing API key: send `Authorization: Bearer sk-mr-…`",  # the gateway's own hint stays readable
    "openai/gpt-4o-mini-2024-07-18 is overloaded; retry in 2 s",
    "Request headers too large (limit 32768 bytes)",
    "skip-connections are not a key",
    "a basic understanding of key=value pairs",
])
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_configured_secrets_are_masked_wherever_they_appear():
    register_secret("plain-provider-secret-42")
    register_secret("short")  # too short to mask without masking words
    assert redact("token 'plain-provider-secret-42' expired (short)") == f"token '{MASK}' expired (short)"
    err = GatewayError(401, "together: bad key plain-provider-secret-42",
                       metadata={"upstream": {"param": "plain-provider-secret-42", "n": 3}})
    assert err.message == f"together: bad key {MASK}" and str(err) == err.message
    assert err.body()["error"]["metadata"] == {"upstream": {"param": MASK, "n": 3}}
    assert redact_obj(["plain-provider-secret-42", 1, None]) == [MASK, 1, None]
