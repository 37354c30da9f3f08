"""A fake upstream server for tests and benchmarks, speaking each provider's real wire format.

One server stands in for every provider: the first path segment names the provider
(``/openai/v1/chat/completions``, ``/anthropic/v1/messages``, ``/google/v1beta/models/…``, ``/cohere/v2/chat``), and a
handler per provider turns the request into a reply — JSON, or an SSE transcript — exactly as that provider sends it.
Knobs, per provider or for all: latency before the response, latency between stream events, queued failures
(status + body, or a dropped connection), and streams that break after N events.

It runs its own event loop in a thread, so synchronous and asynchronous tests can share one instance.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from ..catalog.providers import PROVIDERS, default_providers
from .loop_thread import LoopThread


@dataclass
class FakeReply:
    status: int = 200
    json: Any = None
    sse: Iterable[bytes] | None = None  # complete SSE frames, each ending in a blank line (or any pieces of bytes)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # the body exactly as sent instead of ``json`` (files, already compressed bodies)


@dataclass
class RecordedRequest:
    provider: str
    method: str
    path: str  # the path after the provider segment
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


Handler = Callable[[str, dict[str, str], Any, dict[str, str]], FakeReply]


@dataclass
class Failure:
    status: int | None  # None: drop the connection without an answer
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Knobs:
    latency: float = 0.0  # seconds before the response starts
    event_delay: float = 0.0  # seconds between SSE events
    break_stream_after: int | None = None  # events sent before the connection is cut
    failures: list[Failure] = field(default_factory=list)


#: text put before each plain answer of the server handling the current request (``FakeUpstream(note=…)``;
#: ``metarouter serve --demo`` says there that the answer is fake); empty when a handler is called directly
REPLY_NOTE: contextvars.ContextVar[str] = contextvars.ContextVar("fake_reply_note", default="")


def noted(text: str) -> str:
    """A plain-text answer with the serving fake's note in front."""
    return REPLY_NOTE.get() + text


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages or []):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
    return ""


_CACHED = re.compile(r"\bCACHED (\d+)\b")
_CACHE_WRITE = re.compile(r"\bCACHE_WRITE (\d+)\b")


def cache_tokens(text: str, prompt_tokens: int) -> tuple[int, int]:
    """The fakes' prompt cache, by trigger words in the last user text: ``CACHED <n>`` reports n prompt tokens read
    from the cache, ``CACHE_WRITE <n>`` n written to it (Anthropic). Returns (read, written), within the prompt."""
    read = min(prompt_tokens, int(m.group(1))) if (m := _CACHED.search(text)) else 0
    written = min(prompt_tokens - read, int(m.group(1))) if (m := _CACHE_WRITE.search(text)) else 0
    return read, written


