"""App factory for uvicorn (one or many worker processes): settings travel through the environment."""

from __future__ import annotations

import os

import orjson

from ..config import load_settings

ENV_ARGS = "METAROUTER_SERVE_ARGS"


def build_app():
    from . import build_full_app

    args = orjson.loads(os.environ.get(ENV_ARGS, "{}"))
    settings = load_settings(args.get("config"), overrides=args.get("overrides"))
    from ..gateway.cache import CacheSettings, with_cache_headers

    every_request = CacheSettings.from_config(settings.raw).enabled
    return with_cache_headers(_fast_chat(build_full_app(settings)), every_request)


def _fast_chat(app):
    """Serve POST …/chat/completions straight from the endpoint, without Starlette's two middlewares and router
    walk (the rest of the app is unchanged). Errors are answered here exactly as the exception handlers would."""
    import logging

    from starlette.requests import ClientDisconnect, Request

    from ..errors import GatewayError
    from .app import error_response, store_unreachable

    log = logging.getLogger("metarouter.api")
    paths = {"/api/v1/chat/completions", "/v1/chat/completions"}
    endpoint = next(r.endpoint for r in app.router.routes if getattr(r, "path", None) in paths)

    async def asgi(scope, receive, send):
        if scope["type"] == "http" and scope["path"] in paths and scope["method"] == "POST":
            scope["app"] = app
            request = Request(scope, receive, send)
            try:
                response = await endpoint(request)
            except GatewayError as err:
                response = error_response(err)
            except ClientDisconnect:
                return  # the client left while sending its request: nobody to answer, nothing was sent upstream
            except Exception as exc:
                err = store_unreachable(exc)
                if err is None:
                    log.exception("unhandled error on POST %s", scope["path"])
                    err = GatewayError(500, "Internal server error")
                else:
                    log.warning("POST %s: the database is unreachable (%s)", scope["path"], type(exc).__name__)
                response = error_response(err)
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    asgi.state = app.state
    return asgi
