"""The HTTP face of the devserver: the app, its shared middleware, and the jobs API's routes
(``/api/v1``), which speak ``infernet-api.md`` exactly.

The app also serves the hosted service's own surfaces (``_openai_routes.py`` for ``/v1``,
``_chat_routes.py`` for ``/api/chat``); any other path answers Next.js's HTML 404 page.

Every request passes one middleware that records it, then by surface:

- ``/api/v1`` (the jobs API): answer an injected ``http_error`` fault, check the bearer token (401),
  count it against the token's rate limits (429). Every error body is ``{"error": <code>,
  "error_message": ...}``; rate-limit headers go on every authenticated answer, streams included.
  With ``hosted=True`` every ``/api/v1`` route answers the HTML 404 instead, as the hosted
  service does today.
- ``/v1``, ``/api/chat`` and the rest: answer an injected ``http_error`` fault in the surface's own
  body shape, then the handler (no bearer token: those routes do their own keys and limits).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ._chat_routes import add_chat_routes
from ._jobs import JOB_STATUSES, Job, iso, parse_iso
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
from ._state import PLANE_KEY, SERVER_KEY, RequestState, request_state
from ._streams import serve_stream

if TYPE_CHECKING:
    from ._server import DevServer

__all__ = ["ApiError", "build_app"]


API = "/api/v1"
ROLES = ("system", "user", "assistant", "tool")
MAX_TOKENS_LIMIT = 32768
MAX_LIST_LIMIT = 100


class ApiError(Exception):
    """Raised by handlers; the middleware turns it into the API's error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.code, "error_message": self.message, **self.extra}
        return web.json_response(body, status=self.status, headers=self.headers)


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "bad_request"}


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
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
            response = await _guarded(server, state, request, handler)
        else:
            response = await _public(server, surface, request, handler)
        state.finish(response)
        return response
    finally:
        del plane.inflight[id(request)]


