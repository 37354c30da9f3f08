"""The ``metarouter`` command: serve · models · keys · credits · route · train · eval."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from .catalog import pico_to_usd, usd_to_pico
from .config import load_settings
from .errors import MissingExtra, require_extra


def _settings(args: argparse.Namespace):
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return load_settings(getattr(args, "config", None), overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import orjson

    from .api.server import ENV_ARGS

    overrides: dict[str, Any] = {"host": args.host, "port": args.port, "data_dir": args.data_dir}
    settings = load_settings(args.config, overrides=overrides)  # fail fast on a bad config, before forking
    demo = None
    if args.demo:
        demo, overrides = _start_demo(args, settings, overrides)
        settings = load_settings(args.config, overrides=overrides)
    check_extras(settings)
    os.environ[ENV_ARGS] = orjson.dumps({"config": args.config, "overrides": overrides}).decode()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    available = [n for n in settings.providers if settings.provider_available(n)]
    print(f"metarouter: serving on http://{settings.host}:{settings.port} "
          f"(store: {settings.db_url.split('@')[-1]}; providers with keys: {', '.join(available) or 'none'})",
          file=sys.stderr)
    if demo is not None:
        _demo_banner(settings, demo)
    if args.workers > 1 and not settings.redis_url:
        print("metarouter: note: with several workers and no redis_url, rate limits and sticky sessions are kept "
              "per worker; set METAROUTER_REDIS_URL to share them", file=sys.stderr)
    metrics_dir = _shared_metrics_dir() if args.workers > 1 else None
    try:
        _run_uvicorn(settings, args)
    finally:
        if demo is not None:
            demo.stop()
        if metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _shared_metrics_dir() -> str | None:
    """With several workers, /metrics adds up every worker's values from files in a directory named to the workers
    by the environment: ``METAROUTER_METRICS_DIR`` if set (emptied of an earlier run's files now), else one of this
    start's own (removed at exit; the returned path)."""
    import tempfile

    from .metrics import METRICS_DIR_ENV, clear_shared_dir

    if os.environ.get(METRICS_DIR_ENV):
        clear_shared_dir(os.environ[METRICS_DIR_ENV])
        return None
    path = tempfile.mkdtemp(prefix="metarouter-metrics-")
    os.environ[METRICS_DIR_ENV] = path
    return path


#: put before every answer of the demo's fake upstreams
DEMO_NOTE = "[fake {provider} answer: metarouter serve --demo] "


def _start_demo(args: argparse.Namespace, settings, overrides: dict[str, Any]):
    """``serve --demo``: the bundled fake upstreams started in this process (a thread; workers reach them over
    TCP) and every provider pointed at them, with a store of its own (``<data dir>/demo`` unless ``--data-dir``
    says where). Returns (the fake server, the overrides that point the settings at it)."""
    from pathlib import Path

    from .testing.fake_providers import HANDLERS
    from .testing.fake_upstream import FAKE_KEYS_ENV, FakeUpstream, demo_providers

    fake = FakeUpstream(HANDLERS, note=DEMO_NOTE).start()
    os.environ.update(FAKE_KEYS_ENV)  # the fakes' provider keys, inherited by every worker
    data_dir = Path(args.data_dir) if args.data_dir else settings.data_dir / "demo"
    return fake, {**overrides, "data_dir": str(data_dir), "providers": demo_providers(fake, settings.providers)}


def _demo_banner(settings, fake) -> None:
    from .store import open_store

    async def new_key() -> str:
        store = open_store(settings.db_url)
        await store.open()
        try:
            return (await store.create_key("demo"))[0]
        finally:
            await store.close()

    key = asyncio.run(new_key())
    url = f"http://{settings.host}:{settings.port}"
    body = '{"model": "auto", "messages": [{"role": "user", "content": "Hello!"}]}'
    print(f"""metarouter: DEMO MODE: no provider is called and no provider key is needed. Every provider
metarouter:   ({', '.join(settings.providers)}) is pointed at the built-in fake upstreams on {fake.url};
metarouter:   answers are fake and say so ("[fake openai answer: ...] You said: Hello!"); costs are
metarouter:   computed at catalog prices, nothing is paid. The demo's store is in {settings.data_dir}.
metarouter: demo API key (a new one each start): {key}
metarouter: try it:
  curl {url}/v1/chat/completions -H "Authorization: Bearer {key}" -H "X-OpenRouter-Metadata: enabled" \\
       -H "Content-Type: application/json" -d '{body}'
metarouter: the requests (the Activity page, with this key): {url}/activity#key={key}""", file=sys.stderr, flush=True)


def _run_uvicorn(settings, args: argparse.Namespace) -> None:
    import uvicorn

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


def cmd_models(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rows = []
    for model in settings.catalog:
        for m in settings.catalog.endpoints(model):  # one row per endpoint: the default one first
            caps = ",".join(c for c in ("tools", "vision", "json_output", "reasoning") if getattr(m, c))
            rows.append((m.id, m.provider, f"{m.context_length:,}", f"${m.input_usd_per_mtok:g}",
                         f"${m.output_usd_per_mtok:g}", caps,
                         "yes" if settings.provider_available(m.provider) else "no key"))
    if args.json:
        print(json.dumps([{"id": m.id, "provider": m.provider,
                           "endpoints": [e.provider for e in settings.catalog.endpoints(m)]}
                          for m in settings.catalog]))
        return 0
    _table(("id", "provider", "context", "in/1M", "out/1M", "capabilities", "available"), rows)
    return 0


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


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


#: ``keys update``'s word for "take this setting away"
NONE = "none"


def _expires_at(value: str) -> float | None:
    """``--expires-at``: an ISO 8601 UTC timestamp (``2027-01-31T23:59:59Z``), or ``none`` (never)."""
    from .store.base import parse_expires_at

    if value == NONE:
        return None
    try:
        return parse_expires_at(value)
    except ValueError as exc:
        message = str(exc).replace("`expires_at`", "--expires-at").replace("null", NONE)
        raise argparse.ArgumentTypeError(message) from None


def _or_none(parse):
    """An option of ``keys update`` that also takes ``none`` (the setting taken away)."""
    def read(value: str):
        return None if value == NONE else parse(value)

    read.__name__ = getattr(parse, "__name__", "value")
    return read


def _key_status(k, now: float) -> str:
    return "disabled" if k.disabled else "expired" if k.expired(now) else "active"


def cmd_keys(args: argparse.Namespace) -> int:
    from .store.base import iso_utc

    async def run(store) -> int:
        if args.keys_cmd == "create":
            limit = _usd_amount(args.limit, "--limit")
            plaintext, rec = await store.create_key(args.label, limit_pico=limit, rpm=args.rpm, tpm=args.tpm,
                                                    limit_reset=args.limit_reset, expires_at=args.expires_at)
            print(plaintext)
            print(f"created key {rec.public_id} ({rec.label}); it is shown only once.", file=sys.stderr)
        elif args.keys_cmd == "list":
            now = store.clock()
            rows = [(k.public_id, k.label, f"${pico_to_usd(k.usage_pico):.6f}",
                     f"${pico_to_usd(k.limit_pico):g}" if k.limit_pico is not None else "no limit",
                     k.limit_reset or "-", iso_utc(k.expires_at) or "-", _key_status(k, now))
                    for k in await store.list_keys()]
            _table(("id", "label", "usage", "limit", "reset", "expires", "status"), rows)
        elif args.keys_cmd == "update":
            fields: dict[str, Any] = {}
            for opt, name in (("label", "label"), ("limit", "limit_pico"), ("limit_reset", "limit_reset"),
                              ("expires_at", "expires_at"), ("rpm", "rpm"), ("tpm", "tpm")):
                value = getattr(args, opt)
                if value is not _UNSET:
                    fields[name] = _usd_amount(value, "--limit") if opt == "limit" else value
            if not fields:
                print("metarouter: nothing to change: give --label, --limit, --limit-reset, --expires-at, --rpm or "
                      "--tpm", file=sys.stderr)
                return 2
            rec = await store.update_key(args.public_id, **fields)
            if rec is None:
                print(f"no key {args.public_id}", file=sys.stderr)
                return 1
            print(f"updated key {rec.public_id} ({rec.label}): limit "
                  f"{'$%g' % pico_to_usd(rec.limit_pico) if rec.limit_pico is not None else 'none'}"
                  f"{' ' + rec.limit_reset if rec.limit_reset else ''}, expires {iso_utc(rec.expires_at) or 'never'}, "
                  f"{_key_status(rec, store.clock())}", file=sys.stderr)
        elif args.keys_cmd == "disable":
            if await store.update_key(args.public_id, disabled=True) is None:
                print(f"no key {args.public_id}", file=sys.stderr)
                return 1
        return 0

    return _with_store(args, run)


#: an option of ``keys update`` not given (``none`` is given: it removes the setting)
_UNSET: Any = object()


def _reset(value: str) -> str:
    if value not in ("daily", "weekly", "monthly"):
        raise argparse.ArgumentTypeError(f"must be daily, weekly, monthly or none, not {value!r}")
    return value


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
    p = argparse.ArgumentParser(
        prog="metarouter",
        description="metarouter: a self-hosted, OpenRouter-compatible LLM gateway whose `auto` model is a learned "
                    "router.",
        epilog="`metarouter COMMAND --help` shows a command's options. No provider keys yet? "
               "`metarouter serve --demo` answers from built-in fake upstreams.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML or TOML config file")
        sp.add_argument("--data-dir", help="where the embedded database lives (default $METAROUTER_HOME or ~/.metarouter)")

    s = sub.add_parser("serve", help="run the gateway")
    common(s)
    s.add_argument("--host", help="address to listen on (default: the config's host, or 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default: the config's port, or 8080)")
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes (default 1; with several, set redis_url to share rate limits)")
    s.add_argument("--log-level", default="info", help="uvicorn's log level: critical, error, warning, info, debug")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.add_argument("--demo", action="store_true",
                   help="try it without provider keys: built-in fake upstreams stand in for every provider "
                        "(answers say they are fake), with a store of its own and a key printed at start")
    s.set_defaults(fn=cmd_serve)

    m = sub.add_parser("models", help="list the catalog")
    common(m)
    m.add_argument("--json", action="store_true", help="ids and providers as JSON")
    m.set_defaults(fn=cmd_models)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="create a key and print it once")
    common(kc)
    kc.add_argument("--label", required=True)
    kc.add_argument("--limit", type=float, help="spending limit in USD")
    kc.add_argument("--rpm", type=int, help="requests per minute")
    kc.add_argument("--tpm", type=int, help="tokens per minute")
    kc.add_argument("--limit-reset", choices=("daily", "weekly", "monthly"),
                    help="the limit applies to each UTC day, week (Monday to Sunday) or month's spend")
    kc.add_argument("--expires-at", type=_expires_at, metavar="ISO",
                    help="refuse the key from this UTC time on, e.g. 2027-01-31T23:59:59Z")
    kl = ksub.add_parser("list", help="list keys (never their secrets)")
    common(kl)
    ku = ksub.add_parser("update", help="change a key's label, limit, reset, expiry or rate limits (none: remove)")
    common(ku)
    ku.add_argument("public_id")
    ku.add_argument("--label", default=_UNSET, help="a new label")
    ku.add_argument("--limit", type=_or_none(float), default=_UNSET, metavar="USD|none", help="spending limit in USD")
    ku.add_argument("--limit-reset", type=_or_none(_reset), default=_UNSET, metavar="daily|weekly|monthly|none",
                    help="the limit applies to each UTC day, week (Monday to Sunday) or month's spend")
    ku.add_argument("--expires-at", type=_expires_at, default=_UNSET, metavar="ISO|none",
                    help="refuse the key from this UTC time on, e.g. 2027-01-31T23:59:59Z")
    ku.add_argument("--rpm", type=_or_none(int), default=_UNSET, metavar="N|none", help="requests per minute")
    ku.add_argument("--tpm", type=_or_none(int), default=_UNSET, metavar="N|none", help="tokens per minute")
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


def check_extras(settings) -> None:
    """The packages the configured database and Redis need, before anything starts (a clear error, not a traceback)."""
    if settings.db_url.startswith(("postgres://", "postgresql://")):
        require_extra("asyncpg", "postgres", "A PostgreSQL database_url")
    if settings.redis_url:
        require_extra("redis", "redis", "A redis_url")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.fn(args) or 0)
        sys.stdout.flush()  # a reader that has gone shows here, not in Python's own flush at exit
        return code
    except MissingExtra as exc:
        print(f"metarouter: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `metarouter models | head`: the reader stopped; say nothing, as Unix tools do
        # Python flushes stdout again at exit: point it at /dev/null so that this flush cannot fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1  # the output was not all delivered (the exit status Python's documentation suggests)


if __name__ == "__main__":
    sys.exit(main())
