"""The devserver against infernet-api.md: every endpoint, status code, error body and header.

Talks to a running DevServer with a bare aiohttp session (not the SDK), as any HTTP client would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import cast

import aiohttp
import pytest

from infernet_async.devserver import DevServer, NodeSpec
from infernet_async.devserver._server import LISTEN_BACKLOG
from tests.helpers.devserver import PROMPT, Api, parse_sse, texts

FAST = {"tokens_per_second": 2000.0, "time_to_first_token": 0.0}


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(tokens=("dev-token", "other-token"), **FAST) as server:
        yield server


@pytest.fixture
async def api(server: DevServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server.base_url, server.token)


def iso_ok(text: str) -> bool:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None


# -- POST /jobs, stream: false ---------------------------------------------------------------------


async def test_submit_answers_201_with_job_object_and_rate_limit_headers(api: Api) -> None:
    status, job, headers = await api.request(
        "POST", "/jobs", json={"model": "qwen2.5:14b", "messages": PROMPT}
    )
    assert status == 201
    assert job["id"].startswith("job_") and job["model"] == "qwen2.5:14b"
    assert job["status"] in ("pending", "processing")
    assert iso_ok(job["created_at"])
    assert headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-RateLimit-Limit"] == "60"
    assert headers["X-RateLimit-Remaining"] == "59"
    assert int(headers["X-RateLimit-Reset"]) > 0


async def test_get_job_reports_completed_result(api: Api) -> None:
    job = await api.submit("What is 2 + 2?")
    done = await api.wait_job(job["id"])
    assert done["status"] == "completed"
    assert done["result"]["content"] == "2 + 2 = 4."
    usage = done["result"]["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert done["node_id"].startswith("node_")
    assert isinstance(done["latency_ms"], int) and done["latency_ms"] >= 0
    assert iso_ok(done["completed_at"])
    assert "error" not in done


async def test_answers_are_deterministic_for_prompt_and_seed(api: Api) -> None:
    first = await api.wait_job((await api.submit("Tell me about Paris."))["id"])
    second = await api.wait_job((await api.submit("Tell me about Paris."))["id"])
    assert first["result"]["content"] == second["result"]["content"]
    assert "Paris" in first["result"]["content"]


async def test_max_tokens_cuts_the_answer(api: Api) -> None:
    job = await api.wait_job((await api.submit("Tell me about Paris.", max_tokens=3))["id"])
    assert job["result"]["usage"]["completion_tokens"] == 3


# -- POST /jobs, stream: true ----------------------------------------------------------------------


async def test_stream_true_answers_sse_in_the_guides_dialect(api: Api) -> None:
    response, events, comments = await api.read_stream()
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "X-RateLimit-Remaining" in response.headers
    job_id = response.headers["X-Infernet-Job-Id"]
    assert events[-1].data == "[DONE]"
    assert all(e.event == "message" and e.id is None for e in events)
    assert not comments
    job = await api.wait_job(job_id)
    assert "".join(texts(events)) == job["result"]["content"]
    assert len(texts(events)) == job["result"]["usage"]["completion_tokens"]
    # The guide's exact framing: `data: {"text": "..."}` then a blank line.
    assert events[0].data.startswith('{"text": ')


async def test_typed_dialect_has_job_meta_tokens_done_with_growing_ids(
    server: DevServer, api: Api
) -> None:
    server.configure(dialect="typed")
    response, events, _ = await api.read_stream()
    kinds = [e.event for e in events]
    assert kinds[0] == "job" and kinds[1] == "meta" and kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"token"}
    assert events[0].id is None
    job_event = events[0].json()
    assert job_event["id"] == response.headers["X-Infernet-Job-Id"]
    assert job_event["model_name"] == "qwen2.5:14b"
    meta = events[1].json()
    assert meta["provider_node_id"].startswith("node_")
    assert meta["engine"] == "local-emulation"
    assert set(meta) >= {"provider_name", "model", "started_at"}
    ids = [int(e.id) for e in events[1:] if e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == len(events) - 1
    done = events[-1].json()
    assert done["text"] == "".join(texts(events))
    assert done["reason"] == "stop" and iso_ok(done["finished_at"])


async def test_stream_by_id_of_completed_job_replays_whole_text_then_done(
    server: DevServer, api: Api
) -> None:
    job = await api.wait_job((await api.submit("Tell me about Paris."))["id"])
    response, events, _ = await api.read_stream(job["id"])
    assert response.headers["X-Infernet-Job-Id"] == job["id"]
    assert [e.data for e in events[1:]] == ["[DONE]"]
    assert events[0].json() == {"text": job["result"]["content"]}
    # And the typed replay repeats the ids the job's events had.
    server.configure(dialect="typed")
    _, first, _ = await api.read_stream(job["id"])
    _, second, _ = await api.read_stream(job["id"])
    assert [(e.id, e.data) for e in first[1:]] == [(e.id, e.data) for e in second[1:]]


async def test_stream_by_id_of_running_job_replays_then_follows_live(
    server: DevServer, api: Api
) -> None:
    server.configure(tokens_per_second=200.0, answer_tokens=30)
    job = await api.submit("Tell me about Paris.")
    await asyncio.sleep(0.05)  # some tokens exist already
    _, events, _ = await api.read_stream(job["id"])
    done = await api.wait_job(job["id"])
    assert "".join(texts(events)) == done["result"]["content"]
    assert len(texts(events)) == 30 and events[-1].data == "[DONE]"


async def test_stream_by_id_of_pending_job_waits_for_a_node() -> None:
    nodes = [
        NodeSpec("node_only", ["m:1"], tokens_per_second=500.0, time_to_first_token=0.0, capacity=1)
    ]
    async with (
        DevServer(nodes=nodes, answer_tokens=20) as server,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, server.base_url, server.token)
        first = await api.submit(model="m:1")
        second = await api.submit(model="m:1")
        assert second["status"] == "pending"
        _, events, _ = await api.read_stream(second["id"])
        assert events[-1].data == "[DONE]" and len(texts(events)) == 20
        assert (await api.wait_job(first["id"]))["status"] == "completed"


async def test_heartbeats_are_ping_comments_at_the_interval() -> None:
    nodes = [
        NodeSpec("node_only", ["m:1"], tokens_per_second=20.0, time_to_first_token=0.0, capacity=1)
    ]
    server = DevServer(nodes=nodes, heartbeat_interval=0.02, answer_tokens=2)
    async with server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        _, events, comments = await api.read_stream(model="m:1")
    assert events[-1].data == "[DONE]"
    assert comments and set(comments) == {"ping"}


async def test_crlf_line_endings_when_asked() -> None:
    async with DevServer(newline="\r\n", **FAST) as server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        async with api.stream() as response:
            raw = await response.read()
    assert raw.endswith(b"data: [DONE]\r\n\r\n") and b"\n\n" not in raw.replace(b"\r\n", b"")


# -- validation and API errors ---------------------------------------------------------------------

VALID = {"model": "qwen2.5:14b", "messages": PROMPT}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": PROMPT}, "model"),
        ({"model": 5, "messages": PROMPT}, "model"),
        ({"model": "qwen2.5:14b"}, "messages"),
        ({**VALID, "messages": []}, "messages"),
        ({**VALID, "messages": ["hi"]}, "messages[0]"),
        ({**VALID, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({**VALID, "messages": [{"role": "user"}]}, "messages[0].content"),
        ({**VALID, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({**VALID, "max_tokens": 0}, "max_tokens"),
        ({**VALID, "max_tokens": "many"}, "max_tokens"),
        ({**VALID, "max_tokens": True}, "max_tokens"),
        ({**VALID, "temperature": 2.5}, "temperature"),
        ({**VALID, "temperature": "hot"}, "temperature"),
        ({**VALID, "top_p": 1.5}, "top_p"),
        ({**VALID, "stream": "yes"}, "stream"),
        ({**VALID, "node_id": 7}, "node_id"),
        ({**VALID, "node_id": "node_nowhere"}, "node_id"),
        ({**VALID, "node_id": "node_3090b2", "model": "mistral:7b"}, "node_id"),
        ([VALID], "JSON object"),
    ],
)
async def test_invalid_submissions_are_bad_requests_naming_the_field(
    api: Api, body: object, field: str
) -> None:
    status, error, _ = await api.request("POST", "/jobs", json=body)
    assert status == 400
    assert error["error"] == "bad_request"
    assert field in error["error_message"]


async def test_invalid_json_is_a_bad_request(api: Api) -> None:
    status, error, _ = await api.request(
        "POST", "/jobs", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert (status, error["error"]) == (400, "bad_request")
    assert "JSON" in error["error_message"]


async def test_oversized_body_is_413_with_bad_request_body() -> None:
    async with DevServer(max_body_bytes=1000) as server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        big = {"model": "qwen2.5:14b", "messages": [{"role": "user", "content": "x" * 5000}]}
        status, error, _ = await api.request("POST", "/jobs", json=big)
    assert (status, error["error"]) == (413, "bad_request")
    assert "1000" in error["error_message"]


async def test_unknown_model_is_model_not_found(api: Api) -> None:
    status, error, _ = await api.request("POST", "/jobs", json={**VALID, "model": "gpt-17:900b"})
    assert (status, error["error"]) == (404, "model_not_found")
    assert "gpt-17:900b" in error["error_message"]


async def test_registered_model_without_online_node_is_no_capacity(
    server: DevServer, api: Api
) -> None:
    for node in server.nodes:
        if "mistral:7b" in node["models"]:
            server.drop_node(node["id"])
    status, error, _ = await api.request("POST", "/jobs", json={**VALID, "model": "mistral:7b"})
    assert (status, error["error"]) == (503, "no_capacity")
    _, models, _ = await api.request("GET", "/models")
    assert "mistral:7b" not in [m["id"] for m in models["models"]]


ROUTES = [
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/job_00000000"),
    ("GET", "/jobs/job_00000000/stream"),
    ("GET", "/models"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dev-token", "Bearer"])
async def test_every_route_needs_a_valid_bearer_token(
    server: DevServer, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.base_url + path, headers=headers, json=VALID) as response,
    ):
        body = await response.json()
    assert response.status == 401
    assert body["error"] == "unauthorized" and body["error_message"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_jobs_are_visible_only_to_their_token(api: Api) -> None:
    job = await api.submit()
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/stream"):
        status, error, _ = await api.request("GET", path, token="other-token")
        assert (status, error["error"]) == (404, "not_found")
    _, mine, _ = await api.request("GET", "/jobs")
    _, theirs, _ = await api.request("GET", "/jobs", token="other-token")
    assert [j["id"] for j in mine["jobs"]] == [job["id"]]
    assert theirs == {"jobs": []}


async def test_unknown_job_is_not_found(api: Api) -> None:
    status, error, _ = await api.request("GET", "/jobs/job_ffffffff")
    assert (status, error["error"]) == (404, "not_found")


async def test_unknown_route_and_wrong_method_get_error_bodies(api: Api) -> None:
    status, error, _ = await api.request("GET", "/nothing-here")
    assert (status, error["error"]) == (404, "not_found")
    status, error, headers = await api.request("DELETE", "/models")
    assert (status, error["error"]) == (405, "method_not_allowed")
    assert "GET" in headers["Allow"]


# -- GET /jobs -------------------------------------------------------------------------------------


async def test_list_jobs_newest_first_with_limit_status_and_since(api: Api) -> None:
    ids = []
    for n in range(5):
        ids.append((await api.submit(f"Question {n}?"))["id"])
        await asyncio.sleep(0.002)  # distinct created_at milliseconds
    for job_id in ids:
        await api.wait_job(job_id)
    status, page, _ = await api.request("GET", "/jobs", params={"limit": "3"})
    assert status == 200
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:3]
    _, page, _ = await api.request("GET", "/jobs", params={"status": "completed"})
    assert len(page["jobs"]) == 5
    _, page, _ = await api.request("GET", "/jobs", params={"status": "pending"})
    assert page["jobs"] == []
    _, page, _ = await api.request("GET", "/jobs")
    third = page["jobs"][2]
    _, page, _ = await api.request("GET", "/jobs", params={"since": third["created_at"]})
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:3]
    _, page, _ = await api.request("GET", "/jobs", params={"since": "2100-01-01T00:00:00+00:00"})
    assert page["jobs"] == []


@pytest.mark.parametrize("below_a_millisecond", [0.0, 0.0009996, 0.0009999999])
async def test_a_job_is_listed_since_its_own_created_at(
    server: DevServer, api: Api, below_a_millisecond: float
) -> None:
    # created_at as the client sees it is rounded to the microsecond, then cut to milliseconds:
    # a time just under a millisecond boundary is shown as the next one.
    job_id = (await api.submit("Question?"))["id"]
    job = next(j for j in server._plane.store if j.id == job_id)
    job.created_at = float(int(job.created_at)) + 0.5 + below_a_millisecond
    _, shown, _ = await api.request("GET", f"/jobs/{job_id}")
    _, page, _ = await api.request("GET", "/jobs", params={"since": shown["created_at"]})
    assert [j["id"] for j in page["jobs"]] == [job_id]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "done"}, "status"),
        ({"since": "yesterday"}, "since"),
    ],
)
async def test_list_jobs_validates_its_parameters(
    api: Api, params: dict[str, str], field: str
) -> None:
    status, error, _ = await api.request("GET", "/jobs", params=params)
    assert (status, error["error"]) == (400, "bad_request")
    assert field in error["error_message"]


async def test_list_jobs_accepts_limit_100(api: Api) -> None:
    status, page, _ = await api.request("GET", "/jobs", params={"limit": "100"})
    assert status == 200 and page == {"jobs": []}


# -- GET /models -----------------------------------------------------------------------------------


async def test_models_lists_online_models_with_node_counts_and_speed() -> None:
    nodes = [
        NodeSpec("node_a", ["qwen2.5:14b", "llama3.1:8b"], tokens_per_second=80.0),
        NodeSpec("node_b", ["qwen2.5:14b"], tokens_per_second=60.0),
        NodeSpec("node_c", ["phi3:mini"], online=False),
    ]
    async with DevServer(nodes=nodes) as server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        status, body, _ = await api.request("GET", "/models")
        assert status == 200
        assert body == {
            "models": [
                {"id": "llama3.1:8b", "nodes": 1, "avg_tokens_per_second": 80},
                {"id": "qwen2.5:14b", "nodes": 2, "avg_tokens_per_second": 70},
            ]
        }
        # Registered but offline: no_capacity, not model_not_found.
        status, error, _ = await api.request("POST", "/jobs", json={**VALID, "model": "phi3:mini"})
        assert (status, error["error"]) == (503, "no_capacity")
        server.restore_node("node_c")
        _, body, _ = await api.request("GET", "/models")
        assert "phi3:mini" in [m["id"] for m in body["models"]]


# -- records ---------------------------------------------------------------------------------------


async def test_requests_are_recorded_with_the_token_redacted(server: DevServer, api: Api) -> None:
    await api.submit("What is 2 + 2?")
    record = server.requests[-1]
    assert (record.method, record.path, record.status) == ("POST", "/api/v1/jobs", 201)
    assert record.headers["Authorization"] == "<redacted>"
    assert "dev-token" not in json.dumps(dict(record.headers))
    assert record.json["messages"][0]["content"] == "What is 2 + 2?"
    assert record.token_index == 0 and record.time > 0


async def test_stream_records_say_how_each_stream_ended(server: DevServer, api: Api) -> None:
    response, events, _ = await api.read_stream()
    record = await server.wait_for_stream_close(response.headers["X-Infernet-Job-Id"])
    assert record.completed and not record.closed_by_client and record.error is None
    assert record.tokens_sent == len(texts(events))
    assert record.closed_at is not None and record.closed_at >= record.opened_at
    assert server.open_streams == 0


async def test_parse_helper_handles_the_framings() -> None:
    events, comments = parse_sse(b': ping\r\n\r\ndata: {"text": "a"}\rdata: b\r\r')
    assert comments == ["ping"] and events[0].data == '{"text": "a"}\nb'


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO of a listening socket")
async def test_the_listen_backlog_takes_a_fan_out_s_connects_at_once() -> None:
    # Linux reports a listening socket's backlog in tcp_info.tcpi_sacked (bytes 28-31).
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    async with DevServer() as server:
        assert server._runner is not None
        (site,) = server._runner.sites
        listening = cast(asyncio.Server, site._server).sockets[0]
        info = listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    (backlog,) = struct.unpack_from("I", info, 28)
    assert backlog == min(LISTEN_BACKLOG, somaxconn) and LISTEN_BACKLOG == 2048
