"""Activity: the JSON and CSV API and the /activity page, the page checked in a real headless Chromium."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import struct
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

from metarouter.store import parse_key
from metarouter.store.sqlite import SQLiteStore
from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config
from .browser import Browser, chromium

SCREENSHOT_DIR = Path(os.environ.get("METAROUTER_ARTIFACTS", tempfile.gettempdir())) / "metarouter-artifacts"
ADMIN = "activity-admin-" + "c3" * 20
MODELS = ["openai/gpt-4o-mini-2024-07-18", "anthropic/claude-3-5-haiku-20241022", "mistralai/mistral-small-2409"]
XSS_APP = '<img src=x onerror="window.__xss=1">'
XSS_MODEL = 'evil/<svg onload="window.__xss=2">'
XSS_ERROR = 'upstream closed the stream: <b onmouseover="window.__xss=3">boom</b>, "quoted",\nsecond line'
FORMULA_APP = '=HYPERLINK("http://evil.example","click")'
needs_chromium = pytest.mark.skipif(chromium() is None and not os.environ.get("CI"), reason="chromium is not installed")


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def test_activity_api_per_day_model_and_apps(gateway):
    key = gateway.create_key("activity")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    for title, n in (("Alpha App", 3), ("Beta App", 1)):
        for _ in range(n):
            client.chat.completions.create(model="openai/gpt-4o-mini-2024-07-18",
                                           messages=[{"role": "user", "content": "ping " * 20}],
                                           extra_headers={"X-Title": title})
    r = httpx.get(f"{gateway.url}/api/v1/activity", headers=auth(key))
    assert r.status_code == 200
    rows = r.json()["data"]
    assert len(rows) == 1 and rows[0]["model"] == "openai/gpt-4o-mini-2024-07-18" and rows[0]["requests"] == 4
    assert rows[0]["usage"] > 0 and rows[0]["total_tokens"] == rows[0]["prompt_tokens"] + rows[0]["completion_tokens"]
    apps = httpx.get(f"{gateway.url}/api/v1/activity/apps", headers=auth(key)).json()["data"]
    assert [a["app"] for a in apps] == ["Alpha App", "Beta App"]
    assert apps[0]["requests"] == 3 and apps[0]["total_tokens"] > apps[1]["total_tokens"]
    only_beta = httpx.get(f"{gateway.url}/api/v1/activity", params={"app": "Beta App"}, headers=auth(key)).json()
    assert only_beta["data"][0]["requests"] == 1
    future = httpx.get(f"{gateway.url}/api/v1/activity", params={"date_from": "2999-01-01"}, headers=auth(key))
    assert future.json()["data"] == []
    bad = httpx.get(f"{gateway.url}/api/v1/activity", params={"date_from": "yesterday"}, headers=auth(key))
    assert bad.status_code == 400
    # another key sees none of it
    other = gateway.create_key("other-activity")
    assert httpx.get(f"{gateway.url}/api/v1/activity", headers=auth(other)).json()["data"] == []
    assert httpx.get(f"{gateway.url}/api/v1/activity").status_code == 401


# --- a gateway whose ledger holds a known history ----------------------------------------------------------------
def _seed_records(now: float, ka: str, kb: str) -> list[dict]:
    """120 ordinary records over the last 60 hours, and a few that the page must show with care."""
    records = []
    for i in range(120):
        model = MODELS[i % 3]
        routed = i % 2 == 0
        status = "error" if i % 10 == 3 else "cancelled" if i % 17 == 5 else "ok"
        records.append({
            "id": f"gen-seed-{i:03d}", "created_at": now - 600 - i * 1800, "key_id": kb if i % 4 == 0 else ka,
            "app_title": ["Alpha App", "Beta App", None][i % 3 if i % 7 else 2], "app_referer": None,
            "requested_model": "auto" if routed else model, "model": model, "provider": model.split("/")[0],
            "router": "auto" if routed else None, "streamed": i % 3 == 1, "status": status,
            "prompt_tokens": 100 + i, "completion_tokens": 20 + i, "reasoning_tokens": 0, "cached_tokens": 0,
            "usage_estimated": False, "cost_pico": (i + 1) * 10**9, "latency_ms": 100.0 + i, "ttft_ms": 50.0,
            "finish_reason": "stop", "native_finish_reason": "stop",
            "error": f"upstream failed mid-stream (#{i})" if status == "error" else None,
            "attempts": [{"model": model, "provider": model.split("/")[0], "status": 200}],
            "routing": {"reason": f"seeded reason {i}", "candidates": []} if routed else None,
        })
    base = dict(records[1], attempts=[], routing=None, router=None)
    records += [
        # the newest: a tiny cost and a sub-millisecond latency
        {**base, "id": "gen-tiny", "created_at": now - 60, "cost_pico": 970_000, "latency_ms": 0.4,
         "app_title": "Tiny App", "model": MODELS[0], "requested_model": MODELS[0], "provider": "openai"},
        # caller-controlled strings that must stay text
        {**base, "id": "gen-xss", "created_at": now - 120, "app_title": XSS_APP, "status": "error",
         "error": XSS_ERROR, "model": XSS_MODEL, "requested_model": XSS_MODEL, "provider": "evil"},
        {**base, "id": "gen-formula", "created_at": now - 180, "app_title": FORMULA_APP, "model": MODELS[1],
         "requested_model": MODELS[1], "provider": "anthropic"},
        # not charged: zero completion insurance, and an answer from the response cache
        {**base, "id": "gen-insured", "created_at": now - 240, "status": "error", "error": "upstream failed",
         "completion_tokens": 0, "cost_pico": 0, "insured": True},
        {**base, "id": "gen-cached", "created_at": now - 300, "cost_pico": 0,
         "routing": {"cache": {"hit": True, "age_s": 12}}},
    ]
    return records


@pytest.fixture(scope="module")
def seeded(fake, tmp_path_factory):
    env = {**FAKE_KEYS_ENV, "METAROUTER_ADMIN_KEY": ADMIN}
    data_dir = tmp_path_factory.mktemp("activity")
    with GatewayProcess(gateway_config(fake), data_dir, env=env) as gw:
        gw.key_a, gw.key_b = gw.create_key("alpha"), gw.create_key("beta")
        ka, kb = parse_key(gw.key_a), parse_key(gw.key_b)
        gw.now = time.time()
        gw.records = _seed_records(gw.now, ka, kb)
        gw.ka, gw.kb = ka, kb

        async def seed() -> None:  # through the store's own write path, into the database the server reads
            store = SQLiteStore(data_dir / "metarouter.db")
            await store.open()
            for r in gw.records:
                store.record_generation(r)
            await store.close()

        asyncio.run(seed())
        yield gw


def day_of(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def newest_first(records: list[dict]) -> list[str]:
    return [r["id"] for r in sorted(records, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


def api(gw, path: str, token: str = ADMIN, **params) -> httpx.Response:
    return httpx.get(f"{gw.url}/api/v1/activity{path}", params=params, headers=auth(token), timeout=30)


def all_pages(gw, token: str = ADMIN, **params) -> list[str]:
    ids, offset = [], 0
    while True:
        page = api(gw, "/generations", token, limit=50, offset=offset, **params).json()
        ids += [g["id"] for g in page["data"]]
        offset += 50
        if offset >= page["total_count"]:
            return ids


def test_generations_are_filtered_and_paged_by_the_server(seeded):
    gw, recs = seeded, seeded.records
    first = api(gw, "/generations", limit=50).json()
    assert first["total_count"] == len(recs) and first["offset"] == 0 and first["limit"] == 50
    assert [g["id"] for g in first["data"]] == newest_first(recs)[:50]
    second = api(gw, "/generations", limit=50, offset=50).json()
    assert [g["id"] for g in second["data"]] == newest_first(recs)[50:100]
    assert api(gw, "/generations", offset=10_000).json()["data"] == []
    # each filter, and all of them together, agree with the records
    cases = [
        ({"model": MODELS[1]}, lambda r: r["model"] == MODELS[1]),
        ({"status": "error"}, lambda r: r["status"] == "error"),
        ({"app": "Beta App"}, lambda r: r["app_title"] == "Beta App"),
        ({"provider": "mistralai"}, lambda r: r["provider"] == "mistralai"),
        ({"key": gw.kb}, lambda r: r["key_id"] == gw.kb),
        ({"since": gw.now - 86400, "until": gw.now - 3600}, lambda r: gw.now - 86400 <= r["created_at"] < gw.now - 3600),
        ({"date_from": day_of(gw.now - 86400), "date_to": day_of(gw.now - 86400)},
         lambda r: day_of(r["created_at"]) == day_of(gw.now - 86400)),
        ({"date_from": day_of(gw.now - 86400), "until": gw.now - 3600},  # both bounds hold
         lambda r: day_of(r["created_at"]) >= day_of(gw.now - 86400) and r["created_at"] < gw.now - 3600),
        ({"model": MODELS[0], "status": "ok", "app": "Alpha App", "key": gw.ka},
         lambda r: (r["model"], r["status"], r["app_title"], r["key_id"]) == (MODELS[0], "ok", "Alpha App", gw.ka)),
    ]
    for params, keep in cases:
        expected = newest_first([r for r in recs if keep(r)])
        assert expected, params
        assert all_pages(gw, **params) == expected, params
        assert api(gw, "/generations", **params).json()["total_count"] == len(expected)
    (err,) = [g for g in api(gw, "/generations", status="error", app=XSS_APP).json()["data"]]
    assert err["error"] == XSS_ERROR and err["provider_name"] == "evil"
    # a key sees its own records whatever it asks for
    assert all_pages(gw, gw.key_b) == newest_first([r for r in recs if r["key_id"] == gw.kb])
    assert all_pages(gw, gw.key_b, key=gw.ka) == all_pages(gw, gw.key_b)


@pytest.mark.parametrize("params", [
    {"status": "failed"}, {"since": "yesterday"}, {"since": "-1"}, {"until": "nan"}, {"until": "1e300"},
    {"model": "m" * 1025}, {"date_to": "2026-13-01"}, {"offset": "-1"}, {"offset": "x"}, {"limit": "ten"},
])
def test_bad_filters_are_refused(seeded, params):
    paging = "offset" in params or "limit" in params
    for path in ("/generations",) if paging else ("/generations", "/summary", "/export.csv"):
        r = api(seeded, path, **params)
        assert r.status_code == 400 and r.json()["error"]["code"] == 400, (path, params, r.text)


def test_activity_needs_a_key(seeded):
    for path in ("/generations", "/summary", "/export.csv"):
        assert httpx.get(f"{seeded.url}/api/v1/activity{path}").status_code == 401
        assert api(seeded, path, token="sk-mr-000000000000-" + "0" * 48).status_code == 401


def test_summary_figures_share_one_window(seeded):
    gw, recs = seeded, seeded.records
    since, until = gw.now - 86400, gw.now
    inside = [r for r in recs if since <= r["created_at"] < until]
    s = api(gw, "/summary", since=since, until=until).json()["data"]
    t = s["totals"]
    assert t["requests"] == len(inside)
    assert t["auto_requests"] == sum(r["router"] == "auto" for r in inside)
    assert t["errors"] == sum(r["status"] == "error" for r in inside)
    assert t["cancelled"] == sum(r["status"] == "cancelled" for r in inside)
    assert t["total_tokens"] == sum(r["prompt_tokens"] + r["completion_tokens"] for r in inside)
    assert round(t["usage"] * 10**12) == sum(r["cost_pico"] for r in inside)
    # the models: every model of the window once, their auto shares those of the auto requests
    per_model = {m["model"]: m for m in s["models"]}
    assert set(per_model) == {r["model"] for r in inside}
    for model, m in per_model.items():
        mine = [r for r in inside if r["model"] == model]
        assert m["requests"] == len(mine)
        assert m["auto_requests"] == sum(r["router"] == "auto" for r in mine)
        assert m["auto_share"] == pytest.approx(m["auto_requests"] / t["auto_requests"])
    # the chart: hour buckets for a day, every request of the window in one of them
    assert s["window"]["bucket_seconds"] == 3600
    assert sum(p["requests"] for p in s["series"]) == len(inside)
    assert {p["model"] for p in s["series"]} == set(per_model)
    # the choices of each filter do not narrow when a filter is set
    narrowed = api(gw, "/summary", since=since, until=until, model=MODELS[0]).json()["data"]
    assert narrowed["facets"]["models"] == s["facets"]["models"] == sorted(per_model)
    assert narrowed["totals"]["requests"] == sum(r["model"] == MODELS[0] for r in inside)
    assert {k["id"] for k in s["facets"]["keys"]} >= {gw.ka, gw.kb}
    assert "keys" not in api(gw, "/summary", gw.key_a).json()["data"]["facets"]  # keys are the admin's to list
    assert t["avg_latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in inside) / len(inside))
    # the admin's key filter narrows the figures, not the choices; a key's choices are its own
    one_key = api(gw, "/summary", since=since, until=until, key=gw.kb).json()["data"]
    assert one_key["totals"]["requests"] == sum(r["key_id"] == gw.kb for r in inside)
    assert one_key["facets"]["apps"] == s["facets"]["apps"]
    assert api(gw, "/summary", gw.key_b).json()["data"]["facets"]["apps"] == sorted(
        {r["app_title"] for r in recs if r["key_id"] == gw.kb and r["app_title"]})
    assert "facets" not in api(gw, "/summary", since=since, facets="false").json()["data"]
    assert api(gw, "/summary", facets="no").status_code == 400


def test_csv_export_has_the_filtered_rows_properly_quoted(seeded):
    gw, recs = seeded, seeded.records
    r = api(gw, "/export.csv", app=XSS_APP)
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"].startswith("attachment;")
    # RFC 4180: CRLF after the header and the record; the error's comma, quotes and line break inside quotes
    assert r.text.count("\r\n") == 2 and '"' + XSS_ERROR.replace('"', '""') + '"' in r.text
    (row,) = list(csv.DictReader(io.StringIO(r.text)))
    assert (row["id"], row["app_title"], row["error"], row["model"]) == ("gen-xss", XSS_APP, XSS_ERROR, XSS_MODEL)
    tiny = list(csv.DictReader(io.StringIO(api(gw, "/export.csv", app="Tiny App").text)))
    assert [(t["id"], t["cost_usd"], t["latency_ms"]) for t in tiny] == [("gen-tiny", "0.00000097", "0.4")]
    assert (tiny[0]["insured"], tiny[0]["cache_hit"]) == ("false", "false")  # columns for charges waived or cached
    # a cell a spreadsheet would run as a formula is written as text
    (formula,) = list(csv.DictReader(io.StringIO(api(gw, "/export.csv", model=MODELS[1], since=gw.now - 200).text)))
    assert formula["app_title"] == "'" + FORMULA_APP
    # all the rows the filters cover, in the order of the pages
    every = list(csv.DictReader(io.StringIO(api(gw, "/export.csv", status="ok").text)))
    assert [e["id"] for e in every] == newest_first([x for x in recs if x["status"] == "ok"]) == all_pages(gw, status="ok")
    mine = list(csv.DictReader(io.StringIO(api(gw, "/export.csv", gw.key_b).text)))
    assert {m["key_id"] for m in mine} == {gw.kb} and len(mine) == sum(x["key_id"] == gw.kb for x in recs)


# --- the page in a real browser ----------------------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def check_screenshot(path: Path, width: int, colors: list[str]) -> None:
    """The image is as wide as the viewport (nothing sticks out) and shows the chart's series colors."""
    from PIL import Image

    assert png_size(path)[0] == width
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        seen = {c for _, c in rgb.getcolors(maxcolors=1 << 24)}
    assert len(seen) > 50, "a blank screenshot"
    for c in colors:
        assert tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) in seen, f"series color {c} not drawn"


