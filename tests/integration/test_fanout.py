"""Fan-out: input order, completion order, partial failure, cancellation with partial texts, lazy
pulling and the concurrency bound; first on a scripted in-memory client, then end to end against
the DevServer (connections released, the bound seen server-side, the shared rate limiter)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from infernet_async import InfernetClient, Timeouts
from infernet_async._fanout import BatchOutcome, BatchRequest, FanOut, gather, stream_job_runner
from infernet_async.devserver import DevServer, Fault, RequestRecord, StreamRecord
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
        self.time_to_send: float | None = None
        self.time_to_first_token: float | None = None
        self._started = anyio.current_time()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def token_count(self) -> int:
        return len(self._parts)

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.closed = True
        self._client.open -= 1

    def __aiter__(self) -> AsyncIterator[str]:
        return self._tokens()

    async def final_text(self, *, read_interval: float = 0.0) -> str:
        async for _ in self:
            pass
        return self.text

    async def _tokens(self) -> AsyncIterator[str]:
        client, script = self._client, self._script
        client.open += 1
        client.peak_open = max(client.peak_open, client.open)
        attempts = client.attempts[self._key] = client.attempts.get(self._key, 0) + 1
        self.time_to_send = 0.0
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
            if self.time_to_first_token is None:
                self.time_to_first_token = anyio.current_time() - self._started
            yield token


class FakeClient:
    def __init__(self) -> None:
        self.open = 0
        self.peak_open = 0
        self.attempts: dict[str, int] = {}
        self.streams: list[FakeStream] = []

    def stream(self, **arguments: Any) -> FakeStream:
        prompt = arguments["messages"][0].content
        if json.loads(prompt).get("refuse"):
            raise ValueError("the client refuses these parameters")
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


async def test_parameters_the_client_refuses_fail_that_job_only():
    client = FakeClient()
    outcomes = await gather(
        FanOut(
            stream_job_runner(client), [request("bad", refuse=True), request("good")], concurrency=2
        )
    )
    assert [o.status for o in outcomes] == ["error", "ok"]
    assert outcomes[0].error is not None and outcomes[0].error.type == "ValueError"
    assert outcomes[0].text == "" and outcomes[0].tokens == 0 and outcomes[0].attempts == 1


async def test_jobs_that_were_never_created_are_submitted_again():
    client = FakeClient()
    outcomes = await gather(
        FanOut(
            stream_job_runner(client, max_attempts=3, backoff=lambda attempt: 0.05),
            [request("twice", rate_limited=2), request("always", rate_limited=5)],
            concurrency=2,
        )
    )
    assert outcomes[0].ok and outcomes[0].attempts == 3
    # The earlier attempts and their backoffs were the client's wait before the answered sending.
    assert outcomes[0].time_to_send is not None and outcomes[0].time_to_send >= 0.1
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


async def test_outcomes_not_taken_when_the_block_is_left_are_undelivered_not_lost():
    # Sixteen quick jobs, eight at once, and a consumer that takes one and leaves: eight outcomes
    # wait in the stream (its room is the concurrency) and the next jobs wait to hand theirs over.
    # Every job started ends in exactly one of the three places.
    client = FakeClient()
    requests = [request(f"r{i}", tokens=1) for i in range(16)]
    fan_out = FanOut(stream_job_runner(client), requests, concurrency=8)
    delivered = []
    async with fan_out as outcomes:
        async for outcome in outcomes:
            delivered.append(outcome)
            await anyio.sleep(0.1)  # every job that could has ended by now
            break
    assert fan_out.finished == fan_out.started > 9 and not fan_out.cancelled
    assert all(o.ok for o in fan_out.undelivered)
    ids = [o.id for o in [*delivered, *fan_out.undelivered]]
    assert len(ids) == len(set(ids)) == fan_out.started


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


# ---------------------------------------------------------------- end to end on the DevServer

MODEL = "qwen2.5:14b"
FAST = {"tokens_per_second": 2000.0, "time_to_first_token": 0.0, "heartbeat_interval": None}


def dev_server(**options: Any) -> DevServer:
    return DevServer(**{**FAST, **options})


def client_for(server: DevServer, **options: Any) -> InfernetClient:
    return InfernetClient(server.base_url, server.token, **options)


def connections_in_use(client: InfernetClient) -> int:
    # Streams go over the client's own pool; anything else over aiohttp's, which has no public
    # counter of its busy connections.
    binding = client._transport._binding
    assert binding is not None
    connector = binding.connector  # None until a JSON request needs aiohttp
    acquired = len(connector._acquired) if connector is not None else 0  # type: ignore[attr-defined]
    return binding.pool.in_use + acquired


def peak_overlap(records: list[StreamRecord]) -> int:
    edges = sorted(
        [(r.opened_at, 1) for r in records] + [(r.closed_at or float("inf"), -1) for r in records]
    )
    current = peak = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def posts(server: DevServer) -> list[RequestRecord]:
    return [r for r in server.requests if r.method == "POST" and r.path.endswith("/jobs")]


async def test_gather_on_the_devserver_keeps_input_order_and_reports_figures():
    async with dev_server(answer_tokens=12) as server, client_for(server) as client:
        requests = [
            BatchRequest(id=f"r{i}", model=MODEL, prompt=f"Question {i}", max_tokens=12 - i)
            for i in range(10)
        ]
        outcomes = await client.gather(requests, concurrency=4)
    assert [o.id for o in outcomes] == [f"r{i}" for i in range(10)]
    for i, outcome in enumerate(outcomes):
        assert outcome.ok and outcome.tokens == 12 - i and outcome.job_id is not None
        assert outcome.text and outcome.attempts == 1
        assert outcome.time_to_first_token is not None and outcome.time_to_send is not None
        assert 0 < outcome.time_to_send + outcome.time_to_first_token <= outcome.latency
    assert len(posts(server)) == 10


async def test_partial_failure_on_the_devserver():
    async with dev_server(answer_tokens=10) as server, client_for(server) as client:
        server.inject(Fault.drop_node(after_tokens=3), job_id=None)
        requests = [
            BatchRequest(id="ok", model=MODEL, prompt="fine"),
            BatchRequest(id="unknown", model="no-such-model:1b", prompt="fine"),
            BatchRequest(id="ok2", model=MODEL, prompt="fine too"),
        ]
        outcomes = await client.gather(requests, concurrency=1, on_node_disconnect="raise")
    by_id = {o.id: o for o in outcomes}
    assert by_id["unknown"].status == "error"
    assert by_id["unknown"].error is not None
    assert by_id["unknown"].error.code == "model_not_found"
    assert by_id["unknown"].attempts == 1  # not worth a retry
    # The first job's node dropped after 3 tokens: the partial text is kept, nothing resubmitted.
    dropped = by_id["ok"]
    assert dropped.status == "error" and dropped.error is not None
    assert dropped.error.type == "NodeDisconnectedError"
    assert dropped.tokens == 3 and len(dropped.text.split()) >= 2
    assert by_id["ok2"].ok and by_id["ok2"].tokens == 10


async def test_a_dropped_node_is_followed_by_default_in_a_fan_out():
    async with dev_server(answer_tokens=10) as server, client_for(server) as client:
        server.inject(Fault.drop_node(after_tokens=3))
        (outcome,) = await client.gather([BatchRequest(model=MODEL, prompt="x")], concurrency=1)
    assert outcome.ok and outcome.job_id is not None
    assert len(posts(server)) == 1  # restarted by following the re-queued job, never resubmitted


async def test_cancelling_the_fan_out_cancels_every_stream_at_once_and_leaks_nothing():
    async with (
        dev_server(tokens_per_second=100.0, answer_tokens=2000) as server,
        client_for(server) as client,
    ):
        requests = [BatchRequest(id=str(i), model=MODEL, prompt=f"long {i}") for i in range(6)]
        fan_out = client.map(requests, concurrency=6)
        with anyio.move_on_after(10) as scope:
            async with fan_out:
                while not (
                    len(server.streams) == 6 and all(r.tokens_sent >= 3 for r in server.streams)
                ):
                    await anyio.sleep(0.01)
                assert connections_in_use(client) == 6
                scope.cancel()
                await anyio.sleep(5)
        assert scope.cancelled_caught
        # Every job left its partial text behind.
        assert sorted(o.id for o in fan_out.cancelled) == [str(i) for i in range(6)]
        assert all(o.status == "cancelled" and o.text and o.tokens for o in fan_out.cancelled)
        # Every connection is back and the server saw every client go away, at once.
        assert connections_in_use(client) == 0
        with anyio.fail_after(5):
            while server.open_streams:
                await anyio.sleep(0.01)
        closes = [r.closed_at for r in server.streams]
        assert all(r.closed_by_client and not r.completed for r in server.streams)
        assert max(closes) - min(closes) < 0.5  # type: ignore[type-var, operator]


async def test_concurrency_bounds_the_streams_the_server_sees_and_grows_the_pool():
    async with (
        dev_server(tokens_per_second=400.0, answer_tokens=20, rate_limit_per_minute=1000) as server,
        client_for(server, max_connections=2) as client,
    ):
        requests = (BatchRequest(model=MODEL, prompt=f"q{i}") for i in range(15))
        outcomes = await client.gather(requests, concurrency=5)
        binding = client._transport._binding
        # One budget for both stacks (streams and aiohttp's JSON requests), grown to concurrency.
        assert binding is not None and binding.pool.limit == 5 and binding.budget.limit == 5
    assert all(o.ok for o in outcomes)
    assert peak_overlap(list(server.streams)) == 5


async def test_the_shared_limiter_keeps_a_fan_out_within_a_small_budget():
    async with dev_server(rate_limit_per_minute=4) as server, client_for(server) as client:
        # One job first: its answer tells the limiter that 3 requests are left this minute.
        await client.gather([BatchRequest(model=MODEL, prompt="warm up")], concurrency=1)
        requests = [BatchRequest(id=str(i), model=MODEL, prompt=f"q{i}") for i in range(8)]
        fan_out = client.map(requests, concurrency=8)
        done = []
        with anyio.move_on_after(1.5):
            async with fan_out as outcomes:
                async for outcome in outcomes:
                    done.append(outcome)  # noqa: PERF401 - kept as they come, then cancelled
    # Three fit what is left of the minute; the other five wait for the window instead of drowning
    # in 429s.
    assert len(done) == 3 and all(o.ok for o in done)
    assert len(fan_out.cancelled) == 5 and all(not o.text for o in fan_out.cancelled)
    assert [r.status for r in posts(server)] == [200] * 4


async def test_one_429_pauses_every_worker_of_the_client():
    # Jobs of ~250 ms: without a shared pause, the other worker would submit again within it.
    async with (
        dev_server(answer_tokens=5, tokens_per_second=20.0) as server,
        client_for(server) as client,
    ):
        # One job first: the limiter learns the budget from its headers.
        await client.gather([BatchRequest(model=MODEL, prompt="warm up")], concurrency=1)
        server.inject(Fault.http_error(429, retry_after=1, method="POST"))
        requests = [BatchRequest(id=str(i), model=MODEL, prompt=f"q{i}") for i in range(6)]
        outcomes = await client.gather(requests, concurrency=2)
    assert all(o.ok for o in outcomes)
    sent = posts(server)[1:]
    (limited,) = [r for r in sent if r.status == 429]
    # Only a request already on its way when the 429 came back may arrive within the pause.
    within = [r for r in sent if limited.time + 0.15 < r.time < limited.time + 0.9]
    assert within == []
    assert len(sent) == 7  # six jobs and one retry


async def test_jobs_held_by_the_shared_pause_keep_their_deadlines_for_the_server():
    # A 429 pauses every worker for 0.6 s, longer than the first token's deadline and than the
    # whole stream's: both run from a request's sending, so the job the 429 answered (retried after
    # the pause) and the jobs the pause held back before sending still get their answers.
    timeouts = Timeouts(first_token=0.3, total=0.5)
    async with (
        dev_server(answer_tokens=4) as server,
        client_for(server, timeouts=timeouts) as client,
    ):
        # One job first: the limiter learns the budget, so the next two go out at once.
        await client.gather([BatchRequest(model=MODEL, prompt="warm up")], concurrency=1)
        server.inject(Fault.http_error(429, retry_after=0.6, method="POST"))
        requests = [BatchRequest(id=str(i), model=MODEL, prompt=f"q{i}") for i in range(4)]
        outcomes = await client.gather(requests, concurrency=2)
    assert [o.status for o in outcomes] == ["ok"] * 4
    limited = next(r for r in posts(server) if r.status == 429)
    held = [r for r in posts(server) if r.time > limited.time + 0.5]
    assert len(held) >= 3  # the retry, the job the pause held and the one after it
    # Their figures put the wait where it was: before the sending, the client's own.
    waits = sorted(o.time_to_send or 0.0 for o in outcomes)
    assert waits[-2] >= 0.5  # the job the 429 answered and the job the pause held
    for o in outcomes:
        assert o.time_to_send is not None and o.time_to_first_token is not None
        assert o.time_to_first_token < 0.3  # within the deadline, as the server kept it
        assert o.time_to_send + o.time_to_first_token <= o.latency


def test_the_clients_limiter_backs_off_models_by_the_clients_retry_policy():
    import time

    from infernet_async import RetryPolicy

    client = InfernetClient("http://127.0.0.1:9", "t", retry=RetryPolicy(backoff_base=0.2))
    state = client.rate_limiter.state
    assert state.reserve("m") == 0.0
    state.observe(503, {}, {"error": "no_capacity"}, model="m")
    until = state.model_paused_until("m")
    assert until is not None
    # The first failure waits the policy's 0.2 s, jittered down by up to half (the limiter's own
    # default would be about 1 s).
    assert 0.09 <= until - time.monotonic() <= 0.2


async def test_no_capacity_in_a_fan_out_pauses_that_model_only():
    from infernet_async import RetryPolicy

    async with (
        dev_server() as server,
        client_for(server, retry=RetryPolicy(max_retries=0)) as client,
    ):
        await client.gather([BatchRequest(model="mistral:7b", prompt="warm up")], concurrency=1)
        server.inject(Fault.http_error(503, method="POST"))
        (outcome,) = await client.gather(
            [BatchRequest(model=MODEL, prompt="busy")], concurrency=1, max_attempts=1
        )
    assert outcome.error is not None and outcome.error.code == "no_capacity"
    state = client.rate_limiter.state
    assert state.model_paused_until(MODEL) is not None
    assert state.model_paused_until("mistral:7b") is None
    assert state.outstanding == 0


async def test_a_model_that_stays_down_does_not_starve_the_jobs_of_the_others():
    # Its jobs are refused while it is paused (never sent) and run out of attempts; the jobs of
    # the model that works are not held behind them.
    from infernet_async import RetryPolicy
    from infernet_async.devserver import NodeSpec

    nodes = [
        NodeSpec(f"node_{name}", (f"{name}:1b",), capacity=100, time_to_first_token=0.0)
        for name in ("up", "down")
    ]
    quick = RetryPolicy(backoff_base=0.05, backoff_max=0.1)
    async with (
        dev_server(nodes=nodes, answer_tokens=3) as server,
        client_for(server, retry=quick) as client,
    ):
        server.drop_node("node_down")
        requests = [
            BatchRequest(id=f"{name}{i}", model=f"{name}:1b", prompt=f"q{i}")
            for i in range(6)
            for name in ("up", "down")
        ]
        with anyio.fail_after(30):
            outcomes = await client.gather(requests, concurrency=4)
    assert all(o.ok for o in outcomes if o.request.model == "up:1b")
    down = [o for o in outcomes if o.request.model == "down:1b"]
    assert all(o.error is not None and o.error.code == "no_capacity" for o in down)
    assert all(o.attempts == 3 for o in down)
    sent = [r for r in posts(server) if r.json and r.json.get("model") == "down:1b"]
    # Held and sent, each of the six jobs would send all its 3 x 3 submissions.
    assert len(sent) < 6 * 9 / 2


async def test_a_pool_of_yours_smaller_than_the_concurrency_is_reported():
    import aiohttp

    async with (
        dev_server(answer_tokens=2) as server,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2), timeout=aiohttp.ClientTimeout(total=None)
        ) as session,
        client_for(server, session=session) as client,
    ):
        with pytest.warns(UserWarning, match="holds 2 connections, fewer than concurrency=4"):
            outcomes = await client.gather(
                [BatchRequest(model=MODEL, prompt=f"q{i}") for i in range(4)], concurrency=4
            )
        assert session.connector is not None and session.connector.limit == 2
    assert all(o.ok for o in outcomes)
