"""Retry logic: the pure schedule and decisions, then retries as seen by a real server.

The pure half uses a fixed clock and random source. The server half counts what the server received,
with a recording sleep instead of real waiting, so Retry-After of seconds costs no time.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest
from aiohttp import web

from infernet_async import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InfernetClient,
    InternalServerError,
    NoCapacityError,
    RateLimitError,
    RetryPolicy,
    Timeouts,
)
from infernet_async._retry import (
    Retrier,
    RetryDecision,
    backoff_delay,
    is_retryable,
    requested_wait,
)
from infernet_async._server_wait import (
    parse_rate_limit_reset,
    parse_reset_at,
    parse_retry_after,
    server_retry_after,
)
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import MODEL, MSG, Handler, SleepRecorder, raw_server

NOW = 1_800_000_000.0

# -- the schedule ----------------------------------------------------------------------------------


def test_backoff_follows_the_documented_formula_at_the_top_of_the_jitter() -> None:
    delays = [backoff_delay(n, random=lambda: 1.0) for n in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_jitter_stays_within_half_and_full() -> None:
    assert backoff_delay(3, random=lambda: 0.0) == 2.0
    for n in range(1, 12):
        assert 0.5 * min(2 ** (n - 1), 30) <= backoff_delay(n) <= min(2 ** (n - 1), 30)


def test_backoff_does_not_overflow_and_rejects_attempt_zero() -> None:
    assert backoff_delay(5000, random=lambda: 1.0) == 30.0
    with pytest.raises(ValueError):
        backoff_delay(0)


# -- server-requested waits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        # A negative or absurd delay is a broken server: ignored, so the backoff applies.
        ("-3", None),
        ("-5", None),
        ("86400", 86400.0),
        ("86401", None),
        ("1e12", None),
        ("", None),
        (None, None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_retry_after_http_date_is_relative_to_now() -> None:
    date = email.utils.formatdate(NOW + 7, usegmt=True)
    assert parse_retry_after(date, now=NOW) == pytest.approx(7.0)
    past = email.utils.formatdate(NOW - 60, usegmt=True)
    assert parse_retry_after(past, now=NOW) == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (str(int(NOW + 5)), 5.0),
        (str(int((NOW + 5) * 1000)), 5.0),
        ("12", 12.0),
        (str(int(NOW - 5)), 0.0),
        ("x", None),
        (None, None),
    ],
)
def test_rate_limit_reset_unix_seconds_millis_or_delay(
    value: str | None, expected: float | None
) -> None:
    result = parse_rate_limit_reset(value, now=NOW)
    assert result == (pytest.approx(expected) if expected is not None else None)


def _iso(ts: float, *, z: bool = True) -> str:
    text = datetime.fromtimestamp(ts, UTC).isoformat()
    return text.replace("+00:00", "Z") if z else text.replace("+00:00", "")


@pytest.mark.parametrize(
    ("reset_at", "expected"),
    [
        (_iso(NOW + 3), 3.0),
        (_iso(NOW + 3, z=False), 3.0),
        (NOW + 4, 4.0),
        ((NOW + 4) * 1000, 4.0),
        (str(int(NOW + 6)), 6.0),
        (_iso(NOW - 3), 0.0),
        ("garbage", None),
        (True, None),
        (None, None),
    ],
)
def test_detail_reset_at_iso_or_epoch(reset_at: object, expected: float | None) -> None:
    result = parse_reset_at({"error": "rate_limited", "detail": {"resetAt": reset_at}}, now=NOW)
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_reset_at_ignores_bodies_of_other_shapes() -> None:
    assert parse_reset_at(None, now=NOW) is None
    assert parse_reset_at({"detail": "slow down"}, now=NOW) is None
    assert parse_reset_at(["detail"], now=NOW) is None


def test_server_wait_prefers_retry_after_then_reset_header_then_body() -> None:
    body = {"detail": {"resetAt": _iso(NOW + 30)}}
    headers = {"Retry-After": "2", "X-RateLimit-Reset": str(int(NOW + 10))}
    assert server_retry_after(headers, body, now=NOW) == 2.0
    assert server_retry_after({"X-RateLimit-Reset": str(int(NOW + 10))}, body, now=NOW) == 10.0
    assert server_retry_after({}, body, now=NOW) == pytest.approx(30.0)
    assert server_retry_after({"Retry-After": "bad"}, None, now=NOW) is None


# -- which failures are retried --------------------------------------------------------------------


def _api(cls: type, status: int, code: str | None) -> Exception:
    return cls("x", status=status, code=code)


@pytest.mark.parametrize(
    ("error", "get", "post"),
    [
        (RateLimitError("x"), True, True),
        (_api(NoCapacityError, 503, "no_capacity"), True, True),
        (_api(NoCapacityError, 503, None), True, False),
        (_api(InternalServerError, 500, "internal_error"), True, False),
        (_api(InternalServerError, 502, None), True, False),
        (_api(AuthenticationError, 401, "unauthorized"), False, False),
        (_api(BadRequestError, 400, "bad_request"), False, False),
        (APIConnectionError("refused", request_sent=False), True, True),
        (APIConnectionError("reset", request_sent=True), True, False),
        (APIConnectionError("unknown"), True, False),
        (APITimeoutError("connect", phase="connect", request_sent=False), True, True),
        (APITimeoutError("read", phase="read", request_sent=True), True, False),
        (ValueError("bug"), False, False),
    ],
)
def test_retryable_by_method(error: Exception, get: bool, post: bool) -> None:
    assert is_retryable("GET", error) is get
    assert is_retryable("POST", error) is post


def test_a_failed_certificate_check_is_never_retried() -> None:
    error = APIConnectionError("certificate verify failed", request_sent=False)
    error.__cause__ = ssl.SSLCertVerificationError("self-signed certificate")
    assert not is_retryable("GET", error) and not is_retryable("POST", error)


def test_a_retrier_uses_the_server_wait_and_caps_it() -> None:
    policy = RetryPolicy(max_retries=2, max_retry_after=10)
    err = RateLimitError("x", retry_after=3)
    retrier = Retrier.for_requests(policy)
    decision = retrier.decide("POST", err, retry_after=3)
    assert decision.retry and decision.delay == 3
    too_long = Retrier.for_requests(policy).decide("POST", err, retry_after=11)
    assert not too_long.retry
    assert retrier.decide("POST", err, retry_after=3).retry
    exhausted = retrier.decide("POST", err, retry_after=3)
    assert not exhausted.retry and exhausted.reason == "retries exhausted"


def test_a_retrier_backs_off_without_a_server_wait() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=30.0)
    err = InternalServerError("x", status=500, code="internal_error")
    retrier = Retrier.for_requests(policy, random=lambda: 1.0)
    first, second = retrier.decide("GET", err), retrier.decide("GET", err)
    assert (first.delay, second.delay) == (1.0, 2.0)
    assert not Retrier.for_requests(policy).decide("POST", err).retry


async def test_one_retrier_counts_decides_and_sleeps_for_every_retry_loop() -> None:
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    policy = RetryPolicy(max_retries=2, max_stream_restarts=1, backoff_base=1.0, sleep=record)
    requests = Retrier.for_requests(policy, random=lambda: 1.0)
    err = InternalServerError("x", status=500, code="internal_error")
    assert [requests.decide("GET", err).delay for _ in range(2)] == [1.0, 2.0]
    assert requests.decide("GET", err).reason == "retries exhausted"
    assert requested_wait(RateLimitError("x", retry_after=4)) == 4
    restarts = Retrier.for_stream_restarts(policy)
    assert not restarts.exhausted
    await restarts.sleep(restarts.take())
    assert restarts.exhausted and restarts.retries == 1 and 0.5 <= sleeps[0] <= 1.0
    resubmissions = Retrier(1)  # a fan-out's: no backoff of its own
    assert resubmissions.decide("POST", RateLimitError("x")) == RetryDecision(True, 0.0, "backoff")


def test_retry_policy_validates() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_base=-1)


# -- against servers -------------------------------------------------------------------------------


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=6) as srv:
        yield srv


def _client(base_url: str, token: str, sleeps: SleepRecorder, **kw: object) -> InfernetClient:
    policy = RetryPolicy(sleep=sleeps, **kw)  # type: ignore[arg-type]
    return InfernetClient(base_url, token=token, retry=policy)


def _posts(server: DevServer) -> int:
    return sum(1 for r in server.requests if r.method == "POST" and r.path == "/api/v1/jobs")


async def test_429_waits_retry_after_and_submits_once(
    server: DevServer, sleeps: SleepRecorder
) -> None:
    server.inject(Fault.http_error(429, retry_after=2, path="/api/v1/jobs", method="POST"))
    async with _client(server.base_url, server.token, sleeps) as client:
        job = await client.submit(model=MODEL, messages=MSG)
    assert sleeps.delays == [2.0]
    assert _posts(server) == 2
    assert len(await _list_jobs(server)) == 1 and job.id


async def _list_jobs(server: DevServer) -> list[object]:
    async with InfernetClient(server.base_url, token=server.token) as client:
        return list(await client.list_jobs())


async def test_429_on_a_stream_post_is_retried_then_streams(
    server: DevServer, sleeps: SleepRecorder
) -> None:
    server.inject(Fault.http_error(429, retry_after=1, path="/api/v1/jobs"))
    async with _client(server.base_url, server.token, sleeps) as client:
        text = await client.complete(model=MODEL, messages=MSG)
    assert text and sleeps.delays == [1.0]
    assert _posts(server) == 2


async def test_429_longer_than_the_cap_raises_at_once_with_retry_after(
    server: DevServer, sleeps: SleepRecorder
) -> None:
    server.inject(Fault.http_error(429, retry_after=120))
    async with _client(server.base_url, server.token, sleeps) as client:
        with pytest.raises(RateLimitError) as info:
            await client.list_models()
    assert info.value.retry_after == 120.0 and info.value.status == 429
    assert sleeps.delays == []


async def test_retries_exhausted_raise_the_last_error(
    server: DevServer, sleeps: SleepRecorder
) -> None:
    server.inject(Fault.http_error(503), times=5)
    async with _client(server.base_url, server.token, sleeps, max_retries=2) as client:
        with pytest.raises(NoCapacityError):
            await client.submit(model=MODEL, messages=MSG)
    assert _posts(server) == 3 and len(sleeps.delays) == 2


async def test_503_no_capacity_post_is_retried(server: DevServer, sleeps: SleepRecorder) -> None:
    server.inject(Fault.http_error(503, path="/api/v1/jobs", method="POST"))
    async with _client(server.base_url, server.token, sleeps) as client:
        await client.submit(model=MODEL, messages=MSG)
    assert _posts(server) == 2 and len(sleeps.delays) == 1


async def test_500_on_post_is_not_retried_but_on_get_it_is(
    server: DevServer, sleeps: SleepRecorder
) -> None:
    server.inject(Fault.http_error(500, method="POST"))
    async with _client(server.base_url, server.token, sleeps) as client:
        with pytest.raises(InternalServerError):
            await client.submit(model=MODEL, messages=MSG)
        assert _posts(server) == 1 and sleeps.delays == []
        server.inject(Fault.http_error(500, method="GET"))
        models = await client.list_models()
    assert models and len(sleeps.delays) == 1


async def test_401_is_never_retried(server: DevServer, sleeps: SleepRecorder) -> None:
    async with _client(server.base_url, "wrong-token", sleeps) as client:
        with pytest.raises(AuthenticationError):
            await client.submit(model=MODEL, messages=MSG)
    assert _posts(server) == 1 and sleeps.delays == []


# Servers that answer the way the hosted control plane (or a proxy) does.


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    async with AsyncExitStack() as stack:

        async def start(handler: Handler) -> str:
            return await stack.enter_async_context(raw_server(handler))

        yield start


def _rate_limited_then_ok(
    headers: dict[str, str], body: dict[str, object]
) -> tuple[Handler, list[str]]:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        if len(seen) == 1:
            return web.json_response(body, status=429, headers=headers)
        return web.json_response({"models": [{"id": "m"}]})

    return handler, seen


async def test_429_falls_back_to_x_ratelimit_reset(
    raw: Callable[[Handler], Awaitable[str]], sleeps: SleepRecorder
) -> None:
    import time

    reset = int(time.time()) + 4
    handler, seen = _rate_limited_then_ok(
        {"X-RateLimit-Reset": str(reset)}, {"error": "rate_limited", "error_message": "slow"}
    )
    url = await raw(handler)
    async with _client(url, "t", sleeps) as client:
        await client.list_models()
    assert len(seen) == 2
    assert 2.5 <= sleeps.delays[0] <= 4.0


async def test_429_falls_back_to_the_live_planes_detail_reset_at(
    raw: Callable[[Handler], Awaitable[str]], sleeps: SleepRecorder
) -> None:
    import time

    reset_at = datetime.fromtimestamp(time.time() + 3, UTC).isoformat().replace("+00:00", "Z")
    handler, seen = _rate_limited_then_ok(
        {}, {"error": "Too many", "detail": {"resetAt": reset_at}}
    )
    url = await raw(handler)
    async with _client(url, "t", sleeps) as client:
        await client.list_models()
    assert len(seen) == 2
    assert 1.5 <= sleeps.delays[0] <= 3.0


async def test_connection_refused_post_is_retried(sleeps: SleepRecorder) -> None:
    import socket

    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with _client(f"http://127.0.0.1:{port}", "t", sleeps) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.submit(model=MODEL, messages=MSG)
    assert info.value.request_sent is False
    assert len(sleeps.delays) == 2  # the request never left: safe to retry a POST


async def test_post_cut_off_after_sending_is_not_retried(
    raw: Callable[[Handler], Awaitable[str]], sleeps: SleepRecorder
) -> None:
    seen: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(await request.read())
        assert request.transport is not None
        request.transport.close()  # the job may exist now: the client must not resubmit
        await asyncio.sleep(0.05)
        return web.Response()

    url = await raw(handler)
    async with _client(url, "t", sleeps) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.submit(model=MODEL, messages=MSG)
    assert info.value.request_sent is not False
    assert len(seen) == 1 and json.loads(seen[0])["model"] == MODEL
    assert sleeps.delays == []


async def test_get_cut_off_is_retried(
    raw: Callable[[Handler], Awaitable[str]], sleeps: SleepRecorder
) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        if len(seen) <= 2:  # aiohttp itself retries an idempotent request once; then we do
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.05)
        return web.json_response({"models": []})

    url = await raw(handler)
    async with _client(url, "t", sleeps) as client:
        assert await client.list_models() == []
    assert len(seen) == 3 and len(sleeps.delays) == 1


async def test_read_timeout_on_get_is_retried_as_api_timeout(
    raw: Callable[[Handler], Awaitable[str]], sleeps: SleepRecorder
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1)
        return web.json_response({"models": []})

    url = await raw(handler)
    client = InfernetClient(
        url,
        token="t",
        retry=RetryPolicy(sleep=sleeps, max_retries=1),
        timeouts=Timeouts(read=0.05),
    )
    async with client:
        with pytest.raises(APITimeoutError) as info:
            await client.list_models()
    assert isinstance(info.value, TimeoutError)
    assert len(sleeps.delays) == 1


async def test_get_whose_body_is_cut_off_is_retried(
    raw: Callable[[Handler], Awaitable[str]], sleeps: SleepRecorder
) -> None:
    seen: list[str] = []
    whole = json.dumps({"models": [{"id": "m"}]}).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        if len(seen) > 1:
            return web.json_response({"models": [{"id": "m"}]})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(whole)
        await resp.prepare(request)
        await resp.write(whole[:10])
        assert request.transport is not None
        request.transport.close()  # the body stops short of its Content-Length
        return resp

    url = await raw(handler)
    async with _client(url, "t", sleeps) as client:
        assert [m.id for m in await client.list_models()] == ["m"]
    assert len(seen) == 2 and len(sleeps.delays) == 1


async def test_connect_timeout_is_an_api_timeout_and_a_post_may_retry_it(
    sleeps: SleepRecorder,
) -> None:
    import socket

    # A listener whose accept backlog is full: the kernel drops further SYNs, so connect() hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            await asyncio.sleep(0.02)
            client = InfernetClient(
                f"http://127.0.0.1:{port}",
                token="t",
                timeouts=Timeouts(connect=0.05),
                retry=RetryPolicy(sleep=sleeps, max_retries=2),
            )
            async with client:
                with pytest.raises(APITimeoutError) as info:
                    await client.submit(model=MODEL, messages=MSG)
        finally:
            for filler in fillers:
                filler.close()
    assert info.value.phase == "connect" and info.value.request_sent is False
    assert len(sleeps.delays) == 2  # nothing was sent: a submission may be retried


async def test_an_untrusted_certificate_fails_once_without_retrying(sleeps: SleepRecorder) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"models": []})

    app = web.Application()
    app.router.add_get("/api/v1/models", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with _client(f"https://127.0.0.1:{port}", "t", sleeps) as client:
            with pytest.raises(APIConnectionError) as info:
                await client.list_models()  # the system trust store does not know this CA
    finally:
        await runner.cleanup()
    assert info.value.request_sent is False and sleeps.delays == []


async def test_a_negative_retry_after_falls_back_to_the_backoff() -> None:
    # Read as 0 before, three requests went out in no time.
    sleep = SleepRecorder()
    body = {"error": "rate_limited", "error_message": "slow down"}

    async def limited(request: web.Request) -> web.Response:
        return web.json_response(body, status=429, headers={"Retry-After": "-5"})

    async with raw_server(limited) as origin:
        policy = RetryPolicy(sleep=sleep, backoff_base=1.0)
        async with InfernetClient(origin, token="t", retry=policy) as client:
            with pytest.raises(RateLimitError):
                await client.list_models()
    assert len(sleep.delays) == 2 and all(d >= 0.5 for d in sleep.delays), sleep.delays
