"""``TokenStream``: the single read loop from response bytes to tokens, with cancellation-aware
accumulation.

Shape: the response pumps body bytes into ``_on_body`` -> ``events.TokenDecoder.feed()`` ->
interpret -> the ``Accumulator`` -> the caller. On our own connections (``_connection``) the pump
runs ``_on_body`` inside the protocol's ``data_received``; when nobody looks at single tokens
(``final_text()``, the fan-out) tokens are accumulated right there and the reading task wakes only
for the other events, the end above all. ``TokenStream`` is an explicit async iterator, not
an async generator, so no cleanup hides in a generator ``finally``: on every terminal condition
(done, error event, EOF, timeout, an exception, cancellation) ``_next_event`` itself closes the
response *before* it raises, and records the state first, so ``text``/``partial_text`` are right
whatever happens. ``resp.close()`` is synchronous: nothing to shield. A stream abandoned without
``aclose()`` closes its response when garbage-collected, with a ``ResourceWarning``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import warnings
import weakref
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from ._accumulator import Accumulator, ReplayDiverged, ReplayFilter, TerminalReason
from ._ids import validate_job_id
from ._resource import AsyncResource
from ._retry import backoff_delay
from ._token_decoder import TokenDecoder
from ._transport import read_and_release
from .errors import (
    AnswerTooLargeError,
    APIConnectionError,
    APIError,
    APITimeoutError,
    IncompleteStreamError,
    NodeDisconnectedError,
    NotFoundError,
    StreamError,
    stream_error_for_code,
)
from .events import (
    Done,
    ErrorEvent,
    EventDecoder,
    JobInfo,
    Restart,
    StreamEvent,
    Token,
)

if TYPE_CHECKING:
    from ._surfaces import ApiChoice, Call, Surface
    from ._transport import OpenStream, Transport

__all__ = ["NodeDisconnectPolicy", "TokenStream"]

logger = logging.getLogger("infernet_async")

NodeDisconnectPolicy = Literal["raise", "restart"]
_JOB_ID_HEADER = "X-Infernet-Job-Id"
_NEW, _OPENING, _OPEN, _ENDED, _CLOSED = range(5)
# The watchdog's mark for a reader interrupted by aclose() rather than by a deadline.
_CLOSED_PHASE = "closed"
# How much of a body that is not a stream an error message quotes.
_EXCERPT_BYTES = 200


class TokenStream(AsyncResource):
    """The tokens of one answer, as they arrive.

    Use it as ``async with client.stream(...) as stream: async for token in stream: ...``. The
    request is sent on ``__aenter__`` or on the first iteration. ``text`` is everything received so
    far (also after ``break``, a timeout, cancellation or an error, whose ``partial_text`` holds the
    same); ``finished`` is true only after a clean ``[DONE]``.

    Node disconnects: the control plane re-queues the job. If no token of the failed attempt reached
    the caller, the stream follows the re-queued job transparently. Otherwise
    ``on_node_disconnect="raise"`` (the default) raises ``NodeDisconnectedError`` with the partial
    text, and ``"restart"`` follows the re-queued job: ``events()`` then yields a ``Restart`` event
    and ``text`` holds only the new attempt::

        async with client.stream(model=m, messages=msgs, on_node_disconnect="restart") as stream:
            async for event in stream.events():
                if isinstance(event, Restart):
                    screen.clear()          # the answer starts over
                elif isinstance(event, Token):
                    screen.write(event.text)
    """

    def __init__(
        self,
        transport: Transport,
        api: ApiChoice,
        *,
        request: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        on_node_disconnect: NodeDisconnectPolicy = "raise",
        reconnect: bool = False,
    ) -> None:
        if on_node_disconnect not in ("raise", "restart"):
            raise ValueError("on_node_disconnect must be 'raise' or 'restart'")
        if request is None and job_id is None:
            raise ValueError("a stream needs a request to submit or a job id")
        self._transport = transport
        self._api = api
        # The surface this stream's job lives on, once it is open (its reconnects stay there).
        self._surface: Surface | None = None
        limit = transport.max_answer_bytes
        self._max_answer_bytes = limit if limit is not None else sys.maxsize
        self._request = dict(request) if request is not None else None
        self._policy: NodeDisconnectPolicy = on_node_disconnect
        self._reconnect = reconnect
        self._acc = Accumulator()
        self._acc.set_job_id(job_id)
        self._resp: OpenStream | None = None
        # True while the reader only wants the whole answer: tokens are taken in ``_on_body``.
        self._collect = False
        # final_text(read_interval=): how long the socket rests between reads once tokens flow.
        self._read_interval = 0.0
        self._decoder: EventDecoder = TokenDecoder()
        self._pending: deque[StreamEvent] = deque()
        self._state = _NEW
        self._error: BaseException | None = None
        self._busy = False
        self._resume: ReplayFilter | None = None
        self._last_id: str | None = None
        self._restarts = 0
        self._reconnects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_at: float | None = None
        # The deadlines run from sending. ``_sent_at`` is when the current attempt's request went
        # out, None from an open's or a reconnect's start (its backoff) until it has, and while a
        # retry of it waits: the first token's deadline runs from it, the stall one from the later
        # of it and the last token, and neither through the client's own waits. ``_job_sent_at``
        # is when the stream's first request last went out (the job's start): the total
        # deadline's and the time to first token's.
        self._total_deadline: float | None = None
        self._sent_at: float | None = None
        self._job_sent_at: float | None = None
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None
        # The deadline watchdog (see ``_pump``): one timer per stream instead of an
        # ``asyncio.timeout`` per read. ``_reader`` is the task while it is inside a read, and
        # ``_expired_phase`` is set once the watchdog has cancelled that task for a deadline.
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = 0.0
        self._reader: asyncio.Task[Any] | None = None
        self._expired_phase: str | None = None

    # -- public state ------------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """Everything received so far (of the current attempt, after a restart)."""
        return self._acc.text

    @property
    def job_id(self) -> str | None:
        """The job's id, from ``X-Infernet-Job-Id`` or the typed dialect's ``job`` event."""
        return self._acc.job_id

    @property
    def finished(self) -> bool:
        """True only after the stream's clean end on its surface: ``[DONE]`` (or ``event: done``)
        on the jobs API, a finish chunk then ``[DONE]`` with no error chunk on the
        OpenAI-compatible surface, ``event: done`` on the chat surface."""
        return self._acc.finished

    @property
    def done_text(self) -> str | None:
        """The whole answer as the stream's end event stated it (the chat surface's and the typed
        dialect's ``done`` carry it), or ``None``.

        Where it extends the tokens received, the rest was handed out as one last token, so
        ``text`` is the whole answer; where it contradicts them, ``text`` keeps the tokens (what
        the caller saw) and this keeps the server's version.
        """
        return self._acc.done_text

    @property
    def api(self) -> str | None:
        """The API surface this stream's job lives on (``jobs``, ``openai``, ``chat``), once
        open."""
        return self._surface.name if self._surface is not None else None

    @property
    def closed(self) -> bool:
        return self._state in (_ENDED, _CLOSED)

    @property
    def terminal_reason(self) -> str | None:
        """How the stream ended: done, error, node_disconnected, incomplete, timeout, cancelled,
        closed...
        """
        return self._acc.reason

    @property
    def restarts(self) -> int:
        """How many times the stream followed the re-queued job after ``node_disconnected``."""
        return self._restarts

    @property
    def reconnects(self) -> int:
        """How many times the stream reconnected after the connection dropped."""
        return self._reconnects

    @property
    def token_count(self) -> int:
        """Tokens in ``text``: the token events it was made of. After a reconnect to a job that
        had ended meanwhile, the rest of its answer comes replayed as one event (the control plane
        replays a finished job's text whole), and counts as one."""
        return self._acc.token_count

    @property
    def time_to_send(self) -> float | None:
        """Seconds from opening the stream to sending the request that started its job (the
        retries' backoffs, and in a fan-out the shared rate limiter's waits), or ``None`` before.
        """
        if self._job_sent_at is None or self._started_at is None:
            return None
        return self._job_sent_at - self._started_at

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from sending the request to the first token, or ``None`` before it."""
        if self._first_token_at is None:
            return None
        sent = self._job_sent_at if self._job_sent_at is not None else self._started_at
        return self._first_token_at - sent if sent is not None else None

    @property
    def tokens_per_second(self) -> float | None:
        """The generation rate after the first token: ``(tokens - 1) / (last - first)``; ``None``
        below 2.
        """
        if self._first_token_at is None or self._last_token_at is None or self.token_count < 2:
            return None
        span = self._last_token_at - self._first_token_at
        return (self.token_count - 1) / span if span > 0 else None

    def __repr__(self) -> str:
        state = ("new", "opening", "open", "ended", "closed")[self._state]
        return (
            f"<TokenStream job_id={self.job_id!r} state={state} tokens={self.token_count} "
            f"finished={self.finished}>"
        )

    # -- iteration ---------------------------------------------------------------------------------

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> str:
        while True:
            event = await self._next_event()
            if type(event) is Token:
                return event.text

    def events(self) -> _EventIterator:
        """The typed events (``Token``, ``JobInfo``, ``Meta``, ``Restart``, ``Done``), sharing this
        stream's cursor.

        An in-stream error is raised as a ``StreamError``, like token iteration does, not yielded.
        """
        return _EventIterator(self)

    async def final_text(self, *, read_interval: float = 0.0) -> str:
        """Read the rest of the stream and return the whole answer.

        Args:
            read_interval: once the first token is in, let the socket rest up to this many
                seconds between reads while tokens come faster than that, so that one read takes
                many: less CPU per token for a process running many streams (the fan-out's
                default is 0.1). The end of the answer is then seen up to ``read_interval`` late,
                and never later than a tenth of the stream's age; the time to first token is not
                affected. At most a quarter of the stall and read timeouts. 0 (the
                default): every chunk is read as it arrives.

        Raises:
            StreamError: the stream failed (the same error iteration raised), or was closed before
            ``[DONE]``.
        """
        if read_interval < 0:
            raise ValueError("read_interval must be >= 0")
        stall = self._transport.timeouts.stall
        if stall is not None:
            read_interval = min(read_interval, stall / 4)
        self._collect = True
        self._read_interval = read_interval
        if read_interval and self._first_token_at is not None:
            self._read_sparsely()
        try:
            async for _ in self:
                pass
        finally:
            self._collect = False
            if self._read_interval:
                self._read_interval = 0.0
                self._read_sparsely()  # a caller iterating next wants each token as it comes
        if self._acc.finished:
            return self._acc.text
        if self._error is not None:
            raise self._error
        raise StreamError(
            "the stream was closed before [DONE]", partial_text=self.text, job_id=self.job_id
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> TokenStream:
        if self._state == _NEW:
            self._busy = True
            try:
                await self._start()
            finally:
                self._busy = False
        return self

    async def aclose(self) -> None:
        """Close the stream and release its connection at once; idempotent, and safe while
        cancelled.
        """
        if self._state == _CLOSED:
            return
        self._acc.fail("closed")
        self._state = _CLOSED
        reader = self._reader
        if (
            self._resp is None
            and reader is not None
            and reader is not asyncio.current_task()
            and self._expired_phase is None
        ):
            # Another task is opening the stream (waiting for the rate limiter, a backoff, the
            # connection or the response head): no response to close yet, so the opening is
            # interrupted as a deadline interrupts it, and nothing is sent after this.
            self._expired_phase = _CLOSED_PHASE
            reader.cancel()
        self._close_response()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # The timer holds only a weak reference to the stream; cancelling it spares the loop a
        # dead entry until the deadline.
        handle = getattr(self, "_watchdog", None)
        if handle is not None:
            handle.cancel()
        resp = getattr(self, "_resp", None)
        if resp is None or resp.closed:
            return
        self._resp = None
        # Close before warning: under ``-W error`` the warning raises, and the connection must be
        # freed anyway.
        try:
            resp.close()
        finally:
            _warn(
                f"TokenStream (job {self._acc.job_id}) was garbage-collected while its response "
                "was open; use 'async with client.stream(...)' or 'await stream.aclose()'",
                ResourceWarning,
                source=self,
            )

    # -- the read loop -----------------------------------------------------------------------------

    async def _next_event(self) -> StreamEvent:
        if self._busy:
            raise RuntimeError("another task is already reading this TokenStream")
        self._busy = True
        try:
            return await self._next_event_unlocked()
        finally:
            self._busy = False

    async def _next_event_unlocked(self) -> StreamEvent:
        if self._state == _NEW:
            await self._start()
        if self._state != _OPEN:
            if self._state == _CLOSED and not self._acc.finished and self._error is None:
                self._close_response()
                raise StreamError(
                    "the stream is closed", partial_text=self.text, job_id=self.job_id
                )
            raise StopAsyncIteration
        try:
            while True:
                while self._pending:
                    out = await self._handle(self._pending.popleft())
                    if out is not None:
                        return out
                try:
                    more = await self._pump()
                except APITimeoutError as exc:
                    # Idle past the read timeout, which heartbeats keep a live connection under:
                    # the connection is dead (half open), a drop like any other for a stream that
                    # reconnects. The stream's own deadlines end it.
                    if exc.phase != "read" or not self._may_reconnect():
                        raise
                    await self._connection_lost(exc)
                    continue
                except APIConnectionError as exc:
                    await self._connection_lost(exc)
                    continue
                if not more:
                    self._pending.extend(self._decoder.close())
                    if not self._pending:
                        await self._connection_lost(None)
        except BaseException as exc:
            self._terminate(exc)
            raise

    def _terminate(self, exc: BaseException) -> None:
        """Record how the stream ended and free the connection; the caller re-raises ``exc``
        itself.
        """
        if isinstance(exc, APITimeoutError):
            exc.partial_text = exc.partial_text or self.text
            exc.job_id = exc.job_id or self.job_id
            self._acc.fail("timeout", message=exc.message)
        elif isinstance(exc, StreamError):
            pass  # already recorded where it was raised
        elif isinstance(exc, asyncio.CancelledError):
            self._acc.fail("cancelled")
        elif isinstance(exc, APIError | APIConnectionError):
            self._acc.fail("error", message=str(exc))
        else:
            self._acc.fail("exception", message=repr(exc))
        self._error = exc
        if self._state != _CLOSED:
            self._state = _ENDED
        self._close_response()

    def _close_response(self) -> None:
        self._disarm()
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()

    async def _start(self) -> None:
        self._state = _OPENING
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._started_at = loop.time()
        try:
            surface = self._api.surface
            while True:
                call = (
                    surface.stream_call(self._request)
                    if self._request is not None
                    else surface.job_stream_call(self._job_id_to_open())
                )
                try:
                    await self._open(call, surface)
                except NotFoundError as exc:
                    if exc.body is not None or self._state == _CLOSED:
                        raise
                    # A page, not the API: the server has no such route. Nothing was created,
                    # so the same request goes to the next surface (or this raises).
                    surface = self._api.not_served(surface, call.path, exc)
                    continue
                break
            self._api.settle(surface)
        except BaseException as exc:
            self._terminate(exc)
            raise
        self._state = _OPEN

    def _job_id_to_open(self) -> str:
        job_id = self._acc.job_id
        assert job_id is not None
        return job_id

    async def _open(
        self, call: Call, surface: Surface, *, headers: Mapping[str, str] | None = None
    ) -> None:
        assert self._loop is not None
        if self._state == _CLOSED:
            raise self._closed_while_opening()  # aclose() during a reconnect's backoff
        self._sent_at = None
        # Under the watchdog the reads use, armed as the request goes out (_on_send) for the
        # first token's deadline, which the first read keeps: no asyncio.timeout (a second timer)
        # per stream.
        task, cancelling = self._watch(self._deadline()[0])
        try:
            resp = await self._transport.open_stream(
                call.method,
                call.path,
                json_body=call.body,
                headers=headers,
                on_send=self._on_send,
                auth=call.auth,
                quiet_429_wait=call.quiet_429_wait,
            )
            if resp.content_type == "application/json":
                # A JSON submission instead of a stream (the chat surface always answers so, the
                # jobs API may): follow that job's stream.
                resp = await self._follow_job_object(resp, surface)
            if (
                not 200 <= resp.status < 300
                or resp.status == 204
                or resp.content_type == "text/html"
            ):
                # Not a stream at all (a redirect without a target, no content, a captive portal's
                # page): say what came, not that a stream ended early.
                raise self._transport.redacted(await _not_a_stream(resp))
        except BaseException as exc:
            self._raise_unwatched(task, cancelling, exc)
        self._unwatch(task)
        if self._state == _CLOSED:
            # aclose() came as the open returned, too late to interrupt it.
            resp.close()
            raise self._closed_while_opening()
        self._attach(resp, surface)

    def _on_send(self, sent: bool) -> None:
        """The transport's word on the request being opened: it goes out now (True), or a wait
        before its retry begins (False). What the client waits for itself (the fan-out's rate
        limiter, a retry's backoff) is not the server's time, so no deadline runs through it: the
        first token's runs from this attempt's sending, the total one from the sending of the
        request that started the job (the stream's first open; reconnects keep it)."""
        assert self._loop is not None
        opening = self._state == _OPENING
        if not sent:
            self._sent_at = None
            if opening:
                self._total_deadline = None
            return
        now = self._sent_at = self._loop.time()
        if opening:
            self._job_sent_at = now
            total = self._transport.timeouts.total
            self._total_deadline = now + total if total is not None else None
        deadline, _ = self._deadline()
        if deadline is not None and (self._watchdog is None or self._watchdog_at > deadline):
            self._arm(deadline)

    async def _follow_job_object(self, resp: OpenStream, surface: Surface) -> OpenStream:
        raw = await read_and_release(resp)  # the job's stream may reuse the connection
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        job_id = surface.submission_job_id(body)
        if job_id is None:
            raise APIError(
                "expected an event stream, got a JSON body without a job id", status=resp.status
            )
        try:
            validate_job_id(job_id)
        except ValueError:
            # The id comes from the server: a hostile one is the server's error, not a bad argument.
            raise APIError(
                f"expected an event stream, got a JSON body with a bad job id: {job_id[:80]!r}",
                status=resp.status,
            ) from None
        self._acc.set_job_id(job_id)
        call = surface.job_stream_call(job_id)
        try:
            follow = await self._transport.open_stream(
                call.method, call.path, auth=call.auth, quiet_429_wait=call.quiet_429_wait
            )
        except NotFoundError as exc:
            if exc.body is not None:
                raise
            # The job exists now: a 404 page here must not send the submission to another
            # surface (a second job), so it is no NotFoundError.
            raise APIError(
                f"job {job_id} was created, but its stream route {call.path} answered a 404 page",
                status=exc.status,
                headers=exc.headers,
            ) from exc
        if follow.content_type == "application/json":
            # The job's stream route answered with JSON again: that is no stream, whatever it says.
            raise self._transport.redacted(await _not_a_stream(follow))
        return follow

    async def _open_job_stream(self, headers: Mapping[str, str] | None = None) -> None:
        surface = self._surface
        assert surface is not None
        call = surface.job_stream_call(self._job_id_to_open())
        await self._open(call, surface, headers=headers)

    def _attach(self, resp: OpenStream, surface: Surface) -> None:
        self._resp = resp
        self._surface = surface
        self._decoder = surface.decoder()
        self._pending.clear()
        header_id = resp.headers.get(_JOB_ID_HEADER)
        if header_id:
            self._set_job_id(header_id)
        if self._read_interval and self._first_token_at is not None:
            self._read_sparsely()  # a replay after a dropped connection: tokens flowed already

    def _read_sparsely(self) -> None:
        """Apply ``_read_interval`` to the open response (0: read every chunk at once)."""
        resp, loop, started = self._resp, self._loop, self._started_at
        if resp is not None and not resp.closed:
            age = loop.time() - started if loop is not None and started is not None else 0.0
            resp.read_at_intervals(self._read_interval, age=age)

    def _set_job_id(self, job_id: str | None) -> None:
        if not job_id or self._acc.job_id is not None:
            return
        try:
            self._acc.set_job_id(validate_job_id(job_id))
        except ValueError:
            logger.warning("ignoring a malformed job id from the server: %r", job_id[:80])

    def _deadline(self) -> tuple[float | None, str]:
        """The earliest deadline now in force, and its phase name for the error message.

        Called before every read, so it builds nothing: no candidate list, no ``min()``.
        """
        timeouts = self._transport.timeouts
        at: float | None = None
        phase = ""
        if self._acc.token_count == 0 or self._last_token_at is None:
            if timeouts.first_token is not None and self._sent_at is not None:
                at, phase = self._sent_at + timeouts.first_token, "first_token"
        elif timeouts.stall is not None and self._sent_at is not None:
            # From a reconnect's sending, if later than the last token.
            since = max(self._last_token_at, self._sent_at)
            at, phase = since + timeouts.stall, "stall"
        total = self._total_deadline
        # On a tie the phase's own name wins over "total", the more useful message.
        if total is not None and (at is None or total < at):
            return total, "total"
        return at, phase

    def _timeout_error(self, phase: str) -> APITimeoutError:
        timeouts = self._transport.timeouts
        what = {
            "total": f"the stream exceeded its total timeout ({timeouts.total} s)",
            "first_token": f"no first token within {timeouts.first_token} s",
            "stall": f"no token for {timeouts.stall} s (the node stalled; heartbeats do not count)",
        }.get(phase, "timed out")
        self._acc.fail("timeout", message=what)
        return APITimeoutError(what, partial_text=self.text, job_id=self.job_id, phase=phase)

    # The read deadline. An ``asyncio.timeout_at()`` around every read costs a Timeout object, a
    # TimerHandle pushed on the loop's heap and a cancelled one left behind, per token at model
    # speed (benchmarks/bench_e2e.py, paced, K = 100: 61 µs of client CPU per token with it, 52
    # without). Instead one watchdog timer per stream is armed at the deadline in force and left
    # alone while tokens push the deadline later: when it fires early it re-arms at the new
    # deadline, about once per stall period. Opening the stream runs under it too (the first token's
    # deadline, which the first read then keeps). It must never be later than the deadline, so a
    # read re-arms it when the deadline moved earlier (the first token swaps a long first_token
    # deadline for a short stall one). Cancellation mirrors ``asyncio.Timeout``: the watchdog
    # cancels the task only while it is inside a read, and the read turns that cancellation into
    # ``APITimeoutError`` only if nobody else asked for one.

    def _on_body(self, chunk: bytes) -> bool:
        """Decode body bytes; returns True when the reader has events to take.

        While collecting, tokens are taken here, in the order they came, until another event
        waits in ``_pending``: a replay filter after a reconnect, or a non-token event, sends the
        rest through ``_handle``.
        """
        events = self._decoder.feed(chunk)
        pending = self._pending
        if self._collect and not pending and self._resume is None:
            for event in events:
                if not pending and type(event) is Token:
                    self._take_token(event)
                else:
                    pending.append(event)
        else:
            pending.extend(events)
        return bool(pending)

    async def _pump(self) -> bool:
        """Run the response's pump (under the deadline watchdog); False at the end of the body."""
        resp = self._resp
        if resp is None:
            raise APIConnectionError("the stream's connection was closed", request_sent=True)
        deadline, _ = self._deadline()
        if deadline is None and not self._collect:
            return await resp.pump(self._on_body)
        # Collecting, the first token may bring a deadline (stall) while this pump runs: the
        # watchdog needs the reader registered even when no deadline is in force yet. Not through
        # a helper coroutine shared with _open: a read is a hot path, one frame more on each.
        task, cancelling = self._watch(deadline)
        try:
            more = await resp.pump(self._on_body)
        except BaseException as exc:
            self._raise_unwatched(task, cancelling, exc)
        self._unwatch(task)
        return more

    def _watch(self, deadline: float | None) -> tuple[asyncio.Task[Any], int]:
        """Before a read: arm the watchdog for ``deadline``, the one in force (unless it is armed
        for that or earlier), and make the current task the reader it cancels. Returns the task
        and its ``cancelling()`` count, for ``_raise_unwatched``."""
        if deadline is not None and (self._watchdog is None or self._watchdog_at > deadline):
            self._arm(deadline)
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a TokenStream must be read inside an asyncio task")
        self._reader = task
        return task, task.cancelling()

    def _unwatch(self, task: asyncio.Task[Any]) -> None:
        """After a read that returned."""
        self._reader = None
        if self._expired_phase is not None:
            # The read returned despite our cancel(): withdraw it, or it would hit the caller's
            # next await.
            self._expired_phase = None
            task.uncancel()

    def _raise_unwatched(
        self, task: asyncio.Task[Any], cancelling: int, exc: BaseException
    ) -> NoReturn:
        """After a read that raised ``exc``: raises it, or the deadline's ``APITimeoutError``
        when the watchdog's cancellation ended the read."""
        self._reader = None
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
                raise self._closed_while_opening() from exc
            raise self._timeout_error(phase) from exc
        raise exc

    def _closed_while_opening(self) -> StreamError:
        return StreamError(
            "the stream was closed while it was opening", partial_text=self.text, job_id=self.job_id
        )

    def _arm(self, when: float) -> None:
        self._disarm()
        assert self._loop is not None
        self._watchdog_at = when
        # A weak reference: a pending timer must not keep an abandoned stream alive (its
        # ``__del__`` closes the connection).
        self._watchdog = self._loop.call_at(when, _fire_watchdog, weakref.ref(self))

    def _disarm(self) -> None:
        handle, self._watchdog = self._watchdog, None
        if handle is not None:
            handle.cancel()

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if self._resp is None and self._reader is None:
            return  # between attempts or ended; the next open or read arms it again
        deadline, phase = self._deadline()
        if deadline is None:
            return
        if deadline > self._watchdog_at:
            # Tokens arrived since it was armed: the deadline moved on.
            self._arm(deadline)
            return
        reader = self._reader
        if reader is not None and self._expired_phase is None:
            self._expired_phase = phase
            reader.cancel()
        # Expired outside a read (the caller is busy with a token): stay disarmed. The next read
        # re-arms at the passed deadline, which fires on the next loop iteration, so a chunk
        # already buffered is still returned first, as under ``asyncio.timeout_at``.

    async def _handle(self, event: StreamEvent) -> StreamEvent | None:
        """Apply one decoded event; returns the event to hand out, or ``None`` to read on."""
        if self._resume is not None:
            try:
                filtered = self._resume.feed(event)
            except ReplayDiverged as exc:
                self._acc.fail("incomplete")
                raise IncompleteStreamError(
                    "the connection dropped and the job's replayed stream differs from what was "
                    "delivered (the job restarted on another node)",
                    partial_text=self.text,
                    job_id=self.job_id,
                ) from exc
            if self._resume.done:
                self._resume = None
            if filtered is None:
                return None
            event = filtered
        kind = type(event)
        if kind is Token:
            assert isinstance(event, Token)
            return event if self._take_token(event) else None
        if kind is Done:
            assert isinstance(event, Done)
            whole = event.text
            if whole is not None and len(whole) > self._acc.chars:
                text = self._acc.text
                if whole.startswith(text):
                    # The whole answer says more than the tokens did (a relay may drop tokens):
                    # the rest comes as one token, so that the text and the iteration both end
                    # as the whole answer. The end is handled next.
                    rest = Token(whole[len(text) :], event.id)
                    self._take_token(rest)
                    self._pending.appendleft(event)
                    return rest
            self._acc.finish(done_text=whole)
            self._state = _ENDED
            self._disarm()
            resp, self._resp = self._resp, None
            if resp is not None:
                resp.finish()
            return event
        if kind is ErrorEvent:
            assert isinstance(event, ErrorEvent)
            return await self._error_event(event)
        if kind is JobInfo:
            assert isinstance(event, JobInfo)
            self._set_job_id(event.job_id)
        if getattr(event, "id", None) is not None:
            self._last_id = getattr(event, "id", None)
        return event

    def _take_token(self, event: Token) -> bool:
        """Take a token into the answer; False for an empty one, which carries nothing: it is not
        counted, not handed out and no progress for the deadlines (a server sending millions of
        them must not hold memory or keep a stalled stream alive)."""
        text = event.text
        if not text:
            return False
        acc = self._acc
        size = len(text) if text.isascii() else acc.utf8_size(text)
        if acc.nbytes + size > self._max_answer_bytes:
            limit = self._max_answer_bytes
            acc.fail("error", code="answer_too_large", message="the answer is too large")
            raise AnswerTooLargeError(
                f"the answer grew past max_answer_bytes={limit} (UTF-8); the stream was closed "
                "there",
                limit=limit,
                partial_text=self.text,
                job_id=self.job_id,
            )
        # Appended before it is handed out: ``text`` covers every token the caller may have seen.
        acc.add_token(text, size)
        assert self._loop is not None
        now = self._loop.time()
        self._last_token_at = now
        if self._first_token_at is None:
            self._first_token_at = now
            if self._read_interval:
                # Not before: the time to first token is measured, and seen, without delay.
                self._read_sparsely()
        if self._acc.token_count == 1 and self._reader is not None:
            # An attempt's first token (the stream's, or a re-queued job's after a restart), taken
            # inside a pump (collecting): the stall deadline starts now, and may be earlier than
            # the one the watchdog was armed for.
            deadline, _ = self._deadline()
            if deadline is not None and (self._watchdog is None or self._watchdog_at > deadline):
                self._arm(deadline)
        if event.id is not None:
            self._last_id = event.id
        return True

    async def _error_event(self, event: ErrorEvent) -> StreamEvent:
        if event.message:
            # A server may echo the request, token included, in its error event.
            event = ErrorEvent(event.code, self._transport.redact(event.message), event.id)
        if (
            event.code == "node_disconnected"
            and self._acc.job_id is not None
            and self._surface is not None
            and self._surface.resumable
            and self._restarts < self._transport.retry.max_stream_restarts
            and (self._acc.token_count == 0 or self._policy == "restart")
        ):
            self._restarts += 1
            self._close_response()
            logger.info(
                "job %s: node disconnected after %d tokens; following the re-queued job (%d)",
                self._acc.job_id,
                self._acc.token_count,
                self._restarts,
            )
            try:
                await self._open_job_stream()
            except (APIError, APIConnectionError) as exc:
                if isinstance(exc, APITimeoutError) and exc.phase in ("total", "first_token"):
                    raise
                # The abandoned attempt's text is still what the caller saw: keep it in the error.
                self._acc.fail("node_disconnected", code=event.code, message=event.message)
                raise NodeDisconnectedError(
                    f"{event.message or 'node disconnected'}; "
                    f"following the re-queued job failed: {exc}",
                    partial_text=self.text,
                    job_id=self.job_id,
                    code=event.code,
                ) from exc
            # Only now that the new attempt is open does the old text go.
            discarded = self._acc.restart()
            self._resume = None
            self._last_id = None
            return Restart(attempt=self._acc.attempt, discarded_text=discarded)
        reason: TerminalReason = (
            "node_disconnected" if event.code == "node_disconnected" else "error"
        )
        self._acc.fail(reason, code=event.code, message=event.message)
        raise stream_error_for_code(
            event.code,
            event.message or "the stream reported an error",
            partial_text=self.text,
            job_id=self.job_id,
        )

    def _may_reconnect(self) -> bool:
        return (
            self._reconnect
            and self._surface is not None
            and self._surface.resumable
            and not self._transport.closed
            and self._state == _OPEN
            and self._acc.job_id is not None
            and self._reconnects < self._transport.retry.max_stream_restarts
        )

    async def _connection_lost(self, cause: APIConnectionError | None) -> None:
        """EOF or a dropped connection before ``[DONE]``: reconnect (``stream_job``) or raise."""
        if self._may_reconnect():
            self._reconnects += 1
            last_id = self._last_id or self._decoder.last_event_id
            self._close_response()
            self._resume = ReplayFilter(self._acc.text)
            retry = self._transport.retry
            delay = backoff_delay(self._reconnects, base=retry.backoff_base, cap=retry.backoff_max)
            logger.info(
                "job %s: stream connection lost after %d tokens; reconnecting in %.2f s",
                self._acc.job_id,
                self._acc.token_count,
                delay,
            )
            # Registered as the reader, so that aclose() from another task ends the wait at once;
            # the client's own wait, so no stall deadline runs through it.
            self._sent_at = None
            task, cancelling = self._watch(self._deadline()[0])
            try:
                await (retry.sleep or asyncio.sleep)(delay)
            except BaseException as exc:
                self._raise_unwatched(task, cancelling, exc)
            self._unwatch(task)
            # The live control plane ignores Last-Event-ID and replays from the start; the
            # ReplayFilter skips what was delivered. So an id no header can carry (SSE ids are any
            # text) is left out rather than failing the reconnect.
            headers = (
                {"Last-Event-ID": last_id}
                if last_id and last_id.isascii() and last_id.isprintable()
                else None
            )
            try:
                await self._open_job_stream(headers)
            except (APIError, APIConnectionError) as exc:
                if isinstance(exc, APITimeoutError) and exc.phase in ("total", "first_token"):
                    raise
                self._acc.fail("incomplete")
                raise IncompleteStreamError(
                    f"the connection ended before [DONE] and reconnecting failed: {exc}",
                    partial_text=self.text,
                    job_id=self.job_id,
                ) from exc
            return
        self._acc.fail("incomplete")
        message = "the connection ended before [DONE]"
        if cause is not None:
            message = f"{message}: {cause.message}"
        raise IncompleteStreamError(message, partial_text=self.text, job_id=self.job_id) from cause


async def _not_a_stream(resp: OpenStream) -> APIError:
    status, media = resp.status, resp.content_type
    raw = await read_and_release(resp, limit=_EXCERPT_BYTES)
    excerpt = raw.decode("utf-8", errors="replace").strip()
    what = f"{status} {media}" + (f": {excerpt!r}" if excerpt else " with no body")
    return APIError(f"expected an event stream, got {what}", status=status)


def _fire_watchdog(ref: weakref.ref[TokenStream]) -> None:
    stream = ref()
    if stream is not None:
        stream._on_watchdog()


class _EventIterator:
    """``TokenStream.events()``: the same read loop, handing out every typed event."""

    __slots__ = ("_stream",)

    def __init__(self, stream: TokenStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._stream._next_event()
