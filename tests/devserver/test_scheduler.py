"""The devserver's simulated network: node drops and re-queue, rate limits, the job timeout, bounded
history, client disconnects, idle streams, and the server's own lifecycle and pytest fixtures."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from infernet_async.devserver import DevServer, NodeSpec
from tests.helpers.devserver import Api, parse_sse, texts

pytest_plugins = ["infernet_async.devserver.pytest_plugin"]

FAST = {"tokens_per_second": 2000.0, "time_to_first_token": 0.0}
Factory = Callable[..., Awaitable[DevServer]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def slow_node(node_id: str = "node_slow", capacity: int = 1) -> NodeSpec:
    return NodeSpec(
        node_id, ["m:1"], tokens_per_second=40.0, time_to_first_token=0.0, capacity=capacity
    )


# -- node drop and re-queue ------------------------------------------------------------------------


async def test_dropping_a_node_mid_stream_requeues_the_job_on_another_node(
    session: aiohttp.ClientSession,
) -> None:
    nodes = [slow_node("node_a"), slow_node("node_b")]
    async with DevServer(nodes=nodes, answer_tokens=20) as server:
        api = Api(session, server.base_url, server.token)
        async with api.stream(model="m:1") as response:
            job_id = response.headers["X-Infernet-Job-Id"]
            buffer = b""
            while len(texts(parse_sse(buffer)[0])) < 2:
                buffer += await response.content.readany()
            first_node = server.job(job_id)["node_id"]  # type: ignore[index]
            server.drop_node(first_node)
            buffer += await response.read()
        events, _ = parse_sse(buffer)
        assert events[-1].json()["error"] == "node_disconnected"
        job = await api.wait_job(job_id)
        assert job["status"] == "completed" and job["node_id"] != first_node
        assert server.job(job_id)["attempts"] == 2  # type: ignore[index]
        # A stream opened after the drop follows the new attempt to the end.
        _, events, _ = await api.read_stream(job_id)
        assert events[-1].data == "[DONE]" and "".join(texts(events)) == job["result"]["content"]


async def test_single_node_pool_resumes_after_the_node_reconnects(
    devserver_factory: Factory, session: aiohttp.ClientSession
) -> None:
    from infernet_async.devserver import Fault

    server = await devserver_factory(
        nodes=[NodeSpec("node_one", ["m:1"], capacity=1)],
        node_reconnect_delay=0.05,
        answer_tokens=5,
    )
    api = Api(session, server.base_url, server.token)
    server.inject(Fault.drop_node(after_tokens=2))
    response, events, _ = await api.read_stream(model="m:1")
    job_id = response.headers["X-Infernet-Job-Id"]
    assert events[-1].json()["error"] == "node_disconnected"
    assert server.job(job_id)["status"] in ("pending", "processing", "completed")  # type: ignore[index]
    # Re-opened while the node is still away: the stream waits, then follows the new attempt.
    _, events, _ = await api.read_stream(job_id)
    assert events[-1].data == "[DONE]" and len(texts(events)) in (1, 5)
    job = await api.wait_job(job_id)
    assert job["node_id"] == "node_one" and server.nodes[0]["online"]


async def test_chaos_mode_drops_nodes_and_jobs_still_finish(
    devserver_factory: Factory, session: aiohttp.ClientSession
) -> None:
    server = await devserver_factory(
        node_drop_probability=0.5, node_reconnect_delay=0.001, answer_tokens=8, seed=3
    )
    api = Api(session, server.base_url, server.token)
    jobs = [await api.submit(f"Question {n}") for n in range(4)]
    server.configure(node_drop_probability=0.0)  # the attempts already running keep their draws
    finished = [await api.wait_job(job["id"]) for job in jobs]
    assert all(job["status"] == "completed" for job in finished)
    assert sum(server.job(job["id"])["attempts"] for job in jobs) > len(jobs)  # type: ignore[index]


# -- rate limits -----------------------------------------------------------------------------------


async def test_rate_limit_per_minute_with_headers_and_429(
    devserver_factory: Factory, session: aiohttp.ClientSession
) -> None:
    server = await devserver_factory(tokens=("a-token", "b-token"), rate_limit_per_minute=3)
    api = Api(session, server.base_url, server.token)
    remaining = []
    for _ in range(3):
        status, _, headers = await api.request("GET", "/models")
        assert status == 200 and headers["X-RateLimit-Limit"] == "3"
        remaining.append(int(headers["X-RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    status, body, headers = await api.request("GET", "/models")
    assert (status, body["error"]) == (429, "rate_limited")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert body["detail"]["resetAt"].endswith("Z")
    assert headers["X-RateLimit-Remaining"] == "0"
    # Streams and job reads count too, and the limit is per token.
    assert (await api.request("GET", "/jobs"))[0] == 429
    assert (await api.request("GET", "/models", token="b-token"))[0] == 200
    server.reset_rate_limits()
    assert (await api.request("GET", "/models"))[0] == 200


async def test_rate_limit_per_hour(
    devserver_factory: Factory, session: aiohttp.ClientSession
) -> None:
    server = await devserver_factory(rate_limit_per_hour=2)
    api = Api(session, server.base_url, server.token)
    assert [(await api.request("GET", "/models"))[0] for _ in range(2)] == [200, 200]
    status, _, headers = await api.request("GET", "/models")
    assert status == 429 and int(headers["Retry-After"]) > 60


# -- job timeout -----------------------------------------------------------------------------------


async def test_job_running_past_the_timeout_fails_with_timeout(
    devserver_factory: Factory, session: aiohttp.ClientSession
) -> None:
    server = await devserver_factory(
        nodes=[slow_node()], job_timeout=0.15, answer_tokens=100, tokens_per_second=None
    )
    api = Api(session, server.base_url, server.token)
    response, events, _ = await api.read_stream(model="m:1")
    error = events[-1].json()
    assert error["error"] == "timeout" and "0.15" in error["message"]
    assert 0 < len(texts(events)) < 100
    job = await api.wait_job(response.headers["X-Infernet-Job-Id"])
    assert job["status"] == "failed" and job["error"] == "timeout" and job["error_message"]
    assert "result" not in job
    assert server.nodes[0]["running"] == []


async def test_job_pending_past_the_timeout_fails_and_its_stream_is_the_error(
    devserver_factory: Factory, session: aiohttp.ClientSession
) -> None:
    server = await devserver_factory(
        nodes=[slow_node()], job_timeout=0.1, answer_tokens=100, tokens_per_second=None
    )
    api = Api(session, server.base_url, server.token)
    await api.submit(model="m:1")  # occupies the only node
    waiting = await api.submit(model="m:1")
    job = await api.wait_job(waiting["id"])
    assert (job["status"], job["error"]) == ("failed", "timeout")
    _, events, _ = await api.read_stream(waiting["id"])
    assert len(events) == 1 and events[0].json()["error"] == "timeout"


# -- bounded memory --------------------------------------------------------------------------------


async def test_finished_jobs_beyond_the_history_limit_are_evicted_oldest_first(
    devserver_factory: Factory, session: aiohttp.ClientSession
) -> None:
    server = await devserver_factory(history_limit=5, answer_tokens=2)
    api = Api(session, server.base_url, server.token)
    ids = []
    for n in range(12):
        job = await api.submit(f"Question {n}")
        await api.wait_job(job["id"])
        ids.append(job["id"])
    assert server.jobs_in_memory == 5
    assert (await api.request("GET", f"/jobs/{ids[0]}"))[0] == 404
    _, page, _ = await api.request("GET", "/jobs", params={"limit": "100"})
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:5]


async def test_client_disconnect_is_noticed_at_once_and_the_job_goes_on(
    devserver_factory: Factory, session: aiohttp.ClientSession
) -> None:
    server = await devserver_factory(nodes=[slow_node()], answer_tokens=12, tokens_per_second=None)
    api = Api(session, server.base_url, server.token)
    async with api.stream(model="m:1") as response:
        job_id = response.headers["X-Infernet-Job-Id"]
        await response.content.readany()
        assert server.open_streams == 1
    # Leaving the block mid-body closes the connection; the server's handler is cancelled.
    record = await server.wait_for_stream_close(job_id, timeout=2)
    assert record.closed_by_client and not record.completed and record.error is None
    assert record.tokens_sent < 12 and server.open_streams == 0
    job = await api.wait_job(job_id)
    assert job["status"] == "completed"
    assert job["result"]["usage"]["completion_tokens"] == 12


async def test_many_idle_streams_cost_no_extra_tasks_and_all_close_cleanly(
    devserver_factory: Factory,
) -> None:
    streams = 300
    server = await devserver_factory(
        nodes=[slow_node()],
        answer_tokens=10_000,
        tokens_per_second=None,
        rate_limit_per_minute=10_000,
    )
    async with aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        await api.submit(model="m:1")  # keeps the only node busy for minutes
        waiting = await api.submit(model="m:1")
    baseline = len(asyncio.all_tasks())
    request = (
        f"GET /api/v1/jobs/{waiting['id']}/stream HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.token}\r\n\r\n"
    ).encode()
    connections = []
    for _ in range(streams):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        connections.append((reader, writer))
    async with asyncio.timeout(10):
        while server.open_streams < streams:
            await asyncio.sleep(0.01)
    # aiohttp itself keeps one task per connection and one per request; the stream adds none.
    assert len(asyncio.all_tasks()) - baseline <= 2 * streams + 5
    for _, writer in connections:
        writer.close()
    for _, writer in connections:
        await writer.wait_closed()
    async with asyncio.timeout(5):
        while server.open_streams:
            await asyncio.sleep(0.01)
    assert all(r.closed_by_client for r in server.streams)
    assert server.job(waiting["id"])["status"] == "pending"  # type: ignore[index]


# -- lifecycle and fixtures ------------------------------------------------------------------------


async def test_lifecycle_is_idempotent_and_one_shot() -> None:
    server = DevServer()
    with pytest.raises(RuntimeError):
        _ = server.url
    await server.start()
    await server.start()
    assert server.url.startswith("http://127.0.0.1:") and server.base_url.endswith("/api/v1")
    assert server.token == "dev-token"
    await server.aclose()
    await server.aclose()
    with pytest.raises(RuntimeError):
        await server.start()


async def test_closing_with_open_streams_ends_them(session: aiohttp.ClientSession) -> None:
    server = DevServer(nodes=[slow_node()], answer_tokens=10_000)
    await server.start()
    api = Api(session, server.base_url, server.token)
    async with api.stream(model="m:1") as response:
        await response.content.readany()
        await server.aclose()
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert server.open_streams == 0
    assert not server.streams[0].closed_by_client
    gc.collect()


async def test_the_devserver_fixture_is_fast_and_authenticated(
    devserver: DevServer, session: aiohttp.ClientSession
) -> None:
    api = Api(session, devserver.base_url, devserver.token)
    _, events, _ = await api.read_stream()
    assert events[-1].data == "[DONE]"
    assert devserver.requests[-1].path == "/api/v1/jobs"


async def test_the_devserver_env_fixture_points_the_environment_at_it(
    devserver_env: DevServer,
) -> None:
    import os

    assert os.environ["INFERNET_BASE_URL"] == devserver_env.base_url
    assert os.environ["INFERNET_BEARER_TOKEN"] == devserver_env.token
