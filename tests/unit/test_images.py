"""Remote images fetched for inline-only providers (Gemini): bounded, image types only, public addresses only."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from metarouter.config import ImageFetch
from metarouter.errors import GatewayError
from metarouter.gateway.images import ImageFetcher, _public, remote_image_urls
from metarouter.testing.fake_providers import PIXEL_PNG

PIXEL = base64.b64encode(PIXEL_PNG).decode()


def body_with(*urls: str) -> dict:
    return {"model": "google/gemini-flash-1.5", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "what"},
                                     *({"type": "image_url", "image_url": {"url": u, "detail": "low"}} for u in urls)]}]}


async def inline(fake, *urls: str, **settings) -> dict:
    fetcher = ImageFetcher(ImageFetch(**{"allow_private": True, **settings}))
    try:
        return await fetcher.inline(body_with(*urls), {})
    finally:
        await fetcher.close()


def test_which_urls_are_fetched() -> None:
    assert remote_image_urls(body_with("https://a.example/x.png", "data:image/png;base64,AAAA", "gs://b/x.png",
                                       "https://generativelanguage.googleapis.com/v1beta/files/f1",
                                       "http://b.example/y.jpg")) == ["https://a.example/x.png", "http://b.example/y.jpg"]


async def test_fetched_and_inlined_following_redirects(fake) -> None:
    body = body_with(f"{fake.url}/files/a.jpg", f"{fake.url}/files/moved.png")
    out = await inline(fake, f"{fake.url}/files/a.jpg", f"{fake.url}/files/moved.png")
    parts = out["messages"][1]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PIXEL}", "detail": "low"}}
    assert parts[2]["image_url"]["url"] == f"data:image/png;base64,{PIXEL}"
    assert out["messages"][0] == body["messages"][0] and body["messages"][1]["content"][1]["image_url"]["url"] == (
        f"{fake.url}/files/a.jpg")  # the caller's body is untouched


async def test_cache_fetches_each_url_once(fake) -> None:
    fetcher = ImageFetcher(ImageFetch(allow_private=True))
    cache: dict[str, str] = {}
    try:
        await fetcher.inline(body_with(f"{fake.url}/files/once.png"), cache)
        await fetcher.inline(body_with(f"{fake.url}/files/once.png"), cache)
    finally:
        await fetcher.close()
    assert len([r for r in fake.requests_for("files") if r.path == "/once.png"]) == 1


@pytest.mark.parametrize("name,settings,why", [
    ("page.html", {}, "text/html, not an image"),
    ("missing.gif", {}, "HTTP 404"),
    ("big.png?bytes=5000", {"max_bytes": 4096}, "larger than the 4096 bytes"),
    ("pixel.png", {"allow_private": False}, "127.0.0.1, which is not a public address"),
])
async def test_refusals_are_clear_400s(fake, name: str, settings: dict, why: str) -> None:
    with pytest.raises(GatewayError) as ei:
        await inline(fake, f"{fake.url}/files/{name}", **settings)
    assert ei.value.status == 400 and why in ei.value.message and "data URL" in ei.value.message


async def test_a_host_name_resolving_to_loopback_is_refused(fake) -> None:
    with pytest.raises(GatewayError) as ei:
        await inline(fake, f"http://localhost:{fake.port}/files/moved.png", allow_private=False)
    assert "not a public address" in ei.value.message


def test_public_addresses() -> None:
    for ip in ("8.8.8.8", "2606:4700:4700::1111"):
        assert _public(ipaddress.ip_address(ip))
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1",
               "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "224.0.0.1"):
        assert not _public(ipaddress.ip_address(ip)), ip
