"""One ``ProviderSpec`` per provider: every other table of provider facts is derived from ``PROVIDERS``."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from metarouter.catalog import default_catalog
from metarouter.catalog.providers import PROVIDERS, WIRES, ProviderSpec, default_providers, provider_display, \
    provider_wire
from metarouter.config import ProviderConfig, load_settings
from metarouter.providers import WIRE_ADAPTERS, LlamaHostAdapter, adapter_for, get_adapter
from metarouter.testing.fake_providers import HANDLERS
from metarouter.testing.fake_upstream import FAKE_KEYS_ENV, FakeUpstream, demo_providers, provider_config_for

SPECS = list(PROVIDERS.values())


def test_the_table_lists_every_provider_once_with_a_known_wire_format():
    assert [s.name for s in SPECS] == ["openai", "anthropic", "google", "mistral", "deepseek", "cohere", "together",
                                       "fireworks", "deepinfra"]
    assert all(s.wire in WIRES and s.display for s in SPECS)
    assert set(WIRE_ADAPTERS) == set(WIRES)
    assert {m.provider for m in default_catalog()} <= set(PROVIDERS)  # the catalog names only listed providers
    assert list(load_settings(env={}).providers) == [s.name for s in default_providers()]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_each_table_is_derived_from_the_spec(spec: ProviderSpec):
    settings = load_settings(env={spec.key_env: "k"} if spec.key_env else {})
    if spec.base_url is None:  # configured only when the config file says where
        assert spec.name not in settings.providers
        settings = load_settings(env={}, overrides={"providers": {spec.name: {"base_url": "http://h/v1"}}})
    p = settings.providers[spec.name]
    assert (p.base_url, p.api_key_env, p.wire) == (spec.base_url or "http://h/v1", spec.key_env, spec.wire)
    assert p.api_key == ("k" if spec.key_env else None)
    assert provider_wire(spec.name) == spec.wire and provider_display(spec.name) == spec.display
    adapter = get_adapter(p)
    assert adapter is adapter_for(spec.name) and adapter.wire == spec.wire
    if spec.adapter is None:
        assert adapter is WIRE_ADAPTERS[spec.wire]
    else:
        assert type(adapter).__name__ == spec.adapter.partition(":")[2]
    fake = FakeUpstream(HANDLERS)
    assert spec.name in fake.handlers or spec.base_url is None  # a fake speaks every default provider's format
    fakes = provider_config_for(fake)
    if spec.base_url is not None:
        url = fakes[spec.name]["base_url"]
        assert url == fake.url + "/" + spec.name + urlsplit(spec.base_url).path.rstrip("/")
        assert FAKE_KEYS_ENV[fakes[spec.name]["api_key_env"]]
    else:
        assert spec.name not in fakes


def test_adding_a_provider_is_one_entry(monkeypatch):
    monkeypatch.setitem(PROVIDERS, "acme", ProviderSpec("acme", "anthropic", "Acme AI", "https://api.acme.test/v2",
                                                         "ACME_API_KEY"))
    monkeypatch.setitem(PROVIDERS, "llamas", ProviderSpec("llamas", "openai", "Llamas", "https://llamas.test/v1",
                                                           adapter="quirks:LlamaHostAdapter"))
    settings = load_settings(env={"ACME_API_KEY": "sk-acme"})
    acme = settings.providers["acme"]
    assert (acme.base_url, acme.api_key, acme.wire) == ("https://api.acme.test/v2", "sk-acme", "anthropic")
    assert get_adapter(acme) is WIRE_ADAPTERS["anthropic"] and provider_display("acme") == "Acme AI"
    assert isinstance(get_adapter(settings.providers["llamas"]), LlamaHostAdapter)
    fake = FakeUpstream(HANDLERS)
    assert fake.handlers["llamas"] is fake.handlers["openai"]
    assert provider_config_for(fake)["acme"]["base_url"] == fake.url + "/acme/v2"
    demo = demo_providers(fake, settings.providers)
    assert demo["acme"]["base_url"] == fake.url + "/acme/v2" and demo["acme"]["wire"] == "anthropic"


def test_a_spec_names_a_known_wire_format():
    with pytest.raises(ValueError, match="unknown wire format 'soap'"):
        ProviderSpec("acme", "soap", "Acme")


def test_an_unlisted_provider_takes_its_wire_formats_adapter_and_its_own_name():
    p = ProviderConfig(name="local", base_url="http://127.0.0.1:1/v1beta", wire="gemini")
    assert get_adapter(p) is WIRE_ADAPTERS["gemini"]
    assert provider_display("local") == "local" and provider_wire("local") == "openai"
    with pytest.raises(KeyError, match="no adapter for wire format 'soap'"):
        get_adapter(ProviderConfig(name="local", base_url="http://x", wire="soap"))
