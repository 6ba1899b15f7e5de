"""``NativeResponse``: an open response on one of our connections, with the surface the retries and
the stream loop use on either stack (``_response.StreamResponse`` is the aiohttp one): ``pump``,
``read_all``, ``read_at_intervals``, ``finish`` and a synchronous ``close``.

A body in a content coding we did not ask for is decoded (``_inflate``) when we can, refused when
we cannot.
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ._connection import BodySink, Connection
from ._http1_head import ResponseHead
from ._inflate import CODINGS, Inflater
from .errors import APIConnectionError

__all__ = ["NativeResponse"]


class NativeResponse:
    """An open response on one of our connections: the same surface as ``StreamResponse``."""

    __slots__ = (
        "_conn",
        "_done",
        "_inflater",
        "content_type",
        "headers",
        "reason",
        "status",
        "url",
    )

    def __init__(self, conn: Connection, head: ResponseHead, url: URL) -> None:
        self._conn = conn
        self._done = False
        self.status = head.status
        self.reason = head.reason
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(head.headers))
        self.url = str(url)
        media = self.headers.get("Content-Type", "application/octet-stream")
        self.content_type = media.split(";", 1)[0].strip().lower()
        coding = self.headers.get("Content-Encoding", "identity").strip().lower()
        self._inflater = Inflater(coding) if coding in CODINGS else None
        if self._inflater is None and coding not in ("identity", ""):
            conn.close()
            raise APIConnectionError(
                f"the server encoded the response with {coding!r}, which we did not ask for "
                "and cannot decode",
                request_sent=True,
            )

    @property
    def closed(self) -> bool:
        return self._done or self._conn.closed

    def read_at_intervals(self, interval: float, *, age: float = 0.0) -> None:
        self._conn.read_at_intervals(interval, age=age)

    async def pump(self, sink: BodySink) -> bool:
        inflater = self._inflater
        if inflater is None:
            return await self._conn.pump(sink)
        more = await self._conn.pump(lambda data: inflater.feed(data, sink))
        if not more:
            inflater.check_end()
        return more

    async def read_all(self, limit: int = 64 * 1024) -> bytes:
        """Up to ``limit`` bytes of a short body (an error, a job object)."""
        body = bytearray()

        def collect(data: bytes) -> bool:
            body.extend(data)
            return len(body) >= limit  # wake the reader only once it has enough

        try:
            await self.pump(collect)
        except APIConnectionError:
            pass  # an error body cut short still says what it can
        return bytes(body[:limit])

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()

    def finish(self) -> None:
        if not self._done:
            self._done = True
            self._conn.finish()
