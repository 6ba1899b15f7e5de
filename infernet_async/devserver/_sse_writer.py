"""Stream events to bytes, in every dialect the devserver speaks.

The jobs API (``/api/v1``), ``EventWriter``:

- ``data``: the streaming guide's dialect: ``data: {"text": ...}`` per token, ``data: [DONE]`` after
  a clean finish, ``data: {"error": code, "message": ...}`` before closing on an error.
- ``typed``: the live control plane's dialect: ``event: job|meta|token|done|error`` with ``id:``
  lines (none on ``job``) and the JSON in ``data:``.

Its JSON uses ``json.dumps``' default separators, which give the guide's exact ``{"text": "Paris"}``
shape. The hosted service's own routes write compact JSON (``JSON.stringify``: no spaces), always
with ``\n`` line endings:

- ``ChatEventWriter``: ``GET /api/chat/stream/{id}``: typed events, ``id:`` before ``event:``, an
  ``error`` event with ``message`` only, and no ``[DONE]`` after ``done``;
- ``OpenAIChunkWriter``: ``POST /v1/chat/completions`` with ``stream: true``: data-only
  ``chat.completion.chunk`` objects, ``data: [DONE]`` after the finish chunk and after an error
  chunk alike.

Pure functions, no IO: the benchmarks and property tests use them to build corpora.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, Protocol

__all__ = [
    "ChatEventWriter",
    "Dialect",
    "EventWriter",
    "OpenAIChunkWriter",
    "StreamWriter",
    "compact_dumps",
    "encode_comment",
    "encode_event",
]

Dialect = Literal["data", "typed"]
NEWLINES = ("\n", "\r\n", "\r")


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False)


def compact_dumps(payload: Any) -> str:
    """JSON as JavaScript's ``JSON.stringify`` writes it: no spaces, non-ASCII kept as is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def encode_event(
    data: str, *, event: str | None = None, id: str | None = None, newline: str = "\n"
) -> bytes:
    """One SSE event; ``data`` containing line breaks becomes several ``data:`` lines (WHATWG
    9.2.6)."""
    lines: list[str] = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(
        f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    )
    return (newline.join(lines) + newline + newline).encode()


def encode_comment(text: str = "ping", *, newline: str = "\n") -> bytes:
    """A comment line (``: ping`` is the live plane's heartbeat); decoders ignore it."""
    return f": {text}{newline}{newline}".encode()


class EventWriter:
    """Renders stream events in one dialect; ``ids`` come from the job's event sequence."""

    def __init__(self, dialect: Dialect, newline: str = "\n") -> None:
        if dialect not in ("data", "typed"):
            raise ValueError(f"unknown dialect {dialect!r}: expected 'data' or 'typed'")
        if newline not in NEWLINES:
            raise ValueError("newline must be one of '\\n', '\\r\\n', '\\r'")
        self.dialect = dialect
        self.newline = newline

    def _typed(self, event: str, payload: Mapping[str, Any], id: int | None) -> bytes:
        return encode_event(
            _dumps(payload), event=event, id=None if id is None else str(id), newline=self.newline
        )

    def job(self, payload: Mapping[str, Any]) -> bytes:
        """The typed dialect opens with the job row; the data dialect has no such event."""
        return self._typed("job", payload, None) if self.dialect == "typed" else b""

    def meta(self, payload: Mapping[str, Any], id: int) -> bytes:
        return self._typed("meta", payload, id) if self.dialect == "typed" else b""

    def token(self, text: str, id: int) -> bytes:
        if self.dialect == "typed":
            return self._typed("token", {"text": text}, id)
        return encode_event(_dumps({"text": text}), newline=self.newline)

    def done(self, text: str, finished_at: str, reason: str, id: int) -> bytes:
        if self.dialect == "typed":
            payload = {"text": text, "finished_at": finished_at, "reason": reason}
            return self._typed("done", payload, id)
        return encode_event("[DONE]", newline=self.newline)

    def error(self, code: str, message: str, id: int) -> bytes:
        if self.dialect == "typed":
            # The live plane sends only "message"; the code is our addition so clients can classify.
            return self._typed("error", {"message": message, "error": code}, id)
        return encode_event(_dumps({"error": code, "message": message}), newline=self.newline)

    def malformed(self, id: int) -> bytes:
        """An event whose data is cut-off JSON, as a buggy proxy or node might send."""
        broken = '{"text": "unterminated'
        if self.dialect == "typed":
            return encode_event(broken, event="token", id=str(id), newline=self.newline)
        return encode_event(broken, newline=self.newline)

    def heartbeat(self) -> bytes:
        return encode_comment("ping", newline=self.newline)


