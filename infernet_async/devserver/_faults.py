"""Fault injection: a small vocabulary of failures and the book that hands them to requests and
jobs.

There are three kinds of fault, by where they strike:

- request faults (``http_error``) answer the next matching HTTP request with an error body;
- job faults (``drop_node``) strike the next attempt of a matching job on a node;
- stream faults (``disconnect``, ``malformed_event``, ``stall``, ``slow_drip``) shape the next event
  stream.

Queued faults are used in order and each applies ``times`` times. Everything random draws from a
``random.Random`` seeded by the server seed and the job id, so a run is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["Fault", "FaultBook"]

FaultKind = Literal[
    "http_error", "drop_node", "disconnect", "malformed_event", "stall", "slow_drip"
]

REQUEST_FAULTS = frozenset({"http_error"})
JOB_FAULTS = frozenset({"drop_node"})
STREAM_FAULTS = frozenset({"disconnect", "malformed_event", "stall", "slow_drip"})

_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    429: "rate_limited",
    500: "internal_error",
    502: "internal_error",
    503: "no_capacity",
    504: "internal_error",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One failure to inject; build it with the class methods, then ``server.inject(fault,
    times=n)``.

    ``model`` (job and stream faults) and ``path``/``method`` (request faults) restrict what the
    fault matches; ``None`` matches everything.
    """

    kind: FaultKind
    after_tokens: int | None = None
    probability: float | None = None
    seconds: float = 0.0
    byte_delay: float = 0.0
    chunk_size: int = 1
    abort: bool = False
    status: int = 0
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None
    model: str | None = None
    path: str | None = None
    method: str | None = None
    live_plane: bool = False

    @classmethod
    def drop_node(
        cls,
        *,
        after_tokens: int | None = None,
        probability: float | None = None,
        model: str | None = None,
    ) -> Fault:
        """The node serving the next job attempt goes offline.

        With ``after_tokens=n`` it drops after sending ``n`` tokens. With ``probability=p`` it drops
        with probability ``p`` at a seeded random token (it may also not drop at all). The stream in
        flight gets ``{"error": "node_disconnected", ...}`` and the job is re-queued on another
        node. The whole node goes offline, so other attempts running on it drop too; it comes back
        after the server's ``node_reconnect_delay``. An answer shorter than ``n`` just finishes.
        """
        if after_tokens is None and probability is None:
            after_tokens = 0
        if after_tokens is not None and after_tokens < 0:
            raise ValueError("after_tokens must be >= 0")
        if probability is not None and not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        return cls("drop_node", after_tokens=after_tokens, probability=probability, model=model)

    @classmethod
    def disconnect(
        cls, *, after_tokens: int = 0, abort: bool = False, model: str | None = None
    ) -> Fault:
        """End the next stream after ``after_tokens`` tokens without ``[DONE]`` or an error event.

        By default the response body ends cleanly (the client sees EOF); ``abort=True`` drops the
        TCP connection instead, mid-body. The job itself keeps running.
        """
        _check_count(after_tokens)
        return cls("disconnect", after_tokens=after_tokens, abort=abort, model=model)

    @classmethod
    def malformed_event(cls, *, after_tokens: int = 0, model: str | None = None) -> Fault:
        """Send one event whose data is not valid JSON after ``after_tokens`` tokens, then go on."""
        _check_count(after_tokens)
        return cls("malformed_event", after_tokens=after_tokens, model=model)

    @classmethod
    def stall(
        cls, *, after_tokens: int = 0, seconds: float = 30.0, model: str | None = None
    ) -> Fault:
        """Send nothing at all (not even heartbeats) for ``seconds`` after ``after_tokens``
        tokens."""
        _check_count(after_tokens)
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        return cls("stall", after_tokens=after_tokens, seconds=seconds, model=model)

    @classmethod
    def slow_drip(
        cls, *, byte_delay: float = 0.001, chunk_size: int = 1, model: str | None = None
    ) -> Fault:
        """Write the next stream ``chunk_size`` bytes at a time, sleeping ``byte_delay`` between
        writes."""
        if byte_delay < 0 or chunk_size < 1:
            raise ValueError("byte_delay must be >= 0 and chunk_size >= 1")
        return cls("slow_drip", byte_delay=byte_delay, chunk_size=chunk_size, model=model)

    @classmethod
    def http_error(
        cls,
        status: int,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        message: str | None = None,
        path: str | None = None,
        method: str | None = None,
        live_plane: bool = False,
    ) -> Fault:
        """Answer the next matching request with ``status`` and the API's error body.

        The code defaults to the API's code for the status (429 ``rate_limited``, 500
        ``internal_error``, 503 ``no_capacity``...). ``retry_after`` adds a ``Retry-After`` header
        (429 always gets one). ``path`` matches a request path prefix such as ``"/api/v1/jobs"``;
        ``method`` an HTTP method. ``live_plane=True`` answers the way the hosted control plane
        does today instead: ``{"error": "<message>"}`` (plus ``"detail": {"resetAt": ...}`` on 429)
        and no ``Retry-After`` or ``X-RateLimit-*`` headers, for testing a client's fallbacks.
        """
        if not 400 <= status <= 599:
            raise ValueError("status must be a 4xx or 5xx code")
        return cls(
            "http_error",
            status=status,
            retry_after=retry_after,
            code=code
            or _ERROR_CODES.get(status, "internal_error" if status >= 500 else "bad_request"),
            message=message,
            path=path,
            method=method.upper() if method else None,
            live_plane=live_plane,
        )

    def describe(self) -> str:
        """A short label for records and logs, e.g. ``"disconnect(after_tokens=3)"``."""
        if self.kind == "http_error":
            return f"http_error({self.status})"
        if self.kind == "slow_drip":
            return f"slow_drip(byte_delay={self.byte_delay})"
        if self.kind == "drop_node" and self.probability is not None:
            return f"drop_node(probability={self.probability})"
        return f"{self.kind}(after_tokens={self.after_tokens})"


