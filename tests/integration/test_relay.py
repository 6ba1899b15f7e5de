"""The SSE relay: the guide's format, error events, stopping the upstream when the browser leaves.

Runs against real servers on loopback (aiohttp's AppRunner, uvicorn for Starlette) with a scripted
token source, so each disconnect case is exercised through a real socket close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from infernet_async.errors import (
    APIConnectionError,
    APITimeoutError,
    IncompleteStreamError,
    InfernetError,
    JobFailedError,
    ModelNotFoundError,
    NodeDisconnectedError,
    StreamError,
)
from infernet_async.events import Done, ErrorEvent, Token
from infernet_async.relay import (
    SSE_HEADERS,
    error_event_for,
    relay_to_aiohttp,
    sse_body,
    sse_encode,
)
from tests.helpers.relay_fakes import FakeTokenStream

DISCONNECT_DEADLINE = 3.0  # generous bound for "at once": the relay polls every 50 ms
KEEPALIVE = b": keep-alive\n\n"
# A first token after 0.45 s with keep-alives every 0.1 s: four comments on time, and at least two
# even on a loaded machine.
FIRST_TOKEN_PAUSE = 0.45
KEEPALIVE_INTERVAL = 0.1


class PacedTokenStream(FakeTokenStream):
    """A ``FakeTokenStream`` whose n-th read first waits ``pauses[n]`` seconds (a pending job, a
    slow node), and which records every read started, so a test can tell that keep-alives neither
    cancelled a read nor started a second one beside it.
    """

    def __init__(self, tokens: list[str], pauses: list[float], **kwargs: object) -> None:
        super().__init__(tokens, **kwargs)  # type: ignore[arg-type]
        self._pauses = list(pauses)
        self.reads = 0
        self.overlapping_reads = 0
        self._reading = False

    async def __anext__(self) -> str:
        if self._reading:
            self.overlapping_reads += 1
        self._reading = True
        pause = self._pauses[self.reads] if self.reads < len(self._pauses) else 0.0
        self.reads += 1
        try:
            if pause:
                await asyncio.sleep(pause)
            return await super().__anext__()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self._reading = False


def split_keepalives(body: bytes) -> tuple[int, bytes]:
    """The number of keep-alive comments at the start of ``body``, and the rest."""
    count = 0
    while body.startswith(KEEPALIVE):
        body = body[len(KEEPALIVE) :]
        count += 1
    return count, body


def parse_guide_events(body: bytes) -> list[object]:
    """Read the body the way the guide's fetch loop does: one ``data:`` line per event."""
    events: list[object] = []
    for line in body.decode().split("\n"):
        if not line.startswith("data: "):
            continue
        data = line[6:].strip()
        events.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return events


# --- encoding ------------------------------------------------------------------------------------


def test_sse_encode_matches_the_guide() -> None:
    assert sse_encode(Token("Paris")) == b'data: {"text": "Paris"}\n\n'
    assert sse_encode(Done()) == b"data: [DONE]\n\n"
    assert sse_encode(ErrorEvent("node_disconnected", "Node went offline mid-stream")) == (
        b'data: {"error": "node_disconnected", "message": "Node went offline mid-stream"}\n\n'
    )


def test_sse_encode_keeps_multiline_and_unicode_tokens_on_one_data_line() -> None:
    encoded = sse_encode(Token("line one\nline two\r\n« café »"))
    assert encoded.count(b"\n") == 2 and encoded.endswith(b"\n\n")
    assert parse_guide_events(encoded) == [{"text": "line one\nline two\r\n« café »"}]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (
            NodeDisconnectedError("gone", code="node_disconnected", partial_text="ab"),
            "node_disconnected",
        ),
        (IncompleteStreamError("eof"), "incomplete_stream"),
        (StreamError("boom"), "stream_error"),
        (APITimeoutError("slow", phase="stall"), "timeout"),
        (APIConnectionError("refused"), "upstream_unavailable"),
        (
            ModelNotFoundError("no such model", status=404, code="model_not_found"),
            "model_not_found",
        ),
        (JobFailedError("failed", job_id="job_1"), "job_failed"),
        (InfernetError("odd"), "upstream_error"),
        (RuntimeError("secret internals"), "internal_error"),
    ],
)
def test_error_event_codes(exc: BaseException, code: str) -> None:
    event = error_event_for(exc)
    assert event.code == code
    assert event.message
    if code == "internal_error":
        assert "secret" not in event.message


