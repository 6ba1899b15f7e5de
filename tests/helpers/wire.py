"""Loopback servers that speak raw bytes, for the connection tests: a TCP server whose handler
writes what it likes, a request reader, a Content-Length framed event stream, a flood."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from tests.helpers.client import data_events


def peer_port(request: web.Request) -> int:
    assert request.transport is not None
    peer = request.transport.get_extra_info("peername")
    return int(peer[1])


@asynccontextmanager
async def tcp_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A loopback TCP server whose ``handle`` writes raw bytes; yields its origin."""
    tasks: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer)
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def length_delimited_stream(*texts: str) -> bytes:
    """A whole 200 event stream of ``texts`` framed by Content-Length (kept alive)."""
    body = b"".join(data_events(*texts))
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


async def flood(request: web.Request) -> web.StreamResponse:
    """4096 tokens of 1000 characters (4 MiB), as fast as the socket takes them, then [DONE]."""
    event = f"data: {json.dumps({'text': 'x' * 1000})}\n\n".encode()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for _ in range(4096):
        await resp.write(event)
    await resp.write(b"data: [DONE]\n\n")
    return resp
