"""Response caching end to end with the ``openai`` SDK: asked for with ``X-OpenRouter-Cache``, a repeated request
is answered from the cache (``X-OpenRouter-Cache-Status: HIT``) without calling the upstream, at zero cost, recorded;
streams replay as streams; never across keys; never an error; in Redis when configured (shared, surviving a
restart)."""

from __future__ import annotations

import os
import time

import httpx
import openai
import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config
from .test_metrics import parse, total

MODEL = "openai/gpt-4o-mini-2024-07-18"
REDIS_URL = os.environ.get("METAROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CACHE = {"X-OpenRouter-Cache": "true"}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    with GatewayProcess(gateway_config(fake), tmp_path_factory.mktemp("cache"), env=FAKE_KEYS_ENV) as g:
        g.api_key = g.create_key("cache")
        g.other_key = g.create_key("other")
        yield g


def client(gw, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key or gw.api_key, max_retries=0)


def create(gw, content: str, headers=None, key=None, **extra):
    """(parsed answer, response headers) of one chat request."""
    raw = client(gw, key).chat.completions.with_raw_response.create(
        model=extra.pop("model", MODEL), messages=[{"role": "user", "content": content}],
        extra_headers=headers or {}, **extra)
    return raw.parse(), raw.headers



def key_usage(gw, key=None) -> float:
    return httpx.get(gw.url + "/api/v1/key", headers={"Authorization": f"Bearer {key or gw.api_key}"}).json()["data"]["usage"]


def upstream_calls(fake) -> int:
    return len(fake.requests_for("openai"))


def test_a_repeated_request_is_a_free_hit(gw, fake):
    usage_before = key_usage(gw)
    first, h1 = create(gw, "cache me", CACHE)
    assert h1["x-openrouter-cache-status"] == "MISS" and h1["x-openrouter-cache-ttl"] == "300"
    calls = upstream_calls(fake)
    second, h2 = create(gw, "cache me", CACHE)
    assert h2["x-openrouter-cache-status"] == "HIT" and int(h2["age"]) >= 0
    assert upstream_calls(fake) == calls  # the model was not called again
    assert second.id != first.id and second.id.startswith("gen-")
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.model == first.model and second.choices[0].finish_reason == first.choices[0].finish_reason
    assert first.usage.prompt_tokens > 0 and first.usage.model_extra["cost"] > 0
    assert (second.usage.prompt_tokens, second.usage.completion_tokens, second.usage.total_tokens) == (0, 0, 0)
    assert second.usage.model_extra["cost"] == 0
    # recorded: the hit as a generation of its own, cost 0 and flagged; the key paid for the miss only
    hit, miss = gw.generation(second.id), gw.generation(first.id)
    assert hit["cache_hit"] is True and miss["cache_hit"] is False
    assert hit["total_cost"] == 0 and hit["tokens_prompt"] == 0 and hit["model"] == MODEL
    assert hit["routing"]["cache"]["original_id"] == first.id and "response cache" in hit["routing"]["reason"]
    assert key_usage(gw) == pytest.approx(usage_before + miss["total_cost"], abs=1e-12)
    # the Activity shows the hit with its flag
    rows = httpx.get(gw.url + "/api/v1/activity/generations",
                     headers={"Authorization": f"Bearer {gw.api_key}"}).json()["data"]
    assert {r["id"]: r["cache_hit"] for r in rows}[second.id] is True
    _, samples = parse(httpx.get(gw.url + "/metrics").text)
    assert total(samples, "metarouter_response_cache_requests_total", result="hit") >= 1
    assert total(samples, "metarouter_response_cache_requests_total", result="miss") >= 1


def test_only_when_asked(gw, fake):
    _, h = create(gw, "not cached")
    assert "x-openrouter-cache-status" not in h
    calls = upstream_calls(fake)
    _, h = create(gw, "not cached")
    assert "x-openrouter-cache-status" not in h and upstream_calls(fake) == calls + 1
    # asking later finds nothing stored by the requests that did not ask
    _, h = create(gw, "not cached", CACHE)
    assert h["x-openrouter-cache-status"] == "MISS"
    _, h = create(gw, "not cached", {"X-OpenRouter-Cache": "false"})
    assert "x-openrouter-cache-status" not in h


def test_identical_means_identical(gw):
    create(gw, "same body", CACHE, temperature=0.5)
    assert create(gw, "same body", CACHE, temperature=0.5)[1]["x-openrouter-cache-status"] == "HIT"
    assert create(gw, "same body", CACHE, temperature=0.7)[1]["x-openrouter-cache-status"] == "MISS"
    assert create(gw, "same body", CACHE)[1]["x-openrouter-cache-status"] == "MISS"
    # property order does not matter: the key is the canonical JSON of the body
    body = {"messages": [{"content": "ordered", "role": "user"}], "model": MODEL}
    for b in (body, dict(reversed(list(body.items())))):
        r = httpx.post(gw.url + "/v1/chat/completions", json=b, headers={**CACHE, "Authorization": f"Bearer {gw.api_key}"})
        assert r.status_code == 200
    assert r.headers["x-openrouter-cache-status"] == "HIT"


def test_never_across_keys(gw, fake):
    create(gw, "my answer", CACHE)
    assert create(gw, "my answer", CACHE)[1]["x-openrouter-cache-status"] == "HIT"
    calls = upstream_calls(fake)
    other, h = create(gw, "my answer", CACHE, key=gw.other_key)
    assert h["x-openrouter-cache-status"] == "MISS" and upstream_calls(fake) == calls + 1
    assert other.usage.model_extra["cost"] > 0


def test_errors_are_not_cached(gw, fake):
    fake.fail("openai", status=400, times=1)
    with pytest.raises(openai.BadRequestError):
        create(gw, "fails first", CACHE)
    answer, h = create(gw, "fails first", CACHE)
    assert h["x-openrouter-cache-status"] == "MISS" and answer.choices[0].message.content


def test_streams_replay_as_streams(gw, fake):
    def stream(content):
        with client(gw).chat.completions.with_streaming_response.create(
                model=MODEL, messages=[{"role": "user", "content": content}], stream=True,
                stream_options={"include_usage": True}, extra_headers=CACHE) as raw:
            return list(raw.parse()), raw.headers

    first, h1 = stream("stream and cache me")
    calls = upstream_calls(fake)
    second, h2 = stream("stream and cache me")
    assert (h1["x-openrouter-cache-status"], h2["x-openrouter-cache-status"]) == ("MISS", "HIT")
    assert h2["content-type"].startswith("text/event-stream")
    assert upstream_calls(fake) == calls
    assert len(second) == len(first) > 2
    assert [c.choices[0].delta.content for c in second if c.choices] == \
        [c.choices[0].delta.content for c in first if c.choices]
    assert len({c.id for c in second}) == 1 and second[0].id != first[0].id
    assert first[-1].usage.completion_tokens > 0 and first[-1].usage.model_extra["cost"] > 0
    assert second[-1].usage.completion_tokens == 0 and second[-1].usage.model_extra["cost"] == 0
    hit = gw.generation(second[0].id)
    assert hit["streamed"] is True and hit["cache_hit"] is True and hit["total_cost"] == 0
    # a stream and a JSON answer are not the same request
    assert create(gw, "stream and cache me", CACHE)[1]["x-openrouter-cache-status"] == "MISS"


def test_auto_answers_are_served_with_the_model_that_gave_them(gw):
    first, _ = create(gw, "auto, cached", CACHE, model="auto")
    second, h = create(gw, "auto, cached", CACHE, model="auto")
    assert h["x-openrouter-cache-status"] == "HIT" and second.model == first.model
    hit = gw.generation(second.id)
    assert hit["requested_model"] == "auto" and hit["model"] == first.model and hit["router"] is None


def test_ttl_and_bad_headers(gw):
    _, h = create(gw, "short-lived", {**CACHE, "X-OpenRouter-Cache-TTL": "1"})
    assert h["x-openrouter-cache-ttl"] == "1"
    time.sleep(1.2)  # past the entry's TTL (it cannot be served after it, however slow the machine)
    assert create(gw, "short-lived", CACHE)[1]["x-openrouter-cache-status"] == "MISS"
    for headers, needle in (({"X-OpenRouter-Cache": "maybe"}, "X-OpenRouter-Cache must be"),
                            ({**CACHE, "X-OpenRouter-Cache-TTL": "0"}, "X-OpenRouter-Cache-TTL"),
                            ({**CACHE, "X-OpenRouter-Cache-TTL": "86401"}, "X-OpenRouter-Cache-TTL"),
                            ({**CACHE, "X-OpenRouter-Cache-TTL": "soon"}, "X-OpenRouter-Cache-TTL")):
        with pytest.raises(openai.BadRequestError, match=needle):
            create(gw, "bad header", headers)


def test_the_messages_api_uses_it_too(gw):
    import anthropic

    c = anthropic.Anthropic(base_url=gw.url, api_key=gw.api_key, max_retries=0)
    for status in ("MISS", "HIT"):
        raw = c.messages.with_raw_response.create(model=MODEL, max_tokens=64, extra_headers=CACHE,
                                                  messages=[{"role": "user", "content": "anthropic cached"}])
        msg = raw.parse()
        assert raw.headers["x-openrouter-cache-status"] == status and msg.content[0].text
    assert msg.usage.input_tokens == 0 and msg.usage.output_tokens == 0


def test_config_caches_every_request_and_redis_shares_it(fake, tmp_path):
    """``response_cache.enabled`` with ``redis_url``: entries live in Redis, so they outlive the process that
    stored them (and are shared by every replica)."""
    cfg = gateway_config(fake, redis_url=REDIS_URL, response_cache={"enabled": True, "ttl": 60})
    with GatewayProcess(cfg, tmp_path, env=FAKE_KEYS_ENV) as g:
        g.api_key = key = g.create_key("redis-cache")
        first, h = create(g, "kept in redis")
        assert h["x-openrouter-cache-status"] == "MISS" and h["x-openrouter-cache-ttl"] == "60"
        assert create(g, "kept in redis", {"X-OpenRouter-Cache": "false"})[1].get("x-openrouter-cache-status") is None
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = r.keys("metarouter:response-cache:v1:*")
    assert keys and 0 < r.ttl(keys[0]) <= 60
    r.close()
    with GatewayProcess(cfg, tmp_path, env=FAKE_KEYS_ENV) as g:  # a new process: nothing in its memory
        g.api_key = key
        calls = upstream_calls(fake)
        second, h = create(g, "kept in redis")
        assert h["x-openrouter-cache-status"] == "HIT" and upstream_calls(fake) == calls
        assert second.choices[0].message.content == first.choices[0].message.content
        assert second.usage.model_extra["cost"] == 0


def test_the_responses_api_replays_its_stream(gw, fake):
    c = client(gw)
    finals, statuses = [], []
    for _ in range(2):
        with c.responses.with_streaming_response.create(model=MODEL, input="responses, cached", stream=True,
                                                        extra_headers=CACHE) as raw:
            statuses.append(raw.headers["x-openrouter-cache-status"])
            events = list(raw.parse())
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        finals.append(events[-1].response)
    assert statuses == ["MISS", "HIT"]
    first, second = finals
    assert second.output_text == first.output_text and second.id != first.id
    assert first.usage.output_tokens > 0 and second.usage.output_tokens == 0
    assert gw.generation(second.id)["cache_hit"] is True
