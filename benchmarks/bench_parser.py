"""Parser benchmark: events/s of TokenDecoder against the guide's loop, the SSE peers, two floors.

Usage:
    python benchmarks/bench_parser.py            # ~100k events, 7 rounds (a couple of minutes)
    python benchmarks/bench_parser.py --quick    # 20k events, 3 rounds
    python benchmarks/bench_parser.py --profile  # cProfile of TokenDecoder under each chunking

One seeded token corpus (benchmarks/_corpus.py), three chunkings: one event per chunk (live
generation), 16 KiB chunks (bulk replay), random 1-64 B chunks (adversarial). Each contestant turns
the chunks into the answer text and stops at [DONE]; every one must produce exactly the corpus text
(checked) and pays for decoding each event's JSON. Contestants run interleaved, in a rotating order,
round after round; the table shows the median of the rounds. Peers are driven directly, without any
HTTP, the way their own streaming code drives them. Time is the process's CPU time by default
(``--clock cpu``): on a shared 2-core machine wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import cProfile
import gc
import json
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._corpus import (
    Corpus,
    chunk_events,
    chunk_fixed,
    chunk_random,
    make_corpus,
)
from infernet_async.events import Done, Token, TokenDecoder
from infernet_async.sse import SSEDecoder

Contestant = Callable[[list[bytes]], str]


# --- ours


def ours(chunks: list[bytes]) -> str:
    """TokenDecoder: the SDK's decoder plus event layer, as TokenStream drives it."""
    decoder = TokenDecoder()
    parts: list[str] = []
    append = parts.append
    feed = decoder.feed
    for chunk in chunks:
        for event in feed(chunk):
            if type(event) is Token:
                append(event.text)
            elif type(event) is Done:
                return "".join(parts)
    decoder.close()
    return "".join(parts)


def ours_sse_json(chunks: list[bytes]) -> str:
    """Our SSEDecoder alone, with json.loads per event (no token fast path)."""
    decoder = SSEDecoder()
    parts: list[str] = []
    append = parts.append
    loads = json.loads
    for chunk in chunks:
        for sse in decoder.feed(chunk):
            if sse.data == "[DONE]":
                return "".join(parts)
            append(loads(sse.data)["text"])
    return "".join(parts)


# --- the guide's own client loop (Python/httpx version, fed what response.iter_text() yields)


def guide_naive(chunks: list[bytes]) -> str:
    """The streaming guide's httpx loop: split the text buffer on LF per chunk (not WHATWG)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # what iter_text() runs
    parts: list[str] = []
    buffer = ""
    for chunk in chunks:
        buffer += decoder.decode(chunk)
        lines = buffer.split("\n")
        buffer = lines[-1]
        for line in lines[:-1]:
            if not line.startswith("data: "):
                continue
            data = line[6:].strip()
            if data == "[DONE]":
                return "".join(parts)
            try:
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(f"Stream error: {event['message']}")
                if "text" in event:
                    parts.append(event["text"])
            except json.JSONDecodeError:
                pass
    return "".join(parts)


# --- library peers


def httpx_sse(chunks: list[bytes]) -> str:
    """httpx-sse's SSELineDecoder + SSEDecoder, driven as EventSource.iter_sse() drives them."""
    from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
    from httpx_sse._decoders import SSELineDecoder

    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    line_decoder = SSELineDecoder()
    sse_decoder = HttpxSSEDecoder()
    parts: list[str] = []
    for chunk in chunks:
        for line in line_decoder.decode(text_decoder.decode(chunk)):
            sse = sse_decoder.decode(line.rstrip("\n"))
            if sse is not None:
                if sse.data == "[DONE]":
                    return "".join(parts)
                parts.append(json.loads(sse.data)["text"])
    return "".join(parts)


def openai_sse(chunks: list[bytes]) -> str:
    """openai's SSEDecoder.iter_bytes(), then what openai.Stream does with each event."""
    from openai._streaming import SSEDecoder as OpenAISSEDecoder

    parts: list[str] = []
    for sse in OpenAISSEDecoder().iter_bytes(iter(chunks)):
        if sse.data.startswith("[DONE]"):
            break
        parts.append(sse.json()["text"])
    return "".join(parts)