# --- sse_body (the Starlette/FastAPI body iterator) ---


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in body])


async def test_sse_body_streams_tokens_then_done_and_closes_upstream() -> None:
    source = FakeTokenStream(["Paris", " is", ""])
    body = await collect(sse_body(source))
    assert parse_guide_events(body) == [{"text": "Paris"}, {"text": " is"}, "[DONE]"]
    assert source.closed.is_set()


async def test_sse_body_sends_one_error_event_after_the_partial_text() -> None:
    error = NodeDisconnectedError("Node went offline", code="node_disconnected", partial_text="Par")
    source = FakeTokenStream(["Par", "is"], error=error)
    events = parse_guide_events(await collect(sse_body(source)))
    assert events == [
        {"text": "Par"},
        {"text": "is"},
        {"error": "node_disconnected", "message": "Node went offline"},
    ]
    assert source.closed.is_set()


async def test_sse_body_reports_a_bug_to_the_browser_then_raises_it() -> None:
    source = FakeTokenStream(["a"], error=ZeroDivisionError("bug"))
    chunks: list[bytes] = []
    body = sse_body(source)
    with pytest.raises(ZeroDivisionError):
        while True:
            chunks.append(await anext(body))
    assert parse_guide_events(b"".join(chunks))[-1] == {
        "error": "internal_error",
        "message": "The relay failed.",
    }
    assert source.closed.is_set()


