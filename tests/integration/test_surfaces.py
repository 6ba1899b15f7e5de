"""The three API surfaces against raw loopback servers that write the hosted routes' bytes.

The embedded control plane emulates all three (``test_surfaces_devserver.py``); here each test
controls every byte, for what the emulator cannot produce on purpose: a server that serves only
some surfaces, a ``done`` whose text says more than the tokens, a ``[DONE]`` with no finish chunk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from infernet_async import (
    AuthenticationError,
    BatchRequest,
    IncompleteStreamError,
    InfernetClient,
    NoCapacityError,
    NotSupportedError,
    PermissionDeniedError,
    RateLimitError,
    StreamError,
    SurfaceNotServedError,
)
from infernet_async.events import JobInfo, Log, Meta, Routing
from tests.helpers.client import MODEL, MSG, fast_retry

NOT_FOUND_PAGE = (
    b"<!DOCTYPE html><html><head><title>404: This page could not be found.</title></head>"
    b"<body><h1>404</h1><h2>This page could not be found.</h2></body></html>"
)
JOB_ID = "5b0c9e4a-8f4e-4b7e-9a59-3f7a1c2d9e10"
COMPLETION = "chatcmpl-abc123"


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def chat_stream(*tokens: str, done: str | None = None, end: bytes | None = None) -> list[bytes]:
    """The chat surface's stream as the hosted route writes it."""
    out = [f"event: job\ndata: {compact({'id': JOB_ID, 'status': 'running'})}\n\n".encode()]
    meta = {"provider_node_id": "node-7", "provider_name": "gpu-box", "model": MODEL}
    out.append(f"id: 1\nevent: meta\ndata: {compact(meta)}\n\n".encode())
    for n, token in enumerate(tokens, start=2):
        out.append(f"id: {n}\nevent: token\ndata: {compact({'text': token})}\n\n".encode())
    if end is not None:
        out.append(end)
    else:
        whole = "".join(tokens) if done is None else done
        payload = {"text": whole, "finished_at": "2026-12-06T12:00:00.000Z"}
        out.append(f"id: 99\nevent: done\ndata: {compact(payload)}\n\n".encode())
    return out


def openai_stream(*tokens: str, finish: bool = True, error: str | None = None) -> list[bytes]:
    """The OpenAI-compatible surface's stream as the hosted route writes it."""
    head = {"id": COMPLETION, "object": "chat.completion.chunk", "created": 1, "model": MODEL}

    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        return f"data: {compact({**head, 'choices': [choice]})}\n\n".encode()

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": t}) for t in tokens]
    if error is not None:
        out.append(f"data: {compact({**head, 'error': {'message': error}})}\n\n".encode())
    elif finish:
        out.append(chunk({}, "stop"))
    out.append(b"data: [DONE]\n\n")
    return out


@dataclass
class Hosted:
    """A server shaped like the hosted service: which surfaces it serves, what each writes."""

    surfaces: tuple[str, ...] = ("openai", "chat")
    chat_events: list[bytes] = field(default_factory=lambda: chat_stream("Paris", " is", "."))
    openai_events: list[bytes] = field(default_factory=lambda: openai_stream("Paris", "."))
    errors: dict[str, tuple[int, Any, dict[str, str]]] = field(default_factory=dict)
    status_body: dict[str, Any] = field(
        default_factory=lambda: {"id": JOB_ID, "status": "running", "model_name": MODEL}
    )
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.seen.append((request.method, path, request.headers.get("Authorization")))
        if request.can_read_body:
            raw = await request.read()
            self.bodies.append(json.loads(raw) if raw else None)
        if path in self.errors:
            status, body, headers = self.errors[path]
            return web.json_response(body, status=status, headers=headers, dumps=compact)
        surface = (
            "jobs"
            if path.startswith("/api/v1/")
            else "openai"
            if path.startswith("/v1/")
            else "chat"
            if path.startswith("/api/chat")
            else None
        )
        if surface not in self.surfaces:
            return web.Response(status=404, body=NOT_FOUND_PAGE, content_type="text/html")
        if path == "/v1/models":
            data = [{"id": MODEL, "object": "model", "created": 1, "owned_by": "infernet"}]
            return web.json_response({"object": "list", "data": data}, dumps=compact)
        if path == "/v1/chat/completions":
            return await self._stream(request, self.openai_events)
        if path == "/api/chat":
            body = {
                "jobId": JOB_ID,
                "status": "pending",
                "source": "p2p",
                "provider": {"id": "prov-1", "nodeId": "node-7", "name": "gpu-box"},
                "streamUrl": f"/api/chat/stream/{JOB_ID}",
            }
            return web.json_response(body, dumps=compact)
        if path.startswith("/api/chat/stream/"):
            return await self._stream(request, self.chat_events)
        if path.endswith("/status"):
            return web.json_response(self.status_body, dumps=compact)
        return web.Response(status=404, body=NOT_FOUND_PAGE, content_type="text/html")

    @staticmethod
    async def _stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(event)
        await resp.write_eof()
        return resp

    def paths(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.seen]


