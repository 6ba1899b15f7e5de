"""Typed stream events: what an Infernet token stream means, independent of how it was framed.

Both dialects of the control plane map onto these types:

- the guide's data-only stream: ``data: {"text": ...}`` per token, ``data: [DONE]`` (a literal), and
  ``data: {"error": "<code>", "message": ...}``;
- the live typed stream: ``event: job|meta|token|done|error`` with ``id:`` lines and ``: ping``
  heartbeats.
  What the live control plane sends in each (from its stream route):
  ``job``   the job row: ``{"id", "status", "model_name", "provider_id", ...}`` (no ``id:`` line);
  ``meta``  ``{"provider_node_id", "provider_name", "model", "started_at", "engine"}``;
  ``token`` ``{"text"}``;
  ``done``  ``{"text": <the whole answer>, "finished_at", "reason"}``;
  ``error`` ``{"message"}`` (no code: ``ErrorEvent.code`` is then ``None``).

Events are frozen slotted dataclasses: they sit on the per-token path, where pydantic would cost
more than the parsing itself. ``Restart`` is never decoded from the wire; the client emits it when a
stream is resumed on a re-queued job (see ``InfernetClient.stream(on_node_disconnect=...)``).

``TokenDecoder`` turns the bytes of either dialect into these events (sans-IO, like ``sse``, which
it wraps). Rule: its fast path for token events must give exactly what the SSE decoder plus
``json.loads`` give; the tests compare the two on arbitrary streams.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from types import MappingProxyType
from typing import Any, Protocol

from ._textfast import QUIET_BLOCK, TEXT_EVENTS, TOKEN_EVENT, scanstring, text_of, unescape
from .errors import EventTooLargeError
from .sse import DEFAULT_MAX_EVENT_SIZE, ServerSentEvent, SSEDecoder

__all__ = [
    "Done",
    "ErrorEvent",
    "EventDecoder",
    "JobInfo",
    "Log",
    "Meta",
    "Restart",
    "Routing",
    "StreamEvent",
    "Token",
    "TokenDecoder",
]

# dataclasses refuse a mutable (unhashable) default, so the empty default comes from a factory that
# hands out one shared read-only mapping.
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty_data() -> Mapping[str, Any]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class Token:
    """One piece of generated text."""

    text: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The stream finished cleanly (``[DONE]`` or ``event: done``).

    ``text`` is the whole answer when the server sent it (the typed dialect does), else ``None``.
    """

    text: str | None = None
    reason: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The server reported an error in the stream; the stream ends after it."""

    code: str | None
    message: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class JobInfo:
    """The typed dialect's ``job`` event: which job this stream belongs to and its state."""

    job_id: str | None
    status: str | None = None
    model: str | None = None
    data: Mapping[str, Any] = field(default_factory=_empty_data, compare=False, repr=False)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Meta:
    """The typed dialect's ``meta`` event: the node that serves the job."""

    node_id: str | None = None
    node_name: str | None = None
    model: str | None = None
    engine: str | None = None
    data: Mapping[str, Any] = field(default_factory=_empty_data, compare=False, repr=False)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Routing:
    """The chat surface's ``routing`` event (distributed jobs): which peers serve the job.

    Informational: it changes nothing in the answer. ``data`` is the event's JSON object as sent.
    """

    data: Mapping[str, Any] = field(default_factory=_empty_data, compare=False)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Log:
    """The chat surface's ``log`` event (distributed jobs): a progress line from the serving node.

    Informational. ``message`` is the event's ``message`` (or ``line``) when it has one.
    """

    message: str | None = None
    data: Mapping[str, Any] = field(default_factory=_empty_data, compare=False, repr=False)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Restart:
    """The answer restarted on another node after ``node_disconnected``.

    ``discarded_text`` is the text of the abandoned attempt; ``TokenStream.text`` holds the new
    attempt only.
    """

    attempt: int
    discarded_text: str
    reason: str = "node_disconnected"


StreamEvent = Token | Done | ErrorEvent | JobInfo | Meta | Routing | Log | Restart


class EventDecoder(Protocol):
    """What ``TokenStream`` reads a response body with: bytes in, typed stream events out.

    Sans-IO. Each API surface brings its own (``TokenDecoder`` for the jobs API and the chat
    surface, ``ChunkDecoder`` for OpenAI chunks); the stream loop never asks which one it has.
    """

    malformed: int

    @property
    def last_event_id(self) -> str | None: ...

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]: ...


