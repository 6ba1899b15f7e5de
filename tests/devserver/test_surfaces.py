"""The devserver's hosted-style surfaces against live-service.md: the OpenAI-compatible ``/v1``
routes and the playground chat routes (``/api/chat``), byte for byte where the hosted routes fix the
bytes, next to the jobs API on the same origin.

Talks to running DevServers with a bare aiohttp session (not the SDK), as any HTTP client would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from infernet_async.cli import main
from infernet_async.devserver import DevServer, Fault, NodeSpec
from tests.helpers.devserver import Event, parse_sse
from tests.helpers.serve import serve_process

FAST: dict[str, Any] = {"tokens_per_second": 1000.0, "time_to_first_token": 0.0}
MODEL = "qwen2.5:14b"
MESSAGES = [{"role": "user", "content": "Explain how neural networks learn in three sentences."}]
COMPLETIONS = "/v1/chat/completions"
RATE_LIMITED = "Rate limit exceeded — try again later"


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(answer_tokens=6, **FAST) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, Any]:
    """Status, decoded JSON (or the text when it is not JSON) and headers."""
    async with session.request(method, url, **kwargs) as response:
        raw = await response.read()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode()
    return response.status, body, response.headers


async def raw_stream(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with session.request(method, url, **kwargs) as response:
        return response, await response.read()


def data_lines(raw: bytes) -> list[str]:
    """The data of every event of a data-only stream, checking each event is one ``data:`` line."""
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == "", "the stream ends with a blank line"
    lines = []
    for block in blocks[:-1]:
        if block.startswith(":"):
            continue
        assert block.startswith("data: ") and "\n" not in block, block
        lines.append(block.removeprefix("data: "))
    return lines


async def openai_stream(
    session: aiohttp.ClientSession, server: DevServer, **fields: Any
) -> tuple[aiohttp.ClientResponse, list[str]]:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, **fields}
    response, raw = await raw_stream(session, "POST", server.url + COMPLETIONS, json=body)
    return response, data_lines(raw)


async def submit_chat(
    session: aiohttp.ClientSession, server: DevServer, **fields: Any
) -> dict[str, Any]:
    status, body, _ = await call(
        session, "POST", server.chat_url, json={"messages": MESSAGES, **fields}
    )
    assert status == 200, body
    return dict(body)


async def chat_stream(
    session: aiohttp.ClientSession, server: DevServer, job_id: str
) -> tuple[bytes, list[Event], list[str]]:
    response, raw = await raw_stream(session, "GET", f"{server.chat_url}/stream/{job_id}")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events, comments = parse_sse(raw)
    return raw, events, comments


async def wait_status(
    session: aiohttp.ClientSession, server: DevServer, job_id: str, *wanted: str
) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            status, body, _ = await call(session, "GET", f"{server.chat_url}/{job_id}/status")
            assert status == 200, body
            if body["status"] in wanted:
                return dict(body)
            await asyncio.sleep(0.005)


# -- POST /v1/chat/completions, stream: true ------------------------------------------------------


async def test_openai_stream_is_role_chunk_tokens_finish_chunk_then_done(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    response, lines = await openai_stream(session, server)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    # Compact JSON, as JSON.stringify writes it.
    assert [compact(c) for c in chunks] == lines[:-1]
    head = chunks[0]
    assert head["id"].startswith("chatcmpl-") and isinstance(head["created"], int)
    for chunk in chunks:
        assert list(chunk)[:4] == ["id", "object", "created", "model"]
        assert (chunk["id"], chunk["created"], chunk["model"]) == (
            head["id"],
            head["created"],
            MODEL,
        )
        assert chunk["object"] == "chat.completion.chunk"
    assert head["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    tokens = chunks[1:-1]
    assert len(tokens) == 6
    for chunk in tokens:
        assert chunk["choices"] == [
            {
                "index": 0,
                "delta": {"content": chunk["choices"][0]["delta"]["content"]},
                "finish_reason": None,
            }
        ]
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    text = "".join(c["choices"][0]["delta"]["content"] for c in tokens)

    status, answer, headers = await call(
        session, "POST", server.url + COMPLETIONS, json={"model": MODEL, "messages": MESSAGES}
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert answer["choices"][0]["message"]["content"] == text
    record = server.streams[-1]
    assert (record.surface, record.dialect, record.completed, record.tokens_sent) == (
        "openai",
        "openai",
        True,
        6,
    )


async def test_openai_stream_cut_by_max_tokens_finishes_with_length(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    _, lines = await openai_stream(session, server, max_tokens=3)
    chunks = [json.loads(line) for line in lines[:-1]]
    assert len(chunks) == 1 + 3 + 1 and lines[-1] == "[DONE]"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_openai_stream_node_drop_is_an_error_chunk_then_done_and_the_job_requeues(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    server.inject(Fault.drop_node(after_tokens=2))
    _, lines = await openai_stream(session, server)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert len(chunks) == 1 + 2 + 1
    error = chunks[-1]
    assert list(error) == ["id", "object", "error"]
    assert error["id"] == chunks[0]["id"] and error["object"] == "chat.completion.chunk"
    assert error["error"]["message"].startswith("node disconnected: ")
    assert lines[-2] == compact(error)
    record = server.streams[-1]
    assert (record.surface, record.error, record.completed) == (
        "openai",
        "node_disconnected",
        False,
    )
    job_id = error["id"].removeprefix("chatcmpl-")
    async with asyncio.timeout(5):
        while (job := server.job(job_id)) is None or job["status"] != "completed":
            await asyncio.sleep(0.005)
    assert job["attempts"] == 2


async def test_openai_stream_faults_shape_the_stream(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    server.inject(Fault.malformed_event(after_tokens=1))
    _, lines = await openai_stream(session, server)
    broken = [line for line in lines if line != "[DONE]" and not _is_json(line)]
    assert len(broken) == 1 and lines[-1] == "[DONE]"

    server.inject(Fault.disconnect(after_tokens=2))
    _, lines = await openai_stream(session, server)
    assert len(lines) == 1 + 2 and "[DONE]" not in lines

    server.inject(Fault.slow_drip(byte_delay=0, chunk_size=7))
    _, lines = await openai_stream(session, server)
    assert lines[-1] == "[DONE]" and len(lines) == 1 + 6 + 1 + 1
    assert "slow_drip" in (server.streams[-1].fault or "")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# -- POST /v1/chat/completions, stream: false; GET /v1/models ------------------------------------


async def test_openai_completion_object(server: DevServer, session: aiohttp.ClientSession) -> None:
    status, body, headers = await call(
        session,
        "POST",
        server.url + COMPLETIONS,
        # Ignored fields are accepted; an unrelated Authorization header is ignored.
        json={
            "model": MODEL,
            "messages": MESSAGES,
            "top_p": 0.5,
            "stop": ["\n"],
            "n": 1,
            "tools": [],
            "metadata": {"min_trust_tier": "verified"},
        },
        headers={"Authorization": "Bearer sk-not-a-resale-key"},
    )
    assert status == 200
    assert list(body) == ["id", "object", "created", "model", "choices", "usage"]
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert "X-RateLimit-Remaining-Requests" not in headers
    assert server.requests[-1].json["top_p"] == 0.5


async def test_openai_completion_after_a_node_drop_is_502(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    server.inject(Fault.drop_node(after_tokens=1))
    status, body, _ = await call(
        session, "POST", server.url + COMPLETIONS, json={"model": MODEL, "messages": MESSAGES}
    )
    assert status == 502
    assert body["error"]["code"] == 502 and body["error"]["type"] == "infernet_error"
    assert body["error"]["message"].startswith("node disconnected: ")


async def test_models_lists_the_models_with_an_online_node(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(session, "GET", server.openai_base_url + "/models")
    assert status == 200
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["llama3.1:8b", "mistral:7b", "qwen2.5:14b"]
    for model in body["data"]:
        assert list(model) == ["id", "object", "created", "owned_by"]
        assert model["object"] == "model" and model["owned_by"] == "infernet"
        assert isinstance(model["created"], int)
    server.drop_node("node_a100c3")
    server.drop_node("node_4080d4")
    _, body, _ = await call(session, "GET", server.openai_base_url + "/models")
    assert [m["id"] for m in body["data"]] == ["llama3.1:8b", "qwen2.5:14b"]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": MESSAGES},
        {"model": MODEL},
        {"model": MODEL, "messages": []},
        {"model": MODEL, "messages": [{"role": "user"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"model": MODEL, "messages": [{"role": 1, "content": "hi"}]},
        {"model": MODEL, "messages": MESSAGES, "min_trust_tier": "gold"},
        {"model": MODEL, "messages": MESSAGES, "metadata": {"min_trust_tier": "gold"}},
        {"model": MODEL, "messages": MESSAGES, "stream": "yes"},
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 0},
        ["not", "an", "object"],
    ],
)
async def test_openai_bad_bodies_are_400_openai_errors(
    server: DevServer, session: aiohttp.ClientSession, body: Any
) -> None:
    status, error, _ = await call(session, "POST", server.url + COMPLETIONS, json=body)
    assert status == 400
    assert list(error) == ["error"]
    assert error["error"]["type"] == "infernet_error" and error["error"]["code"] == 400
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]


async def test_openai_invalid_json_and_unknown_model(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    status, error, _ = await call(session, "POST", server.url + COMPLETIONS, data=b"{nope")
    assert status == 400 and error["error"]["code"] == 400
    status, error, headers = await call(
        session, "POST", server.url + COMPLETIONS, json={"model": "gpt-9", "messages": MESSAGES}
    )
    assert status == 503
    available = ["llama3.1:8b", "mistral:7b", "qwen2.5:14b"]
    assert error["error"]["code"] == 503 and error["error"]["type"] == "infernet_error"
    assert error["error"]["available_models"] == available
    assert all(m in error["error"]["message"] for m in available)
    assert "gpt-9" in error["error"]["message"]


# -- the chat surface ------------------------------------------------------------------------------


async def test_chat_submit_answers_the_job_and_its_provider(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    status, body, headers = await call(
        session,
        "POST",
        server.chat_url,
        json={"messages": MESSAGES, "modelName": "mistral:7b", "maxTokens": 100},
        headers={"Authorization": "Bearer whatever"},  # ignored
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert list(body) == ["jobId", "status", "source", "provider", "streamUrl"]
    assert body["streamUrl"] == f"/api/chat/stream/{body['jobId']}"
    assert body["status"] in ("pending", "assigned", "running") and body["source"] == "p2p"
    provider = body["provider"]
    assert list(provider) == ["id", "name", "nodeId", "gpuModel", "model", "pubkey"]
    assert provider["model"] == "mistral:7b" and provider["nodeId"] in {
        n["id"] for n in server.nodes if "mistral:7b" in n["models"]
    }
    # Pinning the provider by its id.
    pinned = await submit_chat(session, server, modelName="mistral:7b", providerId=provider["id"])
    assert pinned["provider"]["id"] == provider["id"]
    assert server.requests[-1].json["modelName"] == "mistral:7b"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": "hi"},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": MESSAGES, "maxTokens": "many"},
        {"messages": MESSAGES, "temperature": 9},
        {"messages": MESSAGES, "minTrustTier": "gold"},
        {"messages": MESSAGES, "min_trust_tier": "gold"},
        {"messages": MESSAGES, "modelName": ""},
    ],
)
async def test_chat_bad_bodies_are_400_sentences(
    server: DevServer, session: aiohttp.ClientSession, body: Any
) -> None:
    status, error, _ = await call(session, "POST", server.chat_url, json=body)
    assert status == 400
    assert isinstance(error["error"], str) and error["error"]
    assert set(error) <= {"error", "detail"}


async def test_chat_unknown_model_is_503_with_a_hint(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    status, error, _ = await call(
        session, "POST", server.chat_url, json={"messages": MESSAGES, "modelName": "gpt-9"}
    )
    assert status == 503
    assert error["error"].startswith("No live provider") and '"gpt-9"' in error["error"]
    assert "qwen2.5:14b" in error["detail"]["hint"]


async def test_chat_stream_bytes(server: DevServer, session: aiohttp.ClientSession) -> None:
    job_id = (await submit_chat(session, server))["jobId"]
    raw, events, comments = await chat_stream(session, server, job_id)
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == ""
    # The job row first, with no id line.
    job_block = blocks[0].split("\n")
    assert job_block[0] == "event: job" and job_block[1].startswith("data: ")
    assert len(job_block) == 2
    row = json.loads(job_block[1].removeprefix("data: "))
    assert {"id", "status", "model_name", "provider_id", "created_at"} <= set(row)
    assert row["id"] == job_id and row["model_name"] == MODEL
    # Then id: before event: before data:, compact JSON.
    for block in blocks[1:-1]:
        lines = block.split("\n")
        assert [line.split(":")[0] for line in lines] == ["id", "event", "data"], block
        data = lines[2].removeprefix("data: ")
        assert compact(json.loads(data)) == data
    assert [e.event for e in events] == ["job", "meta", *["token"] * 6, "done"]
    assert [int(e.id) for e in events[1:] if e.id is not None] == list(range(1, 9))
    meta = events[1].json()
    assert list(meta) == ["provider_node_id", "provider_name", "model", "started_at", "engine"]
    text = "".join(e.json()["text"] for e in events if e.event == "token")
    done = events[-1].json()
    assert list(done) == ["text", "reason", "finished_at"]
    assert done["text"] == text and done["reason"] == "stop"
    assert "[DONE]" not in raw.decode() and comments == []
    record = server.streams[-1]
    assert (record.surface, record.dialect, record.completed) == ("chat", "chat", True)


async def test_chat_stream_replays_from_the_start_with_the_same_ids(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    job_id = (await submit_chat(session, server))["jobId"]
    _, first, _ = await chat_stream(session, server, job_id)
    _, again, _ = await call(
        session,
        "GET",
        f"{server.chat_url}/stream/{job_id}",
        headers={"Last-Event-ID": "5"},  # ignored
    )
    replay, _ = parse_sse(again.encode())
    assert [(e.event, e.id, e.data) for e in replay[1:]] == [
        (e.event, e.id, e.data) for e in first[1:]
    ]
    assert replay[0].json()["status"] == "completed"


async def test_chat_stream_of_an_unknown_job_is_200_with_one_error_event(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    response, raw = await raw_stream(session, "GET", f"{server.chat_url}/stream/job_nope")
    assert response.status == 200
    assert raw == b'event: error\ndata: {"message":"job not found","jobId":"job_nope"}\n\n'
    assert server.streams[-1].error == "not_found"


async def test_chat_stream_node_drop_is_an_error_then_a_new_get_shows_the_new_attempt(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    server.inject(Fault.drop_node(after_tokens=2))
    job_id = (await submit_chat(session, server))["jobId"]
    _, events, _ = await chat_stream(session, server, job_id)
    assert [e.event for e in events] == ["job", "meta", "token", "token", "error"]
    error = events[-1]
    assert list(error.json()) == ["message"] and error.id == "4"
    assert error.json()["message"].startswith("node disconnected: ")
    dropped_node = events[1].json()["provider_node_id"]
    assert server.streams[-1].error == "node_disconnected"

    await wait_status(session, server, job_id, "completed")
    _, events, _ = await chat_stream(session, server, job_id)
    assert [e.event for e in events] == ["job", "meta", *["token"] * 6, "done"]
    assert events[1].json()["provider_node_id"] != dropped_node
    assert int(events[1].id or 0) > 4  # ids only grow across attempts
    status = await wait_status(session, server, job_id, "completed")
    assert status["latest_error_message"].startswith("node disconnected: ")


async def test_chat_stream_faults_and_heartbeats(session: aiohttp.ClientSession) -> None:
    async with DevServer(
        tokens_per_second=40, time_to_first_token=0.06, answer_tokens=2, heartbeat_interval=0.02
    ) as server:
        job_id = (await submit_chat(session, server))["jobId"]
        server.inject(Fault.disconnect(after_tokens=1))
        _, events, comments = await chat_stream(session, server, job_id)
        assert [e.event for e in events] == ["job", "meta", "token"]
        assert "ping" in comments
        _, events, _ = await chat_stream(session, server, job_id)
        assert events[-1].event == "done"


async def test_chat_status_route_states(session: aiohttp.ClientSession) -> None:
    nodes = [NodeSpec("node_one", (MODEL,), "one", capacity=1)]
    async with DevServer(
        nodes=nodes, tokens_per_second=25, time_to_first_token=0.02, answer_tokens=5
    ) as server:
        first = await submit_chat(session, server)
        second = await submit_chat(session, server)
        assert (first["status"], second["status"]) == ("assigned", "pending")
        assert second["provider"] is None
        status, body, _ = await call(session, "GET", f"{server.chat_url}/{second['jobId']}/status")
        assert status == 200 and body["status"] == "pending" and body["provider_id"] is None
        running = await wait_status(session, server, first["jobId"], "running")
        assert running["provider_id"] == first["provider"]["id"]
        done = await wait_status(session, server, first["jobId"], "completed")
        assert list(done) == [
            "id",
            "status",
            "model_name",
            "provider_id",
            "error",
            "latest_error_message",
            "completed_at",
            "updated_at",
        ]
        assert done["error"] is None
        assert done["completed_at"] and done["updated_at"]
        status, body, _ = await call(session, "GET", f"{server.chat_url}/job_nope/status")
        assert (status, body) == (404, {"error": "job not found"})


# -- hosted mode ---------------------------------------------------------------------------------


async def test_hosted_mode_404s_the_jobs_api_and_strands_a_dropped_job(
    session: aiohttp.ClientSession,
) -> None:
    async with DevServer(
        hosted=True,
        heartbeat_interval=0.03,
        chat_stream_max_seconds=0.25,
        job_timeout=0.5,
        answer_tokens=6,
        **FAST,
    ) as server:
        assert server.anonymous_rate_limit_per_hour == 20
        auth = {"Authorization": f"Bearer {server.token}"}
        for method, path in (("GET", "/models"), ("POST", "/jobs"), ("GET", "/jobs/job_x")):
            status, page, headers = await call(
                session, method, server.base_url + path, headers=auth, json={}
            )
            assert status == 404 and headers["Content-Type"] == "text/html; charset=utf-8"
            assert "404: This page could not be found" in page

        server.inject(Fault.drop_node(after_tokens=2))
        job_id = (await submit_chat(session, server))["jobId"]
        started = asyncio.get_running_loop().time()
        _, events, comments = await chat_stream(session, server, job_id)
        elapsed = asyncio.get_running_loop().time() - started
        assert [e.event for e in events] == ["job", "meta", "token", "token"]
        assert comments.count("ping") >= 3 and elapsed >= 0.25
        status, body, _ = await call(session, "GET", f"{server.chat_url}/{job_id}/status")
        assert body["status"] == "running"
        assert server.job(job_id)["attempts"] == 1  # type: ignore[index]
        failed = await wait_status(session, server, job_id, "failed")
        assert failed["error"].startswith("expired: ")

        # A non-streaming completion whose node died before any token: nothing by the cap, 504.
        server.inject(Fault.drop_node(after_tokens=0))
        status, error, _ = await call(
            session, "POST", server.url + COMPLETIONS, json={"model": MODEL, "messages": MESSAGES}
        )
        assert status == 504 and error["error"]["code"] == 504


# -- routes, auth and limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/v1/embeddings", "/api/nothing", "/api/chat/job_x", "/v1/models/x"]
)
async def test_unknown_routes_answer_the_html_404_page(
    server: DevServer, session: aiohttp.ClientSession, path: str
) -> None:
    status, page, headers = await call(session, "GET", server.url + path)
    assert status == 404
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.startswith("<!DOCTYPE html>") and "404: This page could not be found" in page


async def test_the_jobs_api_keeps_its_json_404_and_its_tokens(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    auth = {"Authorization": f"Bearer {server.token}"}
    status, body, _ = await call(session, "GET", server.base_url + "/nothing", headers=auth)
    assert (status, body["error"]) == (404, "not_found")
    status, body, _ = await call(session, "GET", server.base_url + "/models")
    assert (status, body["error"]) == (401, "unauthorized")
    # The other surfaces need no token, and a wrong one is ignored.
    for url in (server.openai_base_url + "/models", f"{server.chat_url}/job_x/status"):
        status, _, _ = await call(session, "GET", url, headers={"Authorization": "Bearer wrong"})
        assert status in (200, 404)
    status, _, headers = await call(session, "GET", server.url + COMPLETIONS)
    assert status == 405 and "POST" in headers["Allow"]


async def test_anonymous_limit_per_ip_and_route(session: aiohttp.ClientSession) -> None:
    async with DevServer(anonymous_rate_limit_per_hour=2, answer_tokens=2, **FAST) as server:
        for _ in range(2):
            await submit_chat(session, server)
        status, body, headers = await call(
            session, "POST", server.chat_url, json={"messages": MESSAGES}
        )
        assert status == 429
        assert list(body) == ["error", "detail"] and body["error"] == RATE_LIMITED
        assert body["detail"]["resetAt"].endswith("Z")
        assert "Retry-After" not in headers and "X-RateLimit-Limit" not in headers
        # Another client IP has its own count; the OpenAI route counts apart; GETs are free.
        other = {"X-Forwarded-For": "203.0.113.7"}
        status, _, _ = await call(
            session, "POST", server.chat_url, json={"messages": MESSAGES}, headers=other
        )
        assert status == 200
        completion = {"model": MODEL, "messages": MESSAGES}
        for _ in range(2):
            status, _, _ = await call(session, "POST", server.url + COMPLETIONS, json=completion)
            assert status == 200
        status, body, headers = await call(
            session, "POST", server.url + COMPLETIONS, json=completion
        )
        assert status == 429
        assert body == {"error": {"message": RATE_LIMITED, "type": "infernet_error", "code": 429}}
        assert "Retry-After" not in headers
        for _ in range(3):
            status, _, _ = await call(session, "GET", server.openai_base_url + "/models")
            assert status == 200
    async with DevServer() as default:
        assert default.anonymous_rate_limit_per_hour is None


async def test_resale_keys(session: aiohttp.ClientSession) -> None:
    good, other = "ifr_res_good", "ifr_res_other"
    keys = {good: [MODEL], other: ["mistral:7b"]}
    async with DevServer(
        resale_keys=keys, resale_rps=2, anonymous_rate_limit_per_hour=1, answer_tokens=2, **FAST
    ) as server:

        def auth(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        completion = {"model": MODEL, "messages": MESSAGES}
        status, body, headers = await call(
            session, "POST", server.url + COMPLETIONS, json=completion, headers=auth(good)
        )
        assert status == 200
        assert headers["X-RateLimit-Remaining-Requests"] == "1"
        assert int(headers["X-Infernet-Shared-Remaining-Requests"]) >= 1
        status, body, headers = await call(
            session, "GET", server.openai_base_url + "/models", headers=auth(good)
        )
        assert [m["id"] for m in body["data"]] == [MODEL]
        status, body, headers = await call(
            session, "POST", server.url + COMPLETIONS, json=completion, headers=auth(good)
        )
        assert status == 429
        assert body["error"]["type"] == "infernet_reservation_error"
        assert int(headers["Retry-After"]) >= 1
        assert headers["X-Infernet-Limit-Type"] == "rps"
        assert headers["X-Infernet-Limit-Scope"] == "key"
        assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("2", "0")
        assert headers["X-Infernet-Reservation"].startswith("res_")
        assert "X-RateLimit-Remaining-Requests" not in headers

        def reservation_error(body: Any) -> tuple[str, str]:
            assert list(body["error"]) == ["message", "type", "code"]
            return body["error"]["type"], body["error"]["code"]

        status, body, _ = await call(
            session, "POST", server.url + COMPLETIONS, json=completion, headers=auth("ifr_res_x")
        )
        assert status == 401
        assert reservation_error(body) == ("infernet_reservation_error", "invalid_key")
        status, body, _ = await call(
            session, "POST", server.url + COMPLETIONS, json=completion, headers=auth(other)
        )
        assert status == 400
        assert reservation_error(body) == ("infernet_reservation_error", "model_not_reserved")
        for state in ("ended", "upcoming", "cancelled"):
            server.set_reservation_state(other, state)  # type: ignore[arg-type]
            status, body, _ = await call(
                session, "GET", server.openai_base_url + "/models", headers=auth(other)
            )
            assert status == 403
            assert reservation_error(body) == ("infernet_reservation_error", f"reservation_{state}")
        server.set_reservation_state(other, "active")
        status, _, _ = await call(
            session, "GET", server.openai_base_url + "/models", headers=auth(other)
        )
        assert status == 200
        with pytest.raises(KeyError):
            server.set_reservation_state("ifr_res_unknown", "ended")
        # Keyed requests did not use the anonymous allowance (1/hour here).
        status, _, _ = await call(session, "POST", server.url + COMPLETIONS, json=completion)
        assert status == 200


async def test_http_error_faults_answer_in_each_surfaces_shape(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    server.inject(Fault.http_error(500, path="/v1"))
    status, body, _ = await call(session, "GET", server.openai_base_url + "/models")
    assert status == 500
    assert body == {
        "error": {"message": "Injected fault: HTTP 500", "type": "infernet_error", "code": 500}
    }
    server.inject(Fault.http_error(429, path=COMPLETIONS))
    status, body, headers = await call(
        session, "POST", server.url + COMPLETIONS, json={"model": MODEL, "messages": MESSAGES}
    )
    assert status == 429 and body["error"]["message"] == RATE_LIMITED
    assert "Retry-After" not in headers
    server.inject(Fault.http_error(429, path="/api/chat"))
    status, body, _ = await call(session, "POST", server.chat_url, json={"messages": MESSAGES})
    assert status == 429 and body["error"] == RATE_LIMITED and "resetAt" in body["detail"]
    server.inject(Fault.http_error(503, path="/api/chat", message="Overloaded"))
    status, body, _ = await call(session, "GET", f"{server.chat_url}/job_x/status")
    assert (status, body) == (503, {"error": "Overloaded"})
    server.inject(Fault.http_error(503, path="/api/v1"))
    status, body, _ = await call(
        session, "GET", server.base_url + "/models", headers={"Authorization": "Bearer x"}
    )
    assert status == 503 and body["error"] == "no_capacity" and body["error_message"]


async def test_records_tell_the_surfaces_apart(
    server: DevServer, session: aiohttp.ClientSession
) -> None:
    await openai_stream(session, server)
    job_id = (await submit_chat(session, server))["jobId"]
    await chat_stream(session, server, job_id)
    auth = {"Authorization": f"Bearer {server.token}"}
    async with session.post(
        server.base_url + "/jobs",
        json={"model": MODEL, "messages": MESSAGES, "stream": True},
        headers=auth,
    ) as response:
        await response.read()
    assert [s.surface for s in server.streams] == ["openai", "chat", "jobs"]
    assert [s.dialect for s in server.streams] == ["openai", "chat", "data"]
    paths = [r.path for r in server.requests]
    assert paths == [COMPLETIONS, "/api/chat", f"/api/chat/stream/{job_id}", "/api/v1/jobs"]
    assert all(r.status == 200 or r.status == 201 for r in server.requests)


# -- infernet-async serve --------------------------------------------------------------------------


def test_serve_parses_the_new_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--hosted", "--resale-key", "--anonymous-limit"):
        assert option in out
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--resale-key", "sk-nope=qwen2.5:14b"])
    assert exit_info.value.code == 2


async def test_serve_hosted_prints_the_three_surfaces(session: aiohttp.ClientSession) -> None:
    resale = f"ifr_res_cli={MODEL},mistral:7b"
    hosted = ("--hosted", "--resale-key", resale, "--anonymous-limit", "5")
    speed = ("--tokens-per-second", "1000", "--time-to-first-token", "0")
    async with serve_process("--port", "0", *hosted, *speed) as banner:
        text = "\n".join(banner)
        openai_line = next(line for line in banner if "OpenAI-compatible:" in line)
        chat_line = next(line for line in banner if "Playground chat:" in line)
        jobs_line = next(line for line in banner if "Jobs API:" in line)
        openai_url = openai_line.split()[1]
        assert openai_url.endswith("/v1") and chat_line.split()[2].endswith("/api/chat")
        assert jobs_line.split()[2].endswith("/api/v1") and "404" in jobs_line
        assert "5/hour" in openai_line and "hosted" in text
        key = {"Authorization": "Bearer ifr_res_cli"}
        status, body, _ = await call(session, "GET", openai_url + "/models", headers=key)
        assert status == 200 and [m["id"] for m in body["data"]] == ["mistral:7b", MODEL]
        status, _, _ = await call(session, "GET", jobs_line.split()[2] + "/models")
        assert status == 404
