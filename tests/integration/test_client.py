"""InfernetClient: its lifecycle, one client across event loops, the jobs API against the embedded
control plane, and a bearer-token canary that must never show up anywhere."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from infernet_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    IncompleteStreamError,
    InfernetClient,
    InfernetError,
    Job,
    JobFailedError,
    JobTimeoutError,
    ModelInfo,
    NodeDisconnectedError,
    RateLimitError,
    Timeouts,
)
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import MODEL, MSG, client_for, fast_retry, raw_server

ANSWER = "Paris is the capital of France. Each"


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=8) as srv:
        yield srv


@pytest.fixture
async def client(server: DevServer) -> AsyncIterator[InfernetClient]:
    async with client_for(server.base_url, server.token) as c:
        yield c


# -- lifecycle -------------------------------------------------------------------------------------


def test_a_client_can_be_built_outside_any_loop() -> None:
    client = InfernetClient("http://127.0.0.1:1", token="t")
    assert "state=unopened" in repr(client)
    del client
    gc.collect()  # never opened: nothing to warn about


async def test_states_and_idempotent_aclose(server: DevServer) -> None:
    client = client_for(server.base_url, server.token)
    async with client as entered:
        assert entered is client and "state=opened" in repr(client)
        with pytest.raises(RuntimeError, match="already open"):
            await client.__aenter__()
    assert client.closed
    await client.aclose()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.list_models()
    with pytest.raises(RuntimeError, match="closed"):
        client.stream(model=MODEL, messages=MSG)
    with pytest.raises(RuntimeError, match="reopen"):
        async with client:
            pass


async def test_first_request_opens_the_client_lazily(server: DevServer) -> None:
    client = client_for(server.base_url, server.token)
    assert await client.list_models()
    assert "state=opened" in repr(client)
    await client.aclose()


async def test_an_opened_client_never_closed_warns(server: DevServer) -> None:
    client = client_for(server.base_url, server.token)
    await client.list_models()
    transport = client._transport
    with pytest.warns(ResourceWarning, match="never closed"):
        del client
        gc.collect()
    await transport.aclose()  # what the loop's shutdown would otherwise do


def _serve_in_thread() -> Iterator[DevServer]:
    """A DevServer on its own loop in a thread, so the test's loops can come and go."""
    ready = threading.Event()
    stop: asyncio.Event | None = None
    holder: list[DevServer] = []
    loop_holder: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        loop_holder.append(asyncio.get_running_loop())
        async with DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=8) as s:
            holder.append(s)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    ready.wait(10)
    try:
        yield holder[0]
    finally:
        assert stop is not None
        loop_holder[0].call_soon_threadsafe(stop.set)
        thread.join(10)


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[DevServer]:
    yield from _serve_in_thread()


@pytest.fixture(scope="module")
def shared_client(threaded_server: DevServer) -> Iterator[InfernetClient]:
    """One client for several tests, as a module-level client in a notebook or an app would be."""
    client = client_for(threaded_server.base_url, threaded_server.token)
    yield client
    asyncio.run(client.aclose())


@pytest.mark.parametrize("round_", [1, 2, 3])
async def test_one_client_across_pytest_asyncios_per_test_loops(
    shared_client: InfernetClient, round_: int
) -> None:
    # Each test runs in a fresh loop; the session of the previous loop was closed at its shutdown.
    async with shared_client.stream(model=MODEL, messages=MSG) as stream:
        assert await stream.final_text() == ANSWER


def test_one_client_across_two_asyncio_runs(threaded_server: DevServer) -> None:
    client = client_for(threaded_server.base_url, threaded_server.token)

    async def use() -> str:
        async with client.stream(model=MODEL, messages=MSG) as stream:
            return await stream.final_text()

    assert asyncio.run(use()) == ANSWER
    # The first loop is gone; its shutdown closed the session it owned (no "Unclosed" warning).
    assert asyncio.run(use()) == ANSWER
    with asyncio.Runner() as runner:  # pytest-asyncio's per-test loops are Runners too
        assert runner.run(client.complete(model=MODEL, messages=MSG)) == ANSWER
    with asyncio.Runner() as runner:
        assert runner.run(client.complete(model=MODEL, messages=MSG)) == ANSWER
        runner.run(client.aclose())
    gc.collect()


