"""Stream events to bytes, in both dialects the control plane speaks.

- ``data``: the streaming guide's dialect: ``data: {"text": ...}`` per token, ``data: [DONE]`` after
  a
  clean finish, ``data: {"error": code, "message": ...}`` before closing on an error.
- ``typed``: the live control plane's dialect: ``event: job|meta|token|done|error`` with ``id:``
  lines
  (none on ``job``) and the JSON in ``data:``.

JSON uses ``json.dumps``' default separators, which give the guide's exact ``{"text": "Paris"}``
shape. Pure functions, no IO: the benchmarks and property tests use them to build corpora.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["Dialect", "EventWriter", "encode_comment", "encode_event"]

Dialect = Literal["data", "typed"]
NEWLINES = ("\n", "\r\n", "\r")


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False)


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
