"""Memory benchmark: peak memory while a peer sends one 100 MB line (or event), against the limit.

Usage:
    python benchmarks/bench_memory.py            # 100 MB per case
    python benchmarks/bench_memory.py --mb 20    # smaller, faster

Each case feeds the bytes in 64 KiB chunks (one chunk object, reused, so the feeding itself
allocates nothing) and reports the tracemalloc peak above the baseline, and that peak as a multiple
of the decoder's ``max_event_size`` (8 MiB by default). Cases:

- SSEDecoder and TokenDecoder against a 100 MB ``data:`` line, comment line, field name, and an
  event of 100 MB made of 64 KiB ``data:`` lines;
- the whole client (aiohttp buffers included): ``InfernetClient.stream`` reading a 100 MB line from
  a raw loopback server, until ``EventTooLargeError``;
- the baseline the limit protects against: the streaming guide's Python loop (``buffer += chunk``,
  split on LF), which holds the whole line, twice, and is quadratic in its length (so it runs
  on 16 MB by default).

tests/test_hostile_input.py asserts the decoder peaks stay under 3x the limit; this script prints
the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infernet_async import EventTooLargeError, InfernetClient
from infernet_async._config import RetryPolicy, Timeouts
from infernet_async.events import TokenDecoder
from infernet_async.sse import DEFAULT_MAX_EVENT_SIZE, SSEDecoder

MiB = 1024 * 1024
CHUNK = 64 * 1024


def pieces(prefix: bytes, total: int) -> Iterable[bytes]:
    chunk = b"x" * CHUNK
    yield prefix
    yield from repeat(chunk, total // CHUNK)


def line_pieces(total: int) -> Iterable[bytes]:
    line = b"data: " + b"y" * (CHUNK - 7) + b"\n"
    return repeat(line, total // len(line))


def measure(run: Callable[[], Any]) -> tuple[int, float, str]:
    """Peak traced bytes above the baseline, seconds, and what the run ended with."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        started = time.perf_counter()
        outcome = run()
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, elapsed, outcome


def decoder_case(factory: Callable[[], Any], chunks: Iterable[bytes]) -> Callable[[], str]:
    def run() -> str:
        decoder = factory()
        fed = 0
        for chunk in chunks:
            try:
                decoder.feed(chunk)
            except EventTooLargeError:
                return f"EventTooLargeError after {fed / MiB:.1f} MiB"
            fed += len(chunk)
        return f"accepted {fed / MiB:.1f} MiB"

    return run


def naive_guide_loop(chunks: Iterable[bytes]) -> Callable[[], str]:
    # The streaming guide's Python loop: buffer += chunk; lines = buffer.split("\n").
    def run() -> str:
        buffer = ""
        for chunk in chunks:
            buffer += chunk.decode("utf-8", "replace")
            lines = buffer.split("\n")
            buffer = lines[-1]
        return f"held {len(buffer) / MiB:.1f} MiB"

    return run


async def _serve_huge_line(total: int) -> tuple[asyncio.Server, str]:
    block = b"%x\r\n%s\r\n" % (MiB, b"x" * MiB)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(b"data: "), b"data: ")
        )
        try:
            for _ in range(total // MiB):
                writer.write(block)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def client_case(total: int) -> Callable[[], str]:
    async def main() -> str:
        server, url = await _serve_huge_line(total)
        client = InfernetClient(
            url, token="t", timeouts=Timeouts(read=30, total=120), retry=RetryPolicy(max_retries=0)
        )
        try:
            async with client.stream(model="m", messages=[{"role": "user", "content": "hi"}]) as s:
                async for _ in s:
                    pass
            return "accepted"
        except EventTooLargeError:
            return "EventTooLargeError"
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    return lambda: asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the line, MB (default 100)")
    parser.add_argument(
        "--naive-mb",
        type=int,
        default=16,
        help="line size for the guide's loop, MB (default 16: it is quadratic)",
    )
    args = parser.parse_args()
    total = args.mb * MiB
    limit = DEFAULT_MAX_EVENT_SIZE
    print(
        f"Python {platform.python_version()} on {platform.machine()}; limit {limit / MiB:.0f} MiB"
    )
    print(f"one {args.mb} MB line or event, fed in {CHUNK // 1024} KiB chunks\n")
    cases: list[tuple[str, Callable[[], str]]] = []
    for name, factory in (("SSEDecoder", SSEDecoder), ("TokenDecoder", TokenDecoder)):
        cases += [
            (f"{name}: data: line", decoder_case(factory, pieces(b"data: ", total))),
            (f"{name}: comment line", decoder_case(factory, pieces(b": ", total))),
            (f"{name}: field name", decoder_case(factory, pieces(b"", total))),
            (f"{name}: event of many lines", decoder_case(factory, line_pieces(total))),
        ]
    cases.append(("InfernetClient.stream over loopback", client_case(total)))
    naive = args.naive_mb * MiB
    cases.append(
        (f"guide's loop, {args.naive_mb} MB (no limit)", naive_guide_loop(pieces(b"data: ", naive)))
    )
    print(f"{'case':40} {'peak MiB':>9} {'x limit':>8} {'seconds':>8}  outcome")
    for name, run in cases:
        peak, elapsed, outcome = measure(run)
        print(f"{name:40} {peak / MiB:9.1f} {peak / limit:8.2f} {elapsed:8.2f}  {outcome}")


if __name__ == "__main__":
    main()
