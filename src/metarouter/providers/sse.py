"""Server-sent events: an incremental parser for upstream streams, and the framing of our own."""

from __future__ import annotations

from typing import Any

import orjson

from .base import SSEEvent


class SSEParser:
    """Incremental SSE decoder (WHATWG rules): feed raw bytes in any chunking, get complete events back.

    Comment lines (``: keep-alive``) are skipped; ``event:`` and multi-line ``data:`` fields are honoured;
    ``\\r\\n``, ``\\r`` and ``\\n`` line endings are all accepted.
    """

    __slots__ = ("_buf", "_event", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        out: list[SSEEvent] = []
        while True:
            # find the earliest line terminator
            i_n = self._buf.find(b"\n")
            i_r = self._buf.find(b"\r")
            if i_n < 0 and i_r < 0:
                break
            if i_r >= 0 and (i_n < 0 or i_r < i_n):
                if i_r == len(self._buf) - 1:
                    break  # a lone \r at the end may be half of \r\n: wait for more
                end, skip = i_r, 2 if self._buf[i_r + 1 : i_r + 2] == b"\n" else 1
            else:
                end, skip = i_n, 1
            line = self._buf[:end].decode("utf-8", errors="replace")
            self._buf = self._buf[end + skip :]
            ev = self._line(line)
            if ev is not None:
                out.append(ev)
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line still counts."""
        out: list[SSEEvent] = []
        if self._buf:
            ev = self._line(self._buf.decode("utf-8", errors="replace"))
            self._buf = b""
            if ev is not None:
                out.append(ev)
        ev = self._line("")
        if ev is not None:
            out.append(ev)
        return out

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data and self._event is None:
                return None
            ev = SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def sse_data(obj: Any) -> bytes:
    """One ``data:`` frame carrying ``obj`` as compact JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
SSE_PROCESSING = b": OPENROUTER PROCESSING\n\n"
