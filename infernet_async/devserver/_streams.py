"""Serving one event stream of one job: replay what exists, then follow live, with faults and pings.

Strategy: one task per stream (the aiohttp handler itself) and no polling. The stream looks at the
job, writes what is new, then sleeps on the job's ``changed`` Event (captured *before* looking, so
no wake-up is lost) with a timeout only for the next heartbeat. A stream follows one attempt: if
that attempt's node drops, the stream sends ``node_disconnected`` and ends, while the job runs again
elsewhere.

Client disconnects arrive as cancellation (``handler_cancellation=True``) or as a failed write;
either way the stream record is closed with ``closed_by_client=True`` and the job keeps running (a
submitted job cannot be cancelled).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ._faults import Fault
from ._jobs import Attempt, Job, iso
from ._records import StreamRecord
from ._sse_writer import EventWriter
from ._state import request_state

if TYPE_CHECKING:
    from ._server import DevServer

__all__ = ["serve_stream"]


class _Hangup(Exception):
    """A ``disconnect`` fault fired: end the stream here without ``[DONE]``."""


class _Output:
    """Writes events to one response, applying the stream's faults and keeping heartbeats due."""

    def __init__(
        self,
        response: web.StreamResponse,
        record: StreamRecord,
        writer: EventWriter,
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


async def _pump(job: Job, out: _Output) -> None:
    await out.send(out.writer.job(job.typed_job_event()))
    await out.after_tokens(0, job.next_id)
    attempt: Attempt | None = None
    sent = 0
    while True:
        changed = job.changed
        if attempt is None:
            current = job.attempt
            if current is not None and current.outcome != "dropped":
                attempt = current
                await out.send(out.writer.meta(attempt.meta(job.model), attempt.base_id))
                if attempt.outcome == "completed" and attempt.tokens:
                    # A finished job replays as its whole text in one event, then [DONE].
                    await out.token(job.content, attempt.token_id(len(attempt.tokens) - 1))
                    sent = len(attempt.tokens)
            elif job.status == "failed":
                assert job.error is not None and job.error_message is not None
                await out.error(job.error, job.error_message, job.error_id or job.next_id)
                return
        if attempt is not None:
            while sent < len(attempt.tokens):
                await out.token(attempt.tokens[sent], attempt.token_id(sent))
                sent += 1
            if attempt.outcome == "completed":
                assert attempt.finished_at is not None
                await out.done(job.content, attempt.finished_at, attempt.reason, attempt.end_id)
                return
            if attempt.outcome is not None:
                await out.error(
                    attempt.error or "internal_error",
                    attempt.error_message or "the job failed",
                    attempt.end_id,
                )
                return
        await out.wait(changed)


async def serve_stream(request: web.Request, server: DevServer, job: Job) -> web.StreamResponse:
    """Answer ``request`` with the event stream of ``job`` in the server's dialect."""
    faults = server._faults.take_stream_faults(job.model, job.id)
    writer = EventWriter(server.dialect, server.newline)
    record = StreamRecord(
        job.id,
        request.path,
        server.dialect,
        fault=", ".join(f.describe() for f in faults) or None,
    )
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Infernet-Job-Id": job.id,
        },
    )
    request_state(request).finish(response)
    if any(f.kind == "disconnect" for f in faults):
        response.force_close()
    task = asyncio.current_task()
    assert task is not None
    await response.prepare(request)
    server._recorder.stream_opened(record)
    server._stream_tasks.add(task)
    out = _Output(response, record, writer, faults, server.heartbeat_interval)
    try:
        await _pump(job, out)
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
        record.closed_by_client = not server._closing
        raise
    finally:
        server._stream_tasks.discard(task)
        server._recorder.stream_closed(record)
    try:
        await response.write_eof()
    except ConnectionResetError:
        record.closed_by_client = True
    return response
