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

import numpy as np

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
    from .core import Constraints, load_router

    catalog, artifact = _route_settings(args)
    router = load_router(artifact)
    models = _models(args.models, catalog)
    if args.batch:
        return _route_batch(router, models, args)
    if not args.prompt:
        raise SystemExit("route: give a PROMPT or --batch FILE.jsonl")
    tradeoffs = [float(t) for t in str(args.tradeoff).split(",")] if args.tradeoff is not None else [None]
    cons = Constraints(needs_tools=args.tools, needs_json=args.json_output, max_tokens=args.max_tokens)
    messages = [{"role": "user", "content": " ".join(args.prompt)}]
    for t in tradeoffs:
        d = router.route(messages, models, cons, tradeoff=t)
        if args.json:
            print(_dumps(d.to_dict()))
            continue
        if not d.ranked:
            print("no model fits:", "; ".join(f"{m}: {r}" for m, r in d.excluded))
            return 1
        top = d.ranked[0]
        print(f"{top.model_id}  (tradeoff {d.tradeoff:g}, P(good)={top.quality:.2f}, ~${top.cost_usd:.6f}, "
              f"{d.decision_ms:.2f} ms)")
        if args.explain:
            print(f"\nprompt familiarity {d.familiarity:.2f} (1 = like the training data; low = leaning on priors)")
            w = max(len(c.model_id) for c in d.ranked)
            print(f"\n{'#':>2}  {'model':<{w}}  {'P(good)':>7}  {'cost USD':>10}  {'out tok':>7}  {'score':>8}  reason")
            for i, c in enumerate(d.ranked):
                print(f"{i + 1:>2}  {c.model_id:<{w}}  {c.quality:7.3f}  {c.cost_usd:10.6f}  {c.output_tokens:7d}  "
                      f"{c.score:8.4f}  {c.reason}")
            for m, r in d.excluded:
                print(f" -  {m:<{w}}  excluded: {r}")
    return 0


def _route_batch(router, models: list[Model], args: argparse.Namespace) -> int:
    from .core import tradeoff_lambda
    from .encoder import estimate_prompt_tokens
    from .evaluate import predict_matrix

    tradeoffs = [float(t) for t in str(args.tradeoff).split(",")] if args.tradeoff is not None else \
        [router.default_tradeoff]
    src = sys.stdin if args.batch == "-" else open(args.batch, encoding="utf-8")
    items = [json.loads(line) for line in src if line.strip()]
    t0 = time.perf_counter()
    convs = [it["messages"] if "messages" in it else str(it.get("prompt", "")) for it in items]
    X = np.stack([router.encoder.encode(c) for c in convs]).astype(np.float32) if convs else \
        np.zeros((0, router.encoder.out_dim), np.float32)
    Q, C = predict_matrix(router, convs, models, X)
    ptok = np.array([estimate_prompt_tokens(c) for c in convs])
    ctx = np.array([m.context_length for m in models])
    fits = ptok[:, None] <= ctx[None, :]
    ids = [m.id for m in models]
    out = sys.stdout if not args.out else open(args.out, "w", encoding="utf-8")
    top_k = args.top
    for t in tradeoffs:
        S = np.where(fits, Q - tradeoff_lambda(t) * C, -np.inf)
        order = np.argsort(-S, axis=1, kind="stable")
        for i, it in enumerate(items):
            ranked = [{"model_id": ids[j], "quality": round(float(Q[i, j]), 4), "cost_usd": float(f"{C[i, j]:.6g}")}
                      for j in order[i, :top_k] if np.isfinite(S[i, j])]
            out.write(_dumps({"id": it.get("id", i), "tradeoff": t, "model": ranked[0]["model_id"] if ranked else None,
                              "ranked": ranked}) + "\n")
    if out is not sys.stdout:
        out.close()
    dt = time.perf_counter() - t0
    print(f"routed {len(items)} prompts × {len(tradeoffs)} tradeoffs in {dt:.2f}s "
          f"({len(items) / max(dt, 1e-9):,.0f} prompts/s)", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run

    return run(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from .core import load_router
    from .data import load_any, split_mask
    from .evaluate import evaluate, format_table, plot

    router = load_router(args.artifact)
    data = load_any(args.data)
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
    p.add_argument("--batch", metavar="FILE.jsonl", help='lines {"id", "prompt"} or {"id", "messages"}; - = stdin')
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
