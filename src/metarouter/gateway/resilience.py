"""Upstream resilience: a circuit breaker per provider, and retries with jittered backoff."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from ..errors import GatewayError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class ResilienceSettings:
    retries: int = 2  # extra tries of the last remaining candidate on a retryable error
    backoff_base: float = 0.25  # seconds; full jitter: sleep U(0, base * 2**attempt), capped
    backoff_max: float = 4.0
    breaker_failures: int = 5  # consecutive failures that open a provider's circuit
    breaker_cooldown: float = 30.0  # seconds an open circuit refuses before one probe is let through


def counts_against_provider(err: GatewayError) -> bool:
    """Failures that say the provider is unwell (not that our request was bad)."""
    return err.status in (408, 429, 500, 502, 503, 504)


class CircuitBreaker:
    """Closed → (``failures`` consecutive provider failures) → open → (cool-down) → half-open: one probe; its
    success closes the circuit, its failure opens it again."""

    def __init__(self, failures: int, cooldown: float, clock=time.monotonic):
        self.failures_to_open = failures
        self.cooldown = cooldown
        self.clock = clock
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self._probe_out = False
        self.opened_count = 0

    def allow(self) -> bool:
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() - self.opened_at < self.cooldown:
                return False
            self.state = HALF_OPEN
            self._probe_out = False
        if self._probe_out:  # half-open: one probe at a time
            return False
        self._probe_out = True
        return True

    def success(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self._probe_out = False

    def failure(self) -> None:
        self._probe_out = False
        if self.state == HALF_OPEN:
            self._open()
            return
        self.consecutive += 1
        if self.consecutive >= self.failures_to_open:
            self._open()

    def _open(self) -> None:
        self.state = OPEN
        self.opened_at = self.clock()
        self.opened_count += 1

    def retry_after(self) -> float:
        return max(0.0, self.cooldown - (self.clock() - self.opened_at)) if self.state == OPEN else 0.0


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff; an upstream's Retry-After (when shorter than the cap) wins."""
    if retry_after is not None and 0 <= retry_after <= cap:
        return retry_after
    return random.uniform(0, min(cap, base * (2 ** attempt)))
