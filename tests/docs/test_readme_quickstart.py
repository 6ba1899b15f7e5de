"""The README's opening example runs as printed and prints what the README says it prints."""

from __future__ import annotations

import asyncio
import os
import re
import sys

from infernet_async.devserver import DevServer
from tests.helpers.paths import README


def _opening_example() -> tuple[str, str]:
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert code is not None, "README.md has no python example"
    printed = re.search(r"This prints.*?```text\n(.*?)```", text[code.end() :], re.DOTALL)
    assert printed is not None, "README.md does not say what its example prints"
    return code.group(1), printed.group(1)


async def test_the_opening_example_prints_what_the_readme_says() -> None:
    code, expected = _opening_example()
    async with DevServer(tokens_per_second=2000, time_to_first_token=0) as server:
        env = {**os.environ, **server.env}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode() == expected.rstrip("\n")


def _local_control_plane_snippet() -> str:
    text = README.read_text()
    section = text.index("## Local control plane")
    code = re.search(r"```python\n(.*?)```", text[section:], re.DOTALL)
    assert code is not None, "README.md's Local control plane section has no python example"
    return code.group(1)


async def test_the_local_control_plane_snippet_runs_as_printed() -> None:
    # Written for a notebook (top-level await): run as the body of a coroutine.
    body = "".join(
        f"    {line}\n" if line else "\n" for line in _local_control_plane_snippet().split("\n")
    )
    namespace: dict[str, object] = {}
    exec(f"async def snippet():\n{body}", namespace)
    async with asyncio.timeout(30):
        await namespace["snippet"]()  # type: ignore[operator]
