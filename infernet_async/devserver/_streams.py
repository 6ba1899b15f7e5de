"""Serving one event stream of one job: replay what exists, then follow live, with faults and pings.

Strategy: one task per stream (the aiohttp handler itself) and no polling. The stream looks at the
job, writes what is new, then sleeps on the job's ``changed`` Event (captured *before* looking, so
no wake-up is lost) with a timeout only for the next heartbeat. A stream follows one attempt: if
that attempt's node drops, the stream sends ``node_disconnected`` and ends, while the job runs again
elsewhere.

Every surface's stream shares the output (``_Output``: faults, heartbeats, records),
``run_event_stream`` (headers, records, hang-ups) and ``follow_job`` (the job's stored events from
the start, with the same ids, then live; for the jobs API a finished job replays as one token).
``follow_job`` drives any ``JobSink``: a stream's ``_Output`` or the collector of a non-streaming
OpenAI answer.

Client disconnects arrive as cancellation (``handler_cancellation=True``) or as a failed write;
either way the stream record is closed with ``closed_by_client=True`` and the job keeps running (a
submitted job cannot be cancelled).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from ._faults import Fault
from ._jobs import Attempt, Job, iso
from ._records import StreamRecord
from ._sse_writer import EventWriter, StreamWriter
from ._state import PLANE_KEY, request_state

__all__ = ["JobSink", "follow_capped", "follow_job", "run_event_stream", "serve_stream"]

SSE_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class _Hangup(Exception):
    """A ``disconnect`` fault fired: end the stream here without ``[DONE]``."""


class _Output:
    """Writes events to one response, applying the stream's faults and keeping heartbeats due."""

    def __init__(
        self,
        response: web.StreamResponse,
        record: StreamRecord,
        writer: StreamWriter,
        faults: list[Fault],
        heartbeat: float | None,
    ) -> None:
        self.response = response
        self.record = record
        self.writer = writer
        self.faults = {fault.kind: fault for fault in faults}
        self.heartbeat = heartbeat
        self.loop = asyncio.get_running_loop()
        self.last_write = self.loop.time()
        self.hangup: Fault | None = None

    async def send(self, data: bytes) -> None:
        if not data:
            return
        drip = self.faults.get("slow_drip")
        if drip is None:
            await self.response.write(data)
        else:
            for start in range(0, len(data), drip.chunk_size):
                await self.response.write(data[start : start + drip.chunk_size])
                await asyncio.sleep(drip.byte_delay)
        self.last_write = self.loop.time()

    async def meta(self, payload: Mapping[str, Any], id: int) -> None:
        await self.send(self.writer.meta(payload, id))

    async def token(self, text: str, id: int) -> None:
        await self.send(self.writer.token(text, id))
        self.record.tokens_sent += 1
        await self.after_tokens(self.record.tokens_sent, id)

    async def after_tokens(self, count: int, id: int) -> None:
        """Fire the faults scheduled after ``count`` tokens (malformed, then stall, then
        disconnect)."""
        malformed = self.faults.get("malformed_event")
        if malformed is not None and malformed.after_tokens == count:
            await self.send(self.writer.malformed(id))
        stall = self.faults.get("stall")
        if stall is not None and stall.after_tokens == count:
            await asyncio.sleep(stall.seconds)
            self.last_write = self.loop.time()
        disconnect = self.faults.get("disconnect")
        if disconnect is not None and disconnect.after_tokens == count:
            self.hangup = disconnect
            raise _Hangup

    async def done(self, text: str, finished_at: float, reason: str, id: int) -> None:
        await self.send(self.writer.done(text, iso(finished_at), reason, id))
        self.record.completed = True

    async def error(self, code: str, message: str, id: int) -> None:
        await self.send(self.writer.error(code, message, id))
        self.record.error = code

    async def wait(self, changed: asyncio.Event) -> None:
        """Sleep until the job changes, sending ``: ping`` whenever a heartbeat falls due."""
        if self.heartbeat is None:
            await changed.wait()
            return
        while not changed.is_set():
            remaining = self.last_write + self.heartbeat - self.loop.time()
            if remaining <= 0:
                await self.send(self.writer.heartbeat())
                continue
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                pass


class JobSink(Protocol):
    """Where ``follow_job`` puts a job's events."""

    async def meta(self, payload: Mapping[str, Any], id: int) -> None: ...

    async def token(self, text: str, id: int) -> None: ...

    async def done(self, text: str, finished_at: float, reason: str, id: int) -> None: ...

    async def error(self, code: str, message: str, id: int) -> None: ...

    async def wait(self, changed: asyncio.Event) -> None: ...


