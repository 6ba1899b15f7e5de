"""The retry policy: the backoff schedule, server-requested waits, which failures may be retried,
and ``Retrier``, the one object every retry loop of the client asks (a request's, a stream's
reconnects and restarts, a fan-out job's resubmissions).

The decisions are pure: the clock and the random source are arguments, so every decision is a unit
test. The only IO is ``Retrier.sleep``, with the policy's injectable sleep.

Which submissions (``POST /jobs``) are retried. A retried POST must never create a second billed
job, so a POST is retried only when the failure proves the control plane did not create the job:

- ``429 rate_limited``: the rate limiter rejects the request before the job handler runs.
- ``503 no_capacity`` (the body's code, not just the status): the control plane found no node and
  created no job. A bare 503 (say, a proxy's page) proves nothing and is not retried for a POST.
- a connection that failed *before the request was sent*: DNS failure, connection refused, TLS
  handshake failure, connect timeout, no file descriptor for the socket
  (``APIConnectionError.request_sent is False``).

Never retried for a POST: ``500``/other 5xx (the job row may exist already), a reset, disconnect or
read timeout after the request went out (``request_sent`` true or unknown), and every 4xx other than
429. Those surface at once; the caller can look for the job with ``list_jobs(since=...)`` before
resubmitting. ``GET`` requests have no side effects and are retried on 429, 5xx, and any connection
failure or timeout. No request is retried after a certificate failed verification: it would fail
the same way again.
"""

from __future__ import annotations

import asyncio
import math
import random as _random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._config import RetryPolicy
from ._server_wait import parse_retry_after
from .errors import (
    APIConnectionError,
    APIError,
    InternalServerError,
    NoCapacityError,
    RateLimitError,
)

__all__ = [
    "RetryDecision",
    "Retrier",
    "backoff_delay",
    "is_retryable",
    "policy_backoff",
    "requested_wait",
]


def backoff_delay(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 30.0,
    random: Callable[[], float] = _random.random,
) -> float:
    """The wait before retry number ``attempt`` (1-based): ``min(base * 2**(attempt-1), cap)``,
    jittered.

    Jitter takes the delay uniformly from ``[d/2, d]``: clients that failed together do not retry
    together, and the documented maximum is never exceeded.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    # Cap the exponent first: 2**1100 overflows a float.
    delay = min(base * 2.0 ** min(attempt - 1, 64), cap)
    return delay * (0.5 + 0.5 * random())


def is_retryable(method: str, error: BaseException) -> bool:
    """Whether ``error`` may be retried for a request of ``method`` (see the module docstring)."""
    idempotent = method.upper() in ("GET", "HEAD", "OPTIONS")
    if isinstance(error, RateLimitError):
        return True
    if isinstance(error, NoCapacityError):
        return idempotent or error.code == "no_capacity"
    if isinstance(error, InternalServerError):
        return idempotent
    if isinstance(error, APIError):
        return False
    if isinstance(error, APIConnectionError):
        if isinstance(error.__cause__, ssl.CertificateError):
            return False  # a certificate that failed verification will fail the same way again
        return idempotent or error.request_sent is False
    return False


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Whether to retry, after how many seconds, and why (for the log line)."""

    retry: bool
    delay: float = 0.0
    reason: str = ""


def requested_wait(error: BaseException) -> float | None:
    """The wait the server asked for with ``error``, which replaces the backoff: a 429's
    ``retry_after``, a 503's ``Retry-After``.

    Only ``Retry-After`` for a 503: ``X-RateLimit-Reset`` rides on every response and dates the end
    of the rate-limit window, which says nothing about when a node frees up.
    """
    if isinstance(error, RateLimitError):
        return error.retry_after
    if isinstance(error, APIError) and error.status == 503:
        return parse_retry_after(error.headers.get("Retry-After"), now=time.time())
    return None


class Retrier:
    """One operation's retries: counts them against a limit, decides each one, and sleeps.

    The one retry policy the client's three retry loops ask: a request's (``_transport``, built
    with ``for_requests``), a stream's reconnects and restarts (``for_stream_restarts``), and a
    fan-out job's resubmissions (``_fanout``). ``backoff(n)`` is the wait before retry ``n``
    (1-based); ``sleep`` is the injectable coroutine that waits it.
    """

    __slots__ = ("_backoff", "_sleep", "limit", "max_retry_after", "retries")

    def __init__(
        self,
        limit: int,
        *,
        backoff: Callable[[int], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        max_retry_after: float = math.inf,
    ) -> None:
        self.limit = limit
        self.max_retry_after = max_retry_after
        self.retries = 0
        self._backoff = backoff
        self._sleep = sleep or asyncio.sleep

    @classmethod
    def for_requests(
        cls, policy: RetryPolicy, *, random: Callable[[], float] = _random.random
    ) -> Retrier:
        """A request's retries (``RetryPolicy.max_retries``), server-requested waits honoured up
        to ``max_retry_after``."""
        return cls(
            policy.max_retries,
            backoff=policy_backoff(policy, random=random),
            sleep=policy.sleep,
            max_retry_after=policy.max_retry_after,
        )

    @classmethod
    def for_stream_restarts(cls, policy: RetryPolicy) -> Retrier:
        """A stream's reconnects, or its restarts after ``node_disconnected``
        (``RetryPolicy.max_stream_restarts`` each)."""
        return cls(policy.max_stream_restarts, backoff=policy_backoff(policy), sleep=policy.sleep)

    @property
    def exhausted(self) -> bool:
        return self.retries >= self.limit

    def decide(
        self, method: str, error: BaseException, *, retry_after: float | None = None
    ) -> RetryDecision:
        """Count a failure of a request of ``method`` and decide whether to retry it.

        ``retry_after`` is the server's requested wait, when it gave one; it replaces the backoff.
        A requested wait longer than ``max_retry_after`` is not slept through: the error surfaces
        with its ``retry_after``.
        """
        self.retries += 1
        if self.retries > self.limit:
            return RetryDecision(False, reason="retries exhausted")
        if not is_retryable(method, error):
            return RetryDecision(False, reason="not retryable")
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return RetryDecision(False, reason=f"server asked to wait {retry_after:.1f}s")
            return RetryDecision(True, retry_after, reason="server asked to wait")
        return RetryDecision(True, self.backoff(), reason="backoff")

    def take(self) -> float:
        """Count a retry the caller has found allowed (``exhausted`` is false); returns its
        backoff."""
        self.retries += 1
        return self.backoff()

    def backoff(self) -> float:
        """The backoff before the current retry (0 without a backoff)."""
        return self._backoff(self.retries) if self._backoff is not None else 0.0

    async def sleep(self, delay: float) -> None:
        await self._sleep(delay)


def policy_backoff(
    policy: RetryPolicy, *, random: Callable[[], float] = _random.random
) -> Callable[[int], float]:
    """``RetryPolicy``'s backoff schedule as a function of the retry number."""
    base, cap = policy.backoff_base, policy.backoff_max
    return lambda attempt: backoff_delay(attempt, base=base, cap=cap, random=random)
