"""``ChunkDecoder``: an OpenAI-compatible ``/v1/chat/completions`` stream in, typed events out.

The hosted service's OpenAI-compatible surface streams data-only SSE events, each a
``chat.completion.chunk`` object in compact JSON: a role chunk (``"delta": {"role": "assistant",
"content": ""}``), one chunk per token (``"delta": {"content": "<token>"}``), a finish chunk
(``"delta": {}``, ``"finish_reason": "stop"``), then ``data: [DONE]``. A failure mid-stream is
a chunk with an ``error`` object, followed by ``[DONE]`` too: ``[DONE]`` alone is no success here,
only a finish chunk before it is.

Sans-IO, layered on ``sse.SSEDecoder`` like ``TokenDecoder`` (see ``_sse_layer``). The fast path
learns the stream's token chunk as a template (everything but the content string is the same from
one chunk to the next) from a chunk the general path decoded, proves the template, and then reads
later chunks that are exactly
``data: <head>"<JSON string>"<tail>`` + blank line with ``json.decoder.scanstring`` alone; see
``ChunkDecoder._learn`` for why that gives exactly what ``json.loads`` and the rules give.
"""

from __future__ import annotations

import json
from typing import Any

from ._event_build import error_event, new, new_token, set_text, set_token_id
from ._sse_layer import LayeredDecoder
from ._textfast import scanstring
from .errors import INCOMPLETE_STREAM_CODE
from .events import Done, ErrorEvent, JobInfo, StreamEvent, Token
from .sse import DEFAULT_MAX_EVENT_SIZE, ServerSentEvent

__all__ = ["ChunkDecoder"]

INCOMPLETE_MESSAGE = "the stream sent [DONE] without a finish_reason: the answer may be cut short"
_ERROR_MESSAGE = "the stream reported an error"

# What a chunk says when it says nothing (no choices, no choice with index 0, no content).
_NOTHING: tuple[str, str | None] = ("", None)

# Two JSON strings put in a candidate template's content slot to prove it (see _learn). Each holds a
# backslash, which no JSON text may hold outside a string: if the slot did not stand between two
# tokens, neither substitution would parse.
_SENTINELS = (
    ('"\\u00e9\\n\\"A\\ud83d\\ude00"', 'é\n"A\U0001f600'),
    ('"\\\\B\\t\\u2028\\/"', "\\B\t\u2028/"),
)
# How many general-path chunks may try to become a template with no fast-path match in between: a
# server whose chunks differ in more than their content (a per-chunk counter, say) stops paying
# for a template that never matches.
_LEARN_BUDGET = 4
# How many "content" keys of one chunk are tried as the slot.
_LEARN_CANDIDATES = 4


def _choice(obj: dict[str, Any]) -> tuple[str, str | None] | None:
    """``(content, finish_reason)`` of the chunk's choice with index 0, or of its first choice
    when that has no index; ``""`` for no content, ``None`` for no finish reason. ``None`` when
    the chunk is malformed: ``choices`` not a list, a choice (up to the one used) not an object,
    its ``delta`` present but not an object, its ``content`` neither a string nor null.

    A chunk without ``choices`` (or with ``null``, or ``[]``: a usage chunk) says nothing, and so
    does one without a choice of index 0. A ``finish_reason`` that is not a non-empty string is no
    finish reason.
    """
    choices = obj.get("choices")
    if choices is None:
        return _NOTHING
    if not isinstance(choices, list):
        return None
    choice: dict[str, Any] | None = None
    for position, item in enumerate(choices):
        if not isinstance(item, dict):
            return None
        index = item.get("index")
        if index is None:
            if position == 0:
                choice = item
                break
        elif type(index) is int and index == 0:
            choice = item
            break
    if choice is None:
        return _NOTHING
    content: Any = ""
    if "delta" in choice:
        delta = choice["delta"]
        if not isinstance(delta, dict):
            return None
        content = delta.get("content")
        if content is None:
            content = ""
        elif not isinstance(content, str):
            return None
    finish = choice.get("finish_reason")
    if not isinstance(finish, str) or not finish:
        finish = None
    return content, finish


