"""End to end, for every provider family: the real gateway, called with the ``openai`` SDK, in front of fake
upstreams that speak each family's own wire format (``metarouter.testing.fake_providers``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

import httpx
import openai
import pytest

from metarouter.catalog import default_catalog
from metarouter.catalog.providers import provider_wire
from metarouter.providers import ProviderConfig, get_adapter
from metarouter.testing.fake_providers import ERROR_BODIES

CAT = default_catalog()
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look something up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]


@dataclass(frozen=True)
class Family:
    name: str  # the fake's provider segment
    model: str
    native: bool  # a non-OpenAI wire format, whose fake echoes system prompts, images and tool results
    break_after: int  # frames the fake sends before cutting the connection (some content already out)
    error_status: int  # what the fake answers with
    gateway_status: int  # what the client must see

    @property
    def m(self):
        return CAT.get(self.model)

    def __str__(self) -> str:
        return self.name


FAMILIES = [
    Family("openai", "openai/gpt-4o-2024-08-06", False, 3, 429, 429),
    Family("anthropic", "anthropic/claude-3.5-sonnet", True, 4, 529, 503),
    Family("google", "google/gemini-flash-1.5", True, 2, 429, 429),
    Family("cohere", "cohere/command-r-plus", True, 3, 500, 502),
    Family("mistral", "mistralai/mistral-large-2407", False, 3, 422, 400),
    Family("deepseek", "deepseek/deepseek-r1", False, 3, 503, 503),
    Family("together", "meta-llama/llama-3.1-70b-instruct", False, 3, 500, 502),
]
TOOL_FAMILIES = [f for f in FAMILIES if f.m.tools]
params = pytest.mark.parametrize("fam", FAMILIES, ids=str)


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.api_key, max_retries=0)


def sent(fake, fam: Family) -> dict:
    reqs = fake.requests_for(fam.name)
    assert reqs, f"nothing reached the {fam.name} fake"
    return reqs[-1].body


def collect(stream):
    content, calls, finish, reasoning = [], {}, None, []
    chunks = list(stream)
    for c in chunks:
        for ch in c.choices:
            d = ch.delta
            content.append(d.content or "")
            if (d.model_extra or {}).get("reasoning"):
                reasoning.append(d.model_extra["reasoning"])
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                slot["id"] = slot["id"] or tc.id
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = ch.finish_reason or finish
    return "".join(content), [calls[i] for i in sorted(calls)], finish, chunks, "".join(reasoning)


@params
def test_plain_chat(client, fake, fam):
    resp = client.chat.completions.create(model=fam.model, messages=[{"role": "user", "content": f"hello {fam}"}],
                                          max_tokens=200)
    assert resp.model == fam.model
    assert resp.choices[0].message.content == f"You said: hello {fam}"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.model_extra["cost"] > 0
    assert sent(fake, fam)["messages" if fam.name != "google" else "contents"]
    if fam.name == "deepseek":  # the reasoner's chain of thought comes back as OpenRouter's `reasoning`
        assert resp.choices[0].message.model_extra["reasoning"] == "Let me think about it."


@params
def test_system_prompt(client, fake, fam):
    resp = client.chat.completions.create(model=fam.model, messages=[
        {"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "ahoy"}])
    body = sent(fake, fam)
    if fam.name == "anthropic":
        assert body["system"] == "Answer like a pirate." and all(m["role"] != "system" for m in body["messages"])
    elif fam.name == "google":
        assert body["systemInstruction"] == {"parts": [{"text": "Answer like a pirate."}]}
    else:
        assert body["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    expected = "You said: ahoy" + (" (system: Answer like a pirate.)" if fam.native else "")
    assert resp.choices[0].message.content == expected


@pytest.mark.parametrize("fam", TOOL_FAMILIES, ids=str)
def test_multi_turn_tool_call(client, fake, fam):
    messages = [{"role": "user", "content": "look up otters"}]
    first = client.chat.completions.create(model=fam.model, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"query": "look up otters"}
    messages += [choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"otters": 42}'}]
    second = client.chat.completions.create(model=fam.model, messages=messages, tools=TOOLS)
    body = sent(fake, fam)
    if fam.name == "anthropic":
        assert body["messages"][-1]["content"][0] == {"type": "tool_result", "tool_use_id": call.id,
                                                      "content": '{"otters": 42}'}
    elif fam.name == "google":
        assert body["contents"][-1]["parts"][0] == {"functionResponse": {"name": "lookup",
                                                                         "response": {"otters": 42}}}
    elif fam.name == "mistral":
        assert body["messages"][-1]["tool_call_id"] == body["messages"][-2]["tool_calls"][0]["id"]
    else:
        assert body["messages"][-1]["role"] == "tool" and body["messages"][-1]["tool_call_id"] == call.id
    answer = second.choices[0].message.content
    assert answer == ('The tool said: {"otters":42}' if fam.name == "google" else
                      'The tool said: {"otters": 42}' if fam.native and fam.name != "cohere" else
                      'The tool said: [{"otters":42}]' if fam.name == "cohere" else "You said: look up otters")
    assert second.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("fam", TOOL_FAMILIES, ids=str)
def test_streaming_tool_calls(client, fam):
    stream = client.chat.completions.create(model=fam.model, stream=True, tools=TOOLS,
                                            messages=[{"role": "user", "content": "search seals twice"}])
    _, calls, finish, chunks, _ = collect(stream)
    assert finish == "tool_calls"
    n = 2 if fam.native else 1
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("lookup", {"query": "search seals twice"}), ("lookup", {"query": "search seals twice #2"})][:n]
    assert all(c["id"] for c in calls) and len({c["id"] for c in calls}) == n
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_deepseek_reasoner_drops_sampling_refuses_tools_and_streams_reasoning(client, fake):
    fam = next(f for f in FAMILIES if f.name == "deepseek")
    stream = client.chat.completions.create(model=fam.model, stream=True, temperature=0.3,
                                            messages=[{"role": "user", "content": "think"}])
    content, calls, finish, _, reasoning = collect(stream)
    assert content == "You said: think" and not calls and finish == "stop"
    assert reasoning == "Let me think about it."
    assert "temperature" not in sent(fake, fam)
    # tools are a capability, not a tunable: like OpenRouter, a model without tool use is not an endpoint for them
    n = len(fake.requests_for("deepseek"))
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model=fam.model, tools=TOOLS, messages=[{"role": "user", "content": "think"}])
    assert "tool use" in ei.value.message and len(fake.requests_for("deepseek")) == n


@params
def test_streaming_plain(client, fam):
    content, _, finish, chunks, _ = collect(client.chat.completions.create(
        model=fam.model, stream=True, messages=[{"role": "user", "content": "stream this please"}]))
    assert content == "You said: stream this please" and finish == "stop"
    assert chunks[-1].usage.prompt_tokens > 0


@params
def test_echoed_history_streams(client, fake, fam):
    """A client sends the answer back as it got it (with `reasoning`, `refusal`, `annotations`) and names its user:
    every family takes it, streamed, with usage (Mistral refuses unknown fields, `stream_options` among them)."""
    first = client.chat.completions.create(model=fam.model, messages=[{"role": "user", "content": "one"}])
    echoed = {**first.choices[0].message.model_dump(), "reasoning": "I thought.", "annotations": []}
    content, _, finish, chunks, _ = collect(client.chat.completions.create(
        model=fam.model, stream=True, messages=[{"role": "user", "content": "one", "name": "ann"}, echoed,
                                                {"role": "user", "content": "two"}]))
    assert content.startswith("You said: two") and finish == "stop"
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0
    if fam.name == "mistral":
        body = sent(fake, fam)
        assert "stream_options" not in body
        assert {k for k, v in body["messages"][1].items() if v is not None} == {"role", "content"}


#: per-token prices in picodollars, as the providers publish them: (input, cache read, cache write, output)
CACHE_RATES = {"openai": (2_500_000, 1_250_000, 2_500_000, 10_000_000),
               "anthropic": (3_000_000, 300_000, 3_750_000, 15_000_000),
               "google": (75_000, 18_750, 75_000, 300_000),
               "deepseek": (550_000, 140_000, 550_000, 2_190_000)}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fam", [f for f in FAMILIES if f.name in CACHE_RATES], ids=str)
def test_cached_prompt_tokens_billed_at_cache_rates(client, gateway, fam, stream):
    """Each family's fake reports prompt-cache hits (and Anthropic cache writes) in its own usage fields; the cost
    prices them at the cache rates, exactly, with OpenRouter's cost_details and prompt_tokens_details."""
    text = "remember this CACHED 7" + (" CACHE_WRITE 5" if fam.name == "anthropic" else "")
    kwargs = {"model": fam.model, "messages": [{"role": "user", "content": text * 4}], "max_tokens": 200}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        gen_id, usage = chunks[-1].id, chunks[-1].usage
    else:
        resp = client.chat.completions.create(**kwargs)
        gen_id, usage = resp.id, resp.usage
    written = 5 if fam.name == "anthropic" else 0
    assert usage.prompt_tokens_details.cached_tokens == 7
    assert (usage.prompt_tokens_details.cache_write_tokens or 0) == written
    inp, read, write, out = CACHE_RATES[fam.name]
    prompt_pico = (usage.prompt_tokens - 7 - written) * inp + 7 * read + written * write
    completion_pico = usage.completion_tokens * out
    extra = usage.model_extra
    assert extra["cost"] == float(Decimal(prompt_pico + completion_pico) / 10**12)
    assert extra["cost_details"] == {"upstream_inference_cost": extra["cost"],
                                     "upstream_inference_prompt_cost": float(Decimal(prompt_pico) / 10**12),
                                     "upstream_inference_completions_cost": float(Decimal(completion_pico) / 10**12)}
    gen = httpx.get(f"{gateway.url}/api/v1/generation", params={"id": gen_id},
                    headers={"Authorization": f"Bearer {gateway.api_key}"}).json()["data"]
    assert gen["total_cost"] == extra["cost"] and gen["native_tokens_cached"] == 7


