"""``metarouter route | train | eval``: the router's command line.

``add_subcommands(subparsers)`` registers the three commands on the main ``metarouter`` parser; ``main()`` runs
them standalone (``python -m metarouter.router.cli route "hello"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..catalog import Catalog, Model, default_catalog


def _models(spec: str | None, cat: Catalog | None = None) -> list[Model]:
    cat = cat if cat is not None else default_catalog()
    if not spec:
        return list(cat)
    pats = [s.strip() for s in spec.split(",") if s.strip()]
    out = cat.select(allowed=pats)
    if not out:
        raise SystemExit(f"no catalog model matches --models {spec!r}")
    return out


def _dumps(obj: Any) -> str:
    try:
        import orjson

        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except ImportError:
        return json.dumps(obj)


def _route_settings(args: argparse.Namespace) -> tuple[Catalog, str | None]:
    """(the models ``route`` chooses among, the router artifact) as ``serve``'s ``auto`` has them: the config's
    catalog (added and removed models) with the providers that are available; all of it, said on stderr, when
    no provider has a key."""
    from ..config import load_settings

    settings = load_settings(args.config)
    available = Catalog(m for m in settings.catalog if settings.provider_available(m.provider))
    if not len(available):
        print("route: no provider is available (no API key is set): choosing among the whole catalog",
              file=sys.stderr)
        available = settings.catalog
    return available, args.artifact or settings.router.get("artifact")


def cmd_route(args: argparse.Namespace) -> int:
    from . import kernel
    from .core import load_router

    catalog, artifact = _route_settings(args)
    router = load_router(artifact)
    models = _models(args.models, catalog)
    if args.batch:
        # the gateway's kernel for many lines (numba's, where installed: a second to load, then faster); one
        # prompt is decided by the numpy kernel at once (the same order; numbers within float32 tolerance)
        kernel.compile_now()
        return _route_batch(router, models, args)
    if not args.prompt:
        raise SystemExit("route: give a PROMPT or --batch FILE.jsonl")
    tradeoffs = [float(t) for t in str(args.tradeoff).split(",")] if args.tradeoff is not None else [None]
    body: dict[str, Any] = {"messages": [{"role": "user", "content": " ".join(args.prompt)}]}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    if args.json_output:
        body["response_format"] = {"type": "json_object"}
    for t in tradeoffs:
        d = _decide(router, body, models, t, needs_tools=args.tools)
        if args.json:
            print(_dumps(d.to_dict()))
            continue
        if not d.ranked:
            print("no model fits:", "; ".join(f"{m}: {r}" for m, r in d.excluded))
            return 1
        top = d.ranked[0]
        print(f"{top.model_id}  (tradeoff {d.tradeoff:g}, P(good)={top.quality:.2f}, ~${top.cost_usd:.6f}, "
              f"{d.decision_ms:.2f} ms)")
        print(f"  {d.reason}")
        if args.explain:
            like = f"; most like: {d.category}" if d.category else ""
            print(f"\nprompt familiarity {d.familiarity:.2f} (1 = like the training data; 0 = unlike it, general "
                  f"ability decides){like}")
            w = max(len(c.model_id) for c in d.ranked)
            print(f"\n{'#':>2}  {'model':<{w}}  {'P(good)':>7}  {'cost USD':>10}  {'out tok':>7}  {'prior':>5}  reason")
            for i, c in enumerate(d.ranked):
                print(f"{i + 1:>2}  {c.model_id:<{w}}  {c.quality:7.3f}  {c.cost_usd:10.6f}  {c.output_tokens:7d}  "
                      f"{c.prior_weight:5.2f}  {c.reason}")
            for m, r in d.excluded:
                print(f" -  {m:<{w}}  excluded: {r}")
    return 0


def _decide(router, body: dict[str, Any], models: list[Model], tradeoff: float | None, needs_tools: bool = False):
    """The decision the gateway's ``auto`` makes for this chat body (same request reading, same constraints)."""
    from .core import Constraints
    from .request import RouteRequest

    req = RouteRequest.from_body(body)
    cons = Constraints.for_request(req)
    if needs_tools:
        cons.needs_tools = True
    return router.route(req, models, cons, tradeoff)


