"""Fan-out pacing: does ``client.gather()`` spend the rate-limit budget it has (issue 20)?

Every run gets a fresh ``DevServer`` in a process of its own (its own CPU), with the budget of its
case (``rate_limit_per_minute``: fixed 60 s windows that open with their first request) and fast
generation (a node with no time to first token and ``--tps`` tokens/s, ``--answer-tokens`` tokens
an answer), so the wall time is about pacing, not generation. Each client runs in a fresh process
of its own too. Two ways to send N jobs:

- ours: ``client.gather(requests, concurrency=C)`` (the fan-out: what ``X-RateLimit-Remaining``
  allows goes at once, a spent budget waits for ``X-RateLimit-Reset``);
- unpaced: ``asyncio.gather`` of N ``client.complete()`` on one default client: no limiter, a 429
  is retried by the client's ``RetryPolicy`` (``Retry-After`` up to 60 s, 2 retries).

Cases (the targets are issue 20's):

- ``burst``: N = 50, 60 a minute: ours within 1.2x of unpaced, zero 429s;
- ``windows`` (``--long``): N = 150, 60 a minute: the first 60 at once, the rest right after each
  window turns; wall time within 5 % of the two window turns (120 s), at most one 429;
- ``large``: N = 1,000, 10,000 a minute: ours within 1.2x of unpaced, zero 429s;
- ``shared``: two client processes at once on one token and one budget of 60 a minute, N = 50 each
  (100 jobs: one window turn; ``--long``: N = 100 each, three turns): no job lost (every job ok,
  the server created exactly one job per request), 429s at most a handful.

429s are counted by the server (every ``POST /jobs`` it answered 429), so the ones the client
retried on its own count too; "jobs created" is the server's count of ``POST /jobs`` it answered
200. Wall time is the client process's ``asyncio.run`` of the jobs, opening and closing the client
included, imports not (for ``shared``: from the earlier start to the later end of the two
processes). With ``--repeat`` R > 1
the runs of a case interleave ours and unpaced, and the table shows the medians of wall time (the
best in brackets: sub-second runs on a shared machine move by tens of ms) and the most 429s /
fewest jobs ok of any run.

Then one cell of the interactive path beside the fan-out's collect mode, on a server with no budget
to speak of, at model speed (``--cell-tps`` tokens/s per stream, ``--cell-tokens`` an answer):
K = 100 ``async for token in stream`` readers under ``asyncio.gather`` (every chunk read as it
comes) against ``client.gather(concurrency=K)`` (default ``read_interval``: sockets rest between
reads, nobody sees a token before the job ends). Best of ``--cell-repeat`` interleaved runs by CPU
per token: client CPU (user + system, ``resource.getrusage``, connection setup included) per token,
and the median time to first token, also less the server's own figure (its time to first token
plus one token interval).

Usage::

    python benchmarks/bench_fanout.py                  # burst, large, shared (N = 50 each), cell
    python benchmarks/bench_fanout.py --long           # + windows and shared with N = 100 each
    python benchmarks/bench_fanout.py --json out.json  # also every run's figures (``-``: stdout)
    python benchmarks/bench_fanout.py --smoke          # tiny N, no window turn: a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._devserver_process import MODEL, TOKEN, ServerProcess, bench_devserver  # noqa: E402

WINDOW = 60.0  # the DevServer's per-minute window
MODES = ("ours", "unpaced", "interactive", "collect")


# ---------------------------------------------------------------- the server process


def window_report(arrivals: list[tuple[float, int | None]]) -> list[dict[str, Any]]:
    """The server's fixed windows over ``(arrival time, status)`` of ``POST /jobs``: a window
    opens with the first request after the previous one's length has passed (as the DevServer's
    ``RateLimiter`` rolls them). Per window: when it opened (from the first request), how long
    after the previous window's turn (``lag_s``), how many were answered 200 / 429 and the spread
    of its accepted arrivals."""
    windows: list[dict[str, Any]] = []
    first = start = None
    for at, status in sorted(arrivals, key=lambda a: a[0]):
        if start is None or at >= start + WINDOW:
            lag = None if start is None else at - (start + WINDOW)
            start = at
            first = at if first is None else first
            windows.append(
                {"opened_s": at - first, "lag_s": lag, "ok": 0, "429": 0, "spread_s": 0.0}
            )
        window = windows[-1]
        if status == 429:
            window["429"] += 1
        elif status == 200:
            window["ok"] += 1
            window["spread_s"] = at - start
    return windows


def serve(args: argparse.Namespace) -> None:
    """Run a DevServer with one fast node and the given budget; answer ``stats`` lines on stdin
    (one JSON line: statuses of ``POST /jobs`` and their windows, then the records are cleared)
    until stdin closes."""

    async def run_server() -> None:
        async with bench_devserver(
            tokens_per_second=args.tps,
            time_to_first_token=args.ttft,
            answer_tokens=args.answer_tokens,
            per_minute=args.per_minute,
            per_hour=args.per_hour,
            record_limit=1_000_000,
        ) as server:
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:  # the driver closed our stdin (or died)
                    return
                posts = [
                    r for r in server.requests if r.method == "POST" and r.path.endswith("/jobs")
                ]
                statuses = Counter(str(r.status) for r in posts)
                print(
                    json.dumps(
                        {
                            "posts": len(posts),
                            "statuses": dict(statuses),
                            "windows": window_report([(r.time, r.status) for r in posts]),
                        }
                    ),
                    flush=True,
                )
                server.clear_records()

    asyncio.run(run_server())


class Server(ServerProcess):
    """This script's ``serve`` mode in its own process, with the given budget."""

    def __init__(
        self, per_minute: int, *, tps: float, answer_tokens: int, ttft: float = 0.0
    ) -> None:
        super().__init__(
            __file__,
            *("--per-minute", str(per_minute), "--per-hour", str(10**9)),
            *("--tps", str(tps), "--ttft", str(ttft), "--answer-tokens", str(answer_tokens)),
        )

    def stats(self) -> dict[str, Any]:
        return self.ask("stats")


