"""``metarouter serve --demo``: the README's first commands work with no provider key and no network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import httpx
import openai
import pytest

from metarouter.catalog.providers import default_providers
from metarouter.testing.fake_upstream import FAKE_KEYS_ENV
from metarouter.testing.gateway_process import free_port


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in FAKE_KEYS_ENV and k not in {p.key_env for p in default_providers()}
           and not k.startswith("METAROUTER_")}
    log_path = data_dir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "metarouter.cli", "serve", "--demo", "--port", str(port),
                                 "--data-dir", str(data_dir), "--log-level", "warning"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                try:
                    with urllib.request.urlopen(url + "/ready", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.1)
            banner = log_path.read_text()
            key = re.search(r"demo API key[^:]*: (sk-mr-\S+)", banner).group(1)
            yield url, key, banner
        finally:
            proc.terminate()  # uvicorn shuts down, then re-raises the SIGTERM it caught
            assert proc.wait(30) in (0, -15), log_path.read_text()


def test_the_banner_says_it_is_a_demo(demo):
    _, key, banner = demo
    assert "DEMO MODE" in banner and "no provider is called" in banner and key in banner
    assert f"/activity#key={key}" in banner


def test_an_auto_request_with_the_openai_sdk(demo):
    url, key, _ = demo
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    r = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Hello!"}],
        extra_headers={"X-OpenRouter-Metadata": "enabled"})
    assert r.status_code == 200
    c = r.parse()
    assert c.model and c.model != "auto" and "/" in c.model
    assert c.choices[0].message.content.startswith("[fake ") and "You said: Hello!" in c.choices[0].message.content
    assert c.model_extra["openrouter_metadata"]["selected"] == c.model
    rows = httpx.get(url + "/api/v1/activity/generations", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert c.id in [row["id"] for row in rows]
    assert httpx.get(url + "/activity").status_code == 200


@pytest.mark.parametrize("model", ["anthropic/claude-3.5-sonnet", "google/gemini-flash-1.5", "cohere/command-r",
                                   "mistralai/mistral-nemo", "deepseek/deepseek-r1", "meta-llama/llama-3.1-70b-instruct"])
def test_every_provider_answers_from_its_fake(demo, model):
    url, key, _ = demo
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
    provider = model.split("/")[0].replace("mistralai", "mistral").replace("meta-llama", "together")
    assert text == f"[fake {provider} answer: metarouter serve --demo] You said: hi"


def test_the_fakes_run_on_their_own_and_print_each_base_url():
    """``python -m metarouter.testing``, as the README says: each provider's base URL, and they answer there."""
    proc = subprocess.Popen([sys.executable, "-m", "metarouter.testing", "--port", "0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(8)]
        urls = dict(line.split() for line in lines[1:])
        assert set(urls) == {p.name for p in default_providers()}
        r = httpx.post(urls["openai"] + "/chat/completions", headers={"Authorization": "Bearer x"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert r.json()["choices"][0]["message"]["content"] == "You said: hi"
        r = httpx.post(urls["anthropic"] + "/v1/messages", headers={"x-api-key": "x", "anthropic-version": "2023-06-01"},
                       json={"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        assert r.json()["content"][0]["text"] == "You said: hi"
    finally:
        proc.terminate()
        proc.wait(10)