def test_caller_session_survives_and_is_not_closed(threaded_server: DevServer) -> None:
    import aiohttp

    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            client = InfernetClient(
                threaded_server.base_url, token=threaded_server.token, session=session
            )
            async with client:
                assert await client.complete(model=MODEL, messages=MSG) == ANSWER
            assert not session.closed

    asyncio.run(main())


# -- the jobs API ----------------------------------------------------------------------------------


async def test_submit_get_and_wait(server: DevServer, client: InfernetClient) -> None:
    job = await client.submit(model=MODEL, messages=MSG, max_tokens=8)
    assert isinstance(job, Job) and job.status in ("pending", "processing", "completed")
    assert server.requests[-1].json["stream"] is False
    done = await client.wait_job(job.id, poll_interval=0.01)
    assert done.status == "completed" and done.content == ANSWER
    assert done.result is not None and done.result.usage is not None
    assert done.result.usage.completion_tokens == 8
    again = await client.get_job(job.id)
    assert again.id == job.id and again.is_terminal


async def test_wait_job_raises_job_timeout_for_a_job_that_timed_out() -> None:
    server = DevServer(tokens_per_second=5, time_to_first_token=0, job_timeout=0.1)
    async with server as srv, client_for(srv.base_url, srv.token) as client:
        job = await client.submit(model=MODEL, messages=MSG)
        with pytest.raises(JobTimeoutError) as info:
            await client.wait_job(job.id, poll_interval=0.02)
    assert isinstance(info.value, JobFailedError)
    assert info.value.job_id == job.id and info.value.code == "timeout"


async def test_wait_job_raises_job_failed_for_other_failures() -> None:
    calls: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        status = "processing" if len(calls) < 3 else "failed"
        body = {"id": "job_1", "status": status}
        if status == "failed":
            body |= {"error": "node_error", "error_message": "the GPU caught fire"}
        return web.json_response(body)

    async with raw_server(handler) as url, client_for(url) as client:
        with pytest.raises(JobFailedError) as info:
            await client.wait_job("job_1", poll_interval=0.01)
    assert type(info.value) is JobFailedError and info.value.code == "node_error"
    assert "fire" in str(info.value) and len(calls) == 3


async def test_wait_job_gives_up_after_its_timeout(server: DevServer) -> None:
    server.configure(tokens_per_second=5)
    async with client_for(server.base_url, server.token) as client:
        job = await client.submit(model=MODEL, messages=MSG)
        with pytest.raises(APITimeoutError) as info:
            await client.wait_job(job.id, poll_interval=0.02, timeout=0.1)
    assert info.value.phase == "wait" and info.value.job_id == job.id


async def test_wait_job_polls_with_backoff(server: DevServer) -> None:
    server.configure(tokens_per_second=30)
    async with client_for(server.base_url, server.token) as client:
        job = await client.submit(model=MODEL, messages=MSG)
        await client.wait_job(job.id, poll_interval=0.01, max_poll_interval=0.04)
    polls = [r.time for r in server.requests if r.path.endswith(job.id)]
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    assert len(gaps) >= 3 and max(gaps) > min(gaps)


async def test_complete(client: InfernetClient) -> None:
    assert await client.complete(model=MODEL, messages=MSG) == ANSWER


async def test_list_models(client: InfernetClient) -> None:
    models = await client.list_models()
    assert all(isinstance(m, ModelInfo) for m in models)
    assert MODEL in {m.id for m in models}


async def test_list_jobs_with_filters(server: DevServer, client: InfernetClient) -> None:
    first = await client.submit(model=MODEL, messages=MSG)
    await client.wait_job(first.id, poll_interval=0.01)
    since = datetime.now(UTC) - timedelta(minutes=1)
    jobs = await client.list_jobs(limit=5, status="completed", since=since)
    assert [j.id for j in jobs] == [first.id]
    query = server.requests[-1].query
    assert query["limit"] == "5" and query["status"] == "completed"
    assert datetime.fromisoformat(query["since"]) == since
    naive = await client.list_jobs(since=datetime.now() - timedelta(days=1))
    assert isinstance(naive, list)
    with pytest.raises(ValueError):
        await client.list_jobs(limit=101)


