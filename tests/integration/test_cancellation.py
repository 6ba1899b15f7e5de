"""Partial text is never lost and the connection is released at once, however a stream ends.

Each test reads a few tokens, then ends the stream one way (break with or without ``async with``,
``task.cancel()``, ``asyncio.timeout``, ``anyio.move_on_after``, an error event, a dropped
connection, our stall timeout) and checks three things: ``text``/``partial_text`` hold exactly the
tokens delivered; the server saw the client go away (its stream record); and the one connection of a
pool of size 1 is free again (the next stream on the same client works). Warnings are errors, so a
leaked response or session fails the test too.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web

from infernet_async import (
    APITimeoutError,
    IncompleteStreamError,
    InfernetClient,
    NodeDisconnectedError,
    Timeouts,
    TokenStream,
)
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import MODEL, MSG, client_for, data_events, raw_server, sse_handler

FIRST3 = "Paris is the"


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    # 5 ms per token, 40 tokens: a stream is still running when a test walks away from it.
    async with DevServer(
        tokens_per_second=200, time_to_first_token=0, answer_tokens=40, heartbeat_interval=None
    ) as srv:
        yield srv


@pytest.fixture
async def client(server: DevServer) -> AsyncIterator[InfernetClient]:
    # One connection: any response we fail to release makes the next request wait forever.
    async with client_for(server.base_url, server.token, max_connections=1) as c:
        yield c


async def read(stream: TokenStream, n: int) -> list[str]:
    out: list[str] = []
    async for token in stream:
        out.append(token)
        if len(out) == n:
            break
    return out


async def assert_released(server: DevServer, client: InfernetClient, job_id: str | None) -> None:
    """The server saw the disconnect, and the single pooled connection serves the next stream."""
    assert job_id is not None
    record = await server.wait_for_stream_close(job_id, timeout=2)
    assert record.closed
    async with asyncio.timeout(5):
        assert await client.complete(model=MODEL, messages=MSG, max_tokens=2)
    gc.collect()


async def test_break_inside_async_with(server: DevServer, client: InfernetClient) -> None:
    async with client.stream(model=MODEL, messages=MSG) as stream:
        assert await read(stream, 3) == ["Paris", " is", " the"]
    assert stream.text == FIRST3 and not stream.finished
    assert stream.terminal_reason == "closed"
    record = await server.wait_for_stream_close(stream.job_id, timeout=2)
    assert record.closed_by_client and not record.completed
    await assert_released(server, client, stream.job_id)


async def test_break_without_async_with_then_aclose(
    server: DevServer, client: InfernetClient
) -> None:
    stream = client.stream(model=MODEL, messages=MSG)
    await read(stream, 3)
    await stream.aclose()
    await stream.aclose()  # idempotent
    assert stream.text == FIRST3
    record = await server.wait_for_stream_close(stream.job_id, timeout=2)
    assert record.closed_by_client
    await assert_released(server, client, stream.job_id)


async def test_break_and_abandon_releases_on_gc_with_a_resource_warning(
    server: DevServer, client: InfernetClient
) -> None:
    stream = client.stream(model=MODEL, messages=MSG)
    await read(stream, 3)
    job_id = stream.job_id
    with pytest.warns(ResourceWarning, match="aclose"):
        del stream
        gc.collect()
    record = await server.wait_for_stream_close(job_id, timeout=2)
    assert record.closed_by_client
    await assert_released(server, client, job_id)


async def test_task_cancel_keeps_text_and_propagates(
    server: DevServer, client: InfernetClient
) -> None:
    server.inject(Fault.stall(after_tokens=3, seconds=10))
    stream = client.stream(model=MODEL, messages=MSG)
    got_three = asyncio.Event()

    async def consume() -> None:
        async with stream:
            async for _ in stream:
                if stream.token_count == 3:
                    got_three.set()

    task = asyncio.create_task(consume())
    await got_three.wait()
    await asyncio.sleep(0.01)  # now blocked reading the stalled stream
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert stream.text == FIRST3 and stream.terminal_reason == "cancelled"
    record = await server.wait_for_stream_close(stream.job_id, timeout=2)
    assert record.closed_by_client
    await assert_released(server, client, stream.job_id)


async def test_cancel_without_async_with_still_releases(
    server: DevServer, client: InfernetClient
) -> None:
    server.inject(Fault.stall(after_tokens=3, seconds=10))
    stream = client.stream(model=MODEL, messages=MSG)

    async def consume() -> None:
        async for _ in stream:
            pass

    task = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        while stream.token_count < 3:
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.text == FIRST3 and stream.closed
    await assert_released(server, client, stream.job_id)


async def test_cancel_before_the_response_arrives() -> None:
    arrived = asyncio.Event()
    answered: list[int] = []

    async def slow(request: web.Request) -> web.StreamResponse:
        answered.append(1)
        if len(answered) == 1:
            arrived.set()
            await asyncio.sleep(10)  # cancelled when the client goes away
        return await sse_handler(data_events("ok"))(request)

    async with raw_server(slow) as url:
        client = client_for(url, max_connections=1)
        async with client:
            stream = client.stream(model=MODEL, messages=MSG)
            task = asyncio.create_task(stream.__aenter__())
            await arrived.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stream.text == "" and stream.closed
            assert stream.terminal_reason == "cancelled"
            async with asyncio.timeout(5):
                assert await client.complete(model=MODEL, messages=MSG) == "ok"


async def test_asyncio_timeout_around_the_loop(server: DevServer, client: InfernetClient) -> None:
    server.inject(Fault.stall(after_tokens=3, seconds=10))
    async with client.stream(model=MODEL, messages=MSG) as stream:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                async for _ in stream:
                    pass
        assert stream.text == FIRST3 and stream.terminal_reason == "cancelled"
    await assert_released(server, client, stream.job_id)


async def test_anyio_move_on_after(server: DevServer, client: InfernetClient) -> None:
    server.inject(Fault.stall(after_tokens=3, seconds=10))
    async with client.stream(model=MODEL, messages=MSG) as stream:
        with anyio.move_on_after(0.2) as scope:
            async for _ in stream:
                pass
    assert scope.cancelled_caught and stream.text == FIRST3
    await assert_released(server, client, stream.job_id)


async def test_error_event(server: DevServer, client: InfernetClient) -> None:
    server.inject(Fault.drop_node(after_tokens=3))
    with pytest.raises(NodeDisconnectedError) as info:
        async with client.stream(model=MODEL, messages=MSG) as stream:
            async for _ in stream:
                pass
    assert info.value.partial_text == stream.text == FIRST3
    await assert_released(server, client, stream.job_id)


@pytest.mark.parametrize("abort", [False, True], ids=["eof", "cut"])
async def test_dropped_connection(server: DevServer, client: InfernetClient, abort: bool) -> None:
    server.inject(Fault.disconnect(after_tokens=3, abort=abort))
    with pytest.raises(IncompleteStreamError) as info:
        async with client.stream(model=MODEL, messages=MSG) as stream:
            async for _ in stream:
                pass
    assert info.value.partial_text == stream.text == FIRST3
    await assert_released(server, client, stream.job_id)


async def test_our_stall_timeout(server: DevServer) -> None:
    server.inject(Fault.stall(after_tokens=3, seconds=10))
    client = client_for(
        server.base_url, server.token, max_connections=1, timeouts=Timeouts(stall=0.3)
    )
    async with client:
        with pytest.raises(APITimeoutError) as info:
            async with client.stream(model=MODEL, messages=MSG) as stream:
                async for _ in stream:
                    pass
        assert info.value.partial_text == stream.text == FIRST3
        assert info.value.job_id == stream.job_id
        record = await server.wait_for_stream_close(stream.job_id, timeout=2)
        assert record.closed_by_client
        await assert_released(server, client, stream.job_id)


async def test_pool_of_one_survives_every_ending_in_a_row(server: DevServer) -> None:
    """N streams in a row on one connection: read to the end, broken out of (three ways),
    cancelled, failed, timed out. Nothing waits for the garbage collector but the GC path."""
    client = client_for(
        server.base_url, server.token, max_connections=1, timeouts=Timeouts(stall=0.3)
    )
    async with client, asyncio.timeout(20):
        for _ in range(2):
            assert await client.complete(model=MODEL, messages=MSG, max_tokens=5)

            async with client.stream(model=MODEL, messages=MSG) as stream:
                await read(stream, 2)

            stream = client.stream(model=MODEL, messages=MSG)
            await read(stream, 2)
            await stream.aclose()

            with pytest.warns(ResourceWarning):
                async for _ in client.stream(model=MODEL, messages=MSG):
                    break  # the stream object is gone after the loop: refcounting frees it
                gc.collect()

            server.inject(Fault.stall(after_tokens=2, seconds=10))
            task = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            server.inject(Fault.drop_node(after_tokens=2))
            with pytest.raises(NodeDisconnectedError):
                async with client.stream(model=MODEL, messages=MSG) as stream:
                    async for _ in stream:
                        pass

            server.inject(Fault.stall(after_tokens=2, seconds=10))
            with pytest.raises(APITimeoutError):
                async with client.stream(model=MODEL, messages=MSG) as stream:
                    async for _ in stream:
                        pass
        assert await client.complete(model=MODEL, messages=MSG, max_tokens=3)
    gc.collect()
    assert server.open_streams == 0


async def test_many_abandoned_streams_in_a_row_do_not_deadlock_a_pool_of_one(
    server: DevServer, client: InfernetClient
) -> None:
    with pytest.warns(ResourceWarning):
        async with asyncio.timeout(10):
            for _ in range(8):
                stream = client.stream(model=MODEL, messages=MSG)
                await read(stream, 1)  # rebinding ``stream`` next round frees the previous one
        del stream
        gc.collect()
    await assert_released(server, client, server.streams[-1].job_id)
