"""The SDK on uvloop, the loop uvicorn (so FastAPI and Starlette) picks when it is installed.

uvloop's transports have asyncio's interface without its base classes, and its clock is its own:
streams, the fan-out, the deadlines and cancellation must behave there exactly as on asyncio's
loop. (The stream connections once refused uvloop's transports outright.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from infernet_async import APITimeoutError, BatchRequest, InfernetClient, Timeouts
from infernet_async._native_response import NativeResponse
from infernet_async.devserver import DevServer
from tests.helpers.client import record_rests

uvloop = pytest.importorskip("uvloop")

MODEL = "qwen2.5:14b"
MSG = [{"role": "user", "content": "What is the capital of France?"}]
T = TypeVar("T")


def on_uvloop(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with asyncio.timeout(20):
            return await main()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def test_streams_reuse_and_release_connections_on_uvloop() -> None:
    async def main() -> None:
        async with (
            DevServer(tokens_per_second=2000, time_to_first_token=0) as server,
            InfernetClient(server.base_url, server.token) as client,
        ):
            whole = await client.complete(model=MODEL, messages=MSG)
            async with client.stream(model=MODEL, messages=MSG) as stream:
                assert isinstance(stream._resp, NativeResponse)
                tokens = [token async for token in stream]
            assert "".join(tokens) == whole == stream.text and stream.finished
            binding = client._transport._binding
            assert binding is not None and binding.pool.open_connections == 1  # reused
            async with client.stream(model=MODEL, messages=MSG, max_tokens=500) as stream:
                async for _ in stream:
                    break
            record = await server.wait_for_stream_close(stream.job_id)
            assert record.closed_by_client

    on_uvloop(main)


def test_a_fan_out_on_uvloop() -> None:
    async def main() -> None:
        async with (
            DevServer(
                tokens_per_second=1000,
                time_to_first_token=0,
                answer_tokens=8,
                rate_limit_per_minute=10_000,
                rate_limit_per_hour=100_000,
            ) as server,
            InfernetClient(server.base_url, server.token) as client,
        ):
            requests = [BatchRequest(id=str(i), model=MODEL, prompt=f"q{i}") for i in range(30)]
            outcomes = await client.gather(requests, concurrency=10)
        assert [o.id for o in outcomes] == [str(i) for i in range(30)]
        assert all(o.ok and o.tokens == 8 and o.time_to_first_token is not None for o in outcomes)

    on_uvloop(main)


def test_a_fan_out_rests_its_sockets_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvloop's transports pause and resume reading their own way: nothing may be lost or stuck.
    rests = record_rests(monkeypatch)

    async def main() -> None:
        async with (
            DevServer(tokens_per_second=500, time_to_first_token=0.05, answer_tokens=100) as server,
            InfernetClient(server.base_url, server.token) as client,
        ):
            requests = [BatchRequest(id=str(i), model=MODEL, prompt=f"q{i}") for i in range(5)]
            outcomes = await client.gather(requests, concurrency=5, read_interval=0.08)
            binding = client._transport._binding
            assert binding is not None
            # Every connection goes back to the pool (once its terminating chunk is in).
            while binding.pool.in_use:
                await asyncio.sleep(0.01)
        assert all(o.ok and o.tokens == 100 and o.text for o in outcomes)

    on_uvloop(main)
    assert rests


@pytest.mark.parametrize("collect", [True, False], ids=["final_text", "tokens"])
def test_the_stall_deadline_on_uvloop(collect: bool) -> None:
    async def main() -> None:
        async with DevServer(tokens_per_second=1000, time_to_first_token=0) as server:
            server.configure(tokens_per_second=2)  # a token every 0.5 s: a stall of 0.15 s
            client = InfernetClient(
                server.base_url, server.token, timeouts=Timeouts(stall=0.15, read=5)
            )
            async with client, client.stream(model=MODEL, messages=MSG) as stream:
                with pytest.raises(APITimeoutError) as info:
                    if collect:
                        await stream.final_text()
                    else:
                        async for _ in stream:
                            pass
            assert info.value.phase == "stall"
            assert info.value.partial_text == stream.text != ""

    on_uvloop(main)


def test_cancelling_a_reader_on_uvloop_keeps_the_text_and_frees_the_connection() -> None:
    async def main() -> None:
        async with (
            DevServer(tokens_per_second=50, time_to_first_token=0) as server,
            InfernetClient(server.base_url, server.token) as client,
        ):
            stream = client.stream(model=MODEL, messages=MSG, max_tokens=500)
            seen: list[str] = []

            async def read() -> None:
                async with stream:
                    async for token in stream:
                        seen.append(token)  # noqa: PERF401 - read while the task runs

            task = asyncio.create_task(read())
            while len(seen) < 3:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stream.text == "".join(seen) and stream.terminal_reason == "cancelled"
            record = await server.wait_for_stream_close(stream.job_id)
            assert record.closed_by_client

    on_uvloop(main)
