"""Micro-benchmark of the sans-IO HTTP/1.1 response parser: events/s through a chunked body.

Usage:
    python benchmarks/bench_http1.py [--events N] [--rounds R]

One chunked response carrying N SSE events (one HTTP chunk each, 20-60 bytes like a token stream),
fed two ways: one chunk per feed (a live generation: one event per TCP read) and 100 chunks per
feed (a burst). Contestants: ours (infernet_async._http1.ResponseParser), h11 (the client side of
an h11.Connection, as httpcore drives it) and aiohttp's pure-Python HttpResponseParserPy when it
can be built. Each must return exactly the events' bytes (checked). Best of R rounds, CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infernet_async._http1 import ResponseParser

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
WORDS = [" the", " Paris", " is", ",", " capital", " of", " France", ".", " 東京", " a", "👍"]


def make_events(count: int) -> list[bytes]:
    rng = random.Random(7)
    events = []
    for _ in range(count):
        text = "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        events.append(f'data: {{"text": "{text}"}}\n\n'.encode())
    return events


def make_reads(events: list[bytes], per_read: int) -> list[bytes]:
    chunks = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    reads = [b"".join(chunks[i : i + per_read]) for i in range(0, len(chunks), per_read)]
    reads.append(b"0\r\n\r\n")
    return reads


def run_ours(reads: list[bytes]) -> bytes:
    parser = ResponseParser()
    parser.feed(HEAD)
    feed = parser.feed
    out = [feed(data) for data in reads]
    assert parser.complete
    return b"".join(out)


def run_h11(reads: list[bytes]) -> bytes:
    import h11

    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(HEAD)
    assert isinstance(conn.next_event(), h11.Response)
    out = []
    need_data = h11.NEED_DATA
    data_type = h11.Data
    for data in reads:
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is need_data or type(event) is h11.EndOfMessage:
                break
            if type(event) is data_type:
                out.append(event.data)
    return b"".join(out)


def make_aiohttp_runner() -> Callable[[list[bytes]], bytes] | None:
    try:
        from aiohttp.base_protocol import BaseProtocol
        from aiohttp.http_parser import HttpResponseParserPy
    except ImportError:
        return None
    loop = asyncio.new_event_loop()

    def run(reads: list[bytes]) -> bytes:
        protocol: Any = BaseProtocol(loop)
        # A limit above the whole body: nothing reads the StreamReader, so it must never pause.
        parser = HttpResponseParserPy(protocol, loop, 2**30)
        messages, _, _ = parser.feed_data(HEAD)
        payload = messages[0][1]
        for data in reads:
            parser.feed_data(data)
        assert payload.is_eof()
        return b"".join(payload._buffer)

    try:
        run([b"1\r\nx\r\n", b"0\r\n\r\n"])
    except Exception as exc:  # a private API: skip it when it changed shape
        print(f"aiohttp HttpResponseParserPy skipped: {exc!r}")
        return None
    return run


def best_time(func: Callable[[list[bytes]], bytes], reads: list[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        func(reads)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    events = make_events(args.events)
    expected = b"".join(events)
    contestants: dict[str, Callable[[list[bytes]], bytes]] = {"ours": run_ours}
    try:
        import h11  # noqa: F401

        contestants["h11"] = run_h11
    except ImportError:
        print("h11 not installed: skipped")
    aiohttp_runner = make_aiohttp_runner()
    if aiohttp_runner is not None:
        contestants["aiohttp HttpResponseParserPy"] = aiohttp_runner
    print(f"{args.events} events, {len(expected)} body bytes, best of {args.rounds} (CPU time)")
    for per_read in (1, 100):
        reads = make_reads(events, per_read)
        print(f"\n{per_read} event(s) per feed:")
        for name, func in contestants.items():
            assert func(reads) == expected, name
            seconds = best_time(func, reads, args.rounds)
            print(f"  {name:30} {args.events / seconds:>12,.0f} events/s")


if __name__ == "__main__":
    main()
