"""Fan-out: many jobs, bounded concurrency; outcomes in input order (gather) or as they end (map).

Rules: the task group belongs to the ``FanOut`` context manager, whose block runs inside it, never
to an async generator (STYLE 12, PEP 789). Requests are pulled lazily, one per free slot (a slot is
held from a job's start until the consumer has its outcome), and outcomes flow through a memory
object stream no bigger than the concurrency, so memory stays flat in the number of requests. A
failed job becomes an outcome and never cancels its siblings; leaving the block early, or
cancelling it, cancels every running job at once, and each leaves a ``cancelled`` outcome with its
partial text in ``FanOut.cancelled`` (and in ``on_outcome``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._fanout_models import BatchOutcome, BatchRequest, OutcomeError, Status
from ._pacer import Pacer
from ._ratelimit import RateLimiter
from ._retry import Retrier
from .errors import StreamError

__all__ = [
    "BatchOutcome",
    "BatchRequest",
    "FanOut",
    "OutcomeError",
    "StreamingClient",
    "gather",
    "stream_job_runner",
]

Requests = Iterable[BatchRequest] | AsyncIterable[BatchRequest]
OutcomeCallback = Callable[[BatchOutcome], None]


class _TokenStreamLike(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def job_id(self) -> str | None: ...
    @property
    def token_count(self) -> int: ...
    @property
    def time_to_send(self) -> float | None: ...
    @property
    def time_to_first_token(self) -> float | None: ...
    async def __aenter__(self) -> Any: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...
    def __aiter__(self) -> AsyncIterator[str]: ...
    async def final_text(self, *, read_interval: float = ...) -> str: ...


class StreamingClient(Protocol):
    """What the fan-out needs of a client: ``stream(**BatchRequest.stream_arguments())``."""

    @property
    def stream(self) -> Callable[..., _TokenStreamLike]: ...


RunJob = Callable[[int, BatchRequest, OutcomeCallback], Awaitable[BatchOutcome]]
"""Runs one request to its outcome; if cancelled, reports a ``cancelled`` outcome, re-raises."""


class _JobClock:
    """The figures of one job across its attempts."""

    __slots__ = ("attempt_started", "attempts", "clock", "sent", "started")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = self.attempt_started = clock()
        self.attempts = 0
        self.sent = False

    def note(self, stream: _TokenStreamLike | None) -> None:
        """Record whether this attempt's request left the client (the stream says so: it knows
        when its request went out)."""
        if stream is not None and stream.time_to_send is not None:
            self.sent = True

    def next_attempt(self) -> None:
        self.attempts += 1
        self.attempt_started = self.clock()

    def outcome(
        self,
        index: int,
        request: BatchRequest,
        status: Status,
        stream: _TokenStreamLike | None,
        exc: BaseException | None = None,
    ) -> BatchOutcome:
        self.note(stream)
        text = stream.text if stream is not None else ""
        job_id = stream.job_id if stream is not None else None
        if isinstance(exc, StreamError):
            if len(exc.partial_text) > len(text):
                text = exc.partial_text
            job_id = job_id or exc.job_id
        return BatchOutcome(
            index=index,
            request=request,
            status=status,
            text=text,
            error=OutcomeError.from_exception(exc) if exc is not None else None,
            job_id=job_id,
            attempts=self.attempts,
            sent=self.sent,
            tokens=stream.token_count if stream is not None else 0,
            latency=self.clock() - self.started,
            time_to_send=self._time_to_send(stream),
            time_to_first_token=stream.time_to_first_token if stream is not None else None,
            exception=exc,
        )

    def _time_to_send(self, stream: _TokenStreamLike | None) -> float | None:
        # The earlier attempts and their backoffs by this clock, the last attempt's own waits by
        # the stream's.
        in_stream = stream.time_to_send if stream is not None else None
        if in_stream is None:
            return None
        return self.attempt_started - self.started + in_stream


# A batch wants whole answers: follow a re-queued job after node_disconnected, and replay a
# dropped connection; neither ever submits the job twice.
DEFAULT_STREAM_OPTIONS: dict[str, Any] = {"on_node_disconnect": "restart", "reconnect": True}

# Nobody sees a job's tokens before its end: its socket may rest between reads, so one read takes
# many tokens (TokenStream.final_text). A job's end is then seen at most 100 ms late, and at most a
# tenth of its age late; benchmarks/README.md has what it saves.
DEFAULT_READ_INTERVAL = 0.1
_JOB_TASK_NAME = "infernet_async fan-out job"


def stream_job_runner(
    client: StreamingClient,
    *,
    max_attempts: int = 3,
    backoff: Callable[[int], float] | None = None,
    stream_options: dict[str, Any] | None = None,
    read_interval: float = DEFAULT_READ_INTERVAL,
    clock: Callable[[], float] = time.perf_counter,
    pacer: Pacer | None = None,
    rate_limiter: RateLimiter | None = None,
) -> RunJob:
    """A ``RunJob`` that streams each request through ``client.stream``.

    ``pacer``: the caller's own cap; every submission (first attempts and resubmissions) waits
    for it. ``rate_limiter``: governs every request of every job; it goes to ``client.stream``
    (``rate_limiter=``), which hands it to the transport with each request.

    A job whose failure proves no job was created (rate limited, no capacity, connection refused,
    see ``_retry``) and that delivered no token is submitted again, up to ``max_attempts`` in all,
    after ``backoff(attempt)`` seconds. The client's own retries come first, and the fan-out's
    shared rate limiter holds every worker while the control plane asks for a pause. Anything
    else, or any failure after a token, is final: a resubmission would bill a second job.
    ``stream_options`` go to ``client.stream`` (default: ``DEFAULT_STREAM_OPTIONS``);
    ``read_interval`` to ``TokenStream.final_text`` (0: read every chunk as it comes).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if read_interval < 0:
        raise ValueError("read_interval must be >= 0")
    options = {**DEFAULT_STREAM_OPTIONS, **(stream_options or {})}
    if rate_limiter is not None:
        options["rate_limiter"] = rate_limiter

    async def run(index: int, request: BatchRequest, on_cancel: OutcomeCallback) -> BatchOutcome:
        arguments = {**options, **request.stream_arguments()}
        figures = _JobClock(clock)
        resubmissions = Retrier(max_attempts - 1, backoff=backoff, sleep=anyio.sleep)
        while True:
            figures.next_attempt()
            stream: _TokenStreamLike | None = None
            try:
                if pacer is not None:
                    await pacer.wait()
                if rate_limiter is not None:
                    await rate_limiter.wait_for_probe()
                # Inside the try: parameters the client refuses make this job's outcome, not
                # the whole fan-out's failure.
                stream = client.stream(**arguments)
                async with stream:
                    # The stream counts tokens and times the first one itself: nothing to do here
                    # per token, so it may take them without waking this task for each.
                    await stream.final_text(read_interval=read_interval)
            except anyio.get_cancelled_exc_class():
                on_cancel(figures.outcome(index, request, "cancelled", stream))
                raise
            except Exception as exc:
                delivered = stream is not None and stream.token_count > 0
                figures.note(stream)
                # A token delivered: the job exists, and a resubmission would bill a second one.
                if not delivered:
                    decision = resubmissions.decide("POST", exc)
                    if decision.retry:
                        if backoff is not None:  # none: the client's own retries waited already
                            await resubmissions.sleep(decision.delay)
                        continue
                return figures.outcome(index, request, "error", stream, exc)
            return figures.outcome(index, request, "ok", stream)

    return run


