"""Every answer of every provider family, checked against the official ``openrouter`` SDK's own response types.

The SDK validates each response (``ChatResult``) and each stream chunk (``ChatStreamChunk``) with pydantic and
rejects the whole answer when one required field is missing or has the wrong type; so a field any family leaves
out (``system_fingerprint`` from Anthropic, Gemini, Cohere and Mistral) breaks that SDK and langchain-openrouter.
The raw bodies are validated too, so that the check does not depend on what the SDK's client happens to read.
"""

from __future__ import annotations

import httpx
import orjson
import pytest
from openrouter import OpenRouter
from openrouter.components import ChatResult, ChatStreamChunk, GenerationResponse
from openrouter.operations import GetCreditsResponse

FAMILIES = {
    "openai": "openai/gpt-4o-2024-08-06",
    "anthropic": "anthropic/claude-3.5-sonnet",
    "google": "google/gemini-flash-1.5",
    "cohere": "cohere/command-r-plus",
    "mistral": "mistralai/mistral-large-2407",
    "deepseek": "deepseek/deepseek-r1",
    "together": "meta-llama/llama-3.1-70b-instruct",
}
TOOL_FAMILIES = ["openai", "anthropic", "google", "cohere", "mistral", "together"]
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look something up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]
families = pytest.mark.parametrize("family", FAMILIES)


@pytest.fixture
def client(gateway):
    return OpenRouter(api_key=gateway.api_key, server_url=gateway.url + "/api/v1")


def post(gateway, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(gateway.url + "/api/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {gateway.api_key}", **headers})


def chunks(resp: httpx.Response) -> list[dict]:
    assert resp.status_code == 200, resp.text
    datas = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [orjson.loads(d) for d in datas[:-1]]


def validate_stream(resp: httpx.Response) -> list[ChatStreamChunk]:
    return [ChatStreamChunk.model_validate(c) for c in chunks(resp)]


@families
def test_sdk_reads_every_familys_answer(client, family):
    r = client.chat.send(model=FAMILIES[family], messages=[{"role": "user", "content": "hello there"}])
    assert r.model == FAMILIES[family] and r.choices[0].message.content.endswith("You said: hello there")
    assert r.system_fingerprint is None or isinstance(r.system_fingerprint, str)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@families
def test_sdk_reads_every_familys_stream(client, family):
    got = list(client.chat.send(model=FAMILIES[family], messages=[{"role": "user", "content": "stream me"}],
                                stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices).endswith("You said: stream me")
    assert got[-1].usage.cost > 0


@pytest.mark.parametrize("family", TOOL_FAMILIES)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_tool_calls_and_metadata_validate(gateway, family, stream):
    body = {"model": FAMILIES[family], "messages": [{"role": "user", "content": "find cats"}], "tools": TOOLS,
            "stream": stream}
    resp = post(gateway, body, **{"X-OpenRouter-Metadata": "enabled"})
    if not stream:
        assert resp.status_code == 200, resp.text
        r = ChatResult.model_validate(resp.json())
        assert "system_fingerprint" in resp.json()
        assert r.choices[0].message.tool_calls[0].function.name == "lookup"
        assert r.openrouter_metadata is not None and r.openrouter_metadata.requested == FAMILIES[family]
        return
    got = validate_stream(resp)
    calls = [tc for c in got for ch in c.choices for tc in ch.delta.tool_calls or ()]
    assert calls and calls[0].function.name == "lookup"
    assert got[-1].openrouter_metadata is not None


def test_auto_with_metadata_validates(gateway):
    body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    r = ChatResult.model_validate(post(gateway, body, **{"X-OpenRouter-Metadata": "enabled"}).json())
    assert r.openrouter_metadata.strategy == "auto" and r.openrouter_metadata.requested == "auto"
    got = validate_stream(post(gateway, {**body, "stream": True}, **{"X-OpenRouter-Metadata": "enabled"}))
    assert got[-1].openrouter_metadata.strategy == "auto"


@pytest.mark.parametrize("family", ["anthropic", "google", "cohere"])  # the fakes with an in-stream error
def test_in_stream_error_chunk_validates(gateway, family):
    got = validate_stream(post(gateway, {"model": FAMILIES[family], "stream": True,
                                         "messages": [{"role": "user", "content": "STREAM_ERROR please"}]}))
    errors = [c for c in got if c.error is not None]
    assert errors and errors[0].choices[0].finish_reason == "error"


def test_error_before_the_first_byte_of_a_committed_stream_validates(gateway, fake):
    """An upstream that fails after the stream committed to 200 (``: OPENROUTER PROCESSING`` sent) ends it with
    an error chunk: it too must be a valid chunk, with an id and a model."""
    fake.knobs("openai").latency = 0.6  # past stream_commit_after (0.3 s): the gateway commits, then the 400 comes
    fake.fail("openai", 400, times=1)
    got = validate_stream(post(gateway, {"model": FAMILIES["openai"], "stream": True,
                                         "messages": [{"role": "user", "content": "hi"}]}))
    assert got[-1].error is not None and got[-1].error.code == 400
    assert got[-1].model == FAMILIES["openai"] and got[-1].id


def test_generation_and_credits_validate(gateway):
    r = post(gateway, {"model": FAMILIES["anthropic"], "messages": [{"role": "user", "content": "hi"}]}).json()
    auth = {"Authorization": f"Bearer {gateway.api_key}"}
    g = httpx.get(gateway.url + "/api/v1/generation", params={"id": r["id"]}, headers=auth)
    assert GenerationResponse.model_validate(g.json()).data.id == r["id"]
    c = httpx.get(gateway.url + "/api/v1/credits", headers=auth)
    GetCreditsResponse.model_validate(c.json())


def test_unlimited_credits_read_by_the_sdk(fake, tmp_path):
    """With no credit set the SDK still gets numbers — the most the account could hold — and ``unlimited`` says
    why; after a top-up it gets the credit itself."""
    from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
    from metarouter.testing.gateway_process import GatewayProcess

    from ..conftest import gateway_config

    with GatewayProcess(gateway_config(fake), tmp_path, env=FAKE_KEYS_ENV) as gw:
        key = gw.create_key("credits")
        sdk = OpenRouter(api_key=key, server_url=gw.url + "/api/v1")
        credits = sdk.credits.get_credits().data
        assert credits.total_credits == 9_000_000.0 and credits.total_usage == 0
        raw = httpx.get(gw.url + "/api/v1/credits", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        assert raw["unlimited"] is True
        gw.cli("credits", "--add", "3")
        assert sdk.credits.get_credits().data.total_credits == 3.0


@pytest.mark.parametrize("family", ["openai", "mistral", "together"])
def test_several_choices_validate(gateway, family):
    body = {"model": FAMILIES[family], "messages": [{"role": "user", "content": "hi"}], "n": 2}
    r = ChatResult.model_validate(post(gateway, body).json())
    assert [c.index for c in r.choices] == [0, 1]
    got = validate_stream(post(gateway, {**body, "stream": True}))
    assert {ch.index for c in got for ch in c.choices} == {0, 1}
