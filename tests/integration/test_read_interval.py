"""Resting sockets: ``final_text(read_interval=)`` and the fan-out read a stream's socket at most
once per interval once its tokens flow, so one read takes many tokens.

What must hold: every token arrives, in order; the time to first token is not delayed; a rest is
taken only when data comes faster than it lasts, and grows with the response (``rest_length``);
reads are immediate again when the interval is 0, and once the response is done (a pooled
connection must see the server close it); the rest never outlasts a quarter of the stall or read
timeout; cancelling a resting stream releases its connection at once and keeps its text; a
stream handed to ``final_text`` after its first token, and a connection replaying a job after a
drop, rest too; a rest ends in a read of the socket, not a resume of the transport (which stops
reading once an answer), and a reset met by that read is reported as such.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
from asyncio import selector_events
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from infernet_async import (
    BatchRequest,
    IncompleteStreamError,
    InfernetClient,
    Timeouts,
    TokenStream,
)
from infernet_async._connection import Connection as _Connection
from infernet_async._fanout import DEFAULT_READ_INTERVAL
from infernet_async._native_response import NativeResponse
from infernet_async._pool import StreamPool
from infernet_async._resting import rest_length
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import (
    MODEL,
    MSG,
    client_for,
    data_events,
    raw_server,
    record_rests,
    sse_handler,
)

BOUND = 10.0
TOKENS = [f"t{i} " for i in range(30)]
# A long answer: 200 tokens 2 ms apart. With a 80 ms interval the rests grow from 5 ms (after
# 50 ms) to 40 ms (after 400 ms): at most a hundred reads or so, against one a token without.
LONG = [f"w{i} " for i in range(200)]


def paced(texts: list[str], gap: float, *, first_after: float = 0.0) -> list[bytes | float]:
    """The data-only dialect for ``texts``, one event every ``gap`` seconds."""
    events = data_events(*texts)
    chunks: list[bytes | float] = [first_after] if first_after else []
    for event in events:
        chunks += [event, gap]
    return chunks[:-1]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the reads that reach our connections (one ``data_received`` each)."""
    count = [0]
    original = _Connection.data_received

    def counted(self: _Connection, data: bytes) -> None:
        count[0] += 1
        original(self, data)

    monkeypatch.setattr(_Connection, "data_received", counted)
    yield count