def _route_batch(router, models: list[Model], args: argparse.Namespace) -> int:
    """Route every line of a JSONL file: chat request bodies (``messages`` or the ``prompt`` shorthand, ``tools``,
    ``response_format``, ``max_tokens``; an ``id`` is echoed). A malformed line stops the run with its number, and
    an ``--out`` file is only written (renamed into place) once every line is routed."""
    import os
    import tempfile

    from .request import RequestError

    tradeoffs = [float(t) for t in str(args.tradeoff).split(",")] if args.tradeoff is not None else [None]
    src = sys.stdin if args.batch == "-" else open(args.batch, encoding="utf-8")
    t0 = time.perf_counter()
    lines: list[str] = []
    n = 0
    with src:
        for no, line in enumerate(src, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise RequestError("a line must be a JSON object")
                body = item.get("request", item)
                for t in tradeoffs:
                    d = _decide(router, body, models, t, needs_tools=args.tools)
                    ranked = [c.to_dict() for c in d.ranked[: args.top]]
                    lines.append(_dumps({"id": item.get("id", no), "tradeoff": d.tradeoff, "model": d.model,
                                         "reason": d.reason, "familiarity": round(d.familiarity, 3),
                                         "ranked": ranked,
                                         "excluded": [{"model_id": m, "reason": r} for m, r in d.excluded]}))
            except (ValueError, RequestError) as e:
                print(f"route --batch: line {no}: {e}", file=sys.stderr)
                return 2
            n += 1
    if args.out:
        out = Path(args.out)
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", dir=out.parent if str(out.parent) else ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
        os.replace(tmp, out)
    else:
        for line in lines:
            print(line)
    dt = time.perf_counter() - t0
    print(f"routed {n} requests × {len(tradeoffs)} tradeoffs in {dt:.2f}s ({n / max(dt, 1e-9):,.0f} requests/s)",
          file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run

    return run(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from .core import load_router
    import numpy as np

    from .data import load_any, split_mask
    from .evaluate import evaluate, format_table, plot

    router = load_router(args.artifact)
    try:
        data = load_any(args.data)
    except (ValueError, FileNotFoundError) as e:
        print(f"eval: {e}", file=sys.stderr)
        return 2
    rows = np.flatnonzero(split_mask(data)) if not args.all_rows else np.arange(len(data))
    allowed = [m.id for m in _models(args.models)] if args.models else None
    res = evaluate(router, data, rows, default_catalog(), allowed=allowed, progress=not args.quiet)
    print(format_table(res))
    for src, r in res.items():
        d = r["default_point"]
        print(f"{src}: default tradeoff {r['default_tradeoff']:g} → accuracy {d['acc']:.3f} at "
              f"{d['cost'] * 1e6:.1f} µUSD/prompt (best single {r['best_single']}: "
              f"{r['single'][r['best_single']]['acc']:.3f} at {r['single'][r['best_single']]['cost'] * 1e6:.1f} µUSD)")
    if args.plot:
        try:
            plot(res, args.plot)
            print(f"plot: {args.plot}")
        except ImportError:
            print("plot skipped: matplotlib is not installed", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=1))
    return 0


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``route``, ``train`` and ``eval`` (each sets ``func`` and ``fn`` to its handler(args) -> int)."""
    p = subparsers.add_parser("route", help="choose a model for a prompt (or a JSONL batch)")
    p.add_argument("prompt", nargs="*", help="the prompt text")
    p.add_argument("--models", help="comma-separated catalog ids or wildcards (default: whole catalog)")
    p.add_argument("--tradeoff", help="0 (best quality) … 10 (cheapest); batch: comma-separated list")
    p.add_argument("--explain", action="store_true", help="show every candidate with quality, cost and reason")
    p.add_argument("--batch", metavar="FILE.jsonl",
                   help='one chat request per line ({"id", "messages" or "prompt", "tools", "response_format", '
                        '"max_tokens"}); - = stdin')
    p.add_argument("--out", help="batch output file (default stdout)")
    p.add_argument("--top", type=int, default=5, help="batch: candidates kept per line")
    p.add_argument("--tools", action="store_true", help="require tool calling")
    p.add_argument("--json-output", action="store_true", help="require JSON output")
    p.add_argument("--max-tokens", type=int, help="the request's max_tokens (the output the models must fit)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.add_argument("--artifact", help="router artifact (default: the config's router.artifact, or the shipped one)")
    p.add_argument("--config", help="YAML or TOML config file: its models and the providers with keys, as serve")
    p.set_defaults(func=cmd_route, fn=cmd_route)

    from .train import add_arguments

    p = subparsers.add_parser("train", help="train a router artifact from routing data")
    add_arguments(p)
    p.set_defaults(func=cmd_train, fn=cmd_train)

    p = subparsers.add_parser("eval", help="benchmark the router on the held-out split")
    p.add_argument("--data", required=True, help="shared routing folder or Not Diamond CSV")
    p.add_argument("--models", help="restrict pools to these catalog ids / wildcards")
    p.add_argument("--artifact", help="router artifact (default: the shipped one)")
    p.add_argument("--plot", default="router_eval.png", help="quality–cost plot (PNG)")
    p.add_argument("--json-out", help="write the results as JSON")
    p.add_argument("--all-rows", action="store_true", help="evaluate on every prompt, not only the held-out split")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval, fn=cmd_eval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metarouter")
    sub = ap.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = ap.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
