from decimal import Decimal

import pytest

from metarouter.catalog import default_catalog, matches, usd_per_mtok_to_pico
from metarouter.config import load_settings


def test_catalog_has_the_twenty_seed_models_with_exact_prices():
    c = default_catalog()
    assert len(c) == 20
    flash = c.get("google/gemini-flash-1.5")
    assert flash.input_pico == 75_000 and flash.output_pico == 300_000
    assert flash.cost_pico(1_000_000, 1_000_000) == 375 * 10**9  # $0.375 exactly
    r1 = c.get("deepseek/deepseek-r1")
    assert r1.reasoning and r1.hidden_reasoning_tokens == 800 and r1.native_model == "deepseek-reasoner"
    assert c.get("meta-llama/llama-3.1-70b-instruct").provider == "together"
    assert c.get("ANTHROPIC/Claude-3.5-Sonnet") is c.get("anthropic/claude-3.5-sonnet")


def test_price_conversion_is_exact_and_refuses_sub_picodollar():
    assert usd_per_mtok_to_pico("0.035") == 35_000
    assert usd_per_mtok_to_pico(Decimal("14.25")) == 14_250_000
    with pytest.raises(ValueError):
        usd_per_mtok_to_pico("0.0000001")


def test_wildcards():
    assert matches("anthropic/claude-3-opus", ["anthropic/*"])
    assert matches("anthropic/claude-3-opus", ["*/claude-*"])
    assert not matches("openai/gpt-4o-2024-08-06", ["anthropic/*", "*/claude-*"])
    ids = [m.id for m in default_catalog().select(["*/claude-*", "openai/*"], ["openai/o1-*"])]
    assert "openai/o1-mini-2024-09-12" not in ids and "anthropic/claude-2.1" in ids and len(ids) == 8


def test_config_file_overrides_providers_and_models(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "port: 9999\n"
        "providers:\n"
        "  openai: {base_url: 'http://127.0.0.1:9000/v1/', api_key_env: MY_KEY}\n"
        "  cohere: false\n"
        "models:\n"
        "  add:\n"
        "    local/tiny: {provider: openai, context_length: 4096, input_usd_per_1m: 0, output_usd_per_1m: 0}\n"
        "  remove: ['anthropic/claude-2.1']\n"
        "  openai/gpt-4o-2024-08-06: {input_usd_per_1m: 2.0}\n"
    )
    s = load_settings(cfg, env={"MY_KEY": "k"})
    assert s.port == 9999
    assert s.providers["openai"].base_url == "http://127.0.0.1:9000/v1" and s.providers["openai"].api_key == "k"
    assert s.provider_available("openai") and not s.provider_available("anthropic")
    assert "cohere" not in s.providers and s.catalog.get("cohere/command-r") is None
    assert s.catalog.get("anthropic/claude-2.1") is None
    assert s.catalog.get("local/tiny").native_model == "tiny"
    gpt = s.catalog.get("openai/gpt-4o-2024-08-06")
    assert gpt.input_pico == 2_000_000 and gpt.output_pico == 10_000_000


def test_toml_config_and_env(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[providers.openai]\nbase_url = "http://h/v1"\n')
    s = load_settings(cfg, env={"METAROUTER_DATABASE_URL": "postgresql://x/y", "OPENAI_API_KEY": "z"})
    assert s.db_url == "postgresql://x/y" and s.providers["openai"].api_key == "z"


def test_model_with_unknown_provider_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  add:\n    x/y: {provider: nowhere, context_length: 1, input_usd_per_1m: 1, "
                   "output_usd_per_1m: 1}\n")
    with pytest.raises(ValueError, match="nowhere"):
        load_settings(cfg, env={})
