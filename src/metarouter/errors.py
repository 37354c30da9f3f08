"""Errors a client can see: each carries its HTTP status and renders as OpenRouter's error body."""

from __future__ import annotations

from typing import Any

from .redact import redact, redact_obj


#: OpenRouter's canonical error type (``APIErrorType`` in its SDK) for each status the gateway answers with
ERROR_TYPES = {400: "invalid_request", 401: "authentication", 402: "payment_required", 403: "permission_denied",
               404: "not_found", 408: "timeout", 413: "payload_too_large", 422: "unprocessable",
               429: "rate_limit_exceeded", 502: "provider_unavailable", 503: "provider_unavailable", 504: "timeout"}


class GatewayError(Exception):
    """An error with an HTTP status and an OpenRouter-style body ``{"error": {"code", "message", "metadata"}}``.

    ``retryable`` says whether another candidate model (or a retry) may succeed where this one failed. The message
    and metadata are masked of secrets (:mod:`metarouter.redact`): they may carry what an upstream said.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        metadata: dict[str, Any] | None = None,
        retryable: bool | None = None,
        headers: dict[str, str] | None = None,
    ):
        message = redact(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.metadata = redact_obj(metadata) if metadata else {}
        self.retryable = status in (408, 429, 500, 502, 503, 504) if retryable is None else retryable
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.status, "message": self.message}
        if self.metadata:
            err["metadata"] = self.metadata
        return {"error": err}

    def stream_body(self) -> dict[str, Any]:
        """The ``error`` object of a stream's terminal chunk: as :meth:`body`, with OpenRouter's canonical
        ``metadata.error_type`` (required there by its SDK's ``ChatStreamChunk``)."""
        return {"code": self.status, "message": self.message,
                "metadata": {"error_type": ERROR_TYPES.get(self.status, "server"), **self.metadata}}

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r})"


def upstream_status_to_gateway(status: int) -> int:
    """Map an upstream HTTP status to the status the gateway answers with (OpenRouter's set)."""
    if status in (400, 401, 402, 403, 404, 408, 413, 422, 429):
        # A provider rejecting *our* credentials is a gateway problem, not the caller's: OpenRouter
        # reports it as 401 all the same, with the provider named in metadata.
        return 400 if status in (413, 422) else status
    if status in (500, 502, 504):
        return 502
    if status in (503, 529):  # 529: Anthropic's "overloaded"
        return 503
    if status >= 500:
        return 502
    return 502


class MissingExtra(RuntimeError):
    """A configured backend needs a package of an optional extra that is not installed."""


def require_extra(module: str, extra: str, what: str) -> None:
    """Import ``module``, or raise :class:`MissingExtra` naming the extra to install for ``what``."""
    import importlib

    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise
        raise MissingExtra(f"{what} needs the {exc.name!r} package, which is not installed: "
                           f"pip install 'metarouter[{extra}]'") from None
