"""The benchmarks' DevServer, in a process of its own so that its CPU is not the client's.

A script's ``serve`` mode runs ``bench_devserver()``, which prints the server's base URL as one
JSON line on stdout; the driver's ``ServerProcess`` starts that mode, reads the line, and stops the
server by closing its stdin (which also happens when the driver dies). The server has one node
that runs every job at once, no heartbeats, no job expiry and (unless a budget is given) no rate
limit worth the name, so what a benchmark measures is the client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from infernet_async.devserver import DevServer

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
TOKEN = "bench-token"


@asynccontextmanager
async def bench_devserver(
    *,
    tokens_per_second: float,
    time_to_first_token: float,
    answer_tokens: int,
    per_minute: int = 10**9,
    per_hour: int = 10**9,
    record_limit: int = 64,
) -> AsyncIterator[DevServer]:
    """The benchmark DevServer on a free port, its base URL announced on stdout."""
    sys.path.insert(0, str(ROOT))
    from infernet_async.devserver import DevServer, NodeSpec

    node = NodeSpec(
        "node_bench",
        (MODEL,),
        "bench-node",
        tokens_per_second=tokens_per_second,
        time_to_first_token=time_to_first_token,
        capacity=1_000_000,
    )
    async with DevServer(
        tokens=TOKEN,
        nodes=[node],
        answer_tokens=answer_tokens,
        heartbeat_interval=None,
        rate_limit_per_minute=per_minute,
        rate_limit_per_hour=per_hour,
        history_limit=64,
        record_limit=record_limit,
        max_pending=10**9,
        job_timeout=3600.0,
    ) as server:
        print(json.dumps({"base_url": server.base_url}), flush=True)
        yield server


class ServerProcess:
    """``python SCRIPT serve OPTIONS...`` running ``bench_devserver()``, until ``close()``."""

    def __init__(self, script: str, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, script, "serve", *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.base_url: str = json.loads(self.process.stdout.readline())["base_url"]

    def ask(self, line: str) -> dict[str, Any]:
        """Send one line to the server's stdin and read its one-line JSON answer."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
