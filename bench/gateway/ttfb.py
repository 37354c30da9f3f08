# ruff: noqa: RUF046
"""Time to first byte for (streaming) chat requests, which wrk cannot measure.

A raw asyncio protocol on uvloop with keep-alive connections: for each request it timestamps the write, the
first byte of the response *body* (after the headers) and the end of the response, in ``data_received`` itself.
``--concurrency`` closed-loop connections, bounded by ``--duration`` seconds (and ``--max`` requests).
Prints one JSON object: TTFB and total latency percentiles in milliseconds, and error counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.lost = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def start(self, request: bytes) -> asyncio.Future:
        self.buf = bytearray()
        self.hdr_end = -1
        self.status = 0
        self.chunked = False
        self.length: int | None = None
        self.t_first: float | None = None
        self.waiter = asyncio.get_running_loop().create_future()
        self.t_sent = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        if self.hdr_end < 0:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            self.hdr_end = i + 4
            head = bytes(self.buf[:i]).decode("latin-1").lower()
            self.status = int(head.split(" ", 2)[1])
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name == "transfer-encoding" and "chunked" in value:
                    self.chunked = True
                elif name == "content-length":
                    self.length = int(value)
        if self.t_first is None and len(self.buf) > self.hdr_end:
            self.t_first = now
        body = len(self.buf) - self.hdr_end
        done = (self.chunked and body >= 5 and self.buf.endswith(b"0\r\n\r\n")) or (
            self.length is not None and body >= self.length)
        if done and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, self.t_first or now, now, bytes(self.buf[self.hdr_end:])))

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def run(url: str, body: bytes, auth: str, stream: bool, concurrency: int, duration: float, max_n: int,
              timeout: float) -> dict:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    headers = [f"POST {u.path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
               f"Content-Length: {len(body)}", "Connection: keep-alive"]
    if auth:
        headers.append(f"Authorization: Bearer {auth}")
    if stream:
        headers.append("Accept: text/event-stream")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    ttfb: list[float] = []
    total: list[float] = []
    errors = {"status": 0, "timeout": 0, "conn": 0, "no_done": 0}
    deadline = time.perf_counter() + duration
    count = 0

    async def worker() -> None:
        nonlocal count
        proto: _Conn | None = None
        while time.perf_counter() < deadline and count < max_n:
            count += 1
            try:
                if proto is None or proto.lost:
                    _, proto = await loop.create_connection(_Conn, host, port)
                status, t_first, t_end, payload = await asyncio.wait_for(proto.start(request), timeout)
            except TimeoutError:
                errors["timeout"] += 1
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
                proto = None
                continue
            except OSError:
                errors["conn"] += 1
                proto = None
                await asyncio.sleep(0.01)
                continue
            if status != 200:
                errors["status"] += 1
                continue
            if stream and b"[DONE]" not in payload:
                errors["no_done"] += 1
            ttfb.append((t_first - proto.t_sent) * 1000)
            total.append((t_end - proto.t_sent) * 1000)
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    out = {"requests": len(ttfb), "elapsed_s": round(elapsed, 3), "concurrency": concurrency, "errors": errors}
    for name, xs in (("ttfb_ms", ttfb), ("total_ms", total)):
        out[name] = {f"p{p}": (round(v, 4) if (v := _pct(xs, p)) is not None else None) for p in (50, 90, 99)}
        out[name]["mean"] = round(sum(xs) / len(xs), 4) if xs else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True, help="file with the JSON request body")
    ap.add_argument("--auth", default="")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--max", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    with open(a.body, "rb") as f:
        body = f.read()
    res = asyncio.run(run(a.url, body, a.auth, a.stream, a.concurrency, a.duration, a.max, a.timeout))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