@asynccontextmanager
async def serving(hosted: Hosted) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hosted.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def client(origin: str, **kw: Any) -> InfernetClient:
    kw.setdefault("retry", fast_retry())
    return InfernetClient(origin, **kw)


# -- choosing the surface -------------------------------------------------------------------------


async def test_unset_api_finds_the_chat_surface_once_and_keeps_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hosted = Hosted()
    caplog.set_level(logging.DEBUG, logger="infernet_async")
    async with serving(hosted) as origin, client(origin, token="account-token") as c:
        assert c.api == "jobs" and not c.api_settled
        assert await c.complete(model=MODEL, messages=MSG) == "Paris is."
        assert c.api == "chat" and c.api_settled
        assert await c.complete(model=MODEL, messages=MSG) == "Paris is."
    assert hosted.paths() == [
        "POST /api/v1/jobs",  # one 404 page, which the hosted service does not rate-limit
        "POST /api/chat",
        f"GET /api/chat/stream/{JOB_ID}",
        "POST /api/chat",
        f"GET /api/chat/stream/{JOB_ID}",
    ]
    # The keyless chat routes never see the token; the documented API's route did.
    assert [auth for _, _, auth in hosted.seen] == ["Bearer account-token"] + [None] * 4
    assert "does not serve the documented jobs API" in caplog.text and "'chat'" in caplog.text


async def test_unset_api_with_a_resale_key_goes_to_the_openai_surface() -> None:
    hosted = Hosted()
    async with serving(hosted) as origin, client(origin, token="ifr_res_k1") as c:
        async with c.stream(model=MODEL, messages=MSG) as stream:
            assert [t async for t in stream] == ["Paris", "."]
        assert c.api == "openai" and stream.job_id == COMPLETION and stream.finished
    assert hosted.paths() == ["POST /api/v1/jobs", "POST /v1/chat/completions"]
    assert hosted.seen[1][2] == "Bearer ifr_res_k1"


async def test_a_base_url_ending_in_v1_starts_on_the_openai_surface() -> None:
    hosted = Hosted()
    async with serving(hosted) as origin, client(origin + "/v1") as c:
        assert c.api == "openai"
        assert [m.id for m in await c.list_models()] == [MODEL]
    assert hosted.paths() == ["GET /v1/models"]


async def test_unset_api_moves_on_for_json_requests_too() -> None:
    hosted = Hosted()
    async with serving(hosted) as origin, client(origin) as c:
        assert [m.id for m in await c.list_models()] == [MODEL]
        assert c.api == "chat"
    assert hosted.paths() == ["GET /api/v1/models", "GET /v1/models"]


