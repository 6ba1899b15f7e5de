"""Edge cases of our stream connections, each once a bug: closing under a pending head, the read
timeout while paused or after the body ended, TLS close, happy eyeballs, a caller's Host header."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from aiohttp import web

from infernet_async import (
    APIConnectionError,
    APITimeoutError,
    InfernetClient,
    RetryPolicy,
    Timeouts,
)
from infernet_async._native_response import NativeResponse
from tests.helpers.client import MODEL, MSG, data_events, raw_server
from tests.helpers.wire import (
    flood,
    length_delimited_stream,
    peer_port,
    read_request,
    tcp_server,
)

BOUND = 5.0
NO_RETRY = RetryPolicy(max_retries=0)


async def test_closing_the_pool_while_a_stream_waits_for_its_head_fails_it_at_once() -> None:
    # Bug 1: close() never resolves the head waiter, and _shutdown cancelled the read timer:
    # the opener hangs until the stream's total deadline (330 s by default).
    started = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        started.set()
        await reader.read()

    async with tcp_server(handle) as url:
        client = InfernetClient(url, token="t", retry=NO_RETRY)
        async with client:
            task = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
            await started.wait()
            binding = client._transport._binding
            assert binding is not None
            binding.pool.close()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert done, "the request waiting for its head hung after pool.close()"
            with pytest.raises(APIConnectionError):
                task.result()


async def test_a_paused_connection_does_not_hit_the_read_timeout() -> None:
    # Bug 2: while we pause reading (the consumer is away), no data can arrive, so the read
    # timer fires although the server is sending as fast as it may; aiohttp drops its sock_read
    # timer on pause_reading for this reason.

    timeouts = Timeouts(read=0.2, stall=30.0, total=30.0)
    async with (
        raw_server(flood) as url,
        InfernetClient(url, token="t", timeouts=timeouts, retry=NO_RETRY) as client,
        client.stream(model=MODEL, messages=MSG) as stream,
    ):
        async for _ in stream:
            break
        await asyncio.sleep(0.5)  # a consumer busy for longer than the read timeout
        resp = stream._resp
        assert isinstance(resp, NativeResponse) and resp._conn._paused
        async with asyncio.timeout(BOUND):
            rest = [token async for token in stream]
    assert len(rest) == 4095 and stream.finished


async def test_a_whole_body_read_slowly_still_leaves_its_connection_reusable() -> None:
    # Bug 3: the read timer stays armed after the body has ended (state stays _ACTIVE until
    # finish()): a consumer slower than the read timeout loses the keep-alive connection.
    ports: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ports.append(peer_port(request))
        body = b"".join(data_events("a", "b", "c"))
        return web.Response(body=body, headers={"Content-Type": "text/event-stream"})

    timeouts = Timeouts(read=0.1, stall=30.0, total=30.0)
    async with (
        raw_server(handler) as url,
        InfernetClient(url, token="t", timeouts=timeouts, retry=NO_RETRY) as client,
    ):
        async with client.stream(model=MODEL, messages=MSG) as stream:
            async for _ in stream:
                await asyncio.sleep(0.1)  # slow work per token
        assert stream.text == "abc" and stream.finished
        assert await client.complete(model=MODEL, messages=MSG) == "abc"
    assert len(ports) == 2 and ports[0] == ports[1]


async def test_closing_a_tls_stream_releases_its_socket_at_once() -> None:
    # Bug 4: transport.close() on TLS sends close_notify and keeps the TCP socket until the peer
    # answers, up to ssl_shutdown_timeout (30 s); a peer that does not read holds it that long,
    # and a loop closed meanwhile reports an unclosed transport. aiohttp 3.14 aborts instead.
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    release = threading.Event()

    def serve_one() -> None:
        # A blocking TLS server that sends one token, then stops reading: it never answers a
        # close_notify.
        raw, _ = listener.accept()
        with server_ctx.wrap_socket(raw, server_side=True) as tls:
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(65536)
            event = data_events("a", done=False)[0]
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(event), event)
            )
            release.wait(BOUND)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        async with (
            asyncio.timeout(BOUND),
            InfernetClient(
                f"https://127.0.0.1:{port}", token="t", ssl=client_ctx, retry=NO_RETRY
            ) as client,
        ):
            async with client.stream(model=MODEL, messages=MSG) as stream:
                assert await anext(stream) == "a"
                resp = stream._resp
                assert isinstance(resp, NativeResponse) and resp._conn._transport is not None
                sock = resp._conn._transport.get_extra_info("socket")
                assert sock.fileno() != -1
            await asyncio.sleep(0.2)  # abort() closes it on the next loop iteration
            assert sock.fileno() == -1, "the TCP socket stays open after the stream was closed"
    finally:
        release.set()
        await asyncio.to_thread(thread.join)
        listener.close()


@contextlib.asynccontextmanager
async def black_hole(port: int = 0) -> AsyncIterator[int]:
    """A listener on 127.0.0.2 whose accept queue is full: it drops SYNs, so a connect there hangs
    as one to a black hole does. Yields its port."""
    full = socket.socket()
    try:
        full.bind(("127.0.0.2", port))
    except OSError:
        full.close()
        pytest.skip("127.0.0.2 is not a loopback address here")
    full.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.2", full.getsockname()[1]))
        yield full.getsockname()[1]
    finally:
        for filler in fillers:
            filler.close()
        full.close()


async def test_a_host_whose_first_address_hangs_connects_through_the_next() -> None:
    # Bug 5: create_connection without happy_eyeballs_delay tries the addresses one after the
    # other, and the connect timeout covers them all: a name whose first address black-holes
    # (broken IPv6 is the usual case) never reaches the working one. aiohttp staggers them by
    # 0.25 s (RFC 8305).
    async def handler(request: web.Request) -> web.StreamResponse:
        body = b"".join(data_events("ok"))
        return web.Response(body=body, headers={"Content-Type": "text/event-stream"})

    async with raw_server(handler) as url, black_hole(int(url.rsplit(":", 1)[1])) as port:
        # 127.0.0.2 on the server's port black-holes; 127.0.0.1 answers.
        loop = asyncio.get_running_loop()

        async def getaddrinfo(host: str, port: int, **kw: object) -> list[tuple[Any, ...]]:
            assert host == "dual.test"
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        try:
            timeouts = Timeouts(connect=1.5, read=2.0, stall=2.0, total=5.0)
            async with InfernetClient(
                f"http://dual.test:{port}", timeouts=timeouts, retry=NO_RETRY
            ) as client:
                assert await client.complete(model=MODEL, messages=MSG) == "ok"
        finally:
            del loop.getaddrinfo


async def test_one_address_that_hangs_times_out_and_leaves_no_socket_open() -> None:
    # An IP literal is connected to directly, without happy eyeballs: the connect timeout must
    # still bound it, and the socket it made must be closed (a leak is a ResourceWarning, an error
    # here).
    async with black_hole() as port:
        timeouts = Timeouts(connect=0.3, read=2.0, stall=2.0, total=5.0)
        async with InfernetClient(
            f"http://127.0.0.2:{port}", timeouts=timeouts, retry=NO_RETRY
        ) as client:
            with pytest.raises(APITimeoutError) as caught:
                await asyncio.wait_for(client.complete(model=MODEL, messages=MSG), BOUND)
            assert caught.value.phase == "connect"
            assert client._transport._binding is not None
            assert client._transport._binding.pool.open_connections == 0
        gc.collect()


async def test_one_address_that_refuses_is_a_connection_error_naming_it() -> None:
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    async with InfernetClient(f"http://127.0.0.1:{port}", retry=NO_RETRY) as client:
        with pytest.raises(
            APIConnectionError, match=f"cannot connect to 127.0.0.1:{port}"
        ) as caught:
            await client.complete(model=MODEL, messages=MSG)
        assert caught.value.request_sent is False
    gc.collect()


async def test_a_host_header_given_by_the_caller_replaces_ours() -> None:
    # Bug 6: request() always puts its own Host first and then the caller's headers, so
    # InfernetClient(headers={"Host": ...}) (a tunnel or a virtual host) sends two Host fields,
    # which RFC 9112 §3.2 says a server must answer with 400. aiohttp sends the caller's alone,
    # as the JSON requests still do.
    hosts: list[list[str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(reader)
        hosts.append(
            [
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"host:")
            ]
        )
        writer.write(length_delimited_stream("ok"))
        await writer.drain()
        await reader.read()

    async with (
        tcp_server(handle) as url,
        InfernetClient(
            url, token="t", retry=NO_RETRY, headers={"Host": "infernet.example"}
        ) as client,
        asyncio.timeout(BOUND),
    ):
        assert await client.complete(model=MODEL, messages=MSG) == "ok"
    assert hosts == [["infernet.example"]]