async def _public(
    server: DevServer, surface: Surface, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Everything outside the jobs API: no bearer token here (the routes do their own checks)."""
    plane = request.app[PLANE_KEY]
    fault = plane.faults.take_request_fault(request.method, request.path)
    if fault is not None:
        if surface in ("openai", "chat"):
            return fault_answer(surface, fault)
        return server._fault_response(fault)
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
        return http_error_answer(surface, exc, server.max_body_bytes)


async def _guarded(
    server: DevServer, state: RequestState, request: web.Request, handler: Handler
) -> web.StreamResponse:
    try:
        fault = request.app[PLANE_KEY].faults.take_request_fault(request.method, request.path)
        if fault is not None:
            return server._fault_response(fault)
        token_index = server._authenticate(request.headers.get("Authorization"))
        if token_index is None:
            missing = "Authorization" not in request.headers
            message = (
                "Missing bearer token: send 'Authorization: Bearer <token>'"
                if missing
                else "Invalid bearer token"
            )
            raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
        state.record.token_index = state.token_index = token_index
        decision = server._limiter.check(token_index)
        state.decision = decision
        if not decision.allowed:
            retry_after = decision.retry_after(time.time())
            raise ApiError(
                429,
                "rate_limited",
                f"Rate limit exceeded ({server._limiter.per_minute} requests/minute, "
                f"{server._limiter.per_hour}/hour); retry after {retry_after} s",
                headers={"Retry-After": str(retry_after)},
                extra={"detail": {"resetAt": iso(decision.reset)}},
            )
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(
                exc.status, "internal_error" if exc.status >= 500 else "bad_request"
            )
            message = exc.reason
            if exc.status == 404:
                message = f"No such endpoint: {request.method} {request.path}"
            elif exc.status == 413:
                message = f"Request body is larger than the {server.max_body_bytes}-byte limit"
            extra_headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
            raise ApiError(exc.status, code, message, headers=extra_headers) from None
    except ApiError as exc:
        return exc.response()


def _owned_job(request: web.Request) -> Job:
    job_id = request.match_info["job_id"]
    job = request.app[PLANE_KEY].store.get(job_id)
    # Another token's job is indistinguishable from a missing one: ids must not leak across
    # accounts.
    if job is None or job.owner != request_state(request).token_index:
        raise ApiError(404, "not_found", f"Job {job_id!r} not found")
    return job


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(f"{name} must be a number between {low} and {high}")
    return float(value)


def _content(value: Any, index: int) -> str:
    if isinstance(value, str):
        text = value
    # OpenAI-style content parts: [{"type": "text", "text": "..."}].
    elif isinstance(value, list) and all(
        isinstance(p, dict) and isinstance(p.get("text"), str) for p in value
    ):
        text = "".join(p["text"] for p in value)
    else:
        raise _bad(f"messages[{index}].content must be a string")
    try:
        # JSON lets "\ud800" through; the generator and the upstream relay encode the prompt as
        # UTF-8, and a lone surrogate there crashed the job's task, leaving the job running forever.
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"messages[{index}].content is not valid Unicode (a lone surrogate)") from None
    return text


def _validate(request: web.Request, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise _bad("model is required")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model must be a non-empty string")
    messages = body.get("messages")
    if messages is None:
        raise _bad("messages is required")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty array of {role, content} objects")
    clean: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{index}] must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{index}].role must be one of {', '.join(ROLES)}")
        if "content" not in message:
            raise _bad(f"messages[{index}].content is required")
        clean.append({"role": role, "content": _content(message["content"], index)})
    max_tokens = body.get("max_tokens", 512)
    if max_tokens is None:
        max_tokens = 512
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise _bad(f"max_tokens must be an integer between 1 and {MAX_TOKENS_LIMIT}")
    temperature = _number(body, "temperature", 0.7, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean")
    node_id = body.get("node_id")
    if node_id is not None and not isinstance(node_id, str):
        raise _bad("node_id must be a string")
    scheduler = request.app[PLANE_KEY].scheduler
    if model not in scheduler.registered_models():
        raise ApiError(404, "model_not_found", f"Model {model!r} is not registered on any node")
    if node_id is not None:
        node = scheduler.nodes.get(node_id)
        if node is None:
            raise _bad(f"node_id {node_id!r} is not a known node")
        if model not in node.spec.models:
            raise _bad(f"node_id {node_id!r} does not serve model {model!r}")
    return {
        "model": model,
        "messages": clean,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stream": stream,
        "node_id": node_id,
    }


async def create_job(request: web.Request) -> web.StreamResponse:
    plane = request.app[PLANE_KEY]
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer past CPython's digit
        # limit; RecursionError, nesting thousands deep. Each is the client's fault: 400, not 500.
        raise _bad("Request body must be valid JSON") from None
    request_state(request).record.json = body
    params = _validate(request, body)
    scheduler = plane.scheduler
    reason = scheduler.capacity_error(params["model"], params["node_id"])
    if reason is not None:
        raise ApiError(503, "no_capacity", reason)
    job = Job(
        id=plane.store.new_id(),
        owner=request_state(request).token_index,
        model=params["model"],
        messages=params["messages"],
        max_tokens=params["max_tokens"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        node_pin=params["node_id"],
    )
    scheduler.submit(job)
    if params["stream"]:
        return await serve_stream(request, job)
    return web.json_response(
        job.to_json(), status=201, headers={"Location": f"{API}/jobs/{job.id}"}
    )


async def get_job(request: web.Request) -> web.StreamResponse:
    return web.json_response(_owned_job(request).to_json())


async def stream_job(request: web.Request) -> web.StreamResponse:
    return await serve_stream(request, _owned_job(request))


async def list_jobs(request: web.Request) -> web.StreamResponse:
    store = request.app[PLANE_KEY].store
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise _bad(f"limit must be an integer between 1 and {MAX_LIST_LIMIT}")
    status = query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise _bad(f"status must be one of {', '.join(JOB_STATUSES)}")
    since: float | None = None
    if "since" in query:
        try:
            since = parse_iso(query["since"])
        except ValueError:
            raise _bad("since must be an ISO-8601 timestamp, e.g. 2026-01-31T12:00:00Z") from None
    owner = request_state(request).token_index
    jobs: list[dict[str, Any]] = []
    for job in store.newest_first():
        if job.owner != owner or (status is not None and job.status != status):
            continue
        # Compare the created_at clients see (whole milliseconds, as iso() writes it): a job is
        # listed since its own created_at, whatever the sub-millisecond part iso() rounded.
        if since is not None and round(parse_iso(iso(job.created_at)) * 1000) < round(since * 1000):
            continue
        jobs.append(job.to_json())
        if len(jobs) == limit:
            break
    return web.json_response({"jobs": jobs})


async def list_models(request: web.Request) -> web.StreamResponse:
    scheduler = request.app[PLANE_KEY].scheduler
    models = []
    for model in sorted(scheduler.registered_models()):
        nodes = scheduler.online_nodes(model)
        if nodes:
            speed = sum(scheduler.node_speed(n) for n in nodes) / len(nodes)
            models.append({"id": model, "nodes": len(nodes), "avg_tokens_per_second": round(speed)})
    return web.json_response({"models": models})


def build_app(server: DevServer) -> web.Application:
    """The app of all three surfaces; it holds the server and, for the handlers, its ``Plane``."""
    app = web.Application(middlewares=[_middleware], client_max_size=server.max_body_bytes)
    app[SERVER_KEY] = server
    app[PLANE_KEY] = server._plane
    app.router.add_post(f"{API}/jobs", create_job)
    app.router.add_get(f"{API}/jobs", list_jobs)
    app.router.add_get(f"{API}/jobs/{{job_id}}", get_job)
    app.router.add_get(f"{API}/jobs/{{job_id}}/stream", stream_job)
    app.router.add_get(f"{API}/models", list_models)
    add_openai_routes(app)
    add_chat_routes(app)
    return app
