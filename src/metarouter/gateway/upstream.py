"""The upstream hop: a small keep-alive HTTP/1.1 client built on asyncio protocols and httptools.

Every request a user makes crosses this hop once, so it does only what a gateway needs: POST a body, read the
status and headers, then either read the whole body or pass it through as it arrives (SSE). Per request that is
one ``transport.write`` of the request, one parser pass over what comes back, and no per-request object graph
beyond the response. What it keeps from a general client: a LIFO pool of idle connections per origin (scheme,
host, port), TLS with certificate and host-name checks, connect / between-reads / total timeouts, chunked and
content-length and read-to-close bodies, gzip/deflate bodies (decompressed in bounded steps), a cap on the size of
an answer (:attr:`UpstreamResponse.limit`, before and after decompression), and back-pressure on streams (reading pauses while a
slow client lets the body pile up). It never re-sends a request by itself: that is the gateway's retry policy.

Failures are raised as :class:`UpstreamError` (:class:`UpstreamTimeout` for timeouts) naming what went wrong.

:class:`Upstream` is what the gateway needs of a client; :class:`MockTransport` is one that answers in-process
from a callable (the idea of httpx's ``MockTransport``), for tests of the pipeline without a socket.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl as _ssl
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Protocol
from urllib.parse import urlsplit

import httptools
import orjson

__all__ = ["MockResponse", "MockTransport", "Upstream", "UpstreamClient", "UpstreamError", "UpstreamRequest",
           "UpstreamResponse", "UpstreamTimeout"]

HIGH_WATER = 256 * 1024  # bytes buffered from a stream before reading from the socket pauses
MAX_HEADER_BYTES = 64 * 1024
MAX_IDLE_PER_ORIGIN = 512


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the HTTP exchange."""

    def __init__(self, message: str, kind: str = "UpstreamError"):
        super().__init__(message)
        self.kind = kind  # a short name for messages and records, like an exception class name


class UpstreamTimeout(UpstreamError):
    pass


class _Origin:
    __slots__ = ("key", "host", "port", "tls", "target", "host_header", "head")

    def __init__(self, scheme: str, host: str, port: int, target: str, host_header: str):
        self.key = (scheme, host, port)
        self.host, self.port, self.tls = host, port, scheme == "https"
        self.target, self.host_header = target, host_header
        self.head = self.request_line("POST")  # encoded once per URL for the method the gateway uses

    def request_line(self, method: str) -> bytes:
        return f"{method} {self.target} HTTP/1.1\r\nHost: {self.host_header}\r\n".encode("ascii")


def _parse_url(url: str) -> _Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UpstreamError(f"unsupported URL scheme {scheme!r} in {url!r}", "InvalidURL")
    host = parts.hostname
    if not host:
        raise UpstreamError(f"no host in {url!r}", "InvalidURL")
    default = 443 if scheme == "https" else 80
    try:
        port = parts.port or default
    except ValueError:
        raise UpstreamError(f"bad port in {url!r}", "InvalidURL") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n"):
        raise UpstreamError(f"bad characters in the path of {url!r}", "InvalidURL")
    h = f"[{host}]" if ":" in host else host  # IPv6 literal
    host_header = h if port == default else f"{h}:{port}"
    return _Origin(scheme, host, port, target, host_header)


