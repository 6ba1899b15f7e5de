"""Each injectable fault of the devserver, observed from a bare aiohttp client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
import pytest

from infernet_async.devserver import DevServer, Fault
from tests.helpers.devserver import Api, parse_sse, texts

FAST = {"tokens_per_second": 2000.0, "time_to_first_token": 0.0, "answer_tokens": 10}


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(**FAST) as server:
        yield server


@pytest.fixture
async def api(server: DevServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server.base_url, server.token)


# -- request faults --------------------------------------------------------------------------------


async def test_http_error_429_has_retry_after_rate_headers_and_reset_at(
    server: DevServer, api: Api
) -> None:
    server.inject(Fault.http_error(429, retry_after=2))
    status, body, headers = await api.request("GET", "/models")
    assert status == 429
    assert body["error"] == "rate_limited" and body["error_message"]
    assert headers["Retry-After"] == "2"
    assert headers["X-RateLimit-Remaining"] == "0"
    reset_at = datetime.fromisoformat(body["detail"]["resetAt"].replace("Z", "+00:00"))
    assert reset_at.timestamp() >= int(headers["X-RateLimit-Reset"]) - 3
    status, _, _ = await api.request("GET", "/models")
    assert status == 200  # used once


@pytest.mark.parametrize(
    ("status", "code"), [(500, "internal_error"), (503, "no_capacity"), (502, "internal_error")]
)
async def test_http_error_5xx_answers_the_api_error_body(
    server: DevServer, api: Api, status: int, code: str
) -> None:
    server.inject(Fault.http_error(status), times=2)
    for _ in range(2):
        got, body, _ = await api.request("GET", "/models")
        assert (got, body["error"]) == (status, code)
    assert (await api.request("GET", "/models"))[0] == 200
    assert server.pending_faults == []


async def test_http_error_matches_path_and_method(server: DevServer, api: Api) -> None:
    server.inject(Fault.http_error(503, path="/api/v1/jobs", method="post"))
    assert (await api.request("GET", "/models"))[0] == 200
    assert (await api.request("GET", "/jobs"))[0] == 200
    status, body, _ = await api.request(
        "POST",
        "/jobs",
        json={"model": "qwen2.5:14b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (status, body["error"]) == (503, "no_capacity")


async def test_http_error_custom_code_and_message(server: DevServer, api: Api) -> None:
    server.inject(Fault.http_error(500, code="internal_error", message="database on fire"))
    _, body, _ = await api.request("GET", "/models")
    assert body == {"error": "internal_error", "error_message": "database on fire"}


# -- job faults ------------------------------------------------------------------------------------


async def test_drop_node_after_tokens_sends_node_disconnected_and_requeues(
    server: DevServer, api: Api
) -> None:
    server.inject(Fault.drop_node(after_tokens=3))
    response, events, _ = await api.read_stream()
    job_id = response.headers["X-Infernet-Job-Id"]
    assert len(texts(events)) == 3
    assert events[-1].json() == {
        "error": "node_disconnected",
        "message": "Node went offline mid-stream",
    }
    assert "[DONE]" not in [e.data for e in events]
    job = await api.wait_job(job_id)
    assert job["status"] == "completed"
    assert server.job(job_id)["attempts"] == 2  # type: ignore[index]
    record = await server.wait_for_stream_close(job_id)
    assert record.error == "node_disconnected" and not record.completed


async def test_drop_node_in_typed_dialect_is_an_error_event(server: DevServer, api: Api) -> None:
    server.configure(dialect="typed")
    server.inject(Fault.drop_node(after_tokens=1))
    _, events, _ = await api.read_stream()
    assert [e.event for e in events] == ["job", "meta", "token", "error"]
    assert events[-1].json()["error"] == "node_disconnected"
    assert events[-1].json()["message"]


async def test_typed_ids_keep_growing_across_attempts(server: DevServer, api: Api) -> None:
    server.configure(dialect="typed")
    server.inject(Fault.drop_node(after_tokens=2))
    response, dropped, _ = await api.read_stream()
    job_id = response.headers["X-Infernet-Job-Id"]
    assert [e.id for e in dropped] == [None, "1", "2", "3", "4"]  # job, meta, 2 tokens, error
    await api.wait_job(job_id)
    _, replay, _ = await api.read_stream(job_id)
    assert [e.event for e in replay] == ["job", "meta", "token", "done"]
    assert int(replay[1].id or 0) == 5  # the second attempt's meta follows the first's error
    assert int(replay[-1].id or 0) == 5 + 10 + 1


async def test_drop_node_probability_is_deterministic_under_the_seed() -> None:
    async def drop_points(seed: int) -> list[int]:
        points = []
        # Nodes come back at once, so six drops in a row never leave the model without capacity.
        server = DevServer(seed=seed, node_reconnect_delay=0.001, **FAST)
        async with server, aiohttp.ClientSession() as session:
            api = Api(session, server.base_url, server.token)
            server.inject(Fault.drop_node(probability=0.5), times=6)
            for _ in range(6):
                _, events, _ = await api.read_stream()
                dropped = events[-1].data != "[DONE]"
                points.append(len(texts(events)) if dropped else -1)
        return points

    first, again = await drop_points(7), await drop_points(7)
    assert first == again
    assert any(p >= 0 for p in first) and any(p == -1 for p in first)


async def test_drop_node_probability_one_always_drops_zero_never(
    server: DevServer, api: Api
) -> None:
    server.inject(Fault.drop_node(probability=1.0))
    _, events, _ = await api.read_stream()
    assert events[-1].json()["error"] == "node_disconnected"
    server.inject(Fault.drop_node(probability=0.0))
    _, events, _ = await api.read_stream()
    assert events[-1].data == "[DONE]"


async def test_faults_filtered_by_model_skip_other_models(server: DevServer, api: Api) -> None:
    server.inject(Fault.drop_node(after_tokens=0, model="llama3.1:8b"))
    _, events, _ = await api.read_stream()  # qwen2.5:14b
    assert events[-1].data == "[DONE]"
    _, events, _ = await api.read_stream(model="llama3.1:8b")
    assert events[-1].json()["error"] == "node_disconnected"


# -- stream faults ---------------------------------------------------------------------------------


async def test_disconnect_ends_the_body_without_done(server: DevServer, api: Api) -> None:
    server.inject(Fault.disconnect(after_tokens=3))
    response, events, _ = await api.read_stream()
    assert len(texts(events)) == 3 and len(events) == 3  # no [DONE], no error event
    job_id = response.headers["X-Infernet-Job-Id"]
    record = await server.wait_for_stream_close(job_id)
    assert record.fault == "disconnect(after_tokens=3)" and not record.completed
    assert not record.closed_by_client
    assert (await api.wait_job(job_id))["status"] == "completed"  # the job itself went on


async def test_disconnect_abort_breaks_the_connection_mid_body(server: DevServer, api: Api) -> None:
    server.inject(Fault.disconnect(after_tokens=2, abort=True))
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with api.stream() as response:
            async for chunk in response.content.iter_any():
                received += chunk
    events, _ = parse_sse(received)
    assert len(texts(events)) == 2


async def test_malformed_event_then_the_stream_goes_on(server: DevServer, api: Api) -> None:
    server.inject(Fault.malformed_event(after_tokens=2))
    response, events, _ = await api.read_stream()
    broken = []
    for event in events:
        try:
            json.loads(event.data) if event.data != "[DONE]" else None
        except json.JSONDecodeError:
            broken.append(event)
    assert len(broken) == 1 and events.index(broken[0]) == 2
    assert events[-1].data == "[DONE]"
    job = await api.wait_job(response.headers["X-Infernet-Job-Id"])
    assert "".join(texts(events)) == job["result"]["content"]


async def test_stall_sends_nothing_not_even_heartbeats(api: Api, server: DevServer) -> None:
    server.configure(heartbeat_interval=0.01)
    server.inject(Fault.stall(after_tokens=2, seconds=0.3))
    chunks: list[bytes] = []
    async with api.stream() as response:
        buffer = b""
        while len(texts(parse_sse(buffer)[0])) < 2:
            buffer += await response.content.readany()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                chunks.append(await response.content.readany())
        rest = await response.read()
    assert chunks == []
    events, _ = parse_sse(buffer + rest)
    assert events[-1].data == "[DONE]" and len(texts(events)) == 10


async def test_slow_drip_writes_a_few_bytes_at_a_time(server: DevServer, api: Api) -> None:
    server.configure(answer_tokens=3)
    server.inject(Fault.slow_drip(byte_delay=0.0005, chunk_size=4))
    chunks: list[bytes] = []
    async with api.stream() as response:
        chunks.extend([chunk async for chunk in response.content.iter_any()])
    events, _ = parse_sse(b"".join(chunks))
    assert len(texts(events)) == 3 and events[-1].data == "[DONE]"
    assert len(chunks) > len(events)  # events arrived split across reads
    assert server.streams[-1].fault == "slow_drip(byte_delay=0.0005)"


async def test_stream_faults_combine_and_times_counts_streams(server: DevServer, api: Api) -> None:
    server.inject(Fault.slow_drip(byte_delay=0.0), times=2)
    server.inject(Fault.disconnect(after_tokens=1), times=2)
    for _ in range(2):
        _, events, _ = await api.read_stream()
        assert len(events) == 1
    _, events, _ = await api.read_stream()
    assert events[-1].data == "[DONE]"


def test_fault_constructors_validate_their_arguments() -> None:
    with pytest.raises(ValueError):
        Fault.drop_node(after_tokens=-1)
    with pytest.raises(ValueError):
        Fault.drop_node(probability=1.5)
    with pytest.raises(ValueError):
        Fault.http_error(200)
    with pytest.raises(ValueError):
        Fault.stall(seconds=-1)
    with pytest.raises(ValueError):
        Fault.slow_drip(chunk_size=0)
    assert Fault.drop_node().after_tokens == 0
    assert Fault.http_error(429).code == "rate_limited"


async def test_http_error_live_plane_shape_has_no_headers(server: DevServer, api: Api) -> None:
    server.inject(Fault.http_error(429, live_plane=True))
    status, body, headers = await api.request("GET", "/models")
    assert status == 429
    assert set(body) == {"error", "detail"} and body["detail"]["resetAt"].endswith("Z")
    assert "Retry-After" not in headers and "X-RateLimit-Remaining" not in headers


async def test_faults_can_target_one_job(server: DevServer, api: Api) -> None:
    server.configure(answer_tokens=5)
    first = await api.wait_job((await api.submit())["id"])
    second = await api.wait_job((await api.submit("Tell me about Paris."))["id"])
    server.inject(Fault.disconnect(after_tokens=0), job_id=second["id"])
    server.inject(Fault.http_error(500), job_id=second["id"])
    assert (await api.request("GET", f"/jobs/{first['id']}"))[0] == 200
    assert (await api.request("GET", f"/jobs/{second['id']}"))[0] == 500
    _, events, _ = await api.read_stream(first["id"])
    assert events[-1].data == "[DONE]"
    _, events, _ = await api.read_stream(second["id"])
    assert events == []
    assert server.pending_faults == []


async def test_drop_node_can_target_a_job_by_id(server: DevServer, api: Api) -> None:
    server.configure(tokens_per_second=100.0, answer_tokens=20)
    job = await api.submit()
    # The fault waits for that job's next attempt: a drop of its node re-queues it and the
    # fault then strikes the new attempt at its first token.
    server.inject(Fault.drop_node(after_tokens=0), job_id=job["id"])
    server.drop_node((await api.request("GET", f"/jobs/{job['id']}"))[1]["node_id"])
    done = await api.wait_job(job["id"])
    assert done["status"] == "completed"
    assert server.job(job["id"])["attempts"] == 3  # type: ignore[index]