# Tokens the decoder builds itself fill their slots directly instead of running the frozen dataclass
# __init__ (one object.__setattr__ per field): half the cost of the most frequent allocation.
_new = object.__new__
_token_slots: Any = Token.__dict__
_set_text = _token_slots["text"].__set__
_set_token_id = _token_slots["id"].__set__


def _token(text: str, event_id: str | None) -> Token:
    token: Token = _new(Token)
    _set_text(token, text)
    _set_token_id(token, event_id)
    return token


def _tokens(texts: list[str], event_id: str | None) -> list[StreamEvent]:
    """One ``Token`` per text, built by C-level ``map`` calls (no Python frame per token)."""
    count = len(texts)
    tokens: list[StreamEvent] = list(map(_new, repeat(Token, count)))
    deque(map(_set_text, tokens, texts), 0)
    deque(map(_set_token_id, tokens, repeat(event_id, count)), 0)
    return tokens


# Above this many characters the fast path first tries one regex call over the whole region (a C
# loop, for the guide's data-only dialect) before walking events one by one in Python, which is
# cheaper for the one to three events of a live chunk.
_WALK_LIMIT = 256


def _walk(
    text: str, event_id: str | None, position: int, tokens: list[StreamEvent]
) -> tuple[str | None, int]:
    """Append to ``tokens`` the token events of ``text`` from ``position`` on, up to the first block
    the walk does not take; returns the last event id and where it stopped (``len(text)`` when it
    took every block, else the start of the block it left).

    ``text`` starts at an event boundary and ends with a blank line. A block the walk takes is one
    token event (``TOKEN_EVENT``: any of ``id: <id>``, ``event: token`` and comment lines in any
    order, then ``data: {"text": "..."}`` and the blank line), a block without data
    (``QUIET_BLOCK``: a ``: ping``, an id alone) or a blank line. The event type is ``token`` or
    none ("message"), which ``_interpret`` reads alike for such data. JSON strings are read by
    json's own scanner, or matched by ``_textfast``'s strict pattern for them and decoded by that
    scanner, and what follows must be exactly the end of the object and the blank line. No line
    the walk takes holds a CR, so a text with CRs is decoded exactly too: the caller hands what the
    walk leaves to the SSE decoder's line loop after that loop's own line-end normalisation.
    """
    append = tokens.append
    size = len(text)
    while position < size:
        if text.startswith('data: {"text": "', position):  # the guide's shape: one C call
            try:
                body, end = scanstring(text, position + 16)
            except ValueError:
                return event_id, position
            if not text.startswith("}\n\n", end):
                return event_id, position
            position = end + 3
        else:
            match = TOKEN_EVENT(text, position)
            if match is None:
                match = QUIET_BLOCK(text, position)
                if match is None:
                    return event_id, position
                value = match.group(1)
                if value is not None:
                    event_id = value
                position = match.end()
                continue
            value, body = match.groups()
            if value is not None:
                event_id = value
            if "\\" in body:
                body = unescape(body)
            position = match.end()
        token = _new(Token)
        _set_text(token, body)
        _set_token_id(token, event_id)
        append(token)
    return event_id, size


def _text_events(text: str, event_id: str | None) -> list[StreamEvent] | None:
    """Tokens for ``text`` if it is nothing but data: {"text": ...} events, else ``None``."""
    if not text.startswith("data:"):  # the typed dialect, say: not worth a regex pass
        return None
    bodies = TEXT_EVENTS(text)
    if not bodies or text.count("\n") != 2 * len(bodies):
        return None
    if "\\" in text:
        bodies = [unescape(body) if "\\" in body else body for body in bodies]
    return _tokens(bodies, event_id)


def _first_str(obj: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str):
            return value
    return None


def _error_event(obj: Mapping[str, Any], event_id: str | None) -> ErrorEvent:
    error = obj.get("error")
    if isinstance(error, Mapping):  # the OpenAI-style {"error": {"message": ..., "code": ...}}
        code = _first_str(error, "code")
        message = _first_str(error, "message")
    else:
        code = error if isinstance(error, str) else _first_str(obj, "code")
        message = _first_str(obj, "message", "error_message")
    if not message:
        message = code or "the stream reported an error"
    return ErrorEvent(code or None, message, event_id)