async def test_invalid_parameters_fail_before_sending(
    server: DevServer, client: InfernetClient
) -> None:
    with pytest.raises(ValueError):
        client.stream(model=MODEL, messages=MSG, temperature=9)
    with pytest.raises(ValueError):
        client.stream(model=MODEL, messages="hi")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await client.submit(model=MODEL, messages=[])
    with pytest.raises(ValueError):
        client.stream(model=MODEL, messages=MSG, on_node_disconnect="retry")  # type: ignore[arg-type]
    assert server.requests == []


async def test_unknown_response_fields_are_kept() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"id": "job_1", "status": "queued_for_gpu", "priority": 3, "result": None}
        )

    async with raw_server(handler) as url, client_for(url) as client:
        job = await client.get_job("job_1")
    assert job.status == "queued_for_gpu" and job.model_extra == {"priority": 3}


# -- the token canary ------------------------------------------------------------------------------

CANARY = "tok-CANARY-8b1d5e"


async def test_token_never_appears_in_reprs_errors_or_logs(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="infernet_async")
    texts: list[str] = []
    client = InfernetClient(server.base_url, token=CANARY, retry=fast_retry(max_retries=1))
    texts += [repr(client), str(client), repr(client._transport.__dict__)]
    async with client:
        for action in (
            client.list_models(),
            client.submit(model=MODEL, messages=MSG),
            client.get_job("job_missing"),
        ):
            with pytest.raises(AuthenticationError) as info:
                await action
            texts += [str(info.value), repr(info.value), *traceback.format_exception(info.value)]
            texts.append(repr(info.value.headers))
        stream = client.stream(model=MODEL, messages=MSG)
        texts.append(repr(stream))
        with pytest.raises(AuthenticationError):
            await stream.final_text()
    server.inject(Fault.http_error(429, retry_after=300))
    async with InfernetClient(server.base_url, token=server.token) as ok:
        with pytest.raises(RateLimitError) as limited:
            await ok.list_models()
    texts += traceback.format_exception(limited.value)
    texts += [r.getMessage() for r in caplog.records]
    assert any("401" in t for t in texts) and caplog.records
    assert all(r.name.startswith("infernet_async") for r in caplog.records)
    for text in texts:
        assert CANARY not in text


async def test_token_canary_in_connection_and_stream_errors() -> None:
    import socket

    texts: list[str] = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with InfernetClient(
        f"http://127.0.0.1:{port}", token=CANARY, retry=fast_retry(max_retries=0)
    ) as dead:
        with pytest.raises(APIConnectionError) as refused:
            await dead.list_models()
    texts += traceback.format_exception(refused.value)
    async with DevServer(tokens=[CANARY], tokens_per_second=2000, time_to_first_token=0) as srv:
        async with InfernetClient(srv.base_url, token=CANARY) as client:
            for fault, expected in (
                (Fault.drop_node(after_tokens=2), NodeDisconnectedError),
                (Fault.disconnect(after_tokens=2), IncompleteStreamError),
            ):
                srv.inject(fault)
                with pytest.raises(expected) as info:
                    await client.stream(model=MODEL, messages=MSG).final_text()
                texts += [repr(info.value), *traceback.format_exception(info.value)]
        assert srv.requests and all(
            r.headers.get("Authorization") == "<redacted>" for r in srv.requests
        )
    for text in texts:
        assert CANARY not in text


async def test_timeouts_reach_the_client(server: DevServer) -> None:
    timeouts = Timeouts(connect=1, read=2, first_token=3, stall=4, total=5)
    client = InfernetClient(server.base_url, token=server.token, timeouts=timeouts)
    assert client.timeouts == timeouts and client._transport.timeouts is timeouts


# -- wait_job's deadline ---------------------------------------------------------------------------


def _job_server(done_at: list[float], polls: list[float]) -> Callable[[web.Request], Any]:
    """A job that is ``processing`` until the loop's clock reaches ``done_at[0]`` (never while
    ``done_at`` is empty); records the loop time of every poll."""

    async def handler(request: web.Request) -> web.StreamResponse:
        now = asyncio.get_running_loop().time()
        polls.append(now)
        done = bool(done_at) and now >= done_at[0]
        return web.json_response({"id": "job_1", "status": "completed" if done else "processing"})

    return handler


