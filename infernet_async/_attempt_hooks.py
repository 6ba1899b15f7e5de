"""The client's request hooks (``hooks``) around each attempt of a request: ``on_request`` as it
starts, ``on_response`` once as it ends.

Rules: a hook's exception is logged, never raised; the URL a hook sees has no userinfo and never
the token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from yarl import URL

from ._response import SendListener
from .hooks import RequestEvent, ResponseEvent

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["AttemptHook"]

logger = logging.getLogger("infernet_async")


class AttemptHook:
    """One attempt's calls to the client's hooks (see ``hooks``): ``on_request`` at once,
    ``on_response`` once, at the response's head or the attempt's failure. A hook's exception is
    logged, never raised."""

    __slots__ = (
        "_listener",
        "_method",
        "_on_response",
        "_sent",
        "_stream",
        "_url",
        "attempt",
        "done",
    )

    def __init__(
        self,
        transport: Transport,
        method: str,
        url: URL,
        params: Mapping[str, str] | None,
        attempt: int,
        stream: bool,
        listener: SendListener | None,
    ) -> None:
        if params:
            url = url.update_query(params)
        # No userinfo, and the token redacted should a query carry it.
        self._url = transport.redact(str(url.with_user(None)))
        self._method = method
        self._stream = stream
        self._listener = listener
        self._on_response = transport._on_response
        self._sent: float | None = None
        self.attempt = attempt
        self.done = False
        on_request = transport._on_request
        if on_request is not None:
            _call_hook(on_request, RequestEvent(method, self._url, attempt, stream))

    def sent(self, sending: bool) -> None:
        """The ``SendListener`` of the attempt: notes when its request first goes out, and
        passes every call on to the caller's listener."""
        if sending and self._sent is None:
            self._sent = time.monotonic()
        if self._listener is not None:
            self._listener(sending)

    def ended(self, status: int | None, exc: BaseException | None) -> None:
        self.done = True
        on_response = self._on_response
        if on_response is None:
            return
        elapsed = time.monotonic() - self._sent if self._sent is not None else 0.0
        event = ResponseEvent(
            self._method,
            self._url,
            self.attempt,
            self._stream,
            status,
            elapsed,
            type(exc).__name__ if exc is not None else None,
        )
        _call_hook(on_response, event)


def _call_hook(hook: Callable[[Any], None], event: RequestEvent | ResponseEvent) -> None:
    try:
        hook(event)
    except Exception:
        logger.warning("the %s hook %r raised; ignored", type(event).__name__, hook, exc_info=True)
