"""The ceiling: a bare relay with the same stack as metarouter and no features (no auth, accounting, records).

Starlette on uvicorn (uvloop + httptools), one pooled aiohttp session, orjson; the body is parsed and re-encoded
once, as any gateway must. ``python bare_relay.py PORT UPSTREAM_BASE_URL``.
"""

import sys

import aiohttp
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

PORT, UPSTREAM = int(sys.argv[1]), sys.argv[2].rstrip("/") + "/chat/completions"
session: aiohttp.ClientSession | None = None


async def chat(request):
    body = orjson.loads(await request.body())
    body["model"] = "gpt-4o-mini"
    stream = bool(body.get("stream"))
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    if stream:
        headers["Accept"] = "text/event-stream"
    resp = await session.post(UPSTREAM, data=orjson.dumps(body), headers=headers)
    if not stream:
        data = await resp.read()
        resp.release()
        return Response(data, resp.status, media_type="application/json")

    async def relay():
        try:
            async for chunk in resp.content.iter_any():
                yield chunk
        finally:
            resp.release()

    return StreamingResponse(relay(), media_type="text/event-stream")


async def lifespan(app):
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
    yield
    await session.close()


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)
