"""Fan-out that spends the budget it has: the rate limit is a budget, not a speed.

50 jobs under a budget of 60 a minute used to be spread over the minute (44 s for work that takes
half a second); now what the budget allows goes at once, bounded only by ``concurrency``. The
user's own cap (``rate``, ``burst``) paces submissions, and a cancelled job says whether its
request ever left (``sent``). No timed assertions: overlaps and spacings are read from the
DevServer's records, which only slowness could widen.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infernet_async import BatchOutcome, BatchRequest, InfernetClient
from infernet_async.devserver import DevServer
from tests.helpers.client import MODEL, fast_retry


def most_open_at_once(server: DevServer) -> int:
    edges: list[tuple[float, int]] = []
    for record in server.streams:
        edges.append((record.opened_at, 1))
        edges.append((record.closed_at if record.closed_at is not None else float("inf"), -1))
    most = current = 0
    for _, step in sorted(edges):
        current += step
        most = max(most, current)
    return most


def requests(count: int) -> list[BatchRequest]:
    return [BatchRequest(model=MODEL, prompt=f"question {n}") for n in range(count)]


async def test_a_batch_inside_the_budget_goes_at_once_with_no_429() -> None:
    # 50 jobs, a budget of 60 a minute, answers that take a while: all 16 slots fill at once.
    async with (
        DevServer(
            tokens_per_second=100, time_to_first_token=0, answer_tokens=20, rate_limit_per_minute=60
        ) as server,
        InfernetClient(server.url, server.token, api="jobs", retry=fast_retry()) as client,
    ):
        outcomes = await client.gather(requests(50), concurrency=16)
    assert [o.status for o in outcomes] == ["ok"] * 50
    assert not [r for r in server.requests if r.status == 429]
    # Spread over the minute, at most a couple would ever overlap.
    assert most_open_at_once(server) == 16


async def test_a_batch_past_the_budget_waits_for_the_window_then_goes_on() -> None:
    # The limiter's own unit tests cover the window turning; here the end to end: a budget of 5,
    # 8 jobs, and a window the client sees turn at once (a fake reset in the past after a pause).
    async with (
        DevServer(
            tokens_per_second=2000, time_to_first_token=0, answer_tokens=3, rate_limit_per_minute=5
        ) as server,
        InfernetClient(
            server.url, server.token, api="jobs", retry=fast_retry(max_retry_after=120)
        ) as client,
    ):
        # The first answer tells the budget (before it, a probe burst goes as always).
        seen: list[BatchOutcome] = await client.gather(requests(1))
        fan_out = client.map(requests(7), concurrency=8)
        async with fan_out as outcomes:
            async for outcome in outcomes:
                seen.append(outcome)
                if len(seen) == 5:
                    # The budget is spent: nothing more goes until the window turns.
                    await asyncio.sleep(0.2)
                    assert len([r for r in server.requests if r.method == "POST"]) == 5
                    server.reset_rate_limits()
                    client.rate_limiter.state.reset_at = 0.0  # the window turns now
                    client.rate_limiter._wake()
    assert [o.status for o in seen] == ["ok"] * 8
    assert len([r for r in server.requests if r.status == 429]) == 0


async def test_a_rate_of_the_users_own_spaces_the_submissions() -> None:
    async with (
        DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=2) as server,
        InfernetClient(server.url, server.token, api="jobs", retry=fast_retry()) as client,
    ):
        outcomes = await client.gather(requests(6), concurrency=6, rate=20.0, burst=2)
        with pytest.raises(ValueError, match="burst goes with rate"):
            client.map(requests(1), burst=3)
    assert [o.status for o in outcomes] == ["ok"] * 6
    posts = sorted(r.time for r in server.requests if r.method == "POST")
    # Two at once, then one every 50 ms: the fourth cannot come before 0.1 s after the first.
    assert posts[3] - posts[0] >= 0.09 and posts[5] - posts[0] >= 0.19


async def test_cancelled_jobs_say_whether_their_request_was_sent() -> None:
    async with (
        DevServer(tokens_per_second=5, time_to_first_token=0, answer_tokens=100) as server,
        InfernetClient(server.url, server.token, api="jobs", retry=fast_retry()) as client,
    ):
        fan_out = client.map(requests(4), concurrency=4, rate=0.5, burst=1)
        async with fan_out as outcomes:
            while not server.streams:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            # Leaving the block cancels all four: one is streaming, three wait for the pacer.
        del outcomes
    cancelled = sorted(fan_out.cancelled, key=lambda o: o.index)
    assert [o.status for o in cancelled] == ["cancelled"] * 4
    assert [o.sent for o in cancelled] == [True, False, False, False]
    assert len([r for r in server.requests if r.method == "POST"]) == 1


async def test_the_batch_command_takes_rate_and_burst(tmp_path: Any) -> None:
    from infernet_async.cli._batch import _rate

    assert _rate("2") == 2.0 and _rate("2/s") == 2.0 and _rate("120/m") == 2.0
    for bad in ("0", "-1", "x/s", "2/h", "nan"):
        with pytest.raises(Exception, match="expected N"):
            _rate(bad)
