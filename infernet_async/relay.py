"""Relay a token stream to a browser as Server-Sent Events, in the streaming guide's format.

A back end that calls Infernet passes the answer through in a few lines::

    async def chat(request: web.Request) -> web.StreamResponse:          # aiohttp
        return await relay_to_aiohttp(request, client.stream(model=..., messages=...))

    @app.post("/chat")                                                   # FastAPI / Starlette
    async def chat(body: Prompt) -> StreamingResponse:
        return StreamingResponse(sse_body(client.stream(...)), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

The browser receives ``data: {"text": ...}`` per token, ``data: [DONE]`` after a clean finish, or
one error event ``data: {"error": "<code>", "message": ...}`` when the upstream stream fails (the
text it already has stays valid: nothing is ever retracted). While nothing is written (a job
pending before its first token, a slow node between tokens) a ``: keep-alive`` comment goes out
every ``keepalive`` seconds, so a proxy's idle timeout (nginx's 60 s ``proxy_read_timeout``) does
not cut the connection; browsers and the guide's fetch loop skip comment lines. Rules: the upstream
stream is closed whenever the relay ends, at once when the browser goes away (before the first token
as well as after it), a keep-alive never cancels or disturbs the upstream read, and
``CancelledError`` is never swallowed. This module imports neither aiohttp.web nor starlette at
import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Protocol

import anyio

from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    IncompleteStreamError,
    InfernetError,
    JobFailedError,
    StreamError,
)
from .events import Done, ErrorEvent, Token

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "SSE_HEADERS",
    "TokenSource",
    "error_event_for",
    "relay_to_aiohttp",
    "sse_body",
    "sse_encode",
]

logger = logging.getLogger("infernet_async")

SSE_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    # nginx buffers proxied responses by default, which would turn a stream into one late blob.
    "X-Accel-Buffering": "no",
}
"""Headers for an SSE response: the content type, no caching and no proxy buffering."""

_DONE_BYTES = b"data: [DONE]\n\n"
_KEEPALIVE_BYTES = b": keep-alive\n\n"


class TokenSource(Protocol):
    """What the relay needs from a stream: ``TokenStream`` has it, and so can a test double.

    An async iterable of ``str`` tokens that raises an ``InfernetError`` when the upstream fails,
    and an idempotent ``aclose()`` that releases the upstream connection.
    """

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


def sse_encode(event: Token | Done | ErrorEvent) -> bytes:
    """Encode one event as the guide's SSE bytes.

    ``Token`` becomes ``data: {"text": ...}``, ``Done`` the literal ``data: [DONE]`` and
    ``ErrorEvent`` ``data: {"error": <code>, "message": ...}``. JSON escapes newlines, so each event
    is one ``data:`` line that the guide's line-splitting fetch loop reads correctly.
    """
    if isinstance(event, Token):
        payload: dict[str, str | None] = {"text": event.text}
    elif isinstance(event, Done):
        return _DONE_BYTES
    else:
        payload = {"error": event.code, "message": event.message}
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def error_event_for(exc: BaseException) -> ErrorEvent:
    """The error event a browser gets for an upstream failure: a stable code and a one-line message.

    Messages come from the SDK's errors, which never contain the bearer token. An exception that is
    not an ``InfernetError`` is a bug in the relaying code: its text is not sent to the browser.
    """
    if isinstance(exc, StreamError):
        default = "incomplete_stream" if isinstance(exc, IncompleteStreamError) else "stream_error"
        return ErrorEvent(exc.code or default, exc.message)
    if isinstance(exc, APITimeoutError):
        return ErrorEvent("timeout", exc.message)
    if isinstance(exc, APIConnectionError):
        return ErrorEvent("upstream_unavailable", str(exc) or "The service is unreachable.")
    if isinstance(exc, APIError):
        return ErrorEvent(exc.code or f"http_{exc.status}", exc.message)
    if isinstance(exc, JobFailedError):
        return ErrorEvent(exc.code or "job_failed", exc.message)
    if isinstance(exc, InfernetError):
        return ErrorEvent("upstream_error", str(exc) or type(exc).__name__)
    return ErrorEvent("internal_error", "The relay failed.")


def _check_keepalive(keepalive: float | None) -> None:
    if keepalive is not None and not keepalive > 0:  # "not >" also rejects NaN
        raise ValueError(
            f"keepalive must be a positive number of seconds or None, not {keepalive!r}"
        )


async def _next_token(iterator: AsyncIterator[str]) -> str | None:
    """One upstream read; ``None`` at the end of the stream."""
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return None


async def _stop_read(read: asyncio.Task[str | None]) -> None:
    read.cancel()
    # Shielded like _close_quietly: the upstream must not be closed while its read is unwinding.
    with anyio.CancelScope(shield=True):
        await asyncio.wait({read})
    if not read.cancelled() and (exc := read.exception()) is not None:
        # The read failed just as the relay ended for another reason; retrieving the exception
        # keeps asyncio from logging "Task exception was never retrieved".
        logger.debug("relay: upstream read failed while the relay was ending: %r", exc)


async def _close_quietly(stream: TokenSource) -> None:
    # Shielded: a body iterator cancelled by Starlette's anyio task group is cancelled again at
    # every await (level-triggered cancellation), and the upstream must be released regardless.
    with anyio.CancelScope(shield=True):
        await stream.aclose()


async def sse_body(
    stream: TokenSource, *, keepalive: float | None = 15.0
) -> AsyncGenerator[bytes, None]:
    """The SSE bytes of ``stream``, one event per chunk, for Starlette's ``StreamingResponse``.

    Tokens become ``data: {"text": ...}``; a clean end ``data: [DONE]``. An ``InfernetError`` from
    the stream becomes one error event and a clean end of the body. Any other exception is a bug:
    the browser still gets an ``internal_error`` event, then the exception propagates so the server
    logs it.

    When ``keepalive`` seconds pass without a chunk, the body yields the comment
    ``: keep-alive\n\n`` (again every ``keepalive`` seconds while the wait lasts); ``None`` turns
    this off. The upstream read runs on in its own task meanwhile: timing it out would cancel it,
    and a cancelled read ends a ``TokenStream``. A ``keepalive`` that is not positive raises
    ``ValueError`` on the first iteration (the stream is closed first).

    The upstream stream is closed when the body ends, fails, is closed (``aclose()``, or garbage
    collection through asyncio's async-generator hooks) or is cancelled. Starlette cancels the body
    iterator when the client disconnects (its ``listen_for_disconnect``, used with servers that
    speak ASGI HTTP spec < 2.4, uvicorn among them), so a browser that leaves before the first token
    stops the upstream at once too. ``CancelledError`` propagates.

    Relay streams with the default node-disconnect policy (``"raise"``): the guide's format has no
    way to tell a browser to discard text, so with ``on_node_disconnect="restart"`` the restarted
    answer would be appended to the abandoned one.
    """
    iterator = aiter(stream)
    read: asyncio.Task[str | None] | None = None
    try:
        _check_keepalive(keepalive)
        try:
            while True:
                if keepalive is None:
                    token = await _next_token(iterator)
                else:
                    if read is None:
                        read = asyncio.create_task(
                            _next_token(iterator), name="infernet_async relay read"
                        )
                    await asyncio.wait({read}, timeout=keepalive)
                    if not read.done():
                        yield _KEEPALIVE_BYTES
                        continue
                    finished, read = read, None
                    token = finished.result()
                if token is None:
                    break
                if token:
                    yield sse_encode(Token(token))
        except InfernetError as exc:
            event = error_event_for(exc)
            logger.info("relay: upstream stream failed (%s): %s", event.code, event.message)
            yield sse_encode(event)
            return
        except Exception:
            yield sse_encode(error_event_for(Exception()))
            raise
        yield _DONE_BYTES
    finally:
        if read is not None:
            await _stop_read(read)
        await _close_quietly(stream)


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _pump(response: web.StreamResponse, stream: TokenSource, keepalive: float | None) -> bool:
    """Write the stream's events; returns False when the client went away mid-write."""
    async with contextlib.aclosing(sse_body(stream, keepalive=keepalive)) as body:
        async for chunk in body:
            try:
                await response.write(chunk)
            except ConnectionError:
                return False
    try:
        await response.write_eof()
    except ConnectionError:
        return False
    return True


async def relay_to_aiohttp(
    request: web.BaseRequest,
    stream: TokenSource,
    *,
    headers: Mapping[str, str] | None = None,
    disconnect_poll_interval: float = 0.05,
    keepalive: float | None = 15.0,
) -> web.StreamResponse:
    """Relay ``stream`` to the client of an aiohttp handler as SSE; returns the prepared response.

    Args:
        request: the handler's request.
        stream: a ``TokenStream`` (or any ``TokenSource``); it is always closed when this returns.
        headers: extra response headers, added to ``SSE_HEADERS``.
        disconnect_poll_interval: how often, in seconds, to check whether the client went away.
            aiohttp tells a handler about a disconnect only by cancelling it, and only with
            ``handler_cancellation=True``; without it a handler waiting for a slow first token would
            never notice, so the relay also watches the connection's transport.
        keepalive: seconds without a write after which the comment ``: keep-alive`` is sent (and
            again every ``keepalive`` seconds), so a proxy's idle timeout does not cut a job that
            waits for its first token; ``None`` sends none. It never interrupts the upstream read.

    Returns:
        The ``web.StreamResponse``, already finished; return it from the handler.

    Raises:
        asyncio.CancelledError: when the handler is cancelled (the upstream stream is closed first).
        ValueError: when ``keepalive`` is not positive (before anything is sent).
        Exception: only for a bug in the stream (not an ``InfernetError``), after the browser got an
            ``internal_error`` event.
    """
    from aiohttp import web

    try:
        _check_keepalive(keepalive)
    except ValueError:
        await _close_quietly(stream)
        raise

    response = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
    try:
        await response.prepare(request)
    except ConnectionError:
        await _close_quietly(stream)
        return response

    pump = asyncio.create_task(_pump(response, stream, keepalive), name="infernet_async relay")
    client_left = False
    try:
        while not pump.done():
            await asyncio.wait({pump}, timeout=disconnect_poll_interval)
            if not pump.done() and _client_gone(request):
                client_left = True
                pump.cancel()
                await asyncio.wait({pump})
    finally:
        if not pump.done():
            # Our handler was cancelled (handler_cancellation=True, or shutdown): stop the upstream,
            # wait for the pump's cleanup to finish, then let the CancelledError continue.
            pump.cancel()
            await asyncio.wait({pump})
        await _close_quietly(stream)

    if pump.cancelled():
        if not client_left:
            # Only we hold the pump task, so this cannot happen; if it does, the cancellation is
            # not ours to absorb.
            raise asyncio.CancelledError()
        logger.debug("relay: client went away before the answer finished; upstream closed")
        return response
    if not pump.result():
        logger.debug("relay: client went away while writing; upstream closed")
    return response
