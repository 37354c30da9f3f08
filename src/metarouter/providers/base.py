"""The adapter contract: one adapter per wire format, translating pure bytes in ↔ bytes out.

The gateway's normal form is OpenAI's chat-completions format:

* request: the OpenAI ``POST /chat/completions`` body as a dict (already validated by the API layer);
* response: an OpenAI ``chat.completion`` dict with ``choices`` (``message``, ``finish_reason`` normalized to
  ``stop | length | tool_calls | content_filter | error`` and ``native_finish_reason``) and ``usage``
  (``prompt_tokens``, ``completion_tokens``, ``total_tokens``, optional ``prompt_tokens_details.cached_tokens`` and
  ``completion_tokens_details.reasoning_tokens``);
* stream: OpenAI ``chat.completion.chunk`` dicts. The pipeline stamps ``id``, ``model``, ``created``, ``object`` and
  ``provider`` on each, so adapters fill only ``choices`` (and ``usage`` and ``system_fingerprint`` when the
  upstream reports them).

Adapters never do I/O: the pipeline sends what ``build_request`` returns and feeds back what comes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..catalog import Model
from ..config import ProviderConfig
from ..errors import GatewayError
from .common import Param


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class StreamTranslator(Protocol):
    """Turns one upstream stream into OpenAI chunk dicts. Stateful, one per request."""

    usage: dict[str, Any] | None  # OpenAI-shaped usage, once the upstream has reported it

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        """Translate one upstream SSE event into zero or more OpenAI chunk dicts.

        Raises ``GatewayError`` when the upstream reports an error inside the stream.
        """
        ...

    def finish(self) -> list[dict[str, Any]]:
        """Called when the upstream stream has ended; returns any chunks still held back."""
        ...

    #: whether the upstream said its stream is complete (e.g. ``[DONE]``, ``message_stop``)
    done: bool


class Adapter(Protocol):
    wire: str
    #: the OpenAI request parameters it takes, as rows (``common.Param``): what ``supported_parameters`` and the
    #: parameter docs read
    param_table: tuple[Param, ...]

    def build_request(
        self, body: dict[str, Any], model: Model, provider: ProviderConfig, *, stream: bool
    ) -> UpstreamRequest: ...

    def parse_response(self, data: bytes) -> dict[str, Any]: ...

    def stream_translator(self, model: Model) -> StreamTranslator: ...

    def parse_error(self, status: int, data: bytes, provider: ProviderConfig) -> GatewayError: ...

    def supported_parameters(self, model: Model) -> list[str]:
        """The OpenAI request parameters this adapter forwards for ``model`` (the rest are dropped)."""
        ...