async def follow_job(job: Job, sink: JobSink, *, jobs_api: bool = False) -> None:
    """A job's stored events from the start (``meta``, every token with its id, the end), then
    live: one attempt.

    A dropped node ends it with ``node_disconnected`` (the job runs again elsewhere; a new follow
    shows the new attempt). On a hosted scheduler a dropped node's attempt stays open instead, and
    this waits (the sink's heartbeats) until the job times out or the caller's cap ends it.

    ``jobs_api``: as the jobs API streams it, a finished job replays as its whole text in one
    token event, and a dropped node's error says what the attempt recorded; the hosted surfaces
    replay token by token and prefix ``node disconnected:``.
    """
    attempt: Attempt | None = None
    sent = 0
    while True:
        changed = job.changed
        if attempt is None:
            current = job.attempt
            if current is not None and current.outcome != "dropped":
                attempt = current
                await sink.meta(attempt.meta(job.model), attempt.base_id)
                if jobs_api and attempt.outcome == "completed" and attempt.tokens:
                    sent = len(attempt.tokens)
                    await sink.token(job.content, attempt.token_id(sent - 1))
            elif job.status == "failed":
                assert job.error is not None and job.error_message is not None
                await sink.error(job.error, job.error_message, job.error_id or job.next_id)
                return
        if attempt is not None:
            while sent < len(attempt.tokens):
                await sink.token(attempt.tokens[sent], attempt.token_id(sent))
                sent += 1
            if attempt.outcome == "completed":
                assert attempt.finished_at is not None
                text = "".join(attempt.tokens)
                await sink.done(text, attempt.finished_at, attempt.reason, attempt.end_id)
                return
            if attempt.outcome == "dropped" and not jobs_api:
                message = f"node disconnected: {attempt.error_message}"
                await sink.error("node_disconnected", message, attempt.end_id)
                return
            if attempt.outcome is not None:
                await sink.error(
                    attempt.error or "internal_error",
                    attempt.error_message or "the job failed",
                    attempt.end_id,
                )
                return
        await sink.wait(changed)


async def follow_capped(
    out: _Output, job: Job, first: Mapping[str, Any], cap: float, capped: bytes
) -> None:
    """A hosted surface's stream body: its first event (``first``, the job row or nothing), the
    faults due before any token, then ``follow_job`` until the server's cap (hosted: 10 minutes),
    where ``capped`` ends it as that surface ends a capped stream."""
    await out.send(out.writer.job(first))
    await out.after_tokens(0, job.next_id)
    try:
        async with asyncio.timeout(cap):
            await follow_job(job, out)
    except TimeoutError:
        await out.send(capped)


async def run_event_stream(
    request: web.Request,
    *,
    record: StreamRecord,
    writer: StreamWriter,
    faults: list[Fault],
    body: Callable[[_Output], Awaitable[None]],
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Answer ``request`` with an event stream that ``body`` writes through an ``_Output``.

    Records the stream, applies the stream ``faults`` (a ``disconnect`` ends it without its end
    event, an aborting one mid-body), and notes a client that went away.
    """
    plane = request.app[PLANE_KEY]
    record.fault = ", ".join(f.describe() for f in faults) or None
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **(headers or {})})
    request_state(request).finish(response)
    if any(f.kind == "disconnect" for f in faults):
        response.force_close()
    task = asyncio.current_task()
    assert task is not None
    await response.prepare(request)
    plane.recorder.stream_opened(record)
    plane.stream_tasks.add(task)
    out = _Output(response, record, writer, faults, plane.heartbeat_interval)
    try:
        await body(out)
    except _Hangup:
        assert out.hangup is not None
        if out.hangup.abort and request.transport is not None:
            # close(), not abort(): the tokens already written still reach the client, then the
            # connection ends mid-body. Nothing may be awaited after this (we would be cancelled).
            request.transport.close()
            return response
    except ConnectionResetError:
        record.closed_by_client = True
        return response
    except asyncio.CancelledError:
        record.closed_by_client = not plane.closing
        raise
    finally:
        plane.stream_tasks.discard(task)
        plane.recorder.stream_closed(record)
    try:
        await response.write_eof()
    except ConnectionResetError:
        record.closed_by_client = True
    return response


async def _pump(job: Job, out: _Output) -> None:
    """The jobs API's stream body: the job event, the faults due before any token, the job."""
    await out.send(out.writer.job(job.typed_job_event()))
    await out.after_tokens(0, job.next_id)
    await follow_job(job, out, jobs_api=True)


async def serve_stream(request: web.Request, job: Job) -> web.StreamResponse:
    """Answer ``request`` with the jobs API's event stream of ``job`` in the server's dialect."""
    plane = request.app[PLANE_KEY]
    faults = plane.faults.take_stream_faults(job.model, job.id)
    return await run_event_stream(
        request,
        record=StreamRecord(job.id, request.path, plane.dialect),
        writer=EventWriter(plane.dialect, plane.newline),
        faults=faults,
        body=lambda out: _pump(job, out),
        headers={"X-Infernet-Job-Id": job.id},
    )
