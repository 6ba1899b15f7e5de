"""The client's sockets, whichever stack opens them: ``ConnectionBudget`` bounds them all.

Rules: every socket takes a slot before it connects and gives it back once it is closed, the pool's
(``_pool``) and aiohttp's (``_aiohttp_stack``) alike, so ``max_connections`` bounds them together;
a slot comes back only at the loop's next turn, after the socket is really gone; waiters are served
first come, first served.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .errors import APIConnectionError

__all__ = ["ConnectionBudget"]


class ConnectionBudget:
    """The client's sockets, whichever stack opens them: at most ``limit`` open at once.

    Each socket takes a slot before it connects and gives it back once it is closed: the pool's
    connections (``StreamPool``) and aiohttp's (``_aiohttp_stack.BudgetConnector``). ``give()``
    hands the slot on at the loop's next turn, after the transport's own close callback, so the
    socket is really gone before another connects in its place. When none is free, ``reclaim()``
    asks the stacks, in the order they registered, to close one idle keep-alive connection; else
    the taker waits, first come first served.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.limit = limit
        self.used = 0
        self.closed = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._reclaimers: list[Callable[[], bool]] = []

    def add_reclaimer(self, reclaim: Callable[[], bool]) -> None:
        """``reclaim()`` closes one idle connection of a stack (True) or finds none (False)."""
        self._reclaimers.append(reclaim)

    def set_limit(self, limit: int) -> None:
        grown = limit - self.limit
        self.limit = limit
        for _ in range(max(grown, 0)):
            self.wake_one()

    def try_take(self) -> bool:
        if self.used < self.limit:
            self.used += 1
            return True
        return False

    def give(self) -> None:
        if self.loop.is_closed():
            self._give_now()
        else:
            self.loop.call_soon(self._give_now)

    def _give_now(self) -> None:
        self.used -= 1
        self.wake_one()

    def reclaim(self) -> bool:
        return any(reclaim() for reclaim in self._reclaimers)

    async def take(self) -> None:
        """Take a slot: a free one, one an idle connection gives up, or the next to be freed."""
        while True:
            if self.closed:
                raise APIConnectionError("the client is closed", request_sent=False)
            if self.try_take():
                return
            if self.reclaim():
                await asyncio.sleep(0)  # the closed socket's slot comes back at the next turn
                continue
            await self.wait()

    async def wait(self) -> None:
        """Wait until a slot may be free (or an idle connection came back, or the client closed).

        A semaphore's wait: one waiter is woken per event, in order; a woken waiter that is
        cancelled passes its turn on, and a cancelled one stays in the queue to be skipped (no
        O(n) removal when a fan-out of thousands is cancelled at once).
        """
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.wake_one()
            raise

    @property
    def waiting(self) -> bool:
        """Whether anyone may be waiting (a cancelled waiter still in the queue counts)."""
        return bool(self._waiters)

    def wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
