"""Parameter support: the require_parameters check, every catalog model's request, the generated docs table."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import orjson
import pytest

from metarouter.catalog import default_catalog
from metarouter.catalog.providers import provider_wire
from metarouter.providers import ProviderConfig, get_adapter
from metarouter.providers.params import check_parameters, markdown

CAT = default_catalog()
ROOT = pathlib.Path(__file__).resolve().parents[2]


def adapter_for(model):
    return get_adapter(ProviderConfig(name=model.provider, base_url="http://upstream", wire=provider_wire(model.provider)))


def test_check_parameters_lists_only_unsupported_present_params() -> None:
    sonnet = CAT.get("anthropic/claude-3.5-sonnet")
    body = {"model": "anthropic/claude-3.5-sonnet", "messages": [], "stream": True, "provider": {"order": []},
            "models": ["x"], "temperature": 0.5, "seed": 1, "logit_bias": {"1": 1}, "top_k": None,
            "stream_options": {"include_usage": True}}
    assert check_parameters(body, adapter_for(sonnet), sonnet) == ["logit_bias", "seed"]
    r1 = CAT.get("deepseek/deepseek-r1")
    assert check_parameters({"messages": [], "temperature": 1, "max_tokens": 5}, adapter_for(r1), r1) == ["temperature"]
    tools = {"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}
    claude2 = CAT.get("anthropic/claude-2.1")
    assert check_parameters(tools, adapter_for(claude2), claude2) == ["tool_choice", "tools"]
    assert check_parameters(tools, adapter_for(sonnet), sonnet) == []


@pytest.mark.parametrize("model_id", CAT.ids())
def test_every_catalog_model_builds_a_request(model_id: str) -> None:
    """The same OpenAI-format request goes to every model; only supported parameters reach the upstream."""
    model = CAT.get(model_id)
    adapter = adapter_for(model)
    body = {"model": model_id, "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Say hi"}],
            "temperature": 0.5, "max_tokens": 50, "stop": ["\n\n"], "seed": 3, "provider": {"sort": "price"}}
    for stream in (False, True):
        req = adapter.build_request(body, model, ProviderConfig(name=model.provider, base_url="http://upstream",
                                                                 api_key="k", wire=adapter.wire), stream=stream)
        sent = orjson.loads(req.body)
        assert req.url.startswith("http://upstream")
        assert "provider" not in sent and "Say hi" in req.body.decode()
        unsupported = set(check_parameters(body, adapter, model))
        for name in unsupported:
            assert name not in sent
    assert isinstance(adapter.supported_parameters(model), list)


def test_docs_table_is_generated() -> None:
    committed = (ROOT / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert committed == markdown(), "docs/parameters.md is stale: python -m metarouter.providers.params --markdown"
    assert "| `temperature` |" in committed and "→ random_seed" in committed


def test_docs_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "metarouter.providers.params", "--markdown"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert out.stdout == markdown() and "RuntimeWarning" not in out.stderr
