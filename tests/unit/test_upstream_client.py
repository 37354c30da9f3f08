"""The upstream HTTP/1.1 client against scripted raw servers: framing, pooling, errors, timeouts, TLS."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib

import pytest

from metarouter.gateway.upstream import UpstreamClient, UpstreamError, UpstreamTimeout

JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


class Script:
    """A raw TCP server: for each request it reads the head and body, then runs ``reply(writer, n)``."""

    def __init__(self, reply, ssl_ctx=None):
        self.reply, self.ssl_ctx = reply, ssl_ctx
        self.requests: list[bytes] = []
        self.connections = 0
        self.server = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    def url(self, path="/v1/chat/completions", scheme="http", host="127.0.0.1"):
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if await self.reply(writer, len(self.requests)) == "close":
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


def fixed(body: bytes, extra: bytes = b""):
    async def reply(w, n):
        w.write(JSON_HEAD + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await w.drain()
    return reply


@pytest.fixture
async def client():
    c = UpstreamClient(connect_timeout=2, read_timeout=2, total_timeout=5)
    yield c
    await c.close()


async def test_content_length_and_keep_alive(client):
    async with Script(fixed(b'{"ok":1}')) as srv:
        for _ in range(5):
            r = await client.request(srv.url(), b'{"q":1}', {"Authorization": "Bearer k", "Content-Type": "application/json"})
            assert r.status == 200 and r.headers["content-type"] == "application/json"
            assert r.headers.get("Content-Type") == "application/json"
            assert await r.read() == b'{"ok":1}'
            r.release()
        assert srv.connections == 1 and client.connections_opened == 1
        req = srv.requests[0]
        assert req.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % srv.port)
        assert b"Authorization: Bearer k\r\n" in req and b"Content-Length: 7\r\n" in req and req.endswith(b'{"q":1}')


async def test_chunked_stream_arrives_as_sent():
    events = [b"data: {\"a\":%d}\n\n" % i for i in range(5)]

    async def reply(w, n):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for e in events:
            w.write(b"%x\r\n%s\r\n" % (len(e), e))
            await w.drain()
            await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")

    c = UpstreamClient(read_timeout=2)
    async with Script(reply) as srv:
        for _ in range(2):  # the connection is reusable after a complete chunked body
            r = await c.request(srv.url(), b"{}", {})
            got = [x async for x in r.iter_any()]
            r.release()
            assert b"".join(got) == b"".join(events) and len(got) >= 3  # pieces, not one blob at the end
        assert srv.connections == 1
    await c.close()


async def test_body_until_close_and_connection_close_header(client):
    async def reply(w, n):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"eof\":true}")
        await w.drain()
        return "close"

    async with Script(reply) as srv:
        for _ in range(2):
            r = await client.request(srv.url(), b"{}", {})
            assert await r.read() == b'{"eof":true}'
            r.release()
        assert srv.connections == 2  # never pooled

    async with Script(fixed(b"{}", b"Connection: close\r\n")) as srv:
        for _ in range(2):
            r = await client.request(srv.url(), b"{}", {})
            await r.read()
            r.release()
        assert srv.connections == 2


async def test_interim_response_is_skipped(client):
    async def reply(w, n):
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + JSON_HEAD + b"Content-Length: 2\r\n\r\n{}")

    async with Script(reply) as srv:
        r = await client.request(srv.url(), b"{}", {})
        assert r.status == 200 and "link" not in r.headers and await r.read() == b"{}"


async def test_error_status_with_body(client):
    async def reply(w, n):
        body = b'{"error":{"message":"slow down"}}'
        w.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async with Script(reply) as srv:
        r = await client.request(srv.url(), b"{}", {})
        assert r.status == 429 and r.headers["Retry-After"] == "3"
        assert b"slow down" in await r.read()


async def test_gzip_and_deflate_bodies(client):
    payload = b'{"choices":[]}' * 50
    for enc, data in ((b"gzip", gzip.compress(payload)), (b"deflate", zlib.compress(payload))):
        async with Script(fixed(data, b"Content-Encoding: " + enc + b"\r\n")) as srv:
            r = await client.request(srv.url(), b"{}", {})
            assert await r.read() == payload
            r = await client.request(srv.url(), b"{}", {})
            assert b"".join([x async for x in r.iter_any()]) == payload
    assert b"Accept-Encoding: gzip, deflate" in srv.requests[0]
    async with Script(fixed(b"xx", b"Content-Encoding: br\r\n")) as srv:
        with pytest.raises(UpstreamError, match="content-encoding"):
            await client.request(srv.url(), b"{}", {})


async def test_dropped_before_answer_and_mid_body(client):
    async def drop(w, n):
        return "close"

    async with Script(drop) as srv:
        with pytest.raises(UpstreamError, match="before answering") as ei:
            await client.request(srv.url(), b"{}", {})
        assert not isinstance(ei.value, UpstreamTimeout)

    async def half(w, n):
        w.write(JSON_HEAD + b"Content-Length: 100\r\n\r\n{\"partial")
        await w.drain()
        return "close"

    async with Script(half) as srv:
        r = await client.request(srv.url(), b"{}", {})
        with pytest.raises(UpstreamError, match="middle of the answer"):
            await r.read()
        r = await client.request(srv.url(), b"{}", {})
        got = []
        with pytest.raises(UpstreamError):
            async for x in r.iter_any():
                got.append(x)
        assert b"".join(got) == b'{"partial'  # what did arrive is handed over before the error
    assert client.idle_connections() == 0


async def test_unsolicited_bytes_retire_the_connection(client):
    async def twice(w, n):  # two answers to one request: the second must not be taken for the next request's
        w.write(JSON_HEAD + b"Content-Length: 5\r\n\r\nfirst" + JSON_HEAD + b"Content-Length: 5\r\n\r\nstale")
        await w.drain()

    async with Script(twice) as srv:
        r = await client.request(srv.url(), b"{}", {})
        assert await r.read() == b"first"
        r.release()
        await asyncio.sleep(0.05)
        r = await client.request(srv.url(), b"{}", {})
        assert await r.read() == b"first"
        assert srv.connections == 2

    async def late(w, n):  # an answer, then more bytes while the connection sits in the pool
        w.write(JSON_HEAD + b"Content-Length: 2\r\n\r\n{}")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"HTTP/1.1 200 OK\r\n")

    async with Script(late) as srv:
        r = await client.request(srv.url(), b"{}", {})
        assert await r.read() == b"{}"
        r.release()
        await asyncio.sleep(0.15)
        r = await client.request(srv.url(), b"{}", {})
        assert await r.read() == b"{}"
        assert srv.connections == 2


async def test_malformed_response(client):
    async def junk(w, n):
        w.write(b"SMTP ready\r\n\r\n")

    async with Script(junk) as srv:
        with pytest.raises(UpstreamError, match="malformed"):
            await client.request(srv.url(), b"{}", {})


async def test_pooled_connection_closed_by_server_is_not_reused(client):
    async def once(w, n):
        w.write(JSON_HEAD + b"Content-Length: 2\r\n\r\n{}")
        await w.drain()
        await asyncio.sleep(0.05)
        return "close"  # closes the idle keep-alive connection after answering

    async with Script(once) as srv:
        r = await client.request(srv.url(), b"{}", {})
        await r.read()
        r.release()
        await asyncio.sleep(0.2)
        r = await client.request(srv.url(), b"{}", {})
        assert await r.read() == b"{}"
        assert srv.connections == 2


async def test_timeouts():
    async def stall(w, n):
        await asyncio.sleep(1)
        w.write(JSON_HEAD + b"Content-Length: 2\r\n\r\n{}")

    c = UpstreamClient(read_timeout=0.2, total_timeout=5)
    async with Script(stall) as srv:
        with pytest.raises(UpstreamTimeout):
            await c.request(srv.url(), b"{}", {})
    await c.close()

    async def trickle(w, n):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            w.write(b"1\r\nx\r\n")
            await w.drain()
            await asyncio.sleep(0.1)

    c = UpstreamClient(read_timeout=1, total_timeout=0.5)  # each read is in time; the whole is not
    async with Script(trickle) as srv:
        r = await c.request(srv.url(), b"{}", {})
        with pytest.raises(UpstreamTimeout):
            async for _ in r.iter_any():
                pass
    await c.close()


async def test_connection_refused_and_bad_urls(client):
    s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = s.sockets[0].getsockname()[1]
    s.close()
    await s.wait_closed()
    with pytest.raises(UpstreamError, match="cannot connect") as ei:
        await client.request(f"http://127.0.0.1:{port}/v1", b"{}", {})
    assert ei.value.kind == "ConnectionRefusedError"
    for bad in ("ftp://x/y", "http:///nohost", "http://h:99999999/"):
        with pytest.raises(UpstreamError):
            await client.request(bad, b"{}", {})
    with pytest.raises(UpstreamError, match="line break"):
        await client.request(f"http://127.0.0.1:{port}/v1", b"{}", {"X-Evil": "a\r\nHost: other"})


async def test_slow_reader_pauses_the_socket_and_loses_nothing():
    big = b"data: " + b"x" * 1000 + b"\n\n"
    n_events = 2000  # ~2 MB, far above the high-water mark

    async def reply(w, n):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % (len(big) * n_events))
        for _ in range(n_events):
            w.write(big)
        await w.drain()

    c = UpstreamClient(read_timeout=5)
    async with Script(reply) as srv:
        r = await c.request(srv.url(), b"{}", {})
        total = 0
        async for x in r.iter_any():
            total += len(x)
            await asyncio.sleep(0.01)  # a slow client
        assert total == len(big) * n_events and r._conn.pauses >= 1
        r.release()
        assert c.idle_connections() == 1
    await c.close()


async def test_cancelled_request_closes_its_connection():
    async def stall(w, n):
        await asyncio.sleep(120)

    # the timeouts are far beyond the cancel at 0.1 s, so that a loaded machine's stall is not read as a timeout
    c = UpstreamClient(read_timeout=120)
    async with Script(stall) as srv:
        task = asyncio.ensure_future(c.request(srv.url(), b"{}", {}))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.idle_connections() == 0
    await c.close()


async def test_tls_verified_with_host_name():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with Script(fixed(b'{"tls":true}'), ssl_ctx=server_ctx) as srv:
        c = UpstreamClient(ssl_context=client_ctx)
        for _ in range(2):
            r = await c.request(srv.url(scheme="https", host="localhost"), b"{}", {})
            assert await r.read() == b'{"tls":true}'
            r.release()
        assert c.connections_opened == 1
        assert srv.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:%d" % srv.port)
        await c.close()
        # a certificate for another name, or from an unknown CA, is refused
        c = UpstreamClient(ssl_context=client_ctx)
        with pytest.raises(UpstreamError, match="TLS"):
            await c.request(srv.url(scheme="https", host="127.0.0.1"), b"{}", {})
        await c.close()
        c = UpstreamClient()
        with pytest.raises(UpstreamError, match="TLS"):
            await c.request(srv.url(scheme="https", host="localhost"), b"{}", {})
        await c.close()


def _bomb(size: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    block = b"\0" * (1024 * 1024)
    return b"".join([*(z.compress(block) for _ in range(size // len(block))), z.flush()])


async def test_a_gzip_bomb_is_cut_at_the_limit_before_it_is_inflated(client):
    bomb = _bomb(1024 * 1024 * 1024)  # 1 GiB of zeros in about 1 MB
    assert len(bomb) < 2 * 1024 * 1024
    async with Script(fixed(bomb, b"Content-Encoding: gzip\r\n")) as srv:
        r = await client.request(srv.url(), b"{}", {})
        r.limit = 4 * 1024 * 1024
        with pytest.raises(UpstreamError) as exc:
            await r.read()
        assert exc.value.kind == "ResponseTooLarge"
        r.release()
        r = await client.request(srv.url(), b"{}", {})  # streamed: the same cap, a piece at a time
        r.limit = 4 * 1024 * 1024
        got = 0
        with pytest.raises(UpstreamError) as exc:
            async for piece in r.iter_any():
                assert len(piece) <= r.limit + 1
                got += len(piece)
        assert exc.value.kind == "ResponseTooLarge" and got <= r.limit
        r.release()


async def test_a_body_over_the_limit_fails_and_one_within_it_is_read(client):
    async with Script(fixed(b"x" * 5000)) as srv:
        r = await client.request(srv.url(), b"{}", {})
        r.limit = 4999
        with pytest.raises(UpstreamError) as exc:
            await r.read()
        assert exc.value.kind == "ResponseTooLarge"
        r.release()
        r = await client.request(srv.url(), b"{}", {})
        r.limit = 5000
        assert await r.read() == b"x" * 5000
        r.release()