class StreamWriter(Protocol):
    """What a stream's output needs from a dialect (``EventWriter`` and the hosted writers)."""

    def job(self, payload: Mapping[str, Any]) -> bytes: ...

    def meta(self, payload: Mapping[str, Any], id: int) -> bytes: ...

    def token(self, text: str, id: int) -> bytes: ...

    def done(self, text: str, finished_at: str, reason: str, id: int) -> bytes: ...

    def error(self, code: str, message: str, id: int) -> bytes: ...

    def malformed(self, id: int) -> bytes: ...

    def heartbeat(self) -> bytes: ...


class ChatEventWriter:
    """The playground chat stream (``/api/chat/stream/{id}``) as the hosted route writes it."""

    def _event(self, event: str, payload: Mapping[str, Any], id: int | None) -> bytes:
        return encode_event(compact_dumps(payload), event=event, id=None if id is None else str(id))

    def job(self, payload: Mapping[str, Any]) -> bytes:
        """The opening job row: the only event without an ``id:``."""
        return self._event("job", payload, None)

    def meta(self, payload: Mapping[str, Any], id: int) -> bytes:
        return self._event("meta", payload, id)

    def token(self, text: str, id: int) -> bytes:
        return self._event("token", {"text": text}, id)

    def done(self, text: str, finished_at: str, reason: str, id: int) -> bytes:
        return self._event("done", {"text": text, "reason": reason, "finished_at": finished_at}, id)

    def error(self, code: str, message: str, id: int) -> bytes:
        # The hosted route sends the message only; the code stays in the StreamRecord.
        return self._event("error", {"message": message}, id)

    def not_found(self, job_id: str) -> bytes:
        """The whole answer (HTTP 200) for an unknown job id."""
        return self._event("error", {"message": "job not found", "jobId": job_id}, None)

    def malformed(self, id: int) -> bytes:
        return encode_event('{"text":"unterminated', event="token", id=str(id))

    def heartbeat(self) -> bytes:
        return encode_comment("ping")

    def capped(self) -> bytes:
        """Nothing: at its time cap the hosted route just ends the body."""
        return b""


class OpenAIChunkWriter:
    """``chat.completion.chunk`` events of one completion (same id, created and model on each)."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.head: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }

    def _chunk(self, delta: Mapping[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return encode_event(compact_dumps({**self.head, "choices": [choice]}))

    def job(self, payload: Mapping[str, Any]) -> bytes:
        """The role chunk opens every completion, before any node answers."""
        return self._chunk({"role": "assistant", "content": ""}, None)

    def meta(self, payload: Mapping[str, Any], id: int) -> bytes:
        return b""

    def token(self, text: str, id: int) -> bytes:
        return self._chunk({"content": text}, None)

    def done(self, text: str, finished_at: str, reason: str, id: int) -> bytes:
        return self._chunk({}, reason) + encode_event("[DONE]")

    def error(self, code: str, message: str, id: int) -> bytes:
        # No "choices": an error chunk, then [DONE] all the same.
        payload = {
            "id": self.head["id"],
            "object": self.head["object"],
            "error": {"message": message},
        }
        return encode_event(compact_dumps(payload)) + encode_event("[DONE]")

    def malformed(self, id: int) -> bytes:
        broken = compact_dumps(self.head)[:-1] + ',"choices":[{"index":0,"delta":{"content":"unterm'
        return encode_event(broken)

    def heartbeat(self) -> bytes:
        return encode_comment("ping")

    def capped(self) -> bytes:
        """A job source that ended without ``done`` is closed as if it had stopped."""
        return self._chunk({}, "stop") + encode_event("[DONE]")
