"""Every example runs, as a user runs it, and prints what the README says it prints.

Scripts run in a subprocess under ``-W error`` (an unclosed session or stream fails them), each on
its own embedded control plane, or on the test's DevServer through INFERNET_BASE_URL /
INFERNET_BEARER_TOKEN. The FastAPI relay runs in-process under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from infernet_async.devserver import DevServer, Fault
from tests.helpers.examples import EXAMPLES, load_example

ROOT = EXAMPLES.parent
README_ANSWER = "Paris is the capital of France.\n(7 tokens, finished: True)\n"


def example_env(server: DevServer | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERNET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if server is not None:
        env["INFERNET_BASE_URL"] = server.base_url
        env["INFERNET_BEARER_TOKEN"] = server.token
    return env


def run_subprocess(name: str, server: DevServer | None = None) -> str:
    """Run examples/<name> as ``python -W error examples/<name>``; returns its stdout."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        env=example_env(server),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr.decode()}"
    return proc.stdout.decode()


@pytest.fixture
def run_script(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Awaitable[str]]:
    """Run an example's ``main()`` in this process (on its own embedded control plane): the same
    code as ``python examples/<name>``, without paying for an interpreter start per example."""
    monkeypatch.syspath_prepend(str(EXAMPLES))  # for ``from _connect import ...``
    # errors_and_retries.py turns up the SDK's log level; put it back afterwards.
    sdk_logger = logging.getLogger("infernet_async")
    monkeypatch.setattr(sdk_logger, "level", sdk_logger.level)

    async def run(name: str) -> str:
        capsys.readouterr()
        await load_example(name).main()
        return capsys.readouterr().out

    return run


def parse_events(body: bytes) -> list[object]:
    events: list[object] = []
    for line in body.decode().split("\n"):
        if line.startswith("data: "):
            data = line[6:].strip()
            events.append("[DONE]" if data == "[DONE]" else json.loads(data))
    return events


# --- scripts ------------------------------------------------------------------------------------


async def test_stream_tokens_prints_the_readme_output(
    run_script: Callable[[str], Awaitable[str]],
) -> None:
    assert await run_script("stream_tokens.py") == README_ANSWER


async def test_stream_tokens_uses_the_configured_control_plane() -> None:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0) as server:
        out = await asyncio.to_thread(run_subprocess, "stream_tokens.py", server)
        assert out == README_ANSWER
        posts = [r for r in server.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].json["stream"] is True


async def test_collect(run_script: Callable[[str], Awaitable[str]]) -> None:
    out = await run_script("collect.py")
    lines = out.splitlines()
    assert lines[0] == "12 × 7 = 84."
    assert re.fullmatch(r"'12 × 7 = 84\.': 6 tokens, job job_\w+", lines[1]), out


async def test_partial_on_cancel_keeps_the_text_on_timeout_and_on_node_drop(
    run_script: Callable[[str], Awaitable[str]],
) -> None:
    out = await run_script("partial_on_cancel.py")
    lines = out.splitlines()
    timed_out = re.fullmatch(r"timed out after (\d+) tokens; kept: '(.+)'", lines[0])
    assert timed_out, out
    assert int(timed_out.group(1)) > 0
    assert timed_out.group(2).startswith("Neural networks")
    assert lines[1] == "node went offline; partial answer: 'Neural networks detail comes down'"
    assert re.fullmatch(r"job job_\w+ was re-queued; stream.text is the same: True", lines[2])


async def test_restart_policy_starts_the_answer_over(
    run_script: Callable[[str], Awaitable[str]],
) -> None:
    out = await run_script("restart_policy.py")
    assert out.splitlines() == [
        "Tokyo is the capital",
        "[node went offline; restarting, discarding 'Tokyo is the capital']",
        "Tokyo is the capital of Japan.",
        "final answer: 'Tokyo is the capital of Japan.' (restarts: 1)",
    ]


async def test_errors_and_retries(run_script: Callable[[str], Awaitable[str]]) -> None:
    out = await run_script("errors_and_retries.py")
    assert out.splitlines() == [
        "answer after retries: Rome is the capital of Italy.",
        "ModelNotFoundError: status=404 code=model_not_found "
        "message=\"Model 'no-such-model:1b' is not registered on any node\"",
        "RateLimitError: retry after 600 s",
        "complete() followed the re-queued job: Rome is the capital of Italy.",
    ]


