"""Parser benchmark: events/s of our decoders against the guide's loop, the SSE peers, two floors.

Usage:
    python benchmarks/bench_parser.py            # ~100k events, 7 rounds, every corpus
    python benchmarks/bench_parser.py --quick    # 20k events, 3 rounds
    python benchmarks/bench_parser.py --corpus openai --corpus chat-lf   # some corpora only
    python benchmarks/bench_parser.py --profile  # cProfile of ours under each chunking

Seeded token corpora (benchmarks/_corpus.py), the same tokens in each of the service's streams:

- ``guide``: the guide's data-only dialect, read by ``TokenDecoder``;
- ``openai``: the OpenAI-compatible surface's ``chat.completion.chunk`` stream, read by
  ``ChunkDecoder``;
- ``chat-lf``, ``chat-lf-event-first``, ``chat-crlf``, ``chat-crlf-event-first``: the chat
  surface's typed stream (LF or CRLF; id/event/data or event/id/data), read by ``TokenDecoder``.

Three chunkings each: one event per chunk (live generation), 16 KiB chunks (bulk replay), random
1-64 B chunks (adversarial). Each contestant turns the chunks into the answer text and stops at the
stream's end ([DONE], or ``event: done``); every one must produce exactly the corpus text
(checked) and pays for decoding each event's JSON. Contestants run interleaved, in a rotating
order, round after round; the tables show the median of the rounds. Peers are driven directly,
without any HTTP, the way their own streaming code drives them. Time is the process's CPU time by
default (``--clock cpu``): on a shared 2-core machine wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import cProfile
import gc
import importlib
import json
import platform
import pstats
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._corpus import (
    Corpus,
    chunk_events,
    chunk_fixed,
    chunk_random,
    make_chat_corpus,
    make_corpus,
    make_openai_corpus,
)
from infernet_async._openai_decoder import ChunkDecoder
from infernet_async._token_decoder import TokenDecoder
from infernet_async.events import Done, ErrorEvent, Token
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

    return run, lambda: _close_loop(loop)


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


# --- the OpenAI chunk stream and the chat surface's typed stream
#
# Each library peer is driven as in the guide's corpus above; what a client does with each event
# follows: for OpenAI chunks, json.loads of the data and choices[0].delta.content, stopping at
# [DONE] and raising on an error chunk (what openai.AsyncStream and its callers do); for the typed
# stream, json.loads of each token event's data and its "text", stopping at "event: done".


class StreamFailed(RuntimeError):
    """The stream reported an error (a contestant must not pass it off as an answer)."""


def ours_chunks(chunks: list[bytes]) -> str:
    """ChunkDecoder: the SDK's decoder for the OpenAI-compatible surface, as TokenStream drives
    it."""
    decoder = ChunkDecoder()
    parts: list[str] = []
    append = parts.append
    feed = decoder.feed
    for chunk in chunks:
        for event in feed(chunk):
            if type(event) is Token:
                append(event.text)
            elif type(event) is Done:
                return "".join(parts)
            elif type(event) is ErrorEvent:
                raise StreamFailed(event.message)
    decoder.close()
    return "".join(parts)


def _chunk_answer(events: Iterable[Any]) -> str:
    """OpenAI chunks out of a peer's events (``.data``), as an openai-python caller reads them."""
    parts: list[str] = []
    append = parts.append
    loads = json.loads
    for sse in events:
        data = sse.data
        if data.startswith("[DONE]"):
            break
        chunk = loads(data)
        if chunk.get("error"):
            raise StreamFailed(str(chunk["error"]))
        choices = chunk["choices"]
        if choices:
            content = choices[0]["delta"].get("content")
            if content:
                append(content)
    return "".join(parts)


def _typed_answer(events: Iterable[Any]) -> str:
    """The chat surface's typed events out of a peer's events (``.event``, ``.data``)."""
    parts: list[str] = []
    append = parts.append
    loads = json.loads
    for sse in events:
        kind = sse.event
        if kind == "token":
            append(loads(sse.data)["text"])
        elif kind == "done":
            break
        elif kind == "error":
            raise StreamFailed(sse.data)
    return "".join(parts)


async def _chunk_answer_async(events: AsyncIterator[Any], kind: str) -> str:
    parts: list[str] = []
    append = parts.append
    loads = json.loads
    async for sse in events:
        data = sse.data
        if data.startswith("[DONE]"):
            break
        chunk = loads(data)
        if chunk.get("error"):
            raise StreamFailed(str(chunk["error"]))
        choices = chunk["choices"]
        if choices:
            content = choices[0]["delta"].get("content")
            if content:
                append(content)
    return "".join(parts)


