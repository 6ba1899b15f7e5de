"""Security promises of SECURITY.md, one test (or a few) each.

- the bearer token never appears in a repr, str, log record, exception or formatted traceback
  (canary);
- ``Authorization`` never reaches another origin on a redirect (two loopback servers);
- a token is refused over plain http:// to a non-loopback host unless allowed, before any
  connection;
- job ids are validated and quoted before they go into a URL (the path the server saw is asserted);
- TLS verification is on by default; a custom ``ssl.SSLContext`` can be passed (trustme CA);
- the embedded control plane compares tokens in constant time, limits request bodies, and keeps each
  token's jobs to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import ssl
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from infernet_async import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InfernetClient,
    InfernetError,
    InsecureTransportError,
    NotFoundError,
)
from infernet_async._config import RetryPolicy, Secret, Timeouts
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import raw_server

trustme = pytest.importorskip("trustme")

CANARY = "canary-7f3a9c1e-do-not-log-me"
OTHER_CANARY = "canary-0b5d2e8f-wrong-token"
MODEL = "qwen2.5:14b"
MESSAGES = [{"role": "user", "content": "hi"}]
BOUND = 10.0
FAST = Timeouts(connect=2.0, read=2.0, stall=2.0, total=10.0)
NO_RETRY = RetryPolicy(max_retries=0)


def fast_dev(**options: Any) -> DevServer:
    options.setdefault("tokens", [CANARY])
    return DevServer(tokens_per_second=5000, time_to_first_token=0, answer_tokens=6, **options)


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Run ``app`` on a loopback port; yields its origin."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# --- The token never shows ------------------------------------------------------------------------


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Every way an exception is commonly shown: str, repr, attributes, and the formatted traceback
    with its whole cause/context chain."""
    yield "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield str(e)
        yield repr(e)
        yield repr(e.args)
        yield repr(getattr(e, "__dict__", {}))
        stack.extend([e.__cause__, e.__context__])


def assert_no_canary(texts: Iterator[str] | list[str], *canaries: str) -> None:
    for text in texts:
        for canary in canaries or (CANARY,):
            assert canary not in text


def test_token_not_in_repr_or_str_of_client_secret_or_config() -> None:
    client = InfernetClient("https://infernet.example/api/v1", token=CANARY)
    secret = Secret(CANARY)
    assert_no_canary([repr(client), str(client), repr(secret), str(secret), f"{secret}"])
    assert secret.get() == CANARY
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(secret)


def test_token_from_the_environment_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", CANARY)
    client = InfernetClient("https://infernet.example/api/v1")
    assert_no_canary([repr(client), str(client), repr(vars(client))])


