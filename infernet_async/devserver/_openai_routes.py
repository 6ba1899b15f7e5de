"""The OpenAI-compatible surface, as the hosted service's route code writes it.

- ``POST /v1/chat/completions``: ``{model, messages, stream?, temperature?, max_tokens?,
  min_trust_tier? | metadata.min_trust_tier}`` (``top_p``, ``stop``, ``n``, ``tools`` are accepted
  and ignored). ``stream: true`` answers data-only ``chat.completion.chunk`` events: the role chunk,
  one chunk per token, the finish chunk (``stop``, or ``length`` when ``max_tokens`` cut the
  answer), ``[DONE]``; a failure is an error chunk, then ``[DONE]`` too. Otherwise one
  ``chat.completion`` (usage all zeros, as the hosted route does not count it yet); a failed job
  is 502, a job that produced nothing 504.
- ``GET /v1/models``: the models with an online node.

No token is needed: an ``Authorization`` that is not a resale key (``Bearer ifr_res_…``) is
ignored. A resale key is checked (401, 403, its per-second limit's 429 with headers) and confines
both routes to its reserved models; requests without one count against the anonymous per-IP limit
(``POST`` only). Errors are ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ._jobs import MAX_TOKENS_LIMIT, Job
from ._public import (
    ANONYMOUS_OWNER,
    RATE_LIMITED,
    TRUST_TIERS,
    SurfaceError,
    client_address,
    json_answer,
    number_field,
    openai_error,
    read_json,
    valid_messages,
)
from ._records import StreamRecord
from ._resale import Grant, ResaleError
from ._sse_writer import OpenAIChunkWriter
from ._state import PLANE_KEY, Plane, request_state
from ._streams import _Output, follow_capped, follow_job, run_event_stream

__all__ = ["add_openai_routes"]

COMPLETIONS = "/v1/chat/completions"
MODELS = "/v1/models"


def _bad(message: str) -> SurfaceError:
    return openai_error(400, message)


def _authorize(request: web.Request, plane: Plane) -> Grant | None:
    """The resale grant of the request's key, ``None`` without one; raises on a refused key."""
    try:
        grant = plane.resale.authorize(request.headers.get("Authorization"))
    except ResaleError as exc:
        raise openai_error(
            exc.status,
            exc.message,
            type="infernet_reservation_error",
            code=exc.code,
            headers=exc.headers,
        ) from None
    if grant is not None:
        request_state(request).success_headers.update(grant.headers())
    return grant


def _online_models(plane: Plane) -> list[str]:
    scheduler = plane.scheduler
    return sorted(m for m in scheduler.registered_models() if scheduler.online_nodes(m))


def _validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model is required and must be a non-empty string")
    messages = valid_messages(body.get("messages"), _bad)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be a boolean")
    temperature = number_field(body, "temperature", 0.7, 0.0, 2.0, _bad)
    max_tokens = number_field(body, "max_tokens", 512, 1, MAX_TOKENS_LIMIT, _bad, integer=True)
    metadata = body.get("metadata")
    tier = body.get("min_trust_tier")
    if tier is None and isinstance(metadata, dict):
        tier = metadata.get("min_trust_tier")
    if tier is not None and tier not in TRUST_TIERS:
        raise _bad(f"min_trust_tier must be one of {', '.join(TRUST_TIERS)}")
    return {
        "model": model,
        "messages": messages,
        "stream": bool(stream),
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
    }


class _Collector:
    """A non-streaming answer: the same events as a stream, gathered."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.reason = "stop"
        self.failure: str | None = None

    async def meta(self, payload: Mapping[str, Any], id: int) -> None:
        pass

    async def token(self, text: str, id: int) -> None:
        self.parts.append(text)

    async def done(self, text: str, finished_at: float, reason: str, id: int) -> None:
        self.reason = reason

    async def error(self, code: str, message: str, id: int) -> None:
        self.failure = message

    async def wait(self, changed: asyncio.Event) -> None:
        await changed.wait()


async def _answer(plane: Plane, job: Job, completion_id: str, created: int) -> web.Response:
    collector = _Collector()
    try:
        async with asyncio.timeout(plane.chat_stream_max_seconds):
            await follow_job(job, collector)
    except TimeoutError:
        pass
    if collector.failure is not None:
        raise openai_error(502, collector.failure)
    content = "".join(collector.parts)
    if not content:
        raise openai_error(504, "The node produced no answer in time")
    return json_answer(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": job.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": collector.reason,
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
    )


async def _stream(
    request: web.Request, plane: Plane, job: Job, completion_id: str, created: int
) -> web.StreamResponse:
    writer = OpenAIChunkWriter(completion_id, created, job.model)

    async def body(out: _Output) -> None:
        await follow_capped(out, job, {}, plane.chat_stream_max_seconds, writer.capped())

    return await run_event_stream(
        request,
        record=StreamRecord(job.id, request.path, "openai", surface="openai"),
        writer=writer,
        faults=plane.faults.take_stream_faults(job.model, job.id),
        body=body,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    plane = request.app[PLANE_KEY]
    grant = _authorize(request, plane)
    if grant is None:
        decision = plane.anonymous.check(client_address(request), COMPLETIONS)
        if decision is not None and not decision.allowed:
            raise openai_error(429, RATE_LIMITED)
    body = await read_json(request, _bad("Request body must be valid JSON"))
    request_state(request).record.json = body
    params = _validate(body)
    model = params["model"]
    if grant is not None:
        try:
            grant.check_model(model)
        except ResaleError as exc:
            raise openai_error(
                exc.status, exc.message, type="infernet_reservation_error", code=exc.code
            ) from None
    available = _online_models(plane)
    if model not in available:
        raise openai_error(
            503,
            f'No node currently serves model "{model}". '
            f"Available models: {', '.join(available) or 'none'}",
            available_models=available,
        )
    reason = plane.scheduler.capacity_error(model, None)
    if reason is not None:
        raise openai_error(503, reason)
    job = plane.submit(ANONYMOUS_OWNER, model, params)
    completion_id, created = f"chatcmpl-{job.id}", int(time.time())
    if params["stream"]:
        return await _stream(request, plane, job, completion_id, created)
    return await _answer(plane, job, completion_id, created)


async def list_models(request: web.Request) -> web.StreamResponse:
    plane = request.app[PLANE_KEY]
    grant = _authorize(request, plane)
    models = _online_models(plane)
    if grant is not None:
        models = [m for m in models if m in grant.models]
    data = [
        {"id": m, "object": "model", "created": plane.started_at, "owned_by": "infernet"}
        for m in models
    ]
    return json_answer({"object": "list", "data": data})


def add_openai_routes(app: web.Application) -> None:
    app.router.add_post(COMPLETIONS, chat_completions)
    app.router.add_get(MODELS, list_models)
