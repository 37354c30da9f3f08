"""The admin API on the real server: auth, key management, credits, and no secret anywhere it should not be."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import GatewayProcess

from ..conftest import gateway_config

ADMIN_KEY = "mr-admin-" + "5f" * 20
MODEL = "openai/gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def admin_gw(fake, tmp_path_factory):
    env = {**FAKE_KEYS_ENV, "METAROUTER_ADMIN_KEY": ADMIN_KEY}
    with GatewayProcess(gateway_config(fake), tmp_path_factory.mktemp("admin"), env=env) as g:
        yield g


def admin(gw, method: str, path: str, json=None, key: str | None = ADMIN_KEY, **kw) -> httpx.Response:
    headers = {}
    if key == "Basic":
        headers = {"Authorization": "Basic YWRtaW46YWRtaW4="}
    elif key is not None:
        headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, f"{gw.url}/api/v1{path}", json=json, headers=headers, timeout=30, **kw)


def chat(gw, key: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})


def assert_error(r: httpx.Response, status: int, fragment: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == status
    assert fragment.lower() in body["error"]["message"].lower(), body


def test_admin_api_is_off_without_an_admin_key(gateway):
    for method, path in (("GET", "/keys"), ("POST", "/keys"), ("POST", "/credits"), ("PATCH", "/keys/0123456789ab")):
        r = admin(gateway, method, path, json={"name": "x"})
        assert_error(r, 403, "METAROUTER_ADMIN_KEY")


@pytest.mark.parametrize("key,status", [
    (None, 401),
    ("Basic", 401),
    ("wrong", 403),
    (ADMIN_KEY + "x", 403),
    (ADMIN_KEY[:-1], 403),
    (hashlib.sha256(ADMIN_KEY.encode()).hexdigest(), 403),
])
def test_admin_auth(admin_gw, key, status):
    for method, path in (("GET", "/keys"), ("POST", "/keys"), ("DELETE", "/keys/0123456789ab"), ("POST", "/credits")):
        r = admin(admin_gw, method, path, json={"name": "x", "amount": 1}, key=key)
        assert_error(r, status)
        assert ADMIN_KEY not in r.text


def test_an_api_key_is_not_an_admin_key(admin_gw):
    plain = admin(admin_gw, "POST", "/keys", json={"name": "user"}).json()["key"]
    assert_error(admin(admin_gw, "GET", "/keys", key=plain), 403)


def test_key_lifecycle(admin_gw):
    r = admin(admin_gw, "POST", "/keys", json={"name": "team-a", "limit": 2.5, "rpm": 100, "tpm": 100000})
    assert r.status_code == 201, r.text
    created = r.json()
    plain, data = created["key"], created["data"]
    assert plain.startswith("sk-mr-") and plain.split("-")[2] == data["id"]
    assert (data["name"], data["limit"], data["rpm"], data["tpm"], data["disabled"], data["usage"]) == (
        "team-a", 2.5, 100, 100000, False, 0.0)
    assert chat(admin_gw, plain).status_code == 200

    listing = admin(admin_gw, "GET", "/keys")
    assert listing.status_code == 200
    ids = [k["id"] for k in listing.json()["data"]]
    assert data["id"] in ids
    secret_hash = hashlib.sha256(plain.encode()).hexdigest()
    assert plain not in listing.text and plain.split("-")[3] not in listing.text and secret_hash not in listing.text
    one = admin(admin_gw, "GET", f"/keys/{data['id']}").json()["data"]
    assert one["usage"] > 0 and one["limit_remaining"] == pytest.approx(2.5 - one["usage"])
    assert "key" not in one and "key_hash" not in one and "hash" not in one

    # disable takes effect at once on this server (the auth cache is dropped)
    r = admin(admin_gw, "PATCH", f"/keys/{data['id']}", json={"disabled": True})
    assert r.status_code == 200 and r.json()["data"]["disabled"] is True
    assert_error(chat(admin_gw, plain), 403, "disabled")
    r = admin(admin_gw, "PATCH", f"/keys/{data['id']}", json={"disabled": False, "limit": None, "rpm": 2,
                                                              "name": "team-a2"})
    d = r.json()["data"]
    assert (d["disabled"], d["limit"], d["rpm"], d["tpm"], d["name"]) == (False, None, 2, 100000, "team-a2")
    assert chat(admin_gw, plain).status_code == 200
    assert_error(chat(admin_gw, plain), 429)  # the new rpm applies (the first request counts too)

    r = admin(admin_gw, "DELETE", f"/keys/{data['id']}")
    assert r.status_code == 200 and r.json()["data"]["disabled"] is True
    assert_error(chat(admin_gw, plain), 403)


def test_a_limit_set_by_admin_is_enforced(admin_gw):
    created = admin(admin_gw, "POST", "/keys", json={"label": "tiny", "limit": 0.0000001}).json()
    r = chat(admin_gw, created["key"])
    assert_error(r, 402)


@pytest.mark.parametrize("body,fragment", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "x", "limit": -1}, "limit"),
    ({"name": "x", "limit": "lots"}, "limit"),
    ({"name": "x", "limit": True}, "limit"),
    ({"name": "x", "limit": "NaN"}, "limit"),
    ({"name": "x", "rpm": 0}, "rpm"),
    ({"name": "x", "rpm": 1.5}, "rpm"),
    ({"name": "x", "tpm": "10"}, "tpm"),
    ({"name": "x", "key_hash": "00"}, "unknown"),
    ([1, 2], "object"),
])
def test_create_key_validation(admin_gw, body, fragment):
    before = len(admin(admin_gw, "GET", "/keys").json()["data"])
    assert_error(admin(admin_gw, "POST", "/keys", json=body), 400, fragment)
    assert len(admin(admin_gw, "GET", "/keys").json()["data"]) == before


def test_bad_json_and_unknown_keys(admin_gw):
    r = admin(admin_gw, "POST", "/keys", content=b"{nope", json=None)
    assert_error(r, 400, "json")
    deep = b'{"name": "deep", "label": ' + b"[" * 100 + b"]" * 100 + b"}"  # the app's one body reader: depth too
    assert_error(admin(admin_gw, "POST", "/keys", content=deep, json=None), 400, "nested deeper")
    assert_error(admin(admin_gw, "POST", "/keys", content=b"[1]", json=None), 400, "JSON object")
    assert_error(admin(admin_gw, "POST", "/credits", content=b"{" + b" " * 70_000 + b"}", json=None), 413, "too large")
    for public_id in ("0123456789ab", "' OR '1'='1", "abc", "0123456789ab; DROP TABLE keys"):
        for method in ("GET", "PATCH", "DELETE"):
            assert_error(admin(admin_gw, method, f"/keys/{public_id}", json={"disabled": True}), 404)
    created = admin(admin_gw, "POST", "/keys", json={"name": "v"}).json()["data"]
    assert_error(admin(admin_gw, "PATCH", f"/keys/{created['id']}", json={"disabled": "yes"}), 400, "disabled")
    assert_error(admin(admin_gw, "PATCH", f"/keys/{created['id']}", json={"usage": 0}), 400, "unknown")


def test_credits_top_up(admin_gw):
    user = admin(admin_gw, "POST", "/keys", json={"name": "credit-check"}).json()["key"]
    before = httpx.get(f"{admin_gw.url}/api/v1/credits", headers={"Authorization": f"Bearer {user}"}).json()["data"]
    r = admin(admin_gw, "POST", "/credits", json={"amount": 12.5})
    assert r.status_code == 200, r.text
    total = r.json()["data"]["total_credits"]
    assert total == pytest.approx((0 if before["unlimited"] else before["total_credits"]) + 12.5)
    assert r.json()["data"]["unlimited"] is False
    after = httpx.get(f"{admin_gw.url}/api/v1/credits", headers={"Authorization": f"Bearer {user}"}).json()["data"]
    assert after["total_credits"] == pytest.approx(total)
    for bad in ({}, {"amount": 0}, {"amount": -5}, {"amount": "x"}, {"amount": 1, "extra": 1}):
        assert_error(admin(admin_gw, "POST", "/credits", json=bad), 400)
    # the same path still answers GET for API keys
    assert httpx.get(f"{admin_gw.url}/api/v1/credits", headers={"Authorization": f"Bearer {user}"}).status_code == 200


def test_no_secret_in_the_server_log(admin_gw):
    plain = admin(admin_gw, "POST", "/keys", json={"name": "logged?"}).json()["key"]
    chat(admin_gw, plain)
    admin(admin_gw, "GET", "/keys", key="sk-mr-0123456789ab-" + "0" * 48)
    log = admin_gw.log_path.read_text(errors="replace")
    assert ADMIN_KEY not in log and plain not in log and plain.split("-")[3] not in log
