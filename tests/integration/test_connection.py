"""Our own stream connections (``_connection``): reuse, the pool's limit, the read timeout, flow
control, and the release of every socket.

Streams on a client that owns its session go over these connections; the wire faults (resets,
broken framing, odd bodies) are in hardening/test_faults.py, which runs over them too.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from infernet_async import (
    APITimeoutError,
    IncompleteStreamError,
    InfernetClient,
    RateLimitError,
    Timeouts,
)
from infernet_async._native_response import NativeResponse
from infernet_async.devserver import DevServer
from tests.helpers.client import MODEL, MSG, client_for, data_events, raw_server, sse_handler
from tests.helpers.wire import flood, length_delimited_stream, peer_port, read_request, tcp_server

BOUND = 10.0


async def test_sequential_streams_reuse_one_connection() -> None:
    ports: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ports.append(peer_port(request))
        return await sse_handler(data_events("a", "b"))(request)

    async with raw_server(handler) as url, client_for(url) as client:
        for _ in range(3):
            assert await client.complete(model=MODEL, messages=MSG) == "ab"
    assert len(ports) == 3 and len(set(ports)) == 1


async def test_a_stream_left_early_closes_its_connection_and_the_next_gets_a_new_one() -> None:
    ports: list[int] = []
    gone = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        ports.append(peer_port(request))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for n in range(1000):
                await resp.write(f"data: {json.dumps({'text': str(n)})}\n\n".encode())
                await asyncio.sleep(0.005)
        except (ConnectionResetError, asyncio.CancelledError):
            gone.set()
            raise
        return resp

    async with raw_server(handler) as url, client_for(url) as client:
        async with client.stream(model=MODEL, messages=MSG) as stream:
            async for _ in stream:
                break
        async with asyncio.timeout(BOUND):
            await gone.wait()
        async with client.stream(model=MODEL, messages=MSG) as stream:
            async for _ in stream:
                break
    assert len(ports) == 2 and ports[0] != ports[1]


async def seen_by_the_server(
    first_answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> list[tuple[int, str]]:
    """Complete one chat whose first request gets ``first_answer`` and every later one a stream of
    "ok"; returns (client port, path and query) for each request the server saw."""
    seen: list[tuple[int, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((peer_port(request), request.path_qs))
        if len(seen) == 1:
            return await first_answer(request)
        return await sse_handler(data_events("ok"))(request)

    async with raw_server(handler) as url, client_for(url) as client:
        assert await client.complete(model=MODEL, messages=MSG) == "ok"
    return seen


async def test_an_error_answer_read_whole_leaves_the_connection_reusable() -> None:
    async def rate_limited(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": "rate_limited", "error_message": "slow down"},
            status=429,
            headers={"Retry-After": "0"},
        )

    (first_port, _), (second_port, _) = await seen_by_the_server(rate_limited)
    assert first_port == second_port


async def test_a_redirect_read_whole_leaves_the_connection_to_the_redirected_request() -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(request.path + "?moved=1")

    (first_port, _), (second_port, target) = await seen_by_the_server(moved)
    assert target.endswith("?moved=1") and first_port == second_port


async def test_a_job_object_answer_leaves_the_connection_to_the_jobs_stream() -> None:
    async def job_object(request: web.Request) -> web.StreamResponse:
        return web.json_response({"id": "job_9a3f2c1d", "status": "pending"})

    (first_port, _), (second_port, target) = await seen_by_the_server(job_object)
    assert target.endswith("/jobs/job_9a3f2c1d/stream") and first_port == second_port


async def test_the_pool_limit_bounds_connections_and_queues_the_rest() -> None:
    open_now = peak = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            return await sse_handler([0.05, *data_events("x")])(request)
        finally:
            open_now -= 1

    async with raw_server(handler) as url, client_for(url, max_connections=2) as client:
        async with asyncio.timeout(BOUND):
            texts = await asyncio.gather(
                *(client.complete(model=MODEL, messages=MSG) for _ in range(7))
            )
    assert texts == ["x"] * 7
    assert peak == 2


async def test_a_waiter_cancelled_in_the_queue_takes_no_slot() -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await release.wait()
        for chunk in data_events("x"):
            await resp.write(chunk)
        return resp

    async with raw_server(handler) as url, client_for(url, max_connections=1) as client:
        first = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        third = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
        release.set()
        async with asyncio.timeout(BOUND):
            assert await first == "x"
            assert await third == "x"


async def test_an_http10_close_delimited_stream() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        for chunk in data_events("Par", "is"):
            writer.write(chunk)
            await writer.drain()

    async with tcp_server(handle) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            assert await client.complete(model=MODEL, messages=MSG) == "Paris"


async def test_a_content_length_stream_and_its_connection_is_reused() -> None:
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            requests += 1
            writer.write(length_delimited_stream("o", "k"))
            await writer.drain()

    async with tcp_server(handle) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            assert await client.complete(model=MODEL, messages=MSG) == "ok"
            assert await client.complete(model=MODEL, messages=MSG) == "ok"
    assert requests == 2  # both on the one connection the handler loops on


async def test_a_server_that_never_answers_hits_the_read_timeout() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    timeouts = Timeouts(read=0.2)
    async with tcp_server(handle) as url, client_for(url, timeouts=timeouts) as client:
        async with asyncio.timeout(BOUND):
            with pytest.raises(APITimeoutError) as info:
                await client.complete(model=MODEL, messages=MSG)
    assert info.value.phase == "read"


async def test_a_server_that_hangs_up_without_answering() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with tcp_server(handle) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            with pytest.raises(Exception, match="closed the connection before answering"):
                await client.complete(model=MODEL, messages=MSG)


async def test_a_malformed_status_line_is_a_connection_error() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/9 200 OK\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with tcp_server(handle) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            with pytest.raises(Exception, match="malformed"):
                await client.complete(model=MODEL, messages=MSG)


async def test_a_consumer_that_stops_reading_stops_the_socket_being_read() -> None:
    # The consumer takes one token of the flood and waits.
    async with raw_server(flood) as url, client_for(url) as client:
        async with client.stream(model=MODEL, messages=MSG) as stream:
            async for _ in stream:
                break
            await asyncio.sleep(0.3)
            resp = stream._resp
            assert isinstance(resp, NativeResponse)
            assert resp._conn._paused
            assert resp._conn._unread < 1024 * 1024
            async with asyncio.timeout(BOUND):
                rest = [token async for token in stream]
        assert len(rest) == 4095 and stream.finished


async def test_closing_the_client_closes_its_idle_connections() -> None:
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(length_delimited_stream("ok"))
        await writer.drain()
        await reader.read()  # returns when the client closes the kept-alive connection
        closed.set()

    async with tcp_server(handle) as url:
        client = client_for(url)
        async with client:
            assert await client.complete(model=MODEL, messages=MSG) == "ok"
            await asyncio.sleep(0.05)
            assert not closed.is_set()  # kept alive in the pool
        async with asyncio.timeout(BOUND):
            await closed.wait()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(length_delimited_stream("ok"))
        await writer.drain()
        # and hang up: the pooled connection is dead

    async with tcp_server(handle) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            assert await client.complete(model=MODEL, messages=MSG) == "ok"
            await asyncio.sleep(0.05)
            assert await client.complete(model=MODEL, messages=MSG) == "ok"


async def test_an_abandoned_stream_is_released_by_the_garbage_collector() -> None:
    async with DevServer(tokens_per_second=50, time_to_first_token=0) as server:
        client = InfernetClient(server.base_url, token=server.token)
        async with client:
            stream = client.stream(model=MODEL, messages=MSG, max_tokens=200)
            async for _ in stream:
                break
            with pytest.warns(ResourceWarning, match="garbage-collected"):
                del stream
                gc.collect()
            async with asyncio.timeout(BOUND):
                record = await server.wait_for_stream_close()
            assert record.closed_by_client


async def test_the_stall_timeout_applies_while_collecting_the_whole_answer() -> None:
    # Default-like timeouts (no first-token limit, a long total): the first token starts the
    # stall clock inside the one wait that collects the answer.
    chunks = [*data_events("a", done=False), 5.0]
    async with raw_server(sse_handler(chunks)) as url:
        client = client_for(url, timeouts=Timeouts(stall=0.2, total=30))
        async with client, asyncio.timeout(BOUND):
            with pytest.raises(APITimeoutError) as info:
                await client.complete(model=MODEL, messages=MSG)
    assert info.value.phase == "stall"
    assert info.value.partial_text == "a"


async def test_a_caller_session_streams_over_aiohttp() -> None:
    async with (
        raw_server(sse_handler(data_events("a", "b"))) as url,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
    ):
        client = client_for(url, session=session)
        async with client, client.stream(model=MODEL, messages=MSG) as stream:
            assert not isinstance(stream._resp, NativeResponse)
            assert await stream.final_text() == "ab"


async def test_a_cut_stream_keeps_its_partial_text() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for chunk in data_events("Par", "is", done=False):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()

    async with tcp_server(handle) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            with pytest.raises(IncompleteStreamError) as info:
                await client.complete(model=MODEL, messages=MSG)
    assert info.value.partial_text == "Paris"
    assert "chunk" in str(info.value)


async def test_rate_limited_stream_opening_raises_the_typed_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": "rate_limited", "error_message": "slow down"},
            status=429,
            headers={"Retry-After": "7"},
        )

    async with raw_server(handler) as url, client_for(url) as client:
        with pytest.raises(RateLimitError) as info:
            async with client.stream(model=MODEL, messages=MSG):
                pass
    assert info.value.retry_after == 7


@pytest.mark.parametrize("collect", [True, False], ids=["final_text", "tokens"])
async def test_tokens_in_the_same_read_as_a_framing_fault_are_kept(collect: bool) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in data_events("Par", "is", done=False))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body + b"zz\r\nnot a size\r\n"
        )
        await writer.drain()
        await reader.read()

    async with (
        tcp_server(handle) as url,
        client_for(url) as client,
        asyncio.timeout(BOUND),
        client.stream(model=MODEL, messages=MSG) as stream,
    ):
        with pytest.raises(IncompleteStreamError) as info:
            if collect:
                await stream.final_text()
            else:
                async for _ in stream:
                    pass
    assert info.value.partial_text == "Paris" == stream.text
    assert "malformed" in str(info.value)


async def test_names_are_looked_up_once_for_many_streams_and_ip_literals_never() -> None:
    lookups: list[str] = []
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def counting(host: str, port: int, **kw: object) -> object:
        lookups.append(host)
        await asyncio.sleep(0.02)  # every stream opens while the first lookup runs
        return await real("127.0.0.1", port, **kw)  # type: ignore[arg-type]

    async with raw_server(sse_handler(data_events("ok"))) as url:
        port = int(url.rsplit(":", 1)[1])
        loop.getaddrinfo = counting  # type: ignore[method-assign, assignment]
        try:
            async with client_for(
                f"http://api.infernet.test:{port}", allow_insecure=True
            ) as client:
                texts = await asyncio.gather(
                    *(client.complete(model=MODEL, messages=MSG) for _ in range(20))
                )
            assert texts == ["ok"] * 20 and lookups == ["api.infernet.test"]
            async with client_for(url) as client:
                assert await client.complete(model=MODEL, messages=MSG) == "ok"
            assert lookups == ["api.infernet.test"]  # 127.0.0.1 needs no lookup
        finally:
            del loop.getaddrinfo


async def test_a_caller_cancelled_during_the_lookup_does_not_cancel_it_for_the_others() -> None:
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    release = asyncio.Event()

    async def slow(host: str, port: int, **kw: object) -> object:
        await release.wait()
        return await real("127.0.0.1", port, **kw)  # type: ignore[arg-type]

    async with raw_server(sse_handler(data_events("ok"))) as url:
        port = int(url.rsplit(":", 1)[1])
        loop.getaddrinfo = slow  # type: ignore[method-assign, assignment]
        try:
            async with client_for(
                f"http://api.infernet.test:{port}", allow_insecure=True
            ) as client:
                first = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
                second = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
                await asyncio.sleep(0.02)
                first.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
                release.set()
                async with asyncio.timeout(BOUND):
                    assert await second == "ok"
        finally:
            del loop.getaddrinfo