def sseclient_py(chunks: list[bytes]) -> str:
    """sseclient-py's SSEClient over an iterator of chunks (it reads any iterable of bytes)."""
    import sseclient

    parts: list[str] = []
    for event in sseclient.SSEClient(iter(chunks)).events():
        if event.data == "[DONE]":
            break
        parts.append(json.loads(event.data)["text"])
    return "".join(parts)


class _Protocol:
    """The little of aiohttp's protocol a StreamReader calls when it is fed by hand."""

    connected = True
    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _Response:
    status = 200

    def __init__(self, content: Any) -> None:
        self.content = content


def make_aiohttp_sse_client2() -> tuple[Contestant, Callable[[], None]]:
    """aiohttp-sse-client2's EventSource.__anext__ over an aiohttp StreamReader fed by hand.

    Its parser lives in EventSource.__anext__ and reads lines from ``response.content`` (an aiohttp
    StreamReader), so it is driven without a network: the chunks are fed to a real StreamReader,
    which stands where the connection would. The asyncio machinery it needs (one coroutine per
    event, the reader's readline) is part of what this peer costs.
    """
    from aiohttp import StreamReader
    from aiohttp_sse_client2.client import EventSource

    loop = asyncio.new_event_loop()

    async def drive(chunks: list[bytes]) -> str:
        reader = StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        source = EventSource("http://127.0.0.1/stream", session=object())  # type: ignore[arg-type]
        source._response = _Response(reader)
        parts: list[str] = []
        async for event in source:
            if event.data == "[DONE]":
                break
            parts.append(json.loads(event.data)["text"])
        return "".join(parts)

    def run(chunks: list[bytes]) -> str:
        return loop.run_until_complete(drive(chunks))

    return run, loop.close


# --- floors: no SSE parsing at all, the body split once


def floor_json(chunks: list[bytes]) -> str:
    """Floor 1: join the body, split on blank lines, json.loads each payload."""
    parts: list[str] = []
    loads = json.loads
    for block in b"".join(chunks).split(b"\n\n"):
        payload = block[6:]
        if payload == b"[DONE]":
            break
        parts.append(loads(payload)["text"])
    return "".join(parts)


def make_floor_orjson() -> Contestant:
    import orjson

    loads = orjson.loads

    def floor_orjson(chunks: list[bytes]) -> str:
        """Floor 2: the same with orjson."""
        parts: list[str] = []
        for block in b"".join(chunks).split(b"\n\n"):
            payload = block[6:]
            if payload == b"[DONE]":
                break
            parts.append(loads(payload)["text"])
        return "".join(parts)

    return floor_orjson


# --- harness

LIBRARY_PEERS = ("httpx-sse", "openai", "sseclient-py", "aiohttp-sse-client2")


def contestants() -> tuple[dict[str, Contestant], list[Callable[[], None]], list[str]]:
    table: dict[str, Contestant] = {
        "ours: TokenDecoder": ours,
        "ours: SSEDecoder + json.loads": ours_sse_json,
        "guide's naive loop": guide_naive,
    }
    cleanups: list[Callable[[], None]] = []
    missing: list[str] = []
    peers: dict[str, Callable[[], Contestant]] = {
        "httpx-sse": lambda: httpx_sse,
        "openai": lambda: openai_sse,
        "sseclient-py": lambda: sseclient_py,
    }
    for name, factory in peers.items():
        try:
            contestant = factory()
            contestant([b'data: {"text": "x"}\n\n', b"data: [DONE]\n\n"])
        except ImportError:
            missing.append(name)
        else:
            table[name] = contestant
    try:
        run, close = make_aiohttp_sse_client2()
    except ImportError:
        missing.append("aiohttp-sse-client2")
    else:
        table["aiohttp-sse-client2"] = run
        cleanups.append(close)
    table["floor 1: split + json.loads"] = floor_json
    try:
        table["floor 2: split + orjson"] = make_floor_orjson()
    except ImportError:
        missing.append("orjson")
    return table, cleanups, missing


