"""Provider adapters, one per wire format, chosen by the provider's ``wire`` setting."""

from __future__ import annotations

from .base import Adapter, ProviderConfig, SSEEvent, StreamTranslator, UpstreamRequest
from .openai_compat import OpenAICompatAdapter

_ADAPTERS: dict[str, Adapter] = {"openai": OpenAICompatAdapter()}


def register_adapter(name: str, adapter: Adapter) -> None:
    _ADAPTERS[name] = adapter


def get_adapter(provider: ProviderConfig) -> Adapter:
    """The adapter for a provider: its own (quirks) if one is registered by name, else its wire format's."""
    adapter = _ADAPTERS.get(provider.name) or _ADAPTERS.get(provider.wire)
    if adapter is None:
        raise KeyError(f"no adapter for wire format {provider.wire!r}")
    return adapter


__all__ = [
    "Adapter", "OpenAICompatAdapter", "ProviderConfig", "SSEEvent", "StreamTranslator", "UpstreamRequest",
    "get_adapter", "register_adapter",
]