class FanOut:
    """Runs jobs, at most ``concurrency`` at once, and yields their outcomes as they end.

    Use it as ``async with client.map(requests, concurrency=8) as outcomes:`` then ``async for
    outcome in outcomes``. The block is the fan-out's lifetime: leaving it (``break``, an error, a
    cancellation) cancels the jobs still running and returns once every one has released its
    connection; their partial texts are then in ``cancelled``, and the outcomes of jobs that had
    ended but were not taken yet in ``undelivered``: every job started is in one of the three. A
    failing request source, or an error in the block, is raised as itself once the jobs are
    cancelled.

    Args:
        run_job: runs one request to its outcome (``stream_job_runner(client)``).
        requests: ``BatchRequest``s from an iterable or an async iterable of any length, pulled
            only when a slot is free.
        concurrency: the most jobs (so open streams) at once.
        on_outcome: called with every outcome the moment its job ends, cancelled ones included.
        connection_limit: called with ``concurrency`` on entry, so the connection pool can grow
            to it; returns the pool's limit (a pool that cannot grow, a session of yours, gets a
            ``UserWarning`` when it is smaller).
    """

    def __init__(
        self,
        run_job: RunJob,
        requests: Requests,
        *,
        concurrency: int,
        on_outcome: OutcomeCallback | None = None,
        connection_limit: Callable[[int], int] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._run_job = run_job
        self._requests = requests
        self.concurrency = concurrency
        self._on_outcome = on_outcome
        self._connection_limit = connection_limit
        self.cancelled: list[BatchOutcome] = []
        self.undelivered: list[BatchOutcome] = []
        self.started = 0
        self.finished = 0
        self.running = 0
        self.peak_running = 0
        self._task_group: TaskGroup | None = None
        self._receive: MemoryObjectReceiveStream[BatchOutcome] | None = None
        self._send: MemoryObjectSendStream[BatchOutcome] | None = None
        self._entered = False
        # Slots: jobs started whose outcome the consumer has not taken yet (at most concurrency).
        self._holding = 0
        self._feeding = True
        self._slot_freed: anyio.Event | None = None

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a FanOut runs once; build a new one")
        self._entered = True
        if self._connection_limit is not None:
            pool = self._connection_limit(self.concurrency)
            if 0 < pool < self.concurrency:
                warnings.warn(
                    f"the connection pool holds {pool} connections, fewer than concurrency="
                    f"{self.concurrency}: at most {pool} jobs stream at once (give your aiohttp "
                    f"session a TCPConnector(limit={self.concurrency}))",
                    UserWarning,
                    stacklevel=2,
                )
        send, receive = anyio.create_memory_object_stream[BatchOutcome](self.concurrency)
        self._send, self._receive = send, receive
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._feed, task_group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group, send, receive = self._task_group, self._send, self._receive
        assert task_group is not None and send is not None and receive is not None
        # Whatever the reason for leaving (done, break, error, cancellation), the jobs still running
        # are not wanted any more; cancelling a finished group is a no-op.
        task_group.cancel_scope.cancel()
        single: BaseException | None = None
        try:
            return await task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # One error (the block's own, or the request source's) is raised as itself: the task
            # group is how this works, not part of the API.
            if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
                raise
            single = group.exceptions[0]
        finally:
            send.close()  # already, unless the feeder was cancelled before it began
            # Jobs that ended while the block was leaving: their outcomes wait in the stream.
            while True:
                try:
                    self.undelivered.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            receive.close()
        raise single

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> BatchOutcome:
        if self._receive is None:
            raise RuntimeError("iterate a FanOut inside `async with`")
        try:
            # An outcome already waiting is taken without a trip through the event loop (as
            # asyncio.Queue.get does).
            try:
                return self._receive.receive_nowait()
            except anyio.WouldBlock:
                return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def _feed(self, task_group: TaskGroup) -> None:
        pull = _puller(self._requests)
        try:
            while True:
                # A free slot is taken without a trip through the event loop, so a fan-out of
                # thousands starts every job at once instead of one per loop iteration.
                while self._holding >= self.concurrency:
                    slot_freed = self._slot_freed = anyio.Event()
                    await slot_freed.wait()
                try:
                    request = await pull()
                except StopAsyncIteration:
                    return
                self._holding += 1
                task_group.start_soon(
                    self._job,
                    self.started,
                    request,
                    name=_JOB_TASK_NAME,  # anyio derives one from the function otherwise
                )
                self.started += 1
        finally:
            self._feeding = False
            self._slot_freed = None
            self._end_if_done()

    async def _job(self, index: int, request: BatchRequest) -> None:
        send = self._send
        assert send is not None
        try:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            try:
                outcome = await self._run_job(index, request, self._cancelled)
            finally:
                self.running -= 1
            self.finished += 1
            if self._on_outcome is not None:
                self._on_outcome(outcome)
            # The slot is held until the consumer has room: a slow consumer slows the
            # fan-out instead of letting finished outcomes pile up.
            try:
                send.send_nowait(outcome)
            except anyio.WouldBlock:
                try:
                    await send.send(outcome)
                except anyio.get_cancelled_exc_class():
                    self.undelivered.append(outcome)  # ended, but the block left first
                    raise
        finally:
            self._holding -= 1
            slot_freed, self._slot_freed = self._slot_freed, None
            if slot_freed is not None:
                slot_freed.set()
            self._end_if_done()

    def _end_if_done(self) -> None:
        """The consumer sees the end once the feeder and every job are done: the last of them
        closes the send side."""
        if not self._feeding and not self._holding and self._send is not None:
            self._send.close()

    def _cancelled(self, outcome: BatchOutcome) -> None:
        self.cancelled.append(outcome)
        if self._on_outcome is not None:
            self._on_outcome(outcome)


def _puller(requests: Requests) -> Callable[[], Awaitable[BatchRequest]]:
    """The next request on each call; ``StopAsyncIteration`` at the end.

    Not an async generator: the caller's iterator is driven directly, so nothing of ours is left
    suspended (for the garbage collector to finalize) when the fan-out is cancelled.
    """
    if isinstance(requests, AsyncIterable):
        return aiter(requests).__anext__
    iterator = iter(requests)

    async def next_request() -> BatchRequest:
        try:
            return next(iterator)
        except StopIteration:
            raise StopAsyncIteration from None

    return next_request


async def gather(fan_out: FanOut) -> list[BatchOutcome]:
    """Run a fan-out to its end and return the outcomes in input order.

    Failed jobs are outcomes too; nothing is raised for them. When the call is cancelled, the jobs
    still running are cancelled at once, and their partial texts are in ``fan_out.cancelled`` and
    go to its ``on_outcome``.
    """
    by_index: dict[int, BatchOutcome] = {}
    async with fan_out as outcomes:
        async for outcome in outcomes:
            by_index[outcome.index] = outcome
    return [by_index[index] for index in range(len(by_index))]
