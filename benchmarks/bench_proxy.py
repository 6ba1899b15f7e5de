"""Through a proxy: client CPU per token for K concurrent streams, with and without a forward proxy.

The DevServer runs in its own process (``bench_e2e.py serve``: one node, every job at once, the
server generating as fast as it can) and listens on loopback over plain http. The proxy is
proxy.py in a process of its own, started as the proxy tests start it (``tests/helpers/proxy.py``'s
``ProxyServer``). Each contestant runs in a fresh client process (``client`` mode below): a
warm-up of a few streams, then K streams at once; the figure is the client process's CPU time
(user + system, ``resource.getrusage``) over the tokens it received. The proxy's own CPU is not
counted: it is another process.

Contestants, each with ``proxy=`` given explicitly (loopback is never proxied from the environment)
and without it:

- ``ours_stream``: ``InfernetClient(..., proxy=PROXY)``, one ``client.stream(...)`` per answer read
  with ``async for token in stream``, the K streams under ``asyncio.gather``;
- ``ours_gather``: the same client, ``client.gather(requests, concurrency=K)`` (collect mode: the
  fan-out, whose sockets rest between reads);
- ``aiohttp``: a plain ``aiohttp.ClientSession`` (a pool of K), ``session.post(..., proxy=PROXY)``,
  the SSE body read line by line, ``json.loads`` of every ``data:`` line (the streaming guide's loop
  on aiohttp);
- ``aiohttp_sse_client2`` (not in the default run): bench_e2e's aiohttp-sse-client2 peer, its
  ``EventSource`` given ``proxy=`` (passed on to the session's request).

Every stream must bring exactly the expected number of tokens (``--tokens``), and the proxy must
have handled the proxied contestants' requests (its request log is checked), else the run counts
as failed. Rounds interleave every (contestant, proxy or not) pair; the table shows medians over
the rounds and, per condition, aiohttp's CPU per token over ours.

Usage::

    python benchmarks/bench_proxy.py                   # K = 50, 200 tokens an answer, 3 rounds
    python benchmarks/bench_proxy.py --json out.json   # also every run, as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_e2e import MODEL, TOKEN, Server, _body, _cpu, _runner_for  # noqa: E402

CLIENTS = ("ours_stream", "ours_gather", "aiohttp")
LABELS = {
    "ours_stream": "infernet_async, `async for` over `client.stream`",
    "ours_gather": "infernet_async, `client.gather`",
    "aiohttp": "aiohttp, `data:` lines + `json.loads`",
    "aiohttp_sse_client2": "aiohttp-sse-client2",
}
OURS = ("ours_stream", "ours_gather")
PEER = "aiohttp"


# ---------------------------------------------------------------- the clients
# Each returns the tokens of every stream, and the first error if any.

Result = tuple[list[int], str | None]


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Benchmark question number {i}."}]


async def run_ours_stream(url: str, proxy: str | None, k: int, max_tokens: int) -> Result:
    from infernet_async import InfernetClient

    errors: list[str] = []
    async with InfernetClient(url, TOKEN, max_connections=k, proxy=proxy) as client:

        async def one(i: int) -> int:
            tokens = 0
            try:
                async with client.stream(
                    model=MODEL, messages=_messages(i), max_tokens=max_tokens
                ) as stream:
                    async for _token in stream:
                        tokens += 1
            except Exception as exc:
                errors.append(repr(exc))
            return tokens

        counts = list(await asyncio.gather(*(one(i) for i in range(k))))
    return counts, errors[0] if errors else None


async def run_ours_gather(url: str, proxy: str | None, k: int, max_tokens: int) -> Result:
    from infernet_async import BatchRequest, InfernetClient

    requests = [
        BatchRequest(
            id=str(i), model=MODEL, prompt=f"Benchmark question number {i}.", max_tokens=max_tokens
        )
        for i in range(k)
    ]
    async with InfernetClient(url, TOKEN, max_connections=k, proxy=proxy) as client:
        outcomes = await client.gather(requests, concurrency=k)
    errors = [f"{o.error}" for o in outcomes if not o.ok]
    return [o.tokens for o in outcomes], errors[0] if errors else None


async def run_aiohttp(url: str, proxy: str | None, k: int, max_tokens: int) -> Result:
    import aiohttp

    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=k)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> int:
            tokens = 0
            parts: list[str] = []
            try:
                async with session.post(
                    f"{url}/jobs", json=_body(max_tokens, i), headers=headers, proxy=proxy
                ) as response:
                    response.raise_for_status()
                    async for raw in response.content:  # one line at a time
                        line = raw.decode()
                        if not line.startswith("data: "):
                            continue
                        data = line[6:].strip()
                        if data == "[DONE]":
                            break
                        event = json.loads(data)
                        if "error" in event:
                            raise RuntimeError(event.get("message"))
                        if "text" in event:
                            parts.append(event["text"])
                            tokens += 1
            except Exception as exc:
                errors.append(repr(exc))
            return tokens

        counts = list(await asyncio.gather(*(one(i) for i in range(k))))
    return counts, errors[0] if errors else None


async def run_aiohttp_sse_client2(url: str, proxy: str | None, k: int, max_tokens: int) -> Result:
    import aiohttp
    from aiohttp_sse_client2 import client as sse_client

    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=k)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> int:
            tokens = 0
            parts: list[str] = []
            try:
                async with sse_client.EventSource(
                    f"{url}/jobs",
                    option={"method": "POST"},
                    session=session,
                    json=_body(max_tokens, i),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    max_connect_retry=0,
                    proxy=proxy,
                ) as source:
                    async for event in source:
                        if event.data == "[DONE]":
                            break
                        payload = json.loads(event.data)
                        if "error" in payload:
                            raise RuntimeError(payload.get("message"))
                        parts.append(payload["text"])
                        tokens += 1
            except Exception as exc:
                errors.append(repr(exc))
            return tokens

        counts = list(await asyncio.gather(*(one(i) for i in range(k))))
    return counts, errors[0] if errors else None


RUNNERS: dict[str, Callable[[str, str | None, int, int], Awaitable[Result]]] = {
    "ours_stream": run_ours_stream,
    "ours_gather": run_ours_gather,
    "aiohttp": run_aiohttp,
    "aiohttp_sse_client2": run_aiohttp_sse_client2,
}


def client(args: argparse.Namespace) -> None:
    """Run one contestant for K streams (after a warm-up) and print its figures as a JSON line."""
    runner = RUNNERS[args.client]
    proxy = args.proxy or None
    run = _runner_for(args.loop)
    warm, error = run(runner(args.url, proxy, min(args.k, 8), args.max_tokens))
    if error or any(n != args.max_tokens for n in warm):
        sys.exit(f"warm-up failed: {error or warm}")
    cpu_before = _cpu()
    wall_before = time.perf_counter()
    counts, error = run(runner(args.url, proxy, args.k, args.max_tokens))
    wall = time.perf_counter() - wall_before
    cpu = _cpu() - cpu_before
    tokens = sum(counts)
    short = sum(1 for n in counts if n != args.max_tokens)
    print(
        json.dumps(
            {
                "client": args.client,
                "proxy": proxy is not None,
                "k": args.k,
                "streams": len(counts),
                "tokens": tokens,
                "expected_tokens": args.k * args.max_tokens,
                "wrong_streams": short,
                "first_error": error,
                "wall_s": wall,
                "cpu_s": cpu,
                "cpu_us_per_token": cpu / tokens * 1e6 if tokens else None,
                "tokens_per_s": tokens / wall if wall else None,
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------- the driver


def run_client(
    args: argparse.Namespace, base_url: str, name: str, proxy: str | None
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "client",
        "--client",
        name,
        "--url",
        base_url,
        "--proxy",
        proxy or "",
        "--k",
        str(args.k),
        "--max-tokens",
        str(args.tokens),
        "--loop",
        args.loop,
    ]
    env = dict(os.environ)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        env.pop(var, None)
        env.pop(var.lower(), None)
    failed = {"client": name, "proxy": proxy is not None, "k": args.k, "cpu_us_per_token": None}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return {**failed, "first_error": "timed out"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {**failed, "first_error": " | ".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1])
    if (
        result["first_error"]
        or result["wrong_streams"]
        or (result["tokens"] != result["expected_tokens"])
    ):
        result["cpu_us_per_token"] = None  # not a valid figure: the run did not get every token
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get("cpu_us_per_token") is not None]
    return statistics.median(values) if values else None


def summarize(args: argparse.Namespace, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for proxied in (True, False):
        for name in args.clients:
            mine = [r for r in runs if r["client"] == name and r["proxy"] == proxied]
            cpus = [r["cpu_us_per_token"] for r in mine if r.get("cpu_us_per_token") is not None]
            rows.append(
                {
                    "client": name,
                    "proxy": proxied,
                    "runs": len(mine),
                    "valid_runs": len(cpus),
                    "cpu_us_per_token": _median(mine, "cpu_us_per_token"),
                    "cpu_min": min(cpus) if cpus else None,
                    "cpu_max": max(cpus) if cpus else None,
                    "tokens_per_s": _median(mine, "tokens_per_s"),
                    "tokens": [r.get("tokens") for r in mine],
                    "first_error": next(
                        (r["first_error"] for r in mine if r.get("first_error")), None
                    ),
                }
            )
    by = {(r["client"], r["proxy"]): r for r in rows}
    for row in rows:
        peer = by.get((PEER, row["proxy"]))
        mine = row["cpu_us_per_token"]
        if peer and peer["cpu_us_per_token"] and mine and row["client"] in OURS:
            row["peer_over_ours"] = peer["cpu_us_per_token"] / mine
    return rows


def table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    out = [
        f"K = {args.k} streams of {args.tokens} tokens ({args.k * args.tokens} tokens a run), "
        f"median of {args.rounds} interleaved rounds; the proxy's own CPU is not counted.",
        "",
        "| condition | client | CPU µs/token (median) | min-max | tokens/s | tokens each run "
        f"| {PEER} / ours |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        condition = "through proxy.py" if row["proxy"] else "direct"
        label = LABELS.get(row["client"], row["client"])
        if row["cpu_us_per_token"] is None:
            out.append(
                f"| {condition} | {label} | FAILED | | | {row['tokens']} | {row['first_error']} |"
            )
            continue
        ratio = f"{row['peer_over_ours']:.2f}x" if "peer_over_ours" in row else ""
        counts = sorted({t for t in row["tokens"] if t is not None})
        tokens = ", ".join(str(t) for t in counts)
        if row["valid_runs"] < row["runs"]:
            tokens += f" ({row['runs'] - row['valid_runs']} failed: {row['first_error']})"
        out.append(
            f"| {condition} | {label} | {row['cpu_us_per_token']:.1f} "
            f"| {row['cpu_min']:.1f}-{row['cpu_max']:.1f} | {row['tokens_per_s']:.0f} "
            f"| {tokens} | {ratio} |"
        )
    return "\n".join(out)


def drive(args: argparse.Namespace) -> None:
    from tests.proxy_support import ProxyServer

    args.clients = [c for c in args.clients.split(",") if c]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.loop} loop; "
        f"K = {args.k}, {args.tokens} tokens an answer, {args.rounds} rounds",
        flush=True,
    )
    # As fast as the server generates: events pile up between reads.
    server = Server(args.server_rate, args.tokens, args.ttft)
    proxy = ProxyServer()
    runs: list[dict[str, Any]] = []
    try:
        proxy.start()
        pairs = [(name, proxied) for name in args.clients for proxied in (True, False)]
        for round_no in range(args.rounds):
            # Rotate the order, so no pair always runs first (or last) in a round.
            shift = round_no % len(pairs)
            for name, proxied in pairs[shift:] + pairs[:shift]:
                proxy.clear()
                result = run_client(args, server.base_url, name, proxy.url if proxied else None)
                seen = sum(1 for r in proxy.records() if r.get("method") == "POST")
                result["proxy_requests"] = seen
                # The warm-up's requests and the K of the run, or none at all without the proxy.
                wanted = args.k + min(args.k, 8) if proxied else 0
                if seen != wanted and result.get("cpu_us_per_token") is not None:
                    result["cpu_us_per_token"] = None
                    result["first_error"] = f"the proxy saw {seen} POSTs, not {wanted}"
                result["round"] = round_no
                runs.append(result)
                cpu = result.get("cpu_us_per_token")
                print(
                    f"  round {round_no + 1}: {name:<20} "
                    f"{'proxy ' if proxied else 'direct'} "
                    + (
                        f"{cpu:6.1f} µs/token  {result['tokens']} tokens  "
                        f"{result['tokens_per_s']:.0f} tok/s  proxy saw {seen} POSTs"
                        if cpu is not None
                        else f"FAILED: {result.get('first_error')}"
                    ),
                    flush=True,
                )
    finally:
        proxy.stop()
        server.close()
    rows = summarize(args, runs)
    print()
    print(table(args, rows))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "cpus": os.cpu_count(),
                    "k": args.k,
                    "tokens": args.tokens,
                    "rounds": args.rounds,
                    "summary": rows,
                    "runs": runs,
                },
                indent=2,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    p_client = sub.add_parser("client")
    p_client.add_argument("--client", choices=tuple(RUNNERS), required=True)
    p_client.add_argument("--url", required=True)
    p_client.add_argument("--proxy", default="", help="the proxy URL, empty for none")
    p_client.add_argument("--k", type=int, required=True)
    p_client.add_argument("--max-tokens", type=int, required=True)
    p_client.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--k", type=int, default=50, help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=200, help="tokens an answer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help=f"from {', '.join(RUNNERS)} ({PEER} is the peer of the ratio)",
    )
    parser.add_argument(
        "--server-rate", type=float, default=100_000.0, help="tokens/s per stream (fast)"
    )
    parser.add_argument("--ttft", type=float, default=0.05, help="server time to first token, s")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--timeout", type=float, default=300.0, help="per client run, seconds")
    parser.add_argument("--json", help="write the summary and every run to this file")
    args = parser.parse_args()
    if args.mode == "client":
        client(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
