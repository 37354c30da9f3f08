"""A test server that runs on its own event loop in a daemon thread (the fakes, the TCP proxy)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class LoopThread:
    """Subclasses start their loop in a thread from ``start()`` (setting ``_loop`` and ``_thread``, returning self);
    this stops it, and makes the server a context manager."""

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
