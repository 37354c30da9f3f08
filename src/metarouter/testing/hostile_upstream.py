"""Upstreams that misbehave, as handlers for :class:`~metarouter.testing.fake_upstream.FakeUpstream`: usage that
over-reports, answers that ignore ``max_tokens``, one endless SSE line, a gzip bomb."""

from __future__ import annotations

import time
import zlib
from typing import Iterator

import orjson

from .fake_upstream import FakeReply, Handler, openai_chat


def inflating_usage(prompt_tokens: int) -> Handler:
    """OpenAI's answer, but its usage claims ``prompt_tokens`` prompt tokens whatever the prompt."""

    def fix(usage: dict) -> None:
        usage["prompt_tokens"] = prompt_tokens
        usage["total_tokens"] = prompt_tokens + usage["completion_tokens"]

    def handler(path, headers, body, query) -> FakeReply:
        reply = openai_chat(path, headers, body, query)
        if reply.json is not None and "usage" in reply.json:
            fix(reply.json["usage"])
        if reply.sse is not None:
            frames = []
            for frame in reply.sse:
                if frame.startswith(b"data: {"):
                    obj = orjson.loads(frame[6:])
                    if obj.get("usage"):
                        fix(obj["usage"])
                        frame = b"data: " + orjson.dumps(obj) + b"\n\n"
                frames.append(frame)
            reply.sse = frames
        return reply

    return handler


def _chunk(content: str, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": int(time.time()), "model": "x",
        "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": finish}],
    }) + b"\n\n"


def endless_stream(piece: str = "word ") -> Handler:
    """A stream that ignores ``max_tokens`` and never ends, and never reports usage."""

    def frames() -> Iterator[bytes]:
        yield _chunk("")
        while True:
            yield _chunk(piece) * 64

    return lambda path, headers, body, query: FakeReply(200, sse=frames())


def one_line_stream(size: int, piece: int = 64 * 1024) -> Handler:
    """A stream whose first event is one ``data:`` line of ``size`` bytes of content (sent ``piece`` bytes at a
    time), without usage."""

    def frames() -> Iterator[bytes]:
        head = b'data: {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1, "model": "x", ' \
               b'"choices": [{"index": 0, "delta": {"content": "'
        yield head
        sent = len(head)
        block = b"x" * piece
        while sent < size:
            yield block
            sent += piece
        yield b'"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'

    return lambda path, headers, body, query: FakeReply(200, sse=frames())


def gzip_bomb(size: int) -> Handler:
    """A JSON answer whose gzip body inflates to ``size`` bytes (of one long JSON string)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(b'{"id": "chatcmpl-bomb", "choices": [{"message": {"content": "')]
    block = b"x" * (1024 * 1024)
    parts += [z.compress(block) for _ in range(size // len(block))]
    parts += [z.compress(b'"}}]}'), z.flush()]
    raw = b"".join(parts)
    return lambda path, headers, body, query: FakeReply(200, raw=raw, headers={"Content-Encoding": "gzip"})
