"""The client's lifecycle: a small state machine, ``UNOPENED`` → ``OPENED`` → ``CLOSED``.

Rules: a client is ``UNOPENED`` until ``__aenter__`` or its first request, ``OPENED`` until
``aclose()``, then ``CLOSED`` for good: it cannot be reopened, nor entered twice. Opening touches
nothing before a running loop asks for it, so a client can be built at module level or in a
notebook cell. ``aclose()`` is idempotent and ends the client's streams before its transport. A
client opened and never closed warns from ``__del__`` (only warns: a close scheduled there would run
in whatever loop is current, if any).
"""

from __future__ import annotations

import enum
import warnings
import weakref
from typing import Any, Self

from ._resource import AsyncResource
from ._stream import TokenStream
from ._transport import Transport

__all__ = ["ClientLifecycle"]


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class ClientLifecycle(AsyncResource):
    """The lifecycle half of ``InfernetClient``: its state, its transport and its open streams."""

    def __init__(self, transport: Transport) -> None:
        self._state = _State.UNOPENED
        self._transport = transport
        self._entered = False
        self._streams: weakref.WeakSet[TokenStream] = weakref.WeakSet()

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    def _ensure_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("this InfernetClient is closed; create a new one")
        self._state = _State.OPENED

    def _track(self, stream: TokenStream) -> TokenStream:
        # Weakly: a stream its caller dropped is not kept alive by the client.
        self._streams.add(stream)
        return stream

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise RuntimeError("cannot reopen a closed InfernetClient; create a new one")
        if self._entered:
            raise RuntimeError("this InfernetClient is already open in an 'async with' block")
        self._entered = True
        self._state = _State.OPENED
        await self._transport.bind()
        return self

    async def aclose(self) -> None:
        """Close the client and the session it created (never a session you passed in);
        idempotent.
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        # Its streams first: one waiting to retry or to reconnect ends now, not when the wait is
        # over (closing the transport alone is only seen after it).
        for stream in list(self._streams):
            await stream.aclose()
        await self._transport.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # Only a warning: scheduling a close from __del__ would run in whatever loop is current, if
        # any.
        if getattr(self, "_state", None) is _State.OPENED and self._transport.owns_session:
            _warn(
                f"{self!r} was opened and never closed; use 'async with InfernetClient()' or "
                "'await client.aclose()'",
                ResourceWarning,
                source=self,
            )
