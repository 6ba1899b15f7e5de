"""The streaming guide's own clients (tests/helpers/guide_clients.py, only the URL changed) vs
DevServer.

If the guide's loops stream a full answer from the devserver, the devserver's framing is the one the
guide documents. The Python async and sync httpx loops run in-process; the JavaScript fetch loop
runs under Node.js 18+ when it is installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from infernet_async.devserver import DevServer
from tests.helpers import guide_clients
from tests.helpers.devserver import Api
from tests.helpers.guide_clients import JS_CLIENT, stream_inference, stream_inference_async


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DevServer]:
    async with DevServer(tokens_per_second=2000.0, time_to_first_token=0.0) as server:
        monkeypatch.setattr(guide_clients, "URL", server.base_url + "/jobs")
        monkeypatch.setenv("INFERNET_BEARER_TOKEN", server.token)
        yield server


async def expected_answer(server: DevServer, prompt: str) -> str:
    async with aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        job = await api.wait_job((await api.submit(prompt))["id"])
    return str(job["result"]["content"])


async def test_guide_async_httpx_loop_streams_the_full_answer(
    server: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = "Explain how neural networks learn in three sentences."
    answer = await stream_inference_async(prompt)
    assert answer == await expected_answer(server, prompt)
    assert len(answer.split()) > 10
    assert capsys.readouterr().out == answer
    record = await server.wait_for_stream_close()
    assert record.completed and not record.closed_by_client


async def test_guide_async_loop_is_not_typed_dialect_aware(server: DevServer) -> None:
    # The guide's loop ignores `event:` lines, so the typed dialect's closing `event: done`, whose
    # data carries the whole answer as "text", is appended a second time. This is why the SDK must
    # read the event type and why the guide's dialect stays the devserver's default.
    server.configure(dialect="typed")
    answer = await stream_inference_async("What is 2 + 2?")
    assert answer == "2 + 2 = 4." * 2


async def test_guide_sync_httpx_loop_streams_the_full_answer(
    server: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = "Tell me about Paris."
    await asyncio.to_thread(stream_inference, prompt)
    assert capsys.readouterr().out == await expected_answer(server, prompt)


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
async def test_guide_javascript_fetch_loop_streams_the_full_answer(
    server: DevServer, tmp_path: Path
) -> None:
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    if int(version.stdout.strip().lstrip("v").split(".")[0]) < 18:
        pytest.skip("the guide's fetch loop needs Node.js 18+")
    script = tmp_path / "guide.js"
    script.write_text(textwrap.dedent(JS_CLIENT % {"url": guide_clients.URL}))
    process = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "INFERNET_BEARER_TOKEN": server.token},
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    assert out.decode() == "Paris is the capital of France.\nDone\n"