async def test_fanout_in_order_then_as_they_end(
    run_script: Callable[[str], Awaitable[str]],
) -> None:
    lines = (await run_script("fanout.py")).splitlines()
    assert [line.split(maxsplit=2) for line in lines[:6]] == [
        ["France", "ok", "Paris is the capital of France."],
        ["Germany", "ok", "Berlin is the capital of Germany."],
        ["Italy", "ok", "Rome is the capital of Italy."],
        ["Spain", "ok", "Madrid is the capital of Spain."],
        ["Japan", "ok", "Tokyo is the capital of Japan."],
        ["Canada", "ok", "Ottawa is the capital of Canada."],
    ]
    as_they_end = [re.fullmatch(r"#(\d) (\w+): (.+)", line) for line in lines[6:]]
    assert all(as_they_end) and len(as_they_end) == 4, lines
    assert [m.group(1) for m in as_they_end if m] == ["1", "2", "3", "4"]
    assert {m.group(2) for m in as_they_end if m} == {"France", "Germany", "Italy", "Spain"}
    statuses = sorted(m.group(3) for m in as_they_end if m)
    assert statuses == ["error (model_not_found)", "ok", "ok", "ok"]


# --- examples/aiohttp_chat/app.py, as a program -------------------------------------------------


async def test_aiohttp_chat_app_serves_the_page_and_relays() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        str(EXAMPLES / "aiohttp_chat" / "app.py"),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=example_env(),
        cwd=ROOT,
    )
    assert proc.stderr is not None
    try:
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "the app exited before serving"
            if match := re.match(r"Chat on (http://\S+/)", line):
                url = match.group(1)
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                assert resp.status == 200 and "<title>Infernet chat</title>" in await resp.text()
            question = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
            async with session.post(url + "api/chat", json=question) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = parse_events(await resp.read())
            async with session.post(url + "api/chat", json={"messages": "hi"}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"] == "bad_request"
        texts = [e["text"] for e in events if isinstance(e, dict)]
        assert "".join(texts) == "Paris is the capital of France." and events[-1] == "[DONE]"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- examples/fastapi_relay.py, under uvicorn -----------------------------------------------------


@contextlib.asynccontextmanager
async def fastapi_relay(server: DevServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    import uvicorn

    monkeypatch.setenv("INFERNET_BASE_URL", server.base_url)
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", server.token)
    module = load_example("fastapi_relay.py")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(module.app, log_level="warning", timeout_graceful_shutdown=1)
    uv = uvicorn.Server(config)
    serving = asyncio.create_task(uv.serve(sockets=[sock]))
    try:
        while not uv.started:
            assert not serving.done(), serving
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        uv.should_exit = True
        await serving
        sock.close()


async def test_fastapi_relay_streams_the_guide_format(monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        DevServer(tokens_per_second=2000, time_to_first_token=0) as server,
        fastapi_relay(server, monkeypatch) as url,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(url) as resp:
            assert "<title>Infernet chat</title>" in await resp.text()
        question = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
        async with session.post(url + "api/chat", json=question) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = parse_events(await resp.read())
        async with session.post(url + "api/chat", json={"messages": []}) as resp:
            assert resp.status == 422
        server.inject(Fault.drop_node(after_tokens=3))
        async with session.post(url + "api/chat", json=question) as resp:
            failed = parse_events(await resp.read())
    assert [e["text"] for e in events if isinstance(e, dict)] == [
        "Paris",
        " is",
        " the",
        " capital",
        " of",
        " France",
        ".",
    ]
    assert events[-1] == "[DONE]"
    assert failed == [
        {"text": "Paris"},
        {"text": " is"},
        {"text": " the"},
        {"error": "node_disconnected", "message": "Node went offline mid-stream"},
    ]


@pytest.mark.parametrize("after_tokens", [0, 2])
async def test_fastapi_relay_stops_the_job_stream_when_the_browser_leaves(
    monkeypatch: pytest.MonkeyPatch, after_tokens: int
) -> None:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0) as server:
        server.inject(Fault.stall(after_tokens=after_tokens, seconds=30))
        async with fastapi_relay(server, monkeypatch) as url, aiohttp.ClientSession() as session:
            question = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
            async with session.post(url + "api/chat", json=question) as resp:
                assert resp.status == 200
                if after_tokens:
                    await resp.content.readuntil(b'data: {"text": " is"}\n\n')
                # The browser goes away while the job stream is silent.
                resp.connection.transport.abort()  # type: ignore[union-attr]
            record = await server.wait_for_stream_close(timeout=5)
    assert record.closed_by_client and not record.completed
    assert record.tokens_sent == after_tokens


def test_every_example_is_tested() -> None:
    """A new example without a test here fails this (fanout.py lands with the fan-out helper)."""
    this = Path(__file__).read_text()
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    untested = {name for name in scripts if f'"{name}")' not in this}
    assert untested == set()
