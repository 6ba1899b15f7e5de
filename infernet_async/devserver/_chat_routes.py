"""The playground chat surface (what the official JS SDK and the ``infernet`` CLI use), as the
hosted service's route code writes it. No token: an ``Authorization`` header is ignored.

- ``POST /api/chat``: camelCase ``{messages, modelName?, maxTokens? (512), temperature? (0.7),
  providerId?, minTrustTier? | min_trust_tier?, distributed?}`` → 200 ``{jobId, status, source,
  provider, streamUrl}``; counted against the anonymous per-IP limit.
- ``GET /api/chat/stream/{jobId}``: ``event: job`` (the job row, no id), then the job's stored
  events from the start (``meta``, ``token``, and ``done`` or ``error``) with their ids, ``: ping``
  heartbeats, and no ``[DONE]``; the server gives up after ``chat_stream_max_seconds``. An unknown
  id is a 200 with one ``error`` event.
- ``GET /api/chat/{jobId}/status``: the job's live status row.

Jobs are the shared store's (any job, whichever surface submitted it). Their states are the live
plane's: ``pending``, ``assigned`` (a node took it, no token yet), ``running``, ``completed``,
``failed``. Errors are ``{"error": "<a sentence>", "detail"?: ...}``.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from aiohttp import web

from ._jobs import MAX_TOKENS_LIMIT, Job, iso
from ._public import (
    ANONYMOUS_OWNER,
    RATE_LIMITED,
    TRUST_TIERS,
    SurfaceError,
    chat_error,
    client_address,
    json_answer,
    number_field,
    read_json,
    valid_messages,
)
from ._records import StreamRecord
from ._scheduler import NodeState
from ._sse_writer import ChatEventWriter
from ._state import PLANE_KEY, Plane, request_state
from ._streams import _Output, follow_capped, run_event_stream

__all__ = ["add_chat_routes", "live_row", "live_status", "provider_id"]

CHAT = "/api/chat"
SOURCE = "p2p"
_PROVIDERS = uuid.UUID("6f1c2a43-1d0e-4b7e-9a55-0d3c5e2b7a10")


def _bad(message: str) -> SurfaceError:
    return chat_error(400, message)


# -- the live plane's shapes -----------------------------------------------------------------------


def provider_id(node_id: str) -> str:
    """A node's provider id: a stable UUID, as the live plane's providers table keys them."""
    return str(uuid.uuid5(_PROVIDERS, node_id))


def _provider(node: NodeState, model: str) -> dict[str, Any]:
    return {
        "id": provider_id(node.spec.id),
        "name": node.name,
        "nodeId": node.spec.id,
        "gpuModel": "emulated",
        "model": model,
        "pubkey": hashlib.sha256(f"devserver-node:{node.spec.id}".encode()).hexdigest(),
    }


def live_status(job: Job) -> str:
    """The live plane's state of a job: ``processing`` is ``assigned`` before its first token."""
    if job.status == "processing":
        attempt = job.attempt
        return "running" if attempt is not None and attempt.tokens else "assigned"
    return job.status


def _current_node(job: Job) -> str | None:
    attempt = job.attempt
    if attempt is None or attempt.outcome == "dropped":
        return None
    return attempt.node_id


def live_row(job: Job) -> dict[str, Any]:
    """The job row the stream opens with and the status route shows part of."""
    node_id = _current_node(job)
    result = None
    if job.status == "completed":
        result = {"type": "chat", "text": job.content, "source": SOURCE}
    return {
        "id": job.id,
        "status": live_status(job),
        "model_name": job.model,
        "provider_id": None if node_id is None else provider_id(node_id),
        "source": SOURCE,
        "max_tokens": job.max_tokens,
        "temperature": job.temperature,
        "result": result,
        "error": job.error_message if job.status == "failed" else None,
        "latest_error_message": job.latest_error_message,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "completed_at": None if job.completed_at is None else iso(job.completed_at),
    }


# -- POST /api/chat --------------------------------------------------------------------------------


