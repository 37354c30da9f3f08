"""The pipeline in-process: fallback, retries, breakers, budgets, records and zero completion insurance, with the
upstream an in-process :class:`MockTransport` (no subprocess, no socket) and a real SQLite store."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import orjson
import pytest

from metarouter.config import load_settings
from metarouter.errors import GatewayError
from metarouter.gateway.pipeline import Gateway, RequestContext
from metarouter.gateway.resilience import OPEN
from metarouter.gateway.upstream import MockResponse, MockTransport, UpstreamError, UpstreamRequest, UpstreamTimeout

BIG = "openai/gpt-4o-2024-08-06"  # $2.50 / $10 per 1M tokens
SMALL = "openai/gpt-4o-mini-2024-07-18"  # $0.15 / $0.60
USD = 10**12  # picodollars


def settings(**resilience: Any):
    return load_settings(env={"OPENAI_API_KEY": "sk-test"}, overrides={
        "providers": {"openai": {"base_url": "http://openai.test/v1"}},
        "timeouts": {"connect": 1, "first_byte": 5, "total": 30},
        "resilience": {"retries": 2, "backoff_base": 0.0, "backoff_max": 0.0, "breaker_failures": 100,
                       **resilience},
    })


def answer(text: str | None = "hello", prompt: int = 10, completion: int = 5, finish: str = "stop",
           **message: Any) -> MockResponse:
    return MockResponse(200, json={
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, **message},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })


def error(status: int, message: str = "overloaded") -> MockResponse:
    return MockResponse(status, json={"error": {"message": message, "type": "server_error"}})


def sse(*chunks: Any) -> list[bytes]:
    return [b"data: " + (c if isinstance(c, bytes) else orjson.dumps(c)) + b"\n\n" for c in chunks]


def delta(content: str | None = None, finish: str | None = None, **extra: Any) -> dict:
    d = {"role": "assistant"} if content is None else {"content": content}
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d,
                                                                       "finish_reason": finish}], **extra}


def usage_chunk(prompt: int = 10, completion: int = 5) -> dict:
    return {"id": "c", "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                                "total_tokens": prompt + completion}}


class Upstream:
    """Scripted answers per native model name: each request takes the next one (the last one repeats)."""

    def __init__(self, **script: list[MockResponse | Callable[[], MockResponse] | Exception]):
        self.script = script
        self.seen: list[str] = []

    def __call__(self, req: UpstreamRequest) -> MockResponse:
        model = req.json()["model"]
        self.seen.append(model)
        steps = self.script[model.replace("-", "_").replace(".", "_")]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, Exception):
            raise step
        return step() if callable(step) else step


async def gateway(store, upstream: Upstream, **resilience: Any) -> Gateway:
    gw = Gateway(settings(**resilience), store, client=MockTransport(upstream))
    await gw.start()
    return gw


async def key(store, limit_usd: float | None = 1.0):
    _, k = await store.create_key("t", limit_pico=None if limit_usd is None else int(limit_usd * USD))
    return k


async def settled(gw: Gateway) -> None:
    """Until every hold given back in the background is back."""
    while gw._background:
        await asyncio.gather(*list(gw._background), return_exceptions=True)


def body(*models: str, **extra: Any) -> dict:
    b = {"model": models[0], "messages": [{"role": "user", "content": "hi"}], **extra}
    if len(models) > 1:
        b["models"] = list(models[1:])
    return b


async def read_stream(gw: Gateway, b: dict, ctx: RequestContext) -> list[dict]:
    frames = await gw.stream({**b, "stream": True}, ctx)
    out = []
    async for frame in frames:
        for line in frame.split(b"\n\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(orjson.loads(line[6:]))
    return out


GPT4O, MINI = "gpt_4o_2024_08_06", "gpt_4o_mini_2024_07_18"


# --- fallback and retries ------------------------------------------------------------------------------------------
async def test_falls_back_in_order_and_records_once(store):
    up = Upstream(**{GPT4O: [error(503)], MINI: [answer()]})
    gw = await gateway(store, up)
    k = await key(store)
    r = await gw.complete(body(BIG, SMALL), RequestContext(key=k, want_metadata=True))
    assert up.seen == ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"]  # the first candidate first, no retry of it
    assert r["model"] == SMALL and r["choices"][0]["message"]["content"] == "hello"
    meta = r["openrouter_metadata"]
    assert [(a["model"], a["status"]) for a in meta["attempts"]] == [(BIG, 503), (SMALL, 200)]
    rows = await store.list_generations(key_id=k.public_id)
    assert len(rows) == 1 and rows[0]["model"] == SMALL and rows[0]["id"] == r["id"]
    assert [a["status"] for a in rows[0]["attempts"]] == [503, 200]
    await settled(gw)
    fresh = await store.get_key(k.public_id)
    # 10 prompt tokens at $0.15/M and 5 completion tokens at $0.60/M; the failed candidate's hold given back
    assert fresh.usage_pico == 10 * 150_000 + 5 * 600_000 and fresh.reserved_pico == 0
    assert gw.breaker("openai", BIG).consecutive == 1 and gw.breaker("openai", SMALL).consecutive == 0
    await gw.close()


async def test_the_last_candidate_is_retried_on_429_and_5xx_but_not_on_400(store):
    up = Upstream(**{GPT4O: [error(429), error(500), answer()]})
    gw = await gateway(store, up)
    r = await gw.complete(body(BIG), RequestContext(key=None))
    assert len(up.seen) == 3 and r["model"] == BIG

    up = Upstream(**{GPT4O: [error(400, "bad field"), answer()]})
    gw2 = await gateway(store, up)
    with pytest.raises(GatewayError) as e:
        await gw2.complete(body(BIG), RequestContext(key=None))
    assert e.value.status == 400 and "bad field" in e.value.message and len(up.seen) == 1
    assert len(await store.list_generations()) == 1  # only the answered request has a record
    await gw.close(), await gw2.close()


async def test_retries_run_out_and_the_most_telling_error_is_raised_with_the_attempts(store):
    up = Upstream(**{GPT4O: [UpstreamError("refused", "ConnectionRefusedError")], MINI: [error(502)]})
    gw = await gateway(store, up, retries=1)
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(BIG, SMALL), RequestContext(key=None))
    assert up.seen == ["gpt-4o-2024-08-06"] + ["gpt-4o-mini-2024-07-18"] * 2
    assert e.value.status == 502 and [a["status"] for a in e.value.metadata["attempts"]] == [502, 502, 502]
    assert "unreachable (ConnectionRefusedError)" in e.value.metadata["attempts"][0]["error"]
    assert await store.list_generations() == []
    await gw.close()


async def test_timeouts_total_bounds_the_whole_request_and_no_fallback_follows(store):
    async def hang_past_the_deadline(req: UpstreamRequest) -> MockResponse:
        await asyncio.sleep(0.3)  # longer than timeouts.total: the deadline has passed whatever the clock does
        raise UpstreamTimeout("upstream timed out", "TimeoutError")

    s = settings()
    s.timeouts.total = 0.2
    transport = MockTransport(hang_past_the_deadline)
    gw = Gateway(s, store, client=transport)
    await gw.start()
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(BIG, SMALL), RequestContext(key=None))
    assert e.value.status == 408 and "timeouts.total" in e.value.message and not e.value.retryable
    assert len(transport.requests) == 1  # neither a retry nor the fallback
    await gw.close()


async def test_the_breaker_opens_after_failed_requests_and_refuses_without_calling(store):
    up = Upstream(**{GPT4O: [error(503)]})
    gw = await gateway(store, up, retries=0, breaker_failures=2, breaker_cooldown=60)
    for _ in range(2):
        with pytest.raises(GatewayError):
            await gw.complete(body(BIG), RequestContext(key=None))
    assert gw.breaker("openai", BIG).state == OPEN and len(up.seen) == 2
    with pytest.raises(GatewayError) as e:
        await gw.complete(body(BIG), RequestContext(key=None))
    assert e.value.status == 503 and "circuit open" in e.value.message and len(up.seen) == 2
    assert e.value.headers["Retry-After"] == "60"
    # a fallback still serves while the circuit of the first candidate is open
    up.script[MINI] = [answer()]
    r = await gw.complete(body(BIG, SMALL), RequestContext(key=None))
    assert r["model"] == SMALL and up.seen[-1] == "gpt-4o-mini-2024-07-18"
    await gw.close()


async def test_a_success_resets_the_count_of_failed_requests(store):
    up = Upstream(**{GPT4O: [error(503), answer(), error(503)]})
    gw = await gateway(store, up, retries=0, breaker_failures=2)
    for expect_ok in (False, True, False):
        try:
            await gw.complete(body(BIG), RequestContext(key=None))
            assert expect_ok
        except GatewayError:
            assert not expect_ok
    b = gw.breaker("openai", BIG)
    assert b.consecutive == 1 and b.state != OPEN
    await gw.close()


async def test_a_request_refused_by_the_upstream_does_not_count_against_its_health(store):
    up = Upstream(**{GPT4O: [error(400)]})
    gw = await gateway(store, up, retries=0, breaker_failures=1)
    with pytest.raises(GatewayError):
        await gw.complete(body(BIG), RequestContext(key=None))
    assert gw.breaker("openai", BIG).consecutive == 0
    await gw.close()


# --- budgets ---------------------------------------------------------------------------------------------------
async def test_holds_are_given_back_when_every_candidate_fails(store):
    up = Upstream(**{GPT4O: [error(503)], MINI: [error(500)]})
    gw = await gateway(store, up)
    k = await key(store)
    with pytest.raises(GatewayError):
        await gw.complete(body(BIG, SMALL), RequestContext(key=k))
    await settled(gw)
    fresh = await store.get_key(k.public_id)
    assert fresh.reserved_pico == 0 and fresh.usage_pico == 0
    await gw.close()


async def test_a_hold_is_given_back_when_the_request_is_cancelled_while_waiting(store):
    started = asyncio.Event()

    async def slow(req: UpstreamRequest) -> MockResponse:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    gw = Gateway(settings(), store, client=MockTransport(slow))
    await gw.start()
    k = await key(store)
    task = asyncio.ensure_future(gw.complete(body(BIG), RequestContext(key=k)))
    await started.wait()
    assert (await store.get_key(k.public_id)).reserved_pico > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settled(gw)
    fresh = await store.get_key(k.public_id)
    assert fresh.reserved_pico == 0 and fresh.usage_pico == 0
    assert await store.list_generations() == []
    await gw.close()


async def test_an_unaffordable_candidate_is_skipped_for_a_cheaper_one(store):
    up = Upstream(**{GPT4O: [answer()], MINI: [answer()]})
    gw = await gateway(store, up)
    k = await key(store, limit_usd=0.01)  # 1000 output tokens of gpt-4o cost $0.01 plus the prompt: too much
    r = await gw.complete(body(BIG, SMALL, max_tokens=1000), RequestContext(key=k, want_metadata=True))
    assert r["model"] == SMALL and up.seen == ["gpt-4o-mini-2024-07-18"]
    assert r["openrouter_metadata"]["attempts"][0]["status"] == 402
    assert orjson.loads(gw._client.requests[0].body)["max_tokens"] == 1000
    await gw.close()


# --- streams -------------------------------------------------------------------------------------------------------
async def test_a_stream_that_fails_before_its_first_chunk_falls_back(store):
    up = Upstream(**{
        GPT4O: [lambda: MockResponse(200, stream=sse({"error": {"message": "overloaded"}}))],
        MINI: [lambda: MockResponse(200, stream=sse(delta(), delta("hel"), delta("lo", "stop"), usage_chunk(),
                                                    b"[DONE]"))],
    })
    gw = await gateway(store, up)
    k = await key(store)
    chunks = await read_stream(gw, body(BIG, SMALL), RequestContext(key=k))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "hello"
    assert all(c["model"] == SMALL for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 5 and chunks[-1]["usage"]["cost"] > 0
    rows = await store.list_generations()
    assert len(rows) == 1 and rows[0]["streamed"] and rows[0]["status"] == "ok" and not rows[0]["insured"]
    assert [a["status"] for a in rows[0]["attempts"]] == [502, 200]
    await settled(gw)
    fresh = await store.get_key(k.public_id)
    assert fresh.usage_pico == 10 * 150_000 + 5 * 600_000 and fresh.reserved_pico == 0
    await gw.close()


async def test_a_stream_broken_after_content_is_recorded_and_charged_once(store):
    def broken():
        def pieces():
            yield from sse(delta(), delta("partial answer"))
            raise UpstreamError("reset", "ServerDisconnected")
        return MockResponse(200, stream=pieces())

    up = Upstream(**{GPT4O: [broken]})
    gw = await gateway(store, up)
    k = await key(store)
    chunks = await read_stream(gw, body(BIG), RequestContext(key=k))
    assert chunks[-2]["choices"][0]["finish_reason"] == "error" and "broke" in chunks[-2]["error"]["message"]
    assert len(up.seen) == 1  # content went out: no retry, no fallback
    rows = await store.list_generations()
    assert len(rows) == 1 and rows[0]["status"] == "error" and not rows[0]["insured"]
    assert rows[0]["cost_pico"] > 0 and rows[0]["usage_estimated"]
    await settled(gw)
    fresh = await store.get_key(k.public_id)
    assert fresh.usage_pico == rows[0]["cost_pico"] and fresh.reserved_pico == 0
    await gw.close()


async def test_a_client_gone_mid_stream_is_recorded_as_cancelled(store):
    up = Upstream(**{GPT4O: [lambda: MockResponse(200, stream=sse(delta(), delta("one"), delta("two"),
                                                                   delta("three", "stop"), usage_chunk(), b"[DONE]"))]})
    gw = await gateway(store, up)
    k = await key(store)
    frames = await gw.stream(body(BIG, stream=True), RequestContext(key=k))
    await frames.__anext__()
    await frames.aclose()
    rows = await store.list_generations()
    assert len(rows) == 1 and rows[0]["status"] == "cancelled"
    await store.flush()
    await settled(gw)
    assert (await store.get_key(k.public_id)).reserved_pico == 0
    await gw.close()


# --- zero completion insurance ---------------------------------------------------------------------------------
async def test_an_empty_answer_with_no_output_tokens_is_not_charged(store):
    up = Upstream(**{GPT4O: [answer(text="", completion=0)]})
    gw = await gateway(store, up)
    k = await key(store)
    r = await gw.complete(body(BIG), RequestContext(key=k))
    assert r["usage"]["cost"] == 0 and r["usage"]["prompt_tokens"] == 10  # the tokens are shown, not billed
    rec = await store.get_generation(r["id"])
    assert rec["insured"] is True and rec["cost_pico"] == 0 and rec["prompt_tokens"] == 10
    await settled(gw)
    fresh = await store.get_key(k.public_id)
    assert fresh.usage_pico == 0 and fresh.reserved_pico == 0
    await gw.close()


async def test_an_answer_with_content_or_output_tokens_is_charged(store):
    call = answer(text=None, completion=0, finish="tool_calls",
                  tool_calls=[{"id": "c1", "type": "function", "function": {"name": "find", "arguments": "{}"}}])
    up = Upstream(**{GPT4O: [answer(text="", completion=3, finish="length"), answer(text="x", completion=0), call]})
    gw = await gateway(store, up)
    for _ in range(3):  # hidden reasoning that used output tokens; content, or a tool call, with a zero count
        r = await gw.complete(body(BIG), RequestContext(key=None))
        rec = await store.get_generation(r["id"])
        assert not rec["insured"] and rec["cost_pico"] > 0 and r["usage"]["cost"] > 0
    await gw.close()


async def test_a_stream_that_errs_before_any_content_is_not_charged(store):
    up = Upstream(**{GPT4O: [lambda: MockResponse(200, stream=sse(delta(), {"error": {"message": "melted"}}))]})
    gw = await gateway(store, up)
    k = await key(store)
    chunks = await read_stream(gw, body(BIG), RequestContext(key=k))
    assert chunks[-2]["choices"][0]["finish_reason"] == "error"
    assert chunks[-1]["usage"]["cost"] == 0
    rows = await store.list_generations()
    assert len(rows) == 1 and rows[0]["insured"] and rows[0]["status"] == "error" and rows[0]["cost_pico"] == 0
    await settled(gw)
    fresh = await store.get_key(k.public_id)
    assert fresh.usage_pico == 0 and fresh.reserved_pico == 0
    await gw.close()


async def test_a_stream_that_ends_empty_with_no_output_tokens_is_not_charged(store):
    up = Upstream(**{GPT4O: [lambda: MockResponse(200, stream=sse(delta(), delta("", "stop"), usage_chunk(12, 0),
                                                                   b"[DONE]"))]})
    gw = await gateway(store, up)
    chunks = await read_stream(gw, body(BIG), RequestContext(key=None))
    assert chunks[-1]["usage"]["cost"] == 0 and chunks[-1]["usage"]["prompt_tokens"] == 12
    rows = await store.list_generations()
    assert rows[0]["insured"] and rows[0]["status"] == "ok"
    await gw.close()


def test_the_mock_transport_keeps_the_answer_size_cap():
    async def run():
        r = MockResponse(200, content=b"x" * 10)
        r.limit = 5
        with pytest.raises(UpstreamError, match="larger than 5"):
            await r.read()
        s = MockResponse(200, stream=[b"abc", b"defg"])
        s.limit = 5
        got = []
        with pytest.raises(UpstreamError):
            async for piece in s.iter_any():
                got.append(piece)
        assert got == [b"abc"] and s.released
    asyncio.run(run())
