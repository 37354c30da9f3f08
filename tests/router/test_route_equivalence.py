"""Routing decisions are pinned: a few hundred prompts × tradeoffs × constraints × candidate pools, and the
``auto`` plan (controls, sticky sessions, errors), against reference outputs recorded in
``fixtures/route_reference.json``.

The reference was written by the implementation before the per-request cost work (commit dd65d0c) with

    .venv/bin/python tests/router/test_route_equivalence.py --write

and must only be rewritten when the artifact or the routing policy changes on purpose. Speed-ups must reproduce
it: the same ranked models, predicted quality and cost (to 1e-9 relative), familiarity and excluded models, and
byte for byte the same ``RouteDecision.to_dict()`` / plan ``routing`` dict, less ``decision_ms`` (compared through a
digest: output tokens, reasons, rounding, key order).

The prompts are a fixed sample of the shared routing data (held in the fixture, so the test needs nothing outside
the repository) plus a few made-up edge cases; conversations, long texts and pools are built from them here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from metarouter.catalog import Catalog, default_catalog
from metarouter.config import Settings
from metarouter.errors import GatewayError
from metarouter.gateway.auto import AutoResolver, StickySessions
from metarouter.gateway.pipeline import RequestContext
from metarouter.providers.base import ProviderConfig
from metarouter.router import Constraints, load_router
from metarouter.store.base import KeyRecord

FIXTURE = Path(__file__).parent / "fixtures" / "route_reference.json"
REL = 1e-9

EDGE_PROMPTS = [
    "Say hello in one short sentence.",
    "",
    "   \n\t  ",
    "ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺᚾᛁᛃ zxqv wplk",
    "Écris une fonction Python qui inverse une chaîne — naïve, café, 数学, ½.",
    "def f(x):\n    return [i * i for i in x]\nassert f([1, 2]) == ??",
    "Let x be the positive root of x^2 - 5x + 6 = 0. Compute \\frac{x^3}{2}.",
    "word\u00a0word foo_bar 1234567 (a) == don't Eggs. x^2",
]

CONSTRAINTS: list[dict[str, Any] | None] = [
    None,
    {"max_tokens": 64},
    {"needs_tools": True},
    {"needs_json": True, "max_tokens": 1000},
    {"allowed": ["anthropic/*", "openai/gpt-4o*"]},
    {"excluded": ["*/claude-*", "openai/*"]},
    {"max_price_prompt": 1.0},
    {"max_price_completion": 5.0, "max_tokens": 256},
    {"max_price_request": 0.0005},
    {"needs_vision": True},
    {"max_tokens": 100_000},
    {"max_price_request": 1e-7},
    {"needs_vision": False, "needs_tools": True, "max_price_prompt": 3.0, "max_price_request": 0.01},
    {"allowed": ["nobody/*"]},
]
TRADEOFFS: list[float | None] = [None, 0.0, 0.5, 1.5, 3.0, 5.0, 7.5, 10.0]


def _pools() -> list[list]:
    """Candidate pools: the catalog, a shuffled subset, duplicates, and models the artifact has no parameters for."""
    full = list(default_catalog())
    rng = random.Random(3)
    subset = rng.sample(full, 6)
    dup = full[:5] + full[3:8]
    unknown = [replace(full[2], id="acme/new-model-1", output_pico=full[2].output_pico * 3),
               replace(full[6], id="acme/new-reasoner", reasoning=True, hidden_reasoning_tokens=500),
               replace(full[0], input_pico=full[0].input_pico * 2)] + full[10:16]
    return [full, subset, dup, unknown]


POOLS = _pools()
MODEL_IDS = sorted({m.id for pool in POOLS for m in pool})
MODEL_INDEX = {m: i for i, m in enumerate(MODEL_IDS)}


def _conversation(kind: int, p: str, q: str, r: str) -> list[dict] | str:
    """A few message shapes around prompt ``p`` (``q``, ``r``: other prompts for earlier turns)."""
    sys_msg = {"role": "system", "content": "You are a helpful assistant."}
    if kind == 0:
        return [{"role": "user", "content": p}]
    if kind == 1:
        return [sys_msg, {"role": "user", "content": p}]
    if kind == 2:
        return [sys_msg, {"role": "user", "content": q}, {"role": "assistant", "content": r[:200]},
                {"role": "user", "content": p}]
    if kind == 3:
        return [{"role": "developer", "content": r[:120]},
                {"role": "user", "content": [{"type": "text", "text": p}, {"type": "text", "text": q[:80]}]}]
    if kind == 4:
        return [{"role": "user", "content": [{"type": "text", "text": p},
                                             {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    if kind == 5:
        return p
    if kind == 6:
        return [{"role": "user", "content": p}, {"role": "assistant", "content": None},
                {"role": "tool", "content": q[:100]}]
    return [sys_msg, {"role": "user", "content": q}, {"role": "assistant", "content": r},
            {"role": "user", "content": p}, {"role": "assistant", "content": q[:50]}]


def route_cases(prompts: list[str]) -> list[dict[str, Any]]:
    """Every prompt twice (catalog, no constraints, default tradeoff; then a rotating shape, constraint, tradeoff
    and pool), a handful of long texts, and a few degenerate inputs."""
    rng = random.Random(11)
    texts = prompts + EDGE_PROMPTS
    cases: list[dict[str, Any]] = []
    for i, p in enumerate(texts):
        cases.append({"messages": [{"role": "user", "content": p}], "pool": 0, "c": 0, "t": None})
        q, r = texts[(i * 7 + 3) % len(texts)], texts[(i * 13 + 5) % len(texts)]
        cases.append({"messages": _conversation(i % 8, p, q, r), "pool": (i // 3) % len(POOLS),
                      "c": i % len(CONSTRAINTS), "t": TRADEOFFS[(i // 2) % len(TRADEOFFS)]})
    for n_chars, c, t in [(4_000, 0, None), (4_000, 1, 3.0), (8_000, 8, 1.5), (30_000, 0, 0.0),
                          (60_000, 10, 10.0), (1_600_000, 0, None)]:
        s = ""
        while len(s) < n_chars:
            s += rng.choice(prompts) + "\n"
        cases.append({"messages": [{"role": "system", "content": "Answer briefly."},
                                   {"role": "user", "content": s[:n_chars]}], "pool": 0, "c": c, "t": t})
    cases.append({"messages": [], "pool": 0, "c": 0, "t": None})
    cases.append({"messages": [{"role": "assistant", "content": "Hi there"}], "pool": 1, "c": 1, "t": 2.0})
    cases.append({"messages": [{"role": "user", "content": "hello"}], "pool": None, "c": 0, "t": None})
    return cases


def _constraints(i: int) -> Constraints | None:
    spec = CONSTRAINTS[i]
    return None if spec is None else Constraints(**spec)


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj)).hexdigest()[:20]


def run_route_case(router, case: dict[str, Any]) -> dict[str, Any]:
    pool = [] if case["pool"] is None else POOLS[case["pool"]]
    d = router.route(case["messages"], pool, _constraints(case["c"]), case["t"])
    full = d.to_dict()
    full.pop("decision_ms")
    return {
        "ranked": [MODEL_INDEX[c.model_id] for c in d.ranked],
        "q": [float(np.float32(c.quality)) for c in d.ranked],  # float32 values: short exact decimals
        "cost": [float(f"{c.cost_usd:.10g}") for c in d.ranked],
        "fam": float(np.float32(d.familiarity)),
        "excluded": [MODEL_INDEX[m] for m, _ in d.excluded],
        "digest": _digest(full),
    }


# -- the auto plan -------------------------------------------------------------------------------------------------
def make_resolver() -> AutoResolver:
    catalog = default_catalog()
    # one provider without a key: its models are outside the pool
    providers = {m.provider: ProviderConfig(name=m.provider, base_url="http://127.0.0.1:9", api_key="k")
                 for m in catalog if m.provider != "cohere"}
    router_cfg = {"cost_quality_tradeoff": 2.0, "excluded_models": ["openai/o1-preview*"],
                  "keys": {"limited": {"cost_tier": "medium"}, "pk-open": {"excluded_models": []}}}
    settings = Settings(providers=providers, catalog=Catalog(catalog), router=router_cfg)
    return AutoResolver(settings, catalog, sticky=StickySessions())


def plan_bodies(prompts: list[str]) -> list[tuple[str | None, str | None, dict[str, Any], str | None]]:
    """(key label, session id, body, model to report as served or None) in order: later ones see earlier pins."""
    chat = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in one short sentence."}]

    def body(messages, **kw):
        return {"model": "auto", "messages": messages, "max_tokens": 64, **kw}

    def plugin(**kw):
        return [{"id": "auto-router", **kw}]

    out: list = [
        (None, None, body(chat), None),
        ("plain", None, body(chat), "anthropic/claude-3.5-haiku"),  # pins the fingerprint
        ("plain", None, body(chat), None),  # held
        ("plain", None, body(chat, plugins=plugin(allowed_models=["openai/*"])), None),  # released
        ("plain", "s-1", body(chat), "openai/gpt-4o-mini-2024-07-18"),
        ("plain", "s-1", body(chat + [{"role": "assistant", "content": "Hello!"},
                                      {"role": "user", "content": prompts[0]}]), None),
        ("limited", None, body(chat), None),
        ("open", None, body(chat, plugins=plugin(cost_quality_tradeoff=0)), None),
        ("plain", None, body(chat, tools=[{"type": "function", "function": {"name": "f"}}]), None),
        ("plain", None, body(chat, tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="none"),
         None),
        ("plain", None, body(chat, response_format={"type": "json_object"}, max_tokens=None,
                             max_completion_tokens=2000), None),
        ("plain", None, body(chat, provider={"max_price": {"prompt": 1, "completion": "4", "request": 0.001}}),
         None),
        ("plain", None, body(chat, plugins=plugin(cost_tier="low", excluded_models=["*/gemini-*"])), None),
        ("plain", None, body(chat, plugins=plugin(cost_tier="max", cost_quality_tradeoff=10, enabled=True)), None),
        ("plain", None, body(chat, plugins=[{"id": "auto-router", "enabled": False, "cost_tier": "low"}]), None),
        ("plain", None, body(chat, plugins=plugin(allowed_models=["nobody/*"])), None),
        ("plain", None, body(chat, provider={"max_price": {"request": 1e-9}}), None),
        ("plain", None, body(chat, plugins=plugin(cost_tier="nope")), None),
        ("plain", None, body(chat, plugins=plugin(cost_quality_tradeoff=11)), None),
        ("plain", None, body(chat, provider={"max_price": {"prompt": -1}}), None),
        ("plain", None, body(chat, max_tokens=10**9), None),
    ]
    for i, p in enumerate(prompts[:24]):
        msgs = [{"role": "user", "content": p}] if i % 2 else [chat[0], {"role": "user", "content": p}]
        kw: dict[str, Any] = {}
        if i % 3 == 1:
            kw["plugins"] = plugin(cost_quality_tradeoff=[0, 1.5, 4, 9][i % 4])
        if i % 5 == 2:
            kw["provider"] = {"max_price": {"completion": 10}}
        out.append(("plain" if i % 4 else None, None, body(msgs, **kw), "openai/gpt-4o-2024-08-06" if i == 5 else None))
    return out


def run_plans(prompts: list[str]) -> list[dict[str, Any]]:
    resolver = make_resolver()
    keys = {"plain": KeyRecord(public_id="pk-plain", label="plain", key_hash="x"),
            "limited": KeyRecord(public_id="pk-limited", label="limited", key_hash="x"),
            "open": KeyRecord(public_id="pk-open", label="open", key_hash="x")}

    async def go() -> list[dict[str, Any]]:
        out = []
        for label, session, body, served in plan_bodies(prompts):
            ctx = RequestContext(key=keys.get(label) if label else None, session_id=session)
            try:
                plan = await resolver.plan(body, ctx, ["auto"])
            except GatewayError as e:
                out.append({"error": e.status, "message": e.message, "metadata": _digest(e.metadata)})
                continue
            routing = dict(plan.routing)
            routing.pop("decision_ms")
            out.append({"candidates": [MODEL_INDEX[m.id] for m in plan.candidates], "router": plan.router,
                        "requested": plan.requested_model, "reason": routing["reason"],
                        "sticky": routing["sticky"], "digest": _digest(routing)})
            if served:
                await plan.on_served(served)
        return out

    return asyncio.run(go())


# -- the test ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def _close(x: float, y: float) -> bool:
    return x == y or abs(x - y) <= REL * max(abs(x), abs(y))


def _compare(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert got["ranked"] == want["ranked"], where
    assert got["excluded"] == want["excluded"], where
    assert np.float32(got["fam"]) == np.float32(want["fam"]), where
    # quality is computed in float32: the stored decimals name float32 values exactly
    assert all(_close(float(np.float32(a)), float(np.float32(b)))
               for a, b in zip(got["q"], want["q"], strict=True)), (where, got["q"], want["q"])
    assert all(_close(a, b) for a, b in zip(got["cost"], want["cost"], strict=True)), (where, got["cost"], want["cost"])
    assert got["digest"] == want["digest"], (where, "to_dict() differs")


def test_route_decisions_match_the_reference(reference):
    router = load_router()
    cases = route_cases(reference["prompts"])
    assert reference["models"] == MODEL_IDS and reference["router_version"] == router.version
    assert len(cases) == len(reference["route"]) >= 250
    for rnd in ("cold", "warm"):  # the second round reads every cache the first one filled
        for i, (case, want) in enumerate(zip(cases, reference["route"])):
            _compare(run_route_case(router, case), want, f"{rnd} case {i}")


def test_auto_plans_match_the_reference(reference):
    got = run_plans(reference["prompts"])
    assert len(got) == len(reference["plan"])
    for i, (g, w) in enumerate(zip(got, reference["plan"])):
        assert g == w, f"plan {i}"
    assert run_plans(reference["prompts"]) == got  # a second resolver on warm router caches


def test_routing_dicts_built_from_columns_match_the_candidates():
    """``RouteDecision.to_dict()`` formats the ranked candidates from columns in one go; it must say exactly what
    each :class:`Candidate` says (``Candidate.to_dict()``, ``Router._reason``), ties and edge values included."""
    from metarouter.router.core import _Ranking

    rng = random.Random(9)
    for trial in range(400):
        n = rng.choice([1, 2, 3, 7, 20, 40, 70])
        q = [float(np.float32(rng.choice([rng.random(), 0.5, 0.95, 0.125, 0.00005]))) for _ in range(n)]
        cost = [rng.choice([rng.random() * 10 ** rng.randint(-9, 1), 0.01, 0.00999999, 1e-7]) for _ in range(n)]
        pw = [float(np.float32(rng.choice([rng.random(), 0.6, 0.6000001, 1.0, 0.0]))) for _ in range(n)]
        t = rng.choice([0.0, 0.5, 1.5, 3.0, 10.0])
        score = [a - (10 ** (t / 2) - 1) * b for a, b in zip(q, cost)]
        if trial % 3 == 0:  # near-ties with the best quality / lowest cost
            q[-1] = max(q) - 5e-10
            cost[-1] = min(cost) + 5e-16
        why = (max(q), min(cost), t) if trial % 7 else None
        args = ([f"m/{i}" for i in range(n)], q, cost, score, pw, [rng.randint(0, 9999) for _ in range(n)],
                rng.randint(1, 10**6), why)
        want = [c.to_dict() for c in _Ranking(*args).candidates()]
        for f32 in (False, True):  # quality and prior weight are float32 values here, as route() makes them
            ranking = _Ranking(*args, f32=f32)
            assert ranking.dicts() == want
            assert ranking.reasons() == [c.reason for c in ranking.candidates()]


def test_rounding_float32_values_in_bulk_is_exact():
    """``_round_f32`` (``rint(v * 10**d) / 10**d``) equals Python's correctly rounded ``round(v, d)`` on float32
    values: exact halves (k/32, k/16: ties to even), values a few ulps around every k / 10**d, and random ones."""
    from metarouter.router.core import _round_f32

    rng = np.random.default_rng(0)
    for d in (3, 4):
        k = np.arange(0, 10**d + 1, dtype=np.float64)
        up = down = (k / 10**d).astype(np.float32)
        vals = [up]
        for _ in range(3):  # 1-3 ulps above and below
            up, down = np.nextafter(up, np.float32(2)), np.nextafter(down, np.float32(-1))
            vals += [up, down]
        vals += [(np.arange(0, 65) / 64).astype(np.float32), rng.random(200_000, dtype=np.float32),
                 np.float32([1e-8, 5e-5, 5e-4, 0.00005, 0.0005, 0.99995, 0.9995, -0.0, 0.0])]
        v = np.concatenate(vals).astype(np.float64).tolist()
        assert _round_f32(v, d) == [round(x, d) for x in v]


def _write(sample_from: Path) -> None:
    import csv
    import gzip

    rng = random.Random(7)
    with gzip.open(sample_from / "prompts.csv.gz", "rt", encoding="utf-8") as f:
        rows = [r["prompt"] for r in csv.DictReader(f)]
    with gzip.open(sample_from / "arena_hard_prompts.csv.gz", "rt", encoding="utf-8") as f:
        arena = [r["prompt"] for r in csv.DictReader(f)]
    prompts = [p[:400] for p in rng.sample(rows, 100) + rng.sample(arena, 24)]
    router = load_router()
    ref = {"note": "written by tests/router/test_route_equivalence.py --write; see its docstring",
           "router_version": router.version, "models": MODEL_IDS, "prompts": prompts,
           "route": [run_route_case(router, c) for c in route_cases(prompts)], "plan": run_plans(prompts)}
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(ref, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{FIXTURE}: {FIXTURE.stat().st_size / 1024:.0f} KiB, {len(ref['route'])} routes, {len(ref['plan'])} plans")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--write"]:
        sys.exit("usage: test_route_equivalence.py --write [ROUTING_DATA_DIR]  (rewrites the reference)")
    _write(Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).parents[3] / "shared" / "data" / "routing"))
