"""Configuration and the transport: base URL and token resolution, job-id safety, headers,
redirects, caller-owned sessions, per-request timeouts and reading bodies with ``iter_any()``."""

from __future__ import annotations

import ssl
import warnings
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from infernet_async import APITimeoutError, InfernetClient, RetryPolicy, Timeouts
from infernet_async._config import DEFAULT_BASE_URL, Secret, resolve_base_url
from infernet_async._transport import job_path, validate_job_id
from infernet_async.devserver import DevServer
from tests.helpers.client import MODEL, MSG, client_for, data_events, raw_server, sse_handler

# -- base URL and token ----------------------------------------------------------------------------


def test_default_base_url_is_the_hosted_service_origin() -> None:
    assert InfernetClient().base_url == DEFAULT_BASE_URL == "https://infernetprotocol.com"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8080", ("http://127.0.0.1:8080", None)),
        ("http://127.0.0.1:8080/", ("http://127.0.0.1:8080", None)),
        # The documented API's root, as earlier versions took base_url: the same origin.
        ("https://infer.example.com/api/v1/", ("https://infer.example.com", "/api/v1")),
        ("https://example.com/proxy/i/api/v1", ("https://example.com/proxy/i", "/api/v1")),
        # The OpenAI-compatible root: the same origin, and a hint for the surface.
        ("https://infer.example.com/v1", ("https://infer.example.com", "/v1")),
        # Any other path is a mount prefix the surfaces' paths go under.
        ("https://example.com/proxy/infernet", ("https://example.com/proxy/infernet", None)),
    ],
)
def test_base_url_is_the_service_origin(given: str, expected: tuple[str, str | None]) -> None:
    assert resolve_base_url(given) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://example.com",
        "example.com/api/v1",
        "https://",
        "https://h/api/v1?x=1",
        "https://h/api/v1#frag",
        "https://user:pw@h/api/v1",
    ],
)
def test_malformed_base_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        resolve_base_url(bad)


def test_environment_supplies_url_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNET_BASE_URL", "https://self-hosted.example")
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", "env-token-canary")
    client = InfernetClient()
    assert client.base_url == "https://self-hosted.example"
    assert "token=<set>" in repr(client) and "canary" not in repr(client)
    assert InfernetClient("https://other.example", token="").base_url.startswith("https://other")


def test_secret_never_shows_itself() -> None:
    secret = Secret("canary-123")
    assert (
        "canary" not in repr(secret) and "canary" not in str(secret) and "canary" not in f"{secret}"
    )
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(secret)


def test_token_refused_over_plain_http_to_another_host() -> None:
    with pytest.raises(ValueError, match="plain http"):
        InfernetClient("http://infer.example.com", token="t")
    InfernetClient("http://infer.example.com", token="t", allow_insecure=True)
    InfernetClient("http://infer.example.com")  # no token, nothing to leak
    for host in ("127.0.0.1", "127.0.0.5", "localhost", "[::1]"):
        InfernetClient(f"http://{host}:8080", token="t")


def test_disabling_tls_verification_needs_allow_insecure() -> None:
    with pytest.raises(ValueError, match="allow_insecure"):
        InfernetClient(token="t", ssl=False)
    InfernetClient(token="t", ssl=False, allow_insecure=True)
    InfernetClient(token="t", ssl=ssl.create_default_context())


def test_authorization_header_cannot_be_smuggled_in() -> None:
    with pytest.raises(ValueError):
        InfernetClient(token="t", headers={"authorization": "Bearer x"})


# -- job ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good", ["job_9a3f2c1d", "3f1c9e1a-4c1b-4c0e-9a3b-6a1d2f7b8c9d", "job.v2:17", "J"]
)
def test_well_formed_job_ids_pass(good: str) -> None:
    assert validate_job_id(good) == good
    assert job_path(good, "/stream").endswith("/stream")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "..",
        "../models",
        "job/../../models",
        "a/b",
        "job?x=1",
        "job#frag",
        "job%2Fstream",
        "job%2e%2e",
        ".hidden",
        "job id",
        "job\n",
        "x" * 201,
        "j..b",
        None,
        7,
    ],
)
def test_job_ids_that_could_reach_another_path_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        validate_job_id(bad)


async def test_a_hostile_job_id_sends_no_request() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        return web.json_response({})

    async with raw_server(handler) as url, client_for(url) as client:
        for bad in ("../models", "job?status=failed", "job%2F..%2Fmodels"):
            with pytest.raises(ValueError):
                await client.get_job(bad)
            with pytest.raises(ValueError):
                client.stream_job(bad)
            with pytest.raises(ValueError):
                await client.wait_job(bad)
    assert seen == []


# -- headers and redirects -------------------------------------------------------------------------


async def test_headers_of_rest_and_stream_requests() -> None:
    seen: list[web.Request] = []
    handler = sse_handler(data_events("a"), seen=seen)
    async with raw_server(handler) as url, client_for(url, "tok-canary") as client:
        assert await client.complete(model=MODEL, messages=MSG) == "a"
    request = seen[0]
    assert request.headers["Authorization"] == "Bearer tok-canary"
    assert request.headers["Accept"] == "text/event-stream"
    assert request.headers["Accept-Encoding"] == "identity"
    assert request.headers["User-Agent"].startswith("infernet-async/")


