"""Start-up: importing the package, ``infernet-async --help`` and a stream on the client's own
connections do not load aiohttp (it costs about a third of the import); a JSON request does."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from infernet_async.devserver import DevServer
from tests.helpers.client import MODEL


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_the_package_does_not_load_aiohttp() -> None:
    result = run_python("import infernet_async, sys; assert 'aiohttp' not in sys.modules")
    assert result.returncode == 0, result.stderr


def test_the_cli_help_does_not_load_aiohttp() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from infernet_async.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp loaded'\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


CLIENT = """
import asyncio, sys
from infernet_async import InfernetClient

async def main() -> None:
    async with InfernetClient({base_url!r}, token={token!r}) as client:
        messages = [{{"role": "user", "content": "hi"}}]
        assert await client.complete(model={model!r}, messages=messages)
        print("stream", "aiohttp" in sys.modules)
        await client.list_models()
        print("json", "aiohttp" in sys.modules)

asyncio.run(main())
"""


async def test_a_stream_on_our_connections_does_not_load_aiohttp_and_json_does() -> None:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=4) as server:
        code = CLIENT.format(base_url=server.base_url, token=server.token, model=MODEL)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["stream", "False", "json", "True"]
