from decimal import Decimal

import pytest

from metarouter.catalog import default_catalog, matches, usd_per_mtok_to_pico
from metarouter.config import load_settings
from metarouter.gateway.accounting import worst_case_pico


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


def test_prompt_cache_prices_are_exact_and_billed_at_their_rates():
    c = default_catalog()
    sonnet, gpt4o, r1 = c.get("anthropic/claude-3.5-sonnet"), c.get("openai/gpt-4o-2024-08-06"), c.get("deepseek/deepseek-r1")
    # the providers' published rates: Anthropic read 0.1x / write 1.25x input, OpenAI cached 0.5x, DeepSeek cache hit
    assert (sonnet.input_pico, sonnet.cache_read_pico, sonnet.cache_write_pico) == (3_000_000, 300_000, 3_750_000)
    assert (gpt4o.cache_read_pico, gpt4o.cache_write_pico) == (1_250_000, None)
    assert r1.cache_read_pico == 140_000 and c.get("google/gemini-flash-1.5").cache_read_pico == 18_750
    # 1000 prompt tokens of which 600 read from the cache and 300 written to it, 10 output tokens
    assert sonnet.cost_parts_pico(1000, 10, cached_tokens=600, cache_write_tokens=300) == (
        100 * 3_000_000 + 600 * 300_000 + 300 * 3_750_000, 10 * 15_000_000)
    assert gpt4o.cost_pico(1000, 10, cached_tokens=600) == 400 * 2_500_000 + 600 * 1_250_000 + 10 * 10_000_000
    assert r1.cost_pico(1000, 0, cached_tokens=1000) == 1000 * 140_000
    nemo = c.get("mistralai/mistral-nemo")  # no cache price: cached tokens cost what input costs
    assert nemo.cache_read_pico is None and nemo.cost_pico(100, 0, cached_tokens=50) == nemo.cost_pico(100, 0)
    # a cache write costs more than input: the worst case a budget holds uses the highest prompt rate
    assert sonnet.worst_prompt_pico == 3_750_000 and gpt4o.worst_prompt_pico == gpt4o.input_pico
    assert worst_case_pico(sonnet, 1000, 10) == 1000 * 3_750_000 + 10 * 15_000_000


def test_config_models_declare_cache_prices(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  add:\n    x/cached: {provider: openai, context_length: 1000, input_usd_per_1m: 1,\n"
                   "               output_usd_per_1m: 2, cache_read_usd_per_1m: 0.1, reasoning_control: true}\n"
                   "  anthropic/claude-3.5-sonnet: {cache_write_usd_per_1m: null}\n")
    cat = load_settings(str(cfg)).catalog
    m = cat.get("x/cached")
    assert m.cache_read_pico == 100_000 and m.cache_write_pico is None and m.reasoning_control
    assert cat.get("anthropic/claude-3.5-sonnet").cache_write_pico is None


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
