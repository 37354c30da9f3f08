"""``n`` > 1: several choices where the provider supports it (OpenAI, Mistral, Together), each one's tokens billed;
a clear 400 naming the model and provider everywhere else, before anything is sent or held."""

from __future__ import annotations

import openai
import pytest

from metarouter.catalog import default_catalog
from metarouter.testing.fake_upstream import count_tokens

CAT = default_catalog()
SUPPORTED = {"openai": "openai/gpt-4o-mini-2024-07-18", "mistral": "mistralai/mistral-large-2407",
             "together": "meta-llama/llama-3.1-70b-instruct"}
REFUSED = {"anthropic": "anthropic/claude-3.5-sonnet", "google": "google/gemini-flash-1.5",
           "cohere": "cohere/command-r-plus", "deepseek": "deepseek/deepseek-r1", "openai": "openai/o1-mini-2024-09-12"}
MSG = [{"role": "user", "content": "name a colour"}]
EXPECTED = ["You said: name a colour", "You said: name a colour #2", "You said: name a colour #3"]


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.api_key, max_retries=0)



def expected_cost(model_id: str, prompt: int, completion: int) -> float:
    m = CAT.get(model_id)
    return (prompt * m.input_pico + completion * m.output_pico) / 1e12


@pytest.mark.parametrize("family", SUPPORTED)
def test_every_choice_is_returned_and_billed(client, gateway, fake, family):
    r = client.chat.completions.create(model=SUPPORTED[family], messages=MSG, n=3)
    assert fake.requests_for(family)[-1].body["n"] == 3
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == EXPECTED
    assert all(c.finish_reason == "stop" for c in r.choices)
    # the upstream's usage counts the prompt once and every choice's output; that is what is charged
    assert r.usage.completion_tokens == sum(count_tokens(t) for t in EXPECTED)
    cost = r.usage.model_extra["cost"]
    assert cost == pytest.approx(expected_cost(SUPPORTED[family], r.usage.prompt_tokens, r.usage.completion_tokens))
    g = gateway.generation(r.id)
    assert g["tokens_completion"] == r.usage.completion_tokens and g["total_cost"] == pytest.approx(cost)


@pytest.mark.parametrize("family", SUPPORTED)
def test_every_choice_streams(client, gateway, family):
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(model=SUPPORTED[family], messages=MSG, n=3, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        usage = chunk.usage or usage
        gen_id = chunk.id
    assert [texts[i] for i in range(3)] == EXPECTED and finish == {0: "stop", 1: "stop", 2: "stop"}
    assert usage.completion_tokens == sum(count_tokens(t) for t in EXPECTED)
    g = gateway.generation(gen_id)
    assert g["tokens_completion"] == usage.completion_tokens and g["streamed"] is True
    assert g["total_cost"] == pytest.approx(expected_cost(SUPPORTED[family], usage.prompt_tokens,
                                                          usage.completion_tokens))


@pytest.mark.parametrize("family", REFUSED)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_n_is_refused_where_the_provider_has_no_such_parameter(client, fake, family, stream):
    model = REFUSED[family]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=MSG, n=2, stream=stream)
    assert model in exc.value.message and f"provider {family}" in exc.value.message and "n > 1" in exc.value.message
    assert exc.value.body["metadata"]["param"] == "n"
    assert not fake.requests_for(family)  # nothing was sent
    assert client.chat.completions.create(model=model, messages=MSG, n=1).choices[0].message.content


def test_a_fallback_list_skips_the_models_without_n(client, fake):
    r = client.chat.completions.create(model="anthropic/claude-3.5-sonnet", messages=MSG, n=2,
                                       extra_body={"models": [SUPPORTED["openai"]]})
    assert r.model == SUPPORTED["openai"] and len(r.choices) == 2
    assert not fake.requests_for("anthropic")


def test_auto_with_n_answers_from_a_model_that_supports_it(client):
    r = client.chat.completions.create(model="auto", messages=MSG, n=2)
    assert CAT.get(r.model).provider in SUPPORTED and len(r.choices) == 2


def test_the_budget_hold_covers_every_choice(gateway):
    """A key whose limit pays for one choice of 1,000 tokens but not for three."""
    m = CAT.get(SUPPORTED["openai"])
    one = 1000 * m.output_pico / 1e12
    key = gateway.create_key("n-budget", limit=round(one * 2, 6))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model=m.id, messages=MSG, n=3, max_tokens=1000)
    assert exc.value.status_code == 402
    assert len(client.chat.completions.create(model=m.id, messages=MSG, n=1, max_tokens=1000).choices) == 1
