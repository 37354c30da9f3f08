"""Remote images for providers that take only inline ones.

Gemini's ``fileData.fileUri`` names files of its own Files API or Google Cloud Storage, not web pages, so an
OpenAI ``image_url`` with an ``https`` URL is fetched here and sent inline (``inlineData``), as OpenRouter does.
The fetch is bounded: total bytes per request, a time limit per image, at most a few redirects, image types only,
and never an address that is not public (loopback, private, link-local…) unless ``image_fetch.allow_private`` is
set (tests, or a gateway whose images live on an internal host). Every failure is a 400 naming the image.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from ..config import ImageFetch
from ..errors import GatewayError
from ..providers.common import guess_mime
from ..providers.gemini import GEMINI_FILE_URLS

MAX_REDIRECTS = 3


def remote_image_urls(body: dict[str, Any]) -> list[str]:
    """The ``http(s)`` image URLs of a request that Gemini will not fetch itself."""
    urls: list[str] = []
    for m in body.get("messages") or ():
        content = m.get("content")
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if isinstance(url, str) and url.startswith(("http://", "https://")) and not url.startswith(GEMINI_FILE_URLS):
                urls.append(url)
    return urls


def _refused(url: str, why: str) -> GatewayError:
    return GatewayError(400, f"image_url {url[:200]!r} could not be fetched for a provider that takes images inline: "
                             f"{why}. Send the image as a base64 data URL instead.",
                        metadata={"param": "image_url"}, retryable=False)


class _CheckedResolver(AbstractResolver):
    """Hands the connector only the addresses :meth:`ImageFetcher._check` resolved and approved, so a second DNS
    answer cannot point the connection somewhere else."""

    def __init__(self) -> None:
        self.approved: dict[tuple[str, int], list[dict[str, Any]]] = {}

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        hosts = self.approved.get((host, port))
        if not hosts:
            raise OSError(f"{host}:{port} was not checked")
        return hosts

    async def close(self) -> None:
        pass


class ImageFetcher:
    def __init__(self, settings: ImageFetch):
        self.settings = settings
        self._resolver = _CheckedResolver()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def inline(self, body: dict[str, Any], cache: dict[str, str]) -> dict[str, Any]:
        """``body`` with every remote image replaced by a data URL (fetched once per request: ``cache``)."""
        urls = [u for u in dict.fromkeys(remote_image_urls(body)) if u not in cache]
        budget = self.settings.max_bytes - sum(len(v) * 3 // 4 for v in cache.values())
        for url in urls:
            mime, data = await self._fetch(url, budget)
            budget -= len(data)
            cache[url] = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        messages = []
        for m in body["messages"]:
            content = m.get("content")
            if isinstance(content, list) and any(_url_of(p) in cache for p in content):
                m = {**m, "content": [{**p, "image_url": {**_as_dict(p["image_url"]), "url": cache[_url_of(p)]}}
                                      if _url_of(p) in cache else p for p in content]}
            messages.append(m)
        return {**body, "messages": messages}

    async def _fetch(self, url: str, budget: int) -> tuple[str, bytes]:
        if budget <= 0:
            raise _refused(url, f"the request's images exceed {self.settings.max_bytes} bytes")
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await self._get(url, budget)
        except TimeoutError:
            raise _refused(url, f"no answer within {self.settings.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise _refused(url, f"{type(exc).__name__}: {exc}") from None

    async def _get(self, url: str, budget: int) -> tuple[str, bytes]:
        session = self._session_()
        for _ in range(MAX_REDIRECTS + 1):
            await self._check(url)
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                    url = urljoin(url, resp.headers["Location"])
                    continue
                if resp.status != 200:
                    raise _refused(url, f"HTTP {resp.status}")
                mime = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if mime in ("", "application/octet-stream", "binary/octet-stream"):
                    mime = guess_mime(url)
                if not (mime.startswith("image/") or mime == "application/pdf"):
                    raise _refused(url, f"it is {mime}, not an image")
                if resp.content_length is not None and resp.content_length > budget:
                    raise _refused(url, f"it is larger than the {self.settings.max_bytes} bytes images may have")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > budget:
                        raise _refused(url, f"it is larger than the {self.settings.max_bytes} bytes images may have")
                return mime, bytes(data)
        raise _refused(url, f"more than {MAX_REDIRECTS} redirects")

    async def _check(self, url: str) -> None:
        """Resolve the URL's host and refuse it unless every address is public (or private ones are allowed)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refused(url, "only http and https URLs can be fetched")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _refused(url, f"its host does not resolve ({exc})") from None
        hosts = []
        for family, _, proto, _, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0])
            if not self.settings.allow_private and not _public(ip):
                raise _refused(url, f"its host resolves to {ip}, which is not a public address")
            hosts.append({"hostname": parts.hostname, "host": sockaddr[0], "port": port, "family": family,
                          "proto": proto, "flags": socket.AI_NUMERICHOST})
        self._resolver.approved[(parts.hostname, port)] = hosts

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._resolver, limit=64, use_dns_cache=False),
                headers={"User-Agent": "metarouter (image fetch for inline-only providers)"})
        return self._session


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _as_dict(image_url: Any) -> dict[str, Any]:
    return image_url if isinstance(image_url, dict) else {"url": image_url}


def _url_of(part: Any) -> str | None:
    if not isinstance(part, dict) or part.get("type") != "image_url":
        return None
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    return url if isinstance(url, str) else None
