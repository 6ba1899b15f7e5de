"""Rate limits in fixed windows: a window opens with its first request and resets when its
length has passed.

- ``RateLimiter``: the jobs API's per-token limits, a minute and an hour, as the API reference
  describes. ``X-RateLimit-Limit`` is the per-minute limit; ``Remaining`` and ``Reset`` describe
  whichever window runs out first.
- ``WindowCounter``: one window per key (the anonymous per-IP-per-route hour of the hosted routes,
  a resale key's second).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["AnonymousLimiter", "Decision", "RateLimiter", "WindowCounter"]


@dataclass(slots=True)
class _Window:
    length: float
    limit: int
    start: float = 0.0
    count: int = 0

    def roll(self, now: float) -> None:
        if now >= self.start + self.length:
            self.start, self.count = now, 0

    @property
    def reset(self) -> float:
        return self.start + self.length


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset)),
        }

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.reset - now))


class RateLimiter:
    """Counts requests per token index; ``check`` both decides and counts."""

    def __init__(
        self, per_minute: int, per_hour: int, clock: Callable[[], float] = time.time
    ) -> None:
        if per_minute < 1 or per_hour < 1:
            raise ValueError("rate limits must be >= 1")
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.clock = clock
        self._windows: dict[int, tuple[_Window, _Window]] = {}

    def check(self, token_index: int) -> Decision:
        now = self.clock()
        windows = self._windows.get(token_index)
        if windows is None:
            windows = (_Window(60.0, self.per_minute), _Window(3600.0, self.per_hour))
            self._windows[token_index] = windows
        for window in windows:
            window.roll(now)
        blocked = [w for w in windows if w.count >= w.limit]
        if blocked:
            binding = max(blocked, key=lambda w: w.reset)
            return Decision(False, self.per_minute, 0, binding.reset)
        for window in windows:
            window.count += 1
        binding = min(windows, key=lambda w: (w.limit - w.count, w.reset))
        return Decision(True, self.per_minute, binding.limit - binding.count, binding.reset)

    def reset(self) -> None:
        self._windows.clear()


class WindowCounter:
    """One fixed window of ``length`` seconds per key; ``hit`` both decides and counts.

    Windows that have ended are dropped once they outnumber ``max_keys``, so memory stays bounded
    however many clients come by.
    """

    def __init__(
        self,
        limit: int,
        length: float,
        clock: Callable[[], float] = time.time,
        max_keys: int = 10_000,
    ) -> None:
        if limit < 1:
            raise ValueError("rate limits must be >= 1")
        self.limit = limit
        self.length = length
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[Hashable, _Window] = {}

    def hit(self, key: Hashable) -> Decision:
        now = self.clock()
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_keys:
                self._windows = {k: w for k, w in self._windows.items() if now < w.reset}
            window = self._windows[key] = _Window(self.length, self.limit)
        window.roll(now)
        if window.count >= self.limit:
            return Decision(False, self.limit, 0, window.reset)
        window.count += 1
        return Decision(True, self.limit, self.limit - window.count, window.reset)

    def reset(self) -> None:
        self._windows.clear()


class AnonymousLimiter:
    """The hosted routes' limit without a key: ``per_hour`` requests per client IP per route
    (``None``: unlimited)."""

    def __init__(self, per_hour: int | None, clock: Callable[[], float] = time.time) -> None:
        if per_hour is not None and per_hour < 1:
            raise ValueError("anonymous_rate_limit_per_hour must be >= 1 (or None for no limit)")
        self.per_hour = per_hour
        self._counter = None if per_hour is None else WindowCounter(per_hour, 3600.0, clock)

    def check(self, client: str, route: str) -> Decision | None:
        """The decision for one request (counted when allowed), or ``None`` when unlimited."""
        return None if self._counter is None else self._counter.hit((client, route))

    def reset(self) -> None:
        if self._counter is not None:
            self._counter.reset()
