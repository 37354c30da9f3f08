"""CPU per request of ``Gateway.complete`` / ``.stream`` in-process: no sockets, a stub upstream client (the same
JSON answer, or a 6-event stream), a SQLite store and a key with a limit (so every request holds and settles).

    python pipeline_cpu.py SRC_DIR N      # SRC_DIR: a src/ tree, e.g. ``git archive <commit> src | tar -x -C DIR``

Runs against any commit (the stub is set as ``gateway._client`` after ``start()``, which every version has)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, sys.argv[1])

import orjson  # noqa: E402

from metarouter.config import load_settings  # noqa: E402
from metarouter.gateway.pipeline import Gateway, RequestContext  # noqa: E402
from metarouter.store.sqlite import SQLiteStore  # noqa: E402

USAGE = {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}
JSON = orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "usage": USAGE, "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Hello there, how are you?"}, "finish_reason": "stop"}]})


def chunk(delta: dict, finish: str | None = None) -> bytes:
    c = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(c) + b"\n\n"


SSE = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": w}) for w in ("Hello", " there,", " how",
                                                                                       " are you?")]
SSE.append(chunk({}, "stop") + b"data: " + orjson.dumps({"id": "c", "choices": [], "usage": USAGE})
           + b"\n\ndata: [DONE]\n\n")


class Headers(dict):
    def get(self, key, default=None):
        return dict.get(self, key.lower(), default)


class Response:
    status = 200
    headers = Headers()
    limit = None

    async def read(self) -> bytes:
        return JSON

    async def iter_any(self):
        for piece in SSE:
            yield piece

    def release(self) -> None:
        pass


class Client:
    async def request(self, url, body, headers, method="POST", deadline=None):
        return Response()

    async def close(self) -> None:
        pass


async def one(gw: Gateway, kind: str, body: dict, ctx: RequestContext) -> None:
    if kind == "json":
        await gw.complete(body, ctx)
    else:
        async for _ in await gw.stream({**body, "stream": True}, ctx):
            pass


async def main(n: int) -> None:
    store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "m.db"))
    await store.open()
    settings = load_settings(env={"OPENAI_API_KEY": "k"}, overrides={"providers": {"openai": {"base_url": "http://x/v1"}}})
    gw = Gateway(settings, store)
    await gw.start()
    gw._client = Client()
    _, key = await store.create_key("bench", limit_pico=10**15)
    ctx = RequestContext(key=key)
    body = {"model": "openai/gpt-4o-mini-2024-07-18", "messages": [{"role": "user", "content": "hi there"}]}
    out = {}
    for kind in ("json", "stream"):
        for _ in range(200):  # warm-up
            await one(gw, kind, body, ctx)
        t = time.process_time()
        for _ in range(n):
            await one(gw, kind, body, ctx)
        out[kind] = (time.process_time() - t) / n * 1e6
    await gw.close()
    await store.close()
    print(sys.argv[1], " ".join(f"{k}={v:.0f}us" for k, v in out.items()))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[2])))
