"""The documented developer API of the streaming guide: ``/api/v1/jobs``, ``/api/v1/models``.

Its request body is the SDK's own (``ChatRequest``): extra fields go through as they are, for
parameters newer than this SDK. Its stream is the guide's (``data:`` JSON, ``[DONE]``) or the live
typed dialect, both read by ``TokenDecoder``; a job's stream can be read again by its id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._ids import job_path
from .._token_decoder import TokenDecoder
from ..events import EventDecoder
from . import Call, Surface

__all__ = ["JobsSurface"]

ROOT = "/api/v1"


class JobsSurface(Surface):
    name = "jobs"
    title = "the documented jobs API (/api/v1)"
    resumable = True
    refused = {
        "min_trust_tier": (
            "has no min_trust_tier parameter",
            "use api='chat' or api='openai' for it",
        )
    }

    def chat_body(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self.refuse_unsupported(request)
        return dict(request)

    def stream_call(self, request: Mapping[str, Any]) -> Call:
        return Call("POST", f"{ROOT}/jobs", {**self.chat_body(request), "stream": True})

    def submission_job_id(self, body: Any) -> str | None:
        job_id = body.get("id") if isinstance(body, dict) else None
        return job_id if isinstance(job_id, str) else None

    def job_stream_call(self, job_id: str) -> Call:
        return Call("GET", ROOT + job_path(job_id, "/stream"))

    def submit_call(self, request: Mapping[str, Any]) -> Call:
        return Call("POST", f"{ROOT}/jobs", {**self.chat_body(request), "stream": False})

    def job_call(self, job_id: str) -> Call:
        return Call("GET", ROOT + job_path(job_id))

    def list_jobs_call(self, params: Mapping[str, str]) -> Call:
        return Call("GET", f"{ROOT}/jobs", params=params)

    def models_call(self) -> Call:
        return Call("GET", f"{ROOT}/models")

    def decoder(self) -> EventDecoder:
        return TokenDecoder()
