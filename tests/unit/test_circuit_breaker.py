"""The circuit breaker's states on a hand-driven clock: every path out of half-open, including a probe that never
reports."""

from __future__ import annotations

from metarouter.errors import GatewayError
from metarouter.gateway.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def breaker(failures: int = 2, cooldown: float = 10.0):
    now = [0.0]
    return CircuitBreaker(failures, cooldown, clock=lambda: now[0]), now


def test_opens_after_failed_requests_in_a_row_and_a_success_resets_the_count():
    b, _ = breaker(failures=2)
    b.failure()
    b.success()
    b.failure()
    assert b.state == CLOSED and b.allow()
    err = GatewayError(502, "openai: boom")
    b.failure(err)
    assert b.state == OPEN and not b.allow() and b.last_error is err and b.retry_after() == 10.0


def test_half_open_lets_one_probe_through_and_its_verdict_decides():
    b, now = breaker()
    b.failure(), b.failure()
    now[0] = 10.0
    assert b.allow() and b.state == HALF_OPEN
    assert not b.allow()  # one probe at a time
    b.failure()
    assert b.state == OPEN and b.opened_count == 2
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow() and b.allow()


def test_a_released_probe_hands_the_slot_to_the_next_request():
    b, now = breaker()
    b.failure(), b.failure()
    now[0] = 10.0
    assert b.allow()
    b.release(probe=True)  # the client went away before the upstream answered
    assert b.state == HALF_OPEN and b.allow()  # the next request probes at once
    b.release(probe=False)  # a request that was not the probe frees nothing
    assert not b.allow()


def test_a_probe_never_heard_of_is_presumed_lost_after_a_cool_down():
    b, now = breaker(cooldown=10.0)
    b.failure(), b.failure()
    now[0] = 10.0
    assert b.allow()  # this probe never reports
    now[0] = 15.0
    assert not b.allow() and b.retry_after() == 5.0
    now[0] = 20.0
    assert b.allow() and b.state == HALF_OPEN  # a new probe: the state moves on
    b.success()
    assert b.state == CLOSED
