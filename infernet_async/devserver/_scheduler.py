"""The simulated network: provider nodes, the pending queue, and the scheduler that joins them.

Rules (the API reference's lifecycle):

- a job waits in ``pending`` until a free online node serving its model (and its ``node_id`` pin, if
  any) takes it; re-queued jobs go to the front of the queue and prefer a node they have not failed
  on;
- one task per running attempt generates tokens at the node's pace (``time_to_first_token`` then
  ``tokens_per_second``); nothing runs for idle or pending jobs;
- a node that drops takes all its attempts with it: each ends ``dropped`` and its job is re-queued;
  a node dropped by a fault comes back after ``node_reconnect_delay``;
- a job still unfinished ``job_timeout`` seconds after submission fails with ``timeout``.

With ``hosted=True`` the scheduler behaves like the hosted control plane today instead: a dropped
node strands its attempts (no re-queue: the job stays running with nothing more to come) and a job
past ``job_timeout`` fails with ``expired: …``.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._faults import FaultBook, drop_point
from ._generator import Generation, GenerationRequest
from ._jobs import Job, JobStore
from ._upstream import UpstreamError

__all__ = ["DEFAULT_NODES", "Backend", "NodeSpec", "Scheduler"]

NODE_DISCONNECTED_MESSAGE = "Node went offline mid-stream"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A simulated provider node: the models it serves, its speed and how many jobs it runs at
    once."""

    id: str
    models: Sequence[str]
    name: str | None = None
    tokens_per_second: float = 60.0
    time_to_first_token: float = 0.2
    capacity: int = 4
    online: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            object.__setattr__(self, "models", (self.models,))
        else:
            object.__setattr__(self, "models", tuple(self.models))
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")
        if self.tokens_per_second <= 0 or self.time_to_first_token < 0:
            raise ValueError("tokens_per_second must be > 0 and time_to_first_token >= 0")


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("node_4090a1", ("qwen2.5:14b", "llama3.1:8b"), "emulated-rtx4090-1", 78.0, 0.25, 4),
    NodeSpec("node_3090b2", ("qwen2.5:14b",), "emulated-rtx3090-2", 52.0, 0.4, 2),
    NodeSpec("node_a100c3", ("llama3.1:8b", "mistral:7b"), "emulated-a100-3", 110.0, 0.15, 8),
    NodeSpec("node_4080d4", ("mistral:7b", "qwen2.5:14b"), "emulated-rtx4080-4", 64.0, 0.3, 4),
)


class Backend(Protocol):
    engine: str
    paced: bool

    async def start(self, request: GenerationRequest) -> Generation: ...


@dataclass(eq=False)
class NodeState:
    spec: NodeSpec
    online: bool
    running: set[str] = field(default_factory=set)
    reconnect: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.spec.name or self.spec.id

    @property
    def free(self) -> bool:
        return self.online and len(self.running) < self.spec.capacity