def _chunk_error(obj: dict[str, Any], event_id: str | None) -> ErrorEvent | None:
    """The chunk's error, if it has one (an ``error`` that is neither null nor false)."""
    error = obj.get("error")
    if error is None or error is False:
        return None
    if isinstance(error, dict):  # the OpenAI shape: {"error": {"message": ..., "code": ...}}
        code = error.get("code")
        message = error.get("message")
        return ErrorEvent(
            code if isinstance(code, str) and code else None,
            message if isinstance(message, str) and message else _ERROR_MESSAGE,
            event_id,
        )
    # The jobs API's {"error": "<code>", "message": ...} (or anything else non-null).
    return error_event(obj, event_id)


def _value_start(data: str, position: int) -> int:
    """The index of the ``"`` that opens the value after the key ending at ``position``, else -1."""
    size = len(data)
    while position < size and data[position] in " \t":
        position += 1
    if position >= size or data[position] != ":":
        return -1
    position += 1
    while position < size and data[position] in " \t":
        position += 1
    if position >= size or data[position] != '"':
        return -1
    return position


class ChunkDecoder(LayeredDecoder):
    """Bytes of an OpenAI-compatible chat completion stream in, typed stream events out.

    Wraps an ``SSEDecoder``, so any valid SSE framing is accepted (CRLF, CR, comments such as
    ``: ping``, multi-line data, ``event:`` and ``id:`` fields). Only events of type "message"
    are read; others are skipped. Each event's data:

    - exactly ``[DONE]`` -> ``Done(reason=<the finish_reason seen>)`` if a chunk before it carried
      a ``finish_reason``; otherwise ``ErrorEvent(INCOMPLETE_STREAM_CODE, ...)``: an answer cut
      short is never passed off as a whole one;
    - a JSON object with an ``error`` that is neither null nor false -> ``ErrorEvent`` (an object:
      its ``code`` if a non-empty string, its ``message``; a string: that code, with the chunk's
      ``message`` or ``error_message``). The stream is over for the caller; the decoder reads on;
    - any other JSON object is a chunk: the first chunk with a string ``id`` gives one ``JobInfo``
      (``job_id`` the id, ``model`` the chunk's, ``data`` the chunk) before anything else of it;
      the ``content`` of its choice with index 0 (or of its first choice if that has no index)
      gives a ``Token`` when it is a non-empty string, and its ``finish_reason`` (a non-empty
      string) is remembered for ``[DONE]``.

    Skipped and counted in ``malformed``: data that is not JSON, JSON that is not an object, a
    chunk whose ``choices`` is not a list, whose choice or ``delta`` is not an object, whose
    ``content`` is neither a string nor null. Skipped without a trace: blank data, chunks without
    choices (usage chunks), choices with another index. ``feed()`` never raises but for the SSE
    layer's ``EventTooLargeError`` (and ``RuntimeError`` after ``close()``).

    Every event carries ``id``: the SSE last-event-ID at its dispatch.

    Args:
        max_event_size: passed to the ``SSEDecoder``.
    """

    __slots__ = ("_budget", "_data_head", "_data_tail", "_finish", "_head", "_job", "_tail")

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        # The fast path (and its held bytes, which never hold a blank line or a CR) is on once a
        # template is known.
        super().__init__(max_event_size=max_event_size, fast=False)
        # The template: a token chunk's data is _data_head + <JSON string> + _data_tail, its raw
        # event "data: " + _data_head ... _data_tail + "\n\n" (= _head ... _tail). Empty until one
        # is learned and proved.
        self._head = ""
        self._tail = ""
        self._data_head = ""
        self._data_tail = ""
        self._budget = _LEARN_BUDGET
        self._finish: str | None = None  # the last finish_reason seen
        self._job = False  # a JobInfo was given

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[StreamEvent]:
        """Decode the next chunk of the body: the stream events it completed, in order.

        Raises (as ``SSEDecoder.feed``): ``EventTooLargeError`` for an event or a line too large,
        ``RuntimeError`` after ``close()``.
        """
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        # Fast path (once a template is known), taken while the SSE decoder sits at an event
        # boundary with nothing pending, as in TokenDecoder: the bytes since that boundary, up to
        # the last blank line, are decoded at once, and the events in them that are exactly the
        # template are read with scanstring alone (see _region); the others go to the SSE decoder,
        # cut at event boundaries, exactly as if it had seen every byte.
        pending = self._pending
        limit = self._limit
        if pending:
            # Held bytes exist only on the fast path. A chunk without LF or CR ends no event (a
            # blank line needs a LF of its own): hold it too, the cheapest way. (Bytes are searched
            # for an int: several times faster than for a one-byte bytes object.)
            if 10 not in chunk and 13 not in chunk and len(pending) + len(chunk) <= limit:
                pending += chunk
                return []
        elif not self._fast or not self._sse.at_boundary:
            return self._general(chunk)
        data: bytes | bytearray
        if pending:
            if len(pending) + len(chunk) > limit:
                # Too big to hold: never copy a huge chunk, let the SSE decoder judge it.
                return self._flush(chunk, holding=False)
            start = len(pending) - 1  # a blank line may straddle the two
            pending += chunk
            data = pending
            stop = pending.rfind(b"\n\n", start) + 2
        else:
            data = chunk
            stop = chunk.rfind(b"\n\n") + 2
        if stop < 2:
            if len(data) <= limit and 13 not in chunk:
                # No blank line yet: keep the bytes. A CR could end an event without any "\n\n",
                # so a chunk with one goes to the SSE decoder at once.
                if data is chunk:
                    pending += chunk
                return []
        elif stop <= limit:
            region = data if stop == len(data) else data[:stop]
            try:
                text = region.decode()
            except UnicodeDecodeError:
                text = None  # invalid UTF-8: the SSE decoder replaces it, event by event
            if text is not None:
                events: list[StreamEvent] | None = None
                head = self._head
                if text.startswith(head):
                    # The live case first: the region is one token event.
                    tail = self._tail
                    try:
                        body, end = scanstring(text, len(head))
                    except ValueError:
                        pass
                    else:
                        if end + len(tail) == len(text) and text.startswith(tail, end):
                            self._budget = _LEARN_BUDGET
                            if body:
                                token = new(Token)
                                set_text(token, body)
                                set_token_id(token, self._sse.last_event_id)
                                events = [token]
                            else:
                                events = []
                            if region is data:  # and nothing after it
                                if data is pending:
                                    pending.clear()
                                return events
                if events is None:
                    events = self._region(text)
                if data is pending:
                    del pending[:stop]  # O(1): CPython moves a bytearray's start
                elif stop < len(chunk):
                    if len(chunk) - stop > limit:
                        return events + self._flush(memoryview(chunk)[stop:], holding=True)
                    pending += memoryview(chunk)[stop:]
                if pending and (13 in pending or len(pending) > limit):
                    events += self._flush(b"", holding=True)
                return events
        if data is pending:
            return self._flush(b"", holding=False)
        return self._general(chunk)

    def _region(self, text: str) -> list[StreamEvent]:
        """The events of ``text``: complete events from an event boundary on, strictly decoded.

        Runs of template events are read here; the events between them go to the SSE decoder as
        their own bytes (``text`` came from valid UTF-8, so encoding a slice of it gives back
        exactly the bytes it came from), and may teach a new template.
        """
        sse = self._sse
        events: list[StreamEvent] = []
        append = events.append
        size = len(text)
        position = 0
        while True:
            head = self._head
            if head and text.startswith(head, position):
                tail = self._tail
                start = len(head)
                event_id = sse.last_event_id
                hit = position
                while True:
                    try:
                        body, end = scanstring(text, position + start)
                    except ValueError:
                        break
                    if not text.startswith(tail, end):
                        break
                    position = end + len(tail)
                    if body:
                        token = new(Token)
                        set_text(token, body)
                        set_token_id(token, event_id)
                        append(token)
                    if not text.startswith(head, position):
                        break
                if position != hit:
                    self._budget = _LEARN_BUDGET
            if position >= size:
                return events
            # The SSE decoder takes everything up to the next event that starts like the template
            # (after a blank line, so at an event boundary), or to the end.
            stop = text.find("\n\n" + head, position) + 2 if head else 1
            if stop < 2:
                stop = size
            events += self._interpret(sse.feed(text[position:stop].encode()))
            position = stop

    def _interpret(self, events: list[ServerSentEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for sse in events:
            if sse.event != "message":
                continue
            data = sse.data
            event_id = sse.id
            data_head = self._data_head
            if self._head and data.startswith(data_head) and data.endswith(self._data_tail):
                # The template's data in other framing (CRLF, say): no json.loads either.
                try:
                    body, end = scanstring(data, len(data_head))
                except ValueError:
                    pass
                else:
                    if end == len(data) - len(self._data_tail):
                        self._budget = _LEARN_BUDGET
                        if body:
                            out.append(new_token(body, event_id))
                        continue
            if data == "[DONE]":
                # A literal, compared exactly after the SSE layer (as TokenDecoder does).
                if self._finish is not None:
                    out.append(Done(None, self._finish, event_id))
                else:
                    out.append(ErrorEvent(INCOMPLETE_STREAM_CODE, INCOMPLETE_MESSAGE, event_id))
                continue
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                if data.strip():  # blank data is a heartbeat
                    self.malformed += 1
                continue
            if not isinstance(obj, dict):
                self.malformed += 1
                continue
            error = _chunk_error(obj, event_id)
            fields = _NOTHING if error is not None else _choice(obj)
            if fields is None:
                self.malformed += 1
                continue
            job_id = obj.get("id")
            if not self._job and isinstance(job_id, str):
                self._job = True
                model = obj.get("model")
                out.append(
                    JobInfo(job_id, None, model if isinstance(model, str) else None, obj, event_id)
                )
            if error is not None:
                out.append(error)
                continue
            content, finish = fields
            if content:
                out.append(new_token(content, event_id))
            if finish is not None:
                self._finish = finish
            elif content and self._budget > 0:
                self._budget -= 1
                self._learn(data, obj, content)
        return out

    def _learn(self, data: str, obj: dict[str, Any], content: str) -> None:
        """Make ``data``, a token chunk the general path just read, the template if it proves one.

        The slot is the string value of a ``"content"`` key that decodes to ``content``:
        ``data`` = ``prefix`` + that JSON string + ``suffix``. Proof that for *every* JSON string
        ``S``, ``prefix + S + suffix`` reads, by the rules, as exactly ``Token(<S decoded>)`` (or
        nothing for ``""``) with no other effect: ``prefix + S + suffix`` parses for two
        sentinels ``S`` that hold a backslash, so ``prefix`` ends between two JSON tokens (a
        backslash outside a string cannot parse) and any string there is lexed as one string token,
        after which ``suffix`` is lexed the same whatever the string was: the document differs
        only in that one leaf. Both sentinels come out as the content of choice 0, each its own,
        so that leaf is the content; and the rest of the chunk, which does not depend on the leaf,
        has no error, no finish reason and this chunk's id (whose JobInfo, if any, was given
        already). ``scanstring`` is the very routine ``json.loads`` runs on strings, so the fast
        path's string is ``json.loads``'s. No CR or LF in ``data``: the raw event is one line.
        """
        if "\n" in data or "\r" in data:
            return
        job_id = obj.get("id")
        model = obj.get("model")
        search = 0
        for _ in range(_LEARN_CANDIDATES):
            key = data.find('"content"', search)
            if key < 0:
                return
            search = key + 1
            quote = _value_start(data, key + 9)
            if quote < 0:
                continue
            try:
                value, end = scanstring(data, quote + 1)
            except ValueError:
                continue
            if value != content:
                continue
            prefix = data[:quote]
            suffix = data[end:]
            if all(
                self._proves(prefix + raw + suffix, text, job_id, model) for raw, text in _SENTINELS
            ):
                self._data_head = prefix + '"'
                self._data_tail = suffix
                self._head = "data: " + prefix + '"'
                self._tail = suffix + "\n\n"
                self._fast = True
                return

    def _proves(self, data: str, content: str, job_id: Any, model: Any) -> bool:
        """Whether ``data`` reads as a chunk of ``job_id`` and ``model`` (compared with their
        types) whose only effect is the token ``content``."""
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return False
        if not isinstance(obj, dict) or _chunk_error(obj, None) is not None:
            return False
        if _choice(obj) != (content, None):
            return False
        same_id = obj.get("id")
        same_model = obj.get("model")
        if type(same_id) is not type(job_id) or same_id != job_id:
            return False
        if type(same_model) is not type(model) or same_model != model:
            return False
        # The JobInfo rule: a template chunk must never be the first with a string id.
        return self._job or not isinstance(job_id, str)
