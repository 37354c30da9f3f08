"""Server-sent events: an incremental parser for upstream streams, and the framing of our own."""

from __future__ import annotations

from typing import Any

import orjson

from .base import SSEEvent


#: the largest event an upstream may send (its data lines together), bytes: more is a broken upstream
MAX_EVENT_BYTES = 4 * 1024 * 1024


class SSETooLarge(ValueError):
    """An upstream event grew past the parser's limit."""


class SSEParser:
    """Incremental SSE decoder (WHATWG rules): feed raw bytes in any chunking, get complete events back.

    Comment lines (``: keep-alive``) are skipped; ``event:`` and multi-line ``data:`` fields are honoured;
    ``\\r\\n``, ``\\r`` and ``\\n`` line endings are all accepted. Linear in what is fed however it is split (a line
    that arrives in many pieces is scanned once); an event over ``max_event`` bytes raises :class:`SSETooLarge`.
    """

    __slots__ = ("_buf", "_scanned", "_event", "_data", "_size", "max_event")

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of ``_buf`` known to hold no line terminator
        self._event: str | None = None
        self._data: list[str] = []
        self._size = 0  # bytes of the event so far
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf
        buf += chunk
        out: list[SSEEvent] = []
        pos = 0
        scan = self._scanned
        while True:
            # the earliest line terminator after what is already known to hold none
            i_n = buf.find(b"\n", scan)
            i_r = buf.find(b"\r", scan, i_n if i_n >= 0 else len(buf))
            if i_n < 0 and i_r < 0:
                scan = len(buf)
                break
            if i_r >= 0:
                if i_r == len(buf) - 1:
                    scan = i_r  # a lone \r at the end may be half of \r\n: wait for more
                    break
                end, skip = i_r, 2 if buf[i_r + 1] == 0x0A else 1
            else:
                end, skip = i_n, 1
            line = buf[pos:end].decode("utf-8", errors="replace")
            self._size += end - pos
            pos = scan = end + skip
            ev = self._line(line)
            if ev is not None:
                out.append(ev)
        if pos:
            del buf[:pos]
            scan -= pos
        self._scanned = max(scan, 0)
        if self._size + len(buf) > self.max_event:
            raise SSETooLarge(f"an upstream event is over {self.max_event} bytes")
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line still counts."""
        out: list[SSEEvent] = []
        if self._buf:
            ev = self._line(self._buf.decode("utf-8", errors="replace"))
            self._buf = bytearray()
            self._scanned = 0
            if ev is not None:
                out.append(ev)
        ev = self._line("")
        if ev is not None:
            out.append(ev)
        return out

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data and self._event is None:
                self._size = 0
                return None
            ev = SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data, self._size = None, [], 0
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
