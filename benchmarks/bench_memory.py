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

tests/hardening/test_hostile_input.py asserts the decoder peaks stay under 3x the limit; this
script prints the figures.

``--answers`` measures something else: the peak RSS of one whole ``InfernetClient`` stream that
reads an answer of ``--answer-mb`` MiB of UTF-8 from a raw loopback server (HTTP/1.1 chunked
``text/event-stream``, many ``data: {"text": ...}`` events a chunk, then ``data: [DONE]``), for
token shapes a hostile server could pick: ~4-letter ASCII words (the baseline shape), one-character
``"€"`` tokens, two-character ASCII tokens, one-character emoji tokens, and ``--empty-tokens``
empty tokens after one real token. Each case runs in a fresh subprocess (its own high-water mark,
``ru_maxrss``), once with ``await stream.final_text()`` and once with ``async for token in
stream``, the server in a thread of this process. It prints the peak RSS, the RSS above an idle
interpreter that imported the client, and that over the answer's UTF-8 size. The client has no
answer limit (``max_answer_bytes=None``, or ``max_answer_chars=None`` for a package from before the
limit counted bytes) and generous timeouts. ``--package-root DIR`` imports ``infernet_async`` from
``DIR`` instead of this checkout (to measure another revision with the same script):

    python benchmarks/bench_memory.py --answers                     # 16 MiB answers
    python benchmarks/bench_memory.py --answers --answer-mb 64      # the default answer limit
    python benchmarks/bench_memory.py --answers --package-root /tmp/old
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from typing import Any


def _package_root() -> str:
    """``--package-root DIR`` (read before the package is imported), else this checkout."""
    for i, arg in enumerate(sys.argv):
        if arg == "--package-root" and i + 1 < len(sys.argv):
            return str(Path(sys.argv[i + 1]).resolve())
        if arg.startswith("--package-root="):
            return str(Path(arg.partition("=")[2]).resolve())
    return str(Path(__file__).resolve().parent.parent)


sys.path.insert(0, _package_root())

from infernet_async import EventTooLargeError, InfernetClient  # noqa: E402
from infernet_async._config import RetryPolicy, Timeouts  # noqa: E402
from infernet_async._token_decoder import TokenDecoder  # noqa: E402
from infernet_async.sse import DEFAULT_MAX_EVENT_SIZE, SSEDecoder  # noqa: E402

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


# -- --answers: peak RSS of one stream per token shape ---------------------------------------------

# ~4-letter words with a leading space (5 bytes each), as a model's tokens come.
WORDS = tuple(f" {w}" for w in ("time", "code", "data", "work", "text", "line", "node", "call"))
# shape: (what it is, the tokens it cycles through; None: one real token, then empty ones)
SHAPES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "words": ("~4-char ASCII words + spaces", WORDS),
    "euro": ('1-char "€" tokens', ("€",)),
    "ascii2": ("2-char ASCII tokens", ("ab",)),
    "emoji": ('1-char "😀" tokens', ("😀",)),
    "empty": ('empty tokens ("")', None),
}
MODES = ("final_text", "iterate")
FIRST_TOKEN = "Hello"  # the empty shape's one real token
HTTP_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n"
)


