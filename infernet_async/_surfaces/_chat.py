"""The playground chat surface: ``POST /api/chat``, ``GET /api/chat/stream/{id}``,
``GET /api/chat/{id}/status``; models from ``/v1/models``.

Keyless: the token never goes to these routes. The body is camelCase (``modelName``,
``maxTokens``, ``temperature``, ``providerId`` for a node pin, ``minTrustTier``); the route has no
``top_p``, so it is refused rather than dropped. ``POST /api/chat`` answers ``{"jobId",
"streamUrl", ...}`` and the stream is read from the job's stream route: typed events (``job``
without an id, ``meta``, ``token``, ``routing``, ``log``, then ``done`` with the whole text, no
``[DONE]``; ``error`` with a message and no code), read by ``TokenDecoder``. Reading the stream
again replays the job from its start. Job states are ``pending``, ``assigned``, ``running``,
``completed`` and ``failed``; a job idle for an hour fails with ``expired: …`` (a timeout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._ids import quoted_job_id
from .._token_decoder import TokenDecoder
from ..events import EventDecoder
from . import TOP_P_ELSEWHERE, Call, Surface, check_trust_tier
from ._openai import read_openai_models

__all__ = ["ChatSurface"]

ROOT = "/api/chat"
# The route's own optional fields, by the SDK's name (snake_case) and the wire's (camelCase).
_PASSED = {
    "distributed": "distributed",
    "encrypted_messages": "encryptedMessages",
    "encryptedMessages": "encryptedMessages",
    "client_pubkey": "clientPubkey",
    "clientPubkey": "clientPubkey",
    "model_pubkey": "modelPubkey",
    "modelPubkey": "modelPubkey",
}


class ChatSurface(Surface):
    name = "chat"
    title = "the chat surface (/api/chat)"
    resumable = True
    refused = {"top_p": ("has no top_p", TOP_P_ELSEWHERE)}

    def chat_body(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self.refuse_unsupported(request)
        body: dict[str, Any] = {"messages": request["messages"], "modelName": request["model"]}
        if request.get("max_tokens") is not None:
            body["maxTokens"] = request["max_tokens"]
        if request.get("temperature") is not None:
            body["temperature"] = request["temperature"]
        if request.get("node_id") is not None:
            body["providerId"] = request["node_id"]
        tier = request.get("min_trust_tier")
        if tier is not None:
            body["minTrustTier"] = check_trust_tier(tier)
        for name, value in self.extra_fields(request):
            wire = _PASSED.get(name)
            if wire is None:
                raise self.ignored_field(name)
            body[wire] = value
        return body

    def stream_call(self, request: Mapping[str, Any]) -> Call:
        return self.submit_call(request)

    def submission_job_id(self, body: Any) -> str | None:
        job_id = body.get("jobId") if isinstance(body, dict) else None
        return job_id if isinstance(job_id, str) else None

    def job_stream_call(self, job_id: str) -> Call:
        return Call("GET", f"{ROOT}/stream/{quoted_job_id(job_id)}", auth=False)

    def submit_call(self, request: Mapping[str, Any]) -> Call:
        return Call("POST", ROOT, self.chat_body(request), auth=False)

    def read_submitted(self, body: Any, request: Mapping[str, Any]) -> Any:
        if not isinstance(body, dict) or "jobId" not in body:
            return body  # the model names what is missing
        provider = body.get("provider")
        node = None
        if isinstance(provider, dict):
            node = provider.get("nodeId") or provider.get("id")
        return {
            "id": body["jobId"],
            "status": body.get("status") or "pending",
            "model": request.get("model"),
            "node_id": node if isinstance(node, str) else None,
        }

    def job_call(self, job_id: str) -> Call:
        return Call("GET", f"{ROOT}/{quoted_job_id(job_id)}/status", auth=False)

    def read_job(self, body: Any) -> Any:
        if not isinstance(body, dict) or "id" not in body:
            return body
        error = body.get("error")
        message = body.get("latest_error_message") or error
        job: dict[str, Any] = {
            "id": body["id"],
            "status": body.get("status"),
            "model": body.get("model_name"),
            "node_id": body.get("provider_id"),
            "completed_at": body.get("completed_at"),
            "error_message": message if isinstance(message, str) else None,
        }
        if body.get("status") == "failed":
            # The route gives a sentence, not a code; an idle job's "expired: ..." is a timeout.
            expired = isinstance(error, str) and error.startswith("expired")
            job["error"] = "timeout" if expired else "failed"
        result = body.get("result")
        if isinstance(result, dict) and isinstance(result.get("text"), str):
            job["result"] = {"content": result["text"]}
        return job

    def models_call(self) -> Call:
        return Call("GET", "/v1/models", auth=False)

    def read_models(self, body: Any) -> Any:
        return read_openai_models(body)

    def decoder(self) -> EventDecoder:
        return TokenDecoder()