async def _typed_answer_async(events: AsyncIterator[Any], kind: str) -> str:
    parts: list[str] = []
    append = parts.append
    loads = json.loads
    async for sse in events:
        event_type = getattr(sse, kind)
        if event_type == "token":
            append(loads(sse.data)["text"])
        elif event_type == "done":
            break
        elif event_type == "error":
            raise StreamFailed(sse.data)
    return "".join(parts)


def ours_sse_events(chunks: list[bytes]) -> Iterator[Any]:
    """Our SSEDecoder alone (no event layer, no fast path)."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)


def httpx_sse_events(chunks: list[bytes]) -> Iterator[Any]:
    """httpx-sse's decoders, as EventSource.iter_sse() drives them over iter_text()."""
    from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
    from httpx_sse._decoders import SSELineDecoder

    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    line_decoder = SSELineDecoder()
    sse_decoder = HttpxSSEDecoder()
    for chunk in chunks:
        for line in line_decoder.decode(text_decoder.decode(chunk)):
            sse = sse_decoder.decode(line.rstrip("\n"))
            if sse is not None:
                yield sse


def sseclient_events(chunks: list[bytes]) -> Iterator[Any]:
    import sseclient

    return sseclient.SSEClient(iter(chunks)).events()  # type: ignore[no-any-return]


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Finalize what a contestant's async generators left open, then close its loop (Python
    3.13 warns about an async generator still open when its loop closes)."""
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def make_openai_async(answer: Callable[[AsyncIterator[Any], str], Any]) -> tuple[Contestant, Any]:
    """openai's SSEDecoder fed bytes as openai.AsyncStream feeds it: ``aiter_bytes()`` over the
    response's async byte iterator (here an async generator of the chunks)."""
    from openai._streaming import SSEDecoder as OpenAISSEDecoder

    loop = asyncio.new_event_loop()

    async def body(chunks: list[bytes]) -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def drive(chunks: list[bytes]) -> str:
        source = body(chunks)
        events = OpenAISSEDecoder().aiter_bytes(source)
        try:
            return await answer(events, "event")  # type: ignore[no-any-return]
        finally:
            # Closing the outer generator leaves the inner one open: close both, as an
            # http response's close would.
            await events.aclose()  # type: ignore[attr-defined]
            await source.aclose()  # type: ignore[attr-defined]

    def run(chunks: list[bytes]) -> str:
        return loop.run_until_complete(drive(chunks))

    return run, lambda: _close_loop(loop)


def make_aiohttp_events(answer: Callable[[AsyncIterator[Any], str], Any]) -> tuple[Contestant, Any]:
    """aiohttp-sse-client2, as in make_aiohttp_sse_client2 (its events' type is ``.type``)."""
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
        return await answer(source, "type")  # type: ignore[no-any-return]

    def run(chunks: list[bytes]) -> str:
        return loop.run_until_complete(drive(chunks))

    return run, lambda: _close_loop(loop)


def _blocks(chunks: list[bytes]) -> list[bytes]:
    return b"".join(chunks).split(b"\n\n")


def chunk_floor_json(chunks: list[bytes]) -> str:
    """Floor 1 for OpenAI chunks: split on blank lines, json.loads each payload."""
    parts: list[str] = []
    loads = json.loads
    for block in _blocks(chunks):
        payload = block[6:]
        if payload == b"[DONE]":
            break
        content = loads(payload)["choices"][0]["delta"].get("content")
        if content:
            parts.append(content)
    return "".join(parts)


def make_chunk_floor_orjson() -> Contestant:
    import orjson

    loads = orjson.loads

    def chunk_floor_orjson(chunks: list[bytes]) -> str:
        """Floor 2 for OpenAI chunks: the same with orjson."""
        parts: list[str] = []
        for block in _blocks(chunks):
            payload = block[6:]
            if payload == b"[DONE]":
                break
            content = loads(payload)["choices"][0]["delta"].get("content")
            if content:
                parts.append(content)
        return "".join(parts)

    return chunk_floor_orjson


# --- harness

LIBRARY_PEERS = ("httpx-sse", "openai", "sseclient-py", "aiohttp-sse-client2")
OURS = ("ours: TokenDecoder", "ours: ChunkDecoder")
PROBE = [b'data: {"text": "x"}\n\n', b"data: [DONE]\n\n"]


@dataclass(frozen=True)
class Suite:
    """One corpus and what it is read with."""

    title: str
    make: Callable[[int], Corpus]
    dialect: str  # "guide", "openai" or "typed"