def test_uncached_usage_reports_zero_cached_tokens(client):
    resp = client.chat.completions.create(model="cohere/command-r", messages=[{"role": "user", "content": "hi"}])
    assert resp.usage.prompt_tokens_details.cached_tokens == 0
    assert resp.usage.model_extra["cost_details"]["upstream_inference_prompt_cost"] > 0


@params
def test_image_message(client, fake, fam):
    otter = f"{fake.url}/files/otter.jpg"
    parts = [{"type": "text", "text": "what is this"},
             {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
             {"type": "image_url", "image_url": {"url": otter}}]
    try:
        resp = client.chat.completions.create(model=fam.model, messages=[{"role": "user", "content": parts}])
    except openai.APIStatusError as exc:  # a gateway may refuse images for a text-only model, but cleanly
        assert not fam.m.vision and 400 <= exc.status_code < 500
        return
    body = sent(fake, fam)
    if fam.name == "anthropic":
        blocks = body["messages"][0]["content"]
        assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}
        assert blocks[2]["source"] == {"type": "url", "url": otter}
    elif fam.name == "google":  # Gemini takes no web URLs: the gateway fetched the image and sent it inline
        p = body["contents"][0]["parts"]
        assert p[1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
        assert p[2] == {"inlineData": {"mimeType": "image/jpeg", "data": PNG}}  # (the fake serves the same pixel)
    elif fam.name == "cohere":
        assert body["messages"][0]["content"][2] == {"type": "image_url", "image_url": {"url": otter}}
    else:
        assert body["messages"][0]["content"] == parts
    text = resp.choices[0].message.content
    assert text == ("You said: what is this [2 image(s)]" if fam.native else "You said: what is this")


@params
def test_json_mode(client, fake, fam):
    resp = client.chat.completions.create(model=fam.model, response_format={"type": "json_object"},
                                          messages=[{"role": "user", "content": "give json"}])
    adapter = get_adapter(ProviderConfig(name=fam.m.provider, base_url="", wire=provider_wire(fam.m.provider)))
    supported = "response_format" in adapter.supported_parameters(fam.m)
    if supported:
        assert json.loads(resp.choices[0].message.content) == {"echo": "give json"}
    else:
        assert resp.choices[0].message.content == "You said: give json"
        assert "response_format" not in sent(fake, fam)


@params
def test_provider_error(client, fake, fam):
    body = ERROR_BODIES[fam.name](fam.error_status, f"{fam} is unhappy") if fam.name in ERROR_BODIES else None
    fake.fail(fam.name, status=fam.error_status, body=body, times=5)  # the gateway may retry a retryable error
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model=fam.model, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == fam.gateway_status
    err = ei.value.body
    assert err["code"] == fam.gateway_status and err["message"].startswith(f"{fam}: ")
    if body is not None:
        assert f"{fam} is unhappy" in err["message"]


def _raw_stream(gateway, fam, text):
    with httpx.stream("POST", f"{gateway.url}/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {gateway.api_key}"},
                      json={"model": fam.model, "stream": True, "messages": [{"role": "user", "content": text}]},
                      timeout=30) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]


