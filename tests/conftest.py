"""Shared fixtures: one fake upstream for every provider, and the real gateway as a subprocess in front of it."""

from __future__ import annotations

import pytest

from metarouter.testing.fake_upstream import FAKE_KEYS_ENV, FakeUpstream, provider_config_for
from metarouter.testing.gateway_process import GatewayProcess


def _family_handlers() -> dict:
    try:
        from metarouter.testing.fake_providers import HANDLERS  # the non-OpenAI families
    except ImportError:
        return {}
    return dict(HANDLERS)


@pytest.fixture(scope="session")
def fake():
    with FakeUpstream(_family_handlers()) as f:
        yield f


@pytest.fixture(autouse=True)
def _reset_fake(request):
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()
    yield


def gateway_config(fake: FakeUpstream, **extra) -> dict:
    cfg = {
        "providers": provider_config_for(fake),
        "stream_commit_after": 0.3,
        "keepalive_interval": 0.3,
        "auth_cache_ttl": 0.5,
        "timeouts": {"connect": 2, "first_byte": 5, "total": 30},
        # fast retries, and a breaker that a shared test server never trips (tests of it start their own)
        "resilience": {"retries": 2, "backoff_base": 0.01, "backoff_max": 0.05, "breaker_failures": 10_000},
        "image_fetch": {"allow_private": True},  # image URLs served by the fake, on 127.0.0.1
    }
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="session")
def gateway(fake, tmp_path_factory):
    """The real server (``metarouter serve``) with every provider pointed at the fake upstream."""
    data_dir = tmp_path_factory.mktemp("gateway")
    with GatewayProcess(gateway_config(fake), data_dir, env=FAKE_KEYS_ENV) as gw:
        gw.api_key = gw.create_key("e2e")
        yield gw