SUITES: dict[str, Suite] = {
    "guide": Suite("the guide's data-only stream", make_corpus, "guide"),
    "openai": Suite("OpenAI chunks (/v1/chat/completions)", make_openai_corpus, "openai"),
    "chat-lf": Suite(
        "chat typed stream, LF, id/event/data", lambda n: make_chat_corpus(n), "typed"
    ),
    "chat-lf-event-first": Suite(
        "chat typed stream, LF, event/id/data",
        lambda n: make_chat_corpus(n, event_first=True),
        "typed",
    ),
    "chat-crlf": Suite(
        "chat typed stream, CRLF, id/event/data",
        lambda n: make_chat_corpus(n, crlf=True),
        "typed",
    ),
    "chat-crlf-event-first": Suite(
        "chat typed stream, CRLF, event/id/data",
        lambda n: make_chat_corpus(n, crlf=True, event_first=True),
        "typed",
    ),
}


def _add(
    table: dict[str, Contestant],
    missing: list[str],
    name: str,
    factory: Callable[[], Contestant],
    probe: list[bytes] | None = None,
) -> None:
    try:
        contestant = factory()
        if probe is not None:
            contestant(probe)
    except ImportError:
        missing.append(name)
    else:
        table[name] = contestant


def _needs(module: str, contestant: Contestant) -> Callable[[], Contestant]:
    """A factory that gives ``contestant`` if ``module`` imports (else ImportError)."""

    def factory() -> Contestant:
        importlib.import_module(module)
        return contestant

    return factory


def contestants(
    dialect: str = "guide",
) -> tuple[dict[str, Contestant], list[Callable[[], None]], list[str]]:
    """The contestants for a dialect: ours, our SSE decoder with json.loads, the library peers,
    (the guide's loop, for the guide's stream), the floors (for data-only streams)."""
    cleanups: list[Callable[[], None]] = []
    missing: list[str] = []
    table: dict[str, Contestant] = {}

    def async_peer(name: str, make: Callable[[], tuple[Contestant, Any]]) -> None:
        try:
            run, close = make()
        except ImportError:
            missing.append(name)
        else:
            table[name] = run
            cleanups.append(close)

    if dialect == "guide":
        table["ours: TokenDecoder"] = ours
        table["ours: SSEDecoder + json.loads"] = ours_sse_json
        table["guide's naive loop"] = guide_naive
        _add(table, missing, "httpx-sse", lambda: httpx_sse, PROBE)
        _add(table, missing, "openai", lambda: openai_sse, PROBE)
        _add(table, missing, "sseclient-py", lambda: sseclient_py, PROBE)
        async_peer("aiohttp-sse-client2", make_aiohttp_sse_client2)
        table["floor 1: split + json.loads"] = floor_json
        _add(table, missing, "floor 2: split + orjson", make_floor_orjson)
        return table, cleanups, missing
    if dialect == "openai":
        answer, answer_async = _chunk_answer, _chunk_answer_async
        table["ours: ChunkDecoder"] = ours_chunks
    else:
        answer, answer_async = _typed_answer, _typed_answer_async
        table["ours: TokenDecoder"] = ours
    table["ours: SSEDecoder + json.loads"] = lambda chunks: answer(ours_sse_events(chunks))
    httpx_run: Contestant = lambda chunks: answer(httpx_sse_events(chunks))  # noqa: E731
    _add(table, missing, "httpx-sse", _needs("httpx_sse", httpx_run))
    async_peer("openai", lambda: make_openai_async(answer_async))
    sseclient_run: Contestant = lambda chunks: answer(sseclient_events(chunks))  # noqa: E731
    _add(table, missing, "sseclient-py", _needs("sseclient", sseclient_run))
    async_peer("aiohttp-sse-client2", lambda: make_aiohttp_events(answer_async))
    if dialect == "openai":
        table["floor 1: split + json.loads"] = chunk_floor_json
        _add(table, missing, "floor 2: split + orjson", make_chunk_floor_orjson)
    return table, cleanups, missing


def measure(
    corpus: Corpus,
    chunkings: dict[str, list[bytes]],
    rounds: int,
    clock: Callable[[], float],
    dialect: str = "guide",
) -> dict[str, dict[str, list[float]]]:
    """Seconds per run: chunking -> contestant -> one time per round.

    A peer that does not produce the corpus text (it cannot read this framing) is left out of
    that chunking's table, with a note; ours must produce it.
    """
    table, cleanups, missing = contestants(dialect)
    if missing:
        print(f"not installed (pip install -e '.[bench]'): {', '.join(missing)}")
    timings: dict[str, dict[str, list[float]]] = {}
    try:
        for chunking, chunks in chunkings.items():
            names = []
            for name in table:  # correctness first, and a warm-up
                try:
                    text = table[name](chunks)
                except Exception as error:  # a peer that cannot read the framing at all
                    text = f"<{type(error).__name__}: {error}>"
                if text == corpus.text:
                    names.append(name)
                elif name in OURS:
                    raise AssertionError(f"{name} ({chunking}) produced different text")
                else:
                    print(f"  {name} ({chunking}): wrong text, left out")
            timings[chunking] = {name: [] for name in names}
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


