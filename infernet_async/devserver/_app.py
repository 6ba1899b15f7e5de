"""The HTTP face of the devserver: the app of all three surfaces and the one middleware every
request passes.

The routes live with their surface: ``_jobs_routes.py`` (``/api/v1``, which speaks
``infernet-api.md`` exactly), ``_openai_routes.py`` (``/v1``) and ``_chat_routes.py``
(``/api/chat``); any other path answers Next.js's HTML 404 page. The app holds the server's
``Plane`` under ``PLANE_KEY``, and handlers read their state there.

The middleware records the request, then by surface:

- ``/api/v1`` (the jobs API): answer an injected ``http_error`` fault, check the bearer token (401),
  count it against the token's rate limits (429), as ``_jobs_routes.guarded`` does. With
  ``hosted=True`` every ``/api/v1`` route answers the HTML 404 instead, as the hosted service does
  today.
- ``/v1``, ``/api/chat`` and the rest: answer an injected ``http_error`` fault in the surface's own
  body shape, then the handler (no bearer token: those routes do their own keys and limits).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from ._chat_routes import add_chat_routes
from ._jobs_routes import add_jobs_routes, guarded, jobs_fault_answer
from ._openai_routes import add_openai_routes
from ._public import (
    Surface,
    SurfaceError,
    fault_answer,
    http_error_answer,
    not_found_page,
    surface_of,
)
from ._records import REDACTED, RequestRecord
from ._state import PLANE_KEY, Plane, RequestState

__all__ = ["build_app"]


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    plane = request.app[PLANE_KEY]
    headers = {
        k: (REDACTED if k.lower() == "authorization" else v) for k, v in request.headers.items()
    }
    record = RequestRecord(request.method, request.path, dict(request.query), headers)
    plane.recorder.requests.append(record)
    state = RequestState(record)
    plane.inflight[id(request)] = state
    try:
        surface = surface_of(request.path)
        if surface == "jobs" and not plane.hosted:
            response = await guarded(plane, state, request, handler)
        else:
            response = await _public(plane, surface, request, handler)
        state.finish(response)
        return response
    finally:
        del plane.inflight[id(request)]


async def _public(
    plane: Plane, surface: Surface, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Everything outside the jobs API: no bearer token here (the routes do their own checks)."""
    fault = plane.faults.take_request_fault(request.method, request.path)
    if fault is not None:
        if surface in ("openai", "chat"):
            return fault_answer(surface, fault)
        return jobs_fault_answer(plane, fault)
    if surface == "jobs":
        # Hosted mode: the documented API is not deployed; Next.js answers its 404 page.
        return not_found_page()
    try:
        return await handler(request)
    except SurfaceError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error_answer(surface, exc, plane.max_body_bytes)


def build_app(plane: Plane) -> web.Application:
    """The app of all three surfaces, holding ``plane`` for the handlers."""
    app = web.Application(middlewares=[_middleware], client_max_size=plane.max_body_bytes)
    app[PLANE_KEY] = plane
    add_jobs_routes(app)
    add_openai_routes(app)
    add_chat_routes(app)
    return app
