"""Per-token rate limits: fixed windows of a minute and an hour, as the API reference describes.

A window opens with its first request and resets when its length has passed. ``X-RateLimit-Limit``
is the per-minute limit; ``Remaining`` and ``Reset`` describe whichever window runs out first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "RateLimiter"]


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
