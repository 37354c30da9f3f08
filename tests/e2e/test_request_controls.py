"""Capabilities, ``provider.require_parameters`` and reasoning exclusion, end to end."""

from __future__ import annotations

import httpx

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
                                                   "AAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="}}


def post(gateway, body):
    return httpx.post(f"{gateway.url}/api/v1/chat/completions", headers={"Authorization": f"Bearer {gateway.api_key}"},
                      json=body, timeout=30)


def test_image_to_a_text_only_model_is_404_and_not_sent(gateway, fake):
    r = post(gateway, {"model": "mistralai/mistral-nemo",
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]})
    assert r.status_code == 404 and "image input" in r.json()["error"]["message"]
    assert fake.requests == []
    # with a vision-capable fallback in `models`, that one answers
    r = post(gateway, {"model": "mistralai/mistral-nemo", "models": ["openai/gpt-4o-mini-2024-07-18"],
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]})
    assert r.status_code == 200 and r.json()["model"] == "openai/gpt-4o-mini-2024-07-18"


def test_tools_to_a_model_without_tools_is_404(gateway, fake):
    r = post(gateway, {"model": "openai/chatgpt-4o-latest", "messages": [{"role": "user", "content": "x"}],
                       "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
    assert r.status_code == 404 and "tool use" in r.json()["error"]["message"]
    assert fake.requests == []


def test_require_parameters_rejects_what_the_model_would_drop(gateway, fake):
    body = {"model": "openai/o1-mini-2024-09-12", "temperature": 0.3,
            "messages": [{"role": "user", "content": "hi"}]}
    r = post(gateway, body)
    assert r.status_code == 200  # dropped silently by default
    assert "temperature" not in fake.requests_for("openai")[-1].body
    r = post(gateway, {**body, "provider": {"require_parameters": True}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "temperature" in err["message"] and err["metadata"]["unsupported"] == ["temperature"]
    r = post(gateway, {**body, "temperature": None, "provider": {"require_parameters": True}})
    assert r.status_code == 200


def test_reasoning_is_returned_and_can_be_excluded(gateway):
    body = {"model": "deepseek/deepseek-r1", "messages": [{"role": "user", "content": "think about 2+2"}]}
    r = post(gateway, body)
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    assert msg.get("reasoning")
    r = post(gateway, {**body, "reasoning": {"exclude": True}})
    assert "reasoning" not in r.json()["choices"][0]["message"]
    with httpx.stream("POST", f"{gateway.url}/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {gateway.api_key}"},
                      json={**body, "stream": True, "include_reasoning": False}) as s:
        text = "".join(s.iter_text())
    assert '"reasoning"' not in text and "data: [DONE]" in text
