"""The HTTP/1.1 protocol ``metarouter serve`` runs: uvicorn's httptools protocol with one bound on the size of a
request's head (request line and headers), for every route, enforced before anything is routed or buffered whole.

A head that grows past :data:`MAX_HEAD_BYTES` while it arrives is answered ``431`` as soon as it does (what is held
is at most the limit and one read from the socket), and one that arrived in a single read is checked when it is
complete, before the app sees it. Either way the connection is closed after the answer.
"""

from __future__ import annotations

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 32 * 1024  # request line and headers together (nginx's default buffers hold 32 KiB)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


def refusal_body(url: bytes) -> bytes:
    """The 431 answer in the error shape of the API the request was for (as far as its path is known): Anthropic's
    for ``/messages``, OpenAI's for ``/responses``, OpenRouter's elsewhere."""
    message = f"Request headers too large (limit {MAX_HEAD_BYTES} bytes for the request line and headers)"
    path = url.split(b"?", 1)[0].rstrip(b"/")
    if path.endswith(b"/messages"):
        return orjson.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
    if path.endswith(b"/responses"):
        return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": "request_headers_too_large"}})
    return orjson.dumps({"error": {"code": 431, "message": message}})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between the start of a request and the end of its headers
        self._head_bytes = 0  # bytes received while in a head (an upper bound of its size)
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self.url) + sum(len(name) + len(value) for name, value in self.headers) > MAX_HEAD_BYTES:
            self._refuse()
            raise _HeadTooLarge
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the count of head bytes (a head refused from a parser callback is no parse error)."""
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self._refused:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse()

    def _refuse(self) -> None:
        self._refused = True
        body = refusal_body(bytes(getattr(self, "url", b"") or b""))
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()