async def test_same_origin_redirect_keeps_auth_other_origin_never_gets_it() -> None:
    other_seen: list[web.Request] = []

    async def other(request: web.Request) -> web.StreamResponse:
        other_seen.append(request)
        return web.json_response({"models": [{"id": "elsewhere"}]})

    async with raw_server(other) as other_url:

        async def home(request: web.Request) -> web.StreamResponse:
            if request.path == "/api/v1/models":
                raise web.HTTPFound("/api/v2/models")  # same origin
            if request.path == "/api/v2/models":
                raise web.HTTPTemporaryRedirect(other_url + "/api/v1/models")  # another origin
            return web.json_response({})

        async with raw_server(home) as url, client_for(url, "secret-canary") as client:
            models = await client.list_models()
    assert [m.id for m in models] == ["elsewhere"]
    assert len(other_seen) == 1
    assert "Authorization" not in other_seen[0].headers


async def test_too_many_redirects_is_an_api_error() -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.path)

    from infernet_async import APIError

    async with raw_server(loop) as url, client_for(url) as client:
        with pytest.raises(APIError, match="redirects"):
            await client.list_models()


# -- sessions and timeouts -------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=6) as srv:
        yield srv


async def test_caller_session_is_used_and_never_closed(server: DevServer) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client = InfernetClient(server.base_url, token=server.token, session=session)
        async with client:
            assert await client.complete(model=MODEL, messages=MSG)
        assert not session.closed
        async with session.get(server.url + "/api/v1/models") as resp:
            assert resp.status == 401  # still usable, and our token was not stored on it


async def test_caller_session_with_a_total_timeout_warns_and_is_overridden(
    server: DevServer,
) -> None:
    # A 0.3 s session total would cut this 0.6 s stream; per-request timeouts replace it.
    server.configure(tokens_per_second=20, answer_tokens=12)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        with pytest.warns(UserWarning, match="total"):
            client = InfernetClient(server.base_url, token=server.token, session=session)
        async with client:
            text = await client.complete(model=MODEL, messages=MSG, max_tokens=12)
    assert text


async def test_idle_read_timeout_applies_per_request_and_heartbeats_reset_it(
    server: DevServer,
) -> None:
    # Tokens 0.33 s apart, read timeout 0.2 s, heartbeats every 0.02 s: the pings keep it alive.
    server.configure(tokens_per_second=3, heartbeat_interval=0.02)
    timeouts = Timeouts(read=0.2, stall=5)
    client = client_for(server.base_url, server.token, timeouts=timeouts)
    async with client, client.stream(model=MODEL, messages=MSG, max_tokens=2) as stream:
        text = await stream.final_text()
    assert text and stream.finished


async def test_idle_read_timeout_fires_without_heartbeats(server: DevServer) -> None:
    server.configure(tokens_per_second=3, heartbeat_interval=None)
    timeouts = Timeouts(read=0.2, stall=5)
    client = client_for(server.base_url, server.token, timeouts=timeouts)
    async with client, client.stream(model=MODEL, messages=MSG, max_tokens=2) as stream:
        with pytest.raises(APITimeoutError) as info:
            await stream.final_text()
    assert info.value.phase == "read"
    assert info.value.partial_text == stream.text


# -- reading bodies --------------------------------------------------------------------------------


async def test_a_token_longer_than_aiohttps_line_limit_arrives_whole() -> None:
    # aiohttp's line iterator raises on lines over 128 KiB; we read with iter_any().
    big = "x" * (300 * 1024)
    async with (
        raw_server(sse_handler(data_events("a", big, "b"))) as url,
        client_for(url) as client,
    ):
        text = await client.complete(model=MODEL, messages=MSG)
    assert text == "a" + big + "b"


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
async def test_crlf_and_cr_only_streams(newline: str) -> None:
    # CR-only line endings defeat any LF line iterator; the SSE decoder handles every form.
    chunks = [c.replace(b"\n", newline.encode()) for c in data_events("Hel", "lo")]
    async with raw_server(sse_handler(chunks)) as url, client_for(url) as client:
        assert await client.complete(model=MODEL, messages=MSG) == "Hello"


async def test_devserver_cr_newlines_end_to_end() -> None:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, newline="\r") as srv:
        client = client_for(srv.base_url, srv.token)
        async with client, client.stream(model=MODEL, messages=MSG) as stream:
            tokens = [t async for t in stream]
    assert stream.finished and "".join(tokens) == stream.text


async def test_json_answer_to_a_stream_request_follows_the_jobs_stream() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        if request.method == "POST":
            return web.json_response({"id": "job_abc", "status": "pending"})
        return await sse_handler(data_events("ok"))(request)

    async with raw_server(handler) as url:
        client = client_for(url)
        async with client, client.stream(model=MODEL, messages=MSG) as stream:
            assert await stream.final_text() == "ok"
    assert stream.job_id == "job_abc"
    assert seen == ["POST /api/v1/jobs", "GET /api/v1/jobs/job_abc/stream"]


async def test_retry_policy_is_validated_and_timeouts_too() -> None:
    with pytest.raises(ValueError):
        Timeouts(stall=0)
    with pytest.raises(ValueError):
        InfernetClient(max_connections=0)
    assert RetryPolicy().max_retries == 2
    assert Timeouts().total is not None and Timeouts().total > 300  # a little over the job limit