async def test_an_explicit_api_never_moves_and_names_the_others() -> None:
    hosted = Hosted()
    async with serving(hosted) as origin, client(origin, api="jobs") as c:
        with pytest.raises(SurfaceNotServedError) as info:
            await c.complete(model=MODEL, messages=MSG)
    assert info.value.api == "jobs" and info.value.status == 404
    assert "does not serve the documented jobs API" in str(info.value)
    assert "api='openai' or api='chat'" in str(info.value)
    assert hosted.paths() == ["POST /api/v1/jobs"]


async def test_a_server_that_serves_no_surface_says_so() -> None:
    hosted = Hosted(surfaces=())
    async with serving(hosted) as origin, client(origin) as c:
        with pytest.raises(SurfaceNotServedError) as info:
            await c.list_models()
    assert "check base_url" in str(info.value)
    assert hosted.paths() == ["GET /api/v1/models", "GET /v1/models", "GET /v1/models"]


async def test_an_operation_the_fallback_cannot_do_says_why() -> None:
    hosted = Hosted(surfaces=("openai",))
    async with serving(hosted) as origin, client(origin, token="ifr_res_k") as c:
        with pytest.raises(SurfaceNotServedError) as info:
            await c.get_job("job_1")
    assert "does not serve the documented jobs API" in str(info.value)
    assert "OpenAI-compatible surface (/v1) has no job ids" in str(info.value)


def test_api_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNET_API", "chat")
    assert InfernetClient("http://127.0.0.1:1").api == "chat"
    assert InfernetClient("http://127.0.0.1:1", api="openai").api == "openai"
    monkeypatch.setenv("INFERNET_API", "auto")
    assert InfernetClient("http://127.0.0.1:1").api == "jobs"
    monkeypatch.setenv("INFERNET_API", "graphql")
    with pytest.raises(ValueError, match="INFERNET_API must be one of jobs, openai, chat"):
        InfernetClient("http://127.0.0.1:1")


# -- the chat surface -----------------------------------------------------------------------------


async def test_chat_stream_maps_its_typed_events() -> None:
    routing = b'id: 5\nevent: routing\ndata: {"engine":"rpc","peers":[]}\n\n'
    log = b'event: log\ndata: {"message":"loading layers"}\n\n'
    hosted = Hosted(chat_events=chat_stream("Pa", "ris", end=None))
    hosted.chat_events[2:2] = [routing, log, b": ping\n\n"]
    async with (
        serving(hosted) as origin,
        client(origin, api="chat") as c,
        c.stream(model=MODEL, messages=MSG, max_tokens=5, node_id="prov-1") as stream,
    ):
        events = [e async for e in stream.events()]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["JobInfo", "Meta", "Routing", "Log", "Token", "Token", "Done"]
    job, meta, route, line = events[:4]
    assert isinstance(job, JobInfo) and job.job_id == JOB_ID and job.id is None
    assert isinstance(meta, Meta) and meta.node_id == "node-7" and meta.id == "1"
    assert isinstance(route, Routing) and route.data["engine"] == "rpc"
    assert isinstance(line, Log) and line.message == "loading layers"
    assert stream.finished and stream.text == "Paris" and stream.job_id == JOB_ID
    assert stream.api == "chat"
    assert hosted.bodies[0] == {
        "messages": MSG,
        "modelName": MODEL,
        "maxTokens": 5,
        "providerId": "prov-1",
    }


async def test_chat_done_that_extends_the_tokens_completes_the_text() -> None:
    hosted = Hosted(chat_events=chat_stream("Paris", done="Paris is the capital."))
    async with (
        serving(hosted) as origin,
        client(origin, api="chat") as c,
        c.stream(model=MODEL, messages=MSG) as stream,
    ):
        tokens = [t async for t in stream]
    assert tokens == ["Paris", " is the capital."]
    assert stream.text == stream.done_text == "Paris is the capital." and stream.finished


async def test_chat_done_that_contradicts_the_tokens_keeps_what_was_seen() -> None:
    hosted = Hosted(chat_events=chat_stream("Paris", done="Lyon"))
    async with serving(hosted) as origin, client(origin, api="chat") as c:
        assert await c.complete(model=MODEL, messages=MSG) == "Paris"


