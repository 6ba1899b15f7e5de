"""Event streams over our own HTTP/1.1 connections: an ``asyncio.Protocol`` that parses responses
with ``_http1`` and hands body bytes to the stream's decoder inside ``data_received``, and the pool
that owns those connections.

Why not aiohttp for streams: per HTTP chunk (one token at model speed) aiohttp runs its protocol
and payload layers in Python, re-arms the ``sock_read`` timer, wakes a ``StreamReader`` future and
resumes the reading task through ``iter_any``; here a chunk costs one ``feed`` of the HTTP parser
and one of the SSE decoder, and the reading task wakes only when the stream's consumer has
something to take (for ``final_text`` and the fan-out: only at the end). benchmarks/README.md has
the figures. JSON requests, and streams on a session the caller passed in, stay on aiohttp.

Proxies: a connection is keyed by its origin and the proxy it goes through (``_proxy``). An https
origin is reached through an ``http://`` proxy with a ``CONNECT host:port`` tunnel, then TLS to the
origin inside it; a plain-http origin through the proxy with absolute-form request targets. The
proxy's credentials go in the ``CONNECT`` or on the proxied request only; the origin's headers never
go into a ``CONNECT``. Once connected, a proxied connection is read exactly as a direct one: the
per-chunk path does not know about proxies.

Rules: every socket the pool opens holds a slot of the client's ``ConnectionBudget``, from before
it connects until it is closed, and aiohttp's sockets (``_transport``) hold slots of the same
budget, so ``max_connections`` bounds them all; a connection goes back to the pool only after a
whole, length-delimited, keep-alive response; every error that leaves this module is an
``APIConnectionError``, an ``APITimeoutError`` or (a proxy's refusal) an ``APIError``. ``close()``
is synchronous.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import socket
import ssl as ssl_module
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast

import aiohappyeyeballs
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._http1 import ProtocolError, ResponseHead, ResponseParser, encode_request
from ._proxy import Proxy, proxy_refused
from ._version import __version__
from .errors import APIConnectionError, APIError, APITimeoutError

__all__ = [
    "BodySink",
    "ConnectionBudget",
    "NativeResponse",
    "StreamPool",
    "fd_exhaustion_message",
    "rest_length",
]

# Takes body bytes; returns True when the reading task should wake up for them.
BodySink = Callable[[bytes], bool]
Origin = tuple[str, str, int]
# What a pooled connection can serve: its origin, through which proxy (or none).
PoolKey = tuple[Origin, Proxy | None]
# (family, type, proto, canonname, sockaddr), as getaddrinfo gives them.
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]
_DNS_TTL = 10.0

# A consumer that does not come back for its events stops the socket being read past this many
# bytes (the kernel's buffers and the server's flow control take over).
_HIGH_WATER = 256 * 1024
# A connection whose body ended after the consumer was done (the terminating chunk came late)
# waits this long for it before being closed instead of reused.
_DRAIN_GRACE = 1.0
_FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
# We ask for identity; a server (or proxy) that compresses anyway is decoded, in pieces of at most
# this many bytes, so a small compressed read never becomes one huge buffer (a gzip bomb stops at
# the decoder's event size limit).
_INFLATE_PIECE = 64 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# What one read at the end of a rest takes at most: asyncio's selector transports read as much.
_REST_READ_SIZE = 256 * 1024
# read_at_intervals: a rest lasts at most this share of the request's age, and none is taken
# shorter than the interval divided by _REST_HALVINGS.
_REST_SHARE = 0.1
_REST_HALVINGS = 16
_IDLE, _ACTIVE, _DRAINING, _CLOSED = range(4)
_monotonic = time.monotonic
# A proxy's answer to CONNECT: its head is all we read, and a head past this is not one.
_CONNECT_HEAD_LIMIT = 64 * 1024
_USER_AGENT = f"infernet-async/{__version__}"


def fd_exhaustion_message(exc: OSError) -> str | None:
    """The message for a connection that failed for want of a file descriptor, else ``None``."""
    if exc.errno in _FD_ERRNOS or "too many open files" in str(exc).lower():
        which = errno.errorcode.get(exc.errno or errno.EMFILE, "EMFILE")
        return (
            f"too many open files ({which}): the process has no file descriptor left for a new "
            "connection; close streams you no longer read, share one client, or raise the limit "
            "(ulimit -n)"
        )
    return None


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


def _ip_literal(host: str, port: int) -> list[AddrInfo] | None:
    if "%" in host:
        return None  # a scoped IPv6 address needs getaddrinfo for its scope id
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


def _resend_on_a_new_connection(
    method: str, exc: APIConnectionError, *, reused: bool, conn: _Connection
) -> bool:
    """Whether a request that failed on ``conn`` goes once more on a new connection: it was a
    pooled one, nothing of an answer came, and sending again cannot make a second job: a GET, or
    any request known not to have left (``request_sent`` False). A POST written whole and then
    met by the close is the ambiguous case: the server may have read it, so it is not resent
    (a second billed job is worse than an error)."""
    if not reused or conn.answered or isinstance(exc, APITimeoutError):
        return False
    return method in ("GET", "HEAD") or exc.request_sent is False


class ConnectionBudget:
    """The client's sockets, whichever stack opens them: at most ``limit`` open at once.

    Each socket takes a slot before it connects and gives it back once it is closed: the pool's
    connections (``StreamPool``) and aiohttp's (``_transport``'s connector). ``give()`` hands the
    slot on at the loop's next turn, after the transport's own close callback, so the socket is
    really gone before another connects in its place. When none is free, ``reclaim()`` asks the
    stacks, in the order they registered, to close one idle keep-alive connection; else the
    taker waits, first come first served.
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


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self, pool: StreamPool, key: PoolKey) -> None:
        self._pool = pool
        self.key = key
        self.origin = key[0]
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._state = _ACTIVE
        self._parser: ResponseParser | None = None
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._sink: BodySink | None = None
        self._early: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._signaled = False
        self._ended = False
        self._error: BaseException | None = None
        self._paused = False
        self._unread = 0
        self._read_timeout: float | None = None
        self._last_data_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # > 0: between reads the socket may rest up to this long (read_at_intervals); _asked_at is
        # when the request began, _read_ref the time of the last read or of the end of a rest.
        self._read_interval = 0.0
        self._asked_at = 0.0
        self._read_ref = 0.0
        self._resting = False
        # The plain socket under a selector loop's transport, read directly when a rest ends.
        self._sock: socket.socket | None = None
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

    def _rest(self, now: float) -> None:
        if self._resting or self._paused or self._transport is None:
            return
        rest = rest_length(self._read_interval, now - self._asked_at, now - self._read_ref)
        if not rest:
            return
        self._resting = True
        self._transport.pause_reading()
        self._pool._rest(self, rest)

    def _stop_resting(self) -> None:
        """Read again (the pool's timer, or the response is done with); a no-op if not resting."""
        if not self._resting:
            return
        self._resting = False
        self._read_ref = _monotonic()
        transport = self._transport
        if transport is not None and not self._paused and not transport.is_closing():
            transport.resume_reading()

    def _rest_over(self) -> None:
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


