"""Opening a ``TokenStream``: sending its request on the surface that serves it, following the job
a JSON submission names, and attaching the response the read loop then reads.

Rules: the request goes out under the deadline watchdog (the first token's deadline runs from its
sending, ``_on_send``); a 404 page moves an unsent request to the next surface, never a submitted
job; a body that is not an event stream is an ``APIError`` saying what came instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ._ids import validate_job_id
from ._response import read_and_release
from ._stream_state import CLOSED, OPEN, OPENING, StreamState
from .errors import APIError, NotFoundError

if TYPE_CHECKING:
    from ._response import OpenStream
    from ._surfaces import Call, Surface

__all__ = ["StreamOpening"]

_JOB_ID_HEADER = "X-Infernet-Job-Id"
# How much of a body that is not a stream an error message quotes.
_EXCERPT_BYTES = 200


class StreamOpening(StreamState):
    """The opening of a stream, and of each attempt after it (a restart, a reconnect)."""

    async def _start(self) -> None:
        self._state = OPENING
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._deadlines.start(loop)
        try:
            surface = self._api.surface
            while True:
                call = (
                    surface.stream_call(self._request)
                    if self._request is not None
                    else surface.job_stream_call(self._job_id_to_open())
                )
                try:
                    await self._open(call, surface)
                except NotFoundError as exc:
                    if exc.body is not None or self._state == CLOSED:
                        raise
                    # A page, not the API: the server has no such route. Nothing was created,
                    # so the same request goes to the next surface (or this raises).
                    surface = self._api.not_served(surface, call.path, exc)
                    continue
                break
            self._api.settle(surface)
        except BaseException as exc:
            self._terminate(exc)
            raise
        self._state = OPEN

    def _job_id_to_open(self) -> str:
        job_id = self._acc.job_id
        assert job_id is not None
        return job_id

    async def _open(
        self, call: Call, surface: Surface, *, headers: Mapping[str, str] | None = None
    ) -> None:
        deadlines = self._deadlines
        if self._state == CLOSED:
            raise deadlines.closed_while_opening()  # aclose() during a reconnect's backoff
        deadlines.sent_at = None
        # Under the watchdog the reads use, armed as the request goes out (_on_send) for the
        # first token's deadline, which the first read keeps: no asyncio.timeout (a second timer)
        # per stream.
        task, cancelling = deadlines.watch(deadlines.next()[0])
        try:
            resp = await self._transport.open_stream(
                call, headers=headers, on_send=self._on_send, limiter=self._limiter
            )
            if resp.content_type == "application/json":
                # A JSON submission instead of a stream (the chat surface always answers so, the
                # jobs API may): follow that job's stream.
                resp = await self._follow_job_object(resp, surface)
            if (
                not 200 <= resp.status < 300
                or resp.status == 204
                or resp.content_type == "text/html"
            ):
                # Not a stream at all (a redirect without a target, no content, a captive portal's
                # page): say what came, not that a stream ended early.
                raise self._transport.redacted(await _not_a_stream(resp))
        except BaseException as exc:
            deadlines.raise_unwatched(task, cancelling, exc)
        deadlines.unwatch(task)
        if self._state == CLOSED:
            # aclose() came as the open returned, too late to interrupt it.
            resp.close()
            raise deadlines.closed_while_opening()
        self._attach(resp, surface)

    def _on_send(self, sent: bool) -> None:
        """The transport's word on the request being opened: it goes out now (True), or a wait
        before its retry begins (False). What the client waits for itself (the fan-out's rate
        limiter, a retry's backoff) is not the server's time, so no deadline runs through it: the
        first token's runs from this attempt's sending, the total one from the sending of the
        request that started the job (the stream's first open; reconnects keep it)."""
        self._deadlines.on_send(sent, opening=self._state == OPENING)

    async def _follow_job_object(self, resp: OpenStream, surface: Surface) -> OpenStream:
        raw = await read_and_release(resp)  # the job's stream may reuse the connection
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        job_id = surface.submission_job_id(body)
        if job_id is None:
            raise APIError(
                "expected an event stream, got a JSON body without a job id", status=resp.status
            )
        try:
            validate_job_id(job_id)
        except ValueError:
            # The id comes from the server: a hostile one is the server's error, not a bad argument.
            raise APIError(
                f"expected an event stream, got a JSON body with a bad job id: {job_id[:80]!r}",
                status=resp.status,
            ) from None
        self._acc.set_job_id(job_id)
        call = surface.job_stream_call(job_id)
        try:
            follow = await self._transport.open_stream(call, limiter=self._limiter)
        except NotFoundError as exc:
            if exc.body is not None:
                raise
            # The job exists now: a 404 page here must not send the submission to another
            # surface (a second job), so it is no NotFoundError.
            raise APIError(
                f"job {job_id} was created, but its stream route {call.path} answered a 404 page",
                status=exc.status,
                headers=exc.headers,
            ) from exc
        if follow.content_type == "application/json":
            # The job's stream route answered with JSON again: that is no stream, whatever it says.
            raise self._transport.redacted(await _not_a_stream(follow))
        return follow

    async def _open_job_stream(self, headers: Mapping[str, str] | None = None) -> None:
        surface = self._surface
        assert surface is not None
        call = surface.job_stream_call(self._job_id_to_open())
        await self._open(call, surface, headers=headers)

    def _attach(self, resp: OpenStream, surface: Surface) -> None:
        self._resp = resp
        self._deadlines.attached = True
        self._surface = surface
        self._decoder = surface.decoder()
        self._pending.clear()
        header_id = resp.headers.get(_JOB_ID_HEADER)
        if header_id:
            self._set_job_id(header_id)
        if self._read_interval and self._deadlines.first_token_at is not None:
            self._read_sparsely()  # a replay after a dropped connection: tokens flowed already


async def _not_a_stream(resp: OpenStream) -> APIError:
    status, media = resp.status, resp.content_type
    raw = await read_and_release(resp, limit=_EXCERPT_BYTES)
    excerpt = raw.decode("utf-8", errors="replace").strip()
    what = f"{status} {media}" + (f": {excerpt!r}" if excerpt else " with no body")
    return APIError(f"expected an event stream, got {what}", status=status)
