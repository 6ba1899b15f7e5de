"""What a client owns per event loop: our stream pool, the one connection budget, and aiohttp's
session once a request needs it.

Rules: the session we own is created inside the running loop, at its first JSON request, and
rebuilt when that loop is gone; a session the caller passed in is used as is and never closed by
us. A loop that ends without the client's ``aclose()`` closes what the client had in it (the loop
sentinel). One connection budget: ``max_connections`` bounds every socket the client opens; our
pool and the aiohttp connector we build (``_aiohttp_stack.BudgetConnector``) take their sockets'
slots from one ``ConnectionBudget``, and neither has a limit of its own.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator
from ssl import SSLContext
from typing import TYPE_CHECKING

from ._budget import ConnectionBudget
from ._pool import StreamPool
from .errors import APIConnectionError

if TYPE_CHECKING:
    import aiohttp

    from ._aiohttp_stack import BudgetConnector

__all__ = ["Binding", "SessionOwner"]

logger = logging.getLogger("infernet_async")


async def _loop_sentinel(binding: Binding) -> AsyncIterator[None]:
    # An async generator parked at its yield is closed by the loop's shutdown_asyncgens(), which
    # asyncio.run() and asyncio.Runner (so pytest-asyncio) call before closing the loop: the one
    # hook we get to close the session inside its own loop when the caller never called aclose(). No
    # __del__ scheduling needed.
    try:
        yield
    finally:
        binding.ended = True
        binding.pool.close()
        session = binding.session
        if session is not None and not session.closed:
            await session.close()


class Binding:
    """What the client owns in one loop: our stream pool and the one connection budget, and
    aiohttp's session (with its connector) once a request needs it: a stream on our connections
    never loads aiohttp."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        budget: ConnectionBudget,
        ssl: SSLContext | bool | None,
    ) -> None:
        self.loop = loop
        self.budget = budget
        self.pool = StreamPool(loop, ssl=ssl, budget=budget)
        self.session: aiohttp.ClientSession | None = None
        self.connector: BudgetConnector | None = None
        self.ended = False  # the sentinel has run: rebuilt at the next request
        self._ssl = ssl
        self.sentinel = _loop_sentinel(self)

    def http_session(self) -> aiohttp.ClientSession:
        """Our aiohttp session in this loop, built (and aiohttp imported) on first use."""
        session = self.session
        if session is None:
            from ._aiohttp_stack import new_session

            session, self.connector = new_session(self.budget, self._ssl)
            self.session = session
            logger.debug("created an aiohttp session for loop %#x", id(self.loop))
        return session


class SessionOwner:
    """The sessions of one client across event loops: ``bind()`` gives the running loop's
    ``Binding``, built on demand; ``aclose()`` ends them for good. ``Transport`` sends through
    them."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        ssl: SSLContext | bool | None,
        max_connections: int,
    ) -> None:
        self._ssl = ssl
        self._max_connections = max_connections
        self._caller_session = session
        self._binding: Binding | None = None
        # Closed for good (the client's aclose()): nothing builds a session again, and a request
        # made after, or a stream's reconnect, fails at once instead of retrying.
        self._closed = False
        # Bindings of other loops that are still open: closed by their own loop's shutdown.
        self._stale: list[Binding] = []
        if session is not None and session.timeout.total is not None:
            warnings.warn(
                f"the aiohttp session passed to InfernetClient has ClientTimeout(total="
                f"{session.timeout.total}); infernet_async ignores it and sets its own timeouts "
                "per request (Timeouts.total, default 330 s), but the same total will cut your "
                "other long streams on that session: use ClientTimeout(total=None, sock_read=...)",
                UserWarning,
                stacklevel=4,
            )

    @property
    def owns_session(self) -> bool:
        return self._caller_session is None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def has_session(self) -> bool:
        return self._caller_session is not None or self._binding is not None

    async def session(self) -> aiohttp.ClientSession:
        """The aiohttp session to use in the running loop, created (or rebuilt for a new loop) on
        demand."""
        binding = await self.bind()
        if binding is None:
            assert self._caller_session is not None
            return self._caller_session
        return binding.http_session()

    async def bind(self) -> Binding | None:
        """Our pool and budget for the running loop, created (or rebuilt for a new loop) on demand;
        ``None`` on a caller's session. aiohttp is not loaded here (see ``session``)."""
        if self._closed:
            raise APIConnectionError("the client is closed", request_sent=False)
        if self._caller_session is not None:
            return None
        loop = asyncio.get_running_loop()
        binding = self._binding
        if binding is not None and binding.loop is loop and not binding.ended:
            return binding
        if binding is not None and binding.loop is not loop and not binding.loop.is_closed():
            # That loop still runs (another thread, or a loop not closed yet): its shutdown closes
            # the session.
            self._stale.append(binding)
        self._stale = [b for b in self._stale if not b.loop.is_closed()]
        # One budget for both stacks: max_connections bounds every socket the client opens.
        binding = Binding(loop, ConnectionBudget(loop, self._max_connections), self._ssl)
        self._binding = binding
        await anext(binding.sentinel)
        return binding

    async def aclose(self) -> None:
        """Close the session we own in this loop, for good; a caller's session is left alone.
        Idempotent."""
        self._closed = True
        binding, self._binding = self._binding, None
        if binding is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is a coroutine, so a loop runs
            running = None
        if binding.loop is running:
            binding.budget.closed = True
            binding.pool.close()
            try:
                if binding.session is not None:
                    await binding.session.close()
            finally:
                # Finishing the sentinel here keeps it out of the loop's shutdown list.
                await asyncio.shield(_finish_sentinel(binding.sentinel))
        elif not binding.loop.is_closed():
            self._stale.append(binding)

    def ensure_connection_limit(self, limit: int) -> int:
        """Let the pool hold at least ``limit`` connections; returns the pool's limit now.

        A fan-out of ``concurrency`` N calls this so the pool never caps it below N (its own
        capacity limiter bounds the sockets). A caller's session is left as it is.
        """
        if self._caller_session is not None:
            connector = self._caller_session.connector
            return connector.limit if connector is not None else limit
        self._max_connections = max(self._max_connections, limit)
        binding = self._binding
        if binding is not None:
            # One budget for both stacks, so growing it grows what aiohttp may open too.
            binding.budget.set_limit(max(binding.budget.limit, self._max_connections))
        return self._max_connections


async def _finish_sentinel(sentinel: AsyncIterator[None]) -> None:
    aclose = getattr(sentinel, "aclose", None)
    if aclose is not None:
        await aclose()