def _best_peer(rates: dict[str, float]) -> str | None:
    peers = [name for name in rates if name in LIBRARY_PEERS]
    return max(peers, key=lambda name: rates[name]) if peers else None


def _per_round(times: dict[str, list[float]], name: str, base: str) -> float:
    """The median over rounds of base time / name time (how many times faster ``name`` is)."""
    return statistics.median([b / t for b, t in zip(times[base], times[name], strict=True)])


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
        best_peer = _best_peer(rates)
        naive = "guide's naive loop" if "guide's naive loop" in rates else None

        def ratio(name: str, base: str | None, times: dict[str, list[float]] = by_name) -> str:
            if base is None:
                return "-"
            return f"{_per_round(times, name, base):.2f}x"

        lines.append(f"\n### {chunking} ({len(chunkings[chunking])} chunks)\n")
        header = "| contestant | events/s | MB/s | vs best peer |"
        rule = "|---|---:|---:|---:|"
        if naive:
            header += " vs naive loop |"
            rule += "---:|"
        lines += [header, rule]
        for name, rate in sorted(rates.items(), key=lambda item: -item[1]):
            mb_s = megabytes / medians[name]
            label = f"**{name}**" if name in OURS else name
            if name == best_peer:
                label += " (best peer)"
            row = f"| {label} | {rate / 1e3:,.0f}k | {mb_s:.1f} | {ratio(name, best_peer)} |"
            if naive:
                row += f" {ratio(name, naive)} |"
            lines.append(row)
    return "\n".join(lines)


def summary(results: dict[str, tuple[Corpus, dict[str, dict[str, list[float]]]]]) -> str:
    """One table: per corpus and chunking, ours against the fastest library peer."""
    lines = [
        "\n## Summary: ours / best library peer (per-round median)\n",
        "| corpus | chunking | ours | events/s | best peer | events/s | ours / best peer |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for suite_name, (corpus, timings) in results.items():
        for chunking, by_name in timings.items():
            rates = {
                name: corpus.event_count / statistics.median(times)
                for name, times in by_name.items()
            }
            ours_name = next(name for name in by_name if name in OURS)
            best = _best_peer(rates)
            if best is None:
                continue
            lines.append(
                f"| {suite_name} | {chunking} | {ours_name.removeprefix('ours: ')} "
                f"| {rates[ours_name] / 1e3:,.0f}k | {best} | {rates[best] / 1e3:,.0f}k "
                f"| **{_per_round(by_name, ours_name, best):.2f}x** |"
            )
    return "\n".join(lines)


def make_chunkings(corpus: Corpus) -> dict[str, list[bytes]]:
    return {
        "one event per chunk": chunk_events(corpus),
        "16 KiB chunks": chunk_fixed(corpus),
        "random 1-64 B chunks": chunk_random(corpus),
    }


def profile(chunkings: dict[str, list[bytes]], dialect: str = "guide") -> None:
    runner = ours_chunks if dialect == "openai" else ours
    label = "ChunkDecoder" if dialect == "openai" else "TokenDecoder"
    for chunking, chunks in chunkings.items():
        print(f"\n=== profile: {label}, {chunking}")
        profiler = cProfile.Profile()
        profiler.runcall(runner, chunks)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k events, 3 rounds")
    parser.add_argument("--events", type=int, default=None, help="token events (default 100000)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument("--profile", action="store_true", help="cProfile ours and exit")
    parser.add_argument(
        "--corpus",
        action="append",
        choices=list(SUITES),
        help="a corpus to run (repeat for several; default: all)",
    )
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: time.process_time (default; robust on a shared machine), wall: perf_counter",
    )
    args = parser.parse_args(argv)
    events = args.events or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 7)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results: dict[str, tuple[Corpus, dict[str, dict[str, list[float]]]]] = {}
    for suite_name in args.corpus or list(SUITES):
        suite = SUITES[suite_name]
        corpus = suite.make(events)
        chunkings = make_chunkings(corpus)
        if args.profile:
            print(f"\n##### {suite_name}: {suite.title}")
            profile(chunkings, suite.dialect)
            continue
        print(
            f"\n## {suite_name}: {suite.title}\n\ncorpus: {corpus.event_count:,} events, "
            f"{len(corpus.body) / 1e6:.2f} MB; {rounds} rounds, median {args.clock} time; "
            f"Python {platform.python_version()} on {platform.machine()}",
            flush=True,
        )
        timings = measure(corpus, chunkings, rounds, clock, suite.dialect)
        results[suite_name] = (corpus, timings)
        print(report(corpus, chunkings, timings), flush=True)
    if results:
        print(summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