async def test_chat_error_event_without_a_code_is_a_stream_error_with_the_partial_text() -> None:
    failure = b'id: 9\nevent: error\ndata: {"message":"provider crashed"}\n\n'
    hosted = Hosted(chat_events=chat_stream("Par", end=failure))
    async with (
        serving(hosted) as origin,
        client(origin, api="chat") as c,
        c.stream(model=MODEL, messages=MSG) as stream,
    ):
        with pytest.raises(StreamError) as info:
            [t async for t in stream]
    assert type(info.value) is StreamError and info.value.code is None
    assert info.value.partial_text == "Par" and str(info.value) == "provider crashed"
    assert not stream.finished


async def test_chat_stream_of_an_unknown_job_is_an_error_not_an_empty_answer() -> None:
    gone = compact({"message": "job not found", "jobId": JOB_ID})
    hosted = Hosted(chat_events=[f"event: error\ndata: {gone}\n\n".encode()])
    async with serving(hosted) as origin, client(origin, api="chat") as c:
        with pytest.raises(StreamError, match="job not found"):
            await c.stream_job(JOB_ID).final_text()


async def test_chat_stream_that_ends_without_done_is_incomplete() -> None:
    hosted = Hosted(chat_events=chat_stream("Par", end=b""))
    async with serving(hosted) as origin, client(origin, api="chat") as c:
        with pytest.raises(IncompleteStreamError) as info:
            await c.complete(model=MODEL, messages=MSG)
    assert info.value.partial_text == "Par"


async def test_chat_jobs_submit_status_and_wait() -> None:
    hosted = Hosted()
    async with serving(hosted) as origin, client(origin, api="chat", token="tok") as c:
        job = await c.submit(model=MODEL, messages=MSG, min_trust_tier="verified")
        assert (job.id, job.status, job.model, job.node_id) == (JOB_ID, "pending", MODEL, "node-7")
        assert hosted.bodies[0]["minTrustTier"] == "verified"
        running = await c.get_job(JOB_ID)
        assert running.status == "running" and running.model == MODEL
        hosted.status_body = {
            "id": JOB_ID,
            "status": "failed",
            "error": "expired: idle for an hour",
            "latest_error_message": None,
        }
        failed = await c.get_job(JOB_ID)
        assert failed.error == "timeout" and failed.error_message == "expired: idle for an hour"
        with pytest.raises(NotSupportedError, match="chat surface"):
            await c.list_jobs()
    assert all(auth is None for _, _, auth in hosted.seen)
    assert hosted.paths()[1:] == [f"GET /api/chat/{JOB_ID}/status"] * 2


async def test_chat_refuses_what_it_would_ignore() -> None:
    async with client("http://127.0.0.1:1", api="chat") as c:
        with pytest.raises(NotSupportedError, match="has no top_p") as info:
            c.stream(model=MODEL, messages=MSG, top_p=0.5)
        assert info.value.api == "chat" and isinstance(info.value, ValueError)
        with pytest.raises(NotSupportedError, match="'seed'"):
            c.stream(model=MODEL, messages=MSG, seed=3)
        with pytest.raises(ValueError, match="min_trust_tier must be one of"):
            c.stream(model=MODEL, messages=MSG, min_trust_tier="gold")


# -- the OpenAI-compatible surface ----------------------------------------------------------------


async def test_openai_stream_is_exact_and_finishes_only_after_the_finish_chunk() -> None:
    hosted = Hosted(openai_events=openai_stream("Pa", "ris", " \u2028é😀", "."))
    async with (
        serving(hosted) as origin,
        client(origin, api="openai", token="ifr_res_k") as c,
        c.stream(model=MODEL, messages=MSG, temperature=0.2) as stream,
    ):
        tokens = [t async for t in stream]
    assert tokens == ["Pa", "ris", " \u2028é😀", "."] and stream.finished
    assert stream.job_id == COMPLETION and stream.terminal_reason == "done"
    assert hosted.bodies[0] == {"model": MODEL, "messages": MSG, "temperature": 0.2, "stream": True}
    assert hosted.seen[0][2] == "Bearer ifr_res_k"


