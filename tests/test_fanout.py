"""Fan-out: input order, completion order, partial failure, cancellation with partial texts, lazy
pulling and the concurrency bound; first on a scripted in-memory client, then end to end against
the DevServer (connections released, the bound seen server-side, the shared rate limiter)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from infernet_async._fanout import BatchOutcome, BatchRequest, FanOut, gather, stream_job_runner
from infernet_async.errors import NodeDisconnectedError, RateLimitError

# ---------------------------------------------------------------- a scripted client


class Script:
    """What a fake job does, read from its prompt: tokens, a delay per token, a failure."""

    def __init__(self, prompt: str) -> None:
        spec: dict[str, Any] = json.loads(prompt)
        self.tokens: int = spec.get("tokens", 3)
        self.delay: float = spec.get("delay", 0.0)
        self.fail_after: int | None = spec.get("fail_after")
        self.rate_limited: int = spec.get("rate_limited", 0)  # this many 429s before it runs


class FakeStream:
    def __init__(self, client: FakeClient, script: Script, key: str) -> None:
        self._client = client
        self._script = script
        self._key = key
        self._parts: list[str] = []
        self.job_id: str | None = None
        self.closed = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.closed = True
        self._client.open -= 1

    def __aiter__(self) -> AsyncIterator[str]:
        return self._tokens()

    async def _tokens(self) -> AsyncIterator[str]:
        client, script = self._client, self._script
        client.open += 1
        client.peak_open = max(client.peak_open, client.open)
        attempts = client.attempts[self._key] = client.attempts.get(self._key, 0) + 1
        if attempts <= script.rate_limited:
            raise RateLimitError("slow down", retry_after=0.0)
        self.job_id = f"job_{self._key}"
        for n in range(script.tokens):
            if script.fail_after is not None and n == script.fail_after:
                raise NodeDisconnectedError(
                    "gone", partial_text=self.text, job_id=self.job_id, code="node_disconnected"
                )
            await anyio.sleep(script.delay)
            token = f"t{n} "
            self._parts.append(token)
            yield token


class FakeClient:
    def __init__(self) -> None:
        self.open = 0
        self.peak_open = 0
        self.attempts: dict[str, int] = {}
        self.streams: list[FakeStream] = []

    def stream(self, **arguments: Any) -> FakeStream:
        prompt = arguments["messages"][0].content
        stream = FakeStream(self, Script(prompt), key=prompt)
        self.streams.append(stream)
        return stream


def request(id: str, **spec: Any) -> BatchRequest:
    spec.setdefault("id", id)  # makes every prompt distinct
    return BatchRequest(id=id, model="m", prompt=json.dumps(spec))


async def test_gather_returns_outcomes_in_input_order():
    client = FakeClient()
    requests = [request(str(i), tokens=2, delay=0.001 * (10 - i)) for i in range(10)]
    outcomes = await gather(FanOut(stream_job_runner(client), requests, concurrency=4))
    assert [o.id for o in outcomes] == [str(i) for i in range(10)]
    assert [o.index for o in outcomes] == list(range(10))
    assert all(o.ok and o.text == "t0 t1 " and o.tokens == 2 for o in outcomes)
    assert all(o.attempts == 1 and o.time_to_first_token is not None for o in outcomes)
    assert client.peak_open <= 4


async def test_map_yields_in_completion_order():
    client = FakeClient()
    requests = [request("slow", tokens=1, delay=0.2), request("fast", tokens=1)]
    async with FanOut(stream_job_runner(client), requests, concurrency=2) as outcomes:
        order = [outcome.id async for outcome in outcomes]
    assert order == ["fast", "slow"]


async def test_one_failed_job_never_cancels_the_others():
    client = FakeClient()
    requests = [request("a", tokens=5), request("bad", tokens=5, fail_after=2), request("c")]
    outcomes = await gather(FanOut(stream_job_runner(client), requests, concurrency=3))
    assert [o.status for o in outcomes] == ["ok", "error", "ok"]
    failed = outcomes[1]
    assert failed.text == "t0 t1 "  # the partial text is kept
    assert failed.error is not None and failed.error.type == "NodeDisconnectedError"
    assert failed.error.code == "node_disconnected"
    assert isinstance(failed.exception, NodeDisconnectedError)
    assert failed.job_id == "job_" + failed.request.prompt  # type: ignore[operator]
    assert failed.attempts == 1  # tokens were delivered: never resubmitted
    dumped = json.loads(failed.model_dump_json())
    assert "exception" not in dumped and dumped["error"]["type"] == "NodeDisconnectedError"


async def test_jobs_that_were_never_created_are_submitted_again():
    client = FakeClient()
    outcomes = await gather(
        FanOut(
            stream_job_runner(client, max_attempts=3),
            [request("twice", rate_limited=2), request("always", rate_limited=5)],
            concurrency=2,
        )
    )
    assert outcomes[0].ok and outcomes[0].attempts == 3
    assert outcomes[1].status == "error" and outcomes[1].attempts == 3
    assert outcomes[1].error is not None and outcomes[1].error.code == "rate_limited"


async def test_leaving_the_block_cancels_every_running_job_and_keeps_partial_texts():
    client = FakeClient()
    requests = [request("quick", tokens=1)] + [
        request(f"long{i}", tokens=1000, delay=0.005) for i in range(5)
    ]
    seen: list[BatchOutcome] = []
    fan_out = FanOut(stream_job_runner(client), requests, concurrency=6, on_outcome=seen.append)
    async with fan_out as outcomes:
        async for outcome in outcomes:
            assert outcome.id == "quick"
            await anyio.sleep(0.05)  # let the long jobs receive some tokens
            break
    assert sorted(o.id for o in fan_out.cancelled) == [f"long{i}" for i in range(5)]
    for outcome in fan_out.cancelled:
        assert outcome.status == "cancelled" and outcome.text.startswith("t0 t1 ")
        assert outcome.tokens == len(outcome.text.split())
    assert {o.id for o in seen} == {"quick"} | {f"long{i}" for i in range(5)}
    assert client.open == 0 and all(s.closed for s in client.streams)


async def test_cancelling_gather_cancels_all_at_once_and_reports_partial_texts():
    client = FakeClient()
    requests = [request(f"r{i}", tokens=1000, delay=0.005) for i in range(8)]
    seen: list[BatchOutcome] = []
    with anyio.move_on_after(0.1) as scope:
        await gather(
            FanOut(stream_job_runner(client), requests, concurrency=8, on_outcome=seen.append)
        )
    assert scope.cancelled_caught
    assert len(seen) == 8 and all(o.status == "cancelled" and o.text for o in seen)
    assert client.open == 0


async def test_requests_are_pulled_lazily_from_an_async_iterator_of_any_length():
    client = FakeClient()
    pulled = 0

    async def endless() -> AsyncIterator[BatchRequest]:
        nonlocal pulled
        while True:
            pulled += 1
            yield request(str(pulled), tokens=1)

    fan_out = FanOut(stream_job_runner(client), endless(), concurrency=3)
    received = 0
    async with fan_out as outcomes:
        async for _ in outcomes:
            received += 1
            if received == 50:
                break
    # Never more pulled than received, plus the jobs in flight and the outcomes buffered.
    assert pulled <= 50 + 2 * 3 + 1
    assert fan_out.peak_running <= 3


async def test_a_slow_consumer_bounds_the_work_in_flight():
    client = FakeClient()
    fan_out = FanOut(
        stream_job_runner(client), (request(str(i), tokens=1) for i in range(100)), concurrency=4
    )
    async with fan_out as outcomes:
        async for _ in outcomes:
            await anyio.sleep(0.001)
            assert fan_out.started - fan_out.finished <= 4
            assert fan_out.started <= fan_out.finished + 4
            break


async def test_a_failing_request_source_raises_itself_after_cancelling_the_jobs():
    client = FakeClient()

    def source():
        yield request("fine", tokens=1000, delay=0.005)
        raise LookupError("bad input")

    with pytest.raises(LookupError, match="bad input"):
        await gather(FanOut(stream_job_runner(client), source(), concurrency=2))
    assert client.open == 0


async def test_an_error_in_the_block_is_raised_as_itself():
    client = FakeClient()
    with pytest.raises(ZeroDivisionError):
        async with FanOut(stream_job_runner(client), [request("a")], concurrency=1) as outcomes:
            async for _ in outcomes:
                1 / 0  # noqa: B018


async def test_empty_input_gives_empty_output():
    assert await gather(FanOut(stream_job_runner(FakeClient()), [], concurrency=3)) == []


async def test_a_fan_out_runs_once_and_checks_its_arguments():
    fan_out = FanOut(stream_job_runner(FakeClient()), [], concurrency=1)
    async with fan_out:
        pass
    with pytest.raises(RuntimeError, match="once"):
        async with fan_out:
            pass
    with pytest.raises(ValueError, match="concurrency"):
        FanOut(stream_job_runner(FakeClient()), [], concurrency=0)
    with pytest.raises(ValueError, match="max_attempts"):
        stream_job_runner(FakeClient(), max_attempts=0)


def test_batch_request_validation():
    assert BatchRequest(id=7, model="m", prompt="hi").id == "7"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        BatchRequest(model="m")
    with pytest.raises(ValueError, match="exactly one"):
        BatchRequest(model="m", prompt="a", messages=[{"role": "user", "content": "b"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty"):
        BatchRequest(model="m", messages=[])
    with pytest.raises(ValueError, match="Extra inputs"):
        BatchRequest(model="m", prompt="a", max_token=3)  # type: ignore[call-arg]
    request = BatchRequest(model="m", prompt="hi", max_tokens=5, temperature=0.0)
    arguments = request.stream_arguments()
    assert arguments["max_tokens"] == 5 and arguments["temperature"] == 0.0
    assert "top_p" not in arguments and "node_id" not in arguments
    assert arguments["messages"][0].role == "user" and arguments["messages"][0].content == "hi"