def measure(
    corpus: Corpus, chunkings: dict[str, list[bytes]], rounds: int, clock: Callable[[], float]
) -> dict[str, dict[str, list[float]]]:
    """Seconds per run: chunking -> contestant -> one time per round."""
    table, cleanups, missing = contestants()
    if missing:
        print(f"not installed (pip install -e '.[bench]'): {', '.join(missing)}")
    names = list(table)
    timings: dict[str, dict[str, list[float]]] = {c: {n: [] for n in names} for c in chunkings}
    try:
        for chunking, chunks in chunkings.items():
            for name in names:  # correctness first, and a warm-up
                text = table[name](chunks)
                if text != corpus.text:
                    raise AssertionError(f"{name} ({chunking}) produced different text")
            for round_index in range(rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    gc.collect()
                    start = clock()
                    table[name](chunks)
                    timings[chunking][name].append(clock() - start)
            print(f"  measured {chunking}", file=sys.stderr)
    finally:
        for cleanup in cleanups:
            cleanup()
    return timings


def report(
    corpus: Corpus, chunkings: dict[str, list[bytes]], timings: dict[str, dict[str, list[float]]]
) -> str:
    """Markdown tables: median rates, and ratios taken round by round (neighbouring runs share the
    machine's load), then the median of those."""
    megabytes = len(corpus.body) / 1e6
    lines = []
    for chunking, by_name in timings.items():
        medians = {name: statistics.median(times) for name, times in by_name.items()}
        rates = {name: corpus.event_count / seconds for name, seconds in medians.items()}
        peers = [name for name in rates if name in LIBRARY_PEERS]
        best_peer = max(peers, key=lambda name: rates[name]) if peers else None
        naive = "guide's naive loop" if "guide's naive loop" in rates else None

        def ratio(name: str, base: str | None, times: dict[str, list[float]] = by_name) -> str:
            if base is None:
                return "-"
            per_round = [b / t for b, t in zip(times[base], times[name], strict=True)]
            return f"{statistics.median(per_round):.2f}x"

        lines.append(f"\n### {chunking} ({len(chunkings[chunking])} chunks)\n")
        header = "| contestant | events/s | MB/s | vs best peer | vs naive loop |"
        lines += [header, "|---|---:|---:|---:|---:|"]
        for name, rate in sorted(rates.items(), key=lambda item: -item[1]):
            mb_s = megabytes / medians[name]
            label = f"**{name}**" if name.startswith("ours: TokenDecoder") else name
            if name == best_peer:
                label += " (best peer)"
            lines.append(
                f"| {label} | {rate / 1e3:,.0f}k | {mb_s:.1f} | {ratio(name, best_peer)} "
                f"| {ratio(name, naive)} |"
            )
    return "\n".join(lines)


def profile(chunkings: dict[str, list[bytes]]) -> None:
    for chunking, chunks in chunkings.items():
        print(f"\n=== profile: TokenDecoder, {chunking}")
        profiler = cProfile.Profile()
        profiler.runcall(ours, chunks)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k events, 3 rounds")
    parser.add_argument("--events", type=int, default=None, help="token events (default 100000)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument("--profile", action="store_true", help="cProfile TokenDecoder and exit")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: time.process_time (default; robust on a shared machine), wall: perf_counter",
    )
    args = parser.parse_args(argv)
    events = args.events or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 7)
    corpus = make_corpus(events)
    chunkings = {
        "one event per chunk": chunk_events(corpus),
        "16 KiB chunks": chunk_fixed(corpus),
        "random 1-64 B chunks": chunk_random(corpus),
    }
    if args.profile:
        profile(chunkings)
        return 0
    print(
        f"corpus: {corpus.event_count:,} events, {len(corpus.body) / 1e6:.2f} MB; "
        f"{rounds} rounds, median {args.clock} time; Python {platform.python_version()} "
        f"on {platform.machine()}"
    )
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    timings = measure(corpus, chunkings, rounds, clock)
    print(report(corpus, chunkings, timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
