"""One connection budget: ``max_connections`` bounds every socket the client opens, whichever stack
opened it (our stream connections, aiohttp's for JSON requests), idle keep-alive ones included.

The origin's side counts: a ``Relay`` in front of the DevServer counts the connections open at
once while many JSON requests and streams run together. And a stack that needs a socket when the
budget is spent on the other's idle keep-alive connections closes one of them instead of waiting
for its keep-alive to run out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from infernet_async import BatchRequest, InfernetClient, RetryPolicy, Timeouts
from infernet_async._budget import ConnectionBudget
from infernet_async.devserver import DevServer
from tests.helpers.client import MODEL, MSG
from tests.helpers.proxy import Relay, relay

FAST = Timeouts(connect=5.0, read=5.0, stall=5.0, total=30.0)


@pytest.fixture
async def dev() -> AsyncIterator[DevServer]:
    async with DevServer(
        tokens_per_second=200.0,
        time_to_first_token=0,
        answer_tokens=20,
        rate_limit_per_minute=100_000,
        rate_limit_per_hour=100_000,
    ) as server:
        yield server


@pytest.fixture
async def origin(dev: DevServer) -> AsyncIterator[Relay]:
    async with relay(dev.port) as server:
        yield server


def client_for(origin: Relay, dev: DevServer, limit: int) -> InfernetClient:
    return InfernetClient(
        f"http://127.0.0.1:{origin.port}/api/v1",
        dev.token,
        max_connections=limit,
        timeouts=FAST,
        retry=RetryPolicy(max_retries=0),
    )


@pytest.mark.parametrize("limit", [1, 3, 8])
async def test_json_requests_and_streams_together_never_exceed_max_connections(
    limit: int, dev: DevServer, origin: Relay
) -> None:
    async with client_for(origin, dev, limit) as client:

        async def stream(i: int) -> str:
            return await client.stream(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}]
            ).final_text()

        async def json(i: int) -> int:
            if i % 2:
                return len(await client.list_models())
            return len(await client.list_jobs(limit=5))

        async with asyncio.timeout(30):
            results = await asyncio.gather(
                *(stream(i) for i in range(20)), *(json(i) for i in range(20))
            )
        assert all(results[:20]) and all(r >= 0 for r in results[20:])
        budget = client._transport._binding.budget  # type: ignore[union-attr]
        assert budget.used <= limit
    await origin.settle()
    assert 1 <= origin.peak <= limit, (origin.peak, limit)
    # Both stacks carried their share: streams and JSON requests all reached the origin.
    assert len(dev.streams) == 20
    assert (
        sum(r.path.endswith(("/models", "/jobs")) and r.method == "GET" for r in dev.requests) == 20
    )


async def test_a_stack_takes_the_other_stacks_idle_connections_instead_of_waiting(
    dev: DevServer, origin: Relay
) -> None:
    """max_connections=2: two streams leave two idle stream connections; two JSON requests then
    close them for their own, and two streams close aiohttp's idle ones. None waits for a
    keep-alive (15 s) to run out, and the origin never sees a third connection."""
    async with client_for(origin, dev, 2) as client:
        loop = asyncio.get_running_loop()

        async def streams() -> None:
            texts = await asyncio.gather(
                *(client.stream(model=MODEL, messages=MSG).final_text() for _ in range(2))
            )
            assert all(texts)

        async def json() -> None:
            await asyncio.gather(client.list_models(), client.list_models())

        for step in (streams, json, streams, json):
            started = loop.time()
            async with asyncio.timeout(10):
                await step()
            assert loop.time() - started < 3, step.__name__
            assert origin.peak <= 2
        pool = client._transport._binding.pool  # type: ignore[union-attr]
        assert pool.open_connections <= 2
    await origin.settle()
    assert origin.peak == 2
    # Sockets were closed and opened again across the stacks (no more than two at a time).
    assert origin.total >= 4


async def test_the_budget_grows_for_a_fan_out(dev: DevServer, origin: Relay) -> None:
    async with client_for(origin, dev, 2) as client:
        outcomes = await client.gather(
            [BatchRequest(model=MODEL, prompt=f"q{i}") for i in range(10)], concurrency=5
        )
        assert all(o.ok for o in outcomes)
        budget = client._transport._binding.budget  # type: ignore[union-attr]
        assert budget.limit == 5
    await origin.settle()
    assert origin.peak <= 5


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    budget = ConnectionBudget(asyncio.get_running_loop(), 1)
    assert budget.try_take()
    first = asyncio.create_task(budget.take())
    second = asyncio.create_task(budget.take())
    await asyncio.sleep(0)
    budget.give()  # wakes the first waiter at the loop's next turn...
    await asyncio.sleep(0)
    first.cancel()  # ...which is cancelled before it runs: the second takes the slot
    async with asyncio.timeout(2):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert budget.used == 1


async def test_a_closed_budget_refuses() -> None:
    from infernet_async import APIConnectionError

    budget = ConnectionBudget(asyncio.get_running_loop(), 1)
    assert budget.try_take()
    waiter = asyncio.create_task(budget.take())
    await asyncio.sleep(0)
    budget.closed = True
    budget.wake_all()
    with pytest.raises(APIConnectionError):
        await waiter