class _Conn(asyncio.Protocol):
    """One connection; it carries one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.active = False  # an exchange is in progress (set by the client, cleared when the response is released)
        self.idle_since = 0.0
        self.pauses = 0  # times reading was paused for a slow consumer
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.until_eof = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.streaming = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future | None = None
        self.received = 0  # body bytes of this answer, as sent (compressed or not)
        self.limit: int | None = None  # more body bytes than this fail the answer

    # --- asyncio.Protocol ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            # bytes nobody asked for (on an idle pooled connection, or after the answer ended): the stream can no
            # longer be trusted to start at the next answer
            self._fail(UpstreamError("upstream sent data outside an exchange", "ProtocolError"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("upstream switched protocols", "ProtocolError"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed HTTP response ({exc})", "ProtocolError"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done and self.until_eof and not self.complete and self.error is None:
            self.complete = True  # a body delimited by the end of the connection
        elif not self.complete and self.error is None:
            what = "before answering" if not self.headers_done else "in the middle of the answer"
            self.error = UpstreamError(f"upstream closed the connection {what}", "ServerDisconnected")
        self._wake()

    # --- httptools callbacks --------------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise UpstreamError("upstream response headers too large", "ProtocolError")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:  # a second answer to one request
            self._fail(UpstreamError("upstream sent an answer nobody asked for", "ProtocolError"))
            return
        status = self.parser.get_status_code()
        if status < 200:  # an interim response (103 Early Hints and the like): the real one follows
            self.headers = []
            self.header_bytes = 0
            return
        self.status = status
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        length = chunked = False
        for name, value in self.headers:
            n = name.lower()
            if n == b"content-length":
                length = True
            elif n == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        self.until_eof = not (length or chunked) and status not in (204, 304)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if not self.headers_done or self.complete:
            return  # an interim response has no body; after the end nothing belongs to this answer
        self.received += len(body)
        if self.limit is not None and self.received > self.limit:
            self._fail(_too_large(self.limit))
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.streaming and self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.pauses += 1
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # end of an interim response
        self.complete = True
        self._wake()

    # --- for the client -------------------------------------------------------------------------------------------
    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def usable(self, now: float, keepalive: float) -> bool:
        return (not self.lost and self.transport is not None and not self.transport.is_closing()
                and now - self.idle_since < keepalive)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    async def wait(self, read_timeout: float, deadline: float) -> None:
        """Until something happens on this connection (data, end, error), or raise on timeout."""
        loop = self.loop
        fut = self.waiter = loop.create_future()
        at = min(loop.time() + read_timeout, deadline)
        handle = loop.call_at(at, _expire, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self.waiter = None


def _too_large(limit: int) -> UpstreamError:
    return UpstreamError(f"upstream answer is larger than {limit} bytes", "ResponseTooLarge")


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout("upstream timed out", "TimeoutError"))


class UpstreamResponse:
    """Status and headers of an answer; the body is read with :meth:`read` or :meth:`iter_any`, and the
    connection goes back to the pool (or is closed) with :meth:`release`, which is always safe to call."""

    __slots__ = ("status", "headers", "_conn", "_client", "_origin", "_read_timeout", "_deadline", "_decoder",
                 "_decoded", "_released")

    def __init__(self, conn: _Conn, client: "UpstreamClient", origin: _Origin, read_timeout: float, deadline: float):
        self._conn, self._client, self._origin = conn, client, origin
        self.status = conn.status
        headers: dict[str, str] = {}
        for name, value in conn.headers:
            k = name.decode("latin-1").lower()
            v = value.decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        self.headers = _Headers(headers)
        self._read_timeout, self._deadline = read_timeout, deadline
        enc = headers.get("content-encoding", "identity").strip().lower()
        if enc in ("", "identity"):
            self._decoder = None
        elif enc in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(47 if enc != "deflate" else zlib.MAX_WBITS)
        else:
            conn.close()
            raise UpstreamError(f"upstream used an unsupported content-encoding {enc!r}", "ProtocolError")
        self._decoded = 0
        self._released = False

    @property
    def limit(self) -> int | None:
        """The most body bytes this answer may have, as sent and decompressed (None: no cap); past it, reading
        raises ``UpstreamError`` (kind ``ResponseTooLarge``) and the connection is closed."""
        return self._conn.limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        conn = self._conn
        conn.limit = value

    def _decode(self, data: bytes, final: bool = False) -> bytes:
        """Decompress in steps that never produce more than the cap allows (a small gzip bomb stays small)."""
        d = self._decoder
        if d is None:
            return data
        limit = self._conn.limit
        out: list[bytes] = []
        try:
            while True:
                room = 0 if limit is None else limit - self._decoded + 1  # 0: unbounded
                piece = d.decompress(data, room)
                self._decoded += len(piece)
                if limit is not None and self._decoded > limit:
                    raise _too_large(limit)
                out.append(piece)
                data = d.unconsumed_tail
                if not data:
                    break
            if final:
                tail = d.flush()
                self._decoded += len(tail)
                if limit is not None and self._decoded > limit:
                    raise _too_large(limit)
                out.append(tail)
        except zlib.error as exc:
            self._conn.close()
            raise UpstreamError(f"upstream body could not be decompressed ({exc})", "ProtocolError") from None
        except UpstreamError:
            self._conn.close()
            raise
        return out[0] if len(out) == 1 else b"".join(out)

    def _take(self) -> bytes:
        """Everything received and not yet handed over (reading resumes if a slow consumer had paused it)."""
        conn = self._conn
        if conn.limit is not None and conn.received > conn.limit:  # (arrived before the cap was set)
            conn.close()
            raise _too_large(conn.limit)
        data = conn.chunks.popleft() if len(conn.chunks) == 1 else b"".join(conn.chunks)
        conn.chunks.clear()
        conn.buffered = 0
        if conn.paused and not conn.lost and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()
        return data

    async def _more(self) -> None:
        """Wait for the connection's next event; raise its error if it has failed."""
        conn = self._conn
        if conn.error is not None:
            raise conn.error
        await conn.wait(self._read_timeout, self._deadline)

    async def read(self) -> bytes:
        """The whole body."""
        try:
            while not self._conn.complete:
                await self._more()
        except BaseException:
            self.release()
            raise
        return self._decode(self._take(), final=True)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each item is everything received since the last one."""
        conn = self._conn
        conn.streaming = True
        try:
            while True:
                if conn.chunks:
                    data = self._decode(self._take())
                    if data:
                        yield data
                    continue
                if conn.complete:
                    tail = self._decode(b"", final=True)
                    if tail:
                        yield tail
                    return
                await self._more()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.active = False
        if conn.complete and conn.keep_alive and not conn.lost and conn.error is None:
            self._client._put(self._origin, conn)
        else:
            conn.close()


class _Headers(dict):
    """Response headers, looked up case-insensitively (keys are stored lower-case)."""

    def get(self, key: str, default=None):  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class UpstreamClient:
    """Keep-alive connections per origin; one instance per gateway process."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 120.0, total_timeout: float = 600.0,
                 keepalive: float = 60.0, ssl_context: _ssl.SSLContext | None = None):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.keepalive = keepalive
        self._ssl = ssl_context
        self._idle: dict[tuple, list[_Conn]] = {}
        self._origins: dict[str, _Origin] = {}
        self._closed = False
        self.connections_opened = 0  # for tests and /metrics-style introspection

    def _ssl_context(self) -> _ssl.SSLContext:
        if self._ssl is None:
            self._ssl = _ssl.create_default_context()
        return self._ssl

    def origin(self, url: str) -> _Origin:
        o = self._origins.get(url)
        if o is None:
            o = _parse_url(url)
            if len(self._origins) < 10_000:  # URLs come from configuration, but stay bounded regardless
                self._origins[url] = o
        return o

    async def request(self, url: str, body: bytes, headers: dict[str, str], method: str = "POST",
                      deadline: float | None = None) -> UpstreamResponse:
        """Send ``body`` to ``url``; returns once the status and headers are in. Everything — connecting, the
        answer, its body — ends by ``deadline`` (loop time; a caller's bound over several requests) or after the
        client's total timeout, whichever comes first."""
        if self._closed:
            raise UpstreamError("client is closed", "ClientClosed")
        origin = self.origin(url)
        loop = asyncio.get_running_loop()
        own = loop.time() + self.total_timeout
        deadline = own if deadline is None else min(deadline, own)
        if method != "POST" and not (method.isalpha() and method.isupper()):
            raise UpstreamError(f"bad HTTP method {method!r}", "InvalidMethod")
        msg = _encode_request(origin.head if method == "POST" else origin.request_line(method), body, headers)
        # No silent re-send, even when a pooled connection dies before any answer: the server may have taken the
        # request (and billed it). The gateway's retry policy decides, and the attempt is recorded. Connections the
        # server has already closed are seen as closed here and not reused.
        conn = self._take(origin, loop.time()) or await self._connect(origin, loop, deadline)
        return await self._exchange(conn, origin, msg, deadline)

    async def _exchange(self, conn: _Conn, origin: _Origin, msg: bytes, deadline: float) -> UpstreamResponse:
        conn._reset()
        conn.active = True
        try:
            conn.transport.write(msg)  # type: ignore[union-attr]
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(self.read_timeout, deadline)
            return UpstreamResponse(conn, self, origin, self.read_timeout, deadline)
        except BaseException:
            conn.close()
            raise

    def _take(self, origin: _Origin, now: float) -> _Conn | None:
        idle = self._idle.get(origin.key)
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.keepalive):
                return conn
            conn.close()
        return None

    def _put(self, origin: _Origin, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        idle = self._idle.setdefault(origin.key, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            idle.pop(0).close()
        idle.append(conn)

    async def _connect(self, origin: _Origin, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        timeout = max(0.0, min(self.connect_timeout, deadline - loop.time()))
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(loop), origin.host, origin.port,
                    ssl=self._ssl_context() if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"connecting to {origin.host}:{origin.port} timed out", "ConnectTimeout") from None
        except _ssl.SSLError as exc:
            raise UpstreamError(f"TLS with {origin.host} failed ({exc.reason or exc})", type(exc).__name__) from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {origin.host}:{origin.port} ({exc.strerror or exc})",
                                type(exc).__name__) from None
        self.connections_opened += 1
        return conn

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())


