"""A TCP proxy for tests that need a service to go away and come back (PostgreSQL, Redis) without touching the
service itself: ``cut()`` drops every proxied connection and refuses new ones, as a server that went down would;
``restore()`` listens again on the same port. ``stall()`` keeps every connection open but passes nothing on (a
server that hangs, a network that drops packets), until ``resume()``.

It runs its own event loop in a thread, like the fake upstream, so synchronous and asynchronous tests can use it.
"""

from __future__ import annotations

import asyncio
import threading

from .loop_thread import LoopThread


class TcpProxy(LoopThread):
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self.host, self.port = host, port
        self.connections = 0  # accepted while up, for tests that check the proxy was used
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[asyncio.Transport] = set()
        self._flowing: asyncio.Event | None = None  # cleared while stalled

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                assert self._flowing is not None
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        for w in (writer, up_writer):
            self._transports.add(w.transport)  # type: ignore[arg-type]
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._transports.discard(w.transport)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._transports):
            t.abort()  # a reset, as from a server that died
        self._transports.clear()

    def _call(self, coro_fn) -> None:
        assert self._loop is not None, "proxy not started"
        asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(10)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def stall(self) -> None:
        """Keep connections (and accept new ones), but pass no byte on."""
        self._call(lambda: self._set_flowing(False))

    def resume(self) -> None:
        self._call(lambda: self._set_flowing(True))

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._call(self._cut)

    def restore(self) -> None:
        """Accept connections again (on the same port)."""
        self._call(self._listen)

    def start(self) -> "TcpProxy":
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._flowing = asyncio.Event()
            self._flowing.set()
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._cut())
            loop.close()

        self._thread = threading.Thread(target=run, name="tcp-proxy", daemon=True)
        self._thread.start()
        started.wait(10)
        self._call(self._listen)
        return self