def _check_count(after_tokens: int) -> None:
    if after_tokens < 0:
        raise ValueError("after_tokens must be >= 0")


@dataclass(slots=True)
class _Entry:
    fault: Fault
    remaining: int
    job_id: str | None = None

    def matches(self, kinds: frozenset[str], model: str, job_id: str) -> bool:
        return (
            self.fault.kind in kinds
            and self.fault.model in (None, model)
            and self.job_id in (None, job_id)
        )


class FaultBook:
    """The queue of injected faults, consumed in order of injection."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def inject(self, fault: Fault, times: int, job_id: str | None = None) -> None:
        if times < 1:
            raise ValueError("times must be >= 1")
        self._entries.append(_Entry(fault, times, job_id))

    def clear(self) -> None:
        self._entries.clear()

    @property
    def pending(self) -> list[Fault]:
        return [entry.fault for entry in self._entries for _ in range(entry.remaining)]

    def _take(self, entry: _Entry) -> Fault:
        entry.remaining -= 1
        if entry.remaining == 0:
            self._entries.remove(entry)
        return entry.fault

    def take_request_fault(self, method: str, path: str) -> Fault | None:
        for entry in self._entries:
            fault = entry.fault
            if fault.kind not in REQUEST_FAULTS:
                continue
            if fault.path is not None and not path.startswith(fault.path):
                continue
            if fault.method is not None and fault.method != method:
                continue
            # A request "belongs" to a job when the job id is in its path (GET /jobs/{id}...).
            if entry.job_id is not None and f"/{entry.job_id}" not in path:
                continue
            return self._take(entry)
        return None

    def take_job_fault(self, model: str, job_id: str) -> Fault | None:
        for entry in self._entries:
            if entry.matches(JOB_FAULTS, model, job_id):
                return self._take(entry)
        return None

    def take_stream_faults(self, model: str, job_id: str) -> list[Fault]:
        """At most one fault of each stream kind, so a drip and a disconnect can shape one
        stream."""
        taken: list[Fault] = []
        kinds: set[str] = set()
        for entry in list(self._entries):
            fault = entry.fault
            if fault.kind not in kinds and entry.matches(STREAM_FAULTS, model, job_id):
                kinds.add(fault.kind)
                taken.append(self._take(entry))
        return taken


def drop_point(
    fault: Fault | None, chaos: float, rng: random.Random, answer_tokens: int
) -> int | None:
    """After how many tokens this attempt's node drops, or ``None`` when it does not.

    ``chaos`` is the server-wide drop probability per attempt; a fault's probability replaces it.
    """
    probability = chaos
    if fault is not None:
        if fault.after_tokens is not None:
            return fault.after_tokens
        probability = fault.probability or 0.0
    # Draw both numbers every time so the sequence does not depend on the outcome of the first.
    roll, position = rng.random(), rng.randrange(max(answer_tokens, 1))
    return position if roll < probability else None
