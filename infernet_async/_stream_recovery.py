"""Recovering a ``TokenStream``: following the re-queued job after ``node_disconnected`` (a
restart), and replaying the job's stream after a dropped connection (a reconnect).

Rules: a restart or a reconnect never submits the job again; each is counted against
``RetryPolicy.max_stream_restarts`` by its own ``Retrier``. A reconnect's backoff is the client's
own wait: no stall deadline runs through it, and ``aclose()`` ends it at once. What was delivered
before a reconnect is skipped in the replay (``ReplayFilter``); a replay that differs raises.
A failed recovery raises the stream's error (``NodeDisconnectedError``,
``IncompleteStreamError``) with the text the caller saw, except a total or first-token timeout,
which is raised as itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._accumulator import ReplayFilter, TerminalReason
from ._stream_opening import StreamOpening
from ._stream_state import OPEN
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    IncompleteStreamError,
    NodeDisconnectedError,
    stream_error_for_code,
)
from .events import ErrorEvent, Restart

if TYPE_CHECKING:
    from .events import StreamEvent

__all__ = ["StreamRecovery"]

logger = logging.getLogger("infernet_async")


class StreamRecovery(StreamOpening):
    """Restarts and reconnects."""

    async def _error_event(self, event: ErrorEvent) -> StreamEvent:
        if event.message:
            # A server may echo the request, token included, in its error event.
            event = ErrorEvent(event.code, self._transport.redact(event.message), event.id)
        if (
            event.code == "node_disconnected"
            and self._acc.job_id is not None
            and self._surface is not None
            and self._surface.resumable
            and not self._restarts.exhausted
            and (self._acc.token_count == 0 or self._policy == "restart")
        ):
            self._restarts.take()  # no backoff: the control plane re-queued the job already
            self._close_response()
            logger.info(
                "job %s: node disconnected after %d tokens; following the re-queued job (%d)",
                self._acc.job_id,
                self._acc.token_count,
                self._restarts.retries,
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
            and self._state == OPEN
            and self._acc.job_id is not None
            and not self._reconnects.exhausted
        )

    async def _connection_lost(self, cause: APIConnectionError | None) -> None:
        """EOF or a dropped connection before ``[DONE]``: reconnect (``stream_job``) or raise."""
        if self._may_reconnect():
            delay = self._reconnects.take()
            last_id = self._last_id or self._decoder.last_event_id
            self._close_response()
            self._resume = ReplayFilter(self._acc.text)
            logger.info(
                "job %s: stream connection lost after %d tokens; reconnecting in %.2f s",
                self._acc.job_id,
                self._acc.token_count,
                delay,
            )
            # Registered as the reader, so that aclose() from another task ends the wait at once;
            # the client's own wait, so no stall deadline runs through it.
            deadlines = self._deadlines
            deadlines.sent_at = None
            task, cancelling = deadlines.watch(deadlines.next()[0])
            try:
                await self._reconnects.sleep(delay)
            except BaseException as exc:
                deadlines.raise_unwatched(task, cancelling, exc)
            deadlines.unwatch(task)
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
