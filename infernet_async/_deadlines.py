"""Deadlines: every timeout of a request and of a stream, and the one watchdog that enforces a
stream's.

Rules: ``Timeouts`` (``_config``) holds the figures; this room turns them into deadlines. A
request's connect and read timeouts go to the stack that sends it (``socket_timeouts`` for our
own connections, ``aiohttp_timeout`` for aiohttp's); its total is aiohttp's for a JSON request,
and the stream's own for a stream. A stream's deadlines run from sending, never through the
client's own waits (a retry's backoff, the rate limiter, a reconnect's backoff): first token from
the attempt's sending, stall from the later of that and the last token, total from the sending of
the request that started the job (reconnects keep it).

The watchdog: an ``asyncio.timeout_at()`` around every read costs a Timeout object, a TimerHandle
pushed on the loop's heap and a cancelled one left behind, per token at model speed
(benchmarks/bench_e2e.py, paced, K = 100: 61 µs of client CPU per token with it, 52 without).
Instead one timer per stream is armed at the deadline in force and left alone while tokens push the
deadline later: when it fires early it re-arms at the new deadline, about once per stall period.
Opening the stream runs under it too (the first token's deadline, which the first read then keeps).
It must never be later than the deadline, so a read re-arms it when the deadline moved earlier (the
first token swaps a long first_token deadline for a short stall one). Cancellation mirrors
``asyncio.Timeout``: the watchdog cancels the task only while it is inside a read (``watch`` ..
``unwatch``), and the read turns that cancellation into ``APITimeoutError`` only if nobody else
asked for one.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any, NoReturn

from ._accumulator import Accumulator
from ._config import Timeouts
from .errors import APITimeoutError, StreamError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["StreamDeadlines", "aiohttp_timeout", "socket_timeouts"]

# The watchdog's mark for a reader interrupted by aclose() rather than by a deadline.
_CLOSED_PHASE = "closed"


def socket_timeouts(timeouts: Timeouts) -> tuple[float | None, float | None]:
    """The connect and read (idle) timeouts of a request on our own connections."""
    return timeouts.connect, timeouts.read


def aiohttp_timeout(timeouts: Timeouts, *, stream: bool) -> aiohttp.ClientTimeout:
    """The ``ClientTimeout`` of one request on an aiohttp session."""
    import aiohttp  # loaded already: only a request on an aiohttp session asks

    # Streams: no aiohttp total (our own deadline covers the whole stream, and aiohttp's default
    # 300 s equals the server's job limit); sock_read is the idle timeout, which heartbeats
    # reset.
    return aiohttp.ClientTimeout(
        total=None if stream else timeouts.total,
        sock_connect=timeouts.connect,
        sock_read=timeouts.read,
    )


class StreamDeadlines:
    """The first-token, stall and total deadlines of one ``TokenStream``, their watchdog, and the
    times its metrics are made of.

    The stream tells it when the request goes out (``on_send``), stamps ``first_token_at`` and
    ``last_token_at`` itself as it takes tokens (no call per token), and brackets every wait that
    a deadline may end with ``watch`` and ``unwatch``/``raise_unwatched``.
    """

    __slots__ = (
        "__weakref__",
        "_acc",
        "_expired_phase",
        "_watchdog",
        "_watchdog_at",
        "attached",
        "first_token_at",
        "job_sent_at",
        "last_token_at",
        "loop",
        "reader",
        "sent_at",
        "started_at",
        "timeouts",
        "total_deadline",
    )

    def __init__(self, timeouts: Timeouts, acc: Accumulator) -> None:
        self.timeouts = timeouts
        self._acc = acc
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at: float | None = None
        # ``sent_at`` is when the current attempt's request went out, None from an open's or a
        # reconnect's start (its backoff) until it has, and while a retry of it waits: the first
        # token's deadline runs from it, the stall one from the later of it and the last token,
        # and neither through the client's own waits. ``job_sent_at`` is when the stream's first
        # request last went out (the job's start): the total deadline's and the time to first
        # token's.
        self.total_deadline: float | None = None
        self.sent_at: float | None = None
        self.job_sent_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        # Whether the stream holds an open response (the watchdog has nothing to do between
        # attempts or after the end).
        self.attached = False
        # ``reader`` is the task while it is inside a read, and ``_expired_phase`` is set once the
        # watchdog has cancelled that task for a deadline.
        self.reader: asyncio.Task[Any] | None = None
        self._expired_phase: str | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The stream starts opening now."""
        self.loop = loop
        self.started_at = loop.time()

    @property
    def armed(self) -> bool:
        return self._watchdog is not None

    # -- the deadline in force ---------------------------------------------------------------------

    def next(self) -> tuple[float | None, str]:
        """The earliest deadline now in force, and its phase name for the error message.

        Called before every read, so it builds nothing: no candidate list, no ``min()``.
        """
        timeouts = self.timeouts
        at: float | None = None
        phase = ""
        if self._acc.token_count == 0 or self.last_token_at is None:
            if timeouts.first_token is not None and self.sent_at is not None:
                at, phase = self.sent_at + timeouts.first_token, "first_token"
        elif timeouts.stall is not None and self.sent_at is not None:
            # From a reconnect's sending, if later than the last token.
            since = max(self.last_token_at, self.sent_at)
            at, phase = since + timeouts.stall, "stall"
        total = self.total_deadline
        # On a tie the phase's own name wins over "total", the more useful message.
        if total is not None and (at is None or total < at):
            return total, "total"
        return at, phase

    def on_send(self, sent: bool, *, opening: bool) -> None:
        """The request being opened goes out now (True), or a wait before its retry begins
        (False). ``opening``: it is the stream's first request, the one that starts the job."""
        assert self.loop is not None
        if not sent:
            self.sent_at = None
            if opening:
                self.total_deadline = None
            return
        now = self.sent_at = self.loop.time()
        if opening:
            self.job_sent_at = now
            total = self.timeouts.total
            self.total_deadline = now + total if total is not None else None
        self.arm_if_earlier(self.next()[0])

    def timeout_error(self, phase: str) -> APITimeoutError:
        """The ``APITimeoutError`` of ``phase``, recorded in the stream's state."""
        timeouts = self.timeouts
        what = {
            "total": f"the stream exceeded its total timeout ({timeouts.total} s)",
            "first_token": f"no first token within {timeouts.first_token} s",
            "stall": f"no token for {timeouts.stall} s (the node stalled; heartbeats do not count)",
        }.get(phase, "timed out")
        acc = self._acc
        acc.fail("timeout", message=what)
        return APITimeoutError(what, partial_text=acc.text, job_id=acc.job_id, phase=phase)

    def closed_while_opening(self) -> StreamError:
        acc = self._acc
        return StreamError(
            "the stream was closed while it was opening", partial_text=acc.text, job_id=acc.job_id
        )

    # -- the watchdog ------------------------------------------------------------------------------

    def watch(self, deadline: float | None) -> tuple[asyncio.Task[Any], int]:
        """Before a read: arm the watchdog for ``deadline``, the one in force (unless it is armed
        for that or earlier), and make the current task the reader it cancels. Returns the task
        and its ``cancelling()`` count, for ``raise_unwatched``."""
        if deadline is not None and (self._watchdog is None or self._watchdog_at > deadline):
            self._arm(deadline)
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a TokenStream must be read inside an asyncio task")
        self.reader = task
        return task, task.cancelling()

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        """After a read that returned."""
        self.reader = None
        if self._expired_phase is not None:
            # The read returned despite our cancel(): withdraw it, or it would hit the caller's
            # next await.
            self._expired_phase = None
            task.uncancel()

    def raise_unwatched(
        self, task: asyncio.Task[Any], cancelling: int, exc: BaseException
    ) -> NoReturn:
        """After a read that raised ``exc``: raises it, or the deadline's ``APITimeoutError``
        when the watchdog's cancellation ended the read."""
        self.reader = None
        phase, self._expired_phase = self._expired_phase, None
        # Ours is withdrawn whatever the outcome (uncancel() runs whenever phase is set). A
        # cancel() from outside after ours leaves the count above its value at entry: that one
        # wins and propagates as CancelledError, as with asyncio.Timeout.
        if (
            phase is not None
            and task.uncancel() <= cancelling
            and isinstance(exc, asyncio.CancelledError)
        ):
            if phase == _CLOSED_PHASE:
                raise self.closed_while_opening() from exc
            raise self.timeout_error(phase) from exc
        raise exc

    def interrupt_opening(self) -> None:
        """``aclose()`` while another task opens the stream (waiting for the rate limiter, a
        backoff, the connection or the response head): that task is interrupted as a deadline
        interrupts it, and nothing is sent after this."""
        reader = self.reader
        if (
            reader is not None
            and reader is not asyncio.current_task()
            and self._expired_phase is None
        ):
            self._expired_phase = _CLOSED_PHASE
            reader.cancel()

    def arm_if_earlier(self, deadline: float | None) -> None:
        if deadline is not None and (self._watchdog is None or self._watchdog_at > deadline):
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        self.disarm()
        assert self.loop is not None
        self._watchdog_at = when
        # A weak reference: a pending timer must not keep an abandoned stream alive (its
        # ``__del__`` closes the connection).
        self._watchdog = self.loop.call_at(when, _fire_watchdog, weakref.ref(self))

    def disarm(self) -> None:
        handle, self._watchdog = self._watchdog, None
        if handle is not None:
            handle.cancel()

    def detach(self) -> None:
        """The stream's response is gone (ended, closed, or dropped before a reconnect)."""
        self.attached = False
        self.disarm()

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if not self.attached and self.reader is None:
            return  # between attempts or ended; the next open or read arms it again
        deadline, phase = self.next()
        if deadline is None:
            return
        if deadline > self._watchdog_at:
            # Tokens arrived since it was armed: the deadline moved on.
            self._arm(deadline)
            return
        reader = self.reader
        if reader is not None and self._expired_phase is None:
            self._expired_phase = phase
            reader.cancel()
        # Expired outside a read (the caller is busy with a token): stay disarmed. The next read
        # re-arms at the passed deadline, which fires on the next loop iteration, so a chunk
        # already buffered is still returned first, as under ``asyncio.timeout_at``.


def _fire_watchdog(ref: weakref.ref[StreamDeadlines]) -> None:
    deadlines = ref()
    if deadlines is not None:
        deadlines._on_watchdog()
