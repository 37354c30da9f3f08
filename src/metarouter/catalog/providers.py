"""The providers: one :class:`ProviderSpec` each, the only place a provider's facts are written down.

Everything else is derived from :data:`PROVIDERS`: the default ``providers:`` settings (``config.py``), the wire
format of a provider the config names without one, the display name in records and metadata
(``gateway/pipeline.py``), the adapter (``providers/__init__.py``) and the fake upstreams' base URLs and keys
(``testing/fake_upstream.py``). Adding a provider is one entry here, plus its adapter when it has quirks.

This module sits below the adapters (it imports nothing of the project): a provider's own adapter is named by
where it lives and is imported when first used.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the wire formats an adapter exists for (``providers/__init__.py`` maps each to its reference adapter)
WIRES = ("openai", "anthropic", "gemini", "cohere")


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str  # what the catalog's ``provider`` column and the config's ``providers:`` keys say
    wire: str  # one of WIRES
    display: str  # how records, metadata and ``/generation`` name it
    #: where it is served; None: it is not configured unless the config file gives a ``base_url``
    base_url: str | None = None
    key_env: str | None = None  # the environment variable holding its API key
    #: ``module:Class`` (in ``metarouter.providers``) of its own adapter, for quirks; None: its wire format's
    adapter: str | None = None

    def __post_init__(self) -> None:
        if self.wire not in WIRES:
            raise ValueError(f"provider {self.name!r}: unknown wire format {self.wire!r} (one of {', '.join(WIRES)})")


PROVIDERS: dict[str, ProviderSpec] = {s.name: s for s in (
    ProviderSpec("openai", "openai", "OpenAI", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    ProviderSpec("anthropic", "anthropic", "Anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    ProviderSpec("google", "gemini", "Google", "https://generativelanguage.googleapis.com/v1beta", "GEMINI_API_KEY"),
    ProviderSpec("mistral", "openai", "Mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY",
                 adapter="quirks:MistralAdapter"),
    ProviderSpec("deepseek", "openai", "DeepSeek", "https://api.deepseek.com", "DEEPSEEK_API_KEY",
                 adapter="quirks:DeepSeekAdapter"),
    ProviderSpec("cohere", "cohere", "Cohere", "https://api.cohere.com", "COHERE_API_KEY"),
    ProviderSpec("together", "openai", "Together", "https://api.together.xyz/v1", "TOGETHER_API_KEY",
                 adapter="quirks:LlamaHostAdapter"),
    ProviderSpec("fireworks", "openai", "Fireworks", adapter="quirks:LlamaHostAdapter"),
    ProviderSpec("deepinfra", "openai", "DeepInfra", adapter="quirks:LlamaHostAdapter"),
)}


def default_providers() -> list[ProviderSpec]:
    """The providers configured when the config file says nothing of them: those with a default base URL."""
    return [s for s in PROVIDERS.values() if s.base_url is not None]


def provider_wire(name: str) -> str:
    """The wire format of the provider ``name`` (OpenAI's for one not listed)."""
    spec = PROVIDERS.get(name)
    return spec.wire if spec is not None else "openai"


def provider_display(name: str) -> str:
    """How records and metadata name the provider ``name`` (its own name when not listed)."""
    spec = PROVIDERS.get(name)
    return spec.display if spec is not None else name


__all__ = ["PROVIDERS", "WIRES", "ProviderSpec", "default_providers", "provider_display", "provider_wire"]
