"""Faults on the wire: every failure surfaces as the documented typed error, with the partial text,
and nothing hangs.

Two kinds of server produce the faults. The embedded control plane (``DevServer`` with
``server.inject(Fault...)``) covers what the API itself does wrong: a node dropping mid-stream, a
stream cut off, a stall, a slow drip. A raw loopback socket server (``RawServer`` below) covers what
only a broken network or a proxy does: a TCP reset in the middle of an event, a 502 HTML page, a 200
that is not an event stream, gzip the client did not ask for, bytes after ``[DONE]``. Each test is
bounded by ``asyncio.timeout``; after each fault the same client must still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import struct
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import pytest

from infernet_async import (
    AnswerTooLargeError,
    APIError,
    APITimeoutError,
    BatchRequest,
    EventTooLargeError,
    IncompleteStreamError,
    InfernetClient,
    InfernetError,
    NodeDisconnectedError,
    RateLimitError,
    StreamError,
)
from infernet_async._config import RetryPolicy, Timeouts
from infernet_async.devserver import DevServer, Fault
from infernet_async.sse import DEFAULT_MAX_EVENT_SIZE

BOUND = 10.0  # seconds: every test's hang guard, far above what each needs
MESSAGES = [{"role": "user", "content": "hi"}]
MODEL = "qwen2.5:14b"


# --- A raw loopback HTTP server for what a well-behaved server cannot do --------------------------


@dataclass
class RawRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    index: int


async def read_request(reader: asyncio.StreamReader, index: int) -> RawRequest:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            piece = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += piece[:-2]
    return RawRequest(method, target, headers, body, index)


@dataclass
class Conn:
    """One request on one connection, as a script sees it."""

    request: RawRequest
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def hang(self) -> None:
        """Send nothing more until the client hangs up."""
        with contextlib.suppress(ConnectionError):
            await self.reader.read()

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Script = Callable[[Conn], Awaitable[None]]


class RawServer:
    """A loopback HTTP/1.1 server that hands each request to a script writing raw bytes.

    ``open_connections`` counts sockets the client has not closed yet, so a test can check the
    release.
    """

    def __init__(self, script: Script) -> None:
        self._script = script
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.requests: list[RawRequest] = []
        self.open_connections = 0
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def wait_released(self, timeout: float = 2.0) -> None:
        """Return once the client has closed every connection (fails the test after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while self.open_connections:
                await asyncio.sleep(0.002)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task, not asyncio's: Python 3.11's start_server logs an error for a handler task
        # that was cancelled, and __aexit__ cancels the ones still running.
        task = asyncio.create_task(self._handle(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not writer.is_closing():
                try:
                    request = await read_request(reader, len(self.requests))
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    break
                self.requests.append(request)
                await self._script(Conn(request, reader, writer))
        except ConnectionError:
            pass
        finally:
            self.open_connections -= 1
            writer.close()


def head(
    status: str = "200 OK",
    content_type: str = "text/event-stream",
    extra: dict[str, str] | None = None,
    *,
    chunked: bool = True,
) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", "Cache-Control: no-cache"]
    lines.append("Transfer-Encoding: chunked" if chunked else "Connection: close")
    lines.extend(f"{k}: {v}" for k, v in (extra or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


def token(text: str) -> bytes:
    return b"data: " + json.dumps({"text": text}).encode() + b"\n\n"


async def good_stream(conn: Conn, words: tuple[str, ...] = ("fine", ".")) -> None:
    """A well-formed stream: the answer after each fault, to show the client still works."""
    body = b"".join(token(w) for w in words) + DONE
    await conn.send(head() + chunk(body) + LAST_CHUNK)


def first_then_good(fault: Script) -> Script:
    async def script(conn: Conn) -> None:
        await (fault(conn) if conn.request.index == 0 else good_stream(conn))

    return script


# --- Client helpers -------------------------------------------------------------------------------


def make_client(url: str, **timeouts: float | None) -> InfernetClient:
    """A client without retries (each fault is seen once), generous timeouts unless narrowed."""
    t: dict[str, float | None] = {"connect": 5.0, "read": 5.0, "stall": 5.0, "total": 30.0}
    t.update(timeouts)
    return InfernetClient(
        url,
        token="tok",
        timeouts=Timeouts(**t),
        retry=RetryPolicy(max_retries=0, backoff_base=0.001),
    )


@contextlib.asynccontextmanager
async def raw_client(
    fault: Script, **timeouts: float | None
) -> AsyncIterator[tuple[RawServer, InfernetClient]]:
    async with RawServer(first_then_good(fault)) as server:
        client = make_client(server.url, **timeouts)
        try:
            yield server, client
        finally:
            await client.aclose()


async def collect(client: InfernetClient, seen: list[str] | None = None) -> Any:
    """Read one stream to its end; returns the stream (for ``.text``/``.finished``)."""
    async with client.stream(model=MODEL, messages=MESSAGES) as stream:
        async for piece in stream:
            if seen is not None:
                seen.append(piece)
    return stream


async def read_into(stream: Any, seen: list[str]) -> None:
    """Read a stream to its end, keeping every piece even when the stream raises."""
    async with stream:
        async for piece in stream:
            seen.append(piece)  # noqa: PERF401 - a comprehension would lose them on an error


async def expect_failure(client: InfernetClient, exc_type: type[BaseException]) -> tuple[Any, Any]:
    """Read one stream that must fail with ``exc_type``; returns (stream, error)."""
    stream = client.stream(model=MODEL, messages=MESSAGES)
    with pytest.raises(exc_type) as info:
        async with stream:
            async for _ in stream:
                pass
    return stream, info.value


async def still_works(client: InfernetClient) -> None:
    stream = await collect(client)
    assert stream.text == "fine."
    assert stream.finished


# --- Faults from the embedded control plane -------------------------------------------------------


@contextlib.asynccontextmanager
async def dev_client(
    dialect: Literal["data", "typed"] = "data",
    tokens_per_second: float = 5000,
    **timeouts: float | None,
) -> AsyncIterator[tuple[DevServer, InfernetClient]]:
    async with DevServer(
        tokens_per_second=tokens_per_second,
        time_to_first_token=0,
        answer_tokens=12,
        dialect=dialect,
    ) as server:
        t: dict[str, float | None] = {"connect": 5.0, "read": 5.0, "stall": 5.0, "total": 30.0}
        t.update(timeouts)
        client = InfernetClient(
            server.base_url,
            token=server.token,
            timeouts=Timeouts(**t),
            retry=RetryPolicy(max_retries=0, backoff_base=0.001),
        )
        try:
            yield server, client
        finally:
            await client.aclose()


@pytest.mark.parametrize("dialect", ["data", "typed"])
async def test_node_drop_mid_stream_raises_node_disconnected_with_partial_text(
    dialect: Literal["data", "typed"],
) -> None:
    async with asyncio.timeout(BOUND), dev_client(dialect) as (server, client):
        server.inject(Fault.drop_node(after_tokens=3))
        seen: list[str] = []
        stream = client.stream(model=MODEL, messages=MESSAGES)
        with pytest.raises(NodeDisconnectedError) as info:
            await read_into(stream, seen)
        assert len(seen) == 3
        assert info.value.partial_text == "".join(seen) == stream.text
        assert info.value.job_id is not None and info.value.job_id == stream.job_id
        assert not stream.finished
        ok = await collect(client)
        assert ok.finished and ok.text


async def test_node_drop_before_the_first_token_is_retried_transparently() -> None:
    async with asyncio.timeout(BOUND), dev_client() as (server, client):
        server.inject(Fault.drop_node(after_tokens=0))
        stream = await collect(client)
        assert stream.finished
        reference = await collect(client)
        assert stream.text == reference.text != ""


@pytest.mark.parametrize("dialect", ["data", "typed"])
async def test_dropped_connection_mid_body_is_incomplete_with_partial_text(
    dialect: Literal["data", "typed"],
) -> None:
    async with asyncio.timeout(BOUND), dev_client(dialect) as (server, client):
        server.inject(Fault.disconnect(after_tokens=2, abort=True))
        seen: list[str] = []
        stream = client.stream(model=MODEL, messages=MESSAGES)
        with pytest.raises(IncompleteStreamError) as info:
            await read_into(stream, seen)
        assert len(seen) == 2
        assert info.value.partial_text == "".join(seen) == stream.text


@pytest.mark.parametrize("dialect", ["data", "typed"])
async def test_clean_eof_without_done_is_incomplete_with_partial_text(
    dialect: Literal["data", "typed"],
) -> None:
    async with asyncio.timeout(BOUND), dev_client(dialect) as (server, client):
        server.inject(Fault.disconnect(after_tokens=4))
        seen: list[str] = []
        stream = client.stream(model=MODEL, messages=MESSAGES)
        with pytest.raises(IncompleteStreamError) as info:
            await read_into(stream, seen)
        assert len(seen) == 4
        assert info.value.partial_text == "".join(seen) == stream.text
        await still_works_dev(client)


@pytest.mark.parametrize("dialect", ["data", "typed"])
async def test_stalled_server_fires_the_idle_timeout_and_keeps_the_partial_text(
    dialect: Literal["data", "typed"],
) -> None:
    async with asyncio.timeout(BOUND), dev_client(dialect, read=0.3) as (server, client):
        server.inject(Fault.stall(after_tokens=2, seconds=30))
        seen: list[str] = []
        stream = client.stream(model=MODEL, messages=MESSAGES)
        with pytest.raises(APITimeoutError) as info:
            await read_into(stream, seen)
        assert len(seen) == 2
        assert info.value.partial_text == "".join(seen) == stream.text
        await still_works_dev(client)


async def test_slow_drip_from_the_control_plane_loses_nothing() -> None:
    async with asyncio.timeout(BOUND), dev_client(read=1.0) as (server, client):
        reference = await collect(client)
        server.inject(Fault.slow_drip(byte_delay=0.0005, chunk_size=1))
        stream = await collect(client)
        assert stream.finished
        assert stream.text == reference.text


@pytest.mark.parametrize("dialect", ["data", "typed"])
async def test_stream_job_reconnects_after_a_drop_without_losing_or_repeating_text(
    dialect: Literal["data", "typed"],
) -> None:
    # Slow enough that the job is still generating when the connection drops: a finished job
    # replays as one event, which a fault "after 3 tokens" would never cut.
    async with asyncio.timeout(BOUND), dev_client(dialect, 150) as (server, client):
        job = await client.submit(model=MODEL, messages=MESSAGES)
        server.inject(Fault.disconnect(after_tokens=3, abort=True))
        seen: list[str] = []
        stream = client.stream_job(job.id)
        await read_into(stream, seen)
        answer = (await client.get_job(job.id)).result
        assert answer is not None
        assert stream.finished
        assert "".join(seen) == stream.text == answer.content
        assert len([r for r in server.requests if r.path.endswith("/stream")]) == 2


async def still_works_dev(client: InfernetClient) -> None:
    stream = await collect(client)
    assert stream.finished and stream.text


# --- Faults only a broken network or proxy produces -----------------------------------------------


async def test_tcp_reset_mid_event_keeps_partial_text() -> None:
    gate = asyncio.Event()

    async def fault(conn: Conn) -> None:
        await conn.send(
            head(extra={"X-Infernet-Job-Id": "job_raw1"}) + chunk(token("Par") + token("is"))
        )
        await gate.wait()
        await conn.send(chunk(b'data: {"text": " is the cap'))  # half an event, then RST
        conn.reset()

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        seen: list[str] = []
        stream = client.stream(model=MODEL, messages=MESSAGES)
        with pytest.raises(IncompleteStreamError) as info:
            async with stream:
                async for piece in stream:
                    seen.append(piece)
                    if len(seen) == 2:
                        gate.set()
        assert info.value.partial_text == "Paris" == stream.text
        assert info.value.job_id == "job_raw1" == stream.job_id
        assert not stream.finished
        await still_works(client)
        assert len(server.requests) == 2  # a stream that got a 200 is never re-POSTed


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close-delimited"])
async def test_eof_without_done_is_incomplete(chunked: bool) -> None:
    async def fault(conn: Conn) -> None:
        body = token("Par") + token("is")
        if chunked:
            await conn.send(head() + chunk(body) + LAST_CHUNK)
        else:
            await conn.send(head(chunked=False) + body)
            conn.writer.close()

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        stream, err = await expect_failure(client, IncompleteStreamError)
        assert err.partial_text == "Paris" == stream.text
        await still_works(client)


async def test_stall_fires_the_idle_timeout_with_partial_text_and_releases_the_connection() -> None:
    async def fault(conn: Conn) -> None:
        await conn.send(head() + chunk(token("Par") + token("is")))
        await conn.hang()

    async with asyncio.timeout(BOUND), raw_client(fault, read=0.2) as (server, client):
        stream, err = await expect_failure(client, APITimeoutError)
        assert err.partial_text == "Paris" == stream.text
        await server.wait_released()
        await still_works(client)


async def test_one_byte_at_a_time_loses_nothing() -> None:
    body = b"".join(token(w) for w in ("Par", "is", " é→", ".")) + DONE

    async def fault(conn: Conn) -> None:
        await conn.send(head(chunked=False))
        for i in range(len(body)):
            await conn.send(body[i : i + 1])
            await asyncio.sleep(0.001)
        conn.writer.close()

    # The idle timeout is per read, so a drip much longer in total than it must not trip it.
    async with asyncio.timeout(BOUND), raw_client(fault, read=0.25) as (_, client):
        stream = await collect(client)
        assert stream.text == "Paris é→."
        assert stream.finished


@pytest.mark.parametrize("tokens_first", [0, 2])
async def test_pings_without_tokens_fire_the_stall_timeout(tokens_first: int) -> None:
    async def fault(conn: Conn) -> None:
        await conn.send(head() + chunk(b"".join(token("ab") for _ in range(tokens_first)) or PING))
        while not conn.reader.at_eof():
            await conn.send(chunk(PING))
            await asyncio.sleep(0.02)

    # Heartbeats keep the socket busy (the idle timeout never fires); only the stall timeout can end
    # this.
    timeouts: dict[str, float | None] = {"read": 5.0, "stall": 0.3}
    if tokens_first == 0:
        timeouts["first_token"] = 0.3
    async with asyncio.timeout(BOUND), raw_client(fault, **timeouts) as (server, client):
        stream, err = await expect_failure(client, APITimeoutError)
        assert err.partial_text == "ab" * tokens_first == stream.text
        await server.wait_released()
        await still_works(client)


async def test_proxy_502_html_page_is_an_api_error_with_an_excerpt() -> None:
    page = (
        b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>"
        + (b"<p>nginx</p>" * 2000)
        + b"</body></html>"
    )

    async def fault(conn: Conn) -> None:
        await conn.send(
            head(
                "502 Bad Gateway", "text/html", {"Content-Length": str(len(page))}, chunked=False
            ).replace(b"Connection: close\r\n", b"")
            + page
        )

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        _, err = await expect_failure(client, APIError)
        assert err.status == 502
        assert "502 Bad Gateway" in err.message
        assert len(str(err)) < 500  # an excerpt, not the page
        await still_works(client)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"<html><body>Sign in to the Wi-Fi</body></html>"),
        ("text/plain", b"hello"),
        ("application/json", b'{"status": "pending"}'),
        ("application/json", b"not json at all"),
        ("application/json", b'{"id": "../models", "status": "pending"}'),
        ("application/json", b'{"id": "job_1?x=1#f", "status": "pending"}'),
    ],
    ids=["html", "plain", "json-without-id", "json-broken", "json-hostile-id", "json-query-id"],
)
async def test_200_that_is_not_an_event_stream_is_a_typed_error(
    content_type: str, body: bytes
) -> None:
    async def fault(conn: Conn) -> None:
        await conn.send(head(content_type=content_type) + chunk(body) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        stream, err = await expect_failure(client, InfernetError)
        assert not stream.finished
        assert stream.text == ""
        assert len(server.requests) == 1  # a hostile job id never becomes a request path
        await still_works(client)


async def test_200_with_a_job_object_follows_that_jobs_stream() -> None:
    async def fault(conn: Conn) -> None:
        body = b'{"id": "job_9a3f2c1d", "status": "pending"}'
        await conn.send(head(content_type="application/json") + chunk(body) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        stream = await collect(client)
        assert stream.text == "fine." and stream.finished
        assert stream.job_id == "job_9a3f2c1d"
        assert [(r.method, r.target) for r in server.requests] == [
            ("POST", "/api/v1/jobs"),
            ("GET", "/api/v1/jobs/job_9a3f2c1d/stream"),
        ]


async def test_gzip_encoded_stream_is_decoded_incrementally() -> None:
    gate = asyncio.Event()

    async def fault(conn: Conn) -> None:
        z = zlib.compressobj(wbits=31)
        await conn.send(head(extra={"Content-Encoding": "gzip"}))
        await conn.send(chunk(z.compress(token("Par")) + z.flush(zlib.Z_SYNC_FLUSH)))
        # The rest only once the first token was delivered: a client that waited for the whole gzip
        # body
        # would hang here (and the bound would fail the test).
        await gate.wait()
        await conn.send(chunk(z.compress(token("is") + DONE) + z.flush()) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        seen: list[str] = []
        async with client.stream(model=MODEL, messages=MESSAGES) as stream:
            async for piece in stream:
                seen.append(piece)
                gate.set()
        assert seen == ["Par", "is"]
        assert stream.finished


@pytest.mark.parametrize("coding", ["gzip", "x-gzip"])
async def test_a_gzip_body_of_several_members_is_decoded_whole(coding: str) -> None:
    # RFC 1952 §2.2: members back to back are one gzip body. zlib stops after the first member,
    # so without a restart the second member's tokens (and [DONE]) would be lost.
    async def fault(conn: Conn) -> None:
        first = gzip.compress(token("Pa") + token("r"))
        second = gzip.compress(token("is") + DONE)
        await conn.send(head(extra={"Content-Encoding": coding}))
        await conn.send(chunk(first + second[:5]) + chunk(second[5:]) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        stream = await collect(client)
        assert stream.text == "Paris" and stream.finished


async def test_a_gzip_body_cut_short_fails_naming_the_loss_and_keeps_the_partial_text() -> None:
    async def fault(conn: Conn) -> None:
        z = zlib.compressobj(wbits=31)
        flushed = z.compress(token("Par")) + z.flush(zlib.Z_SYNC_FLUSH)
        rest = z.compress(token("is") + DONE) + z.flush()
        # The HTTP framing is whole (the last chunk comes); the gzip data is not.
        await conn.send(head(extra={"Content-Encoding": "gzip"}) + chunk(flushed + rest[:3]))
        await conn.send(LAST_CHUNK)

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        stream, err = await expect_failure(client, InfernetError)
        assert "ends inside its gzip data" in str(err)
        assert stream.text == "Par" and not stream.finished
        await still_works(client)


async def test_bytes_after_the_end_of_a_deflate_body_are_an_error() -> None:
    async def fault(conn: Conn) -> None:
        body = zlib.compress(token("Par")) + b"trailing"
        await conn.send(head(extra={"Content-Encoding": "deflate"}) + chunk(body) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        stream, err = await expect_failure(client, InfernetError)
        assert "not valid deflate" in str(err) and "after the end" in str(err)
        assert stream.text == "Par"
        await still_works(client)


TYPED_DONE = b'id: 9\nevent: done\ndata: {"text": "a", "reason": "stop"}\n\n'
TYPED_TOKEN = b'id: 10\nevent: token\ndata: {"text": "late"}\n\n'
DIALECTS = pytest.mark.parametrize(
    ("done", "late"),
    [(DONE, token("late")), (TYPED_DONE, TYPED_TOKEN)],
    ids=["data-only", "typed"],
)


@DIALECTS
async def test_duplicate_done_is_harmless(done: bytes, late: bytes) -> None:
    del late  # only the data-after-done test sends it

    async def fault(conn: Conn) -> None:
        await conn.send(head() + chunk(token("a") + done + done) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        stream = await collect(client)
        assert stream.text == "a" and stream.finished
        await still_works(client)


@DIALECTS
async def test_data_after_done_is_ignored_and_the_stream_ends_without_waiting_for_eof(
    done: bytes, late: bytes
) -> None:
    async def fault(conn: Conn) -> None:
        await conn.send(head() + chunk(token("a") + done + late + done))
        await conn.hang()  # never ends the body: the client must stop at [DONE], not at EOF

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        stream = await collect(client)
        assert stream.text == "a"
        assert stream.finished
        assert await stream.final_text() == "a"
        await server.wait_released()
        await still_works(client)


async def test_error_event_then_more_data_keeps_the_text_before_the_error() -> None:
    async def fault(conn: Conn) -> None:
        err = b'data: {"error": "node_disconnected", "message": "Node went offline mid-stream"}\n\n'
        await conn.send(head() + chunk(token("a") + err + token("late")))
        await conn.hang()

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        stream, err = await expect_failure(client, NodeDisconnectedError)
        assert err.partial_text == "a" == stream.text
        await server.wait_released()


async def test_oversized_event_through_the_client_is_event_too_large_and_releases() -> None:
    async def fault(conn: Conn) -> None:
        await conn.send(head() + chunk(token("a") + b"data: "))
        block = chunk(b"x" * (1024 * 1024))
        for _ in range(100):  # 100 MB, unless the client hangs up first (it must)
            await conn.send(block)
        await conn.hang()

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        stream, err = await expect_failure(client, EventTooLargeError)
        assert stream.text == "a"
        await server.wait_released()
        await still_works(client)


async def endless_tokens(conn: Conn) -> None:
    """Ten-character tokens without end, until the client hangs up (it must)."""
    await conn.send(head())
    while not conn.reader.at_eof():
        await conn.send(chunk(token("0123456789") * 50))
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def capped_client(
    fault: Script, max_answer_bytes: int
) -> AsyncIterator[tuple[RawServer, InfernetClient]]:
    async with RawServer(first_then_good(fault)) as server:
        client = InfernetClient(
            server.url,
            token="tok",
            timeouts=Timeouts(connect=5.0, read=5.0, stall=5.0, total=30.0),
            retry=RetryPolicy(max_retries=0),
            max_answer_bytes=max_answer_bytes,
        )
        try:
            yield server, client
        finally:
            await client.aclose()


async def test_an_endless_answer_stops_at_max_answer_bytes_with_the_text_so_far() -> None:
    async with asyncio.timeout(BOUND), capped_client(endless_tokens, 25) as (server, client):
        stream, err = await expect_failure(client, AnswerTooLargeError)
        assert err.limit == 25
        # The token that would pass the limit is not taken: 2 of 10 bytes, not 3.
        assert err.partial_text == stream.text == "0123456789" * 2
        assert not stream.finished
        await server.wait_released()
        await still_works(client)


async def test_a_collected_answer_and_a_fan_out_stop_at_max_answer_bytes_too() -> None:
    async with asyncio.timeout(BOUND), capped_client(endless_tokens, 25) as (server, client):
        with pytest.raises(AnswerTooLargeError) as caught:
            await client.complete(model=MODEL, messages=MESSAGES)
        assert caught.value.partial_text == "0123456789" * 2
        await server.wait_released()
    async with asyncio.timeout(BOUND), capped_client(endless_tokens, 25) as (server, client):
        [outcome] = await client.gather([BatchRequest(model=MODEL, prompt="hi")])
        assert outcome.status == "error" and outcome.error is not None
        assert outcome.error.type == "AnswerTooLargeError"
        assert outcome.text == "0123456789" * 2
        await server.wait_released()


async def test_an_answer_exactly_at_max_answer_bytes_is_whole() -> None:
    async def exact(conn: Conn) -> None:
        body = token("0123456789") + token("0123456789") + token("01234") + DONE
        await conn.send(head() + chunk(body) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), capped_client(exact, 25) as (_, client):
        stream = await collect(client)
        assert stream.finished and len(stream.text) == 25


def test_max_answer_bytes_must_be_positive_or_none() -> None:
    with pytest.raises(ValueError, match="max_answer_bytes"):
        InfernetClient("http://127.0.0.1:1", token="tok", max_answer_bytes=0)
    InfernetClient("http://127.0.0.1:1", token="tok", max_answer_bytes=None)


# --- Broken HTTP around the stream ----------------------------------------------------------------


async def test_a_huge_error_page_is_not_read_whole() -> None:
    # A proxy's error page that never ends: the client reads a bounded excerpt and hangs up.
    async def fault(conn: Conn) -> None:
        await conn.send(
            head("502 Bad Gateway", "text/html") + chunk(b"<html><h1>502 Bad Gateway</h1>")
        )
        block = chunk(b"<p>" + b"x" * 65536 + b"</p>")
        while not conn.reader.at_eof():
            await conn.send(block)

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        _, err = await expect_failure(client, APIError)
        assert err.status == 502 and "502 Bad Gateway" in err.message
        await server.wait_released()
        await still_works(client)


async def test_a_server_that_never_answers_fires_the_read_timeout() -> None:
    async def fault(conn: Conn) -> None:
        await conn.hang()  # the request was read; no status line ever comes

    async with asyncio.timeout(BOUND), raw_client(fault, read=0.2) as (server, client):
        stream, _ = await expect_failure(client, APITimeoutError)
        assert stream.text == ""
        await server.wait_released()
        assert len(server.requests) == 1  # a POST whose fate is unknown is not sent again
        await still_works(client)


@pytest.mark.parametrize(
    "response",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n",
        b"HTTP/1.1 999999999999 What\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    ],
    ids=["not-http", "huge-header", "huge-status", "negative-length", "chunked-and-length"],
)
async def test_malformed_http_responses_are_typed_errors(response: bytes) -> None:
    async def fault(conn: Conn) -> None:
        await conn.send(response)
        conn.writer.close()

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        stream, _ = await expect_failure(client, InfernetError)
        assert stream.text == ""
        await still_works(client)


# Broken chunk framing mid-body must end the stream at once, keep the text and free the
# connection. (Over aiohttp's C parser, 3.14.5, the body reader waited for a timeout instead: one
# reason streams now go over our own connections.)
BROKEN_FRAMING = pytest.mark.parametrize(
    "tail",
    [b"zz\r\nnot a chunk size\r\n", b"ffffffffffffffffffff\r\nabc"],
    ids=["bad-chunk-size", "absurd-chunk-size"],
)


async def read_until_broken_framing(tail: bytes, **timeouts: float | None) -> Exception:
    gate = asyncio.Event()

    async def fault(conn: Conn) -> None:
        await conn.send(head() + chunk(token("Par") + token("is")))
        await gate.wait()  # the framing breaks after the tokens were delivered, not in one read
        await conn.send(tail)
        conn.writer.close()

    async with asyncio.timeout(BOUND), raw_client(fault, **timeouts) as (server, client):
        seen: list[str] = []
        stream = client.stream(model=MODEL, messages=MESSAGES)
        with pytest.raises((StreamError, APITimeoutError)) as info:
            async with stream:
                async for piece in stream:
                    seen.append(piece)
                    if len(seen) == 2:
                        gate.set()
        err = info.value
        assert isinstance(err, StreamError | APITimeoutError)
        assert stream.text == "Paris" == err.partial_text
        assert not stream.finished
        await server.wait_released()
        await still_works(client)
        return err


@BROKEN_FRAMING
async def test_broken_chunked_framing_mid_stream_keeps_the_partial_text(tail: bytes) -> None:
    await read_until_broken_framing(tail, read=0.3, stall=0.3)


@BROKEN_FRAMING
async def test_broken_chunked_framing_is_an_incomplete_stream_at_once(tail: bytes) -> None:
    err = await read_until_broken_framing(tail, read=0.3, stall=0.3)
    assert isinstance(err, IncompleteStreamError)


async def test_content_length_longer_than_the_body_keeps_the_partial_text() -> None:
    body = token("Par") + token("is")

    async def fault(conn: Conn) -> None:
        await conn.send(
            head(chunked=False, extra={"Content-Length": str(len(body) + 1000)}).replace(
                b"Connection: close\r\n", b""
            )
            + body
        )
        conn.writer.close()

    async with asyncio.timeout(BOUND), raw_client(fault) as (_, client):
        stream, err = await expect_failure(client, IncompleteStreamError)
        assert err.partial_text == "Paris" == stream.text


@pytest.mark.parametrize(
    "retry_after",
    ["99999999999", "-5", "nan", "inf", "1e308", "soon", "", "Wed, 21 Oct 2015 07:28:00 GMT"],
)
async def test_hostile_retry_after_values_never_make_the_client_sleep_unbounded(
    retry_after: str,
) -> None:
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    async def fault(conn: Conn) -> None:
        body = b'{"error": "rate_limited", "error_message": "slow down"}'
        await conn.send(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            + f"Retry-After: {retry_after}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async with RawServer(first_then_good(fault)) as server:
        policy = RetryPolicy(max_retries=1, sleep=record)
        client = InfernetClient(server.url, token="tok", timeouts=Timeouts(total=5), retry=policy)
        try:
            async with asyncio.timeout(BOUND):
                try:
                    stream = await collect(client)
                except RateLimitError as exc:  # refused to wait that long: said so, at once
                    assert exc.retry_after is None or exc.retry_after > policy.max_retry_after
                    assert slept == []
                else:
                    assert stream.text == "fine."
                    assert len(slept) == 1
                    assert 0 <= slept[0] <= policy.max_retry_after
        finally:
            await client.aclose()


async def test_a_gzip_bomb_is_stopped_at_the_event_size_limit_with_bounded_memory() -> None:
    # 64 MiB of one line, gzipped to about 64 KB, sent although the client asked for identity.
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"a" * (1 << 20)
    bomb = z.compress(token("Par") + b"data: ") + b"".join(z.compress(block) for _ in range(64))
    bomb += z.flush()

    async def fault(conn: Conn) -> None:
        await conn.send(head(extra={"Content-Encoding": "gzip"}) + chunk(bomb) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        tracemalloc.start()
        try:
            stream, _ = await expect_failure(client, EventTooLargeError)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert stream.text == "Par"
        assert peak < 3 * DEFAULT_MAX_EVENT_SIZE, f"peak {peak / 2**20:.1f} MiB"
        await server.wait_released()
        await still_works(client)


async def test_no_capacity_waits_the_backoff_not_the_rate_limit_window() -> None:
    # Every response carries X-RateLimit-Reset (the end of the rate-limit minute). On a 503
    # no_capacity it is no hint: the client once slept up to 60 s on it, stalling every submission.
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    async def fault(conn: Conn) -> None:
        body = b'{"error": "no_capacity", "error_message": "No online node has capacity"}'
        reset = int(time.time()) + 59
        await conn.send(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            + b"X-RateLimit-Limit: 60\r\nX-RateLimit-Remaining: 59\r\n"
            + f"X-RateLimit-Reset: {reset}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async with RawServer(first_then_good(fault)) as server:
        policy = RetryPolicy(max_retries=1, backoff_base=0.01, sleep=record)
        client = InfernetClient(server.url, token="tok", timeouts=Timeouts(total=5), retry=policy)
        try:
            async with asyncio.timeout(BOUND):
                stream = await collect(client)
        finally:
            await client.aclose()
    assert stream.text == "fine."
    assert len(slept) == 1 and slept[0] <= 0.01


async def test_an_endless_json_answer_is_refused_with_bounded_memory() -> None:
    # REST answers are read whole before parsing: a server (or proxy) that never stops must not be
    # able to fill memory. The client once read a 200 MB body into 400 MiB.
    from infernet_async._transport import _JSON_BODY_LIMIT

    block = chunk(b" " * (1 << 20))

    async def fault(conn: Conn) -> None:
        await conn.send(head(content_type="application/json") + chunk(b'{"models": ['))
        while not conn.reader.at_eof():
            await conn.send(block)

    async with asyncio.timeout(BOUND), raw_client(fault) as (server, client):
        tracemalloc.start()
        try:
            with pytest.raises(APIError) as info:
                await client.list_models()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "larger than" in info.value.message
        assert peak < 3 * _JSON_BODY_LIMIT, f"peak {peak / 2**20:.1f} MiB"
        assert len(server.requests) == 1  # refused, not retried
        await server.wait_released()
        await still_works(client)


async def test_the_answer_limit_counts_utf8_bytes() -> None:
    async def euros(conn: Conn) -> None:
        body = token("€€€€") * 3 + DONE  # 12 characters, 36 bytes
        await conn.send(head() + chunk(body) + LAST_CHUNK)

    async with asyncio.timeout(BOUND), capped_client(euros, 30) as (_, client):
        stream, err = await expect_failure(client, AnswerTooLargeError)
        assert err.partial_text == stream.text == "€€€€" * 2 and err.limit == 30
    async with asyncio.timeout(BOUND), capped_client(euros, 36) as (_, client):
        stream = await collect(client)
        assert stream.finished and stream.text == "€€€€" * 3


async def empty_tokens_after_one(conn: Conn) -> None:
    """One token, then empty ones without end (20 million in 25 s held 300 MB before)."""
    await conn.send(head() + chunk(token("Hi")))
    burst = chunk(token("") * 2000)
    while not conn.reader.at_eof():
        await conn.send(burst)
        await asyncio.sleep(0)


@pytest.mark.parametrize("collecting", [False, True])
async def test_empty_tokens_are_no_progress_and_hold_nothing(collecting: bool) -> None:
    async with RawServer(first_then_good(empty_tokens_after_one)) as server:
        timeouts = Timeouts(connect=5.0, read=5.0, stall=0.3, total=30.0)
        async with InfernetClient(
            server.url, token="tok", timeouts=timeouts, retry=RetryPolicy(max_retries=0)
        ) as client:
            stream = client.stream(model=MODEL, messages=MESSAGES)
            seen: list[str] = []
            with pytest.raises(APITimeoutError) as info:
                async with asyncio.timeout(BOUND), stream:
                    if collecting:
                        await stream.final_text()
                    else:
                        seen.extend([t async for t in stream])
            assert info.value.phase == "stall" and info.value.partial_text == "Hi"
            assert stream.token_count == 1 and seen in ([], ["Hi"])
            acc = stream._acc
            assert acc.nbytes == 2 and len(acc._recent) + len(acc._pieces) <= 1
            await server.wait_released()
