"""The state of a ``TokenStream`` and its public read-only view: the answer so far, how the stream
ended, its counters and the figures of its speed.

Rules: the mutable state is set here (``StreamState.__init__``) and changed by the rooms that
build on it, in this order: ``_stream_opening`` (sending the request, following a job, attaching
the response), ``_stream_recovery`` (restarts after ``node_disconnected``, reconnects after a
dropped connection) and ``_stream`` (the read loop and the lifecycle). Every end goes through
``_terminate``, which records it before the response is closed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from ._accumulator import Accumulator, ReplayFilter
from ._deadlines import StreamDeadlines
from ._ids import validate_job_id
from ._retry import Retrier
from ._token_decoder import TokenDecoder
from .errors import APIConnectionError, APIError, APITimeoutError, StreamError
from .events import EventDecoder, StreamEvent

if TYPE_CHECKING:
    from ._ratelimit import RateLimiter
    from ._response import OpenStream
    from ._surfaces import ApiChoice, Surface
    from ._transport import Transport

__all__ = ["CLOSED", "ENDED", "NEW", "OPEN", "OPENING", "NodeDisconnectPolicy", "StreamState"]

logger = logging.getLogger("infernet_async")

NodeDisconnectPolicy = Literal["raise", "restart"]
NEW, OPENING, OPEN, ENDED, CLOSED = range(5)


class StreamState:
    """The fields of one stream, and what a caller may read of them."""

    def __init__(
        self,
        transport: Transport,
        api: ApiChoice,
        *,
        request: Mapping[str, Any] | None = None,
        job_id: str | None = None,
        on_node_disconnect: NodeDisconnectPolicy = "raise",
        reconnect: bool = False,
        rate_limiter: RateLimiter | None = None,
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
        self._state = NEW
        self._error: BaseException | None = None
        self._busy = False
        self._resume: ReplayFilter | None = None
        self._last_id: str | None = None
        # Following a re-queued job, and reconnecting after a dropped connection: each counted
        # against RetryPolicy.max_stream_restarts.
        self._restarts = Retrier.for_stream_restarts(transport.retry)
        self._reconnects = Retrier.for_stream_restarts(transport.retry)
        self._loop: asyncio.AbstractEventLoop | None = None
        # The deadlines, their watchdog (one timer per stream instead of an ``asyncio.timeout``
        # per read) and the times the metrics are made of.
        self._deadlines = StreamDeadlines(transport.timeouts, self._acc)
        self._limiter = rate_limiter

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
        return self._state in (ENDED, CLOSED)

    @property
    def terminal_reason(self) -> str | None:
        """How the stream ended: done, error, node_disconnected, incomplete, timeout, cancelled,
        closed...
        """
        return self._acc.reason

    @property
    def restarts(self) -> int:
        """How many times the stream followed the re-queued job after ``node_disconnected``."""
        return self._restarts.retries

    @property
    def reconnects(self) -> int:
        """How many times the stream reconnected after the connection dropped."""
        return self._reconnects.retries

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
        deadlines = self._deadlines
        if deadlines.job_sent_at is None or deadlines.started_at is None:
            return None
        return deadlines.job_sent_at - deadlines.started_at

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from sending the request to the first token, or ``None`` before it."""
        deadlines = self._deadlines
        if deadlines.first_token_at is None:
            return None
        sent = deadlines.job_sent_at if deadlines.job_sent_at is not None else deadlines.started_at
        return deadlines.first_token_at - sent if sent is not None else None

    @property
    def tokens_per_second(self) -> float | None:
        """The generation rate after the first token: ``(tokens - 1) / (last - first)``; ``None``
        below 2.
        """
        first, last = self._deadlines.first_token_at, self._deadlines.last_token_at
        if first is None or last is None or self.token_count < 2:
            return None
        span = last - first
        return (self.token_count - 1) / span if span > 0 else None

    def __repr__(self) -> str:
        state = ("new", "opening", "open", "ended", "closed")[self._state]
        return (
            f"<TokenStream job_id={self.job_id!r} state={state} tokens={self.token_count} "
            f"finished={self.finished}>"
        )

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
        if self._state != CLOSED:
            self._state = ENDED
        self._close_response()

    def _close_response(self) -> None:
        self._deadlines.detach()
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()

    def _read_sparsely(self) -> None:
        """Apply ``_read_interval`` to the open response (0: read every chunk at once)."""
        resp, loop, started = self._resp, self._loop, self._deadlines.started_at
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
