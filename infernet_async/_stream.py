"""``TokenStream``: the single read loop from response bytes to tokens, with cancellation-aware
accumulation.

Shape: the response pumps body bytes into ``_on_body`` -> ``TokenDecoder.feed()`` ->
interpret -> the ``Accumulator`` -> the caller. On our own connections (``_connection``) the pump
runs ``_on_body`` inside the protocol's ``data_received``; when nobody looks at single tokens
(``final_text()``, the fan-out) tokens are accumulated right there and the reading task wakes only
for the other events, the end above all. ``TokenStream`` is an explicit async iterator, not
an async generator, so no cleanup hides in a generator ``finally``: on every terminal condition
(done, error event, EOF, timeout, an exception, cancellation) ``_next_event`` itself closes the
response *before* it raises, and records the state first, so ``text``/``partial_text`` are right
whatever happens. ``resp.close()`` is synchronous: nothing to shield. A stream abandoned without
``aclose()`` closes its response when garbage-collected, with a ``ResourceWarning``.

The rest of the stream lives next door, each room building on the one before: its state and public
view (``_stream_state``), its opening (``_stream_opening``), its restarts and reconnects
(``_stream_recovery``); its deadlines are ``_deadlines``'.
"""

from __future__ import annotations

import warnings
from typing import Any

from ._accumulator import ReplayDiverged
from ._resource import AsyncResource
from ._stream_recovery import StreamRecovery
from ._stream_state import CLOSED, ENDED, NEW, OPEN, NodeDisconnectPolicy
from .errors import (
    AnswerTooLargeError,
    APIConnectionError,
    APITimeoutError,
    IncompleteStreamError,
    StreamError,
)
from .events import Done, ErrorEvent, JobInfo, StreamEvent, Token

__all__ = ["NodeDisconnectPolicy", "TokenStream"]


class TokenStream(StreamRecovery, AsyncResource):
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
        stall = self._deadlines.timeouts.stall
        if stall is not None:
            read_interval = min(read_interval, stall / 4)
        self._collect = True
        self._read_interval = read_interval
        if read_interval and self._deadlines.first_token_at is not None:
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
        if self._state == NEW:
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
        if self._state == CLOSED:
            return
        self._acc.fail("closed")
        self._state = CLOSED
        if self._resp is None:
            # Another task may be opening the stream: no response to close yet.
            self._deadlines.interrupt_opening()
        self._close_response()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # The timer holds only a weak reference to the stream; cancelling it spares the loop a
        # dead entry until the deadline.
        deadlines = getattr(self, "_deadlines", None)
        if deadlines is not None:
            deadlines.disarm()
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
        if self._state == NEW:
            await self._start()
        if self._state != OPEN:
            if self._state == CLOSED and not self._acc.finished and self._error is None:
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
        deadlines = self._deadlines
        deadline, _ = deadlines.next()
        if deadline is None and not self._collect:
            return await resp.pump(self._on_body)
        # Collecting, the first token may bring a deadline (stall) while this pump runs: the
        # watchdog needs the reader registered even when no deadline is in force yet. Not through
        # a helper coroutine shared with _open: a read is a hot path, one frame more on each.
        task, cancelling = deadlines.watch(deadline)
        try:
            more = await resp.pump(self._on_body)
        except BaseException as exc:
            deadlines.raise_unwatched(task, cancelling, exc)
        deadlines.unwatch(task)
        return more

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
            self._state = ENDED
            self._deadlines.detach()
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
        deadlines = self._deadlines
        deadlines.last_token_at = now
        if deadlines.first_token_at is None:
            deadlines.first_token_at = now
            if self._read_interval:
                # Not before: the time to first token is measured, and seen, without delay.
                self._read_sparsely()
        if acc.token_count == 1 and deadlines.reader is not None:
            # An attempt's first token (the stream's, or a re-queued job's after a restart), taken
            # inside a pump (collecting): the stall deadline starts now, and may be earlier than
            # the one the watchdog was armed for.
            deadlines.arm_if_earlier(deadlines.next()[0])
        if event.id is not None:
            self._last_id = event.id
        return True


class _EventIterator:
    """``TokenStream.events()``: the same read loop, handing out every typed event."""

    __slots__ = ("_stream",)

    def __init__(self, stream: TokenStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._stream._next_event()
