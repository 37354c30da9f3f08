"""Provider adapters, one per wire format; a provider with quirks has its own, named in its ``ProviderSpec``.

A provider's own adapter (``catalog/providers.py``: DeepSeek, Mistral, the Llama hosts) wins over its wire format's
(``openai``, ``anthropic``, ``gemini``, ``cohere``), which serves every other provider of that format.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import replace

from ..catalog import Model
from ..catalog.providers import PROVIDERS
from .anthropic import AnthropicAdapter
from .base import Adapter, ProviderConfig, SSEEvent, StreamTranslator, UpstreamRequest
from .cohere import CohereAdapter
from .gemini import GeminiAdapter
from .openai_compat import OpenAICompatAdapter
from .quirks import DeepSeekAdapter, LlamaHostAdapter, MistralAdapter, OpenAIAdapter

#: each wire format's reference adapter, one for each of ``catalog.providers.WIRES`` (OpenAIAdapter only adds
#: o-series rules keyed on the model name, harmless for other OpenAI-compatible upstreams)
WIRE_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(), "anthropic": AnthropicAdapter(), "gemini": GeminiAdapter(), "cohere": CohereAdapter(),
}


@functools.cache
def _own_adapter(path: str) -> Adapter:
    """The adapter a spec names as ``module:Class`` (one instance per class)."""
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)()


def get_adapter(provider: ProviderConfig) -> Adapter:
    """The adapter for a provider: its own (quirks) if its spec names one, else its wire format's."""
    spec = PROVIDERS.get(provider.name)
    if spec is not None and spec.adapter is not None:
        return _own_adapter(spec.adapter)
    adapter = WIRE_ADAPTERS.get(provider.wire)
    if adapter is None:
        raise KeyError(f"no adapter for wire format {provider.wire!r}")
    return adapter


def adapter_for(name: str) -> Adapter:
    """The adapter of the listed provider ``name``."""
    spec = PROVIDERS[name]
    return get_adapter(ProviderConfig(name=name, base_url=spec.base_url or "", wire=spec.wire))


def family_adapters() -> list[tuple[str, Adapter, Callable[[Model], Model] | None]]:
    """The families shown in the parameter table: (label, adapter, how to make a model of that family)."""
    def native(name: str) -> Callable[[Model], Model]:
        return lambda m: replace(m, native_model=name)

    return [
        ("OpenAI (GPT-4o)", adapter_for("openai"), native("gpt-4o")),
        ("OpenAI o1-preview/mini", adapter_for("openai"), native("o1-mini")),
        ("Anthropic", adapter_for("anthropic"), None),
        ("Gemini", adapter_for("google"), None),
        ("Cohere", adapter_for("cohere"), None),
        ("Mistral", adapter_for("mistral"), None),
        ("DeepSeek chat", adapter_for("deepseek"), native("deepseek-chat")),
        ("DeepSeek reasoner", adapter_for("deepseek"), lambda m: replace(m, native_model="deepseek-reasoner",
                                                                           reasoning=True)),
        ("Together/Fireworks/DeepInfra", adapter_for("together"), None),
    ]


__all__ = [
    "Adapter", "AnthropicAdapter", "CohereAdapter", "DeepSeekAdapter", "GeminiAdapter", "LlamaHostAdapter",
    "MistralAdapter", "OpenAIAdapter", "OpenAICompatAdapter", "ProviderConfig", "SSEEvent", "StreamTranslator",
    "UpstreamRequest", "WIRE_ADAPTERS", "adapter_for", "family_adapters", "get_adapter",
]
