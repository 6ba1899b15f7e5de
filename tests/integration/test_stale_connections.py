"""A server that closes a kept-alive connection right after a complete response, without
``Connection: close``: the next request must not be lost to that connection.

Before, 25 of 50 back-to-back streams failed with "the server closed the connection before
answering" (aiohttp's own client fails the same way). A closed idle connection is now noticed
before reuse (a peek at the socket) and a GET that meets the close anyway goes once more on a new
connection; a POST written whole and then met by the close is not resent (it may have been read:
a second billed job is worse than an error).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp

from infernet_async import InfernetClient, RetryPolicy
from tests.helpers.client import MODEL, MSG

STREAM = b'data: {"text": "Paris"}\n\ndata: [DONE]\n\n'
MODELS = json.dumps({"models": [{"id": MODEL}]}).encode()
ROUNDS = 50


def _response(content_type: str, body: bytes, job_id: str = "job_1") -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"X-Infernet-Job-Id: {job_id}\r\n\r\n"
    )
    return head.encode() + body


@asynccontextmanager
async def closing_after_each_answer(
    delay: float = 0.0,
) -> AsyncIterator[tuple[str, Callable[[], int]]]:
    """A server that answers one request per connection and then closes it (after ``delay``),
    saying nothing of it; yields its origin and a count of the requests it read."""
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            seen += 1
            path = head.split(b" ", 2)[1]
            if path.endswith(b"/models"):
                writer.write(_response("application/json", MODELS))
            else:
                writer.write(_response("text/event-stream", STREAM))
            await writer.drain()
            if delay:
                await asyncio.sleep(delay)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", lambda: seen
    finally:
        server.close()
        await server.wait_closed()


def no_retries() -> RetryPolicy:
    # The resend is not a retry of the policy's: with none allowed, nothing may fail.
    return RetryPolicy(max_retries=0)


async def test_back_to_back_gets_never_meet_a_closed_connection() -> None:
    async with (
        closing_after_each_answer() as (origin, seen),
        InfernetClient(origin, token="t", api="jobs", retry=no_retries()) as client,
    ):
        for _ in range(ROUNDS):
            async with client.stream_job("job_1") as stream:
                assert await stream.final_text() == "Paris"
    assert seen() == ROUNDS


async def test_a_get_that_meets_the_close_goes_once_more() -> None:
    # The close comes a little after the answer: the connection looks fine when it is reused,
    # and the request meets the close on the way.
    async with (
        closing_after_each_answer(delay=0.02) as (origin, seen),
        InfernetClient(origin, token="t", api="jobs", retry=no_retries()) as client,
    ):
        for _ in range(10):
            async with client.stream_job("job_1") as stream:
                assert await stream.final_text() == "Paris"
            await asyncio.sleep(0.01)  # reused while the server is about to close it
    assert seen() == 10


async def test_back_to_back_posts_never_use_a_connection_closed_after_its_answer() -> None:
    async with (
        closing_after_each_answer() as (origin, seen),
        InfernetClient(origin, token="t", api="jobs", retry=no_retries()) as client,
    ):
        for _ in range(ROUNDS):
            assert await client.complete(model=MODEL, messages=MSG) == "Paris"
    assert seen() == ROUNDS


async def test_json_gets_on_aiohttp_and_on_a_callers_session() -> None:
    async with closing_after_each_answer() as (origin, seen):
        async with InfernetClient(origin, token="t", api="jobs", retry=no_retries()) as client:
            for _ in range(ROUNDS):
                assert [m.id for m in await client.list_models()] == [MODEL]
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
            InfernetClient(
                origin, token="t", api="jobs", retry=no_retries(), session=session
            ) as client,
        ):
            for _ in range(ROUNDS):
                assert [m.id for m in await client.list_models()] == [MODEL]
                async with client.stream_job("job_1") as stream:
                    assert await stream.final_text() == "Paris"
    assert seen() >= 3 * ROUNDS


async def test_a_json_get_that_meets_the_close_goes_once_more() -> None:
    async with (
        closing_after_each_answer(delay=0.02) as (origin, seen),
        InfernetClient(origin, token="t", api="jobs", retry=no_retries()) as client,
    ):
        for _ in range(10):
            assert [m.id for m in await client.list_models()] == [MODEL]
            await asyncio.sleep(0.01)  # reused while the server is about to close it
    assert seen() == 10
