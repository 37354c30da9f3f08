"""schemathesis against the live server, from the OpenAPI document it serves (``GET /api/v1/openapi.json``).

Every generated request, valid (positive) or schema-invalid (negative): never a 5xx; answers conform to the
documented status codes, content types and schemas; a schema-invalid request is refused with a 4xx; and a 4xx
stores and charges nothing (the ledger — generation count, spend, credits, keys — is unchanged). Answered chat
requests (the fake upstream says 200) do store one record each: that is waited for, then the next case runs.

Bounded and reproducible: a fixed number of examples per operation, ``derandomize=True``, no example database.
"""

from __future__ import annotations

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from metarouter.api import messages as messages_api
from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config

ADMIN = "fuzz-admin-" + "a1" * 20
MODEL = "openai/gpt-4o-mini-2024-07-18"
ADMIN_OPS = {"addCredits", "listKeys", "createKey", "getAdminKey", "updateKey", "deleteKey"}
POSITIVE = GenerationMode.POSITIVE
NEGATIVE = GenerationMode.NEGATIVE

# (operationId, mode, examples): the chat endpoint gets most of the budget
PLAN = [
    ("createChatCompletion", POSITIVE, 120),
    ("createChatCompletion", NEGATIVE, 120),
    ("createMessage", POSITIVE, 80),
    ("createMessage", NEGATIVE, 80),
    ("createResponse", POSITIVE, 80),
    ("createResponse", NEGATIVE, 80),
    ("routeChatRequest", POSITIVE, 20),
    ("routeChatRequest", NEGATIVE, 20),
    ("listModels", POSITIVE, 3),
    ("listModelEndpoints", POSITIVE, 20),
    ("getGeneration", POSITIVE, 20),
    ("getGeneration", NEGATIVE, 10),
    ("getKey", POSITIVE, 3),
    ("getCredits", POSITIVE, 3),
    ("addCredits", POSITIVE, 20),
    ("addCredits", NEGATIVE, 30),
    ("getActivity", POSITIVE, 20),
    ("listGenerations", POSITIVE, 20),
    ("getActivitySummary", POSITIVE, 15),
    ("exportActivity", POSITIVE, 10),
    ("appRanking", POSITIVE, 10),
    ("listKeys", POSITIVE, 3),
    ("createKey", POSITIVE, 20),
    ("createKey", NEGATIVE, 30),
    ("getAdminKey", POSITIVE, 20),
    ("updateKey", POSITIVE, 30),
    ("updateKey", NEGATIVE, 30),
    ("deleteKey", POSITIVE, 10),
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_gw(fake, tmp_path_factory):
    env = {**FAKE_KEYS_ENV, "METAROUTER_ADMIN_KEY": ADMIN}
    with GatewayProcess(gateway_config(fake), tmp_path_factory.mktemp("fuzz"), env=env) as g:
        g.api_key = g.create_key("fuzz")
        g.schema = schemathesis.openapi.from_url(g.url + "/api/v1/openapi.json")
        g.http = httpx.Client(base_url=g.url, timeout=30)
        # a real key for the admin operations on one key to change (never the one the fuzzing uses), and a real
        # generation for GET /generation to find
        g.victim_id = g.http.post("/api/v1/keys", headers={"Authorization": f"Bearer {ADMIN}"},
                                  json={"name": "victim"}).json()["data"]["id"]
        g.gen_id = g.http.post("/api/v1/chat/completions", headers={"Authorization": f"Bearer {g.api_key}"},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).json()["id"]
        yield g
        g.http.close()


def ledger(gw) -> dict:
    """Everything a request could store or charge, seen through the API (``GET /credits`` flushes pending writes)."""
    key_h = {"Authorization": f"Bearer {gw.api_key}"}
    admin_h = {"Authorization": f"Bearer {ADMIN}"}
    credits = gw.http.get("/api/v1/credits", headers=key_h).json()["data"]
    rows = gw.http.get("/api/v1/activity", headers=admin_h).json()["data"]
    keys = gw.http.get("/api/v1/keys", headers=admin_h).json()["data"]
    return {
        "generations": sum(r["requests"] for r in rows),
        "spent": round(sum(r["usage"] for r in rows), 12),
        "credits": credits,
        "keys": sorted((k["id"], k["name"], k["disabled"], k["limit"], k["usage"], k["rpm"], k["tpm"]) for k in keys),
    }


def _operation(schema, operation_id: str):
    for result in schema.get_all_operations():
        op = result.ok()
        if op.definition.raw.get("operationId") == operation_id:
            return op
    raise LookupError(operation_id)


def test_served_document_lists_every_operation(fuzz_gw):
    r = fuzz_gw.http.get("/api/v1/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert fuzz_gw.http.get("/v1/openapi.json").json() == r.json() == fuzz_gw.http.get("/openapi.json").json()
    fuzz_gw.schema.validate()
    ids = {result.ok().definition.raw["operationId"] for result in fuzz_gw.schema.get_all_operations()}
    assert ids == {op_id for op_id, _, _ in PLAN}


@pytest.mark.parametrize("operation_id,mode,examples", PLAN, ids=[f"{o}-{m.value}" for o, m, _ in PLAN])
def test_fuzz(fuzz_gw, operation_id, mode, examples):
    gw = fuzz_gw
    op = _operation(gw.schema, operation_id)
    token = ADMIN if operation_id in ADMIN_OPS else gw.api_key
    is_chat = operation_id in ("createChatCompletion", "createMessage", "createResponse")  # recorded when answered
    # Half of the valid chat (and messages) bodies name a real model, so that some are answered (200) rather than all refused
    # for an unknown model id.
    model = st.sampled_from([None, MODEL]) if is_chat and mode is POSITIVE else st.just(None)
    cases = op.as_strategy(generation_mode=mode)
    # random ids are all 404s: half of the cases name a real key or generation instead
    if operation_id in ("getAdminKey", "deleteKey") and mode is POSITIVE or operation_id == "updateKey":
        cases = st.one_of(cases, op.as_strategy(generation_mode=mode, path_parameters={"public_id": gw.victim_id}))
    if operation_id == "getGeneration" and mode is POSITIVE:
        cases = st.one_of(cases, op.as_strategy(generation_mode=mode, query={"id": gw.gen_id}))
    if operation_id == "listModelEndpoints" and mode is POSITIVE:  # and half of the model ids are real
        author, slug = MODEL.split("/")
        cases = st.one_of(cases, op.as_strategy(generation_mode=mode, path_parameters={"author": author,
                                                                                        "slug": slug}))
    seen: dict[int, int] = {}
    judged = [0]  # negative cases sent as negative

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=cases, model=model)
    def fuzz(case, model):
        if model is not None and isinstance(case.body, dict):
            case.body["model"] = model
        before = ledger(gw)
        # Every case is sent with a working key (in place of the random bearer token schemathesis makes up), so
        # that the body, query or path is what gets judged; schemathesis re-reads what the case then negates.
        headers = {"Authorization": f"Bearer {token}"}
        case.headers = {**(case.headers or {}), **headers}
        response = case.call(base_url=gw.url + "/api/v1", timeout=30)
        negated = {loc.value for loc, info in case.meta.components.items() if info.mode is NEGATIVE}
        negative = bool(negated - {"header"})
        status = response.status_code
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, f"{status}: {response.text[:500]}"
        assert "Traceback" not in response.text
        case.validate_response(response, checks=CHECKS + ([negative_data_rejection] if negative else []),
                               headers=headers)
        if negative:
            judged[0] += 1
            assert 400 <= status < 500, f"schema-invalid input answered {status}"
        if 400 <= status < 500:
            if operation_id == "createMessage":  # Anthropic's error shape
                assert response.json()["type"] == "error"
                assert response.json()["error"]["type"] == messages_api.error_type(status)
            elif operation_id == "createResponse":  # OpenAI's error shape
                err = response.json()["error"]
                assert isinstance(err["type"], str) and isinstance(err["message"], str)
            else:
                assert response.json()["error"]["code"] == status
            assert ledger(gw) == before, f"a {status} changed the ledger"
        elif is_chat:
            # one record per answered request; written just after the answer (a stream's after its last frame)
            deadline = time.monotonic() + 10
            while (after := ledger(gw))["generations"] == before["generations"] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert after["generations"] == before["generations"] + 1

    fuzz()

    assert sum(seen.values()) >= 1
    if mode is NEGATIVE:
        assert judged[0] >= examples // 3  # most negative cases are judged as such