def _encode_request(head: bytes, body: bytes, headers: dict[str, str]) -> bytes:
    parts = [head]
    for k, v in headers.items():
        if not isinstance(v, str):
            v = str(v)
        if "\r" in v or "\n" in v or "\r" in k or "\n" in k or ":" in k:
            raise UpstreamError(f"refusing to send a header with a line break or bad name: {k!r}", "InvalidHeader")
        lk = k.lower()
        if lk in ("host", "content-length", "transfer-encoding", "connection"):
            continue  # the client sets these itself
        parts.append(f"{k}: {v}\r\n".encode("latin-1", "strict") if v.isascii() else _latin1_header(k, v))
    if "accept-encoding" not in (k.lower() for k in headers):
        parts.append(b"Accept-Encoding: gzip, deflate\r\n")
    parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
    parts.append(body)
    return b"".join(parts)


def _latin1_header(k: str, v: str) -> bytes:
    try:
        return f"{k}: {v}\r\n".encode("latin-1")
    except UnicodeEncodeError:
        raise UpstreamError(f"header {k!r} has characters HTTP/1.1 cannot carry", "InvalidHeader") from None



# --- the seam ---------------------------------------------------------------------------------------------------
class Upstream(Protocol):
    """What the gateway needs of an upstream client: :class:`UpstreamClient`, or :class:`MockTransport` in tests.
    ``request`` returns once status and headers are in, as an object with ``status``, ``headers`` (``.get``), a
    settable ``limit`` and ``read()`` / ``iter_any()`` / ``release()`` as :class:`UpstreamResponse` has them; it
    raises :class:`UpstreamError` when there is no answer."""

    async def request(self, url: str, body: bytes, headers: dict[str, str], method: str = "POST",
                      deadline: float | None = None) -> Any: ...

    async def close(self) -> None: ...


