"""One ``parse_error`` for every adapter: each says only where its error body keeps the message and metadata."""

from __future__ import annotations

import orjson
import pytest

from metarouter.config import ProviderConfig
from metarouter.providers import WIRE_ADAPTERS, adapter_for

P = ProviderConfig(name="acme", base_url="http://x")

BODIES = {  # each family's own error shape → (message, metadata it adds)
    "openai": ({"error": {"message": "bad temp", "type": "invalid_request_error", "param": "temperature",
                          "code": None}}, "bad temp", {"type": "invalid_request_error", "param": "temperature"}),
    "anthropic": ({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}, "request_id": "req_1"},
                  "busy", {"type": "overloaded_error", "request_id": "req_1"}),
    "gemini": ([{"error": {"code": 400, "message": "no", "status": "INVALID_ARGUMENT"}}], "no",
               {"status": "INVALID_ARGUMENT"}),
    "cohere": ({"message": "invalid request: model"}, "invalid request: model", {}),
}


@pytest.mark.parametrize("wire", list(WIRE_ADAPTERS))
def test_the_family_says_where_its_message_is(wire):
    body, message, meta = BODIES[wire]
    err = WIRE_ADAPTERS[wire].parse_error(400, orjson.dumps(body), P)
    assert (err.status, err.message) == (400, f"acme: {message}")
    assert err.metadata == {"provider_name": "acme", "raw_status": 400, **meta}


@pytest.mark.parametrize("wire", list(WIRE_ADAPTERS))
def test_a_body_without_a_message_is_shown_as_it_came(wire):
    adapter = WIRE_ADAPTERS[wire]
    for data in (b"<html>Bad Gateway</html>", b'{"unexpected": true}', b"[]", b'"text"'):
        err = adapter.parse_error(502, data, P)
        assert (err.status, err.message) == (502, f"acme: {data.decode()}")
        assert err.metadata == {"provider_name": "acme", "raw_status": 502}
    assert adapter.parse_error(529, b"", P).message == "acme: upstream returned HTTP 529"
    assert adapter.parse_error(529, b"", P).status == 503


def test_the_openai_family_reads_the_other_shapes_of_compatible_hosts():
    mistral = adapter_for("mistral")
    assert mistral.parse_error(422, b'{"object": "error", "message": "extra_forbidden"}', P).message == \
        "acme: extra_forbidden"
    assert mistral.parse_error(404, b'{"detail": "Not Found"}', P).message == "acme: Not Found"
    assert mistral.parse_error(500, b'{"error": "boom"}', P).message == "acme: boom"


def test_cohere_maps_its_own_statuses():
    assert WIRE_ADAPTERS["cohere"].parse_error(498, b'{"message": "invalid api token"}', P).status == 401
    assert WIRE_ADAPTERS["cohere"].parse_error(499, b"{}", P).status == 408
