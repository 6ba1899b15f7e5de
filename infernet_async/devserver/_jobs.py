"""Jobs, their attempts on nodes, and the bounded store that keeps them.

A job is submitted once and runs as one or more attempts: an attempt ends ``completed``, ``failed``
or ``dropped`` (its node went away; the job goes back to ``pending``, a new attempt starts later).
Streams follow one attempt, so a dropped attempt's tokens stay readable by the streams that were
showing them.

Typed-dialect event ids come from one counter per job: an attempt's ``meta`` event takes
``base_id``, its token ``i`` takes ``base_id + 1 + i`` and its ``done``/``error`` the id after the
last token. Replays of a job therefore repeat the same ids, and ids only grow across attempts.

Memory stays bounded: the store keeps every unfinished job plus the newest ``history_limit``
finished ones, evicting the oldest finished job first.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ._generator import tokenize

__all__ = ["MAX_TOKENS_LIMIT", "Attempt", "Job", "JobStore", "iso", "parse_iso"]

# The most tokens a job may ask for, on every surface.
MAX_TOKENS_LIMIT = 32768

JobStatus = Literal["pending", "processing", "completed", "failed"]
JOB_STATUSES: tuple[JobStatus, ...] = ("pending", "processing", "completed", "failed")
AttemptOutcome = Literal["completed", "failed", "dropped"]


def iso(timestamp: float) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``, as the control plane writes times."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """Parse an ISO-8601 time (``Z`` or an offset; naive means UTC) to a timestamp; raises
    ValueError."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(eq=False, slots=True)
class Attempt:
    """One run of a job on one node."""

    number: int
    node_id: str
    node_name: str
    engine: str
    base_id: int
    started_at: float = field(default_factory=time.time)
    tokens: list[str] = field(default_factory=list)
    outcome: AttemptOutcome | None = None
    reason: str = "stop"
    finished_at: float | None = None
    error: str | None = None
    error_message: str | None = None

    def token_id(self, index: int) -> int:
        return self.base_id + 1 + index

    @property
    def end_id(self) -> int:
        return self.base_id + 1 + len(self.tokens)

    def meta(self, model: str) -> dict[str, Any]:
        return {
            "provider_node_id": self.node_id,
            "provider_name": self.node_name,
            "model": model,
            "started_at": iso(self.started_at),
            "engine": self.engine,
        }


@dataclass(eq=False)
class Job:
    """A submitted chat job; ``owner`` is the index of the token that submitted it."""

    id: str
    owner: int
    model: str
    messages: Sequence[Mapping[str, Any]]
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    node_pin: str | None = None
    created_at: float = field(default_factory=time.time)
    status: JobStatus = "pending"
    attempt: Attempt | None = None
    attempts: int = 0
    next_id: int = 1
    completed_at: float | None = None
    error: str | None = None
    error_message: str | None = None
    error_id: int | None = None
    excluded_nodes: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    updated_at: float = 0.0
    # The latest error of any attempt (a dropped node's too, while the job runs again).
    latest_error_message: str | None = None

    def __post_init__(self) -> None:
        self.updated_at = self.updated_at or self.created_at

    def notify(self) -> None:
        """Wake every stream following this job (each holds the Event current when it looked)."""
        self.updated_at = time.time()
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed")

    @property
    def prompt_tokens(self) -> int:
        return sum(len(tokenize(str(m.get("content", "")))) + 4 for m in self.messages)

    @property
    def content(self) -> str:
        return "".join(self.attempt.tokens) if self.attempt is not None else ""

    def start_attempt(self, node_id: str, node_name: str, engine: str) -> Attempt:
        self.attempts += 1
        self.attempt = Attempt(self.attempts, node_id, node_name, engine, base_id=self.next_id)
        self.status = "processing"
        self.notify()
        return self.attempt

    def end_attempt(
        self,
        outcome: AttemptOutcome,
        *,
        error: str | None = None,
        message: str | None = None,
    ) -> None:
        attempt = self.attempt
        if attempt is None or attempt.outcome is not None:
            return
        attempt.outcome = outcome
        attempt.finished_at = time.time()
        attempt.error, attempt.error_message = error, message
        self.next_id = attempt.end_id + 1
        if outcome == "completed":
            self.status = "completed"
            self.completed_at = attempt.finished_at
        elif outcome == "dropped":
            self.status = "pending"
            self.excluded_nodes.add(attempt.node_id)
            self.latest_error_message = f"node disconnected: {message}"
        else:
            self._fail(
                error or "internal_error", message or "the job failed", event_id=attempt.end_id
            )
        self.notify()

    def fail(self, error: str, message: str) -> None:
        """Fail the job now; a running attempt ends ``failed`` with the same error."""
        if self.finished:
            return
        if self.attempt is not None and self.attempt.outcome is None:
            self.end_attempt("failed", error=error, message=message)
            return
        self._fail(error, message, event_id=self.next_id)
        self.next_id += 1
        self.notify()

    def _fail(self, error: str, message: str, *, event_id: int) -> None:
        self.status = "failed"
        self.completed_at = time.time()
        self.error, self.error_message, self.error_id = error, message, event_id
        self.latest_error_message = message

    def to_json(self) -> dict[str, Any]:
        """The job object of the API reference."""
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "model": self.model,
            "created_at": iso(self.created_at),
        }
        attempt = self.attempt
        if self.status == "processing" and attempt is not None:
            body["node_id"] = attempt.node_id
            body["started_at"] = iso(attempt.started_at)
        elif self.status == "completed" and attempt is not None:
            completion = len(attempt.tokens)
            prompt = self.prompt_tokens
            body["node_id"] = attempt.node_id
            body["result"] = {
                "content": self.content,
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
            assert self.completed_at is not None
            body["completed_at"] = iso(self.completed_at)
            body["latency_ms"] = round((self.completed_at - self.created_at) * 1000)
        elif self.status == "failed":
            body["error"] = self.error
            body["error_message"] = self.error_message
            if self.completed_at is not None:
                body["completed_at"] = iso(self.completed_at)
        return body

    def typed_job_event(self) -> dict[str, Any]:
        """The typed dialect's opening ``job`` event: the live plane's job row."""
        return {
            "id": self.id,
            "status": self.status,
            "model_name": self.model,
            "model": self.model,
            "provider_id": self.attempt.node_id if self.attempt is not None else None,
            "created_at": iso(self.created_at),
        }


class JobStore:
    """All unfinished jobs plus the newest ``history_limit`` finished ones."""

    def __init__(self, *, seed: int, history_limit: int) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be >= 1")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._finished: deque[str] = deque()
        self._ids = random.Random(f"job-ids:{seed}")
        self.history_limit = history_limit
        self.evicted = 0

    def new_id(self) -> str:
        while True:
            job_id = f"job_{self._ids.getrandbits(32):08x}"
            if job_id not in self._jobs:
                return job_id

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def finished(self, job: Job) -> None:
        """Note that a job finished; evicts the oldest finished jobs beyond the history limit."""
        self._finished.append(job.id)
        while len(self._finished) > self.history_limit:
            self._jobs.pop(self._finished.popleft(), None)
            self.evicted += 1

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))

    def newest_first(self) -> Iterator[Job]:
        return reversed(list(self._jobs.values()))