async def test_sse_body_cancelled_while_waiting_closes_upstream_and_propagates() -> None:
    source = FakeTokenStream([], hang=True)
    task = asyncio.create_task(collect(sse_body(source)))
    await asyncio.wait_for(source.waiting.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.cancelled and source.closed.is_set()


async def test_sse_body_closed_early_closes_upstream() -> None:
    source = FakeTokenStream(["a", "b", "c"])
    body = sse_body(source)
    assert parse_guide_events(await anext(body)) == [{"text": "a"}]
    await body.aclose()
    assert source.closed.is_set()


async def test_sse_body_sends_keepalives_while_the_first_token_is_pending() -> None:
    source = PacedTokenStream(["Paris", " is"], pauses=[FIRST_TOKEN_PAUSE])
    chunks = [c async for c in sse_body(source, keepalive=KEEPALIVE_INTERVAL)]
    count, rest = split_keepalives(b"".join(chunks))
    assert count >= 2, chunks
    assert rest == b'data: {"text": "Paris"}\n\ndata: {"text": " is"}\n\ndata: [DONE]\n\n'
    assert all(c == KEEPALIVE for c in chunks[:count])  # each comment is a chunk of its own
    # The one read that was pending all along delivered the token: nothing cancelled or doubled it.
    assert not source.cancelled and source.overlapping_reads == 0 and source.reads == 3
    assert source.closed.is_set()


async def test_sse_body_sends_keepalives_for_a_slow_node_then_its_error() -> None:
    error = NodeDisconnectedError("Node went offline", code="node_disconnected")
    source = PacedTokenStream(["Par"], pauses=[0.0, 0.3], error=error)
    chunks = [c async for c in sse_body(source, keepalive=KEEPALIVE_INTERVAL)]
    assert chunks[0] == b'data: {"text": "Par"}\n\n'
    assert chunks[1:-1] and all(c == KEEPALIVE for c in chunks[1:-1]), chunks
    assert parse_guide_events(chunks[-1]) == [
        {"error": "node_disconnected", "message": "Node went offline"}
    ]
    assert not source.cancelled and source.closed.is_set()


async def test_sse_body_without_keepalive_sends_no_comments() -> None:
    source = PacedTokenStream(["Paris"], pauses=[0.25])
    chunks = [c async for c in sse_body(source, keepalive=None)]
    assert chunks == [b'data: {"text": "Paris"}\n\n', b"data: [DONE]\n\n"]
    assert source.closed.is_set()


@pytest.mark.parametrize("how", ["cancel", "aclose"])
async def test_sse_body_stopped_during_a_keepalive_wait_cancels_the_read(how: str) -> None:
    source = FakeTokenStream(["tok"], hang=True)
    body = sse_body(source, keepalive=0.02)
    assert await anext(body) == b'data: {"text": "tok"}\n\n'
    assert await anext(body) == KEEPALIVE
    assert source.waiting.is_set() and not source.closed.is_set()
    if how == "aclose":
        await body.aclose()
    else:
        task = asyncio.create_task(anext(body))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert source.cancelled and source.closed.is_set() and source.aclose_calls == 1


@pytest.mark.parametrize("keepalive", [0.0, -1.0, math.nan])
async def test_sse_body_rejects_a_keepalive_that_is_not_positive(keepalive: float) -> None:
    source = FakeTokenStream(["a"])
    with pytest.raises(ValueError, match="keepalive"):
        await anext(sse_body(source, keepalive=keepalive))
    assert source.closed.is_set()


# --- relay_to_aiohttp against a real aiohttp server ---


@contextlib.asynccontextmanager
async def aiohttp_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    handler_cancellation: bool = False,
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/chat", handler)
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        sockets = site._server.sockets  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/chat"
    finally:
        await runner.cleanup()


async def test_aiohttp_relay_streams_the_guide_format() -> None:
    source = FakeTokenStream(["Paris", " is", " the", " capital."], delay=0.001)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await relay_to_aiohttp(request, source)

    async with (
        aiohttp_server(handler) as url,
        aiohttp.ClientSession() as session,
        session.post(url) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == SSE_HEADERS["Content-Type"]
        assert resp.headers["Cache-Control"] == SSE_HEADERS["Cache-Control"]
        body = await resp.read()
    assert body == (
        b'data: {"text": "Paris"}\n\ndata: {"text": " is"}\n\ndata: {"text": " the"}\n\n'
        b'data: {"text": " capital."}\n\ndata: [DONE]\n\n'
    )
    assert source.closed.is_set() and not source.cancelled


async def test_aiohttp_relay_sends_error_event_and_keeps_partial_text() -> None:
    error = NodeDisconnectedError("Node went offline mid-stream", code="node_disconnected")
    source = FakeTokenStream(["The", " answer"], error=error)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await relay_to_aiohttp(request, source)

    async with (
        aiohttp_server(handler) as url,
        aiohttp.ClientSession() as session,
        session.post(url) as resp,
    ):
        events = parse_guide_events(await resp.read())
    assert events == [
        {"text": "The"},
        {"text": " answer"},
        {"error": "node_disconnected", "message": "Node went offline mid-stream"},
    ]
    assert source.closed.is_set()


def raw_post(port: int) -> socket.socket:
    """Open a raw HTTP/1.1 POST, so the test controls exactly when the 'browser' goes away."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
    return sock


async def read_until(sock: socket.socket, marker: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    data = b""
    while marker not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        assert chunk, "server closed early"
        data += chunk
    return data


@pytest.mark.parametrize("handler_cancellation", [False, True])
@pytest.mark.parametrize("tokens_first", [0, 2])
async def test_aiohttp_relay_stops_upstream_when_client_leaves(
    handler_cancellation: bool, tokens_first: int
) -> None:
    """Before the first token and after it; with and without aiohttp's handler cancellation."""
    source = FakeTokenStream(["tok"] * tokens_first, hang=True)
    handler_done = asyncio.Event()
    outcome: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            resp = await relay_to_aiohttp(request, source)
            outcome.append("returned")
            return resp
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            handler_done.set()

    async with aiohttp_server(handler, handler_cancellation=handler_cancellation) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        sock = raw_post(port)
        try:
            marker = b'data: {"text": "tok"}' if tokens_first else b"\r\n\r\n"
            received = await read_until(sock, marker)
            assert received.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(source.waiting.wait(), DISCONNECT_DEADLINE)
        finally:
            sock.close()
        await asyncio.wait_for(source.closed.wait(), DISCONNECT_DEADLINE)
        await asyncio.wait_for(handler_done.wait(), DISCONNECT_DEADLINE)
    assert source.cancelled, "the upstream read was cancelled, not left running"
    assert outcome == ["cancelled" if handler_cancellation else "returned"]


async def test_aiohttp_relay_propagates_handler_cancellation() -> None:
    """A relay cancelled by its caller closes the upstream and re-raises CancelledError."""
    source = FakeTokenStream([], hang=True)
    result: list[BaseException] = []
    recorded = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        task = asyncio.create_task(relay_to_aiohttp(request, source))
        await source.waiting.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError as exc:
            result.append(exc)
            recorded.set()
            raise
        raise AssertionError("the relay swallowed the cancellation")

    async def client(url: str) -> None:
        async with aiohttp.ClientSession() as session, session.post(url) as resp:
            await resp.read()

    async with aiohttp_server(handler) as url:
        client_task = asyncio.create_task(client(url))
        await asyncio.wait_for(recorded.wait(), DISCONNECT_DEADLINE)
        client_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await client_task
    assert len(result) == 1
    assert source.cancelled and source.closed.is_set()


async def test_aiohttp_relay_reraises_a_bug_after_telling_the_browser(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = FakeTokenStream(["a"], error=KeyError("bug"))
    raised: list[BaseException] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await relay_to_aiohttp(request, source)
        except KeyError as exc:
            raised.append(exc)
            raise

    async with (
        aiohttp_server(handler) as url,
        aiohttp.ClientSession() as session,
        session.post(url) as resp,
    ):
        body = b""
        with contextlib.suppress(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                body += chunk
    assert parse_guide_events(body)[-1] == {
        "error": "internal_error",
        "message": "The relay failed.",
    }
    assert len(raised) == 1
    assert source.closed.is_set()


@pytest.mark.parametrize("keepalive", [KEEPALIVE_INTERVAL, None])
async def test_aiohttp_relay_sends_keepalives_while_the_first_token_is_pending(
    keepalive: float | None,
) -> None:
    source = PacedTokenStream(["Paris", " is"], pauses=[FIRST_TOKEN_PAUSE])

    async def handler(request: web.Request) -> web.StreamResponse:
        return await relay_to_aiohttp(request, source, keepalive=keepalive)

    async with (
        aiohttp_server(handler) as url,
        aiohttp.ClientSession() as session,
        session.post(url) as resp,
    ):
        body = await resp.read()
    count, rest = split_keepalives(body)
    if keepalive is None:
        assert count == 0 and KEEPALIVE not in body
    else:
        assert count >= 2, body
    assert rest == b'data: {"text": "Paris"}\n\ndata: {"text": " is"}\n\ndata: [DONE]\n\n'
    assert parse_guide_events(body) == [{"text": "Paris"}, {"text": " is"}, "[DONE]"]
    assert not source.cancelled and source.overlapping_reads == 0
    assert source.closed.is_set()


@pytest.mark.parametrize("handler_cancellation", [False, True])
@pytest.mark.parametrize("tokens_first", [0, 2])
async def test_aiohttp_relay_stops_upstream_when_client_leaves_during_keepalives(
    handler_cancellation: bool, tokens_first: int
) -> None:
    source = FakeTokenStream(["tok"] * tokens_first, hang=True)
    handler_done = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await relay_to_aiohttp(request, source, keepalive=0.02)
        finally:
            handler_done.set()

    async with aiohttp_server(handler, handler_cancellation=handler_cancellation) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        sock = raw_post(port)
        try:
            received = await read_until(sock, KEEPALIVE)
            assert received.count(b'data: {"text": "tok"}') == tokens_first
            assert source.waiting.is_set()
        finally:
            sock.close()
        await asyncio.wait_for(source.closed.wait(), DISCONNECT_DEADLINE)
        await asyncio.wait_for(handler_done.wait(), DISCONNECT_DEADLINE)
    assert source.cancelled, "the pending upstream read was cancelled, not left running"
    assert source.aclose_calls >= 1


async def test_aiohttp_relay_rejects_a_keepalive_that_is_not_positive() -> None:
    source = FakeTokenStream(["a"])
    raised: list[ValueError] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await relay_to_aiohttp(request, source, keepalive=0)
        except ValueError as exc:
            raised.append(exc)
            return web.Response(status=500)

    async with (
        aiohttp_server(handler) as url,
        aiohttp.ClientSession() as session,
        session.post(url) as resp,
    ):
        assert resp.status == 500
    assert len(raised) == 1 and source.closed.is_set()


# --- sse_body under Starlette + uvicorn: the disconnect listener cancels the body ---


@contextlib.asynccontextmanager
async def uvicorn_server(
    source: FakeTokenStream, *, keepalive: float | None = 15.0
) -> AsyncIterator[int]:
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def chat(request: Request) -> StreamingResponse:
        return StreamingResponse(sse_body(source, keepalive=keepalive), headers=dict(SSE_HEADERS))

    app = Starlette(routes=[Route("/chat", chat, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not serving.done(), serving
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def test_starlette_streaming_response_relays_the_guide_format() -> None:
    source = FakeTokenStream(["Paris", " is"], delay=0.001)
    async with (
        uvicorn_server(source) as port,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/chat") as resp,
    ):
        assert resp.headers["Content-Type"] == SSE_HEADERS["Content-Type"]
        body = await resp.read()
    assert parse_guide_events(body) == [{"text": "Paris"}, {"text": " is"}, "[DONE]"]
    assert source.closed.is_set()


@pytest.mark.parametrize("tokens_first", [0, 2])
async def test_starlette_disconnect_listener_cancels_the_upstream(tokens_first: int) -> None:
    source = FakeTokenStream(["tok"] * tokens_first, hang=True)
    async with uvicorn_server(source) as port:
        sock = raw_post(port)
        try:
            marker = b'data: {"text": "tok"}' if tokens_first else b"\r\n\r\n"
            received = await read_until(sock, marker)
            assert received.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(source.waiting.wait(), DISCONNECT_DEADLINE)
        finally:
            sock.close()
        await asyncio.wait_for(source.closed.wait(), DISCONNECT_DEADLINE)
    assert source.cancelled


async def test_starlette_streaming_response_sends_keepalives_before_the_first_token() -> None:
    source = PacedTokenStream(["Paris", " is"], pauses=[FIRST_TOKEN_PAUSE])
    async with (
        uvicorn_server(source, keepalive=KEEPALIVE_INTERVAL) as port,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/chat") as resp,
    ):
        body = await resp.read()
    count, rest = split_keepalives(body)
    assert count >= 2, body
    assert parse_guide_events(rest) == [{"text": "Paris"}, {"text": " is"}, "[DONE]"]
    assert not source.cancelled and source.closed.is_set()


async def test_starlette_disconnect_during_keepalives_cancels_the_upstream() -> None:
    source = FakeTokenStream([], hang=True)
    async with uvicorn_server(source, keepalive=0.02) as port:
        sock = raw_post(port)
        try:
            received = await read_until(sock, KEEPALIVE)
            assert received.startswith(b"HTTP/1.1 200")
        finally:
            sock.close()
        await asyncio.wait_for(source.closed.wait(), DISCONNECT_DEADLINE)
    assert source.cancelled


# --- with the real client: the control plane sees the job stream closed --------------------------


@pytest.mark.parametrize("after_tokens", [0, 3])
async def test_aiohttp_relay_closes_the_real_job_stream_when_the_client_leaves(
    after_tokens: int,
) -> None:
    from infernet_async import InfernetClient
    from infernet_async.devserver import DevServer, Fault

    async with (
        DevServer(tokens_per_second=2000, time_to_first_token=0) as dev,
        InfernetClient(dev.base_url, dev.token) as client,
    ):
        dev.inject(Fault.stall(after_tokens=after_tokens, seconds=30))

        async def handler(request: web.Request) -> web.StreamResponse:
            messages = [{"role": "user", "content": "What is the capital of France?"}]
            return await relay_to_aiohttp(
                request, client.stream(model="qwen2.5:14b", messages=messages)
            )

        async with aiohttp_server(handler) as url:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            sock = raw_post(port)
            try:
                marker = b'data: {"text": " the"}' if after_tokens else b"\r\n\r\n"
                await read_until(sock, marker)
                async with asyncio.timeout(DISCONNECT_DEADLINE):
                    while not dev.open_streams:  # the job stream is open upstream
                        await asyncio.sleep(0.01)
            finally:
                sock.close()
            record = await dev.wait_for_stream_close(timeout=DISCONNECT_DEADLINE)
    assert record.closed_by_client and not record.completed
    assert record.tokens_sent == after_tokens


def test_importing_the_relay_loads_neither_aiohttp_web_nor_starlette() -> None:
    import subprocess
    import sys

    code = (
        "import sys, infernet_async.relay\n"
        "print(sorted(m for m in ('aiohttp.web', 'starlette', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"
