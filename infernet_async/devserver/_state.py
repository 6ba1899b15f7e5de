"""Per-request state shared by the middleware and the handlers, and the app key of the server.

The state is kept by the server in a dict keyed by request identity for the request's lifetime:
that works on every aiohttp 3.x, without the request-storage key API newer versions ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from ._ratelimit import Decision
from ._records import RequestRecord

if TYPE_CHECKING:
    from ._server import DevServer

__all__ = ["SERVER_KEY", "RequestState", "request_state"]

SERVER_KEY: web.AppKey[DevServer] = web.AppKey("devserver")


@dataclass(slots=True)
class RequestState:
    """What the middleware learned about one request, for its handler."""

    record: RequestRecord
    token_index: int = -1
    decision: Decision | None = None

    def finish(self, response: web.StreamResponse) -> None:
        """Add the rate-limit headers and note the status, just before the answer is sent."""
        if self.decision is not None and not response.prepared:
            response.headers.update(self.decision.headers())
        self.record.status = response.status


def request_state(request: web.Request) -> RequestState:
    return request.app[SERVER_KEY]._inflight[id(request)]
