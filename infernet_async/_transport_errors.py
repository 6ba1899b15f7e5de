"""Error mapping for the transport: aiohttp and socket errors become ours, error responses become
``APIError``s.

Rules: no aiohttp exception leaves the client; ``map_transport_errors`` wraps every aiohttp call
and raises the most specific class of ours ``from`` the original (``_aiohttp_stack`` knows
aiohttp's classes, and is asked only once aiohttp is loaded). ``parse_error_response`` never
raises, whatever the body: a proxy's page gives the status's class with an excerpt.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ._connect import fd_exhaustion_message
from ._proxy import Proxy
from ._server_wait import server_retry_after
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    InfernetError,
    error_for_response,
)

__all__ = ["describe_error", "map_transport_errors", "parse_error_response"]


@contextmanager
def map_transport_errors(*, phase: str = "request", proxy: Proxy | None = None) -> Iterator[None]:
    """Turn aiohttp and socket errors raised inside the block into
    ``APIConnectionError``/``APITimeoutError`` (a proxy's refusal: see ``proxy_refused``).

    ``phase`` ("request" or "read") says whether the request had certainly been sent already, which
    decides whether a failed POST may be retried (see ``_retry``). ``proxy``: the proxy the request
    went through, named in the errors that are its own.
    """
    read_phase = phase == "read"
    try:
        yield
    except InfernetError:
        raise
    except Exception as exc:
        mapped = _mapped_error(exc, read_phase=read_phase, proxy=proxy)
        if mapped is None:
            raise
        raise mapped from exc


def _mapped_error(exc: Exception, *, read_phase: bool, proxy: Proxy | None) -> InfernetError | None:
    """The error of ours ``exc`` stands for, or ``None`` if it is none we map."""
    if "aiohttp" in sys.modules:
        # Without aiohttp loaded no aiohttp error exists, and none is imported for nothing.
        from ._aiohttp_stack import map_aiohttp_error

        mapped = map_aiohttp_error(exc, read_phase=read_phase, proxy=proxy)
        if mapped is not None:
            return mapped
    if isinstance(exc, TimeoutError):
        # aiohttp's ClientTimeout(total=...) raises a bare asyncio.TimeoutError.
        return APITimeoutError(
            "the request exceeded its total timeout", phase="total", request_sent=None
        )
    if isinstance(exc, OSError):
        message = fd_exhaustion_message(exc) or f"connection error: {exc}"
        return APIConnectionError(message, request_sent=True if read_phase else None)
    return None


def parse_error_response(
    status: int, raw: bytes, headers: Mapping[str, str], *, now: float | None = None
) -> APIError:
    """Build the ``APIError`` for an error response from its raw body; never raises.

    A JSON body with an ``error`` code decides the class; a non-JSON body (a proxy's HTML page)
    gives the status's class with a short excerpt of the text. For 429 the wait is ``Retry-After``,
    else ``X-RateLimit-Reset``, else the body's ``detail.resetAt``.
    """
    try:
        text = raw.decode("utf-8", errors="replace")
    except Exception:  # pragma: no cover - decode with "replace" does not raise; belt and braces
        text = ""
    body: Any = None
    try:
        body = json.loads(text) if text.strip() else None
    except ValueError:
        body = None
    retry_after: float | None = None
    if status in (429, 503):
        try:
            retry_after = server_retry_after(headers, body, now=time.time() if now is None else now)
        except Exception:  # a hostile header must not hide the error itself
            retry_after = None
    try:
        return error_for_response(status, body, text=text, headers=headers, retry_after=retry_after)
    except Exception:  # pragma: no cover - error_for_response is written not to raise
        return APIError(f"HTTP {status}", status=status)


def describe_error(exc: BaseException) -> str:
    """A failure in a few words, for a retry's log line."""
    if isinstance(exc, APIError):
        return f"{exc.status} {exc.code or ''}".strip()
    return type(exc).__name__
