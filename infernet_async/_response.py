"""An open response, whichever stack carries it: ``StreamResponse`` wraps aiohttp's with the
interface of ``_native_response.NativeResponse``, so the retries and the stream's read loop never
ask which one they hold; and the two ways of reading a short body to its end.

Rules: a body read to its end gives the connection back to the pool (``finish()``); one abandoned,
failing or too large closes it (``close()``), so the server sees the disconnect at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ._connection import BodySink
from ._native_response import NativeResponse
from ._transport_errors import map_transport_errors
from .errors import APIConnectionError, APIError

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ERROR_BODY_LIMIT",
    "OpenStream",
    "SendListener",
    "StreamResponse",
    "read_and_release",
    "read_capped",
]

# An error body is for a message; a proxy's 10 MB page is not read whole.
ERROR_BODY_LIMIT = 64 * 1024


class StreamResponse:
    """An open response on aiohttp (JSON requests, or a caller's session), with the interface of
    ``NativeResponse`` (our own connections): ``pump``, ``read_all``, ``read_at_intervals``,
    ``finish``, a synchronous ``close()``; the retries and the stream loop never ask which one
    they hold. Raw chunks come via ``iter_any()``.

    ``close()`` closes the connection (not a keep-alive release: the body was not read to its end),
    so the server sees the disconnect at once and the pool slot is free immediately. It is safe
    after the loop has closed.
    """

    __slots__ = ("_chunks", "_resp", "headers", "reason", "status", "url")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._chunks = resp.content.iter_any()
        self.status = resp.status
        self.reason = resp.reason
        self.headers: Mapping[str, str] = resp.headers
        self.url = str(resp.url)

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    @property
    def closed(self) -> bool:
        return self._resp.closed

    async def read_chunk(self) -> bytes:
        """The next chunk of body bytes as it arrives; ``b""`` at the end of the body."""
        with map_transport_errors(phase="read"):
            try:
                return await self._chunks.__anext__()
            except StopAsyncIteration:
                return b""

    def read_at_intervals(self, interval: float, *, age: float = 0.0) -> None:
        """Not on a caller's session: aiohttp reads each chunk as it comes."""

    async def pump(self, sink: BodySink) -> bool:
        """Read chunks into ``sink`` until it asks for a wake-up (True) or the body ends
        (False)."""
        while True:
            chunk = await self.read_chunk()
            if not chunk:
                return False
            if sink(chunk):
                return True

    async def read_all(self, limit: int = ERROR_BODY_LIMIT) -> bytes:
        """Up to ``limit`` bytes of a short body (an error, a redirect, a job object); a body
        cut short still says what it can, as on our own connections."""
        parts: list[bytes] = []
        size = 0
        try:
            while size < limit:
                chunk = await self.read_chunk()
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
        except APIConnectionError:
            pass
        return b"".join(parts)[:limit]

    def close(self) -> None:
        self._resp.close()

    def finish(self) -> None:
        """The stream ended cleanly: give the connection back to the pool if the body is fully
        read.
        """
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


# A stream's open response: on our own connection (``_connection``), or on a caller's aiohttp
# session.
OpenStream = StreamResponse | NativeResponse
# Told True as each attempt of a request goes out, False as a wait before the next one begins: a
# stream's deadlines run from its request's sending, not from the client's own waits.
SendListener = Callable[[bool], None]


async def read_and_release(resp: OpenStream, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """Read a short body (up to ``limit`` bytes) and give the connection back to the pool if the
    body ended, as an error, a redirect or a job object is: the next request needs no new socket.
    Cancelled or failing, the connection is closed instead."""
    try:
        raw = await resp.read_all(limit)
    except BaseException:
        resp.close()
        raise
    resp.finish()
    return raw


async def read_capped(resp: OpenStream, limit: int) -> bytes:
    """The whole body, or an ``APIError`` (not retried) as soon as it grows past ``limit`` bytes;
    the connection is given back when the body ended, closed otherwise."""
    parts: list[bytes] = []
    size = 0

    def collect(data: bytes) -> bool:
        nonlocal size
        parts.append(data)
        size += len(data)
        return True  # back to the loop after each piece, to check the size

    try:
        while await resp.pump(collect) and size <= limit:
            pass
    except BaseException:
        resp.close()
        raise
    if size > limit:
        resp.close()  # the rest is never read: the connection cannot be reused
        raise APIError(
            f"the server's answer is larger than {limit} bytes; refusing to read it",
            status=resp.status,
        )
    resp.finish()
    return b"".join(parts)