def count_tokens(text: str) -> int:
    """The fakes' deterministic 'tokenizer': 4 characters a token, at least 1."""
    return max(1, (len(text) + 3) // 4)


def openai_chat(path: str, headers: dict[str, str], body: Any, query: dict[str, str]) -> FakeReply:
    """OpenAI's ``POST /chat/completions``, as documented: JSON or ``chat.completion.chunk`` SSE."""
    if not path.endswith("/chat/completions"):
        return FakeReply(404, {"error": {"message": f"Unknown path {path}", "type": "invalid_request_error"}})
    if not headers.get("authorization", "").startswith("Bearer "):
        return FakeReply(401, {"error": {"message": "You didn't provide an API key.", "type": "invalid_request_error",
                                         "param": None, "code": None}})
    messages = body.get("messages") or []
    text_in = last_user_text(messages)
    prompt_tokens = sum(count_tokens(str(m.get("content") or "")) for m in messages)
    model = body.get("model", "gpt-4o-mini")
    created = int(time.time())
    cid = "chatcmpl-fake" + format(abs(hash((text_in, created))) % 10**12, "012d")
    tools = body.get("tools") or []
    wants_tool = tools and messages and messages[-1].get("role") == "user" and body.get("tool_choice") != "none"
    said = noted(f"You said: {text_in}")
    if body.get("response_format", {}).get("type") in ("json_object", "json_schema"):
        said = orjson.dumps({"echo": text_in}).decode()
    max_t = body.get("max_tokens") or body.get("max_completion_tokens")
    choices = []  # (message, finish reason, completion tokens) for each of the n choices; the first as ever
    for i in range(body.get("n") or 1):
        if wants_tool:
            fn = tools[0]["function"]["name"]
            args = orjson.dumps({"query": text_in if i == 0 else f"{text_in} #{i + 1}"}).decode()
            choices.append(({"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                {"id": f"call_fake{i + 1}", "type": "function", "function": {"name": fn, "arguments": args}}]},
                "tool_calls", count_tokens(fn + args)))
            continue
        reply, finish = (said if i == 0 else f"{said} #{i + 1}"), "stop"
        if max_t is not None and count_tokens(reply) > max_t:
            reply, finish = reply[: max_t * 4], "length"
        choices.append(({"role": "assistant", "content": reply, "refusal": None}, finish, count_tokens(reply)))
    completion_tokens = sum(c[2] for c in choices)  # the prompt is counted once, every choice's output
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens,
             "prompt_tokens_details": {"cached_tokens": cache_tokens(text_in, prompt_tokens)[0], "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    if not body.get("stream"):
        return FakeReply(200, {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "fp_fake", "service_tier": "default",
            "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                        for i, (message, finish, _) in enumerate(choices)],
            "usage": usage,
        })
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_fake"}

    def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

    def deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"role": "assistant", "content": "", "refusal": None}]
        if message.get("tool_calls"):
            tc = message["tool_calls"][0]
            out.append({"tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                        "function": {"name": tc["function"]["name"], "arguments": ""}}]})
            args = tc["function"]["arguments"]
            out += [{"tool_calls": [{"index": 0, "function": {"arguments": args[k:k + 8]}}]}
                    for k in range(0, len(args), 8)]
        else:
            words = message["content"].split(" ")
            out += [{"content": w if k == 0 else " " + w} for k, w in enumerate(words)]
        return out

    # each chunk carries one choice; with n > 1 the choices' chunks interleave, as OpenAI sends them
    per_choice = [[frame([{"index": i, "delta": d, "logprobs": None, "finish_reason": None}]) for d in deltas(m)]
                  + [frame([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}])]
                  for i, (m, finish, _) in enumerate(choices)]
    frames = [f for step in itertools.zip_longest(*per_choice) for f in step if f is not None]
    if (body.get("stream_options") or {}).get("include_usage"):
        frames.append(frame([], usage=usage))
    frames.append(b"data: [DONE]\n\n")
    return FakeReply(200, sse=frames)


class FakeUpstream(LoopThread):
    """The server. ``handlers`` maps a provider name (first path segment) to its handler; ``note`` is put before
    every plain answer (``{provider}`` in it names the provider)."""

    def __init__(self, handlers: dict[str, Handler] | None = None, host: str = "127.0.0.1", port: int = 0,
                 note: str = ""):
        self.handlers: dict[str, Handler] = {s.name: openai_chat for s in PROVIDERS.values() if s.wire == "openai"}
        self.handlers.update(handlers or {})
        self.host, self.port = host, port
        self.note = note
        self.requests: list[RecordedRequest] = []
        self._knobs: dict[str, Knobs] = defaultdict(Knobs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()

    # --- knobs -----------------------------------------------------------------------------------------------
    def knobs(self, provider: str = "*") -> Knobs:
        """Knobs for one provider, or ``"*"`` for those that have none of their own."""
        return self._knobs[provider]

    def fail(self, provider: str = "*", status: int | None = 500, body: Any = None, times: int = 1,
             headers: dict[str, str] | None = None) -> None:
        """Queue ``times`` failures: an HTTP ``status`` with ``body`` (default: OpenAI's error shape), or a
        dropped connection when ``status`` is None."""
        if body is None and status is not None:
            body = {"error": {"message": f"fake failure {status}", "type": "server_error", "param": None,
                              "code": None}}
        with self._lock:
            self._knobs[provider].failures += [Failure(status, body, headers or {}) for _ in range(times)]

    def reset(self) -> None:
        with self._lock:
            self._knobs.clear()
            self.requests.clear()

    def requests_for(self, provider: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.provider == provider]

    def _knob(self, provider: str) -> Knobs:
        return self._knobs[provider] if provider in self._knobs else self._knobs["*"]

    # --- server ----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_url(self, provider: str, suffix: str = "") -> str:
        return f"{self.url}/{provider}{suffix}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        provider, _, rest = request.path.lstrip("/").partition("/")
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(provider, request.method, "/" + rest, dict(request.query), headers,
                                                 body))
            knob = self._knob(provider)
            failure = knob.failures.pop(0) if knob.failures else None
        if knob.latency:
            await asyncio.sleep(knob.latency)
        if failure is not None:
            if failure.status is None:
                request.transport.close()  # type: ignore[union-attr]
                raise asyncio.CancelledError
            return web.Response(status=failure.status, body=orjson.dumps(failure.body),
                                content_type="application/json", headers=failure.headers)
        handler = self.handlers.get(provider)
        if handler is None:
            return web.json_response({"error": {"message": f"no fake provider {provider!r}"}}, status=404)
        REPLY_NOTE.set(self.note.format(provider=provider))  # this request's task only
        reply = handler("/" + rest, headers, body if body is not None else {}, dict(request.query))
        if reply.raw is not None:
            return web.Response(status=reply.status, body=reply.raw, headers=reply.headers)
        if reply.sse is None:
            return web.Response(status=reply.status, body=reply.raw if reply.raw is not None else orjson.dumps(reply.json),
                                content_type="application/json", headers=reply.headers)
        resp = web.StreamResponse(status=reply.status, headers={"Content-Type": "text/event-stream",
                                                                "Cache-Control": "no-cache", **reply.headers})
        await resp.prepare(request)
        for i, frame in enumerate(reply.sse):
            if knob.break_stream_after is not None and i >= knob.break_stream_after:
                request.transport.close()  # type: ignore[union-attr]
                return resp
            if knob.event_delay and i:
                await asyncio.sleep(knob.event_delay)
            await resp.write(frame)
        await resp.write_eof()
        return resp

    def start(self) -> "FakeUpstream":
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            try:
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, self.host, self.port)
                loop.run_until_complete(site.start())
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self


def _key_env(name: str) -> str:
    return f"FAKE_{name.upper()}_KEY"


def provider_config_for(fake: FakeUpstream) -> dict[str, dict[str, Any]]:
    """A ``providers:`` config section pointing every default provider at ``fake``, each base URL shaped as the
    provider's own (``…/openai/v1``, ``…/anthropic``, ``…/google/v1beta``)."""
    return {s.name: {"base_url": fake.base_url(s.name, urlsplit(s.base_url or "").path.rstrip("/")),
                     "api_key_env": _key_env(s.name)} for s in default_providers()}


def demo_providers(fake: FakeUpstream, configured: dict[str, Any]) -> dict[str, Any]:
    """A ``providers:`` section for ``metarouter serve --demo``: every configured provider (name → its
    ``ProviderConfig``) pointed at ``fake`` — at the fake of its own name where there is one, else at that of the
    first default provider of its wire format — with the keys of :data:`FAKE_KEYS_ENV`; default providers the
    config disabled stay disabled."""
    fakes = provider_config_for(fake)
    by_wire: dict[str, str] = {}
    for spec in default_providers():
        by_wire.setdefault(spec.wire, spec.name)
    out: dict[str, Any] = {name: False for name in fakes if name not in configured}
    for name, p in configured.items():
        out[name] = {**fakes[name if name in fakes else by_wire.get(p.wire, "openai")], "wire": p.wire}
    return out


#: the fakes' provider keys (any value works; they only need one sent)
FAKE_KEYS_ENV = {_key_env(s.name): f"sk-fake-{s.name}" for s in default_providers()}