# ---------------------------------------------------------------- the clients


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _messages(tag: str, i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Fan-out question {tag}{i}."}]


@dataclass
class Job:
    """One job as a client process saw it."""

    ok: bool = False
    tokens: int = 0
    ttft: float | None = None  # from the job's start, seconds
    error: str | None = None
    rate_limited: bool = False  # ended on a RateLimitError


async def run_ours(url: str, n: int, concurrency: int, max_tokens: int, tag: str) -> list[Job]:
    """``client.gather(requests, concurrency=C)``: the fan-out, default pacing and read_interval."""
    from infernet_async import BatchRequest, InfernetClient, RateLimitError

    requests = [
        BatchRequest(id=f"{tag}{i}", model=MODEL, messages=_messages(tag, i), max_tokens=max_tokens)
        for i in range(n)
    ]
    async with InfernetClient(url, TOKEN) as client:
        outcomes = await client.gather(requests, concurrency=concurrency)
    jobs = []
    for outcome in outcomes:
        ttft = (
            (outcome.time_to_send or 0.0) + outcome.time_to_first_token
            if outcome.time_to_first_token is not None
            else None
        )
        jobs.append(
            Job(
                outcome.ok,
                outcome.tokens,
                ttft,
                None if outcome.ok else f"{outcome.status}: {outcome.error}",
                isinstance(outcome.exception, RateLimitError),
            )
        )
    return jobs


async def run_unpaced(url: str, n: int, concurrency: int, max_tokens: int, tag: str) -> list[Job]:
    """``asyncio.gather`` of N ``client.complete()`` on one default client (``concurrency`` unused:
    the client's own pool of 100 connections is the only bound)."""
    from infernet_async import InfernetClient, RateLimitError

    async with InfernetClient(url, TOKEN) as client:

        async def one(i: int) -> Job:
            try:
                text = await client.complete(
                    model=MODEL, messages=_messages(tag, i), max_tokens=max_tokens
                )
            except Exception as exc:
                return Job(error=repr(exc), rate_limited=isinstance(exc, RateLimitError))
            return Job(ok=bool(text), tokens=max_tokens)  # complete() gives no token count

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def run_interactive(
    url: str, n: int, concurrency: int, max_tokens: int, tag: str
) -> list[Job]:
    """The interactive path: K ``async for token in stream`` readers under ``asyncio.gather``."""
    from infernet_async import InfernetClient

    async with InfernetClient(url, TOKEN, max_connections=max(n, 1)) as client:

        async def one(i: int) -> Job:
            job = Job()
            started = time.perf_counter()
            try:
                async with client.stream(
                    model=MODEL, messages=_messages(tag, i), max_tokens=max_tokens
                ) as stream:
                    async for _token in stream:
                        if job.ttft is None:
                            job.ttft = time.perf_counter() - started
                        job.tokens += 1
                job.ok = True
            except Exception as exc:
                job.error = repr(exc)
            return job

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def run_collect(url: str, n: int, concurrency: int, max_tokens: int, tag: str) -> list[Job]:
    """The fan-out's collect mode at the cell: ``client.gather(concurrency=K)``."""
    return await run_ours(url, n, max(n, 1), max_tokens, tag)


RUNNERS = {
    "ours": run_ours,
    "unpaced": run_unpaced,
    "interactive": run_interactive,
    "collect": run_collect,
}


def client(args: argparse.Namespace) -> None:
    """Run one client once and print its figures as one JSON line."""
    sys.path.insert(0, str(ROOT))
    runner = RUNNERS[args.mode]
    import infernet_async  # noqa: F401  (imports stay out of the timing)

    if args.warm_up:
        # Only where the budget is no object: a warm-up's requests would spend it.
        asyncio.run(runner(args.url, min(args.n, 8), min(args.n, 8), args.max_tokens, "warm"))
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))  # two clients: start together
    cpu_before = _cpu()
    wall_start = time.time()
    before = time.perf_counter()
    jobs = asyncio.run(runner(args.url, args.n, args.concurrency, args.max_tokens, args.tag))
    wall = time.perf_counter() - before
    cpu = _cpu() - cpu_before
    errors = [j.error for j in jobs if j.error]
    ttfts = [j.ttft for j in jobs if j.ttft is not None]
    tokens = sum(j.tokens for j in jobs)
    print(
        json.dumps(
            {
                "mode": args.mode,
                "n": args.n,
                "jobs": len(jobs),
                "ok": sum(j.ok for j in jobs),
                "rate_limited": sum(j.rate_limited for j in jobs),
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "tokens": tokens,
                "wall_s": wall,
                "started_at": wall_start,
                "ended_at": wall_start + wall,
                "cpu_s": cpu,
                "cpu_us_per_token": cpu / tokens * 1e6 if tokens else None,
                "ttft_median_ms": statistics.median(ttfts) * 1e3 if ttfts else None,
            }
        ),
        flush=True,
    )