async def test_wait_job_polls_once_more_at_its_deadline() -> None:
    # Polls at 0 and 0.3 s see it processing; the next sleep (0.45 s) would pass the 0.5 s deadline,
    # so the wait sleeps 0.2 s and polls at the deadline, after the job completed at 0.4 s. (It used
    # to give up at 0.3 s, saying "after 0.5 s".)
    polls: list[float] = []
    done_at: list[float] = []
    async with raw_server(_job_server(done_at, polls)) as url, client_for(url) as client:
        t0 = asyncio.get_running_loop().time()
        done_at.append(t0 + 0.4)
        job = await client.wait_job("job_1", poll_interval=0.3, max_poll_interval=1.0, timeout=0.5)
    assert job.status == "completed" and polls[-1] >= t0 + 0.4


async def test_wait_job_times_out_only_after_a_poll_at_its_deadline() -> None:
    polls: list[float] = []
    loop = asyncio.get_running_loop()
    async with raw_server(_job_server([], polls)) as url, client_for(url) as client:
        t0 = loop.time()
        with pytest.raises(APITimeoutError) as info:
            await client.wait_job("job_1", poll_interval=0.1, max_poll_interval=0.1, timeout=0.25)
        elapsed = loop.time() - t0
    assert info.value.phase == "wait" and info.value.job_id == "job_1"
    # Polls at 0, 0.1, 0.2 and the last one at the deadline, not a sleep's length before it (it
    # used to give up after the poll at 0.2 s). 5 ms: a timer may fire a clock tick early.
    assert polls[-1] >= t0 + 0.25 - 0.005
    # The message says how long the wait really took, and the timeout it was given.
    match = re.search(r"still processing after (\d+\.\d+) s \(timeout 0\.25 s\)", str(info.value))
    assert match is not None, str(info.value)
    assert 0.245 <= float(match.group(1)) <= elapsed + 0.005


# -- answers of the wrong shape --------------------------------------------------------------------

_CALLS: dict[str, Callable[[InfernetClient], Awaitable[object]]] = {
    "get_job": lambda c: c.get_job("job_1"),
    "submit": lambda c: c.submit(model=MODEL, messages=MSG),
    "wait_job": lambda c: c.wait_job("job_1", poll_interval=0.01, timeout=1),
    "list_models": lambda c: c.list_models(),
    "list_jobs": lambda c: c.list_jobs(),
}

_JOB_BODIES: list[tuple[object, str]] = [
    ({"id": "job_1", "status": None}, "status: Input should be a valid string (got null)"),
    ({"job": {"id": "job_1", "status": "pending"}}, "id: Field required; status: Field required"),
    ([], "body: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(
    ("call", "body", "problem"),
    [
        *(
            (call, body, problem)
            for call in ("get_job", "submit", "wait_job")
            for body, problem in _JOB_BODIES
        ),
        ("list_models", [], "body: Input should be a valid dictionary"),
        ("list_models", {"models": [{"nodes": 1}]}, "models.0.id: Field required"),
        ("list_jobs", {"jobs": [{"id": "job_1"}]}, "jobs.0.status: Field required"),
        ("list_jobs", {"jobs": {"id": "job_1"}}, "jobs: Input should be a valid list (got object)"),
    ],
)
async def test_an_answer_of_the_wrong_shape_is_an_api_error(
    call: str, body: object, problem: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(body)

    async with raw_server(handler) as url, client_for(url) as client:
        with pytest.raises(APIError) as info:
            await _CALLS[call](client)
    err = info.value
    assert isinstance(err, InfernetError) and type(err) is APIError
    assert err.status == 200 and err.body == body
    assert "with a" in err.message and "of the wrong shape: " + problem in err.message


async def test_a_wrong_shape_error_keeps_the_real_status_and_never_the_token() -> None:
    # A body of the wrong shape may echo the request (an httpbin-like endpoint behind a wrong base
    # URL): the token in it must not reach the message or the traceback.
    async def handler(request: web.Request) -> web.StreamResponse:
        echo = {"headers": {"Authorization": request.headers.get("Authorization", "")}}
        return web.json_response(echo, status=201)

    async with raw_server(handler) as url, client_for(url, token=CANARY) as client:
        with pytest.raises(APIError) as info:
            await client.submit(model=MODEL, messages=MSG)
    err = info.value
    assert err.status == 201 and "id: Field required" in str(err)
    for text in (str(err), repr(err), *traceback.format_exception(err)):
        assert CANARY not in text
