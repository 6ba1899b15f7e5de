"""A/B: this tree's fan-out against a git revision's, in one process, over one server.

The machine's noise (single runs of ``bench_e2e.py`` move by 30 % or more, whole sessions by 50 %)
hides changes of a few percent. Here both versions of the package run in the same process, one
after the other in alternating order, against the same DevServer process, and the figure is the
median of the paired ratios of client CPU per token: drift of the machine hits both sides of a pair
alike.

    python benchmarks/bench_ab.py --base HEAD~3 --k 1000 --regime fast --pairs 8

The base revision's ``infernet_async`` is exported with ``git archive`` and imported under another
name (the package's own imports are relative). A ratio above 1 means this tree is cheaper.
"""

from __future__ import annotations

import argparse
import importlib
import io
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_e2e  # noqa: E402

BASE_NAME = "infernet_async_base"


def export_base(revision: str, into: Path) -> None:
    """Write ``revision``'s package to ``into/infernet_async_base``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "infernet_async"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "infernet_async").rename(into / BASE_NAME)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fan_out(package: ModuleType, url: str, k: int, max_tokens: int) -> int:
    """The benchmark's job (``bench_e2e.run_infernet_async``) with ``package``; returns tokens."""
    requests = (
        package.BatchRequest(
            id=str(i),
            model=bench_e2e.MODEL,
            prompt=f"Benchmark question number {i}.",
            max_tokens=max_tokens,
        )
        for i in range(k)
    )
    tokens = 0
    async with (
        package.InfernetClient(url, bench_e2e.TOKEN, max_connections=k) as client,
        client.map(requests, concurrency=k) as outcomes,
    ):
        async for outcome in outcomes:
            tokens += outcome.tokens
    return tokens


def cpu_per_token(
    run: Callable[[Any], Any], package: ModuleType, url: str, k: int, max_tokens: int
) -> float:
    before = cpu_seconds()
    tokens = run(fan_out(package, url, k, max_tokens))
    return (cpu_seconds() - before) / tokens * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--regime", choices=("fast", "paced"), default="fast")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--fast-tokens", type=int, default=20_000)
    parser.add_argument("--server-rate", type=float, default=2500.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--min-tokens", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        export_base(args.base, Path(scratch))
        sys.path.insert(0, scratch)
        base = importlib.import_module(BASE_NAME)
        ours = importlib.import_module("infernet_async")
        rate, max_tokens = bench_e2e._pacing(args, args.regime, args.k)
        run = bench_e2e._runner_for(args.loop)
        server = bench_e2e.Server(rate, max_tokens, 0.05)
        try:
            for package in (base, ours):  # warm up: imports, lazy initialisation
                run(fan_out(package, server.base_url, 8, max_tokens))
            base_runs: list[float] = []
            our_runs: list[float] = []
            for pair in range(args.pairs):
                order = [(base, base_runs), (ours, our_runs)]
                for package, runs in order if pair % 2 == 0 else reversed(order):
                    runs.append(cpu_per_token(run, package, server.base_url, args.k, max_tokens))
        finally:
            server.close()
    ratios = [b / o for b, o in zip(base_runs, our_runs, strict=True)]
    print(
        f"{args.regime}, K = {args.k}, {max_tokens} tokens an answer, {args.loop} loop, "
        f"{args.pairs} pairs"
    )
    print(f"  {args.base:>12}: " + " ".join(f"{x:.1f}" for x in base_runs) + " µs/token")
    print(f"  {'this tree':>12}: " + " ".join(f"{x:.1f}" for x in our_runs) + " µs/token")
    print(
        f"  median of paired ratios (base / this tree): {statistics.median(ratios):.3f}  "
        + " ".join(f"{r:.2f}" for r in ratios)
    )


if __name__ == "__main__":
    main()
