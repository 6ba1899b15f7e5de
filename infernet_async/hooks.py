"""Request/response hooks: what a client tells metrics or tracing code about each HTTP attempt.

``InfernetClient(on_request=..., on_response=...)`` calls them for every attempt of every request,
JSON requests and streams alike, on the client's own connections or on a session you passed in:
the retry loop of ``_transport`` calls them, whichever stack sent the request. They are plain
(synchronous) callables and run on the event loop, so they must be quick (count, record, start or
end a span; do no IO). An exception raised in a hook is logged (logger ``infernet_async``) and
does not affect the request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RequestEvent", "RequestHook", "ResponseEvent", "ResponseHook"]


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """One attempt of a request, as it starts.

    Attributes:
        method: the HTTP method, ``"GET"`` or ``"POST"``.
        url: the URL, query included, without userinfo; the token is never in it.
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
        stream: whether this request opens an event stream.
    """

    method: str
    url: str
    attempt: int
    stream: bool


@dataclass(frozen=True, slots=True)
class ResponseEvent:
    """How one attempt ended: with the response's head, or with an error before one.

    Attributes:
        method, url, attempt, stream: as in the attempt's ``RequestEvent``.
        status: the HTTP status (an error status too: 429, 500...), ``None`` when no response
            came (a connection error or a timeout).
        elapsed: seconds from the request going out to the response's head (for an error status,
            its short body included); a wait for a free connection or the rate limiter is not
            counted. For a stream it is the time to the head, not to the stream's end.
        error: the exception's class name when the attempt failed (``"RateLimitError"``,
            ``"APIConnectionError"``...), else ``None``.
    """

    method: str
    url: str
    attempt: int
    stream: bool
    status: int | None
    elapsed: float
    error: str | None = None


RequestHook = Callable[[RequestEvent], None]
ResponseHook = Callable[[ResponseEvent], None]
