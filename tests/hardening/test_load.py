"""Load: thousands of streams opened and abandoned leave no connection, file descriptor or task
behind.

The server is a minimal asyncio protocol (no HTTP framework) so the client's own cost dominates. The
client has a pool of ONE connection for the sequential cycles: a single leaked connection would make
the next stream wait for the pool forever, and the test's bound would fail it. Before and after, the
test counts /proc/self/fd, the tasks of the loop and the server's open sockets.

``HARDENING_LOAD_CYCLES`` sets the number of sequential cycles (default 10,000) and
``HARDENING_CONCURRENT`` the number of concurrent streams (default 1,000).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from infernet_async import InfernetClient
from infernet_async._config import RetryPolicy, Timeouts

CYCLES = int(os.environ.get("HARDENING_LOAD_CYCLES", "10000"))
CONCURRENT = int(os.environ.get("HARDENING_CONCURRENT", "1000"))
MESSAGES = [{"role": "user", "content": "hi"}]
WORDS = [f"w{i} " for i in range(20)]
FULL_TEXT = "".join(WORDS)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
TOKENS = [_chunk(b"data: " + json.dumps({"text": w}).encode() + b"\n\n") for w in WORDS]
END = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class _Conn(asyncio.Protocol):
    def __init__(self, server: LoadServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.open_connections += 1
        self.server.connections_made += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.server.requests += 1
            self.respond()

    def respond(self) -> None:
        assert self.transport is not None
        mode = self.server.mode
        if mode == "stall":  # one token, then silence until the client goes away
            self.transport.write(HEAD + TOKENS[0])
        elif mode == "full":
            self.transport.write(HEAD + b"".join(TOKENS[:3]) + END)
        else:  # "drip": one token per millisecond
            self.transport.write(HEAD)
            self.drip(0)

    def drip(self, i: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if i == len(TOKENS):
            self.transport.write(END)
            return
        self.transport.write(TOKENS[i])
        self.timer = asyncio.get_running_loop().call_later(0.001, self.drip, i + 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_connections -= 1
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


class LoadServer:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.open_connections = 0
        self.connections_made = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0, backlog=2048)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(server: LoadServer, target: int = 0) -> None:
    """Let closing transports finish, up to a bound."""
    async with asyncio.timeout(5):
        while server.open_connections > target:
            await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)


class Snapshot:
    """File descriptors and tasks at one moment, to compare before and after."""

    def __init__(self) -> None:
        self.fds = fd_count()
        self.tasks = set(asyncio.all_tasks())


def make_client(url: str, *, max_connections: int) -> InfernetClient:
    return InfernetClient(
        url,
        token="tok",
        timeouts=Timeouts(connect=5.0, read=5.0, stall=5.0, total=60.0),
        retry=RetryPolicy(max_retries=0),
        max_connections=max_connections,
    )


async def run_cycles(
    mode: str, cycle: Callable[[InfernetClient, int], Any], *, cycles: int
) -> tuple[float, LoadServer]:
    """Run sequential cycles on one client with a one-connection pool; check nothing leaked."""
    server = LoadServer(mode)
    await server.start()
    try:
        before = Snapshot()
        client = make_client(server.url, max_connections=1)
        started = time.perf_counter()
        # The bound is generous (the cycles take seconds); it is there to turn a pool leak into a
        # failure.
        async with asyncio.timeout(120):
            for i in range(cycles):
                await cycle(client, i)
        elapsed = time.perf_counter() - started
        # Nothing of ours still holds a socket: at most the pool's one idle keep-alive connection
        # remains.
        await settle(server, target=1)
        assert server.open_connections <= 1
        await client.aclose()
        await settle(server)
        after = Snapshot()
        assert server.open_connections == 0
        assert after.fds <= before.fds, f"{after.fds - before.fds} file descriptors leaked"
        assert after.tasks <= before.tasks, f"tasks left behind: {after.tasks - before.tasks}"
    finally:
        await server.stop()
    print(f"\n{cycles} {mode} cycles in {elapsed:.2f} s ({elapsed / cycles * 1e6:.0f} us each)")
    return elapsed, server


async def open_then_cancel(client: InfernetClient, i: int) -> None:
    got_token = asyncio.Event()
    seen: list[str] = []
    streams: list[Any] = []

    async def consume() -> None:
        streams.append(client.stream(model="m", messages=MESSAGES))
        async with streams[0] as stream:
            async for piece in stream:
                seen.append(piece)
                got_token.set()
        raise AssertionError("a stalled stream ended")  # pragma: no cover

    task = asyncio.create_task(consume())
    # Cancel at three points in turn: before the request is out, while waiting for the answer, mid-
    # body.
    if i % 3 == 0:
        await asyncio.sleep(0)
    elif i % 3 == 1:
        for _ in range(3):
            await asyncio.sleep(0)
    else:
        await got_token.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen in ([], [WORDS[0]])
    assert not streams or streams[0].text == "".join(seen)


async def break_after_first(client: InfernetClient, i: int) -> None:
    async with client.stream(model="m", messages=MESSAGES) as stream:
        async for piece in stream:
            assert piece == WORDS[0]
            break
    assert stream.text == WORDS[0]
    assert not stream.finished


async def test_ten_thousand_open_cancel_cycles_leak_nothing() -> None:
    elapsed, server = await run_cycles("stall", open_then_cancel, cycles=CYCLES)
    # Every third cycle waited for a token, so at least that many requests reached the server.
    assert server.requests >= CYCLES // 3


async def test_ten_thousand_breaks_leak_nothing() -> None:
    elapsed, server = await run_cycles("full", break_after_first, cycles=CYCLES)
    assert server.requests == CYCLES


async def test_thousand_concurrent_streams_with_random_cancellations() -> None:
    rng = random.Random(7)
    server = LoadServer("drip")
    await server.start()
    outcomes: dict[str, int] = {"finished": 0, "cancelled": 0, "broke": 0}
    try:
        before = Snapshot()
        client = make_client(server.url, max_connections=100)

        async def one(plan: str, stop_after: int) -> None:
            seen: list[str] = []
            stream = client.stream(model="m", messages=MESSAGES)
            try:
                async with stream:
                    async for piece in stream:
                        seen.append(piece)
                        if plan == "break" and len(seen) == stop_after:
                            break
            except asyncio.CancelledError:
                # Whatever was delivered is still there, in order: nothing lost to the cancellation.
                assert stream.text == "".join(seen)
                assert FULL_TEXT.startswith(stream.text)
                outcomes["cancelled"] += 1
                raise
            assert stream.text == "".join(seen)
            if plan == "break":
                assert seen == WORDS[:stop_after]
                outcomes["broke"] += 1
            else:
                assert stream.text == FULL_TEXT and stream.finished
                outcomes["finished"] += 1

        started = time.perf_counter()
        async with asyncio.timeout(60):
            tasks = []
            for _ in range(CONCURRENT):
                plan = rng.choice(["read", "read", "cancel", "break"])
                tasks.append(asyncio.create_task(one(plan, rng.randint(1, len(WORDS)))))
                if plan == "cancel":
                    asyncio.get_running_loop().call_later(rng.uniform(0, 0.3), tasks[-1].cancel)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - started
        unexpected = [
            r for r in results if r is not None and not isinstance(r, asyncio.CancelledError)
        ]
        assert unexpected == []
        # A task cancelled before its first step never ran ``one``: count cancellations from the
        # results.
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        assert outcomes["finished"] + outcomes["broke"] + cancelled == CONCURRENT
        assert outcomes["cancelled"] > 0 and outcomes["broke"] > 0 and outcomes["finished"] > 0
        await client.aclose()
        await settle(server)
        after = Snapshot()
        assert server.open_connections == 0
        assert after.fds <= before.fds
        assert after.tasks <= before.tasks
    finally:
        await server.stop()
    print(f"\n{CONCURRENT} concurrent streams in {elapsed:.2f} s: {outcomes}")


async def test_abandoned_streams_are_closed_by_the_garbage_collector_with_a_warning() -> None:
    # ``break`` without ``async with`` and without ``aclose()``: the documented fallback is that
    # dropping the stream closes its response and warns. The server never ends these bodies, so only
    # that close can free the connection; with a one-connection pool, a stream that
    # did not give its connection back would block the next one.
    n = max(CYCLES // 10, 1)

    async def bare_break(client: InfernetClient, i: int) -> None:
        stream = client.stream(model="m", messages=MESSAGES)
        async for piece in stream:
            assert piece == WORDS[0]
            break
        assert stream.text == WORDS[0]
        del stream  # the last reference: CPython finalizes it here

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        await run_cycles("stall", bare_break, cycles=n)
    gc.collect()
    resource = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(resource) == n


async def test_concurrent_streams_on_a_chaotic_control_plane_lose_no_text() -> None:
    # Every job attempt's node may drop (seeded); streams follow the re-queued job ("restart"), some
    # are cancelled at random. Whatever happens, no stream may hold text that is not a prefix of
    # its answer, and a finished one holds exactly its answer.
    from infernet_async import NoCapacityError, NodeDisconnectedError
    from infernet_async.devserver import DevServer

    n = max(CONCURRENT // 4, 1)
    rng = random.Random(11)
    async with DevServer(
        tokens_per_second=4000,
        time_to_first_token=0,
        answer_tokens=10,
        node_drop_probability=0.2,
        node_reconnect_delay=0.01,
        rate_limit_per_minute=1_000_000,
        rate_limit_per_hour=1_000_000,
        heartbeat_interval=None,
    ) as server:
        client = InfernetClient(
            server.base_url,
            token=server.token,
            timeouts=Timeouts(connect=5.0, read=5.0, stall=5.0, total=60.0),
            # A dropped node is offline for a moment: a submission may meet 503 no_capacity.
            retry=RetryPolicy(max_retries=8, backoff_base=0.005, max_stream_restarts=3),
        )
        prompts = [f"Tell me about topic {i % 7}" for i in range(n)]
        # The answer for each prompt, from a control plane without chaos (same seed, same text).
        async with (
            DevServer(tokens_per_second=4000, time_to_first_token=0, answer_tokens=10) as calm,
            InfernetClient(calm.base_url, token=calm.token) as ref,
        ):
            answers = {
                p: await ref.complete(model="qwen2.5:14b", messages=msg(p)) for p in set(prompts)
            }
        before = Snapshot()
        outcomes = {"finished": 0, "dropped": 0, "cancelled": 0, "no_capacity": 0}

        async def one(prompt: str) -> None:
            stream = client.stream(
                model="qwen2.5:14b", messages=msg(prompt), on_node_disconnect="restart"
            )
            try:
                async with stream:
                    async for _ in stream:
                        assert answers[prompt].startswith(stream.text)
            except NodeDisconnectedError as exc:  # ran out of restarts
                assert answers[prompt].startswith(exc.partial_text)
                outcomes["dropped"] += 1
                return
            except NoCapacityError:  # every node offline at once, still after the retries
                assert stream.text == ""
                outcomes["no_capacity"] += 1
                return
            except asyncio.CancelledError:
                assert answers[prompt].startswith(stream.text)
                outcomes["cancelled"] += 1
                raise
            assert stream.finished and stream.text == answers[prompt]
            outcomes["finished"] += 1

        async with asyncio.timeout(30):
            tasks = [asyncio.create_task(one(p)) for p in prompts]
            for task in tasks:
                if rng.random() < 0.2:
                    asyncio.get_running_loop().call_later(rng.uniform(0, 0.05), task.cancel)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [
            r for r in results if r is not None and not isinstance(r, asyncio.CancelledError)
        ] == []
        assert outcomes["finished"] >= n // 4
        assert any(s.error == "node_disconnected" for s in server.streams), "no node ever dropped"
        await client.aclose()
        await asyncio.sleep(0.05)
        after = Snapshot()
        assert after.fds <= before.fds
        assert after.tasks <= before.tasks
    print(f"\n{n} streams on a chaotic control plane: {outcomes}")


def msg(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]