def _client_command(
    base_url: str,
    mode: str,
    n: int,
    concurrency: int,
    max_tokens: int,
    tag: str = "",
    *,
    warm_up: bool = False,
    start_at: float = 0.0,
) -> list[str]:
    command = [
        sys.executable,
        __file__,
        "client",
        "--mode",
        mode,
        "--url",
        base_url,
        "--n",
        str(n),
        "--concurrency",
        str(concurrency),
        "--max-tokens",
        str(max_tokens),
        "--tag",
        tag or "j",
        "--start-at",
        repr(start_at),
    ]
    return command + (["--warm-up"] if warm_up else [])


def _parse_client(done: subprocess.CompletedProcess[str] | tuple[int, str, str]) -> dict[str, Any]:
    code, out, err = (
        (done.returncode, done.stdout, done.stderr)
        if isinstance(done, subprocess.CompletedProcess)
        else done
    )
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        tail = " | ".join((err or out).strip().splitlines()[-3:])
        raise RuntimeError(f"client process failed ({code}): {tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_clients(commands: list[list[str]], timeout: float) -> list[dict[str, Any]]:
    """Run client processes at once; their figures in order."""
    processes = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise RuntimeError("client process timed out") from None
        results.append(_parse_client((process.returncode, out, err)))
    return results


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    name: str
    n: int  # jobs per client
    per_minute: int
    clients: int = 1
    concurrency: int = 32
    turns: int = 0  # window turns the jobs need: the ideal wall time is turns x 60 s
    max_429: int = 0
    target: str = ""
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.n * self.clients


def _cases(args: argparse.Namespace) -> list[Case]:
    if args.smoke:
        return [
            Case("burst", 5, 60, concurrency=4, target="<= 1.2x unpaced, 0 429s"),
            Case("large", 20, 10_000, concurrency=8, target="<= 1.2x unpaced, 0 429s"),
            Case("shared", 3, 60, clients=2, concurrency=4, max_429=5, target="no job lost"),
        ]
    shared_n = 100 if args.long else 50
    cases = [
        Case("burst", 50, 60, concurrency=32, target="<= 1.2x unpaced, 0 429s"),
        Case(
            "windows",
            150,
            60,
            concurrency=32,
            turns=2,
            max_429=1,
            target="<= 1.05x two turns (120 s), <= 1 429",
        ),
        Case(
            "large",
            1000,
            10_000,
            concurrency=args.large_concurrency,
            target="<= 1.2x unpaced, 0 429s",
        ),
        Case(
            "shared",
            shared_n,
            60,
            clients=2,
            concurrency=32,
            turns=math.ceil(2 * shared_n / 60) - 1,
            max_429=5,
            target="no job lost, 429s a handful",
        ),
    ]
    return [c for c in cases if c.name != "windows" or args.long]


def run_case(case: Case, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One run of a case in one mode: a fresh server, the client process(es), the server's count."""
    with Server(case.per_minute, tps=args.tps, answer_tokens=args.answer_tokens) as server:
        start_at = time.time() + 1.5 if case.clients > 1 else 0.0
        commands = [
            _client_command(
                server.base_url,
                mode,
                case.n,
                case.concurrency,
                args.answer_tokens,
                tag=f"c{c}-",
                start_at=start_at,
            )
            for c in range(case.clients)
        ]
        clients = run_clients(commands, args.timeout)
        stats = server.stats()
    statuses = stats["statuses"]
    return {
        "mode": mode,
        "wall_s": max(c["ended_at"] for c in clients) - min(c["started_at"] for c in clients),
        "ok": sum(c["ok"] for c in clients),
        "jobs": sum(c["jobs"] for c in clients),
        "errors": sum(c["errors"] for c in clients),
        "first_error": next((c["first_error"] for c in clients if c["first_error"]), None),
        "client_rate_limited": sum(c["rate_limited"] for c in clients),
        "server_429": statuses.get("429", 0),
        "jobs_created": statuses.get("200", 0),
        "posts": stats["posts"],
        "statuses": statuses,
        "windows": stats["windows"],
        "clients": clients,
    }


def _summary(case: Case) -> dict[str, Any]:
    def median(mode: str) -> float | None:
        runs = case.runs.get(mode)
        return statistics.median(r["wall_s"] for r in runs) if runs else None

    def worst(mode: str, key: str, pick: Any) -> Any:
        runs = case.runs.get(mode)
        return pick(r[key] for r in runs) if runs else None

    def cpu_ms(mode: str) -> float | None:
        runs = case.runs.get(mode)
        if not runs:
            return None
        return statistics.median(
            sum(c["cpu_s"] for c in r["clients"]) / r["jobs"] * 1e3 for r in runs
        )

    def best(mode: str) -> float | None:
        runs = case.runs.get(mode)
        return min(r["wall_s"] for r in runs) if runs else None

    ours, unpaced = median("ours"), median("unpaced")
    ours_best, unpaced_best = best("ours"), best("unpaced")
    ideal = case.turns * WINDOW if case.turns else None
    ours_429 = worst("ours", "server_429", max)
    ours_ok = worst("ours", "ok", min)
    created = worst("ours", "jobs_created", max)
    ratio = ours / unpaced if ours is not None and unpaced else None
    vs_ideal = ours / ideal if ours is not None and ideal else None
    # Against the window turns it needs where it needs any, else against unpaced.
    met = vs_ideal is not None and vs_ideal <= 1.05 if ideal else ratio is not None and ratio <= 1.2
    if case.name == "shared":
        met = True  # the target there is no job lost and few 429s, not a speed
    met = bool(met and ours_429 <= case.max_429 and ours_ok == case.total and created == case.total)
    return {
        "case": case.name,
        "n": case.total if case.clients == 1 else f"{case.clients} x {case.n}",
        "budget": f"{case.per_minute}/min",
        "concurrency": case.concurrency,
        "ours_wall_s": ours,
        "unpaced_wall_s": unpaced,
        "ratio": ratio,
        "ours_best_wall_s": ours_best,
        "unpaced_best_wall_s": unpaced_best,
        "best_ratio": ours_best / unpaced_best if ours_best is not None and unpaced_best else None,
        "ideal_s": ideal,
        "vs_ideal": vs_ideal,
        "ours_cpu_ms_per_job": cpu_ms("ours"),
        "unpaced_cpu_ms_per_job": cpu_ms("unpaced"),
        "ours_429": ours_429,
        "unpaced_429": worst("unpaced", "server_429", max),
        "ours_ok": ours_ok,
        "unpaced_ok": worst("unpaced", "ok", min),
        "jobs_created": created,
        "total": case.total,
        "target": case.target,
        "met": met,
        "runs": len(case.runs.get("ours", [])),
    }


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if isinstance(value, float) else str(value)


def pacing_table(summaries: list[dict[str, Any]]) -> str:
    rows = [
        "| case | N | budget | ours wall s (best) | unpaced wall s (best) | ratio (of bests) "
        "| ideal s | ours / ideal "
        "| 429s ours | 429s unpaced | jobs ok ours | jobs ok unpaced | jobs created "
        "| client CPU ms/job ours / unpaced | target | met |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    rows.extend(
        f"| {s['case']} | {s['n']} | {s['budget']} "
        f"| {_fmt(s['ours_wall_s'])} ({_fmt(s['ours_best_wall_s'])}) "
        f"| {_fmt(s['unpaced_wall_s'])} ({_fmt(s['unpaced_best_wall_s'])}) "
        f"| {_fmt(s['ratio'])}x ({_fmt(s['best_ratio'])}x) | {_fmt(s['ideal_s'], '.0f')} "
        f"| {_fmt(s['vs_ideal'], '.3f')} | {_fmt(s['ours_429'])} | {_fmt(s['unpaced_429'])} "
        f"| {s['ours_ok']}/{s['total']} | {_fmt(s['unpaced_ok'])}/{s['total']} "
        f"| {_fmt(s['jobs_created'])} "
        f"| {_fmt(s['ours_cpu_ms_per_job'])} / {_fmt(s['unpaced_cpu_ms_per_job'])} "
        f"| {s['target']} | {'yes' if s['met'] else 'NO'} |"
        for s in summaries
    )
    return "\n".join(rows)


def windows_table(case: Case, mode: str) -> str:
    rows = [
        f"{case.name}, {mode} (first run): the server's windows",
        "| window | opened at s | after the turn s | accepted | 429 | accepted within s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, w in enumerate(case.runs[mode][0]["windows"]):
        rows.append(
            f"| {i + 1} | {w['opened_s']:.2f} | {_fmt(w['lag_s'], '.2f')} | {w['ok']} "
            f"| {w['429']} | {w['spread_s']:.2f} |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------- the interactive cell


def run_cell(args: argparse.Namespace) -> list[dict[str, Any]]:
    """K interactive readers against the fan-out's collect mode, at model speed."""
    k, tokens, tps, ttft = args.cell_k, args.cell_tokens, args.cell_tps, args.cell_ttft
    server_ttft = ttft + 1.0 / tps
    runs: dict[str, list[dict[str, Any]]] = {"interactive": [], "collect": []}
    with Server(10**9, tps=tps, answer_tokens=tokens, ttft=ttft) as server:
        for _ in range(args.cell_repeat):
            for mode in runs:
                command = _client_command(server.base_url, mode, k, k, tokens, warm_up=True)
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=args.timeout, check=False
                )
                runs[mode].append(_parse_client(done))
    out = []
    for results in runs.values():
        measured = [r for r in results if r.get("cpu_us_per_token")]
        best = dict(min(measured, key=lambda r: r["cpu_us_per_token"]) if measured else results[0])
        best["errors"] = max(r["errors"] for r in results)
        best["runs"] = len(results)
        best["k"], best["tokens_per_answer"], best["server_ttft_ms"] = k, tokens, server_ttft * 1e3
        median = best.get("ttft_median_ms")
        best["ttft_overhead_ms"] = median - server_ttft * 1e3 if median is not None else None
        out.append(best)
    return out


CELL_LABELS = {
    "interactive": "`async for token in stream` x K (asyncio.gather)",
    "collect": "client.gather(concurrency=K) (collect)",
}


def cell_table(cell: list[dict[str, Any]]) -> str:
    rows = [
        "| path | K | tokens an answer | CPU µs/token | wall s | TTFT median ms "
        "| TTFT overhead ms | jobs ok | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows.extend(
        f"| {CELL_LABELS[r['mode']]} | {r['k']} | {r['tokens_per_answer']} "
        f"| {_fmt(r['cpu_us_per_token'], '.1f')} | {r['wall_s']:.2f} "
        f"| {_fmt(r['ttft_median_ms'], '.1f')} | {_fmt(r['ttft_overhead_ms'], '.1f')} "
        f"| {r['ok']}/{r['jobs']} | {r['errors']} |"
        for r in cell
    )
    return "\n".join(rows)


# ---------------------------------------------------------------- the driver


def drive(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        args.repeat, args.cell_repeat, args.cell_k, args.cell_tokens = 1, 1, 3, 5
        args.cell_tps = 200.0
    say = print if args.json != "-" else (lambda *a, **k: print(*a, **k, file=sys.stderr))
    machine = {
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    say(
        f"python {machine['python']}, {machine['nproc']} CPUs, "
        f"load {machine['load_average'][0]:.2f}; server: a DevServer in its own process per run, "
        f"{args.tps:g} tokens/s, {args.answer_tokens} tokens an answer, no time to first token",
        flush=True,
    )
    cases = [c for c in _cases(args) if not args.cases or c.name in args.cases.split(",")]
    summaries = []
    for case in cases:
        say(f"{case.name}: {case.clients} x {case.n} jobs, {case.per_minute}/min", flush=True)
        for _ in range(args.repeat if not case.turns else 1):
            for mode in ("ours", "unpaced") if not args.no_unpaced else ("ours",):
                run = run_case(case, args, mode)
                case.runs.setdefault(mode, []).append(run)
                say(
                    f"  {mode:<8} wall {run['wall_s']:8.2f} s  ok {run['ok']}/{run['jobs']}  "
                    f"429s {run['server_429']}  created {run['jobs_created']}"
                    + (f"  first error: {run['first_error']}" if run["first_error"] else ""),
                    flush=True,
                )
        summaries.append(_summary(case))
    cell = [] if args.no_cell else run_cell(args)
    say()
    say(pacing_table(summaries))
    for case in cases:
        if case.turns:
            for mode in case.runs:
                say()
                say(windows_table(case, mode))
    if cell:
        say()
        say(cell_table(cell))
    report = {
        "machine": machine,
        "summaries": summaries,
        "cases": [
            {
                "name": c.name,
                "n": c.n,
                "clients": c.clients,
                "per_minute": c.per_minute,
                "runs": c.runs,
            }
            for c in cases
        ],
        "cell": cell,
    }
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command")
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--per-minute", type=int, required=True)
    p_serve.add_argument("--per-hour", type=int, required=True)
    p_serve.add_argument("--tps", type=float, required=True)
    p_serve.add_argument("--ttft", type=float, required=True)
    p_serve.add_argument("--answer-tokens", type=int, required=True)
    p_client = sub.add_parser("client")
    p_client.add_argument("--mode", choices=MODES, required=True)
    p_client.add_argument("--url", required=True)
    p_client.add_argument("--n", type=int, required=True)
    p_client.add_argument("--concurrency", type=int, required=True)
    p_client.add_argument("--max-tokens", type=int, required=True)
    p_client.add_argument("--tag", default="j")
    p_client.add_argument("--start-at", type=float, default=0.0)
    p_client.add_argument("--warm-up", action="store_true")
    parser.add_argument(
        "--long",
        action="store_true",
        help="add windows (N = 150, 2+ min) and shared with N = 100 each (3+ min)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny N, no window turn: seconds")
    parser.add_argument("--cases", default="", help="only these (burst,windows,large,shared)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of burst and large per mode")
    parser.add_argument("--no-unpaced", action="store_true", help="ours only")
    parser.add_argument("--tps", type=float, default=10_000.0, help="server tokens/s per stream")
    parser.add_argument("--answer-tokens", type=int, default=5)
    parser.add_argument("--large-concurrency", type=int, default=32)
    parser.add_argument("--no-cell", action="store_true", help="skip the interactive cell")
    parser.add_argument("--cell-k", type=int, default=100)
    parser.add_argument("--cell-tps", type=float, default=25.0, help="tokens/s per stream")
    parser.add_argument("--cell-tokens", type=int, default=100)
    parser.add_argument("--cell-ttft", type=float, default=0.05)
    parser.add_argument("--cell-repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900.0, help="per client process, s")
    parser.add_argument("--json", nargs="?", const="-", help="write the figures here (-: stdout)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
    elif args.command == "client":
        client(args)
    else:
        return drive(args)
    return None


if __name__ == "__main__":
    main()
