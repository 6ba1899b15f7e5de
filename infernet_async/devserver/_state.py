"""What the app's handlers share: the ``Plane`` (the server's state, held by the app) and the
per-request state the middleware fills in.

The request state is kept in a dict keyed by request identity for the request's lifetime: that
works on every aiohttp 3.x, without the request-storage key API newer versions ask for.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._faults import FaultBook
from ._jobs import JobStore
from ._ratelimit import AnonymousLimiter, Decision, RateLimiter
from ._records import Recorder, RequestRecord
from ._resale import ResaleBook
from ._sse_writer import Dialect

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from ._server import DevServer

__all__ = ["PLANE_KEY", "SERVER_KEY", "Plane", "RequestState", "request_state"]

SERVER_KEY: web.AppKey[DevServer] = web.AppKey("devserver")


@dataclass(eq=False)
class Plane:
    """The state every surface's handlers read: jobs, nodes, faults, limits, records, settings.

    ``DevServer`` owns one and changes it (``configure``, an upstream's scheduler, closing); the
    app holds it under ``PLANE_KEY``, so handlers need no ``DevServer`` privates.
    """

    store: JobStore
    scheduler: Scheduler
    faults: FaultBook
    recorder: Recorder
    limiter: RateLimiter
    anonymous: AnonymousLimiter
    resale: ResaleBook
    dialect: Dialect
    newline: str
    heartbeat_interval: float | None
    hosted: bool
    chat_stream_max_seconds: float
    started_at: int = field(default_factory=lambda: int(time.time()))
    closing: bool = False
    stream_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    inflight: dict[int, RequestState] = field(default_factory=dict)


PLANE_KEY: web.AppKey[Plane] = web.AppKey("devserver-plane")


@dataclass(slots=True)
class RequestState:
    """What the middleware learned about one request, for its handler."""

    record: RequestRecord
    token_index: int = -1
    decision: Decision | None = None
    # Headers for a successful answer only (a resale key's remaining-requests counters).
    success_headers: dict[str, str] = field(default_factory=dict)

    def finish(self, response: web.StreamResponse) -> None:
        """Add the rate-limit headers and note the status, just before the answer is sent."""
        if not response.prepared:
            if self.decision is not None:
                response.headers.update(self.decision.headers())
            if response.status < 400:
                response.headers.update(self.success_headers)
        self.record.status = response.status


def request_state(request: web.Request) -> RequestState:
    return request.app[PLANE_KEY].inflight[id(request)]
