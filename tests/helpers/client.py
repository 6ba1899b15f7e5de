"""Helpers for the client tests: raw aiohttp servers for odd behaviour, a recording sleep.

The DevServer covers the API as the control plane speaks it; ``raw_server`` is for what it cannot
produce on purpose (a proxy's HTML page, redirects, the live plane's 429 body, pings only).
"""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from infernet_async import InfernetClient, RetryPolicy
from infernet_async._pool import StreamPool

MODEL = "qwen2.5:14b"
MSG = [{"role": "user", "content": "What is the capital of France?"}]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MockResponse(aiohttp.ClientResponse):
    """For aioresponses (``response_class=MockResponse``): 0.7.9 predates aiohttp 3.14's required
    ``stream_writer`` argument, so its responses fail to build without this stand-in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


class SleepRecorder:
    """A sleep that records what it was asked and yields once instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def fast_retry(**kw: Any) -> RetryPolicy:
    """A retry policy whose waits cost no time."""
    return RetryPolicy(sleep=kw.pop("sleep", SleepRecorder()), **kw)


def client_for(base_url: str, token: str = "t", **kw: Any) -> InfernetClient:
    kw.setdefault("retry", fast_retry())
    return InfernetClient(base_url, token=token, **kw)


@asynccontextmanager
async def raw_server(handler: Handler, *, path: str = "/{tail:.*}") -> AsyncIterator[str]:
    """An aiohttp server on loopback answering every request with ``handler``; yields its origin."""
    app = web.Application()
    app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def sse_handler(
    chunks: Iterable[bytes | float],
    *,
    headers: dict[str, str] | None = None,
    seen: list[web.Request] | None = None,
) -> Handler:
    """A handler that writes ``chunks`` as an event stream (a float means: sleep that long)."""
    items = list(chunks)

    async def handler(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append(request)
        if request.can_read_body:
            await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
        await resp.prepare(request)
        for item in items:
            if isinstance(item, float):
                await asyncio.sleep(item)
            else:
                await resp.write(item)
        await resp.write_eof()
        return resp

    return handler


def data_events(*texts: str, done: bool = True) -> list[bytes]:
    """The data-only dialect for ``texts``, with ``[DONE]`` at the end unless ``done=False``."""
    out = [f"data: {json.dumps({'text': t})}\n\n".encode() for t in texts]
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


def record_rests(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records the length of every rest a connection of ours takes (``read_interval``)."""
    taken: list[float] = []
    original = StreamPool._rest

    def recorded(self: StreamPool, conn: Any, rest: float) -> None:
        taken.append(rest)
        original(self, conn, rest)

    monkeypatch.setattr(StreamPool, "_rest", recorded)
    return taken