@pytest.fixture
def rests(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    return record_rests(monkeypatch)


async def start_resting(stream: TokenStream) -> asyncio.Task[str]:
    """``final_text`` in a task, returned once the stream's socket rests (10 ms rests from 0.1 s
    on, with tokens 2 ms apart)."""
    task = asyncio.create_task(stream.final_text(read_interval=0.16))
    async with asyncio.timeout(BOUND):
        while not isinstance(stream._resp, NativeResponse) or not stream._resp._conn._resting:
            await asyncio.sleep(0.005)
    return task


async def collect(client: InfernetClient, *, read_interval: float) -> tuple[str, float | None]:
    stream = client.stream(model=MODEL, messages=MSG)
    async with stream:
        text = await stream.final_text(read_interval=read_interval)
    return text, stream.time_to_first_token


@pytest.mark.parametrize(
    ("interval", "sparse_for", "gap", "rest"),
    [
        (0.0, 100.0, 0.0, 0.0),  # off
        (0.08, 100.0, 0.001, 0.08),  # a long response, data coming fast: the whole interval
        (0.08, 0.5, 0.001, 0.04),  # at most a tenth of the request's age
        (0.08, 0.1, 0.001, 0.01),
        (0.08, 0.05, 0.001, 0.005),  # the shortest: a sixteenth of the interval
        (0.08, 0.049, 0.001, 0.0),  # shorter than that: no rest
        (0.08, 0.0, 0.0, 0.0),  # a request just sent
        (0.08, 100.0, 0.08, 0.0),  # data comes no faster than the rest would last
        (0.08, 100.0, 0.079, 0.08),
        (0.08, 0.1, 0.02, 0.0),  # the rest would be 10 ms; data comes every 20 ms
    ],
)
def test_rest_length(interval: float, sparse_for: float, gap: float, rest: float) -> None:
    assert rest_length(interval, sparse_for, gap) == rest


async def test_a_resting_socket_takes_many_tokens_a_read(reads: list[int]) -> None:
    async with raw_server(sse_handler(paced(LONG, 0.002))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            text, _ = await collect(client, read_interval=0.08)
    assert text == "".join(LONG)
    assert reads[0] <= len(LONG) // 2


async def test_rests_grow_with_the_request_s_age_not_the_answer_s(reads: list[int]) -> None:
    # The first token after 0.5 s (a queue, a prefill): the rests may be 40-80 ms at once, so 31
    # events 2 ms apart take a few reads (one a token if the rests started from the first token).
    chunks = paced(TOKENS, 0.002, first_after=0.5)
    async with raw_server(sse_handler(chunks)) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            text, first = await collect(client, read_interval=0.08)
    assert text == "".join(TOKENS)
    assert first is not None and first >= 0.5
    assert reads[0] <= 10


async def test_a_slow_stream_is_read_as_it_comes(rests: list[float]) -> None:
    # Tokens 30 ms apart never come faster than a rest (at most 25 ms here) would last.
    async with raw_server(sse_handler(paced(TOKENS[:12], 0.03))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            text, _ = await collect(client, read_interval=0.025)
    assert text == "".join(TOKENS[:12])
    assert rests == []


async def test_final_text_after_some_tokens_rests_at_once(rests: list[float]) -> None:
    # The first token was taken by iteration: final_text must apply its interval itself.
    async with raw_server(sse_handler(paced(LONG, 0.002))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            stream = client.stream(model=MODEL, messages=MSG)
            async with stream:
                first = await anext(stream)
                rest = await stream.final_text(read_interval=0.08)
    assert first == LONG[0] and rest == "".join(LONG)
    assert rests


async def test_a_replay_after_a_dropped_connection_rests_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The connection drops after 3 tokens; the stream reconnects and replays the job. The new
    # connection gets the interval although its first token is not the stream's first.
    rested_on: set[int] = set()
    original = _Connection.read_at_intervals

    def noted(self: _Connection, interval: float, *, age: float = 0.0) -> None:
        if interval:
            rested_on.add(id(self))
        original(self, interval, age=age)

    monkeypatch.setattr(_Connection, "read_at_intervals", noted)
    async with (
        DevServer(tokens_per_second=500, time_to_first_token=0, answer_tokens=200) as server,
        InfernetClient(server.base_url, token=server.token) as client,
    ):
        async with asyncio.timeout(BOUND):
            job = await client.submit(model=MODEL, messages=MSG)
            server.inject(Fault.disconnect(after_tokens=3, abort=True))
            stream = client.stream_job(job.id)
            async with stream:
                text = await stream.final_text(read_interval=0.08)
            answer = (await client.get_job(job.id)).result
    assert answer is not None and text == answer.content
    assert len([r for r in server.requests if r.path.endswith("/stream")]) == 2
    assert len(rested_on) == 2  # both connections


async def test_read_interval_zero_reads_every_chunk_as_it_comes(reads: list[int]) -> None:
    async with raw_server(sse_handler(paced(LONG, 0.002))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            text, _ = await collect(client, read_interval=0.0)
    assert text == "".join(LONG)
    assert reads[0] > len(LONG) // 2


async def test_the_first_token_is_not_delayed() -> None:
    # A ping, then the first token 100 ms later: resting from the ping on would see it at 1 s.
    chunks: list[bytes | float] = [b": ping\n\n", 0.1, *paced(TOKENS[:3], 0.0)]
    async with raw_server(sse_handler(chunks)) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            text, first = await collect(client, read_interval=1.0)
    assert text == "".join(TOKENS[:3])
    assert first is not None and first < 0.8


async def test_the_connection_reads_again_once_back_in_the_pool() -> None:
    async with raw_server(sse_handler(paced(TOKENS, 0.002))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            stream = client.stream(model=MODEL, messages=MSG)
            async with stream:
                resp = stream._resp
                assert isinstance(resp, NativeResponse)
                conn = resp._conn
                await stream.final_text(read_interval=0.5)
            # Idle, it must watch the socket, or it would never see the server close it.
            transport = conn._transport
            assert transport is not None and transport.is_reading()
            assert not conn._resting and conn._read_interval == 0.0
            again, _ = await collect(client, read_interval=0.0)
            assert again == "".join(TOKENS)
            assert client._transport._binding is not None
            assert client._transport._binding.pool.open_connections == 1  # reused


@pytest.mark.parametrize(
    "timeouts", [Timeouts(stall=0.2), Timeouts(read=0.2, stall=None)], ids=["stall", "read"]
)
async def test_the_rest_is_at_most_a_quarter_of_the_timeouts(
    rests: list[float], timeouts: Timeouts
) -> None:
    # Tokens every 20 ms for 0.6 s: asked for 5 s, the rests are at most 50 ms, and taken (from
    # 0.25 s on, when they outlast the gap); a 5 s interval would take none this early.
    async with (
        raw_server(sse_handler(paced(TOKENS, 0.02))) as url,
        client_for(url, timeouts=timeouts) as client,
    ):
        async with asyncio.timeout(BOUND):
            text, _ = await collect(client, read_interval=5.0)
    assert text == "".join(TOKENS)
    assert rests and max(rests) <= 0.05


async def test_cancelling_a_resting_stream_releases_its_connection_and_keeps_its_text() -> None:
    chunks = paced(LONG, 0.002)
    async with raw_server(sse_handler(chunks)) as url, client_for(url) as client:
        stream = client.stream(model=MODEL, messages=MSG)
        async with stream:
            task = await start_resting(stream)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stream.text.startswith(LONG[0])
        assert client._transport._binding is not None
        assert client._transport._binding.pool.open_connections == 0


async def test_closing_the_client_while_a_socket_rests_leaves_nothing_behind() -> None:
    chunks = paced(LONG, 0.002)
    async with raw_server(sse_handler(chunks)) as url:
        client = client_for(url)
        async with client:
            stream = client.stream(model=MODEL, messages=MSG)
            await stream.__aenter__()
            task = await start_resting(stream)
        # The client closed the connection under the reader: the read fails, it does not hang.
        async with asyncio.timeout(BOUND):
            with pytest.raises(Exception, match="closed"):
                await task
        await stream.__aexit__(None, None, None)
        assert client._transport._binding is None or (
            client._transport._binding.pool._resting == {}
        )
        gc.collect()  # -W error: an unclosed transport would warn here


async def test_the_fan_out_rests_sockets_by_default(reads: list[int]) -> None:
    requests = [BatchRequest(id=str(i), model=MODEL, prompt="q") for i in range(4)]
    async with raw_server(sse_handler(paced(LONG, 0.002))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            outcomes = await client.gather(requests, concurrency=4)
    assert [o.text for o in outcomes] == ["".join(LONG)] * 4
    assert DEFAULT_READ_INTERVAL == 0.1
    assert reads[0] <= 4 * len(LONG) * 2 // 3


async def test_the_fan_out_reads_every_chunk_with_read_interval_zero(reads: list[int]) -> None:
    requests = [BatchRequest(id=str(i), model=MODEL, prompt="q") for i in range(2)]
    async with raw_server(sse_handler(paced(LONG, 0.002))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            outcomes = await client.gather(requests, concurrency=2, read_interval=0)
    assert [o.text for o in outcomes] == ["".join(LONG)] * 2
    assert reads[0] > 2 * len(LONG) * 2 // 3


async def test_a_negative_read_interval_is_refused() -> None:
    async with raw_server(sse_handler(paced(TOKENS[:1], 0.0))) as url, client_for(url) as client:
        stream = client.stream(model=MODEL, messages=MSG)
        async with stream:
            with pytest.raises(ValueError, match="read_interval"):
                await stream.final_text(read_interval=-1)
        with pytest.raises(ValueError, match="read_interval"):
            client.map([], read_interval=-0.1)


_SelectorTransport = selector_events._SelectorTransport  # type: ignore[attr-defined]


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the times a selector transport stops reading (one ``epoll_ctl`` each)."""
    count = [0]
    original = _SelectorTransport.pause_reading

    def counted(self: asyncio.Transport) -> None:
        if self.is_reading():
            count[0] += 1
        original(self)

    monkeypatch.setattr(_SelectorTransport, "pause_reading", counted)
    return count


async def test_a_rest_ends_in_a_read_not_a_resume(rests: list[float], pauses: list[int]) -> None:
    # Each rest ends with a read of what the kernel gathered, and the next rest begins from it:
    # the transport stops reading once for the whole answer, not once a rest.
    async with raw_server(sse_handler(paced(LONG, 0.002))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            text, _ = await collect(client, read_interval=0.08)
    assert text == "".join(LONG)
    assert len(rests) >= 5
    assert pauses[0] <= 2


@asynccontextmanager
async def resetting_server(events: list[bytes], gap: float) -> AsyncIterator[str]:
    """A server that answers with ``events``, ``gap`` seconds apart, then resets the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for event in events:
            await asyncio.sleep(gap)
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
        # Right after the last event, while the client rests (it would stop resting once a
        # rest found nothing new).
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_reset_during_a_rest_is_reported_with_the_text_so_far() -> None:
    # The read that ends the rest meets the reset: it must say so (read again, the socket would
    # only show an end), and every token sent before it is kept.
    sent = LONG[:100]
    async with (
        resetting_server(data_events(*sent, done=False), 0.002) as url,
        client_for(url) as client,
    ):
        stream = client.stream(model=MODEL, messages=MSG)
        async with asyncio.timeout(BOUND), stream:
            with pytest.raises(IncompleteStreamError, match="reset by peer") as caught:
                await stream.final_text(read_interval=0.08)
    assert caught.value.partial_text == stream.text == "".join(sent)


async def test_a_fault_in_a_resting_connection_ends_its_stream_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug met by the read that ends a rest fails that stream with it; the stream resting beside
    # it reads on (one timer ends both rests).
    first_to_rest: list[_Connection] = []
    original_rest, original_received = StreamPool._rest, _Connection.data_received

    def rest(self: StreamPool, conn: _Connection, interval: float) -> None:
        first_to_rest.append(conn)
        original_rest(self, conn, interval)

    def received(self: _Connection, data: bytes) -> None:
        if first_to_rest and self is first_to_rest[0] and not self._resting:
            raise RuntimeError("a fault of ours")
        original_received(self, data)

    monkeypatch.setattr(StreamPool, "_rest", rest)
    monkeypatch.setattr(_Connection, "data_received", received)
    async with raw_server(sse_handler(paced(LONG, 0.002))) as url, client_for(url) as client:
        async with asyncio.timeout(BOUND):
            results = await asyncio.gather(
                collect(client, read_interval=0.08),
                collect(client, read_interval=0.08),
                return_exceptions=True,
            )
    faults = [r for r in results if isinstance(r, RuntimeError)]
    assert len(faults) == 1 and str(faults[0]) == "a fault of ours"
    assert [r[0] for r in results if isinstance(r, tuple)] == ["".join(LONG)]
