"""End to end: K concurrent streams against the embedded control plane in its own process.

Each client runs in a fresh process of its own against a ``DevServer`` process (one node that runs
every job at once, no rate limit worth the name, heartbeats off):

- ``infernet_async``: ``client.map(requests, concurrency=K)`` (the fan-out of issue 5), whose
  sockets rest between reads while tokens come fast (``read_interval``, 0.1 s by default);
- ``infernet_async_eager``: the same with ``read_interval=0``: every chunk read as it comes;
- ``httpx_guide``: the streaming guide's async httpx loop (``aiter_lines`` + ``json.loads``), with
  one shared ``AsyncClient`` (the guide builds one per call, which would only cost it more);
- ``httpx_sse``: httpx + httpx-sse (``aconnect_sse`` / ``aiter_sse``);
- ``aiohttp_sse_client2``: aiohttp + aiohttp-sse-client2's ``EventSource`` (POST);
- ``aiohttp_floor``: not a peer: aiohttp's ``iter_any`` with no SSE parsing at all;
- ``asyncio_floor``: not a peer, the floor of any asyncio client: a bare ``asyncio.Protocol`` that
  sends the request and counts ``\n\n`` in what it receives, with no HTTP or SSE parsing and no
  task woken per read. What it costs per token is the event loop's and the kernel's share.
- ``socket_floor``: not in the default run (``--clients ...,socket_floor``): the same job without
  asyncio's transports, a non-blocking socket on the loop's ``add_reader``/``add_writer``.

On the OpenAI-compatible surface (``POST /v1/chat/completions``, ``stream: true``, no token):

- ``openai_python``: the official ``openai`` package, ``AsyncOpenAI(max_retries=0)`` and
  ``chat.completions.create(stream=True)``, ``chunk.choices[0].delta.content`` of every chunk;
- ``infernet_async_openai``: ours with ``api="openai"``, the interactive path: one
  ``client.stream(...)`` per answer, every token read with ``async for token in stream``;
- ``infernet_async_openai_map``: ours with ``api="openai"`` driven as ``infernet_async`` is, the
  fan-out ``client.map(requests, concurrency=K)`` (its sockets rest between reads).

Peers run their K streams with ``asyncio.gather`` on one shared client with a pool of K (the
``openai`` client's own pool: up to 1,000 connections), as does ``infernet_async_openai``.

The clients that keep the answer text (``openai_python`` and ours on the OpenAI surface) have it
checked, after the timing, against the text the DevServer's deterministic generator gives that
prompt: a wrong answer counts as an error.

Two regimes, each at every K: ``paced`` (model speed: the server sends ``--server-rate`` tokens/s in
all, shared by the K streams, each lasting at least ``--duration`` s, so all K are open at once
and every token arrives in a chunk of its own) and ``fast`` (the server generates as fast as it
can: ``--fast-tokens`` tokens shared by the K answers; events pile up between two reads).

Reported per client, regime and K (best of ``--repeat`` interleaved runs, by CPU per token, with
the most errors of any run): client CPU time per token (user + system CPU of the client process
while streaming, from ``resource.getrusage``, connection setup included), tokens/s, peak RSS per
open stream (peak RSS while streaming, sampled every 20 ms, less the RSS before, over K), streams
open at once, and the time-to-first-token overhead: the client's median TTFT less the server's own
figure (the node's time to first token plus one token interval). Then the ceiling: K doubling
from twice the largest ``--ks`` until a run has an error (or ``--max-k``).

Usage::

    python benchmarks/bench_e2e.py --markdown         # the README tables (about 15 minutes)
    python benchmarks/bench_e2e.py --ks 100 --no-ceiling --repeat 1 --clients infernet_async
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._devserver_process import MODEL, TOKEN, ServerProcess, bench_devserver  # noqa: E402

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLIENTS = (
    "infernet_async",
    "infernet_async_eager",
    "httpx_guide",
    "httpx_sse",
    "aiohttp_sse_client2",
    "aiohttp_floor",
    "asyncio_floor",
    "openai_python",
    "infernet_async_openai",
    "infernet_async_openai_map",
)


# ---------------------------------------------------------------- the server process


def serve(args: argparse.Namespace) -> None:
    """Run the DevServer with one node that serves every stream at once, until stdin closes."""

    async def run_server() -> None:
        async with bench_devserver(
            tokens_per_second=args.rate,
            time_to_first_token=args.ttft,
            answer_tokens=args.answer_tokens,
        ):
            loop = asyncio.get_running_loop()
            # The driver closes our stdin to stop us (also when it dies).
            await loop.run_in_executor(None, sys.stdin.read)

    asyncio.run(run_server())


# ---------------------------------------------------------------- the clients


@dataclass
class StreamTimes:
    started: float
    first: float | None = None
    ended: float = 0.0
    tokens: int = 0
    error: str | None = None
    # The answer and the request's number, for the clients whose text is checked after the run.
    text: str | None = None
    index: int = -1


def _body(max_tokens: int, i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Benchmark question number {i}."}],
        "max_tokens": max_tokens,
        "stream": True,
    }


def expected_text(i: int, max_tokens: int) -> str:
    """The answer the DevServer sends request ``i`` (seed 0, ``answer_tokens`` = ``max_tokens``)."""
    from infernet_async.devserver._generator import LocalGenerator

    tokens, _ = LocalGenerator(seed=0, answer_tokens=max_tokens).tokens(
        MODEL, _body(max_tokens, i)["messages"], max_tokens
    )
    return "".join(tokens)


def check_answers(times: list[StreamTimes], max_tokens: int) -> None:
    """Turn every kept answer that is not the expected text into an error (outside the timing)."""
    for record in times:
        if record.text is None or record.error is not None:
            continue
        expected = expected_text(record.index, max_tokens)
        if record.text != expected:
            record.error = f"answer {record.index}: {record.text[:60]!r} != {expected[:60]!r}"


def _origin(url: str) -> str:
    """The server's origin from the jobs API's base URL (``.../api/v1``)."""
    return url.removesuffix("/").removesuffix("/api/v1")


async def run_infernet_async(
    url: str, k: int, max_tokens: int, **fan_out_options: Any
) -> list[StreamTimes]:
    from infernet_async import BatchRequest, InfernetClient

    times: list[StreamTimes] = []
    requests = (
        BatchRequest(
            id=str(i),
            model=MODEL,
            prompt=f"Benchmark question number {i}.",
            max_tokens=max_tokens,
        )
        for i in range(k)
    )
    async with (
        InfernetClient(url, TOKEN, max_connections=k) as client,
        client.map(requests, concurrency=k, **fan_out_options) as outcomes,
    ):
        async for outcome in outcomes:
            ended = time.perf_counter()
            started = ended - outcome.latency
            # From the job's start, as for the peers: the wait before sending (the shared rate
            # limiter's) counts.
            first = (
                started + (outcome.time_to_send or 0.0) + outcome.time_to_first_token
                if outcome.time_to_first_token is not None
                else None
            )
            error = None if outcome.ok else f"{outcome.error}"
            times.append(StreamTimes(started, first, ended, outcome.tokens, error))
    return times


async def run_infernet_async_eager(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    return await run_infernet_async(url, k, max_tokens, read_interval=0.0)


async def run_httpx_guide(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    import httpx

    limits = httpx.Limits(max_connections=k, max_keepalive_connections=k)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(i: int) -> StreamTimes:
            record = StreamTimes(time.perf_counter())
            try:
                # The guide's loop, word for word but for the print.
                async with client.stream(
                    "POST",
                    f"{url}/jobs",
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/json",
                        "Accept": "text/event-stream",
                    },
                    json=_body(max_tokens, i),
                ) as response:
                    response.raise_for_status()
                    full_response = ""
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            event = json.loads(data)
                            if "text" in event:
                                full_response += event["text"]
                                if record.first is None:
                                    record.first = time.perf_counter()
                                record.tokens += 1
                        except json.JSONDecodeError:
                            pass
            except Exception as exc:
                record.error = repr(exc)
            record.ended = time.perf_counter()
            return record

        return list(await asyncio.gather(*(one(i) for i in range(k))))


async def run_httpx_sse(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    import httpx
    from httpx_sse import aconnect_sse

    limits = httpx.Limits(max_connections=k, max_keepalive_connections=k)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:

        async def one(i: int) -> StreamTimes:
            record = StreamTimes(time.perf_counter())
            parts: list[str] = []
            try:
                async with aconnect_sse(
                    client, "POST", f"{url}/jobs", json=_body(max_tokens, i)
                ) as source:
                    source.response.raise_for_status()
                    async for sse in source.aiter_sse():
                        if sse.data == "[DONE]":
                            break
                        event = json.loads(sse.data)
                        if "error" in event:
                            raise RuntimeError(event.get("message"))
                        parts.append(event["text"])
                        if record.first is None:
                            record.first = time.perf_counter()
                        record.tokens += 1
            except Exception as exc:
                record.error = repr(exc)
            record.ended = time.perf_counter()
            return record

        return list(await asyncio.gather(*(one(i) for i in range(k))))


async def run_aiohttp_sse_client2(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    import aiohttp
    from aiohttp_sse_client2 import client as sse_client

    connector = aiohttp.TCPConnector(limit=k)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> StreamTimes:
            record = StreamTimes(time.perf_counter())
            parts: list[str] = []
            try:
                async with sse_client.EventSource(
                    f"{url}/jobs",
                    option={"method": "POST"},
                    session=session,
                    json=_body(max_tokens, i),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    max_connect_retry=0,
                ) as source:
                    async for event in source:
                        if event.data == "[DONE]":
                            break
                        payload = json.loads(event.data)
                        if "error" in payload:
                            raise RuntimeError(payload.get("message"))
                        parts.append(payload["text"])
                        if record.first is None:
                            record.first = time.perf_counter()
                        record.tokens += 1
            except Exception as exc:
                record.error = repr(exc)
            record.ended = time.perf_counter()
            return record

        return list(await asyncio.gather(*(one(i) for i in range(k))))


async def run_aiohttp_floor(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    """Not a peer: aiohttp's ``iter_any`` with no SSE parsing at all, the transport's own cost."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=k)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> StreamTimes:
            record = StreamTimes(time.perf_counter())
            try:
                async with session.post(
                    f"{url}/jobs", json=_body(max_tokens, i), headers=headers
                ) as response:
                    async for chunk in response.content.iter_any():
                        if record.first is None:
                            record.first = time.perf_counter()
                        record.tokens += chunk.count(b"\n\n")
                record.tokens -= 1  # [DONE]
            except Exception as exc:
                record.error = repr(exc)
            record.ended = time.perf_counter()
            return record

        return list(await asyncio.gather(*(one(i) for i in range(k))))