async def test_openai_error_chunk_before_done_is_an_error_with_the_partial_text() -> None:
    hosted = Hosted(openai_events=openai_stream("Par", error="engine failed"))
    async with (
        serving(hosted) as origin,
        client(origin, api="openai") as c,
        c.stream(model=MODEL, messages=MSG) as stream,
    ):
        with pytest.raises(StreamError) as info:
            [t async for t in stream]
    assert info.value.partial_text == "Par" and "engine failed" in str(info.value)
    assert not stream.finished


async def test_openai_done_without_a_finish_chunk_is_incomplete() -> None:
    hosted = Hosted(openai_events=openai_stream("Par", finish=False))
    async with serving(hosted) as origin, client(origin, api="openai") as c:
        with pytest.raises(IncompleteStreamError) as info:
            await c.complete(model=MODEL, messages=MSG)
    assert info.value.partial_text == "Par"


async def test_openai_has_no_job_ids_and_refuses_what_it_would_ignore() -> None:
    async with client("http://127.0.0.1:1", api="openai") as c:
        for call in (
            lambda: c.submit(model=MODEL, messages=MSG),
            lambda: c.get_job("job_1"),
            lambda: c.wait_job("job_1"),
            lambda: c.list_jobs(),
        ):
            with pytest.raises(NotSupportedError, match="OpenAI-compatible surface"):
                await call()
        with pytest.raises(NotSupportedError, match="has no job ids to stream"):
            c.stream_job("job_1")
        with pytest.raises(NotSupportedError, match="ignores top_p"):
            c.stream(model=MODEL, messages=MSG, top_p=0.9)
        with pytest.raises(NotSupportedError, match="cannot pin a node"):
            c.stream(model=MODEL, messages=MSG, node_id="n1")


async def test_jobs_refuses_min_trust_tier() -> None:
    async with client("http://127.0.0.1:1", api="jobs") as c:
        with pytest.raises(NotSupportedError, match="no min_trust_tier"):
            c.stream(model=MODEL, messages=MSG, min_trust_tier="public")


# -- errors from every body shape -----------------------------------------------------------------


async def test_openai_503_names_the_available_models() -> None:
    body = {
        "error": {
            "message": 'No node serves "gpt-9". Available: qwen2.5:14b',
            "type": "infernet_error",
            "code": 503,
            "available_models": [MODEL],
        }
    }
    hosted = Hosted(errors={"/v1/chat/completions": (503, body, {})})
    async with serving(hosted) as origin, client(origin, api="openai") as c:
        with pytest.raises(NoCapacityError) as info:
            await c.complete(model="gpt-9", messages=MSG)
    assert info.value.available_models == [MODEL] and info.value.code == "no_capacity"
    assert str(info.value) == '[503 no_capacity] No node serves "gpt-9". Available: qwen2.5:14b'
    # No job was created: the retry policy applies (two retries, then the error).
    assert hosted.paths() == ["POST /v1/chat/completions"] * 3


async def test_chat_503_and_429_read_the_sentence_and_reset_time() -> None:
    no_node = {"error": 'No live provider serves "m"', "detail": {"hint": "try qwen2.5:14b"}}
    hosted = Hosted(errors={"/api/chat": (503, no_node, {})})
    async with serving(hosted) as origin, client(origin, api="chat") as c:
        with pytest.raises(NoCapacityError) as info:
            await c.submit(model="m", messages=MSG)
        assert str(info.value) == '[503 no_capacity] No live provider serves "m" (try qwen2.5:14b)'
        assert info.value.available_models == []
        limited = {
            "error": "Rate limit exceeded — try again later",
            "detail": {"resetAt": "2999-01-01T00:00:00.000Z"},
        }
        hosted.errors["/api/chat"] = (429, limited, {})
        with pytest.raises(RateLimitError) as rate:
            await c.submit(model=MODEL, messages=MSG)
    assert str(rate.value) == "[429] Rate limit exceeded — try again later"
    assert rate.value.retry_after is not None and rate.value.retry_after > 3600


