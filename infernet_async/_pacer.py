"""``Pacer``: the caller's own cap on how fast a fan-out submits (``gather(rate=, burst=)``), a
token bucket. The server's budget is the shared ``RateLimiter``'s (``_ratelimit``); this is for a
caller who must stay under a rate of their own whatever the budget allows.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

__all__ = ["Pacer"]


class Pacer:
    """The caller's own cap: at most ``rate`` requests a second, ``burst`` of them back to back
    (a token bucket). The server's budget is the ``RateLimiter``'s; this is for a caller who must
    stay under a rate of their own whatever the budget allows.

    Args:
        rate: requests per second (``60 / 60`` is one a second; ``gather(rate=)`` takes it so).
        burst: how many may go at once after a quiet spell (at least 1).
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self, rate: float, *, burst: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError("rate must be a positive number of requests per second")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def reserve(self) -> float:
        """Take one request's token now (0.0), or say how many seconds until one is due."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def wait(self) -> None:
        """Wait until a request may go, and take its token."""
        while True:
            delay = self.reserve()
            if delay <= 0.0:
                return
            await asyncio.sleep(delay)