class _CountingProtocol(asyncio.Protocol):
    """The asyncio floor: counts event ends, parses nothing, wakes its task only at the end."""

    def __init__(self, record: StreamTimes, done: asyncio.Future[None]) -> None:
        self.record = record
        self.done = done

    def data_received(self, data: bytes) -> None:
        events = data.count(b"\n\n")
        if events:
            if self.record.first is None:
                self.record.first = time.perf_counter()
            self.record.tokens += events

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _floor_request(parts: SplitResult, max_tokens: int, i: int) -> bytes:
    """The floors' request, written by hand: the server closes the connection after the answer."""
    body = json.dumps(_body(max_tokens, i)).encode()
    head = (
        f"POST {parts.path.rstrip('/')}/jobs HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def run_asyncio_floor(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    """Not a peer: the event loop's own cost per token (see the module docstring)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()

    async def one(i: int) -> StreamTimes:
        record = StreamTimes(time.perf_counter())
        try:
            request = _floor_request(parts, max_tokens, i)
            done: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda: _CountingProtocol(record, done), host, port
            )
            try:
                transport.write(request)
                await done  # the server closes after the response (Connection: close)
            finally:
                transport.close()
            record.tokens -= 1  # [DONE]
        except Exception as exc:
            record.error = repr(exc)
        record.ended = time.perf_counter()
        return record

    return list(await asyncio.gather(*(one(i) for i in range(k))))