class _Inflater:
    """Incremental gzip/deflate decoding of a body, in bounded pieces."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._inflate = zlib.decompressobj(_WBITS[coding])
        self._first = True

    def feed(self, data: bytes, sink: BodySink) -> bool:
        wake = False
        try:
            out = (
                self._inflate_first(data)
                if self._first
                else self._inflate.decompress(data, _INFLATE_PIECE)
            )
            while True:
                if out and sink(out):
                    wake = True
                tail = self._inflate.unconsumed_tail
                if tail:
                    out = self._inflate.decompress(tail, _INFLATE_PIECE)
                elif self._inflate.eof and self._inflate.unused_data:
                    out = self._next_member(self._inflate.unused_data)
                else:
                    return wake
        except zlib.error as exc:
            raise APIConnectionError(
                f"the response body is not valid {self._coding}: {exc}", request_sent=True
            ) from exc

    def _next_member(self, rest: bytes) -> bytes:
        # A gzip body may be several members back to back (RFC 1952 §2.2), each a whole stream:
        # zlib stops at the end of the first, and what follows would be lost unread.
        wbits = _WBITS[self._coding]
        if wbits != _WBITS["gzip"]:  # "gzip" and "x-gzip" alike
            raise zlib.error(f"{len(rest)} bytes after the end of the compressed data")
        self._inflate = zlib.decompressobj(wbits)
        return self._inflate.decompress(rest, _INFLATE_PIECE)

    def check_end(self) -> None:
        """The body ended: raise if it ended inside the compressed data (bytes were lost)."""
        if not self._first and not self._inflate.eof:
            raise APIConnectionError(
                f"the response body ends inside its {self._coding} data: the rest was lost",
                request_sent=True,
            )

    def _inflate_first(self, data: bytes) -> bytes:
        self._first = False
        try:
            return self._inflate.decompress(data, _INFLATE_PIECE)
        except zlib.error:
            if self._coding != "deflate":
                raise
            # "deflate" is often sent raw, without the zlib wrapper RFC 9110 asks for.
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inflate.decompress(data, _INFLATE_PIECE)


class NativeResponse:
    """An open response on one of our connections: the same surface as ``StreamResponse``."""

    __slots__ = (
        "_conn",
        "_done",
        "_inflater",
        "content_type",
        "headers",
        "reason",
        "status",
        "url",
    )

    def __init__(self, conn: _Connection, head: ResponseHead, url: URL) -> None:
        self._conn = conn
        self._done = False
        self.status = head.status
        self.reason = head.reason
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(head.headers))
        self.url = str(url)
        media = self.headers.get("Content-Type", "application/octet-stream")
        self.content_type = media.split(";", 1)[0].strip().lower()
        coding = self.headers.get("Content-Encoding", "identity").strip().lower()
        self._inflater = _Inflater(coding) if coding in _WBITS else None
        if self._inflater is None and coding not in ("identity", ""):
            conn.close()
            raise APIConnectionError(
                f"the server encoded the response with {coding!r}, which we did not ask for "
                "and cannot decode",
                request_sent=True,
            )

    @property
    def closed(self) -> bool:
        return self._done or self._conn._state == _CLOSED

    def read_at_intervals(self, interval: float, *, age: float = 0.0) -> None:
        self._conn.read_at_intervals(interval, age=age)

    async def pump(self, sink: BodySink) -> bool:
        inflater = self._inflater
        if inflater is None:
            return await self._conn.pump(sink)
        more = await self._conn.pump(lambda data: inflater.feed(data, sink))
        if not more:
            inflater.check_end()
        return more

    async def read_all(self, limit: int = 64 * 1024) -> bytes:
        parts: list[bytes] = []
        size = 0

        def collect(data: bytes) -> bool:
            nonlocal size
            parts.append(data)
            size += len(data)
            return True

        try:
            while size < limit and await self.pump(collect):
                pass
        except APIConnectionError:
            pass  # an error body cut short still says what it can
        return b"".join(parts)[:limit]

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()

    def finish(self) -> None:
        if not self._done:
            self._done = True
            self._conn.finish()


class StreamPool:
    """Our connections, by origin and proxy, each holding a slot of ``budget`` while open; idle
    ones kept for ``keepalive`` seconds."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        ssl: ssl_module.SSLContext | bool | None,
        limit: int | None = None,
        budget: ConnectionBudget | None = None,
        keepalive: float = 15.0,
    ) -> None:
        if budget is None:
            budget = ConnectionBudget(loop, limit if limit is not None else 100)
        self.loop = loop
        self.budget = budget
        self._ssl = ssl
        self._ssl_context: ssl_module.SSLContext | None = None
        self._keepalive = keepalive
        self._idle: dict[PoolKey, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._dns: dict[tuple[str, int], tuple[list[AddrInfo], float]] = {}
        self._lookups: dict[tuple[str, int], asyncio.Future[list[AddrInfo]]] = {}
        self.closed = False
        # Resting connections (read_at_intervals), by the rest's length: one timer per length
        # wakes them all, so their reads come together in one turn of the event loop.
        self._resting: dict[float, tuple[list[_Connection], asyncio.TimerHandle]] = {}
        budget.add_reclaimer(self._close_one_idle)

    @property
    def limit(self) -> int:
        """The most sockets open at once: the budget's, shared with the client's other stack."""
        return self.budget.limit

    @property
    def open_connections(self) -> int:
        return len(self._open) + self._connecting

    @property
    def in_use(self) -> int:
        """Connections carrying a request now (open, not idle in the pool)."""
        return len(self._open) - sum(map(len, self._idle.values()))

    def set_limit(self, limit: int) -> None:
        self.budget.set_limit(limit)

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        connect_timeout: float | None,
        read_timeout: float | None,
        on_send: Callable[[bool], None] | None = None,
        proxy: Proxy | None = None,
    ) -> NativeResponse:
        """Send one request on a pooled or new connection; returns once the head is in.
        ``on_send(True)`` once the pool has a connection, or a slot to open one, for it: a wait
        for a free connection is the client's, connecting is the request's. ``proxy``: the
        forward proxy to go through (``_proxy.ProxySettings.select``), or none.

        Raises:
            APIError: the proxy answered 407 (or refused the origin) to a plain-http request or
                to the ``CONNECT``.
        """
        if params:
            url = url.update_query(params)
        origin: Origin = (url.scheme, url.raw_host or "", url.port or 0)
        body = None
        header_items: list[tuple[str, str]] = []
        if not any(name.lower() == "host" for name in headers):
            # The caller's Host (a tunnel, a virtual host) replaces ours, as with aiohttp: two
            # Host fields are a 400 (RFC 9112 §3.2).
            header_items.append(("Host", url.host_port_subcomponent or ""))
        header_items.extend(headers.items())
        target = url.raw_path_qs
        if proxy is not None and url.scheme == "http":
            # Forwarded by the proxy (RFC 9112 §3.2.2): the absolute URL, and its credentials on
            # the request itself; an https origin gets them in the CONNECT instead.
            target = str(url.with_fragment(None))
            authorization = proxy.authorization
            if authorization is not None:
                header_items.append(("Proxy-Authorization", authorization))
        if json_body is not None:
            body = json.dumps(json_body).encode()
            header_items.append(("Content-Type", "application/json"))
        try:
            request = encode_request(method, target, header_items, body)
        except ValueError as exc:
            raise APIConnectionError(f"cannot send the request: {exc}", request_sent=False) from exc
        key: PoolKey = (origin, proxy)
        conn, reused = await self._acquire(key, connect_timeout, on_send)
        try:
            head = await conn.send(request, method=method, read_timeout=read_timeout)
        except APIConnectionError as exc:
            if not _resend_on_a_new_connection(method, exc, reused=reused, conn=conn):
                raise
            # The server had closed this pooled connection: the request never reached it. Once,
            # on a connection of its own.
            conn, _ = await self._acquire(key, connect_timeout, fresh=True)
            head = await conn.send(request, method=method, read_timeout=read_timeout)
        return NativeResponse(conn, head, url)

    def close(self) -> None:
        """Close every connection, idle or in use; the pool takes no more requests."""
        self.closed = True
        # Idle lists first: each closing connection looks itself up in them (O(n) each).
        self._idle.clear()
        for conn in list(self._open):
            conn.close()
        for _, timer in self._resting.values():
            timer.cancel()
        self._resting.clear()
        # Our waiters see the pool closed; the other stack's re-check and wait again.
        self.budget.wake_all()

    # -- connections -------------------------------------------------------------------------------

    async def _acquire(
        self,
        key: PoolKey,
        connect_timeout: float | None,
        on_granted: Callable[[bool], None] | None = None,
        *,
        fresh: bool = False,
    ) -> tuple[_Connection, bool]:
        """A connection for ``key`` and whether it was reused from the pool; ``fresh``: a new
        one (an idle one may be closed to make room)."""
        budget = self.budget
        while True:
            if self.closed:
                raise APIConnectionError("the client is closed", request_sent=False)
            idle = self._idle.get(key)
            while idle and not fresh:
                conn = idle.pop()
                if conn.usable():
                    if on_granted is not None:
                        on_granted(True)
                    return conn, True
                conn.close()
            if budget.try_take():
                if on_granted is not None:
                    on_granted(True)
                return await self._connect(key, connect_timeout), False
            if budget.reclaim():
                # The closed socket's slot comes back at the next turn of the loop, after the
                # socket itself is gone: never one more open than the budget, even for a moment.
                await asyncio.sleep(0)
                continue
            await budget.wait()

    def _close_one_idle(self) -> bool:
        for conns in self._idle.values():
            if conns:
                conns.pop(0).close()
                return True
        return False

    async def _connect(self, key: PoolKey, connect_timeout: float | None) -> _Connection:
        """A new connection for ``key``; the caller took a budget slot for it, which this gives
        back if connecting fails."""
        origin, proxy = key
        scheme, host, port = origin
        context = self._context() if scheme == "https" else None
        peer = (proxy.host, proxy.port) if proxy is not None else (host, port)
        self._connecting += 1
        sock: socket.socket | None = None
        reached = False  # the socket to the proxy (or the origin) connected
        try:
            async with asyncio.timeout(connect_timeout):
                # RFC 8305, as aiohttp's connector does: a name whose first address black-holes
                # (broken IPv6) still connects through the next within the connect timeout.
                # aiohappyeyeballs rather than create_connection(happy_eyeballs_delay=...), whose
                # staggered_race leaks the winning socket when cancelled on Python < 3.12.
                infos = await self._resolve(*peer)
                if len(infos) == 1:
                    sock = await self._connect_socket(infos[0])
                else:
                    sock = await aiohappyeyeballs.start_connection(
                        infos, happy_eyeballs_delay=0.25, interleave=1, loop=self.loop
                    )
                reached = True
                if proxy is not None and context is not None:
                    await self._tunnel(sock, proxy, host, port)
                tunnelled, sock = sock, None  # from here on the transport owns it
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self, key),
                    sock=tunnelled,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except BaseException as exc:
            if sock is not None:
                sock.close()
            self._connecting -= 1
            self.budget.give()
            error = _connect_error(exc, host, port, proxy, reached=reached)
            if error is exc:
                raise
            raise error from exc
        self._connecting -= 1
        if isinstance(self.loop, asyncio.SelectorEventLoop):
            conn._raw = tunnelled
            if context is None:
                conn._sock = tunnelled
        self._open.add(conn)
        if self.closed:
            conn.close()
            raise APIConnectionError("the client is closed", request_sent=False)
        return conn

    async def _tunnel(self, sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
        """``CONNECT host:port`` through ``proxy`` on the connected ``sock``; returns once the
        proxy answered 2xx (the tunnel is open), else raises what its answer means.

        Only the proxy's own headers go in: Host, User-Agent and Proxy-Authorization, never the
        origin's Authorization.
        """
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        fields = [("Host", target), ("User-Agent", _USER_AGENT)]
        authorization = proxy.authorization
        if authorization is not None:
            fields.append(("Proxy-Authorization", authorization))
        await self.loop.sock_sendall(sock, encode_request("CONNECT", target, fields, None))
        # The head alone is parsed (as a GET's: a CONNECT's 2xx has no body, and the parser
        # refuses CONNECT for that reason); what a refusal's body says is not needed.
        parser = ResponseParser(method="GET")
        received = 0
        extra = b""
        while parser.head is None:
            data = await self.loop.sock_recv(sock, 16 * 1024)
            if not data:
                raise APIConnectionError(
                    f"the proxy {proxy.address} closed the connection instead of answering "
                    f"CONNECT {target}",
                    request_sent=False,
                )
            received += len(data)
            if received > _CONNECT_HEAD_LIMIT:
                raise APIConnectionError(
                    f"the proxy {proxy.address} answered CONNECT with an oversized head",
                    request_sent=False,
                )
            try:
                extra = parser.feed(data)
            except ProtocolError as exc:
                raise APIConnectionError(
                    f"the proxy {proxy.address} answered CONNECT {target} with a malformed "
                    f"response: {exc}",
                    request_sent=False,
                ) from exc
        head = parser.head
        if not 200 <= head.status < 300:
            raise proxy_refused(
                proxy, head.status, head.reason, target=target, headers=dict(head.headers)
            )
        if extra:
            # Nothing may come before our TLS ClientHello: the tunnel cannot be trusted.
            raise APIConnectionError(
                f"the proxy {proxy.address} sent data after opening the tunnel to {target}",
                request_sent=False,
            )

    async def _connect_socket(self, info: AddrInfo) -> socket.socket:
        """A connected socket to one address: no race to run (an IP literal, or a name with one
        address), so none of its machinery is paid for on every connection of a fan-out."""
        family, kind, proto, _, address = info
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await self.loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _resolve(self, host: str, port: int) -> list[AddrInfo]:
        """The addresses of ``host``: an IP literal as is; a name from a cache kept ``_DNS_TTL``
        seconds (as aiohttp's connector does), one lookup at a time per name, so a fan-out of a
        thousand streams costs one ``getaddrinfo`` in the executor, not a thousand."""
        key = (host, port)
        cached = self._dns.get(key)
        if cached is not None and cached[1] > self.loop.time():
            return cached[0]
        literal = _ip_literal(host, port)
        if literal is not None:
            self._dns[key] = (literal, float("inf"))  # parsing it again costs as much as a lookup
            return literal
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._getaddrinfo(host, port))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda done: self._resolved(key, done))
        # Shielded: one caller's cancellation must not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    async def _getaddrinfo(self, host: str, port: int) -> list[AddrInfo]:
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, kind, proto, name, addr) for family, kind, proto, name, addr in infos]

    def _resolved(self, key: tuple[str, int], lookup: asyncio.Future[list[AddrInfo]]) -> None:
        self._lookups.pop(key, None)
        if not lookup.cancelled() and lookup.exception() is None:
            self._dns[key] = (lookup.result(), self.loop.time() + _DNS_TTL)

    def _context(self) -> ssl_module.SSLContext:
        if isinstance(self._ssl, ssl_module.SSLContext):
            return self._ssl
        if self._ssl_context is None:
            context = ssl_module.create_default_context()
            if self._ssl is False:
                context.check_hostname = False
                context.verify_mode = ssl_module.CERT_NONE
            self._ssl_context = context
        return self._ssl_context

    def _idle_again(self, conn: _Connection) -> None:
        if self.closed:
            conn.close()
            return
        self._idle.setdefault(conn.key, []).append(conn)
        conn.idle(self._keepalive)
        # A waiter for this key takes it; any other may close it for the slot.
        self.budget.wake_one()

    def _rest(self, conn: _Connection, interval: float) -> None:
        batch = self._resting.get(interval)
        if batch is None:
            timer = self.loop.call_later(interval, self._end_rest, interval)
            self._resting[interval] = batch = ([], timer)
        batch[0].append(conn)

    def _end_rest(self, interval: float) -> None:
        conns, _ = self._resting.pop(interval)
        for conn in conns:
            conn._rest_over()

    def _forget(self, conn: _Connection) -> None:
        if conn not in self._open:
            return
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self.budget.give()


def _connect_error(
    exc: BaseException, host: str, port: int, proxy: Proxy | None, *, reached: bool
) -> BaseException:
    """What a failed connect raises: ours as is; a timeout or socket error naming the proxy when
    there is one (an unreachable proxy is not an unreachable origin). ``reached``: the socket to
    the proxy (or origin) had connected, so what failed is the tunnel or TLS to the origin."""
    if isinstance(exc, APIConnectionError | APIError):
        return exc
    origin = f"{host}:{port}"
    if proxy is not None:
        origin += f" through the proxy {proxy.address}"
    if isinstance(exc, TimeoutError):
        return APITimeoutError(
            f"timed out connecting to {origin}", phase="connect", request_sent=False
        )
    if isinstance(exc, OSError):
        message = fd_exhaustion_message(exc) or (
            f"connection failed: cannot connect to the proxy {proxy.address}: {exc}"
            if proxy is not None and not reached
            else f"connection failed: cannot connect to {origin}: {exc}"
        )
        return APIConnectionError(message, request_sent=False)
    return exc
