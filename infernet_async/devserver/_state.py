"""What the app's handlers share: the ``Plane`` (the server's state, held by the app under
``PLANE_KEY``) and the per-request state the middleware fills in.

Rule: a handler reads everything through ``request.app[PLANE_KEY]``; nothing here or in the routes
knows ``DevServer``, which only builds a ``Plane``, changes it and serves the app that holds it.

The request state is kept in a dict keyed by request identity for the request's lifetime: that
works on every aiohttp 3.x, without the request-storage key API newer versions ask for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._faults import FaultBook
from ._jobs import Job, JobStore
from ._ratelimit import AnonymousLimiter, Decision, RateLimiter
from ._records import Recorder, RequestRecord
from ._resale import ResaleBook
from ._sse_writer import Dialect

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["PLANE_KEY", "Plane", "RequestState", "request_state", "token_digests"]


def token_digests(tokens: Sequence[str]) -> list[bytes]:
    """The accepted tokens' digests, so every comparison is between equal-length values and leaks
    no token length."""
    return [hashlib.sha256(t.encode()).digest() for t in tokens]


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
    token_digests: list[bytes]
    max_body_bytes: int
    dialect: Dialect
    newline: str
    heartbeat_interval: float | None
    hosted: bool
    chat_stream_max_seconds: float
    started_at: int = field(default_factory=lambda: int(time.time()))
    closing: bool = False
    stream_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    inflight: dict[int, RequestState] = field(default_factory=dict)

    def authenticate(self, header: str | None) -> int | None:
        """The index of the presented token, or ``None``; compares every token in constant time."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        # aiohttp decodes header bytes with surrogateescape: encode them back the same way, or a
        # token that is not UTF-8 raises here and the request gets a 500 instead of a 401.
        presented = hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).digest()
        found: int | None = None
        for index, digest in enumerate(self.token_digests):
            if hmac.compare_digest(presented, digest) and found is None:
                found = index
        return found

    def submit(
        self, owner: int, model: str, params: Mapping[str, Any], *, node_pin: str | None = None
    ) -> Job:
        """A new job with the store's next id, handed to the scheduler: every surface's POST, from
        its checked ``params`` (``messages``, ``max_tokens``, ``temperature``, maybe ``top_p``)."""
        job = Job(
            id=self.store.new_id(),
            owner=owner,
            model=model,
            messages=params["messages"],
            max_tokens=params["max_tokens"],
            temperature=params["temperature"],
            top_p=params.get("top_p", 1.0),
            node_pin=node_pin,
        )
        self.scheduler.submit(job)
        return job


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