async def run_socket_floor(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    """Not a peer, and not in the default run: the ``asyncio_floor`` job without asyncio's
    transports, on the loop's ``add_reader``/``add_writer`` and a non-blocking socket (what is
    left when a client gives up transports too; selector loops and uvloop)."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    loop = asyncio.get_running_loop()

    async def one(i: int) -> StreamTimes:
        record = StreamTimes(time.perf_counter())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            request = _floor_request(parts, max_tokens, i)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = sock.fileno()
            connected: asyncio.Future[None] = loop.create_future()
            if sock.connect_ex(address) == errno.EINPROGRESS:
                loop.add_writer(fd, connected.set_result, None)
                try:
                    await connected
                finally:
                    loop.remove_writer(fd)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            sock.sendall(request)  # a few hundred bytes: the socket buffer takes them at once
            done: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                data = sock.recv(262144)
                if not data:
                    loop.remove_reader(fd)
                    done.set_result(None)
                    return
                events = data.count(b"\n\n")
                if events:
                    if record.first is None:
                        record.first = time.perf_counter()
                    record.tokens += events

            loop.add_reader(fd, readable)
            try:
                await done  # the server closes after the response (Connection: close)
            finally:
                loop.remove_reader(fd)
            record.tokens -= 1  # [DONE]
        except Exception as exc:
            record.error = repr(exc)
        finally:
            sock.close()
        record.ended = time.perf_counter()
        return record

    return list(await asyncio.gather(*(one(i) for i in range(k))))


# ---------------------------------------------------------------- the OpenAI-compatible surface


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Benchmark question number {i}."}]


async def run_openai_python(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    """The official ``openai`` client against ``/v1``: its default pool (1,000 connections)."""
    import openai

    async with openai.AsyncOpenAI(
        base_url=_origin(url) + "/v1", api_key="unused", max_retries=0
    ) as client:

        async def one(i: int) -> StreamTimes:
            record = StreamTimes(time.perf_counter(), index=i)
            parts: list[str] = []
            try:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"Benchmark question number {i}."}],
                    max_tokens=max_tokens,
                    stream=True,
                )
                async with stream:
                    async for chunk in stream:
                        content = chunk.choices[0].delta.content
                        if content:  # not the role chunk nor the finish chunk
                            parts.append(content)
                            if record.first is None:
                                record.first = time.perf_counter()
                            record.tokens += 1
            except Exception as exc:
                record.error = repr(exc)
            record.text = "".join(parts)
            record.ended = time.perf_counter()
            return record

        return list(await asyncio.gather(*(one(i) for i in range(k))))


async def run_infernet_async_openai(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    """Ours on ``/v1``, the interactive path: a ``TokenStream`` per answer, every token read."""
    from infernet_async import InfernetClient

    async with InfernetClient(_origin(url), api="openai", max_connections=k) as client:

        async def one(i: int) -> StreamTimes:
            record = StreamTimes(time.perf_counter(), index=i)
            stream = client.stream(model=MODEL, messages=_messages(i), max_tokens=max_tokens)
            try:
                async with stream:
                    async for _token in stream:
                        if record.first is None:
                            record.first = time.perf_counter()
                        record.tokens += 1
            except Exception as exc:
                record.error = repr(exc)
            record.text = stream.text
            record.ended = time.perf_counter()
            return record

        return list(await asyncio.gather(*(one(i) for i in range(k))))


async def run_infernet_async_openai_map(url: str, k: int, max_tokens: int) -> list[StreamTimes]:
    """Ours on ``/v1`` driven as ``infernet_async`` is: ``client.map(requests, concurrency=K)``."""
    from infernet_async import BatchRequest, InfernetClient

    times: list[StreamTimes] = []
    requests = (
        BatchRequest(
            id=str(i),
            model=MODEL,
            prompt=f"Benchmark question number {i}.",
            max_tokens=max_tokens,
        )
        for i in range(k)
    )
    async with (
        InfernetClient(_origin(url), api="openai", max_connections=k) as client,
        client.map(requests, concurrency=k) as outcomes,
    ):
        async for outcome in outcomes:
            ended = time.perf_counter()
            started = ended - outcome.latency
            first = (
                started + (outcome.time_to_send or 0.0) + outcome.time_to_first_token
                if outcome.time_to_first_token is not None
                else None
            )
            error = None if outcome.ok else f"{outcome.error}"
            times.append(
                StreamTimes(
                    started, first, ended, outcome.tokens, error, outcome.text, outcome.index
                )
            )
    return times


RUNNERS: dict[str, Callable[[str, int, int], Awaitable[list[StreamTimes]]]] = {
    "infernet_async": run_infernet_async,
    "infernet_async_eager": run_infernet_async_eager,
    "httpx_guide": run_httpx_guide,
    "httpx_sse": run_httpx_sse,
    "aiohttp_sse_client2": run_aiohttp_sse_client2,
    "aiohttp_floor": run_aiohttp_floor,
    "asyncio_floor": run_asyncio_floor,
    "socket_floor": run_socket_floor,
    "openai_python": run_openai_python,
    "infernet_async_openai": run_infernet_async_openai,
    "infernet_async_openai_map": run_infernet_async_openai_map,
}
PEERS = ("httpx_guide", "httpx_sse", "aiohttp_sse_client2")
# Ours against the best of which peers: the jobs API's clients, or the openai package on /v1.
PAIRINGS = (
    ("infernet_async", PEERS),
    ("infernet_async_eager", PEERS),
    ("infernet_async_openai", ("openai_python",)),
    ("infernet_async_openai_map", ("openai_python",)),
)
LABELS = {
    "aiohttp_floor": "(aiohttp, no parsing)",
    "asyncio_floor": "(bare asyncio.Protocol, no parsing)",
    "socket_floor": "(bare socket on the loop's selector, no parsing)",
    "infernet_async_eager": "infernet_async, read_interval=0",
    "openai_python": "openai (official client), /v1",
    "infernet_async_openai": "infernet_async api=openai, async for token in stream",
    "infernet_async_openai_map": "infernet_async api=openai, client.map",
}


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


class _RssSampler(threading.Thread):
    """Samples the RSS every 20 ms: ``ru_maxrss`` alone would also count the imports."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.02):
            self.peak = max(self.peak, _rss())

    def finish(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, _rss())


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _max_open(times: list[StreamTimes]) -> int:
    # Open = from the request until the stream ended; the peak overlap of those intervals.
    edges = sorted([(t.started, 1) for t in times] + [(t.ended, -1) for t in times])
    current = peak = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def _runner_for(loop: str) -> Callable[[Any], Any]:
    """``asyncio.run`` on the default loop, or on uvloop's (what uvicorn picks when installed)."""
    if loop == "asyncio":
        return asyncio.run
    import uvloop

    def run(coro: Any) -> Any:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)

    return run


