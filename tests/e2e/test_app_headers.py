"""The calling app's ``X-Title`` / ``HTTP-Referer``: clients send UTF-8, and that text is what is stored and shown."""

from __future__ import annotations

import httpx
import pytest

MODEL = "openai/gpt-4o-mini-2024-07-18"


def call(gateway, headers: dict[str, bytes]) -> dict:
    r = httpx.post(gateway.url + "/api/v1/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                   headers={"Authorization": f"Bearer {gateway.api_key}", **headers})
    assert r.status_code == 200, r.text
    g = httpx.get(gateway.url + "/api/v1/generation", params={"id": r.json()["id"]},
                  headers={"Authorization": f"Bearer {gateway.api_key}"})
    return g.json()["data"]


@pytest.mark.parametrize("title_header", ["X-Title", "X-OpenRouter-Title"])
def test_utf8_app_headers_are_stored_as_sent(gateway, title_header):
    g = call(gateway, {title_header: "Résumé ✨".encode(), "HTTP-Referer": "https://bücher.example/ç".encode()})
    assert g["app"] == {"title": "Résumé ✨", "referer": "https://bücher.example/ç"}
    assert g["http_referer"] == "https://bücher.example/ç"
    rows = httpx.get(gateway.url + "/api/v1/activity/generations", params={"limit": 500},
                     headers={"Authorization": f"Bearer {gateway.api_key}"}).json()["data"]
    assert next(x for x in rows if x["id"] == g["id"])["app"]["title"] == "Résumé ✨"


def test_bytes_that_are_not_utf8_are_read_as_latin1(gateway):
    assert call(gateway, {"X-Title": "Café".encode("latin-1")})["app"]["title"] == "Café"
