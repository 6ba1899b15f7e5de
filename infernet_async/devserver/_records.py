"""What the devserver saw: one record per HTTP request and one per event stream.

Tests read these to assert on client behaviour ("the stream was closed when my handler was
cancelled", "the client retried after Retry-After"). Records are plain mutable dataclasses: the
server fills in the fields it learns later (a request's status, a stream's close) on the same object
the test holds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RequestRecord", "StreamRecord"]

REDACTED = "<redacted>"


@dataclass(slots=True)
class RequestRecord:
    """One HTTP request the devserver received.

    ``headers`` is a copy of the request headers with the ``Authorization`` value replaced by
    ``"<redacted>"``; ``json`` is the decoded body (``None`` when there was none or it was not
    JSON);
    ``time`` is ``time.time()`` on arrival; ``status`` is the answer's status once it is known.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    json: Any = None
    time: float = field(default_factory=time.time)
    status: int | None = None
    token_index: int | None = None


@dataclass(slots=True)
class StreamRecord:
    """One event stream the devserver served (``POST /jobs`` with ``stream: true``, ``GET
    .../stream``, ``POST /v1/chat/completions`` with ``stream: true`` or ``GET
    /api/chat/stream/{id}``).

    ``surface`` is ``"jobs"`` (the documented API; ``dialect`` is then ``"data"`` or ``"typed"``),
    ``"openai"`` or ``"chat"`` (``dialect`` is the same name). ``closed_by_client`` is true when
    the client went away before the server finished the stream; ``completed`` is true when the
    stream ended with a success (``[DONE]`` after a finish, or ``event: done``); ``error`` is the
    code of the error sent, if any (``node_disconnected``, ``not_found``...); ``fault`` names the
    injected fault that shaped the stream. ``opened_at``/``closed_at`` are ``time.time()`` values.
    """

    job_id: str
    path: str
    dialect: str
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    tokens_sent: int = 0
    closed_by_client: bool = False
    completed: bool = False
    error: str | None = None
    fault: str | None = None
    surface: str = "jobs"

    @property
    def closed(self) -> bool:
        """Whether the stream has ended, for any reason."""
        return self.closed_at is not None


class Recorder:
    """Keeps the newest records (bounded) and wakes waiters when a stream opens or closes."""

    def __init__(self, limit: int) -> None:
        self.requests: deque[RequestRecord] = deque(maxlen=limit)
        self.streams: deque[StreamRecord] = deque(maxlen=limit)
        self.open_streams = 0
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        # One Event per generation: waiters hold the old one, which is set once and never reused.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def stream_opened(self, record: StreamRecord) -> None:
        self.streams.append(record)
        self.open_streams += 1
        self._notify()

    def stream_closed(self, record: StreamRecord) -> None:
        if record.closed_at is None:
            record.closed_at = time.time()
            self.open_streams -= 1
            self._notify()

    async def wait_for_stream_close(
        self,
        job_id: str | None,
        timeout: float,  # noqa: ASYNC109 (the public API takes a timeout)
    ) -> StreamRecord:
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                matching = [r for r in self.streams if job_id is None or r.job_id == job_id]
                open_ = [r for r in matching if not r.closed]
                if open_:
                    # Wait for the oldest open stream, which is the one a test usually means.
                    target = open_[0]
                    while not target.closed:
                        await changed.wait()
                        changed = self._changed
                    return target
                if matching:
                    return matching[-1]
                await changed.wait()
