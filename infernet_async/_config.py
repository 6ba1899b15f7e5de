"""Client configuration: base URL and token resolution from the environment, timeouts, retry policy.

Rules: ``base_url`` is the service origin (``https://infernetprotocol.com``, or a mount path under
one); each API surface adds its own paths. A ``base_url`` ending in ``/api/v1`` (the documented
API's root, as earlier versions took it) or in ``/v1`` (the OpenAI-compatible root) names the same
origin. A token is refused over plain ``http://`` to anything but loopback unless the caller
says ``allow_insecure=True``. The token is wrapped in ``Secret`` as soon as it is read, so no
``repr`` of ours can show it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEFAULT_BASE_URL",
    "RetryPolicy",
    "Secret",
    "Timeouts",
    "is_loopback_host",
    "resolve_base_url",
    "resolve_token",
]

DEFAULT_BASE_URL = "https://infernetprotocol.com"
BASE_URL_ENV = "INFERNET_BASE_URL"
TOKEN_ENV = "INFERNET_BEARER_TOKEN"
# Surface roots a base_url may end in: the origin is what comes before.
_API_ROOTS = ("/api/v1", "/v1")


REDACTED = "[REDACTED]"
_REDACT_MIN = 6


class Secret:
    """A string that never shows itself in ``repr``/``str`` (the bearer token)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def redact(self, value: Any) -> Any:
        """``value`` with every occurrence of the secret replaced by ``[REDACTED]``: a string, or
        the strings inside a decoded JSON value (a server may echo the Authorization header in
        an error body, a page or a stream event).

        A secret under ``_REDACT_MIN`` characters is left alone: replacing every ``t`` of a
        message for a test token ``"t"`` would hide the message, not a secret.
        """
        secret = self._value
        if len(secret) < _REDACT_MIN:
            return value
        if isinstance(value, str):
            return value.replace(secret, REDACTED) if secret in value else value
        if isinstance(value, dict):
            return {self.redact(k): self.redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would put the token into a byte string someone may log; refuse.
        raise TypeError("Secret cannot be pickled")


def resolve_base_url(base_url: str | None) -> tuple[str, str | None]:
    """The service origin: the argument, else ``$INFERNET_BASE_URL``, else the hosted service;
    and the surface root it ended in (``/api/v1`` or ``/v1``), if any.

    A trailing slash is dropped; a path other than a surface root is kept as a mount prefix.

    Raises:
        ValueError: the URL is not ``http(s)://host...``, or carries a query, fragment or
        credentials.
    """
    raw = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Not echoed: a common slip is passing the token where the URL goes
        # (``InfernetClient(token)``), and this message ends up in tracebacks and logs.
        raise ValueError(
            "base_url must be an http(s) URL with a host; the value given is not one (it is not "
            "shown here, as it may be a token passed in its place)"
        )
    if parts.query or parts.fragment:
        raise ValueError("base_url must not carry a query string or a fragment")
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in logs and exception messages; the token has its own
        # parameter.
        raise ValueError("base_url must not carry credentials; pass token= instead")
    path = parts.path.rstrip("/")
    root: str | None = None
    for candidate in _API_ROOTS:
        if path.endswith(candidate):
            root, path = candidate, path[: -len(candidate)]
            break
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), root


def resolve_token(token: str | None) -> Secret | None:
    """The token argument, else ``$INFERNET_BEARER_TOKEN``; an empty value means no token."""
    value = token if token is not None else os.environ.get(TOKEN_ENV)
    if not value:
        return None
    # Checked before stripping: a token read with its trailing newline is a mistake worth hearing
    # about, and a CR/LF inside one would inject headers into every request.
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError("the bearer token contains a line break or NUL")
    return Secret(value.strip())


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every timeout, in seconds; ``None`` disables one.

    Attributes:
        connect: establishing the TCP (and TLS) connection.
        read: idle time between two reads of the socket. Heartbeats count as activity, so keep this
            above the control plane's 15 s ``: ping`` interval, and below ``stall``: a connection
            silent that long is dead (half open), which a stream that reconnects recovers from,
            while a node that sends pings but no token is ``stall``'s.
        first_token: from sending a stream request to its first token, the response head
            included. The service starts popular models within 1 to 3 s of submission, so the
            default of 120 s lets a job queue forty times that, while a server that sends nothing
            useful (heartbeats only, a head dripped a byte at a time) is given up on in well
            under ``total``. The error carries the job id, so a job still queued can be read
            later with ``stream_job()``. ``None`` leaves only ``total`` to bound it.
        stall: no token for this long while the connection stays alive (heartbeats do not reset it):
            a stalled node. Raises ``APITimeoutError`` with the partial text.
        total: one request end to end, including a whole stream. The control plane fails a job after
            5 minutes, so the default is a little over that.

    ``first_token`` and ``total`` run from the request's sending: the client's own waits before it
    (a retry's backoff, a fan-out's shared rate limiter) are not the server's time and do not
    count. A stream's total runs from its first request (the one that starts the job), so
    reconnecting to the job does not extend it.
    """

    connect: float | None = 10.0
    read: float | None = 45.0
    first_token: float | None = 120.0
    stall: float | None = 60.0
    total: float | None = 330.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "first_token", "stall", "total"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Timeouts.{name} must be positive or None, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failed requests are retried.

    Attributes:
        max_retries: retries after the first attempt (0 disables retrying).
        backoff_base: the first backoff, in seconds; attempt ``n`` waits ``min(base * 2**(n-1),
            backoff_max)``, jittered down by up to half.
        backoff_max: the backoff cap.
        max_retry_after: the longest server-requested wait (``Retry-After`` and friends) we honour;
            a longer one raises the error at once instead of sleeping: a 429's ``RateLimitError``
            with ``retry_after`` set, a 503's ``NoCapacityError`` with the ``Retry-After`` header
            in its ``headers``.
        max_stream_restarts: how many times a stream follows a re-queued job after
            ``node_disconnected``, and how many times ``stream_job`` reconnects after a dropped
            connection.
        sleep: the coroutine used to wait (tests inject a recorder); ``None`` means
        ``asyncio.sleep``.
    """

    max_retries: int = 2
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    max_retry_after: float = 60.0
    max_stream_restarts: int = 2
    sleep: Callable[[float], Awaitable[None]] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_stream_restarts < 0:
            raise ValueError("retry counts must be >= 0")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ValueError("retry delays must be >= 0")