async def test_resale_key_errors_are_typed() -> None:
    def reservation(code: str, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "infernet_reservation_error", "code": code}}

    hosted = Hosted()
    path = "/v1/chat/completions"
    async with serving(hosted) as origin, client(origin, api="openai", token="ifr_res_x") as c:
        hosted.errors[path] = (401, reservation("invalid_key", "Unknown key"), {})
        with pytest.raises(AuthenticationError) as auth:
            await c.complete(model=MODEL, messages=MSG)
        assert auth.value.code == "invalid_key"
        assert str(auth.value) == "[401 invalid_key] Unknown key"
        hosted.errors[path] = (403, reservation("reservation_ended", "Reservation ended"), {})
        with pytest.raises(PermissionDeniedError) as ended:
            await c.complete(model=MODEL, messages=MSG)
        assert ended.value.code == "reservation_ended"
        headers = {
            "Retry-After": "120",
            "X-Infernet-Limit-Type": "rps",
            "X-Infernet-Limit-Scope": "key",
        }
        hosted.errors[path] = (429, reservation("rate_limited", "Too many requests"), headers)
        with pytest.raises(RateLimitError) as rate:
            await c.complete(model=MODEL, messages=MSG)
    assert (rate.value.limit_type, rate.value.limit_scope) == ("rps", "key")
    assert rate.value.retry_after == 120


async def test_a_200_error_body_is_no_empty_list() -> None:
    hosted = Hosted(surfaces=("jobs",))
    hosted.errors["/api/v1/models"] = (200, {"error": "internal_error"}, {})
    async with serving(hosted) as origin, client(origin, api="jobs") as c:
        with pytest.raises(Exception, match="wrong shape: models"):
            await c.list_models()


# -- rate limits the fan-out learns ---------------------------------------------------------------


def anonymous_429() -> tuple[int, Any, dict[str, str]]:
    message = "Rate limit exceeded — try again later"
    return 429, {"error": {"message": message, "type": "infernet_error", "code": 429}}, {}


async def test_a_quiet_openai_429_is_the_anonymous_window_not_a_retry_storm() -> None:
    hosted = Hosted(errors={"/v1/chat/completions": anonymous_429()})
    async with serving(hosted) as origin, client(origin, api="openai") as c:
        with pytest.raises(RateLimitError) as info:
            await c.complete(model=MODEL, messages=MSG)
    assert info.value.retry_after == 3600 and "window for this route is 3600 s" in str(info.value)
    assert hosted.paths() == ["POST /v1/chat/completions"]  # not retried into the wall


@pytest.mark.parametrize("api", ["openai", "chat"])
async def test_a_fan_out_against_a_spent_anonymous_tier_stops_sending(api: str) -> None:
    chat_429 = (
        429,
        {
            "error": "Rate limit exceeded — try again later",
            "detail": {"resetAt": "2999-01-01T00:00:00.000Z"},
        },
        {},
    )
    path = "/v1/chat/completions" if api == "openai" else "/api/chat"
    hosted = Hosted(errors={path: anonymous_429() if api == "openai" else chat_429})
    requests = [BatchRequest(model=MODEL, prompt=f"q{n}") for n in range(12)]
    async with serving(hosted) as origin, client(origin, api=api) as c:
        outcomes = await c.gather(requests, concurrency=2)
    assert [o.status for o in outcomes] == ["error"] * 12
    assert all(o.error is not None and o.error.type == "RateLimitError" for o in outcomes)
    refused = [
        o for o in outcomes if o.error is not None and "rate limited until" in o.error.message
    ]
    assert len(refused) >= 10  # the rest were never sent: the limiter says until when
    assert len(hosted.seen) <= 2  # at most the two in flight as the first 429 came back