def _event(token: str) -> bytes:
    return b"data: %s\n\n" % json.dumps({"text": token}, ensure_ascii=False).encode()


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Plan:
    """What the server sends for one shape: HTTP chunks of many events each, then ``[DONE]``."""

    def __init__(self, shape: str, answer_bytes: int, empty_tokens: int) -> None:
        cycle = SHAPES[shape][1]
        self.blocks: list[tuple[bytes, int]] = []  # (one HTTP chunk, how many times it is sent)
        if cycle is None:
            self.blocks.append((_http_chunk(_event(FIRST_TOKEN)), 1))
            events, tokens = [_event("")], empty_tokens
            self.tokens, self.chars = 1, len(FIRST_TOKEN)
            self.nbytes = len(FIRST_TOKEN.encode())
        else:
            events = [_event(t) for t in cycle]
            round_bytes = sum(len(t.encode()) for t in cycle)
            tokens = answer_bytes // round_bytes * len(cycle)
            self.tokens = tokens
            self.chars = tokens // len(cycle) * sum(len(t) for t in cycle)
            self.nbytes = tokens // len(cycle) * round_bytes
        round_size = sum(len(e) for e in events)
        rounds = max(1, CHUNK // round_size)  # a chunk of ~64 KiB, whole rounds of the cycle
        per_chunk = rounds * len(events)
        full, rest = divmod(tokens, per_chunk)
        if full:
            self.blocks.append((_http_chunk(b"".join(events) * rounds), full))
        if rest:
            self.blocks.append((_http_chunk(b"".join(events) * (rest // len(events))), 1))
        self.blocks.append((_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n", 1))


class LoopbackServer:
    """A raw asyncio server in a thread of this process (the client runs in a subprocess)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @contextmanager
    def serving(self, plan: Plan) -> Iterator[str]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(HTTP_HEAD)
                for block, count in plan.blocks:
                    for _ in range(count):
                        writer.write(block)
                        await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(handle, "127.0.0.1", 0), self._loop
        ).result()
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


def _peak_rss() -> int:
    """This process's peak RSS in bytes (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _no_limit() -> dict[str, None]:
    """The keyword that lifts the answer limit in the package imported: bytes now, chars before."""
    params = inspect.signature(InfernetClient).parameters
    for name in ("max_answer_bytes", "max_answer_chars"):
        if name in params:
            return {name: None}
    return {}


async def _read_answer(url: str, mode: str) -> dict[str, Any]:
    client = InfernetClient(
        url,
        token="t",
        timeouts=Timeouts(connect=30, read=600, first_token=600, stall=600, total=None),
        retry=RetryPolicy(max_retries=0),
        **_no_limit(),
    )
    tokens = chars = 0
    try:
        async with client.stream(model="m", messages=[{"role": "user", "content": "hi"}]) as s:
            if mode == "final_text":
                text = await s.final_text()
                chars = len(text)
                tokens = s.token_count
            else:
                async for token in s:
                    tokens += 1
                    chars += len(token)
            finished = s.finished
    finally:
        await client.aclose()
    return {"tokens": tokens, "chars": chars, "finished": finished}


def answer_child(url: str, mode: str) -> None:
    """One case, in a fresh process: read the answer, print the figures as JSON."""
    started = time.perf_counter()
    result = asyncio.run(_read_answer(url, mode))
    result["seconds"] = time.perf_counter() - started
    result["peak_rss"] = _peak_rss()
    print(json.dumps(result))


def _run_child(argv: list[str], cap: int, timeout: float) -> dict[str, Any]:
    """Run this script with ``argv``; kill it past ``cap`` bytes of RSS or ``timeout`` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as child:
        status = Path(f"/proc/{child.pid}/status")
        deadline = time.monotonic() + timeout
        killed = ""
        while child.poll() is None:
            try:
                rss = next(
                    int(line.split()[1]) * 1024
                    for line in status.read_text().splitlines()
                    if line.startswith("VmRSS:")
                )
            except (OSError, StopIteration):
                rss = 0
            if rss > cap:
                killed = f"killed: RSS {rss / MiB:.0f} MiB past the cap"
            elif time.monotonic() > deadline:
                killed = "killed: timeout"
            if killed:
                child.kill()
                child.wait()
                break
            time.sleep(0.05)
        out = child.stdout.read() if child.stdout else ""
    if killed or child.returncode != 0:
        return {"error": killed or f"exit status {child.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def answers_table(args: argparse.Namespace) -> None:
    import infernet_async

    answer_bytes = args.answer_mb * MiB
    cap = int(args.rss_cap_gb * 1024 * MiB)
    common = ["--package-root", _package_root()]
    baseline = _run_child(["--baseline-child", *common], cap, 60)["peak_rss"]
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"infernet_async from {Path(infernet_async.__file__).parent} "
        f"(limit lifted with {next(iter(_no_limit()), '?')}=None)"
    )
    print(
        f"answers of {args.answer_mb} MiB UTF-8 ({args.empty_tokens} empty tokens for the empty "
        f"shape); baseline (idle interpreter, client imported): peak RSS {baseline / MiB:.1f} MiB\n"
    )
    header = (
        f"{'shape':30} {'read with':10} {'answer MiB':>10} {'tokens':>10} {'peak RSS MiB':>12} "
        f"{'above base':>10} {'/ answer':>9} {'seconds':>8}"
    )
    print(header)
    server = LoopbackServer()
    try:
        for shape in args.shapes.split(","):
            plan = Plan(shape, answer_bytes, args.empty_tokens)
            for mode in args.modes.split(","):
                with server.serving(plan) as url:
                    got = _run_child(["--answer-child", url, mode, *common], cap, args.case_timeout)
                label, size = SHAPES[shape][0], plan.nbytes / MiB
                if "error" in got:
                    print(f"{label:30} {mode:10} {size:10.2f} {'':>10} {got['error']}")
                    continue
                if got["chars"] != plan.chars or not got["finished"]:
                    got["note"] = f"  (got {got['chars']} chars of {plan.chars})"
                above = got["peak_rss"] - baseline
                if SHAPES[shape][1] is None:
                    # A 5-byte answer: the ratio says nothing; the cost per empty token does.
                    ratio = f"{'n/a':>9}"
                    note = f"  ({above / args.empty_tokens:.2f} bytes per empty token)"
                    got["note"] = got.get("note", "") + note
                else:
                    ratio = f"{above / plan.nbytes:9.2f}"
                print(
                    f"{label:30} {mode:10} {size:10.2f} {plan.tokens:>10} "
                    f"{got['peak_rss'] / MiB:12.1f} {above / MiB:10.1f} "
                    f"{ratio} {got['seconds']:8.1f}{got.get('note', '')}",
                    flush=True,
                )
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the line, MB (default 100)")
    parser.add_argument(
        "--naive-mb",
        type=int,
        default=16,
        help="line size for the guide's loop, MB (default 16: it is quadratic)",
    )
    parser.add_argument(
        "--answers",
        action="store_true",
        help="instead: peak RSS of one stream per hostile token shape (see the module docstring)",
    )
    parser.add_argument(
        "--answer-mb",
        type=int,
        default=16,
        help="answer size, MiB of UTF-8 (default 16: the table in about 3 minutes; the SDK's "
        "answer limit is 64)",
    )
    parser.add_argument(
        "--empty-tokens",
        type=int,
        default=20_000_000,
        help="empty tokens for the empty shape (default 20 million)",
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes")
    parser.add_argument("--modes", default=",".join(MODES), help="final_text and/or iterate")
    parser.add_argument(
        "--package-root", help="import infernet_async from this directory, not this checkout"
    )
    parser.add_argument(
        "--rss-cap-gb", type=float, default=6.0, help="kill a case past this RSS (default 6)"
    )
    parser.add_argument(
        "--case-timeout", type=float, default=900.0, help="kill a case after this (seconds)"
    )
    parser.add_argument("--answer-child", nargs=2, metavar=("URL", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        print(json.dumps({"peak_rss": _peak_rss()}))
        return
    if args.answer_child:
        answer_child(*args.answer_child)
        return
    if args.answers:
        answers_table(args)
        return
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