@dataclass
class UpstreamRequest:
    """A request as a :class:`MockTransport` handler sees it."""

    url: str
    body: bytes
    headers: dict[str, str]
    method: str = "POST"

    def json(self) -> Any:
        return orjson.loads(self.body)


class MockResponse:
    """A handler's answer: a status, headers, and a body given whole (``content`` bytes, or ``json``) or as it
    arrives (``stream``: an iterable or async iterable of bytes; an :class:`UpstreamError` raised in it reaches the
    reader as a broken connection would). Keeps :attr:`limit` as :class:`UpstreamResponse` does."""

    def __init__(self, status: int = 200, *, json: Any = None, content: bytes = b"",
                 stream: Iterable[bytes] | AsyncIterable[bytes] | None = None, headers: dict[str, str] | None = None):
        self.status = status
        self.headers = _Headers({k.lower(): v for k, v in (headers or {}).items()})
        self._content = orjson.dumps(json) if json is not None else content
        self._stream = stream
        self.limit: int | None = None
        self.released = False

    def _check(self, n: int) -> None:
        if self.limit is not None and n > self.limit:
            raise _too_large(self.limit)

    async def read(self) -> bytes:
        try:
            if self._stream is None:
                data = self._content
            else:
                data = b"".join([piece async for piece in self._pieces()])
            self._check(len(data))
            return data
        finally:
            self.release()

    async def _pieces(self) -> AsyncIterator[bytes]:
        if isinstance(self._stream, AsyncIterable):
            async for piece in self._stream:
                yield piece
        else:
            for piece in self._stream or (self._content,):
                yield piece

    async def iter_any(self) -> AsyncIterator[bytes]:
        received = 0
        try:
            async for piece in self._pieces():
                received += len(piece)
                self._check(received)
                if piece:
                    yield piece
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self.released = True


class MockTransport:
    """An in-process :class:`Upstream`: each request goes to ``handler(UpstreamRequest)``, which returns a
    :class:`MockResponse` (or awaits one), or raises :class:`UpstreamError` / :class:`UpstreamTimeout` to stand
    for an upstream that cannot be reached or does not answer. ``requests`` keeps every request sent."""

    def __init__(self, handler: Callable[[UpstreamRequest], MockResponse | Awaitable[MockResponse]]):
        self.handler = handler
        self.requests: list[UpstreamRequest] = []
        self.responses: list[MockResponse] = []

    async def request(self, url: str, body: bytes, headers: dict[str, str], method: str = "POST",
                      deadline: float | None = None) -> MockResponse:
        req = UpstreamRequest(url, body, dict(headers), method)
        self.requests.append(req)
        resp = self.handler(req)
        if inspect.isawaitable(resp):
            resp = await resp
        self.responses.append(resp)
        return resp

    async def close(self) -> None:
        pass
