"""Upstream resilience: a circuit breaker per model of each provider, and retries with jittered backoff."""

from __future__ import annotations

import random
import time

from ..errors import GatewayError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def counts_against_provider(err: GatewayError) -> bool:
    """Failures that say the provider is unwell (not that our request was bad)."""
    return err.status in (408, 429, 500, 502, 503, 504)


class CircuitBreaker:
    """Closed → (``failures`` failed requests in a row) → open → (cool-down) → half-open: one probe request; its
    success closes the circuit, its failure opens it again.

    It counts requests, not tries: a request reports once, after its retries (``success``, ``failure``), or
    ``release`` when it ended without a verdict (the client left, the request was cancelled, or the upstream
    refused the request itself). A released probe frees the slot for the next request, and a probe not heard of
    for a cool-down is presumed lost, so the circuit never stays half-open for want of a report."""

    def __init__(self, failures: int, cooldown: float, clock=time.monotonic):
        self.failures_to_open = failures
        self.cooldown = cooldown
        self.clock = clock
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probe_since: float | None = None  # when the half-open probe was let through; None: none is out
        self.opened_count = 0
        self.last_error: GatewayError | None = None  # the failure that counted last: what a refusal reports

    def allow(self) -> bool:
        """Whether a request may go to the upstream now. In half-open, the request let through is the probe
        (``state`` reads ``HALF_OPEN`` right after), and the others are refused until it reports."""
        if self.state == CLOSED:
            return True
        now = self.clock()
        if self.state == OPEN:
            if now - self.opened_at < self.cooldown:
                return False
            self.state = HALF_OPEN
            self.probe_since = None
        if self.probe_since is not None and now - self.probe_since < self.cooldown:
            return False  # one probe at a time
        self.probe_since = now
        return True

    def success(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.probe_since = None

    def failure(self, error: GatewayError | None = None) -> None:
        self.probe_since = None
        if error is not None:
            self.last_error = error
        if self.state == HALF_OPEN:
            self._open()
            return
        self.consecutive += 1
        if self.consecutive >= self.failures_to_open:
            self._open()

    def release(self, probe: bool) -> None:
        """A request admitted by ``allow`` ended without a verdict; if it was the probe, the next request probes."""
        if probe and self.state == HALF_OPEN:
            self.probe_since = None

    def _open(self) -> None:
        self.state = OPEN
        self.opened_at = self.clock()
        self.opened_count += 1

    def retry_after(self) -> float:
        """Seconds until a request may be let through again: the rest of the cool-down, or (half-open, a probe
        out) until the probe is presumed lost."""
        if self.state == OPEN:
            return max(0.0, self.cooldown - (self.clock() - self.opened_at))
        if self.state == HALF_OPEN and self.probe_since is not None:
            return max(0.0, self.cooldown - (self.clock() - self.probe_since))
        return 0.0


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff; an upstream's Retry-After (when shorter than the cap) wins."""
    if retry_after is not None and 0 <= retry_after <= cap:
        return retry_after
    return random.uniform(0, min(cap, base * (2 ** attempt)))
