"""Logging helpers shared by the gateway's optional backends."""

from __future__ import annotations

import logging
import time


class ThrottledWarning:
    """A warning about an unavailable backend, logged at most once per ``interval`` seconds: during an outage
    every request would otherwise log it. Call it with the exception that showed the outage."""

    def __init__(self, logger: logging.Logger, message: str, interval: float = 30.0):
        self.logger, self.message, self.interval = logger, message, interval
        self._last = float("-inf")

    def __call__(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last > self.interval:
            self._last = now
            self.logger.warning(self.message, type(exc).__name__)
