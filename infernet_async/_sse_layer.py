"""The one base of the decoders layered on ``SSEDecoder`` with a fast path of their own.

``TokenDecoder`` (the jobs API and the chat surface) and ``ChunkDecoder`` (OpenAI chunks) both read
whole events themselves, from an event boundary, faster than the SSE line loop; what they cannot
read goes to the SSE decoder, the general path, which must decode exactly as if it had seen every
byte. This module holds what that takes, once: the bytes held since the last event boundary
(``_pending``), handing them over (``_flush``), taking back the partial line the SSE decoder holds
at a boundary (``_general``), and the end of the stream (``close``).

Rule: the SSE decoder is reached through its public layering surface only (``at_boundary``,
``last_event_id``, ``take_partial_line()``, ``feed_lines()``, ``defer_error()``); see ``sse``.
"""

from __future__ import annotations

from .errors import EventTooLargeError
from .events import StreamEvent
from .sse import DEFAULT_MAX_EVENT_SIZE, ServerSentEvent, SSEDecoder

__all__ = ["LayeredDecoder"]


class LayeredDecoder:
    """Bytes in, typed stream events out: an ``SSEDecoder`` with a fast path on top.

    Subclasses bring ``feed`` (the fast path, which holds bytes in ``_pending``) and
    ``_interpret`` (SSE events to stream events). ``_fast`` says whether the fast path is on:
    only then does the general path hand it the partial line the SSE decoder holds at a boundary.
    """

    __slots__ = ("_fast", "_limit", "_pending", "_sse", "malformed")

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE, fast: bool) -> None:
        self._sse = SSEDecoder(max_event_size=max_event_size)
        self._limit = max_event_size
        # The bytes since the last event boundary, not yet given to the SSE decoder: never a
        # complete event, at most max_event_size bytes (each subclass says what else it keeps).
        self._pending = bytearray()
        self._fast = fast
        self.malformed = 0
        """How many malformed events were skipped."""

    @property
    def last_event_id(self) -> str | None:
        """The stream's last-event-ID (``None`` until an ``id`` field arrives).

        An ``id`` line of an event that is still incomplete may be counted only once the event
        completes (or at ``close()``); the id of every completed event is always counted.
        """
        return self._sse.last_event_id

    def _interpret(self, events: list[ServerSentEvent]) -> list[StreamEvent]:
        raise NotImplementedError

    def _general(self, raw: bytes | memoryview) -> list[StreamEvent]:
        """Decode ``raw`` with the SSE decoder and interpret its events."""
        sse = self._sse
        events = self._interpret(sse.feed(raw))
        if self._fast and sse.at_boundary:
            # The partial line the SSE decoder holds starts the next event: hand it to the fast
            # path, which keeps the bytes since the last event boundary.
            self._pending += sse.take_partial_line()
        return events

    def _flush(self, rest: bytes | memoryview, *, holding: bool) -> list[StreamEvent]:
        """Hand the pending bytes, then ``rest``, to the SSE decoder (the general path).

        ``holding``: the caller already has events from this chunk. A size error is then kept for
        the next call, as SSEDecoder does within one chunk, so that those events are not lost.
        """
        raw = bytes(self._pending)
        self._pending.clear()
        events: list[StreamEvent] = []
        try:
            if rest:
                # Fed apart rather than joined, so a huge chunk is never copied; the pending bytes
                # hold no complete event, so this decodes exactly as their concatenation.
                events = self._interpret(self._sse.feed(raw)) if raw else []
                events += self._general(rest)
            else:
                events = self._general(raw)
        except EventTooLargeError as error:
            if not (holding or events):
                raise
            self._sse.defer_error(error)
        return events

    def close(self) -> list[StreamEvent]:
        """Signal the end of the body; idempotent. An unfinished event is discarded (WHATWG).

        Raises:
            EventTooLargeError: a size error the last ``feed()`` detected but did not raise yet.
        """
        # The pending bytes hold no complete event, but their lines (an id, say) still count.
        events: list[StreamEvent] = []
        if self._pending:
            raw = bytes(self._pending)
            self._pending.clear()
            events = self._interpret(self._sse.feed(raw))
        return events + self._interpret(self._sse.close())