@params
def test_stream_broken_midway(client, gateway, fake, fam):
    fake.knobs(fam.name).break_stream_after = fam.break_after
    events = _raw_stream(gateway, fam, "one two three four five six seven")
    terminal = [e for e in events if e.get("choices") and e["choices"][0].get("finish_reason")]
    assert terminal and terminal[-1]["choices"][0]["finish_reason"] == "error"
    assert terminal[-1]["error"]["code"] == 502
    text = "".join((e["choices"][0]["delta"].get("content") or "") for e in events if e.get("choices"))
    assert text and "You said: one two three four five six seven".startswith(text)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("fam", [f for f in FAMILIES if f.native], ids=str)
def test_in_stream_provider_error(gateway, fam):
    """The family's own in-stream error (Anthropic `error` event, Gemini error object, Cohere ERROR end)."""
    events = _raw_stream(gateway, fam, "STREAM_ERROR please")
    terminal = events[-2]
    assert terminal["choices"][0]["finish_reason"] == "error"
    assert terminal["error"]["code"] == {"anthropic": 503, "google": 503, "cohere": 502}[fam.name]
    # the fakes fail right after the first word, which the client has already received
    assert "".join((e["choices"][0]["delta"].get("content") or "") for e in events if e.get("choices")) == "You"


def test_gemini_blocked_prompt(client):
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="google/gemini-flash-1.5",
                                       messages=[{"role": "user", "content": "BLOCK this"}])
    assert ei.value.status_code == 403 and "blocked" in ei.value.body["message"]


