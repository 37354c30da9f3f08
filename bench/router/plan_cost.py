"""CPU cost of one ``model: "auto"`` decision: ``Router.route`` alone and ``AutoResolver.plan`` as the gateway calls it.

    .venv/bin/python bench/router/plan_cost.py                # ~10 s on one core
    .venv/bin/python bench/router/plan_cost.py --n 3000 --json out.json --only distinct
    .venv/bin/python bench/router/plan_cost.py --redis redis://127.0.0.1:6379/0   # + the plan with Redis pins

To compare with an older commit on the same machine, run this script against that commit's sources:
``git archive COMMIT src | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/src .venv/bin/python bench/router/plan_cost.py``.

Prompts (all with the default 20-model catalog, every provider configured, no per-request controls):

- ``short``: system "You are a helpful assistant." + user "Say hello in one short sentence.", max_tokens 64,
  the same body every time (every cache warm: the best case);
- ``long``: the same system prompt + a ~1,000-token user message (4,000 characters), the same every time;
- ``distinct short``: the same system prompt + a different ~10-word user message each time (words from a fixed
  list, plus a unique number: no text repeats, words do);
- ``distinct long``: a different ~1,000-token user message each time (shuffled sentences, plus a unique number).

``route`` is ``Router.route(messages, catalog)`` without constraints; ``plan`` is ``AutoResolver.plan(body, ctx,
["auto"])`` with the whole body (so max_tokens 64 is a constraint), after which the first candidate is pinned as
the gateway does once a model answered (outside the timing).

Per case: wall clock (``perf_counter_ns``) and thread CPU (``thread_time_ns``) per call, p50 / p99 / mean in µs,
after a warm-up. Pinned to one core where the OS allows. The figures are for one process on whatever else the
machine runs: compare runs made on the same machine at the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from metarouter.catalog import default_catalog
from metarouter.config import Settings
from metarouter.gateway.auto import AutoResolver
from metarouter.gateway.pipeline import RequestContext
from metarouter.providers.base import ProviderConfig
from metarouter.router import kernel, load_router
from metarouter.store.base import KeyRecord

SYSTEM = "You are a helpful assistant."
WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has "
         "look more day could go come did number sound no most people my over know water than call first who may "
         "down side been now find any new work part take get place made live where after back little only round "
         "man year came show every good me give our under name very through just form sentence great think say "
         "help low line differ turn cause much mean before move right boy old too same tell does set three want "
         "air well also play small end put home read hand port large spell add even land here must big high such "
         "follow act why ask men change went light kind off need house picture try us again animal point mother "
         "world near build self earth father head stand own page should country found answer school grow study "
         "still learn plant cover food sun four between state keep eye never last let thought city tree cross "
         "farm hard start might story saw far sea draw left late run while press close night real life few north "
         "python function error explain translate summarize code list table proof equation integral compute").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + rng.choice(".?!")


def long_text(rng: random.Random, chars: int = 4000) -> str:
    parts: list[str] = []
    size = 0
    while size < chars:
        s = sentence(rng, rng.randint(6, 18))
        parts.append(s)
        size += len(s) + 1
    return " ".join(parts)[:chars]


def body_of(user: str, system: str | None = SYSTEM) -> dict[str, Any]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"model": "auto", "messages": msgs, "max_tokens": 64}


def make_resolver(sticky: Any = None) -> AutoResolver:
    catalog = default_catalog()
    providers = {m.provider: ProviderConfig(name=m.provider, base_url="http://127.0.0.1:9", api_key="k")
                 for m in catalog}
    settings = Settings(providers=providers, catalog=catalog)
    return AutoResolver(settings, catalog, sticky=sticky)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summarise(wall_ns: list[int], cpu_ns: list[int]) -> dict[str, float]:
    w = [x / 1e3 for x in wall_ns]
    c = [x / 1e3 for x in cpu_ns]
    return {"n": len(w), "wall_p50_us": pct(w, 50), "wall_p99_us": pct(w, 99), "wall_mean_us": statistics.fmean(w),
            "cpu_p50_us": pct(c, 50), "cpu_p99_us": pct(c, 99), "cpu_mean_us": statistics.fmean(c)}


def bench_route(router, models, bodies, warm: int) -> dict[str, float]:
    route = router.route
    for b in bodies[:warm]:
        route(b["messages"], models)
    wall, cpu = [], []
    pc, tt = time.perf_counter_ns, time.thread_time_ns
    for b in bodies[warm:]:
        msgs = b["messages"]
        c0, t0 = tt(), pc()
        route(msgs, models)
        t1, c1 = pc(), tt()
        wall.append(t1 - t0)
        cpu.append(c1 - c0)
    return summarise(wall, cpu)


async def measure_plan(resolver: AutoResolver, ctx: RequestContext, bodies, warm: int) -> dict[str, float]:
    plan = resolver.plan
    for b in bodies[:warm]:
        pl = await plan(b, ctx, ["auto"])
        await pl.on_served(pl.candidates[0].id)
    wall, cpu = [], []
    pc, tt = time.perf_counter_ns, time.thread_time_ns
    for b in bodies[warm:]:
        c0, t0 = tt(), pc()
        pl = await plan(b, ctx, ["auto"])
        t1, c1 = pc(), tt()
        wall.append(t1 - t0)
        cpu.append(c1 - c0)
        await pl.on_served(pl.candidates[0].id)  # as the gateway does once a model answered (sticky pin)
    return summarise(wall, cpu)


def bench_plan(resolver: AutoResolver, ctx: RequestContext, bodies, warm: int) -> dict[str, float]:
    return asyncio.run(measure_plan(resolver, ctx, bodies, warm))


def bench_plan_redis(url: str, ctx: RequestContext, bodies, warm: int) -> dict[str, float]:
    """The plan with sticky pins in Redis (a deployment with ``redis_url``); keys under a throwaway prefix."""
    import secrets

    import redis.asyncio as aioredis

    from metarouter.gateway.auto import RedisStickySessions

    async def go() -> dict[str, float]:
        client = aioredis.from_url(url)
        prefix = f"mr_bench:{secrets.token_hex(6)}:"
        try:
            return await measure_plan(make_resolver(RedisStickySessions(client, prefix=prefix)), ctx, bodies, warm)
        finally:
            keys = [k async for k in client.scan_iter(prefix + "*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="measured calls per case (default 2000)")
    ap.add_argument("--warm", type=int, default=200, help="warm-up calls per case (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--only", help="run only the cases whose name contains this (e.g. 'distinct')")
    ap.add_argument("--redis", metavar="URL", help="also measure the short case's plan with sticky pins in Redis")
    ap.add_argument("--kernel", choices=("compiled", "numpy"), default="compiled",
                    help="the decision's kernel: numba's compiled one (default; needs the fast extra) or numpy's")
    args = ap.parse_args(argv)
    if args.kernel == "numpy":
        os.environ["METAROUTER_KERNEL"] = "numpy"
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    except (AttributeError, OSError):
        pass

    router = load_router()
    kernel.warm_up(background=False)  # compiled now (or, with --kernel numpy, the numpy kernel named)
    if args.kernel == "compiled" and not kernel.compiled_ready():
        ap.error(f"no compiled kernel: {kernel.status()}")
    models = list(default_catalog())
    resolver = make_resolver()
    assert resolver.router is router and len(resolver.pool()) == len(models) == 20
    key = KeyRecord(public_id="bench-key", label="bench", key_hash="x")
    ctx = RequestContext(key=key)

    total = args.warm + args.n
    rng = random.Random(args.seed)
    short = body_of("Say hello in one short sentence.")
    long_ = body_of(long_text(random.Random(args.seed + 1)))
    cases = {
        "short": lambda: [short] * total,
        "long (~1,000 tokens)": lambda: [long_] * total,
        # a fresh list per benchmark: route and plan each see never-seen texts (numbers keep them distinct)
        "distinct short": lambda: [body_of(f"{sentence(rng, rng.randint(6, 14))} ({rng.randrange(10**9)})")
                                   for _ in range(total)],
        "distinct long": lambda: [body_of(f"{long_text(rng)} ({rng.randrange(10**9)})") for _ in range(total)],
    }
    if args.only:
        cases = {k: v for k, v in cases.items() if args.only in k}
    tokens = {name: router.route(make()[0]["messages"], models).ranked[0].prompt_tokens
              for name, make in cases.items()}
    t_end = time.perf_counter() + 0.5  # settle the core (frequency, caches) before the first measured case
    while time.perf_counter() < t_end:
        router.route(short["messages"], models)
    results: dict[str, Any] = {"python": sys.version.split()[0], "kernel": kernel.status(),
                               "load_avg_before": os.getloadavg(), "cases": {}}
    for name, make in cases.items():
        r = bench_route(router, models, make(), args.warm)
        p = bench_plan(resolver, ctx, make(), args.warm)
        results["cases"][name] = {"prompt_tokens": tokens[name], "route": r, "plan": p}
        if args.redis and name == "short":
            results["cases"]["short, Redis sticky"] = {"prompt_tokens": tokens[name], "route": r,
                                                       "plan": bench_plan_redis(args.redis, ctx, make(), args.warm)}
    results["load_avg_after"] = os.getloadavg()

    print(f"{'case':22} {'tok':>5} {'what':6} {'cpu p50':>8} {'cpu p99':>8} {'cpu mean':>9} "
          f"{'wall p50':>9} {'wall p99':>9} {'wall mean':>10}   (µs, n={args.n})")
    for name, r in results["cases"].items():
        for what in ("route", "plan"):
            s = r[what]
            print(f"{name:22} {r['prompt_tokens']:5d} {what:6} {s['cpu_p50_us']:8.1f} {s['cpu_p99_us']:8.1f} "
                  f"{s['cpu_mean_us']:9.1f} {s['wall_p50_us']:9.1f} {s['wall_p99_us']:9.1f} {s['wall_mean_us']:10.1f}")
    print(f"kernel: {results['kernel']}")
    print("load average before / after: %.2f / %.2f" % (results["load_avg_before"][0], results["load_avg_after"][0]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
