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
    return build_full_app(settings)
