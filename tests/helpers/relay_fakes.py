"""A scripted token source with the TokenStream interface: tests the relay without a server."""

from __future__ import annotations

import asyncio


class FakeTokenStream:
    """Yields ``tokens``, then hangs (``hang=True``), raises ``error``, or ends cleanly.

    Records whether it was cancelled while waiting for a token and when it was closed, so a test can
    tell that the relay stopped it.
    """

    def __init__(
        self,
        tokens: list[str],
        *,
        hang: bool = False,
        error: BaseException | None = None,
        delay: float = 0.0,
    ) -> None:
        self._tokens = list(tokens)
        self._hang = hang
        self._error = error
        self._delay = delay
        self._parts: list[str] = []
        self.closed = asyncio.Event()
        self.cancelled = False
        self.waiting = asyncio.Event()  # set while blocked waiting for a token that never comes
        self.aclose_calls = 0

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __aiter__(self) -> FakeTokenStream:
        return self

    async def __anext__(self) -> str:
        if self.closed.is_set():
            raise StopAsyncIteration
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            if len(self._parts) < len(self._tokens):
                token = self._tokens[len(self._parts)]
                self._parts.append(token)
                return token
            if self._hang:
                self.waiting.set()
                await asyncio.Event().wait()
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def aclose(self) -> None:
        self.aclose_calls += 1
        self.closed.set()
