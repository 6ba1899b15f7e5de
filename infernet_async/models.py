"""Pydantic v2 models of the REST objects: what we send (``ChatRequest``) and what the control plane
returns.

Rules: every response model keeps unknown fields (``extra="allow"``) because the server grows; known
enums (``Job.status``) accept values we have never seen rather than failing; the ``TypeAdapter``s
used to parse list responses are built once, at import. Per-token stream data never goes through
pydantic (see ``events``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "ChatRequest",
    "Job",
    "JobList",
    "JobRequest",
    "JobResult",
    "JobStatus",
    "Message",
    "ModelInfo",
    "ModelList",
    "Usage",
]

JobStatus = Literal["pending", "processing", "completed", "failed"]
"""The documented job states. ``Job.status`` also accepts any other string, for states the server
may add.
"""

_TERMINAL_STATUSES = frozenset({"completed", "failed"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Message(_Model):
    """One chat message, OpenAI-style: ``{"role": "user", "content": "..."}``."""

    role: str
    content: str


class ChatRequest(_Model):
    """The body of ``POST /jobs``. ``None`` fields are left out, so the server's defaults apply."""

    model: str
    messages: list[Message]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    node_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON body to send: unset optional fields omitted, extra fields kept."""
        return self.model_dump(mode="json", exclude_none=True)


JobRequest = ChatRequest
"""Another name for ``ChatRequest``: the API calls the submission a job."""


class Usage(_Model):
    """Token counts of a completed job."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class JobResult(_Model):
    """The result of a completed job: the answer and its token usage."""

    content: str = ""
    usage: Usage | None = None


class Job(_Model):
    """A job as ``GET /jobs/{id}`` (and ``POST /jobs`` without streaming) returns it."""

    id: str
    # ``Literal | str``: a documented state validates as the literal, an unknown one is kept as a
    # string.
    status: JobStatus | str
    # The live control plane's job rows name the model ``model_name``; the reference calls it
    # ``model``.
    model: str | None = Field(default=None, validation_alias=AliasChoices("model", "model_name"))
    created_at: datetime | None = None
    node_id: str | None = None
    result: JobResult | None = None
    completed_at: datetime | None = None
    latency_ms: float | None = None
    error: str | None = None
    error_message: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job is ``completed`` or ``failed`` (there is no cancelled state)."""
        return self.status in _TERMINAL_STATUSES

    @property
    def content(self) -> str | None:
        """The answer of a completed job, else ``None``."""
        return self.result.content if self.result is not None else None


class JobList(_Model):
    """The body of ``GET /jobs``: ``{"jobs": [...]}``. The list is required: a body without it
    (an error object answered with a 200, say) is no empty list."""

    jobs: list[Job]


class ModelInfo(_Model):
    """One model with at least one online node, from ``GET /models``."""

    id: str
    nodes: int | None = None
    avg_tokens_per_second: float | None = None


class ModelList(_Model):
    """The body of ``GET /models``: ``{"models": [...]}``. The list is required, as for
    ``JobList``."""

    models: list[ModelInfo]


JOB_ADAPTER: TypeAdapter[Job] = TypeAdapter(Job)
JOB_LIST_ADAPTER: TypeAdapter[JobList] = TypeAdapter(JobList)
MODEL_LIST_ADAPTER: TypeAdapter[ModelList] = TypeAdapter(ModelList)