#: model ids are never broken over two lines, and those of the requests are shown whole
ONE_LINE_IDS = """[...document.querySelectorAll('.mid')].every((e) => e.getBoundingClientRect().height
    < 2 * parseFloat(getComputedStyle(e).fontSize)) && [...document.querySelectorAll('#recent .mid')].every(
    (e) => e.scrollWidth <= e.clientWidth + 1)"""
LOADED = "document.body?.dataset.loads && !document.body.dataset.busy && Number(document.body.dataset.loads)"


#: the colors of the three big series (a series of one small request may be a bar too thin to hold its color)
SERIES_COLORS = f"""[...document.querySelectorAll('#chart g.series')].filter((g) => {MODELS!r}.includes(g.dataset.model))
    .map((g) => g.getAttribute('fill'))"""


def rows(b: Browser) -> list[str]:
    return b.eval("[...document.querySelectorAll('#recent tbody tr[data-id]')].map((tr) => tr.dataset.id)")


def reload(b: Browser, action: str) -> None:
    """Run a page action, then wait for the load it starts to finish."""
    before = b.eval(LOADED) or 0
    b.eval(action)
    b.wait(f"({LOADED}) > {before}", action)


def choose(b: Browser, select: str, value: str) -> None:
    reload(b, f"(() => {{ const s = document.getElementById({select!r}); s.value = {value!r};"
              " s.dispatchEvent(new Event('change')); })()")


