"""Activity: the JSON API and the /activity page, the page checked in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import openai
import pytest

SCREENSHOT_DIR = Path(os.environ.get("METAROUTER_ARTIFACTS", tempfile.gettempdir())) / "metarouter-artifacts"


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


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _headless(url: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=8000", *extra, url],
            capture_output=True, text=True, timeout=90,
        )


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"), reason="chromium is not installed")
def test_activity_page_in_headless_chromium_shows_the_routed_request_and_why(gateway):
    assert _chromium(), "CI must install chromium (see .ci/run)"
    key = gateway.create_key("browser")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    r = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "What is the derivative of x^3 sin(x)?"}],
        extra_headers={"X-Title": "Browser Test App", "X-OpenRouter-Metadata": "enabled"},
        extra_body={"plugins": [{"id": "auto-router", "allowed_models": ["openai/*", "mistralai/*"]}]})
    reason = r.model_extra["openrouter_metadata"]["reason"]
    url = f"{gateway.url}/activity#key={key}"
    dom = _headless(url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-loaded="1"' in html, html[-3000:]
    assert f'data-id="{r.id}"' in html
    assert "Browser Test App" in html and r.model in html and ">auto<" in html
    assert reason.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in html
    assert key not in html  # the key is taken out of the address and never rendered
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "activity.png"
    res = _headless(url, f"--screenshot={shot}", "--window-size=1400,900", "--hide-scrollbars")
    assert res.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000
