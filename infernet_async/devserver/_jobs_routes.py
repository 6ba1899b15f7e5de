"""The documented jobs API (``/api/v1``), as ``infernet-api.md`` writes it: its guard (an injected
``http_error`` fault, the bearer token, the token's rate limits), its request validation, and its
routes.

Every error body is ``{"error": <code>, "error_message": ...}``; rate-limit headers go on every
authenticated answer, streams included. Handlers raise ``ApiError``; ``guarded`` turns it into
that body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ._faults import Fault
from ._jobs import JOB_STATUSES, MAX_TOKENS_LIMIT, Job, iso, parse_iso
from ._state import PLANE_KEY, Plane, RequestState, request_state
from ._streams import serve_stream

__all__ = ["API", "ApiError", "add_jobs_routes", "guarded", "jobs_fault_answer"]


API = "/api/v1"
ROLES = ("system", "user", "assistant", "tool")
MAX_LIST_LIMIT = 100


class ApiError(Exception):
    """Raised by handlers; ``guarded`` turns it into the API's error body."""

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


def jobs_fault_answer(plane: Plane, fault: Fault) -> web.Response:
    """An injected ``http_error`` fault, as the jobs API answers it (or, with ``live_plane``, as
    the hosted plane does today: no ``error_message``, no headers)."""
    if fault.live_plane:
        live: dict[str, Any] = {"error": fault.message or "Rate limit exceeded"}
        if fault.status == 429:
            live["detail"] = {"resetAt": iso(time.time() + (fault.retry_after or 60))}
        return web.json_response(live, status=fault.status)
    body: dict[str, Any] = {
        "error": fault.code,
        "error_message": fault.message or f"Injected fault: HTTP {fault.status} {fault.code}",
    }
    headers: dict[str, str] = {}
    retry_after = fault.retry_after
    if fault.status == 429 and retry_after is None:
        retry_after = 1
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    if fault.status == 429:
        reset = time.time() + (retry_after or 1)
        body["detail"] = {"resetAt": iso(reset)}
        headers["X-RateLimit-Limit"] = str(plane.limiter.per_minute)
        headers["X-RateLimit-Remaining"] = "0"
        headers["X-RateLimit-Reset"] = str(int(reset + 0.999))
    return web.json_response(body, status=fault.status, headers=headers)


async def guarded(
    plane: Plane, state: RequestState, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """The jobs API's checks before ``handler``, and its error body for whatever fails."""
    try:
        fault = plane.faults.take_request_fault(request.method, request.path)
        if fault is not None:
            return jobs_fault_answer(plane, fault)
        token_index = plane.authenticate(request.headers.get("Authorization"))
        if token_index is None:
            missing = "Authorization" not in request.headers
            message = (
                "Missing bearer token: send 'Authorization: Bearer <token>'"
                if missing
                else "Invalid bearer token"
            )
            raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
        state.record.token_index = state.token_index = token_index
        decision = plane.limiter.check(token_index)
        state.decision = decision
        if not decision.allowed:
            retry_after = decision.retry_after(time.time())
            raise ApiError(
                429,
                "rate_limited",
                f"Rate limit exceeded ({plane.limiter.per_minute} requests/minute, "
                f"{plane.limiter.per_hour}/hour); retry after {retry_after} s",
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
                message = f"Request body is larger than the {plane.max_body_bytes}-byte limit"
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
    reason = plane.scheduler.capacity_error(params["model"], params["node_id"])
    if reason is not None:
        raise ApiError(503, "no_capacity", reason)
    owner = request_state(request).token_index
    job = plane.submit(owner, params["model"], params, node_pin=params["node_id"])
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


def add_jobs_routes(app: web.Application) -> None:
    app.router.add_post(f"{API}/jobs", create_job)
    app.router.add_get(f"{API}/jobs", list_jobs)
    app.router.add_get(f"{API}/jobs/{{job_id}}", get_job)
    app.router.add_get(f"{API}/jobs/{{job_id}}/stream", stream_job)
    app.router.add_get(f"{API}/models", list_models)