def walk_strings(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[str]:
    """Every string reachable from ``obj`` through our own objects, stopping at ``Secret``."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6 or isinstance(obj, Secret):
        return
    seen.add(id(obj))
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk_strings(k, depth + 1, seen)
            yield from walk_strings(v, depth + 1, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from walk_strings(v, depth + 1, seen)
    elif type(obj).__module__.startswith("infernet_async"):
        names = list(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            names.extend(getattr(cls, "__slots__", ()))
        for name in names:
            with contextlib.suppress(AttributeError):
                yield from walk_strings(getattr(obj, name), depth + 1, seen)


async def test_token_held_only_inside_secret_while_streaming() -> None:
    async with (
        asyncio.timeout(BOUND),
        fast_dev() as server,
        InfernetClient(server.base_url, token=CANARY, timeouts=FAST) as client,
    ):
        stream = client.stream(model=MODEL, messages=MESSAGES)
        async with stream:
            async for _ in stream:
                assert_no_canary(walk_strings(client))
                assert_no_canary(walk_strings(stream))
                assert_no_canary([repr(stream), str(stream)])


async def collect_failures(server: DevServer, closed_port: int) -> list[BaseException]:
    """Make every kind of request fail once, with a canary token; return the errors raised."""
    errors: list[BaseException] = []

    async def expect(call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except InfernetError as exc:
            errors.append(exc)
        else:
            raise AssertionError("the call was expected to fail")

    def client(url: str = server.base_url, token: str = CANARY, **kw: Any) -> InfernetClient:
        kw.setdefault("retry", NO_RETRY)
        kw.setdefault("timeouts", FAST)
        return InfernetClient(url, token=token, **kw)

    async def read(c: InfernetClient, **kw: Any) -> None:
        async with c.stream(model=MODEL, messages=MESSAGES, **kw) as s:
            async for _ in s:
                pass

    async with client(token=OTHER_CANARY) as c:  # 401: the wrong token is a canary too
        await expect(c.list_models)
        await expect(lambda: read(c))
    async with client(f"http://127.0.0.1:{closed_port}/api/v1") as c:  # connection refused
        await expect(c.list_models)
        await expect(lambda: read(c))
    async with client() as c:
        server.inject(Fault.drop_node(after_tokens=2))
        await expect(lambda: read(c))  # NodeDisconnectedError mid-stream
        server.inject(Fault.disconnect(after_tokens=1, abort=True))
        await expect(lambda: read(c))  # IncompleteStreamError
        server.inject(Fault.http_error(500))
        await expect(lambda: c.submit(model=MODEL, messages=MESSAGES))
        await expect(lambda: c.get_job("job_does_not_exist"))
        await expect(lambda: c.submit(model="no-such-model", messages=MESSAGES))
    async with client(timeouts=Timeouts(read=0.1, total=5)) as c:
        server.inject(Fault.stall(after_tokens=1, seconds=5))
        await expect(lambda: read(c))  # APITimeoutError
    # Retries log at INFO: a 429 and a 503 retried once each, with no real waiting.
    async with client(retry=RetryPolicy(max_retries=1, backoff_base=0, sleep=no_sleep)) as c:
        server.inject(Fault.http_error(429, retry_after=0), times=2)
        await expect(c.list_models)
        server.inject(Fault.http_error(503), times=2)
        await expect(c.list_models)
    return errors


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_token_never_in_logs_exceptions_or_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: ours, aiohttp's and asyncio's records
    async with asyncio.timeout(BOUND * 3), fast_dev() as server:
        errors = await collect_failures(server, closed_port())
    kinds = {type(e).__name__ for e in errors}
    assert {
        "AuthenticationError",
        "APIConnectionError",
        "NodeDisconnectedError",
        "IncompleteStreamError",
        "InternalServerError",
        "NotFoundError",
        "ModelNotFoundError",
        "APITimeoutError",
        "RateLimitError",
        "NoCapacityError",
    } <= kinds
    for exc in errors:
        assert_no_canary(exception_texts(exc), CANARY, OTHER_CANARY)
    assert caplog.records, "nothing was logged: the log check would prove nothing"
    assert any(r.name.startswith("infernet_async") for r in caplog.records)
    for record in caplog.records:
        assert_no_canary(
            [record.getMessage(), repr(record.args), repr(record.__dict__)], CANARY, OTHER_CANARY
        )
    assert_no_canary([caplog.text], CANARY, OTHER_CANARY)


def test_unclosed_client_warning_does_not_show_the_token() -> None:
    client = InfernetClient("https://infernet.example/api/v1", token=CANARY)
    client.stream(model=MODEL, messages=MESSAGES)  # opens the client (no request is sent)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client.__del__()
    assert caught and all(CANARY not in str(w.message) for w in caught)
    client._state = type(client._state).CLOSED  # the real finalizer must not warn again


def test_token_with_a_line_break_is_refused() -> None:
    # A token with CR/LF would let whoever supplies it inject headers into every request.
    for bad in (CANARY + "\r\nX-Injected: 1", CANARY + "\nX-Injected: 1", "a\x00b", "a\rb"):
        with pytest.raises(ValueError) as info:
            InfernetClient("https://infernet.example/api/v1", token=bad)
        assert_no_canary(exception_texts(info.value))


@pytest.mark.parametrize(
    "headers",
    [{"X-Trace": "a\r\nX-Injected: 1"}, {"X-Trace\r\nX-Injected": "1"}, {"X-Trace": "a\x00"}],
)
def test_extra_headers_with_line_breaks_are_refused_at_construction(
    headers: dict[str, str],
) -> None:
    with pytest.raises(ValueError, match="line break"):
        InfernetClient("https://infernet.example/api/v1", token=CANARY, headers=headers)


@pytest.mark.parametrize(
    "url",
    [
        CANARY,  # InfernetClient(token): the token where the URL goes
        f"ftp://user:{CANARY}@infernet.example/x",
        f"https://user:{CANARY}@infernet.example/api/v1",
        f"https://infernet.example/api/v1?token={CANARY}",
        f"https://infernet.example/api/v1#{CANARY}",
    ],
)
def test_a_bad_base_url_is_refused_without_echoing_it(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError) as info:
        InfernetClient(url)
    assert_no_canary(exception_texts(info.value))
    monkeypatch.setenv("INFERNET_BASE_URL", url)
    with pytest.raises(ValueError) as info:
        InfernetClient()
    assert_no_canary(exception_texts(info.value))


def test_authorization_header_cannot_be_smuggled_through_headers() -> None:
    with pytest.raises(ValueError):
        InfernetClient(
            "https://infernet.example/api/v1", token=CANARY, headers={"authorization": "Bearer x"}
        )


# --- Redirects never carry the token to another origin --------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []

    def record(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path, request.headers.get("Authorization")))


def target_app(rec: Recorder) -> web.Application:
    """The server a redirect points to: answers like the API, records what it was sent."""

    async def models(request: web.Request) -> web.Response:
        rec.record(request)
        return web.json_response({"models": [{"id": MODEL, "nodes": 1}]})

    async def job(request: web.Request) -> web.Response:
        rec.record(request)
        return web.json_response(
            {"id": request.match_info["id"], "status": "pending", "model": MODEL}
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        rec.record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"text": "moved"}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/models", models)
    app.router.add_get("/api/v1/jobs/{id}", job)
    # Any method: a 301/302/303 turns the POST into a GET, which must still reach here without a
    # token.
    app.router.add_route("*", "/api/v1/jobs", stream)
    app.router.add_get("/api/v1/jobs/{id}/stream", stream)
    return app


def redirecting_app(rec: Recorder, status: int, target: Callable[[], str]) -> web.Application:
    async def redirect(request: web.Request) -> web.Response:
        rec.record(request)
        return web.Response(status=status, headers={"Location": target() + request.path_qs})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


async def exercise(client: InfernetClient) -> None:
    assert [m.id for m in await client.list_models()] == [MODEL]
    assert (await client.get_job("job_1")).id == "job_1"
    async with client.stream(model=MODEL, messages=MESSAGES) as s:
        assert [t async for t in s] == ["moved"]
    async with client.stream_job("job_1") as s:
        assert [t async for t in s] == ["moved"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_to_another_origin_drops_authorization(status: int) -> None:
    first, second = Recorder(), Recorder()
    async with (
        asyncio.timeout(BOUND),
        serve(target_app(second)) as origin_b,
        serve(redirecting_app(first, status, lambda: origin_b)) as origin_a,
        InfernetClient(origin_a, token=CANARY, timeouts=FAST, retry=NO_RETRY) as c,
    ):
        await exercise(c)
    assert first.requests and all(auth == f"Bearer {CANARY}" for _, _, auth in first.requests)
    assert len(second.requests) == 4
    assert [auth for _, _, auth in second.requests] == [None] * 4


async def test_redirect_to_the_same_server_under_another_host_name_drops_authorization() -> None:
    # Same socket, different origin (localhost vs 127.0.0.1): the origin is scheme, host and port.
    rec = Recorder()
    app = target_app(rec)
    port = 0

    async def bounce(request: web.Request) -> web.Response:
        rec.record(request)
        raise web.HTTPTemporaryRedirect(f"http://localhost:{port}/api/v1/models")

    app.router.add_get("/redirect-me/api/v1/models", bounce)
    async with asyncio.timeout(BOUND), serve(app) as origin:
        port = int(origin.rsplit(":", 1)[1])
        async with InfernetClient(
            origin + "/redirect-me", token=CANARY, timeouts=FAST, retry=NO_RETRY
        ) as c:
            assert [m.id for m in await c.list_models()] == [MODEL]
    assert rec.requests == [
        ("GET", "/redirect-me/api/v1/models", f"Bearer {CANARY}"),
        ("GET", "/api/v1/models", None),
    ]


async def test_same_origin_redirect_keeps_authorization() -> None:
    # The control check: the token is not dropped on every redirect, only on cross-origin ones.
    rec = Recorder()
    app = target_app(rec)

    async def bounce(request: web.Request) -> web.Response:
        rec.record(request)
        raise web.HTTPTemporaryRedirect("/api/v1/models")

    app.router.add_get("/old/api/v1/models", bounce)
    async with (
        asyncio.timeout(BOUND),
        serve(app) as origin,
        InfernetClient(origin + "/old", token=CANARY, timeouts=FAST) as c,
    ):
        await c.list_models()
    assert [auth for _, _, auth in rec.requests] == [f"Bearer {CANARY}"] * 2


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "unix:///var/run/docker.sock",
        "http://[::1",
        "loop",
    ],
)
async def test_hostile_redirects_are_typed_errors_and_bounded(location: str) -> None:
    rec = Recorder()

    async def bounce(request: web.Request) -> web.Response:
        rec.record(request)
        target = request.path if location == "loop" else location
        return web.Response(status=302, headers={"Location": target})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bounce)
    async with (
        asyncio.timeout(BOUND),
        serve(app) as origin,
        InfernetClient(origin, token=CANARY, timeouts=FAST, retry=NO_RETRY) as c,
    ):
        with pytest.raises(InfernetError) as info:
            await c.list_models()
    assert 1 <= len(rec.requests) <= 6  # a redirect loop is cut off
    assert_no_canary(exception_texts(info.value))


# --- No token over plain http to another host -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://infernet.invalid/api/v1",
        "http://10.0.0.8:8080",
        "http://0.0.0.0:8080",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "http://2130706433",
        "HTTP://INFERNET.INVALID",
    ],
)
def test_token_over_plain_http_to_another_host_is_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="http"):
        InfernetClient(url, token=CANARY)
    monkeypatch.setenv("INFERNET_BASE_URL", url)
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", CANARY)
    with pytest.raises(ValueError) as info:
        InfernetClient()
    assert_no_canary(exception_texts(info.value))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "http://127.8.9.10:9"]
)
def test_token_over_plain_http_to_loopback_is_allowed(url: str) -> None:
    InfernetClient(url, token=CANARY)


def test_the_plain_http_refusal_is_a_value_error_of_its_own_class() -> None:
    # Its own class, so the CLI can name its own flag; a ValueError with the same text for
    # library users.
    with pytest.raises(InsecureTransportError) as info:
        InfernetClient("http://infernet.invalid/api/v1", token=CANARY)
    assert isinstance(info.value, ValueError)
    assert info.value.host == "infernet.invalid"
    assert str(info.value) == (
        "refusing to send the bearer token over plain http:// to infernet.invalid; "
        "use https://, or pass allow_insecure=True if this network is trusted"
    )
    # The other allow_insecure refusal is about TLS, not plain http://: a plain ValueError.
    with pytest.raises(ValueError) as tls:
        InfernetClient("https://infernet.example/api/v1", token=CANARY, ssl=False)
    assert not isinstance(tls.value, InsecureTransportError)


def test_plain_http_without_a_token_is_allowed() -> None:
    InfernetClient("http://infernet.invalid/api/v1")


async def test_allow_insecure_is_the_explicit_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []
    loop = asyncio.get_running_loop()

    async def no_network(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[:2])
        raise OSError("no network in this test")

    monkeypatch.setattr(loop, "getaddrinfo", no_network)
    monkeypatch.setattr(loop, "create_connection", no_network)
    # Refused before anything touches the network.
    with pytest.raises(ValueError):
        InfernetClient("http://infernet.invalid/api/v1", token=CANARY)
    assert attempts == []
    # Allowed when asked for: the request then really tries to connect.
    async with InfernetClient(
        "http://infernet.invalid/api/v1",
        token=CANARY,
        allow_insecure=True,
        timeouts=FAST,
        retry=NO_RETRY,
    ) as c:
        with pytest.raises(APIConnectionError) as info:
            await c.list_models()
    assert attempts
    assert_no_canary(exception_texts(info.value))


def test_disabling_tls_verification_needs_allow_insecure() -> None:
    with pytest.raises(ValueError):
        InfernetClient("https://infernet.example/api/v1", token=CANARY, ssl=False)
    InfernetClient("https://infernet.example/api/v1", token=CANARY, ssl=False, allow_insecure=True)


# --- Job ids cannot reach another path ------------------------------------------------------------


HOSTILE_IDS = [
    "../models",
    "..",
    ".",
    "job_1/../../models",
    "job_1/..%2F..%2Fmodels",
    "job_1?status=completed",
    "job_1#fragment",
    "job_1%2Fstream",
    "job_1%2F..%2F..%2Fmodels",
    "%2e%2e",
    "a/b",
    "",
    " ",
    "job_1 ",
    "job_1\r\nX-Injected: 1",
    "job_1\x00",
    "job_1;admin=1",
    "job_1\\..\\models",
    "ｊｏｂ＿１",
    "job_" + "1" * 500,
]


@contextlib.asynccontextmanager
async def path_recorder() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def any_path(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"error": "not_found", "error_message": "no"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    async with serve(app) as origin:
        yield origin, seen


@pytest.mark.parametrize("job_id", HOSTILE_IDS, ids=repr)
async def test_hostile_job_ids_never_reach_another_path(job_id: str) -> None:
    async with (
        asyncio.timeout(BOUND),
        path_recorder() as (origin, seen),
        InfernetClient(origin, token=CANARY, timeouts=FAST, retry=NO_RETRY) as c,
    ):

        async def stream_it() -> None:
            async with c.stream_job(job_id) as s:
                async for _ in s:
                    pass

        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: c.get_job(job_id),
            lambda: c.wait_job(job_id, timeout=1),
            stream_it,
        ]
        for call in calls:
            with pytest.raises((ValueError, InfernetError)):
                await call()
    # Either refused before sending (nothing seen), or sent as ONE quoted path segment.
    quoted = "/api/v1/jobs/" + quote(job_id, safe="")
    for path in seen:
        assert path in (quoted, quoted + "/stream"), path


@pytest.mark.parametrize("where", ["header", "job-event"])
async def test_a_hostile_job_id_from_the_server_never_becomes_a_request(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def jobs(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.raw_path}")
        headers = {"Content-Type": "text/event-stream"}
        if where == "header":
            headers["X-Infernet-Job-Id"] = "../models"
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        if where == "job-event":
            await resp.write(b'event: job\ndata: {"id": "../models", "status": "pending"}\n\n')
        await resp.write(b'data: {"text": "partial"}\n\n')  # then EOF without [DONE]
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", jobs)
    async with (
        asyncio.timeout(BOUND),
        serve(app) as origin,
        InfernetClient(origin, token=CANARY, timeouts=FAST, retry=NO_RETRY) as c,
    ):
        # reconnect=True would follow the job id after the drop: it must not use this one.
        stream = c.stream(model=MODEL, messages=MESSAGES, reconnect=True)
        with pytest.raises(InfernetError):
            async with stream:
                async for _ in stream:
                    pass
    assert stream.text == "partial"
    assert stream.job_id is None
    assert seen == ["POST /api/v1/jobs"]


async def test_a_valid_job_id_goes_into_the_path_as_is() -> None:
    async with (
        asyncio.timeout(BOUND),
        path_recorder() as (origin, seen),
        InfernetClient(origin, token=CANARY, timeouts=FAST, retry=NO_RETRY) as c,
    ):
        with pytest.raises(NotFoundError):
            await c.get_job("job_9a3f2c1d")
    assert seen == ["/api/v1/jobs/job_9a3f2c1d"]


async def test_list_jobs_parameters_are_query_encoded() -> None:
    async with (
        asyncio.timeout(BOUND),
        path_recorder() as (origin, seen),
        InfernetClient(origin, token=CANARY, timeouts=FAST, retry=NO_RETRY) as c,
    ):
        with pytest.raises((ValueError, InfernetError)):
            await c.list_jobs(status="completed&limit=1000#x")
    for path in seen:
        assert path.startswith("/api/v1/jobs?")
        assert "&limit=1000" not in path and "#" not in path


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


def tls_app(rec: Recorder) -> web.Application:
    return target_app(rec)


def server_context(ca: Any, *hosts: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(ctx)
    return ctx


def trusting_context(ca: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_tls_verification_is_on_by_default(ca: Any) -> None:
    rec = Recorder()
    async with (
        asyncio.timeout(BOUND),
        serve(tls_app(rec), ssl_context=server_context(ca, "127.0.0.1")) as origin,
        InfernetClient(origin, token=CANARY, timeouts=FAST, retry=NO_RETRY) as c,
    ):
        with pytest.raises(APIConnectionError) as info:
            await c.list_models()
    assert "certificate" in str(info.value).lower()
    assert rec.requests == []  # the handshake failed: no request, so no token, was sent
    assert_no_canary(exception_texts(info.value))


async def test_custom_ssl_context_is_used(ca: Any) -> None:
    rec = Recorder()
    async with (
        asyncio.timeout(BOUND),
        serve(tls_app(rec), ssl_context=server_context(ca, "127.0.0.1")) as origin,
        InfernetClient(
            origin, token=CANARY, timeouts=FAST, retry=NO_RETRY, ssl=trusting_context(ca)
        ) as c,
    ):
        await exercise(c)
    assert [auth for _, _, auth in rec.requests] == [f"Bearer {CANARY}"] * 4


async def test_custom_context_still_checks_the_host_name(ca: Any) -> None:
    rec = Recorder()
    ctx = server_context(ca, "infernet.example")  # a valid certificate, for another name
    async with (
        asyncio.timeout(BOUND),
        serve(tls_app(rec), ssl_context=ctx) as origin,
        InfernetClient(
            origin, token=CANARY, timeouts=FAST, retry=NO_RETRY, ssl=trusting_context(ca)
        ) as c,
    ):
        with pytest.raises(APIConnectionError):
            await c.list_models()
    assert rec.requests == []


async def test_verification_can_be_disabled_only_explicitly(ca: Any) -> None:
    rec = Recorder()
    async with (
        asyncio.timeout(BOUND),
        serve(tls_app(rec), ssl_context=server_context(ca, "127.0.0.1")) as origin,
        InfernetClient(
            origin, token=CANARY, timeouts=FAST, retry=NO_RETRY, ssl=False, allow_insecure=True
        ) as c,
    ):
        await c.list_models()
    assert len(rec.requests) == 1


# --- The embedded control plane -------------------------------------------------------------------


def test_devserver_compares_tokens_with_hmac_compare_digest() -> None:
    from infernet_async.devserver._state import Plane

    source = inspect.getsource(Plane.authenticate)
    assert "hmac.compare_digest" in source
    # Every configured token is compared, whichever matches: no early exit that times the match.
    assert "break" not in source and "return index" not in source


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Bearer {CANARY[:-1]}",
        f"Bearer {CANARY[:-1]}X",
        f"Bearer {CANARY}X",
        f"Bearer {CANARY.upper()}",
        f"Basic {CANARY}",
        f"{CANARY}",
        f"Bearer {CANARY[:8]}",
        "Bearer tök",
        f"Bearer  {OTHER_CANARY}",
    ],
)
async def test_devserver_refuses_every_wrong_token_alike(header: str | None) -> None:
    async with asyncio.timeout(BOUND), fast_dev() as server, aiohttp.ClientSession() as s:
        headers = {} if header is None else {"Authorization": header}
        async with s.get(server.base_url + "/models", headers=headers) as resp:
            assert resp.status == 401
            body = await resp.json()
        async with s.get(
            server.base_url + "/models", headers={"Authorization": f"Bearer {CANARY}"}
        ) as ok:
            assert ok.status == 200
    assert body["error"] == "unauthorized"


async def test_devserver_refuses_a_token_that_is_not_utf8() -> None:
    async with asyncio.timeout(BOUND), fast_dev() as server:
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"GET /api/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await writer.wait_closed()
    assert status_line.split()[1] == b"401"


async def test_devserver_limits_request_bodies() -> None:
    async with asyncio.timeout(BOUND), fast_dev(max_body_bytes=64 * 1024) as server:
        big_messages = [{"role": "user", "content": "x" * 200_000}]
        big = {"model": MODEL, "messages": big_messages}
        auth = {"Authorization": f"Bearer {CANARY}"}
        async with aiohttp.ClientSession() as s:
            async with s.post(server.base_url + "/jobs", json=big, headers=auth) as resp:
                assert resp.status == 413
                assert (await resp.json())["error"] == "bad_request"

            async def endless() -> AsyncIterator[bytes]:
                yield b'{"model": "' + b"x" * 65536
                for _ in range(100):  # 6.5 MB, chunked: no Content-Length to refuse up front
                    yield b"x" * 65536

            async with s.post(server.base_url + "/jobs", data=endless(), headers=auth) as resp:
                assert resp.status == 413
                assert (await resp.json())["error"] == "bad_request"
        async with InfernetClient(
            server.base_url, token=CANARY, timeouts=FAST, retry=NO_RETRY
        ) as c:
            with pytest.raises(APIError) as info:
                await c.submit(model=MODEL, messages=big_messages)
            assert info.value.status == 413
            assert (await c.submit(model=MODEL, messages=MESSAGES)).id  # still serving


async def test_one_token_cannot_see_another_tokens_jobs() -> None:
    async with asyncio.timeout(BOUND), fast_dev(tokens=[CANARY, OTHER_CANARY]) as server:
        owner = InfernetClient(server.base_url, token=CANARY, timeouts=FAST, retry=NO_RETRY)
        other = InfernetClient(server.base_url, token=OTHER_CANARY, timeouts=FAST, retry=NO_RETRY)
        async with owner, other:
            job = await owner.submit(model=MODEL, messages=MESSAGES)
            assert (await owner.get_job(job.id)).id == job.id
            with pytest.raises(NotFoundError):
                await other.get_job(job.id)
            with pytest.raises(NotFoundError):
                await other.wait_job(job.id, timeout=2)
            with pytest.raises(NotFoundError):
                async with other.stream_job(job.id) as s:
                    async for _ in s:
                        pass
            assert job.id not in [j.id for j in await other.list_jobs(limit=100)]
            assert job.id in [j.id for j in await owner.list_jobs(limit=100)]
            done = await owner.wait_job(job.id, timeout=5)
            assert done.status == "completed"
            with pytest.raises(NotFoundError):
                await other.get_job(job.id)


async def test_unknown_token_is_refused_before_anything_else() -> None:
    async with asyncio.timeout(BOUND), fast_dev() as server:
        async with InfernetClient(
            server.base_url, token=OTHER_CANARY, timeouts=FAST, retry=NO_RETRY
        ) as c:
            with pytest.raises(AuthenticationError):
                await c.submit(model="no-such-model", messages=MESSAGES)
        # The request records keep no token either.
        assert_no_canary([repr(server.requests)], CANARY, OTHER_CANARY)


HOSTILE_BODIES = {
    "nested-arrays": b"[" * 100_000,
    "nested-in-object": b'{"model": "qwen2.5:14b", "x": ' + b"[" * 100_000 + b"}",
    "invalid-utf8": b'{"model": "\xff\xfe", "messages": [{"role": "user", "content": "hi"}]}',
    "5000-digit-int": (
        b'{"model": "qwen2.5:14b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": '
        + b"9" * 5000
        + b"}"
    ),
    "lone-surrogate": (
        b'{"model": "qwen2.5:14b", "messages": [{"role": "user", "content": "\\ud800"}]}'
    ),
    "not-an-object": b"[1, 2]",
    "nan-temperature": (
        b'{"model": "qwen2.5:14b", "messages": [{"role": "user", "content": "hi"}], '
        b'"temperature": NaN}'
    ),
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_devserver_answers_hostile_bodies_with_400_not_500(body: bytes) -> None:
    auth = {"Authorization": f"Bearer {CANARY}", "Content-Type": "application/json"}
    async with asyncio.timeout(BOUND), fast_dev() as server, aiohttp.ClientSession() as s:
        for accept in ("application/json", "text/event-stream"):
            headers = {**auth, "Accept": accept}
            async with s.post(server.base_url + "/jobs", data=body, headers=headers) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"] == "bad_request"
        async with InfernetClient(server.base_url, token=CANARY, timeouts=FAST) as c:
            assert await c.complete(model=MODEL, messages=MESSAGES)  # still serving


# -- a server that echoes the token --------------------------------------------------------------

ECHOED = "tok-echo-canary-5f2a"


def _echoing(kind: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if kind == "json":
            body = {"error": "unauthorized", "error_message": f"bad token: {auth}", "got": [auth]}
            return web.json_response(body, status=401)
        if kind == "html":
            page = f"<html><body>502 upstream rejected {auth}</body></html>"
            return web.Response(status=502, text=page, content_type="text/html")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"text": "Hi"}\n\n')
        event = json.dumps({"error": "bad_request", "message": f"you sent {auth}"})
        await resp.write(f"data: {event}\n\n".encode())
        await resp.write_eof()
        return resp

    return handler


@pytest.mark.parametrize("kind", ["json", "html", "stream"])
async def test_a_token_the_server_echoes_is_never_shown(kind: str) -> None:
    async with (
        raw_server(_echoing(kind)) as origin,
        InfernetClient(origin, token=ECHOED, retry=NO_RETRY, api="jobs") as client,
    ):
        with pytest.raises(InfernetError) as info:
            await client.complete(model=MODEL, messages=MESSAGES)
    error = info.value
    shown = [
        str(error),
        repr(error),
        *map(str, error.args),
        json.dumps(getattr(error, "body", None)),
    ]
    assert all(ECHOED not in text for text in shown), shown
    assert "[REDACTED]" in str(error)


async def test_the_cli_never_prints_an_echoed_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from infernet_async.cli import main

    async with raw_server(_echoing("json")) as origin:
        monkeypatch.setenv("INFERNET_BASE_URL", origin)
        monkeypatch.setenv("INFERNET_BEARER_TOKEN", ECHOED)
        assert await asyncio.to_thread(main, ["models", "--api", "jobs"]) == 1
    err = capsys.readouterr().err
    assert ECHOED not in err and "[REDACTED]" in err
