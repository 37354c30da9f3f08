"""The ``metarouter`` command: serve · models · keys · route · train · eval."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from .catalog import pico_to_usd, usd_to_pico
from .config import load_settings


def _settings(args: argparse.Namespace):
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return load_settings(getattr(args, "config", None), overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import orjson
    import uvicorn

    from .api.server import ENV_ARGS

    overrides = {"host": args.host, "port": args.port, "data_dir": args.data_dir}
    settings = load_settings(args.config, overrides=overrides)  # fail fast on a bad config, before forking
    os.environ[ENV_ARGS] = orjson.dumps({"config": args.config, "overrides": overrides}).decode()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    available = [n for n in settings.providers if settings.provider_available(n)]
    print(f"metarouter: serving on http://{settings.host}:{settings.port} "
          f"(store: {settings.db_url.split('@')[-1]}; providers with keys: {', '.join(available) or 'none'})",
          file=sys.stderr)
    if args.workers > 1 and not settings.redis_url:
        print("metarouter: note: with several workers and no redis_url, rate limits and sticky sessions are kept "
              "per worker; set METAROUTER_REDIS_URL to share them", file=sys.stderr)
    uvicorn.run(
        "metarouter.api.server:build_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        loop="uvloop",
        http="metarouter.api.protocol:BoundedHttpToolsProtocol",  # httptools, with one bound on request heads
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=30,
        proxy_headers=False,
        server_header=False,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rows = []
    for m in settings.catalog:
        caps = ",".join(c for c in ("tools", "vision", "json_output", "reasoning") if getattr(m, c))
        rows.append((m.id, m.provider, f"{m.context_length:,}", f"${m.input_usd_per_mtok:g}",
                     f"${m.output_usd_per_mtok:g}", caps,
                     "yes" if settings.provider_available(m.provider) else "no key"))
    if args.json:
        print(json.dumps([{"id": r[0], "provider": r[1]} for r in rows]))
        return 0
    head = ("id", "provider", "context", "in/1M", "out/1M", "capabilities", "available")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    return 0


def _with_store(args: argparse.Namespace, fn) -> int:
    """Open the configured store, run ``await fn(store)``, close it (flushing), return fn's exit code."""
    from .store import open_store

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> int:
        store = open_store(settings.db_url)
        await store.open()
        try:
            return int(await fn(store) or 0)
        finally:
            await store.close()

    return asyncio.run(run())


def _usd_amount(value: float | None, what: str) -> int | None:
    """A CLI amount in USD as picodollars, within what the stores' 64-bit columns hold (as the admin API)."""
    from .api.admin import MAX_USD

    if value is None:
        return None
    if not 0 <= value <= MAX_USD:
        raise SystemExit(f"metarouter: {what} must be between 0 and {MAX_USD} USD")
    return usd_to_pico(value)


def cmd_keys(args: argparse.Namespace) -> int:
    async def run(store) -> int:
        if args.keys_cmd == "create":
            limit = _usd_amount(args.limit, "--limit")
            plaintext, rec = await store.create_key(args.label, limit_pico=limit, rpm=args.rpm, tpm=args.tpm)
            print(plaintext)
            print(f"created key {rec.public_id} ({rec.label}); it is shown only once.", file=sys.stderr)
        elif args.keys_cmd == "list":
            for k in await store.list_keys():
                lim = f"${pico_to_usd(k.limit_pico):g}" if k.limit_pico is not None else "no limit"
                print(f"{k.public_id}  {k.label:<20}  usage ${pico_to_usd(k.usage_pico):.6f}  {lim}"
                      f"{'  DISABLED' if k.disabled else ''}")
        elif args.keys_cmd == "disable":
            if await store.update_key(args.public_id, disabled=True) is None:
                print(f"no key {args.public_id}", file=sys.stderr)
                return 1
        return 0

    return _with_store(args, run)


def cmd_credits(args: argparse.Namespace) -> int:
    async def run(store) -> int:
        from .api.admin import MAX_CREDITS_PICO

        if args.add is not None:
            amount = _usd_amount(args.add, "--add")
            current, _ = await store.get_credits()
            if (current or 0) + amount > MAX_CREDITS_PICO:
                print(f"metarouter: the account's credit would exceed {pico_to_usd(MAX_CREDITS_PICO):.0f} USD",
                      file=sys.stderr)
                return 1
            credits, usage = await store.add_credits(amount)
        else:
            credits, usage = await store.get_credits()
        total = "unlimited" if credits is None else f"${pico_to_usd(credits):.6f}"
        print(f"credits: {total}  usage: ${pico_to_usd(usage):.6f}")
        return 0

    return _with_store(args, run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metarouter", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML or TOML config file")
        sp.add_argument("--data-dir", help="where the embedded database lives (default $METAROUTER_HOME or ~/.metarouter)")

    s = sub.add_parser("serve", help="run the gateway")
    common(s)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--log-level", default="info")
    s.add_argument("--access-log", action="store_true")
    s.set_defaults(fn=cmd_serve)

    m = sub.add_parser("models", help="list the catalog")
    common(m)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="create a key and print it once")
    common(kc)
    kc.add_argument("--label", required=True)
    kc.add_argument("--limit", type=float, help="spending limit in USD")
    kc.add_argument("--rpm", type=int, help="requests per minute")
    kc.add_argument("--tpm", type=int, help="tokens per minute")
    kl = ksub.add_parser("list", help="list keys (never their secrets)")
    common(kl)
    kd = ksub.add_parser("disable", help="disable a key by its public id")
    common(kd)
    kd.add_argument("public_id")
    k.set_defaults(fn=cmd_keys)

    c = sub.add_parser("credits", help="show or add account credit (unset: unlimited, bounded by key limits)")
    common(c)
    c.add_argument("--add", type=float, metavar="USD", help="add this much credit")
    c.set_defaults(fn=cmd_credits)

    try:
        from .router.cli import add_subcommands
    except ImportError:
        pass
    else:
        add_subcommands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
