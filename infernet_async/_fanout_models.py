"""The fan-out's data: a ``BatchRequest`` in, a ``BatchOutcome`` out (pydantic, per job).

Rules: a request names its model and holds ``messages`` or a ``prompt``, never both; an outcome
always carries the text received (the whole answer, or the partial text of a failed or cancelled
job) and says why it failed as data (``OutcomeError``), so it serializes to one JSON line.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import APIError
from .models import Message

__all__ = ["BatchOutcome", "BatchRequest", "OutcomeError", "Status"]

Status = Literal["ok", "error", "cancelled"]


class BatchRequest(BaseModel):
    """One job of a fan-out: the model, ``messages`` or a ``prompt``, the parameters, your own id.

    ``prompt`` is shorthand for one user message. ``metadata`` travels to the outcome untouched.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    model: str = Field(min_length=1)
    messages: list[Message] | None = None
    prompt: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    node_id: str | None = None
    min_trust_tier: Literal["public", "verified", "trusted"] | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: object) -> object:
        # JSONL files often number their requests: 17 and "17" name the same one.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        return self

    def chat_messages(self) -> list[Message]:
        """The messages to send: ``messages``, or ``prompt`` as one user message."""
        if self.messages is not None:
            return self.messages
        return [Message(role="user", content=self.prompt or "")]

    def stream_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``InfernetClient.stream``; unset ones keep the server's default."""
        arguments: dict[str, Any] = {"model": self.model, "messages": self.chat_messages()}
        for name in ("max_tokens", "temperature", "top_p", "node_id", "min_trust_tier"):
            value = getattr(self, name)
            if value is not None:
                arguments[name] = value
        return arguments


class OutcomeError(BaseModel):
    """Why a job did not finish: the exception's class, its message, the API code and status."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    code: str | None = None
    status: int | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> OutcomeError:
        code = getattr(exc, "code", None)
        message = getattr(exc, "message", None)
        return cls(
            type=type(exc).__name__,
            message=message if isinstance(message, str) else str(exc),
            code=code if isinstance(code, str) else None,
            status=exc.status if isinstance(exc, APIError) else None,
        )


class BatchOutcome(BaseModel):
    """What became of one request.

    ``text`` is the answer, or everything received before the error or the cancellation, and
    ``tokens`` its length in tokens (``TokenStream.token_count``: a rest replayed whole after a
    reconnect counts as one). ``latency`` runs from the job's start (a free slot) to its
    end, retries included; ``time_to_send`` from the job's start to sending the request that got
    the answer (earlier attempts, backoffs and the shared rate limiter's waits: the client's own
    time); ``time_to_first_token`` from that sending to the first token (the control plane's and
    the node's time). All in seconds; a job that never sent its request has no ``time_to_send``.
    ``attempts`` counts the fan-out's submissions of the job; each of them may have been retried
    by the client's ``RetryPolicy`` as any request is (``max_retries``, 2 by default).
    ``sent`` is True once a submission of the job left the client (the server may have created
    the job, and may bill it, even if it was then cancelled here); False when none ever did (a
    job cancelled or refused while it waited for a slot, the rate limiter or the pacer).
    ``exception`` (not serialized) is the error itself, for ``isinstance`` checks.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: int
    request: BatchRequest
    status: Status
    text: str = ""
    error: OutcomeError | None = None
    job_id: str | None = None
    attempts: int = 0
    sent: bool = False
    tokens: int = 0
    latency: float = 0.0
    time_to_send: float | None = None
    time_to_first_token: float | None = None
    exception: BaseException | None = Field(default=None, exclude=True, repr=False)

    @property
    def ok(self) -> bool:
        """True when the job finished cleanly (``[DONE]``)."""
        return self.status == "ok"

    @property
    def id(self) -> str | None:
        """The request's own id."""
        return self.request.id
