"""Pure retry logic: the backoff schedule, server-requested waits, and which failures may be
retried.

No IO here: the clock and the random source are arguments, so every decision is a unit test.

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

import math
import random as _random
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from ._config import RetryPolicy
from .errors import (
    APIConnectionError,
    APIError,
    InternalServerError,
    NoCapacityError,
    RateLimitError,
)

__all__ = [
    "RetryDecision",
    "backoff_delay",
    "decide_retry",
    "is_retryable",
    "parse_rate_limit_reset",
    "parse_reset_at",
    "parse_retry_after",
    "server_retry_after",
]

# X-RateLimit-Reset above this is a unix time, below it a number of seconds (no wait lasts 30
# years).
_EPOCH_THRESHOLD = 1e9
# ... and above this, a unix time in milliseconds.
_EPOCH_MS_THRESHOLD = 1e12


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


# The longest Retry-After in seconds taken as meant: a day.
_LONGEST_RETRY_AFTER = 86_400.0


def _finite_non_negative(value: float) -> float | None:
    if math.isnan(value) or math.isinf(value):
        return None
    return max(value, 0.0)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date; ``None`` if
    unusable.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # delay-seconds is a non-negative integer (RFC 9110); a negative or absurd one (past a
        # day) is a broken server, not a wait: ignored, so the backoff applies.
        if math.isfinite(seconds) and 0.0 <= seconds <= _LONGEST_RETRY_AFTER:
            return seconds
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; a naive result means the string said so without a zone name.
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def _epoch_or_delta(number: float, *, now: float) -> float | None:
    if number >= _EPOCH_MS_THRESHOLD:
        return _finite_non_negative(number / 1000.0 - now)
    if number >= _EPOCH_THRESHOLD:
        return _finite_non_negative(number - now)
    return _finite_non_negative(number)


def parse_rate_limit_reset(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from ``X-RateLimit-Reset``: a unix time (the API's form) or, if small, a
    delay.
    """
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return _epoch_or_delta(number, now=now)


def parse_reset_at(body: object, *, now: float) -> float | None:
    """Seconds to wait from a body's ``detail.resetAt`` (the live control plane's only hint).

    Accepts an ISO-8601 string, or a unix time in seconds or milliseconds (as a number or a digit
    string).
    """
    if not isinstance(body, Mapping):
        return None
    detail = body.get("detail")
    if not isinstance(detail, Mapping):
        return None
    raw = detail.get("resetAt")
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return _epoch_or_delta(float(raw), now=now)
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip()
    try:
        return _epoch_or_delta(float(text), now=now)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def server_retry_after(headers: Mapping[str, str], body: object, *, now: float) -> float | None:
    """The wait the server asked for: ``Retry-After``, else ``X-RateLimit-Reset``, else
    ``detail.resetAt``.
    """
    for parsed in (
        parse_retry_after(headers.get("Retry-After"), now=now),
        parse_rate_limit_reset(headers.get("X-RateLimit-Reset"), now=now),
        parse_reset_at(body, now=now),
    ):
        if parsed is not None:
            return parsed
    return None


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


def decide_retry(
    method: str,
    error: BaseException,
    *,
    attempt: int,
    policy: RetryPolicy,
    retry_after: float | None = None,
    random: Callable[[], float] = _random.random,
) -> RetryDecision:
    """Decide about retry number ``attempt`` (1-based) after ``error``.

    ``retry_after`` is the server's requested wait, when it gave one; it replaces the backoff. A
    requested wait longer than ``policy.max_retry_after`` is not slept through: the error surfaces
    with its ``retry_after``.
    """
    if attempt > policy.max_retries:
        return RetryDecision(False, reason="retries exhausted")
    if not is_retryable(method, error):
        return RetryDecision(False, reason="not retryable")
    if retry_after is not None:
        if retry_after > policy.max_retry_after:
            return RetryDecision(False, reason=f"server asked to wait {retry_after:.1f}s")
        return RetryDecision(True, retry_after, reason="server asked to wait")
    delay = backoff_delay(attempt, base=policy.backoff_base, cap=policy.backoff_max, random=random)
    return RetryDecision(True, delay, reason="backoff")
