"""Budgets that reset and keys that expire, on the real server: a key with a daily limit is refused at its limit and
served again once the day has rolled over (the stored period start moved back a day, as midnight would); an expired
key is refused with 401 in the shape of the API the path names; the admin API's and the CLI's key fields, and
``GET /key`` in OpenRouter's names."""

from __future__ import annotations

import datetime as dt
import sqlite3

import anthropic
import httpx
import openai
import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config
from .test_admin import ADMIN_KEY, MODEL, admin, assert_error

# a few requests' worth: each holds its prompt bound and 8 output tokens at gpt-4o-mini's prices
LIMIT_USD = 0.00005


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    env = {**FAKE_KEYS_ENV, "METAROUTER_ADMIN_KEY": ADMIN_KEY}
    with GatewayProcess(gateway_config(fake), tmp_path_factory.mktemp("key-resets"), env=env) as g:
        yield g


def db(gw) -> sqlite3.Connection:
    return sqlite3.connect(gw.data_dir / "metarouter.db", isolation_level=None)


def client(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/api/v1", api_key=key, max_retries=0)


def ask(c: openai.OpenAI, text: str = "hello") -> str:
    return c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                     max_tokens=8).choices[0].message.content


def key_info(gw, key: str) -> dict:
    r = httpx.get(f"{gw.url}/api/v1/key", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def next_midnight() -> str:
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_daily_limit_refuses_at_the_limit_and_serves_again_the_next_day(gw):
    r = admin(gw, "POST", "/keys", json={"name": "daily", "limit": LIMIT_USD, "limit_reset": "daily"})
    assert r.status_code == 201, r.text
    created = r.json()
    key, public_id = created["key"], created["data"]["id"]
    assert (created["data"]["limit_reset"], created["data"]["expires_at"]) == ("daily", None)
    c = client(gw, key)
    served = 0
    with pytest.raises(openai.APIStatusError) as refused:
        for _ in range(50):
            assert ask(c) == "You said: hello"
            served += 1
    assert refused.value.status_code == 402 and served >= 1
    midnights = {next_midnight()}
    info = key_info(gw, key)
    midnights.add(next_midnight())  # (the one the server saw, should the test run across midnight)
    assert info["limit"] == pytest.approx(LIMIT_USD) and info["limit_reset"] == "daily"
    assert info["expires_at"] is None
    day_spend = info["usage"]
    assert 0 < day_spend <= LIMIT_USD and info["usage_daily"] == pytest.approx(day_spend)
    assert info["limit_remaining"] == pytest.approx(LIMIT_USD - day_spend)
    budget = info["budgets"][0]
    assert budget["reset_interval"] == "daily" and budget["resets_at"] in midnights
    assert budget["spend_usd"] == pytest.approx(day_spend)

    # midnight: the stored period is yesterday's (what the day rolling over looks like to the store)
    conn = db(gw)
    try:
        assert conn.execute("UPDATE keys SET period_start = period_start - 86400 WHERE public_id = ?",
                            (public_id,)).rowcount == 1
    finally:
        conn.close()
    assert ask(c, "a new day") == "You said: a new day"
    info = key_info(gw, key)
    today = info["usage"] - day_spend  # lifetime usage stays; the limit applies to today's spend
    assert today > 0 and info["limit_remaining"] == pytest.approx(LIMIT_USD - today)
    conn = db(gw)
    try:
        usage, period_usage = conn.execute("SELECT usage_pico, period_usage_pico FROM keys WHERE public_id = ?",
                                           (public_id,)).fetchone()
    finally:
        conn.close()
    assert period_usage < usage and period_usage == pytest.approx(today * 1e12, abs=1)


def test_an_expired_key_is_refused_with_401_in_each_apis_shape(gw):
    created = admin(gw, "POST", "/keys", json={"name": "soon", "expires_at": "2099-01-01T00:00:00Z"}).json()
    key, public_id = created["key"], created["data"]["id"]
    assert created["data"]["expires_at"] == "2099-01-01T00:00:00Z"
    assert ask(client(gw, key)) == "You said: hello"
    assert key_info(gw, key)["expires_at"] == "2099-01-01T00:00:00Z"

    r = admin(gw, "PATCH", f"/keys/{public_id}", json={"expires_at": "2020-06-30T12:00:00+00:00"})
    assert r.status_code == 200 and r.json()["data"]["expires_at"] == "2020-06-30T12:00:00Z"
    with pytest.raises(openai.AuthenticationError) as chat:  # at once on this server: its auth cache was dropped
        ask(client(gw, key))
    assert chat.value.status_code == 401
    err = chat.value.response.json()["error"]
    assert err["code"] == 401 and "expired at 2020-06-30T12:00:00Z" in err["message"]
    with pytest.raises(openai.AuthenticationError) as responses:
        client(gw, key).responses.create(model=MODEL, input="hello")
    err = responses.value.response.json()["error"]
    assert err["type"] == "authentication_error" and "expired" in err["message"]
    with pytest.raises(anthropic.AuthenticationError) as messages:
        anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hello"}])
    body = messages.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert "expired" in body["error"]["message"]
    r = httpx.get(f"{gw.url}/api/v1/key", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert_error(r, 401, "expired")
    listed = {k["id"]: k for k in admin(gw, "GET", "/keys").json()["data"]}
    assert listed[public_id]["expires_at"] == "2020-06-30T12:00:00Z"

    assert admin(gw, "PATCH", f"/keys/{public_id}", json={"expires_at": None}).json()["data"]["expires_at"] is None
    assert ask(client(gw, key)) == "You said: hello"  # never expires again


def test_limit_reset_and_expires_at_are_set_and_cleared(gw):
    created = admin(gw, "POST", "/keys", json={"name": "w", "limit": 1, "limit_reset": "weekly",
                                                      "expires_at": "2099-12-31T23:59:59Z"}).json()["data"]
    assert (created["limit_reset"], created["expires_at"], created["limit_remaining"]) == (
        "weekly", "2099-12-31T23:59:59Z", 1.0)
    d = admin(gw, "PATCH", f"/keys/{created['id']}", json={"limit_reset": "monthly"}).json()["data"]
    assert (d["limit_reset"], d["expires_at"]) == ("monthly", "2099-12-31T23:59:59Z")
    d = admin(gw, "PATCH", f"/keys/{created['id']}", json={"limit_reset": None, "expires_at": None}).json()["data"]
    assert (d["limit_reset"], d["expires_at"], d["limit"]) == (None, None, 1.0)


@pytest.mark.parametrize("field,value,fragment", [
    ("limit_reset", "hourly", "limit_reset"),
    ("limit_reset", "Daily", "limit_reset"),
    ("limit_reset", 1, "limit_reset"),
    ("limit_reset", ["daily"], "limit_reset"),
    ("expires_at", "2027-01-31T23:59:59+01:00", "UTC"),
    ("expires_at", "2027-01-31T23:59:59-05:00", "UTC"),
    ("expires_at", "2027-01-31T23:59:59", "UTC"),
    ("expires_at", "2027-01-31", "UTC"),
    ("expires_at", "2027-02-30T00:00:00Z", "expires_at"),
    ("expires_at", 1790000000, "expires_at"),
    ("expires_at", "next tuesday", "expires_at"),
])
def test_bad_limit_reset_or_expires_at_is_a_400_that_says_why(gw, field, value, fragment):
    before = len(admin(gw, "GET", "/keys").json()["data"])
    assert_error(admin(gw, "POST", "/keys", json={"name": "x", field: value}), 400, fragment)
    assert len(admin(gw, "GET", "/keys").json()["data"]) == before
    target = admin(gw, "GET", "/keys").json()["data"][0]
    assert_error(admin(gw, "PATCH", f"/keys/{target['id']}", json={field: value}), 400, fragment)
    after = admin(gw, "GET", f"/keys/{target['id']}").json()["data"]
    assert (after["limit_reset"], after["expires_at"]) == (target["limit_reset"], target["expires_at"])
