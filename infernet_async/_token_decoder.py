"""``TokenDecoder``: an Infernet token stream (either dialect) in, typed stream events out.

Sans-IO, layered on ``sse.SSEDecoder`` (through ``_sse_layer.LayeredDecoder``). Rule: its fast path
for token events must give exactly what the SSE decoder plus ``json.loads`` give; the tests compare
the two on arbitrary streams. ``_token_walk`` reads the token events; this module frames the bytes
and interprets every other event.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ._event_build import error_event, first_str, new, new_token, set_text, set_token_id
from ._sse_layer import LayeredDecoder
from ._textfast import TOKEN_EVENT, scanstring, text_of, unescape
from ._token_walk import text_events, walk
from .events import Done, ErrorEvent, JobInfo, Log, Meta, Routing, StreamEvent, Token
from .sse import DEFAULT_MAX_EVENT_SIZE, ServerSentEvent

__all__ = ["TokenDecoder"]


def _json_object(data: str) -> dict[str, Any] | None:
    """The JSON object in ``data``, else ``None`` (not counted as malformed)."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _job_info(obj: dict[str, Any], event_id: str | None) -> JobInfo:
    job_id = first_str(obj, "id", "job_id")
    return JobInfo(
        job_id, first_str(obj, "status"), first_str(obj, "model", "model_name"), obj, event_id
    )


def _meta(obj: dict[str, Any], event_id: str | None) -> Meta:
    return Meta(
        first_str(obj, "provider_node_id", "node_id"),
        first_str(obj, "provider_name", "node_name"),
        first_str(obj, "model", "model_name"),
        first_str(obj, "engine"),
        obj,
        event_id,
    )


def _log(obj: dict[str, Any], event_id: str | None) -> Log:
    return Log(first_str(obj, "message", "line"), obj, event_id)


# The typed events whose data is a JSON object read as a whole: data that is not one is skipped
# (and counted as malformed unless blank).
_OBJECT_EVENTS: dict[str, Callable[[dict[str, Any], str | None], StreamEvent]] = {
    "job": _job_info,
    "meta": _meta,
    "routing": Routing,
    "log": _log,
}


class TokenDecoder(LayeredDecoder):
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

    __slots__ = ()

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        # The fast path's held bytes (_pending) have their line ends made LF (see feed) but for a
        # CR at the very end (half a CRLF, maybe); they never hold a blank line after a line.
        super().__init__(max_event_size=max_event_size, fast=True)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[StreamEvent]:
        """Decode the next chunk of the body: the stream events it completed, in order.

        Raises:
            EventTooLargeError: a line or an event is too large (see ``SSEDecoder.feed``).
            RuntimeError: ``feed()`` after ``close()``.
        """
        sse = self._sse
        # Fast path, taken while the SSE decoder sits at an event boundary with nothing pending:
        # the bytes since that boundary, up to the last blank line, are decoded at once, their
        # token events turned into tokens without the per-line SSE loop and without json.loads
        # (see _token_walk and _textfast for why that is exact), and any other event handed to the
        # SSE decoder's line loop alone, in order. Bytes that cannot be decoded this way go to the
        # SSE decoder, with the pending bytes in front, exactly as if it had seen every byte.
        if type(chunk) is not bytes:
            chunk = bytes(chunk)  # one copy, and held bytes and new ones are of one kind
        if sse.at_boundary:
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
                event_id = sse.last_event_id
                tokens: list[StreamEvent] | None = None
                if stop > 256:  # WALK_LIMIT (a constant here: one lookup less per chunk)
                    tokens = text_events(text, event_id)
                    position = 0
                elif text.startswith('data: {"text": "'):
                    # The first event inline: in the live case it is the only one.
                    try:
                        body, position = scanstring(text, 16)
                    except ValueError:
                        position = 0
                    position = position + 3 if text.startswith("}\n\n", position) else 0
                else:
                    # The typed dialect's token event, first or alone, the same way.
                    match = TOKEN_EVENT(text)
                    if match is not None:
                        value, body = match.groups()
                        if value is not None:
                            event_id = sse.last_event_id = value
                        if "\\" in body:
                            body = unescape(body)
                        position = match.end()
                    else:
                        position = 0
                if position:  # the first event was read inline
                    token = new(Token)
                    set_text(token, body)
                    set_token_id(token, event_id)
                    if position == len(text):
                        if region is chunk:  # the whole chunk was this one event
                            return [token]
                        if data is pending:  # the held bytes and this chunk end it
                            del pending[:stop]
                            return [token]
                        position = 0
                    tokens = [token]
                # Whether the SSE decoder would have dispatched an event from this chunk (then it
                # keeps a size error in the rest for the next call).
                dispatched = False
                if tokens is None or position:
                    if tokens is None:
                        tokens = []
                    event_id, position = walk(text, event_id, position, tokens)
                    if position < len(text):
                        event_id, dispatched = self._walk_rest(text, event_id, position, tokens)
                    sse.last_event_id = event_id
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
        """Decode ``text`` from ``position``, where ``walk`` stopped, to its end: each event the
        walk does not take goes to the SSE decoder's line loop alone, the walk takes the rest.

        ``text`` ends with a blank line and the SSE decoder sits at an event boundary, so feeding
        it the lines of one event at a time (its own line-end normalisation first) is what feeding
        it the bytes would do. Returns the last event id and whether the SSE decoder dispatched
        any event.
        """
        sse = self._sse
        lines_of = sse.feed_lines
        size = len(text)
        dispatched = False
        while position < size:
            end = text.find("\n\n", position) + 2  # the event's blank line (or one before)
            segment = text[position:end]
            if "\r" in segment:
                segment = segment.replace("\r\n", "\n").replace("\r", "\n")
            lines = segment.split("\n")
            lines.pop()  # the empty string after the last line end
            sse.last_event_id = event_id
            events = lines_of(lines)
            if events:
                dispatched = True
                tokens += self._interpret(events)
            event_id, position = walk(text, sse.last_event_id, end, tokens)
        return event_id, dispatched

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
                    out.append(new_token(text, event_id))
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
                    out.append(error_event(obj, event_id))
                    continue
                value = obj.get("text")
                if isinstance(value, str):
                    out.append(new_token(value, event_id))
                elif value is not None:
                    self.malformed += 1
            elif kind == "done":
                # "event: done ends the stream cleanly whatever its data holds".
                parsed = _json_object(data)
                if parsed is not None:
                    reason = first_str(parsed, "reason")
                    out.append(Done(first_str(parsed, "text"), reason, event_id))
                else:
                    out.append(Done(id=event_id))
            elif kind == "error":
                parsed = _json_object(data)
                if parsed is not None:
                    out.append(error_event(parsed, event_id))
                else:
                    message = data.strip() or "the stream reported an error"
                    out.append(ErrorEvent(None, message, event_id))
            else:
                build = _OBJECT_EVENTS.get(kind)
                if build is not None:
                    obj = self._object(data)
                    if obj is not None:
                        out.append(build(obj, event_id))
        return out
