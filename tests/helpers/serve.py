"""``infernet-async serve`` in a child process, for the tests of the command itself."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.helpers.paths import ROOT
from tests.helpers.signals import default_sigint


@asynccontextmanager
async def serve_process(*arguments: str) -> AsyncIterator[list[str]]:
    """Run ``python -m infernet_async serve *arguments``; yields its banner's lines once it has
    printed them, and on leaving stops it with Ctrl-C and checks that it exits 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infernet_async",
        "serve",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=default_sigint,
    )
    assert process.stdout is not None
    try:
        banner: list[str] = []
        async with asyncio.timeout(20):
            while not banner or not banner[-1].startswith("Press Ctrl-C"):
                line = await process.stdout.readline()
                assert line, "serve exited before printing its banner"
                banner.append(line.decode().rstrip())
        yield banner
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            returncode = await process.wait()
    assert returncode == 0