@needs_chromium
def test_activity_page_in_headless_chromium_shows_the_routed_request_and_why(gateway):
    assert chromium(), "CI must install chromium (see .ci/run)"
    key = gateway.create_key("browser")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    r = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "What is the derivative of x^3 sin(x)?"}],
        extra_headers={"X-Title": "Browser Test App", "X-OpenRouter-Metadata": "enabled"},
        extra_body={"plugins": [{"id": "auto-router", "allowed_models": ["openai/*", "mistralai/*"]}]})
    reason = r.model_extra["openrouter_metadata"]["reason"]
    with Browser() as b:
        b.open(f"{gateway.url}/activity#key={key}")
        b.wait(LOADED)
        row = f"document.querySelector('tr[data-id=\"{r.id}\"]')"
        assert b.eval(f"{row}.querySelector('.app').textContent") == "Browser Test App"
        assert b.eval(f"{row}.querySelector('.auto').textContent") == "auto"
        assert r.model in b.eval(f"{row}.querySelector('.model').textContent")
        assert b.eval(f"{row}.querySelector('.why').textContent").startswith(reason)
        assert key not in b.eval("document.documentElement.outerHTML + location.href")  # taken out of the address


@needs_chromium
def test_activity_page_filters_pages_exports_and_fits_a_phone(seeded, tmp_path):
    assert chromium(), "CI must install chromium (see .ci/run)"
    gw, recs = seeded, seeded.records
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with Browser() as b:
        b.viewport(1400, 900)
        b.downloads_to(tmp_path)
        b.open(f"{gw.url}/activity?window=604800#key={ADMIN}")
        b.wait(LOADED)
        everything = newest_first(recs)
        # header figures: the window's, from the server
        assert b.eval("document.getElementById('c-req').textContent") == str(len(recs))
        assert b.eval("document.getElementById('c-auto').textContent") == str(sum(r["router"] == "auto" for r in recs))
        # the chart: one series per model, drawn in the series' color
        models = {r["model"] for r in recs}
        series = b.eval("[...document.querySelectorAll('#chart g.series')].map((g) => g.dataset.model)")
        assert sorted(series) == sorted(models) and len(series) == len(set(series))
        # one bar per 3-hour bucket (7 days in at most 100 bars) that holds requests of the model
        bars = dict(b.eval("[...document.querySelectorAll('#chart g.series')].map((g) => "
                           "[g.dataset.model, g.querySelectorAll('rect').length])"))
        assert bars == {m: len({r["created_at"] // 10800 for r in recs if r["model"] == m}) for m in models}
        # the legend totals each model's spend, or its requests once the chart shows those
        b.eval("document.querySelector('.seg button[data-metric=\"requests\"]').click()")
        assert b.eval("document.getElementById('chart-title').textContent") == "Requests over time, by model"
        legend = b.eval("[...document.querySelectorAll('#legend li')].map((li) => [li.children[1].textContent, "
                        "li.children[2].textContent])")
        assert dict(legend) == {m: str(sum(r["model"] == m for r in recs)) for m in models}
        assert "metric=requests" in b.eval("location.search")
        b.eval("document.querySelector('.seg button[data-metric=\"usage\"]').click()")
        # the share of auto traffic per model
        auto = {m: sum(r["model"] == m and r["router"] == "auto" for r in recs) for m in models}
        shares = dict(b.eval("[...document.querySelectorAll('#models tbody tr')].map((tr) => "
                             "[tr.dataset.model, tr.querySelector('.auto-share').textContent])"))
        assert shares == {m: f"{round(100 * n / sum(auto.values()))}% ({n})" for m, n in auto.items()}
        # the first page, newest first; plain dollars, "< 1 ms", the provider
        assert rows(b) == everything[:50]
        assert b.eval("document.getElementById('page-info').textContent") == f"1–50 of {len(recs)}"
        tiny = "document.querySelector('tr[data-id=\"gen-tiny\"]')"
        assert b.eval(f"{tiny}.querySelector('.cost').textContent") == "$0.00000097"
        assert b.eval(f"{tiny}.querySelector('.latency').textContent") == "< 1 ms"
        assert b.eval(f"{tiny}.querySelector('.provider').textContent") == "openai"
        # answers not charged say why: from the cache, or insured (nothing delivered)
        tags = b.eval("Object.fromEntries([...document.querySelectorAll('#recent tr')].map((tr) => "
                      "[tr.dataset.id, [...tr.querySelectorAll('.tag')].map((t) => t.textContent)]))")
        assert tags["gen-cached"] == ["cached"] and tags["gen-insured"] == ["insured"]
        assert sum(bool(v) for v in tags.values()) == 2
        figures = b.eval("[...document.querySelectorAll('#recent .num, #models .num, #apps .num, .card b')]"
                         ".map((e) => e.textContent)")
        assert len(figures) > 150 and not [f for f in figures if re.search(r"\d[eE][-+]?\d", f)]
        assert all(re.fullmatch(r"\$\d{1,3}(,\d{3})*\.\d{2,12}", c) for c in b.eval(
            "[...document.querySelectorAll('#recent .cost')].map((e) => e.textContent)"))
        # caller-controlled strings are text, not markup
        xss = "document.querySelector('tr[data-id=\"gen-xss\"]')"
        assert b.eval(f"{xss}.querySelector('.app').textContent") == XSS_APP
        assert b.eval(f"{xss}.querySelector('.errmsg').textContent") == XSS_ERROR
        assert XSS_MODEL in b.eval(f"{xss}.querySelector('.model').textContent")
        assert b.eval("document.querySelector('#chart g.series[data-model^=\"evil/\"]') !== null")
        assert b.eval("typeof window.__xss") == "undefined"
        assert b.eval("document.querySelectorAll('img, #recent b, main svg svg').length") == 0
        assert b.eval(ONE_LINE_IDS)
        shot = SCREENSHOT_DIR / "activity-desktop.png"
        width, _ = b.screenshot(shot)
        assert width == 1400
        check_screenshot(shot, 1400, b.eval(SERIES_COLORS))

        # pagination moves
        reload(b, "document.getElementById('next').click()")
        assert rows(b) == everything[50:100]
        assert b.eval("document.getElementById('page-info').textContent") == f"51–100 of {len(recs)}"
        reload(b, "document.getElementById('next').click()")
        assert rows(b) == everything[100:] and b.eval("document.getElementById('next').disabled")
        reload(b, "document.getElementById('prev').click()")
        assert rows(b) == everything[50:100]

        # a filter changes the rows (back to the first page) and every header figure, and lands in the address
        choose(b, "f-model", MODELS[2])
        mistral = newest_first([r for r in recs if r["model"] == MODELS[2]])
        assert rows(b) == mistral[:50] and b.eval("document.getElementById('c-req').textContent") == str(len(mistral))
        assert b.eval("[...document.querySelectorAll('#chart g.series')].map((g) => g.dataset.model)") == [MODELS[2]]
        assert "model=mistralai" in b.eval("location.search")
        choose(b, "f-status", "error")
        failed = newest_first([r for r in recs if r["model"] == MODELS[2] and r["status"] == "error"])
        assert rows(b) == failed and failed
        messages = b.eval("[...document.querySelectorAll('#recent tbody tr')].map((tr) => "
                          "tr.querySelector('.errmsg')?.textContent)")
        assert messages == [next(r["error"] for r in recs if r["id"] == i) for i in failed]
        choose(b, "f-status", "")
        choose(b, "f-key", gw.kb)
        assert rows(b) == newest_first([r for r in recs if r["model"] == MODELS[2] and r["key_id"] == gw.kb])[:50]

        # the CSV export has exactly the rows these filters cover
        b.eval("document.getElementById('export').click()")
        b.wait("document.body.dataset.exported === '1'", "the export")
        deadline = time.monotonic() + 30
        while not (files := [f for f in tmp_path.glob("*.csv")]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(files) == 1, list(tmp_path.iterdir())
        exported = list(csv.DictReader(io.StringIO(files[0].read_text("utf-8"))))
        assert [e["id"] for e in exported] == newest_first(
            [r for r in recs if r["model"] == MODELS[2] and r["key_id"] == gw.kb])
        reload(b, "document.getElementById('clear').click()")
        assert rows(b) == everything[:50]

        # a window narrows every figure together
        choose(b, "f-window", "86400")
        day = [r for r in recs if r["created_at"] >= gw.now - 86400]
        assert b.eval("document.getElementById('c-req').textContent") == str(len(day))
        assert b.eval("document.getElementById('page-info').textContent") == f"1–{min(50, len(day))} of {len(day)}"

        # UTC dates, from the address
        yday = day_of(gw.now - 86400)
        b.open(f"{gw.url}/activity?window=custom&from={yday}&to={yday}")
        b.wait(LOADED)
        that_day = newest_first([r for r in recs if day_of(r["created_at"]) == yday])
        assert b.eval("document.getElementById('c-req').textContent") == str(len(that_day))
        assert rows(b) == that_day[:50] and b.eval("!document.querySelector('.toolbar .custom').hidden")

        # a phone: nothing wider than the screen, the same content
        b.viewport(390, 844, mobile=True)
        b.open(f"{gw.url}/activity#key={ADMIN}")
        b.wait(LOADED)
        assert rows(b) == everything[:50]
        overflow = b.eval("""[document.documentElement.scrollWidth, document.body.scrollWidth,
            ...[...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > 390.5
               || e.scrollWidth > e.clientWidth + 1 && e.matches('.scroll')).map((e) => e.tagName + '.' + e.className)]""")
        assert overflow[:2] == [390, 390] and overflow[2:] == [], overflow
        assert b.eval(ONE_LINE_IDS)
        shot = SCREENSHOT_DIR / "activity-phone.png"
        width, height = b.screenshot(shot)
        assert width == 390 and height > 844
        check_screenshot(shot, 390, b.eval(SERIES_COLORS))


@pytest.mark.parametrize("token", [ADMIN + "x", ADMIN[:-1], ADMIN.upper(), "é" + ADMIN[1:]])
def test_only_the_admin_key_itself_sees_everything(seeded, token):
    """The activity API checks the admin key as the admin API does (digests compared in constant time): anything
    else is an API key, and not a valid one."""
    r = httpx.get(f"{seeded.url}/api/v1/activity/generations", headers={"Authorization": f"Bearer {token}".encode()},
                  timeout=30)
    assert r.status_code == 401, r.text
    assert api(seeded, "/generations").status_code == 200
