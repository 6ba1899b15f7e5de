"""What a response says about time: when to come back (``Retry-After``, ``X-RateLimit-Reset``, the
body's ``detail.resetAt``) and when its rate-limit window turns.

Rules: the one home of these parsers, for the retries (``_retry``: a 429's or a 503's requested
wait) and for the shared rate limiter (``_ratelimit``: a 429's pause, the budget's window). Pure
and total: the clock is an argument, and no input raises; what cannot be read is ``None``. Header
names match in any case, also in a plain ``dict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = [
    "header",
    "number",
    "parse_rate_limit_reset",
    "parse_reset_at",
    "parse_retry_after",
    "reset_wall_time",
    "server_retry_after",
]

# X-RateLimit-Reset above this is a unix time, below it a number of seconds (no wait lasts 30
# years).
_EPOCH_THRESHOLD = 1e9
# ... and above this, a unix time in milliseconds.
_EPOCH_MS_THRESHOLD = 1e12


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
    seconds = number(value)
    return _epoch_or_delta(seconds, now=now) if seconds is not None else None


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
        parse_retry_after(header(headers, "Retry-After"), now=now),
        parse_rate_limit_reset(header(headers, "X-RateLimit-Reset"), now=now),
        parse_reset_at(body, now=now),
    ):
        if parsed is not None:
            return parsed
    return None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, matched in any case."""
    # aiohttp's CIMultiDictProxy matches any case; a plain dict (tests, other transports) may not.
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def number(text: str | None) -> float | None:
    """A finite number from a header's text, or ``None``."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def reset_wall_time(text: str | None, wall_now: float) -> float | None:
    """When the rate-limit window turns (unix seconds), from ``X-RateLimit-Reset``: documented as
    a unix time; a value too small for one is a delay in seconds, which some gateways send."""
    value = number(text)
    if value is None:
        return None
    return value if value >= _EPOCH_THRESHOLD else wall_now + max(value, 0.0)
