"""Sans-IO Server-Sent Events decoder: bytes in, ``ServerSentEvent`` out.

Implements WHATWG HTML "Interpreting an event stream" exactly (cited inline as [spec]). Standard
library only: no asyncio, no sockets, no aiohttp; the caller owns the I/O and calls ``feed()`` and
``close()``.

Strategy: each chunk is searched once, from its end, for its last line terminator. Everything
before it is a run of complete lines, decoded as UTF-8 in one call and split in C; the unterminated
rest goes into one ``bytearray``. A chunk without a terminator is appended and never searched
again, so the cost is O(bytes) whatever the chunking, one byte at a time included. A CR that ends a
chunk ends its line at once (no latency), and a pending-CR flag drops the LF of a CRLF cut between
two chunks.

Layering: a decoder that reads some events itself, faster than the line loop (``TokenDecoder``,
``ChunkDecoder``), does so only from an event boundary and keeps this decoder's state exact through
its documented layering surface (``at_boundary``, ``take_partial_line()``, ``feed_lines()``, a
writable ``last_event_id``, ``defer_error()``); ``_sse_layer`` holds the one base class for such
decoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import EventTooLargeError

__all__ = ["DEFAULT_MAX_EVENT_SIZE", "SSEDecoder", "ServerSentEvent"]

DEFAULT_MAX_EVENT_SIZE = 8 * 1024 * 1024
"""Default limit on one line (bytes) and on one event's data buffer (characters)."""

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event.

    ``event`` is the event type ("message" when the event had no ``event`` field or an empty one),
    ``data`` the data lines joined with LF, ``id`` the last-event-ID buffer at dispatch (``None``
    until the stream sends an ``id`` field; it persists across events), ``retry`` the reconnection
    time this event's block set, in milliseconds, else ``None``.
    """

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


# Events the decoder builds itself skip the dataclass __init__ (frozen: four object.__setattr__
# calls) and fill the slots directly, which costs about a third as much on the per-event path.
_new = object.__new__
_slots: Any = ServerSentEvent.__dict__
_set_event = _slots["event"].__set__
_set_data = _slots["data"].__set__
_set_id = _slots["id"].__set__
_set_retry = _slots["retry"].__set__


class SSEDecoder:
    """Incremental decoder for a ``text/event-stream`` body.

    ``feed()`` never raises on any input: any bytes, in any chunking, decode to events or to
    nothing. The one documented exception is ``EventTooLargeError`` when a line or an event grows
    past ``max_event_size``; any other exception out of ``feed()`` is a bug.

    Args:
        max_event_size: the longest line, in bytes, and the largest data buffer of one event, in
            characters, that the decoder accepts. The decoder never buffers more than this many
            bytes of an unterminated line, so memory stays bounded whatever the peer sends.
    """

    __slots__ = (
        "_bom",
        "_buf",
        "_closed",
        "_cr",
        "_data",
        "_data_size",
        "_error",
        "_event",
        "_limit",
        "_reconnect",
        "_retry",
        "at_boundary",
        "last_event_id",
    )

    # Plain attributes, not properties: the fast paths layered on this decoder read them once per
    # chunk, where a property would cost a Python call each time.
    last_event_id: str | None
    """The last-event-ID buffer: the last ``id`` field's value (``None`` before any).

    Writable: a layered decoder that read events itself sets the id they left (see
    ``at_boundary``).
    """
    at_boundary: bool
    """Read-only by contract. True when the bytes fed so far end at an event boundary: the decoder
    holds no part of an unfinished event (no data, event type or retry field, no pending CR, no BOM
    still undecided) but, maybe, the start of the next event's first line (``take_partial_line()``).

    From a boundary, the events that complete bytes of whole events depend only on those bytes and
    ``last_event_id``. So a layered decoder may read such bytes itself instead of feeding them, if
    it reads them exactly as ``feed()`` would and sets ``last_event_id`` to the id they leave.
    """

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        if max_event_size < 1:
            raise ValueError("max_event_size must be at least 1")
        self._limit = max_event_size
        # The unterminated start of the current line: it never holds a CR or LF (or, while _bom is
        # set, it holds a proper prefix of the BOM).
        self._buf = bytearray()
        self._bom = True  # the stream's first bytes may still be (part of) a BOM
        self._cr = False  # the last line ended with a CR at a chunk's end: skip one leading LF
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._retry: int | None = None
        self._reconnect: int | None = None
        self._closed = False
        self._error: EventTooLargeError | None = None
        self.last_event_id = None
        self.at_boundary = False

    @property
    def retry(self) -> int | None:
        """The reconnection time (ms) the stream last set with a ``retry`` field, else ``None``."""
        return self._reconnect

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (or a size error ended the stream)."""
        return self._closed

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[ServerSentEvent]:
        """Decode the next chunk of the body.

        Args:
            chunk: any bytes-like object; the decoder keeps no reference to it (``bytes`` is read in
                place, other types are copied once).

        Returns:
            The events completed by this chunk, in order (often none).

        Raises:
            EventTooLargeError: a line or an event exceeded ``max_event_size``. The stream cannot
                go on: the decoder is closed. If other events completed earlier in the same chunk
                they are returned first and the error is raised by the next ``feed()``/``close()``.
            RuntimeError: ``feed()`` after ``close()``.
        """
        if self._closed:
            self._raise_closed()
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if not chunk:
            return []
        if self._bom:
            # [spec] "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are
            # present." It may arrive split over several chunks: hold a proper prefix until it is
            # decided.
            head = bytes(self._buf) + chunk
            if len(head) < 3 and _BOM.startswith(head):
                self._buf[:] = head
                return []
            self._buf.clear()
            self._bom = False
            chunk = head[3:] if head.startswith(_BOM) else head
            if not chunk:
                self.at_boundary = True
                return []
        if self._cr:
            # The previous chunk ended with a CR, which already ended its line: a LF right after it
            # belongs to that CRLF.
            self._cr = False
            if chunk[0] == 10:
                chunk = chunk[1:]
                if not chunk:
                    self.at_boundary = not (self._data or self._event or self._retry is not None)
                    return []
        # The last line terminator: rfind from the end, and the CR search only past the last LF.
        end = chunk.rfind(b"\n")
        last_cr = chunk.rfind(b"\r", end + 1)
        if last_cr > end:
            end = last_cr
        buf = self._buf
        if end < 0:
            if len(buf) + len(chunk) > self._limit:
                return self._fail([], f"a line is longer than {self._limit} bytes")
            buf += chunk
            return []
        stop = end + 1
        size = len(chunk)
        region: bytes | bytearray
        if buf:
            region = buf + memoryview(chunk)[:stop]
            buf.clear()
        else:
            region = chunk if stop == size else chunk[:stop]
        if stop < size:
            if size - stop > self._limit:
                events = self._lines(region)
                if self.closed:  # the region itself already failed
                    return events
                return self._fail(events, f"a line is longer than {self._limit} bytes")
            buf += memoryview(chunk)[stop:]
        elif chunk[end] == 13:
            self._cr = True
        return self._lines(region)

    def close(self) -> list[ServerSentEvent]:
        """Signal the end of the body; idempotent.

        [spec] "Once the end of the file is reached, any pending data must be discarded": an event
        without its closing blank line, or a line without its terminator, is not dispatched. So this
        returns an empty list; it exists so that callers treat the end of a stream explicitly.

        Raises:
            EventTooLargeError: a size error the last ``feed()`` detected but did not raise yet.
        """
        self._closed = True
        self.at_boundary = False
        self._release()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return []

    # --- The layering surface: what a decoder reading some events itself needs (see at_boundary).

    def take_partial_line(self) -> bytes:
        """Hand over the start of the next event's first line, held at an event boundary.

        Returns the unterminated bytes held and forgets them (``b""`` if none, or not at a
        boundary). The caller now owns them: they must come back, first, in what it feeds or reads
        next, so that a layered decoder can read the next event from its start.
        """
        if not self.at_boundary or not self._buf:
            return b""
        line = bytes(self._buf)
        self._buf.clear()
        return line

    def feed_lines(self, lines: list[str]) -> list[ServerSentEvent]:
        """Interpret complete lines, already decoded and split, as ``feed()`` of each plus LF would.

        For a layered decoder that decoded a run of lines itself and hands over the ones it does
        not read. ``lines`` hold no CR or LF; an empty string is a blank line. They are past the
        stream's start (a BOM in them is no BOM) and past any CR the last chunk ended with.

        Raises:
            EventTooLargeError: as ``feed()``.
            RuntimeError: after ``close()``, or while a partial line is held (the lines would not
                follow what was fed).
        """
        if self._closed:
            self._raise_closed()
        if self._buf:
            raise RuntimeError("SSEDecoder.feed_lines() called while a partial line is held")
        # What follows is no longer the stream's start, nor the LF of a CRLF.
        self._bom = self._cr = False
        return self._interpret(lines)

    def defer_error(self, error: EventTooLargeError) -> None:
        """Keep ``error``, which this decoder just raised, for the next ``feed()``/``close()``.

        What ``feed()`` itself does when the chunk completed events before the error: for a
        layered decoder that has events of the same chunk, read itself, to return first.

        Raises:
            RuntimeError: the decoder is not closed (it was not closed by a size error).
        """
        if not self._closed:
            raise RuntimeError("SSEDecoder.defer_error() called on an open decoder")
        self._error = error

    def _raise_closed(self) -> NoReturn:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise RuntimeError("SSEDecoder.feed() called after close()")

    def _release(self) -> None:
        self._buf = bytearray()
        self._data = []
        self._data_size = 0

    def _fail(self, events: list[ServerSentEvent], message: str) -> list[ServerSentEvent]:
        error = EventTooLargeError(message, limit=self._limit)
        self._closed = True
        self.at_boundary = False
        self._release()
        if not events:
            raise error
        self._error = error
        return events

    def _lines(self, region: bytes | bytearray) -> list[ServerSentEvent]:
        """Interpret a run of complete lines; ``region`` ends with a line terminator."""
        limit = self._limit
        if len(region) > limit:
            return self._long_region(region)
        # Line terminators are ASCII, so decoding the whole run at once gives the same characters as
        # decoding line by line ([spec] UTF-8 decode with replacement), in one C call.
        try:
            text = region.decode()
        except UnicodeDecodeError:
            text = region.decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        lines.pop()  # the empty string after the final terminator
        return self._interpret(lines)

    def _long_region(self, region: bytes | bytearray) -> list[ServerSentEvent]:
        # Rare path (only when one chunk holds more than the limit): find the first line that is too
        # long, deliver what precedes it, then fail.
        limit = self._limit
        raw = bytes(region).replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        raw.pop()
        lines = [line.decode("utf-8", "replace") for line in raw]
        for index, line in enumerate(raw):
            if len(line) > limit:
                events = self._interpret(lines[:index]) if index else []
                if self._closed:  # the data limit fired first
                    return events
                return self._fail(events, f"a line is longer than {limit} bytes")
        return self._interpret(lines)

    def _interpret(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        append = events.append
        data = self._data
        data_size = self._data_size
        event = self._event
        retry = self._retry
        last_id = self.last_event_id
        limit = self._limit
        for line in lines:
            if not line:
                # [spec] "If the line is empty (a blank line): Dispatch the event". Nothing is
                # dispatched when the data buffer is empty: id-only, retry-only and comment-only
                # blocks (heartbeats) produce no event.
                if data:
                    sse = _new(ServerSentEvent)
                    _set_event(sse, event or "message")
                    _set_data(sse, data[0] if len(data) == 1 else "\n".join(data))
                    _set_id(sse, last_id)
                    _set_retry(sse, retry)
                    append(sse)
                    data = []
                    data_size = 0
                event = ""
                retry = None
                continue
            # [spec] the first colon splits field from value; one leading space is dropped; a line
            # without a colon is a field with an empty value; a line starting with a colon is a
            # comment.
            if line.startswith("data:"):
                value = line[6:] if line[5:6] == " " else line[5:]
                data_size += len(value) + 1
                if data_size > limit:
                    self.last_event_id = last_id  # the ids before the error count, however chunked
                    return self._fail(events, f"an event's data is longer than {limit} characters")
                data.append(value)
                continue
            name, _, value = line.partition(":")
            if not name and _:
                continue
            if value[:1] == " ":
                value = value[1:]
            if name == "event":
                event = value
            elif name == "data":
                data_size += len(value) + 1
                if data_size > limit:
                    self.last_event_id = last_id  # the ids before the error count, however chunked
                    return self._fail(events, f"an event's data is longer than {limit} characters")
                data.append(value)
            elif name == "id":
                # [spec] "If the field value does not contain U+0000 NULL, then set the last event
                # ID buffer to the field value. Otherwise, ignore the field."
                if "\x00" not in value:
                    last_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                # [spec] only ASCII digits; isdigit() alone would accept "²" or Arabic-Indic digits.
                try:
                    retry = self._reconnect = int(value)
                except ValueError:  # more digits than int() accepts: not a usable delay anyway
                    pass
            # [spec] any other field name is ignored.
        self._data = data
        self._data_size = data_size
        self._event = event
        self._retry = retry
        self.last_event_id = last_id
        self.at_boundary = not (data or event or retry is not None or self._cr)
        return events