def _validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    if body.get("messages") is None and body.get("encryptedMessages") is not None:
        raise _bad("Encrypted chats are not supported by the local devserver: send messages")
    messages = valid_messages(body.get("messages"), _bad)
    model = body.get("modelName")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise _bad("modelName must be a non-empty string")
    max_tokens = number_field(body, "maxTokens", 512, 1, MAX_TOKENS_LIMIT, _bad, integer=True)
    temperature = number_field(body, "temperature", 0.7, 0.0, 2.0, _bad)
    provider = body.get("providerId")
    if provider is not None and not isinstance(provider, str):
        raise _bad("providerId must be a string")
    tier = body.get("minTrustTier", body.get("min_trust_tier"))
    if tier is not None and tier not in TRUST_TIERS:
        raise _bad(f"minTrustTier must be one of {', '.join(TRUST_TIERS)}")
    distributed = body.get("distributed")
    if distributed is not None and not isinstance(distributed, bool):
        raise _bad("distributed must be a boolean")
    return {
        "messages": messages,
        "model": model,
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
        "provider": provider,
    }


def _no_provider(plane: Plane, model: str, provider: str | None) -> SurfaceError:
    scheduler = plane.scheduler
    served = sorted(m for m in scheduler.registered_models() if scheduler.online_nodes(m))
    which = "the chosen provider" if provider else "any live provider"
    return chat_error(
        503,
        f'No live provider right now serves "{model}" ({which} was asked)',
        {"hint": f"Models served right now: {', '.join(served) or 'none'}"},
    )


async def create_chat(request: web.Request) -> web.StreamResponse:
    plane = request.app[PLANE_KEY]
    decision = plane.anonymous.check(client_address(request), CHAT)
    if decision is not None and not decision.allowed:
        raise chat_error(429, RATE_LIMITED, {"resetAt": iso(decision.reset)})
    body = await read_json(request, _bad("Request body must be valid JSON"))
    request_state(request).record.json = body
    params = _validate(body)
    scheduler = plane.scheduler
    online = [n for n in scheduler.nodes.values() if n.online]
    model: str | None = params["model"]
    if model is None:
        if not online:
            raise _no_provider(plane, "any model", None)
        model = online[0].spec.models[0]
    candidates = scheduler.online_nodes(model)
    pin: str | None = None
    wanted = params["provider"]
    if wanted is not None:
        candidates = [n for n in candidates if wanted in (n.spec.id, provider_id(n.spec.id))]
        pin = candidates[0].spec.id if candidates else None
    if not candidates:
        raise _no_provider(plane, model, wanted)
    reason = scheduler.capacity_error(model, pin)
    if reason is not None:
        raise chat_error(503, reason, {"hint": "Retry in a moment"})
    job = plane.submit(ANONYMOUS_OWNER, model, params, node_pin=pin)
    node_id = _current_node(job)
    provider = None if node_id is None else _provider(scheduler.nodes[node_id], model)
    return json_answer(
        {
            "jobId": job.id,
            "status": live_status(job),
            "source": SOURCE,
            "provider": provider,
            "streamUrl": f"{CHAT}/stream/{job.id}",
        }
    )


# -- GET /api/chat/stream/{jobId} and /api/chat/{jobId}/status -------------------------------------


async def stream_chat(request: web.Request) -> web.StreamResponse:
    plane = request.app[PLANE_KEY]
    job_id = request.match_info["job_id"]
    writer = ChatEventWriter()
    record = StreamRecord(job_id, request.path, "chat", surface="chat")
    job = plane.store.get(job_id)
    if job is None:

        async def not_found(out: _Output) -> None:
            await out.send(writer.not_found(job_id))
            record.error = "not_found"

        return await run_event_stream(
            request, record=record, writer=writer, faults=[], body=not_found
        )
    found = job

    async def body(out: _Output) -> None:
        cap = plane.chat_stream_max_seconds
        await follow_capped(out, found, live_row(found), cap, writer.capped())

    return await run_event_stream(
        request,
        record=record,
        writer=writer,
        faults=plane.faults.take_stream_faults(job.model, job.id),
        body=body,
    )


async def chat_status(request: web.Request) -> web.StreamResponse:
    job = request.app[PLANE_KEY].store.get(request.match_info["job_id"])
    if job is None:
        raise chat_error(404, "job not found")
    row = live_row(job)
    status = {
        key: row[key]
        for key in (
            "id",
            "status",
            "model_name",
            "provider_id",
            "error",
            "latest_error_message",
            "completed_at",
            "updated_at",
        )
    }
    # The hosted status route lists exactly these fields: no result (the job row in the stream's
    # first event carries it).
    return json_answer(status)


def add_chat_routes(app: web.Application) -> None:
    app.router.add_post(CHAT, create_chat)
    app.router.add_get(CHAT + "/stream/{job_id}", stream_chat)
    app.router.add_get(CHAT + "/{job_id}/status", chat_status)