def client(args: argparse.Namespace) -> None:
    """Run one client for K streams and print its figures as one JSON line."""
    sys.path.insert(0, str(ROOT))
    runner = RUNNERS[args.client]
    # Warm up in the same process (imports, lazy initialisation) before measuring.
    run = _runner_for(args.loop)
    warm = run(runner(args.url, min(args.k, 8), args.max_tokens))
    check_answers(warm, args.max_tokens)
    if any(t.error for t in warm):
        sys.exit(f"warm-up failed: {next(t.error for t in warm if t.error)}")
    rss_before = _rss()
    sampler = _RssSampler()
    sampler.start()
    cpu_before = _cpu()
    wall_before = time.perf_counter()
    times = run(runner(args.url, args.k, args.max_tokens))
    wall = time.perf_counter() - wall_before
    cpu = _cpu() - cpu_before
    peak = sampler.finish()
    check_answers(times, args.max_tokens)
    tokens = sum(t.tokens for t in times)
    errors = [t.error for t in times if t.error]
    ttfts = [t.first - t.started for t in times if t.first is not None]
    print(
        json.dumps(
            {
                "client": args.client,
                "k": args.k,
                "streams": len(times),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "tokens": tokens,
                "wall_s": wall,
                "cpu_s": cpu,
                "cpu_us_per_token": cpu / tokens * 1e6 if tokens else None,
                "tokens_per_s": tokens / wall if wall else None,
                "rss_before_mib": rss_before / 2**20,
                "rss_peak_mib": peak / 2**20,
                "rss_per_stream_kib": (peak - rss_before) / args.k / 1024,
                "max_open": _max_open(times),
                "ttft_median_ms": statistics.median(ttfts) * 1e3 if ttfts else None,
                "ttft_p99_ms": (
                    statistics.quantiles(ttfts, n=100)[98] * 1e3 if len(ttfts) >= 2 else None
                ),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------- the driver


class Server(ServerProcess):
    """This script's ``serve`` mode in its own process."""

    def __init__(self, rate: float, tokens: int, ttft: float) -> None:
        super().__init__(
            __file__, "--rate", str(rate), "--ttft", str(ttft), "--answer-tokens", str(tokens)
        )


@dataclass
class Bench:
    args: argparse.Namespace
    results: list[dict[str, Any]] = field(default_factory=list)

    def run_client(
        self, base_url: str, name: str, k: int, max_tokens: int, server_ttft: float
    ) -> dict[str, Any]:
        command = [
            sys.executable,
            __file__,
            "client",
            "--client",
            name,
            "--url",
            base_url,
            "--k",
            str(k),
            "--max-tokens",
            str(max_tokens),
            "--loop",
            self.args.loop,
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self.args.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return {"client": name, "k": k, "errors": k, "first_error": "timed out"}
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"client": name, "k": k, "errors": k, "first_error": " | ".join(tail)}
        result: dict[str, Any] = json.loads(lines[-1])
        median = result.get("ttft_median_ms")
        result["server_ttft_ms"] = server_ttft * 1e3
        result["ttft_overhead_ms"] = median - server_ttft * 1e3 if median is not None else None
        result["tokens_per_answer"] = max_tokens
        return result

    def report(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        if result.get("tokens") is None:
            print(f"  {result['client']:<20} K={result['k']:<6} FAILED: {result['first_error']}")
            return
        print(
            f"  {result['client']:<20} K={result['k']:<6} "
            f"cpu/token {result['cpu_us_per_token']:7.1f} us  "
            f"{result['tokens_per_s']:8.0f} tok/s  "
            f"rss/stream {result['rss_per_stream_kib']:6.1f} KiB  "
            f"open {result['max_open']:>5}  "
            f"ttft +{result['ttft_overhead_ms']:.1f} ms (p99 {result['ttft_p99_ms']:.0f} ms)  "
            f"errors {result['errors']}",
            flush=True,
        )
        if result["errors"]:
            print(f"    first error: {result['first_error']}", flush=True)


def _ratio_table(results: list[dict[str, Any]], regime: str, ks: list[int]) -> str:
    rows = [
        f"| {regime}: K | client | CPU µs/token | CPU/token vs infernet_async | tokens/s "
        "| RSS KiB per open stream | streams open at once | TTFT overhead ms (median) | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in ks:
        at_k = [
            r
            for r in results
            if r["k"] == k and r.get("regime") == regime and r.get("cpu_us_per_token")
        ]
        ours = next((r for r in at_k if r["client"] == "infernet_async"), None)
        for r in at_k:
            ratio = f"{r['cpu_us_per_token'] / ours['cpu_us_per_token']:.2f}x" if ours else "n/a"
            name = LABELS.get(r["client"], r["client"])
            rows.append(
                f"| {k} | {name} | {r['cpu_us_per_token']:.1f} | {ratio} | "
                f"{r['tokens_per_s']:.0f} | {r['rss_per_stream_kib']:.1f} | {r['max_open']} | "
                f"{r['ttft_overhead_ms']:.1f} | {r['errors']} |"
            )
    return "\n".join(rows)


def _best_peer_ratio(
    results: list[dict[str, Any]],
    regime: str,
    k: int,
    ours_name: str = "infernet_async",
    peer_names: tuple[str, ...] = PEERS,
) -> str:
    at_k = [r for r in results if r["k"] == k and r.get("regime") == regime]
    ours = next((r for r in at_k if r["client"] == ours_name), None)
    peers = [r for r in at_k if r["client"] in peer_names and r.get("cpu_us_per_token")]
    if ours is None or not ours.get("cpu_us_per_token") or not peers:
        return "n/a"
    best = min(peers, key=lambda r: r["cpu_us_per_token"])
    return (
        f"{best['cpu_us_per_token'] / ours['cpu_us_per_token']:.2f}x less CPU per token than "
        f"the best peer ({best['client']})"
    )


def _pairs_table(results: list[dict[str, Any]], regimes: list[str], ks: list[int]) -> str:
    """Each of ours against the cheapest (CPU per token) of its peers in ``PAIRINGS``."""
    rows = [
        "| regime | K | tokens an answer | ours | CPU µs/token | TTFT overhead ms "
        "| best peer | CPU µs/token | TTFT overhead ms | peer / ours |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for regime in regimes:
        for k in ks:
            at_k = [
                r
                for r in results
                if r["k"] == k and r.get("regime") == regime and r.get("cpu_us_per_token")
            ]
            for ours_name, peer_names in PAIRINGS:
                ours = next((r for r in at_k if r["client"] == ours_name), None)
                peers = [r for r in at_k if r["client"] in peer_names]
                if ours is None or not peers:
                    continue
                peer = min(peers, key=lambda r: r["cpu_us_per_token"])
                ours_label = LABELS.get(ours_name, ours_name)
                peer_label = LABELS.get(peer["client"], peer["client"])
                rows.append(
                    f"| {regime} | {k} | {ours['tokens_per_answer']} | {ours_label} "
                    f"| {ours['cpu_us_per_token']:.1f} | {ours['ttft_overhead_ms']:.1f} "
                    f"| {peer_label} "
                    f"| {peer['cpu_us_per_token']:.1f} | {peer['ttft_overhead_ms']:.1f} "
                    f"| {peer['cpu_us_per_token'] / ours['cpu_us_per_token']:.2f}x |"
                )
    return "\n".join(rows)


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the least CPU per token (best of N), reporting the most errors of any run."""
    measured = [r for r in runs if r.get("cpu_us_per_token")]
    best = dict(min(measured, key=lambda r: r["cpu_us_per_token"]) if measured else runs[0])
    worst = max(runs, key=lambda r: r.get("errors", 0))
    best["errors"] = worst.get("errors", 0)
    if best["errors"] and not best.get("first_error"):
        best["first_error"] = worst.get("first_error")  # another run's: say what went wrong
    best["runs"] = len(runs)
    return best


def _pacing(args: argparse.Namespace, regime: str, k: int) -> tuple[float, int]:
    if regime == "fast":
        # As fast as the server generates: events pile up in the socket between reads.
        return 100_000.0, max(args.min_tokens, args.fast_tokens // k)
    # Model speed: every stream gets an equal share of what the server sends comfortably and lasts
    # at least --duration seconds, so the K streams are all open at once and every token arrives in
    # a chunk of its own.
    rate = args.server_rate / k
    return rate, max(args.min_tokens, round(rate * args.duration))


def drive(args: argparse.Namespace) -> None:
    ks = [int(k) for k in args.ks.split(",") if k]
    names = [n for n in args.clients.split(",") if n]
    regimes = [r for r in args.regimes.split(",") if r]
    bench = Bench(args)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.loop} loop; server: "
        f"the DevServer in its own process; time to first token {args.ttft * 1e3:g} ms",
        flush=True,
    )

    def run_at(
        regime: str, k: int, clients: list[str], repeat: int = args.repeat
    ) -> list[dict[str, Any]]:
        rate, tokens = _pacing(args, regime, k)
        server = Server(rate, tokens, args.ttft)
        print(
            f"{regime}, K = {k}: {tokens} tokens per answer at {rate:g} tokens/s per stream",
            flush=True,
        )
        try:
            out = []
            # The node waits its time to first token, then one token interval.
            server_ttft = args.ttft + 1.0 / rate
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in clients}
            # Rounds interleave the clients, so a noisy moment does not fall on one client only.
            for _ in range(repeat):
                for name in clients:
                    runs[name].append(
                        bench.run_client(server.base_url, name, k, tokens, server_ttft)
                    )
            for name in clients:
                result = _best(runs[name])
                result["regime"] = regime
                bench.report(result)
                out.append(result)
            return out
        finally:
            server.close()

    for regime in regimes:
        for k in ks:
            run_at(regime, k, names)
    ceiling: dict[str, Any] | None = None
    if args.ceiling:
        k = max(ks) * 2
        while k <= args.max_k:
            (result,) = run_at("paced", k, ["infernet_async"], repeat=1)
            if result.get("errors") or result.get("max_open", 0) < k:
                break
            ceiling = result
            k *= 2
    print()
    for regime in regimes:
        for k in ks:
            ratio = _best_peer_ratio(bench.results, regime, k)
            print(f"{regime}, K = {k}: infernet_async uses {ratio}")
            for ours_name, peer_names in PAIRINGS[2:]:
                ratio = _best_peer_ratio(bench.results, regime, k, ours_name, peer_names)
                if ratio != "n/a":
                    print(f"{regime}, K = {k}: {ours_name} uses {ratio}")
    if ceiling is not None:
        print(
            f"ceiling: {ceiling['k']} concurrent streams with no error "
            f"({ceiling['rss_per_stream_kib']:.1f} KiB RSS per open stream)",
            flush=True,
        )
    if args.markdown:
        for regime in regimes:
            print()
            print(_ratio_table(bench.results, regime, ks))
        print()
        print(_pairs_table(bench.results, regimes, ks))
    if args.json:
        Path(args.json).write_text(json.dumps(bench.results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--rate", type=float, required=True, help="tokens/s per stream")
    p_serve.add_argument("--ttft", type=float, required=True, help="time to first token, s")
    p_serve.add_argument("--answer-tokens", type=int, required=True)
    p_client = sub.add_parser("client")
    p_client.add_argument("--client", choices=tuple(RUNNERS), required=True)
    p_client.add_argument("--url", required=True)
    p_client.add_argument("--k", type=int, required=True)
    p_client.add_argument("--max-tokens", type=int, required=True)
    p_client.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--ks", default="100,1000")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the clients' event loop, the same for every client (uvloop: pip install uvloop)",
    )
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument(
        "--server-rate", type=float, default=2500.0, help="paced: tokens/s the server sends in all"
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per stream (min)")
    parser.add_argument("--min-tokens", type=int, default=10, help="tokens per answer (min)")
    parser.add_argument(
        "--fast-tokens", type=int, default=20_000, help="fast: tokens for all K answers"
    )
    parser.add_argument("--regimes", default="paced,fast", help="paced (model speed), fast")
    parser.add_argument("--repeat", type=int, default=3, help="runs per client; the best is kept")
    parser.add_argument("--ttft", type=float, default=0.05, help="server time to first token, s")
    parser.add_argument("--ceiling", dest="ceiling", action="store_true", default=True)
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false")
    parser.add_argument("--max-k", type=int, default=16000)
    parser.add_argument("--timeout", type=float, default=300.0, help="per client run, seconds")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    parser.add_argument("--json", help="write every result to this file")
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args)
    elif args.mode == "client":
        client(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