def test_anthropic_json_schema_with_tools_answers_json(client, fake):
    """A tool loop under a JSON-schema response format ends in JSON, not prose (Anthropic has no JSON mode: the
    answer is a forced tool, and with the user's tools some tool call stays forced)."""
    model = "anthropic/claude-3.5-sonnet"
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {
        "echo": {"type": "string"}}}}}
    messages = [{"role": "user", "content": "look up otters"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, response_format=rf)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and first.choices[0].finish_reason == "tool_calls"
    messages += [first.choices[0].message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}),
                 {"role": "tool", "tool_call_id": call.id, "content": "42 otters"}]
    second = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, response_format=rf)
    assert json.loads(second.choices[0].message.content) == {"echo": "42 otters"}
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert sent(fake, next(f for f in FAMILIES if f.name == "anthropic"))["tool_choice"] == {"type": "any"}


def test_anthropic_whitespace_stop_sequences(client, fake):
    resp = client.chat.completions.create(model="anthropic/claude-3.5-sonnet", stop=["\n", "otters"],
                                          messages=[{"role": "user", "content": "say otters twice"}])
    assert resp.choices[0].message.content == "You said: say " and resp.choices[0].finish_reason == "stop"
    assert fake.requests_for("anthropic")[-1].body["stop_sequences"] == ["otters"]


def test_gemini_image_that_cannot_be_fetched(client, fake):
    """Gemini needs the image inline: one that is not an image is a clear 400, and a fallback model that takes
    image URLs itself still answers."""
    parts = [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": f"{fake.url}/files/page.html"}}]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="google/gemini-flash-1.5", messages=[{"role": "user", "content": parts}])
    assert "not an image" in ei.value.message and "data URL" in ei.value.message
    assert not fake.requests_for("google")
    resp = client.chat.completions.create(model="google/gemini-flash-1.5", messages=[{"role": "user", "content": parts}],
                                          extra_body={"models": ["anthropic/claude-3.5-sonnet"]})
    assert resp.model == "anthropic/claude-3.5-sonnet"


def test_gemini_json_schema_with_references(client, fake):
    """A pydantic-style schema ($defs/$ref, anyOf with null) reaches Gemini with its structure inlined; a reference
    Gemini cannot be given is a 400."""
    schema = {"type": "object", "properties": {"address": {"$ref": "#/$defs/Address"}},
              "required": ["address"], "$defs": {"Address": {"type": "object", "title": "Address", "properties": {
                  "city": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}}}
    resp = client.chat.completions.create(model="google/gemini-flash-1.5", messages=[
        {"role": "user", "content": "where"}], response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(resp.choices[0].message.content) == {"echo": "where"}
    sent_schema = fake.requests_for("google")[-1].body["generationConfig"]["responseSchema"]
    assert sent_schema["properties"]["address"] == {"type": "OBJECT", "properties": {
        "city": {"type": "STRING", "nullable": True}}}
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="google/gemini-flash-1.5", messages=[
            {"role": "user", "content": "where"}], response_format={"type": "json_schema", "json_schema": {
                "name": "a", "schema": {"type": "object", "properties": {"a": {"$ref": "other.json#/x"}}}}})
    assert "$ref" in ei.value.message


@pytest.mark.parametrize("model_id", CAT.ids())
def test_every_catalog_model_answers(client, model_id):
    resp = client.chat.completions.create(model=model_id, messages=[{"role": "system", "content": "Be brief."},
                                                                   {"role": "user", "content": "ping"}],
                                          temperature=0.5, max_tokens=100)
    assert resp.model == model_id and resp.choices[0].message.content.startswith("You said: ping")