class _PendingFraming:
    """What both decoders' fast paths share (``TokenDecoder`` here, ``ChunkDecoder`` for OpenAI
    chunks): the bytes since the last event boundary wait in ``_pending`` and go to the SSE
    decoder, the general path, when the fast path cannot take them, decoding exactly as if it had
    seen every byte. Subclasses bring ``_sse``, ``_pending``, ``_general`` and ``_interpret``."""

    __slots__ = ()

    _sse: SSEDecoder
    _pending: bytearray

    def _general(self, raw: bytes | memoryview) -> list[StreamEvent]:
        raise NotImplementedError

    def _interpret(self, events: list[ServerSentEvent]) -> list[StreamEvent]:
        raise NotImplementedError

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
            self._sse._error = error
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


class TokenDecoder(_PendingFraming):
    """Bytes of an Infernet token stream in, typed stream events out (sans-IO, both dialects).

    Wraps an ``SSEDecoder``, so any valid SSE framing is accepted, and maps its events:

    - data-only dialect (event type "message"): data exactly ``[DONE]`` -> ``Done``; a JSON object
      with an ``error`` (a code string, or an object with ``message``/``code``) -> ``ErrorEvent``;
      with a string ``text`` -> ``Token``;
    - typed dialect: ``token`` -> ``Token``; ``done`` -> ``Done`` whatever its data holds (its
      ``text`` and ``reason`` when it is a JSON object); ``error`` -> ``ErrorEvent`` (its raw data
      as the message when that is not JSON); ``job`` -> ``JobInfo``; ``meta`` -> ``Meta``.

    Skipped without a trace: comments and heartbeats (``: ping``), events with empty or blank
    data, token objects without a string ``text`` (``encrypted_text``, say), and unknown event
    types, which a newer control plane may add. Skipped and counted in ``malformed``: data that is
    not JSON, or JSON that is not an object, in a message/token/job/meta event, or a ``text`` that
    is not a string.
    ``feed()`` never raises but for the SSE layer's ``EventTooLargeError`` (and ``RuntimeError``
    after ``close()``).

    Every event carries ``id``: the SSE last-event-ID at its dispatch.

    Args:
        max_event_size: passed to the ``SSEDecoder``.
    """

    __slots__ = ("_limit", "_pending", "_sse", "malformed")

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self._sse = SSEDecoder(max_event_size=max_event_size)
        self._limit = max_event_size
        # Fast-path state: bytes received since the last event boundary, not yet given to the SSE
        # decoder, their line ends made LF (see feed) but for a CR at the very end (half a CRLF,
        # maybe). Never holds a blank line after a line, so never a complete event; at most
        # max_event_size bytes.
        self._pending = bytearray()
        self.malformed = 0
        """How many malformed events were skipped."""

    @property
    def last_event_id(self) -> str | None:
        """The stream's last-event-ID (``None`` until an ``id`` field arrives).

        An ``id`` line of an event that is still incomplete may be counted only once the event
        completes (or at ``close()``); the id of every completed event is always counted.
        """
        return self._sse.last_event_id

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[StreamEvent]:
        """Decode the next chunk of the body; returns the stream events it completed, in order.

        Raises:
            EventTooLargeError: see ``SSEDecoder.feed``.
            RuntimeError: ``feed()`` after ``close()``.
        """
        sse = self._sse
        # Fast path, taken while the SSE decoder sits at an event boundary with nothing pending:
        # the bytes since that boundary, up to the last blank line, are decoded at once, their
        # token events turned into tokens without the per-line SSE loop and without json.loads
        # (see _walk and _textfast for why that is exact), and any other event handed to the SSE
        # decoder's line loop alone, in order. Bytes that cannot be decoded this way go to the SSE
        # decoder, with the pending bytes in front, exactly as if it had seen every byte.
        if type(chunk) is not bytes:
            chunk = bytes(chunk)  # one copy, and held bytes and new ones are of one kind
        if sse._boundary:
            pending = self._pending
            limit = self._limit
            data: bytes | bytearray
            if pending:
                held = len(pending)
                if held + len(chunk) > limit:
                    # Too big to hold: never copy a huge chunk, let the SSE decoder judge it.
                    return self._flush(chunk, holding=False)
                if 13 in chunk:
                    # CR line ends: first the SSE decoder's own normalisation (CRLF and a CR alone
                    # end a line like an LF), so that what follows sees LF line ends only.
                    if pending[-1] == 13:  # the held bytes end with a line's CR
                        pending[-1] = 10
                        if chunk[0] == 10:  # ... and this is the LF of its CRLF
                            chunk = chunk[1:]
                    normal = chunk.replace(b"\r\n", b"\n")
                    if 13 in normal:
                        end = len(normal) - 1
                        if normal.find(b"\r") < end:  # a CR alone inside: rare
                            return self._flush(chunk, holding=False)
                        # A CR at the end ends its line now, and the SSE decoder drops an LF that
                        # follows. If that line is blank, the event is complete now: the CR is an
                        # LF here, and an LF that follows starts the next chunk, where it is an
                        # empty line at an event boundary, which changes nothing. Else the CR
                        # stays held, and the next chunk decides it, as above.
                        if (normal[end - 1] if end else pending[-1]) == 10:
                            normal = normal[:end] + b"\n"
                    chunk = normal
                elif pending[-1] == 13 and chunk:  # as above, for a chunk without a CR
                    pending[-1] = 10
                    if chunk[0] == 10:
                        chunk = chunk[1:]
                pending += chunk
                stop = pending.rfind(b"\n\n", held - 1) + 2  # (a blank line may straddle)
                if stop < 2:
                    return []  # no blank line yet: the bytes stay held
                data = pending
            elif chunk.endswith(b"\n\n"):
                # The region is the whole chunk (live generation: one event per chunk). CRs in it
                # need no care: _walk_rest decodes the lines that hold one exactly.
                data = chunk
                stop = len(chunk)
            else:
                if 13 in chunk:
                    # Bytes will stay held after the last blank line (or there is none): CR line
                    # ends matter, made LF as above.
                    if len(chunk) > limit:
                        return self._general(chunk)
                    normal = chunk.replace(b"\r\n", b"\n")
                    if 13 in normal:
                        end = len(normal) - 1
                        if normal.find(b"\r") < end:
                            return self._general(chunk)
                        if not end or normal[end - 1] == 10:
                            normal = normal[:end] + b"\n"
                    chunk = normal
                data = chunk
                stop = chunk.rfind(b"\n\n") + 2
                if stop < 2:
                    if len(chunk) > limit:
                        return self._general(chunk)
                    pending += chunk  # no blank line yet: hold the bytes
                    return []
            if stop <= limit:
                region = data if stop == len(data) else data[:stop]
                try:
                    text = region.decode()
                except UnicodeDecodeError:
                    text = region.decode("utf-8", "replace")
                event_id = sse._last_id
                tokens: list[StreamEvent] | None = None
                if stop > 256:  # _WALK_LIMIT (a constant here: one lookup less per chunk)
                    tokens = _text_events(text, event_id)
                    position = 0
                elif text.startswith('data: {"text": "'):
                    # The first event inline: in the live case it is the only one.
                    try:
                        body, position = scanstring(text, 16)
                    except ValueError:
                        position = 0
                    if text.startswith("}\n\n", position):
                        token = _new(Token)
                        _set_text(token, body)
                        _set_token_id(token, event_id)
                        position += 3
                        if position == len(text):
                            if region is chunk:  # the whole chunk was this one event
                                return [token]
                            if data is pending:  # the held bytes and this chunk end it
                                del pending[:stop]
                                return [token]
                            position = 0
                        tokens = [token]
                    else:
                        position = 0
                else:
                    # The typed dialect's token event, first or alone, the same way.
                    match = TOKEN_EVENT(text)
                    if match is not None:
                        value, body = match.groups()
                        if value is not None:
                            event_id = sse._last_id = value
                        if "\\" in body:
                            body = unescape(body)
                        token = _new(Token)
                        _set_text(token, body)
                        _set_token_id(token, event_id)
                        position = match.end()
                        if position == len(text):
                            if region is chunk:
                                return [token]
                            if data is pending:
                                del pending[:stop]
                                return [token]
                            position = 0
                        tokens = [token]
                    else:
                        position = 0
                # Whether the SSE decoder would have dispatched an event from this chunk (then it
                # keeps a size error in the rest for the next call).
                dispatched = False
                if tokens is None or position:
                    if tokens is None:
                        tokens = []
                    event_id, position = _walk(text, event_id, position, tokens)
                    if position < len(text):
                        event_id, dispatched = self._walk_rest(text, event_id, position, tokens)
                    sse._last_id = event_id
                if data is pending:
                    del pending[:stop]  # O(1): CPython moves a bytearray's start
                elif stop < len(chunk):
                    if len(chunk) - stop > limit:
                        rest = memoryview(chunk)[stop:]
                        return tokens + self._flush(rest, holding=dispatched or bool(tokens))
                    pending += memoryview(chunk)[stop:]
                return tokens
            if data is pending:
                return self._flush(b"", holding=False)
        return self._general(chunk)

    def _walk_rest(
        self, text: str, event_id: str | None, position: int, tokens: list[StreamEvent]
    ) -> tuple[str | None, bool]:
        """Decode ``text`` from ``position``, where ``_walk`` stopped, to its end: each event the
        walk does not take goes to the SSE decoder's line loop alone, the walk takes the rest.

        ``text`` ends with a blank line and the SSE decoder sits at an event boundary, so feeding
        it the lines of one event at a time (its own line-end normalisation first) is what feeding
        it the bytes would do. Returns the last event id and whether the SSE decoder dispatched
        any event.
        """
        sse = self._sse
        lines_of = sse._interpret
        size = len(text)
        dispatched = False
        while position < size:
            end = text.find("\n\n", position) + 2  # the event's blank line (or one before)
            segment = text[position:end]
            if "\r" in segment:
                segment = segment.replace("\r\n", "\n").replace("\r", "\n")
            lines = segment.split("\n")
            lines.pop()  # the empty string after the last line end
            sse._last_id = event_id
            events = lines_of(lines)
            if events:
                dispatched = True
                tokens += self._interpret(events)
            event_id, position = _walk(text, sse._last_id, end, tokens)
        return event_id, dispatched

    def _general(self, raw: bytes | memoryview) -> list[StreamEvent]:
        """Decode ``raw`` with the SSE decoder and interpret its events."""
        sse = self._sse
        events = self._interpret(sse.feed(raw))
        if sse._boundary and sse._buf:
            # The partial line the SSE decoder holds starts the next event: hand it to the fast
            # path, which keeps the bytes since the last event boundary.
            self._pending += sse._buf
            sse._buf.clear()
        return events

    def _object(self, data: str) -> dict[str, Any] | None:
        """The JSON object in ``data``; ``None`` (counted as malformed unless blank) otherwise."""
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            if data.strip():
                self.malformed += 1
            return None
        if isinstance(obj, dict):
            return obj
        self.malformed += 1
        return None

    def _interpret(self, events: list[ServerSentEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for sse in events:
            kind = sse.event
            data = sse.data
            event_id = sse.id
            if kind == "message" or kind == "token":
                text = text_of(data)
                if text is not None:
                    out.append(_token(text, event_id))
                    continue
                # [DONE] is a literal, compared exactly after the SSE layer (the guide's JS trims
                # it, but the SSE layer already dropped the one space the field syntax allows).
                if data == "[DONE]" and kind == "message":
                    out.append(Done(id=event_id))
                    continue
                obj = self._object(data)
                if obj is None:
                    continue
                error = obj.get("error")
                if error is not None and error is not False:
                    out.append(_error_event(obj, event_id))
                    continue
                value = obj.get("text")
                if isinstance(value, str):
                    out.append(_token(value, event_id))
                elif value is not None:
                    self.malformed += 1
            elif kind == "done":
                # "event: done ends the stream cleanly whatever its data holds".
                try:
                    parsed = json.loads(data)
                except (ValueError, RecursionError):
                    parsed = None
                if isinstance(parsed, dict):
                    reason = _first_str(parsed, "reason")
                    out.append(Done(_first_str(parsed, "text"), reason, event_id))
                else:
                    out.append(Done(id=event_id))
            elif kind == "error":
                try:
                    parsed = json.loads(data)
                except (ValueError, RecursionError):
                    parsed = None
                if isinstance(parsed, dict):
                    out.append(_error_event(parsed, event_id))
                else:
                    message = data.strip() or "the stream reported an error"
                    out.append(ErrorEvent(None, message, event_id))
            elif kind == "job":
                obj = self._object(data)
                if obj is not None:
                    out.append(
                        JobInfo(
                            _first_str(obj, "id", "job_id"),
                            _first_str(obj, "status"),
                            _first_str(obj, "model", "model_name"),
                            obj,
                            event_id,
                        )
                    )
            elif kind == "routing":
                obj = self._object(data)
                if obj is not None:
                    out.append(Routing(obj, event_id))
            elif kind == "log":
                obj = self._object(data)
                if obj is not None:
                    out.append(Log(_first_str(obj, "message", "line"), obj, event_id))
            elif kind == "meta":
                obj = self._object(data)
                if obj is not None:
                    out.append(
                        Meta(
                            _first_str(obj, "provider_node_id", "node_id"),
                            _first_str(obj, "provider_name", "node_name"),
                            _first_str(obj, "model", "model_name"),
                            _first_str(obj, "engine"),
                            obj,
                            event_id,
                        )
                    )
        return out