class Scheduler:
    """Hands pending jobs to free nodes, runs attempts, re-queues on drops, fails on timeout."""

    def __init__(
        self,
        store: JobStore,
        faults: FaultBook,
        backend: Backend,
        *,
        nodes: Sequence[NodeSpec],
        seed: int,
        job_timeout: float,
        tokens_per_second: float | None,
        time_to_first_token: float | None,
        node_drop_probability: float,
        node_reconnect_delay: float,
        max_pending: int,
        hosted: bool = False,
    ) -> None:
        ids = [spec.id for spec in nodes]
        if len(set(ids)) != len(ids):
            raise ValueError("node ids must be unique")
        self.store = store
        self.faults = faults
        self.backend = backend
        self.nodes: dict[str, NodeState] = {s.id: NodeState(s, s.online) for s in nodes}
        self.seed = seed
        self.job_timeout = job_timeout
        self.tokens_per_second = tokens_per_second
        self.time_to_first_token = time_to_first_token
        self.node_drop_probability = node_drop_probability
        self.node_reconnect_delay = node_reconnect_delay
        self.max_pending = max_pending
        self.hosted = hosted
        self.pending: deque[Job] = deque()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._timeouts: dict[str, asyncio.TimerHandle] = {}
        self._closed = False

    def use_backend(self, backend: Backend, nodes: Sequence[NodeSpec]) -> None:
        """Generate with ``backend`` on ``nodes`` from now on (an upstream, before any job)."""
        self.backend = backend
        self.nodes = {s.id: NodeState(s, s.online) for s in nodes}

    # -- what the API asks ------------------------------------------------------------------------

    def registered_models(self) -> set[str]:
        return {model for node in self.nodes.values() for model in node.spec.models}

    def online_nodes(self, model: str) -> list[NodeState]:
        return [n for n in self.nodes.values() if n.online and model in n.spec.models]

    def node_speed(self, node: NodeState) -> float:
        return self.tokens_per_second or node.spec.tokens_per_second

    def capacity_error(self, model: str, node_pin: str | None) -> str | None:
        """Why a job for ``model`` cannot be queued now (a ``no_capacity`` message), or ``None``."""
        candidates = self.online_nodes(model)
        if node_pin is not None:
            candidates = [n for n in candidates if n.spec.id == node_pin]
        if not candidates:
            where = f"node {node_pin}" if node_pin else "no node"
            return f"No online node has capacity for model {model!r} ({where} is online for it)"
        if len(self.pending) >= self.max_pending:
            return f"The queue is full ({self.max_pending} pending jobs); retry with backoff"
        return None

    # -- lifecycle of jobs
    # --------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self.store.add(job)
        self.pending.append(job)
        loop = asyncio.get_running_loop()
        self._timeouts[job.id] = loop.call_later(self.job_timeout, self._time_out, job)
        self._dispatch()

    def _pick_node(self, job: Job) -> NodeState | None:
        fallback: NodeState | None = None
        for node in self.nodes.values():
            if not node.free or job.model not in node.spec.models:
                continue
            if job.node_pin is not None and node.spec.id != job.node_pin:
                continue
            if node.spec.id not in job.excluded_nodes:
                return node
            fallback = fallback or node
        return fallback

    def _dispatch(self) -> None:
        if self._closed:
            return
        for job in list(self.pending):
            node = self._pick_node(job)
            if node is None:
                continue
            self.pending.remove(job)
            node.running.add(job.id)
            attempt = job.start_attempt(node.spec.id, node.name, self.backend.engine)
            task = asyncio.get_running_loop().create_task(
                self._run(job, node), name=f"devserver-{job.id}-attempt-{attempt.number}"
            )
            self._running[job.id] = task

    async def _run(self, job: Job, node: NodeState) -> None:
        attempt = job.attempt
        assert attempt is not None
        fault = self.faults.take_job_fault(job.model, job.id)
        rng = random.Random(f"{self.seed}:{job.id}:{attempt.number}")
        generation: Generation | None = None
        try:
            generation = await self.backend.start(job)
            planned = generation.planned_tokens or job.max_tokens
            drop_at = drop_point(fault, self.node_drop_probability, rng, planned)
            paced = self.backend.paced
            ttft = (
                self.time_to_first_token
                if self.time_to_first_token is not None
                else node.spec.time_to_first_token
            )
            interval = 1.0 / self.node_speed(node)
            loop = asyncio.get_running_loop()
            if paced and ttft > 0:
                await asyncio.sleep(ttft)
            started = loop.time()
            while True:
                if drop_at is not None and len(attempt.tokens) >= drop_at:
                    self.drop_node(node.spec.id, reconnect_after=self.node_reconnect_delay)
                    return
                try:
                    token = await generation.__anext__()
                except StopAsyncIteration:
                    break
                if paced:
                    # Pace against the start so sleep overshoot does not accumulate over an answer.
                    delay = started + (len(attempt.tokens) + 1) * interval - loop.time()
                    await asyncio.sleep(max(delay, 0.0))
                attempt.tokens.append(token)
                job.notify()
            attempt.reason = generation.reason
            job.end_attempt("completed")
            self._finished(job)
        except UpstreamError as exc:
            job.fail("internal_error", str(exc))
            self._finished(job)
        finally:
            if generation is not None:
                await generation.aclose()
            if job.attempt is attempt:
                # Not when a drop already re-queued the job: its new attempt owns the slot now.
                node.running.discard(job.id)
            if self._running.get(job.id) is asyncio.current_task():
                del self._running[job.id]
            self._dispatch()

    def _finished(self, job: Job) -> None:
        handle = self._timeouts.pop(job.id, None)
        if handle is not None:
            handle.cancel()
        self.store.finished(job)

    def _time_out(self, job: Job) -> None:
        self._timeouts.pop(job.id, None)
        if job.finished:
            return
        if job in self.pending:
            self.pending.remove(job)
        task = self._running.pop(job.id, None)
        if task is not None:
            task.cancel()
        limit = f"{self.job_timeout:g}"
        if self.hosted:
            job.fail("expired", f"expired: no answer within {limit} s")
        else:
            job.fail("timeout", f"Job exceeded the server's {limit} s time limit")
        self.store.finished(job)

    # -- nodes
    # --------------------------------------------------------------------------------------

    def drop_node(self, node_id: str, *, reconnect_after: float | None = None) -> None:
        """Take a node offline: its attempts end ``dropped`` and their jobs go back to the queue
        (hosted: the attempts stay open with nothing more to come, until the job times out)."""
        node = self.nodes[node_id]
        node.online = False
        current = asyncio.current_task()
        for job_id in list(node.running):
            node.running.discard(job_id)
            job = self.store.get(job_id)
            if job is None:
                continue
            if not self.hosted:
                job.end_attempt(
                    "dropped", error="node_disconnected", message=NODE_DISCONNECTED_MESSAGE
                )
                self.pending.appendleft(job)
            task = self._running.pop(job_id, None)
            if task is not None and task is not current:
                task.cancel()
        if node.reconnect is not None:
            node.reconnect.cancel()
            node.reconnect = None
        if reconnect_after is not None and not self._closed:
            loop = asyncio.get_running_loop()
            node.reconnect = loop.call_later(reconnect_after, self.restore_node, node_id)
        self._dispatch()

    def restore_node(self, node_id: str) -> None:
        """Bring a node back online; pending jobs may start on it at once."""
        node = self.nodes[node_id]
        if node.reconnect is not None:
            node.reconnect.cancel()
            node.reconnect = None
        node.online = True
        self._dispatch()

    def node_status(self) -> list[dict[str, Any]]:
        return [
            {
                "id": n.spec.id,
                "name": n.name,
                "models": list(n.spec.models),
                "online": n.online,
                "running": sorted(n.running),
                "capacity": n.spec.capacity,
                "tokens_per_second": self.node_speed(n),
            }
            for n in self.nodes.values()
        ]

    async def aclose(self) -> None:
        self._closed = True
        for handle in self._timeouts.values():
            handle.cancel()
        self._timeouts.clear()
        for node in self.nodes.values():
            if node.reconnect is not None:
                node.reconnect.cancel()
                node.reconnect = None
        tasks = list(self._running.values())
        self._running.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
