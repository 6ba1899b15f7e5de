"""Reading a socket at intervals: the half of a connection that lets its socket rest between reads.

For a stream nobody reads token by token (``final_text``, the fan-out), resting the socket lets
the kernel gather the tokens, so that one read takes many (see ``read_at_intervals``). The pool
batches the rests by length, one timer per length (``StreamPool._rest``), and calls
``rest_over()`` when one ends. Rules: a rest is taken only when data comes faster than it lasts,
is at most a tenth of the request's age (``rest_length``) and a quarter of the read timeout, and
never while the socket is paused for flow control (``_paused``: the consumer's wait, not ours).
"""

from __future__ import annotations

import asyncio
import socket
import time

__all__ = ["RestingProtocol", "rest_length"]

# What one read at the end of a rest takes at most: asyncio's selector transports read as much.
_REST_READ_SIZE = 256 * 1024
# read_at_intervals: a rest lasts at most this share of the request's age, and none is taken
# shorter than the interval divided by _REST_HALVINGS.
_REST_SHARE = 0.1
_REST_HALVINGS = 16
_monotonic = time.monotonic


def rest_length(interval: float, age: float, gap: float) -> float:
    """How long a socket read at intervals rests after a read; 0.0: not at all.

    ``interval`` is the longest rest; ``age`` the request's age; ``gap`` the time since the
    previous read (or the end of the previous rest). The rest is ``interval`` halved until it is
    at most ``_REST_SHARE`` of ``age`` (none below a sixteenth of ``interval``), and none when data
    comes slower than the rest would last.
    """
    if interval <= 0.0:
        return 0.0
    rest = interval
    shortest = interval / _REST_HALVINGS
    grown = age * _REST_SHARE
    while rest > grown:
        rest /= 2  # exact in binary, so the pool can group rests by length
        if rest < shortest:
            return 0.0
    return rest if gap < rest else 0.0


class RestingProtocol(asyncio.Protocol):
    """The socket state resting needs, and the rests themselves; ``_connection.Connection`` is
    the rest of the protocol (it calls ``_rest`` from ``data_received`` and implements
    ``_schedule_rest`` and ``_fail``)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        # Reading is held back because the consumer has not taken what came (flow control).
        self._paused = False
        self._read_timeout: float | None = None
        # > 0: between reads the socket may rest up to this long (read_at_intervals); _asked_at is
        # when the request began, _read_ref the time of the last read or of the end of a rest.
        self._read_interval = 0.0
        self._asked_at = 0.0
        self._read_ref = 0.0
        self._resting = False
        # The plain socket under a selector loop's transport, read directly when a rest ends.
        self._sock: socket.socket | None = None

    def read_at_intervals(self, interval: float, *, age: float = 0.0) -> None:
        """Let the socket rest up to ``interval`` seconds between reads, for this response.

        For a stream nobody reads token by token (``final_text``, the fan-out): at model speed
        every token comes in a read of its own, and a read costs the event loop a wake-up, a
        ``recv`` and a callback whatever it carries. Resting the socket between reads lets the
        kernel gather the tokens, so one read takes many. The price: the body's end is seen up to
        a rest late. So a rest is taken only when data comes faster than it lasts (a slow stream
        would gain nothing and pay the pause and the resume), and it grows with the request: at
        most a tenth of its age (``age`` seconds now, retries and queueing included), in halvings
        of ``interval`` down to a sixteenth of it, so that a quick answer is hardly delayed. A read
        timeout still sees the data in time: the rest is at most a quarter of it.
        """
        if self._read_timeout is not None:
            interval = min(interval, self._read_timeout / 4)
        self._read_interval = max(interval, 0.0)
        self._asked_at = _monotonic() - max(age, 0.0)

    def _rest(self, now: float) -> None:
        if self._resting or self._paused or self._transport is None:
            return
        rest = rest_length(self._read_interval, now - self._asked_at, now - self._read_ref)
        if not rest:
            return
        self._resting = True
        self._transport.pause_reading()
        self._schedule_rest(rest)

    def _stop_resting(self) -> None:
        """Read again (the pool's timer, or the response is done with); a no-op if not resting."""
        if not self._resting:
            return
        self._resting = False
        self._read_ref = _monotonic()
        transport = self._transport
        if transport is not None and not self._paused and not transport.is_closing():
            transport.resume_reading()

    def rest_over(self) -> None:
        """The pool's timer: read what the kernel gathered during the rest, now.

        Resuming the transport would cost two ``epoll_ctl`` calls per rest (the pause and the
        resume) and a turn of the event loop before the read. The socket stays paused instead and
        is read here; the reply usually makes the next rest (``data_received``), so a stream read
        at intervals pauses its transport once. It is resumed when the socket is empty, or has
        ended, or the stream no longer rests: the transport then reads the end or the error
        itself, as it does for any connection; a read that fails ends the connection here.
        """
        sock, transport = self._sock, self._transport
        if (
            not self._resting
            or sock is None
            or transport is None
            or self._paused
            or transport.is_closing()
        ):
            self._stop_resting()
            return
        self._resting = False
        self._read_ref = _monotonic()
        try:
            data = sock.recv(_REST_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            data = b""
        except OSError as exc:
            # Taken by this read, the error would not come again (a reset reads as an end
            # after): it is the connection's loss here, as the transport would have reported it.
            self.connection_lost(exc)
            transport.abort()
            return
        if data:
            try:
                self.data_received(data)
            except Exception as exc:
                # One connection's fault must not leave the others of this timer resting for ever.
                self._fail(exc)
        if not self._resting and not self._paused and not transport.is_closing():
            transport.resume_reading()

    def _schedule_rest(self, rest: float) -> None:
        """Have ``rest_over()`` called in ``rest`` seconds (the pool's timers)."""
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        """End the response with ``exc``, for the reader to raise."""
        raise NotImplementedError
