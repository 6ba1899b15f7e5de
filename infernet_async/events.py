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

This module holds the types only, and ``EventDecoder``, what reads them from bytes: ``TokenDecoder``
(``_token_decoder``) for either dialect, ``ChunkDecoder`` (``_openai_decoder``) for OpenAI chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

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
