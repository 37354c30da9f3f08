"""Provider adapters, one per wire format, chosen by the provider's ``wire`` setting.

A provider's own adapter (registered under its name, for quirks: ``deepseek``, ``mistral``, ``together``…)
wins over its wire format's (``openai``, ``anthropic``, ``gemini``, ``cohere``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..catalog import Model
from .anthropic import AnthropicAdapter
from .base import Adapter, ProviderConfig, SSEEvent, StreamTranslator, UpstreamRequest
from .cohere import CohereAdapter
from .gemini import GeminiAdapter
from .openai_compat import OpenAICompatAdapter
from .quirks import DeepSeekAdapter, LlamaHostAdapter, MistralAdapter, OpenAIAdapter

_ADAPTERS: dict[str, Adapter] = {
    # wire formats (OpenAIAdapter only adds o-series rules keyed on the model name, harmless elsewhere)
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "cohere": CohereAdapter(),
    # providers with quirks
    "deepseek": DeepSeekAdapter(),
    "mistral": MistralAdapter(),
    "together": LlamaHostAdapter("together"),
    "fireworks": LlamaHostAdapter("fireworks"),
    "deepinfra": LlamaHostAdapter("deepinfra"),
}


def register_adapter(name: str, adapter: Adapter) -> None:
    _ADAPTERS[name] = adapter


def get_adapter(provider: ProviderConfig) -> Adapter:
    """The adapter for a provider: its own (quirks) if one is registered by name, else its wire format's."""
    adapter = _ADAPTERS.get(provider.name) or _ADAPTERS.get(provider.wire)
    if adapter is None:
        raise KeyError(f"no adapter for wire format {provider.wire!r}")
    return adapter


def family_adapters() -> list[tuple[str, Adapter, Callable[[Model], Model] | None]]:
    """The families shown in the parameter table: (label, adapter, how to make a model of that family)."""
    def native(name: str) -> Callable[[Model], Model]:
        return lambda m: replace(m, native_model=name)

    return [
        ("OpenAI (GPT-4o)", _ADAPTERS["openai"], native("gpt-4o")),
        ("OpenAI o1-preview/mini", _ADAPTERS["openai"], native("o1-mini")),
        ("Anthropic", _ADAPTERS["anthropic"], None),
        ("Gemini", _ADAPTERS["gemini"], None),
        ("Cohere", _ADAPTERS["cohere"], None),
        ("Mistral", _ADAPTERS["mistral"], None),
        ("DeepSeek chat", _ADAPTERS["deepseek"], native("deepseek-chat")),
        ("DeepSeek reasoner", _ADAPTERS["deepseek"], lambda m: replace(m, native_model="deepseek-reasoner",
                                                                         reasoning=True)),
        ("Together/Fireworks/DeepInfra", _ADAPTERS["together"], None),
    ]


__all__ = [
    "Adapter", "AnthropicAdapter", "CohereAdapter", "DeepSeekAdapter", "GeminiAdapter", "LlamaHostAdapter",
    "MistralAdapter", "OpenAIAdapter", "OpenAICompatAdapter", "ProviderConfig", "SSEEvent", "StreamTranslator",
    "UpstreamRequest", "family_adapters", "get_adapter", "register_adapter",
]
