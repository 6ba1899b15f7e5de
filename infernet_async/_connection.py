"""One HTTP/1.1 connection of ours: an ``asyncio.Protocol`` that parses responses with ``_http1``
and hands body bytes to the stream's decoder inside ``data_received``.

Why not aiohttp for streams: per HTTP chunk (one token at model speed) aiohttp runs its protocol
and payload layers in Python, re-arms the ``sock_read`` timer, wakes a ``StreamReader`` future and
resumes the reading task through ``iter_any``; here a chunk costs one ``feed`` of the HTTP parser
and one of the SSE decoder, and the reading task wakes only when the stream's consumer has
something to take (for ``final_text`` and the fan-out: only at the end). benchmarks/README.md has
the figures. JSON requests, and streams on a session the caller passed in, stay on aiohttp.

Rules: one request at a time; a connection goes back to its pool (``_pool``) only after a whole,
length-delimited, keep-alive response; every error that leaves it is an ``APIConnectionError`` or
an ``APITimeoutError``; ``close()`` is synchronous. A proxied connection is read exactly as a direct
one: the per-chunk path does not know about proxies. Resting the socket between reads is the base
class's (``_resting``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ._connect import PoolKey
from ._http1 import ResponseParser
from ._http1_head import ProtocolError, ResponseHead
from ._resting import RestingProtocol
from .errors import APIConnectionError, APITimeoutError

if TYPE_CHECKING:
    from ._pool import StreamPool

__all__ = ["BodySink", "Connection"]

# Takes body bytes; returns True when the reading task should wake up for them.
BodySink = Callable[[bytes], bool]

# A consumer that does not come back for its events stops the socket being read past this many
# bytes (the kernel's buffers and the server's flow control take over).
_HIGH_WATER = 256 * 1024
# A connection whose body ended after the consumer was done (the terminating chunk came late)
# waits this long for it before being closed instead of reused.
_DRAIN_GRACE = 1.0
_IDLE, _ACTIVE, _DRAINING, _CLOSED = range(4)
_monotonic = time.monotonic


class Connection(RestingProtocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self, pool: StreamPool, key: PoolKey) -> None:
        super().__init__()
        self._pool = pool
        self.key = key
        self.origin = key[0]
        self._loop = pool.loop
        self._state = _ACTIVE
        self._parser: ResponseParser | None = None
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._sink: BodySink | None = None
        self._early: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._signaled = False
        self._ended = False
        self._error: BaseException | None = None
        self._unread = 0
        self._last_data_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # The socket under a selector loop's transport, TLS or not: peeked before the
        # connection is reused, for a close the loop has not read yet.
        self._raw: socket.socket | None = None
        # Whether any byte of the current response came: a request that failed before one did
        # never reached a server that had closed the connection while it was idle.
        self._answered = False

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports have the interface without the base class.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Bytes while idle (or after the response): nothing is waiting for them, so the
            # connection cannot be trusted with another request.
            self.close()
            return
        self._answered = True
        now = self._last_data_at = _monotonic()
        try:
            body = parser.feed(data)
        except ProtocolError as exc:
            # What came before the fault (the head, tokens) is still the reader's to take.
            self._head_arrived(parser)
            if exc.body:
                self._deliver(exc.body)
            self._fail(
                APIConnectionError(
                    f"the response is malformed: {exc}",
                    request_sent=True if parser.head is not None else None,
                )
            )
            return
        if self._head_waiter is not None and not self._head_arrived(parser):
            return
        if body:
            sink = self._sink
            if sink is not None:  # the reader is pumping: the common case, inlined
                self._unread += len(body)
                self._feed_sink(sink, body)
            else:
                self._deliver(body)
            if self._error is not None:
                return
        if parser.complete:
            self._end()
        elif (
            (self._signaled or self._sink is None)
            and self._unread > _HIGH_WATER
            and not self._paused
        ):
            self._paused = True
            # Nothing can arrive while we hold the socket back: the wait is the consumer's, not
            # the server's, so the read timeout stops until reading resumes (as aiohttp's does).
            self._cancel_timer()
            if self._transport is not None:
                self._transport.pause_reading()
        elif self._read_interval and self._sink is not None and not self._signaled:
            self._rest(now)
        self._read_ref = now
        if self._signaled or self._ended or self._error is not None:
            self._wake()

    def _head_arrived(self, parser: ResponseParser) -> bool:
        head = parser.head
        if head is None:
            return False
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(head)
        return True

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        self._state = _CLOSED
        self._cancel_timer()
        self._pool._forget(self)
        if state != _ACTIVE or self._ended or self._error is not None:
            self._wake()
            return
        parser = self._parser
        if parser is None or parser.head is None:
            self._fail(
                APIConnectionError(
                    "the server closed the connection before answering", request_sent=None
                )
            )
            return
        try:
            tail = parser.feed_eof()
        except ProtocolError as cut:
            reason = f": {exc}" if exc is not None else ""
            self._fail(
                APIConnectionError(
                    f"the server closed the connection mid-response ({cut}){reason}",
                    request_sent=True,
                )
            )
            return
        if tail:
            self._deliver(tail)
        self._end()
        self._wake()

    # -- the request -------------------------------------------------------------------------------

    def usable(self) -> bool:
        transport = self._transport
        return (
            self._state == _IDLE
            and transport is not None
            and not transport.is_closing()
            and not self._peer_gone()
        )

    def _peer_gone(self) -> bool:
        """Whether the server closed this idle connection (or sent on it) in a way the loop has
        not read yet: a FIN that came just after the last response. One ``recv`` with
        ``MSG_PEEK`` on the non-blocking socket; only where we hold it (selector loops)."""
        sock = self._raw
        if sock is None:
            return False
        try:
            pending = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False  # nothing pending: the connection is as we left it
        except OSError:
            return True  # reset
        # b"": the close; bytes: nothing may come on an idle connection (a TLS close_notify).
        del pending
        return True

    @property
    def answered(self) -> bool:
        """Whether any byte of the current response arrived."""
        return self._answered

    def keep_socket(self, sock: socket.socket, *, tls: bool) -> None:
        """On a selector loop: the socket under the transport, to peek at before a reuse and (not
        under TLS) to read directly when a rest ends."""
        self._raw = sock
        if not tls:
            self._sock = sock

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    def _schedule_rest(self, rest: float) -> None:
        self._pool._rest(self, rest)

    async def send(
        self, request: bytes, *, method: str, read_timeout: float | None
    ) -> ResponseHead:
        """Send one request and wait for the response's head."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise APIConnectionError("the connection closed before the request", request_sent=False)
        self._cancel_timer()
        self._state = _ACTIVE
        self._answered = False
        self._parser = ResponseParser(method=method)
        self._read_timeout = read_timeout
        self._last_data_at = _monotonic()
        waiter: asyncio.Future[ResponseHead] = self._loop.create_future()
        self._head_waiter = waiter
        transport.write(request)
        if read_timeout is not None:
            self._arm(read_timeout)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            self._head_waiter = None

    async def pump(self, sink: BodySink) -> bool:
        """Hand body bytes to ``sink`` until it asks for a wake-up (True) or the body ends
        (False).

        The sink is held only while a pump runs (bytes in between wait in ``_early``): the
        connection, which the event loop keeps alive, must not keep an abandoned stream alive.
        """
        if self._early:
            early, self._early = self._early, []
            for data in early:
                self._feed_sink(sink, data)
        while True:
            if self._signaled:
                self._signaled = False
                self._consumed()
                return True
            if self._error is not None:
                raise self._error
            if self._ended:
                return False
            self._consumed()
            waiter = self._loop.create_future()
            self._waiter = waiter
            self._sink = sink
            try:
                await waiter
            finally:
                self._waiter = None
                self._sink = None

    def finish(self) -> None:
        """The consumer is done with a stream that ended cleanly: reuse the connection once the
        body has ended, else close it."""
        self._sink = None
        self._early = []
        self._read_interval = 0.0
        self._stop_resting()  # the terminating chunk, if still to come, should not wait
        self._consumed()  # a paused socket must be read again to see the body's end
        if self._state != _ACTIVE or self._error is not None:
            self.close()
        elif self._ended:
            self._release()
        else:
            # The terminating chunk is usually in the next read: wait for it briefly.
            self._state = _DRAINING
            self._arm(_DRAIN_GRACE)

    def close(self) -> None:
        """Close the connection now (the consumer's or the pool's call): unread bytes go too."""
        self._sink = None
        self._early = []
        if self._error is None and not self._ended:
            self._error = APIConnectionError(
                "the stream's connection was closed", request_sent=True
            )
        # A request waiting for its head (the pool closed under it) fails now: connection_lost
        # will find the state _CLOSED and leave the waiter alone, and the read timer is gone.
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done() and self._error is not None:
            waiter.set_exception(self._error)
        self._shutdown()

    def _shutdown(self) -> None:
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._cancel_timer()
        self._wake()
        transport = self._transport
        if transport is not None and not self._loop.is_closed():
            if self.origin[0] == "https":
                # No close_notify exchange: whatever the server still sends is discarded, and a
                # peer that never answers would hold the socket for ssl_shutdown_timeout (30 s),
                # past the loop's end. aiohttp (ssl_shutdown_timeout=0) aborts too.
                transport.abort()
            else:
                transport.close()
        self._pool._forget(self)

    # -- internals ---------------------------------------------------------------------------------

    def _deliver(self, body: bytes) -> None:
        sink = self._sink
        if sink is None:
            if self._state == _ACTIVE:
                self._early.append(body)
                self._unread += len(body)
            return
        self._unread += len(body)
        self._feed_sink(sink, body)

    def _feed_sink(self, sink: BodySink, body: bytes) -> None:
        try:
            if sink(body):
                self._signaled = True
        except Exception as exc:
            # The decoder's error (an oversized event): the reader's to raise, after it has taken
            # the events decoded before it.
            self._signaled = True
            self._fail(exc)

    def _consumed(self) -> None:
        self._unread = 0
        if self._paused:
            self._paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
            if self._state == _ACTIVE and not self._ended and self._read_timeout is not None:
                self._last_data_at = time.monotonic()
                self._arm(self._read_timeout)

    def _end(self) -> None:
        self._ended = True
        if self._state == _DRAINING:
            self._release()
        elif self._state == _ACTIVE:
            # The body is whole: a consumer slower than the read timeout must not cost the
            # connection (finish() reuses it).
            self._cancel_timer()

    def _release(self) -> None:
        parser = self._parser
        self._cancel_timer()
        if parser is None or not parser.reusable or self._loop.is_closed():
            self.close()
            return
        self._state = _IDLE
        self._parser = None
        self._sink = None
        self._early = []
        self._ended = False
        self._signaled = False
        self._error = None
        self._consumed()
        self._pool._idle_again(self)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        # Bytes not yet pumped stay: the reader takes their events before the error.
        self._wake()
        self._shutdown()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The read timeout: one timer per connection, re-armed lazily when data moved the deadline
    # (as the stream's own watchdog does) instead of a timer per chunk.
    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        if self._state == _DRAINING:
            self.close()
        elif self._state == _IDLE:
            self.close()  # kept alive long enough
        elif self._state == _ACTIVE and self._read_timeout is not None:
            remaining = self._last_data_at + self._read_timeout - _monotonic()
            if remaining > 0:
                self._arm(remaining)
                return
            self._fail(
                APITimeoutError(
                    "timed out waiting for data from the server (read timeout)",
                    phase="read",
                    request_sent=True,
                )
            )

    def idle(self, keepalive: float) -> None:
        self._arm(keepalive)
