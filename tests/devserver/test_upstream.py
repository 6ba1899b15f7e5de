"""The devserver relaying generation from an upstream model server (stand-ins on loopback)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from infernet_async.devserver import DevServer
from infernet_async.devserver._upstream import resolve_upstream
from tests.helpers.devserver import Api, texts

PIECES = ["Bonjour", ",", " le", " monde", "!"]


class StandIn:
    """An OpenAI-compatible and Ollama-compatible upstream that records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(
            {"path": request.path, "body": body, "auth": request.headers.get("Authorization")}
        )
        if self.fail_with is not None:
            return web.json_response({"error": {"message": "overloaded"}}, status=self.fail_with)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"role": "assistant"}}]}\r\n\r\n')
        for piece in PIECES:
            chunk = {"choices": [{"delta": {"content": piece}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def openai_models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "gpt-oss:20b"}, {"id": "qwen2.5:14b"}]})

    async def ollama_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "body": body})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for piece in PIECES:
            line = {
                "model": body["model"],
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
            await response.write(json.dumps(line).encode() + b"\n")
        await response.write(json.dumps({"done": True, "done_reason": "stop"}).encode() + b"\n")
        await response.write_eof()
        return response

    async def ollama_tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "llama3.2:3b"}]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.openai_chat)
        app.router.add_get("/v1/models", self.openai_models)
        app.router.add_post("/api/chat", self.ollama_chat)
        app.router.add_get("/api/tags", self.ollama_tags)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    await stand_in.start()
    yield stand_in
    assert stand_in.runner is not None
    await stand_in.runner.cleanup()


async def test_openai_compatible_upstream_is_relayed_token_by_token(upstream: StandIn) -> None:
    server = DevServer(upstream=upstream.url + "/v1", upstream_api_key="sk-test")
    async with server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        _, models, _ = await api.request("GET", "/models")
        assert [m["id"] for m in models["models"]] == ["gpt-oss:20b", "qwen2.5:14b"]
        response, events, _ = await api.read_stream(model="gpt-oss:20b", max_tokens=50)
        assert texts(events) == PIECES and events[-1].data == "[DONE]"
        job = await api.wait_job(response.headers["X-Infernet-Job-Id"])
    assert job["result"]["content"] == "Bonjour, le monde!"
    asked = upstream.requests[0]
    assert asked["path"] == "/v1/chat/completions" and asked["auth"] == "Bearer sk-test"
    assert asked["body"]["model"] == "gpt-oss:20b" and asked["body"]["stream"] is True
    assert asked["body"]["max_tokens"] == 50


async def test_ollama_upstream_is_relayed_and_meta_names_the_engine(upstream: StandIn) -> None:
    server = DevServer(upstream=upstream.url + "/api", dialect="typed")
    async with server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        _, events, _ = await api.read_stream(model="llama3.2:3b")
    assert texts(events) == PIECES
    assert events[1].json()["engine"] == "upstream-ollama"
    assert events[-1].event == "done" and events[-1].json()["text"] == "Bonjour, le monde!"
    assert upstream.requests[0]["body"]["options"]["num_predict"] == 512


async def test_upstream_max_tokens_cuts_the_relay(upstream: StandIn) -> None:
    async with DevServer(upstream=upstream.url) as server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        job = await api.wait_job((await api.submit(model="qwen2.5:14b", max_tokens=2))["id"])
    assert job["result"]["content"] == "Bonjour,"


async def test_upstream_error_fails_the_job_with_internal_error(upstream: StandIn) -> None:
    upstream.fail_with = 503
    async with DevServer(upstream=upstream.url) as server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        _, events, _ = await api.read_stream()
        error = events[-1].json()
        assert error["error"] == "internal_error" and "503" in error["message"]


async def test_unreachable_upstream_keeps_the_default_models_and_fails_jobs() -> None:
    server = DevServer(upstream="http://127.0.0.1:9/v1")  # the discard port: nothing listens
    async with server, aiohttp.ClientSession() as session:
        api = Api(session, server.base_url, server.token)
        _, models, _ = await api.request("GET", "/models")
        assert "qwen2.5:14b" in [m["id"] for m in models["models"]]
        job = await api.wait_job((await api.submit())["id"])
    assert job["status"] == "failed" and job["error"] == "internal_error"


@pytest.mark.parametrize(
    ("url", "kind", "chat"),
    [
        ("http://h:8000/v1", "openai", "http://h:8000/v1/chat/completions"),
        ("http://h:8000", "openai", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/chat/completions", "openai", "http://h:8000/v1/chat/completions"),
        ("http://h:11434", "ollama", "http://h:11434/api/chat"),
        ("http://h:9999/api", "ollama", "http://h:9999/api/chat"),
        ("http://h:9999/api/chat", "ollama", "http://h:9999/api/chat"),
        ("http://h:11434/v1", "openai", "http://h:11434/v1/chat/completions"),
    ],
)
def test_upstream_urls_resolve_to_chat_endpoints(url: str, kind: str, chat: str) -> None:
    assert resolve_upstream(url)[:2] == (kind, chat)
