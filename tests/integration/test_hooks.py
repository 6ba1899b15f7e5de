"""Request/response hooks (``InfernetClient(on_request=, on_response=)``): called for every attempt
of JSON requests and streams, on our own connections and on a caller's aiohttp session, with
retries counted and no secret in what they receive."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import FrozenInstanceError
from typing import Any

import aiohttp
import pytest

from infernet_async import APIConnectionError, InfernetClient, RequestEvent, ResponseEvent
from infernet_async._attempt_hooks import AttemptHook
from infernet_async._config import RetryPolicy, Secret, Timeouts
from infernet_async._transport import Transport
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import MODEL, MSG, fast_retry
from tests.helpers.paths import README


class Recorder:
    def __init__(self) -> None:
        self.events: list[RequestEvent | ResponseEvent] = []

    def on_request(self, event: RequestEvent) -> None:
        self.events.append(event)

    def on_response(self, event: ResponseEvent) -> None:
        self.events.append(event)

    def client(self, server: DevServer, **kw: object) -> InfernetClient:
        return InfernetClient(
            server.base_url,
            token=server.token,
            retry=fast_retry(),
            on_request=self.on_request,
            on_response=self.on_response,
            **kw,  # type: ignore[arg-type]
        )

    def pairs(self) -> list[tuple[RequestEvent, ResponseEvent]]:
        """The events as (request, response) pairs, checking they alternate and match."""
        assert len(self.events) % 2 == 0
        out = []
        for req, resp in zip(self.events[::2], self.events[1::2], strict=True):
            assert isinstance(req, RequestEvent) and isinstance(resp, ResponseEvent)
            assert (req.method, req.url, req.attempt, req.stream) == (
                resp.method,
                resp.url,
                resp.attempt,
                resp.stream,
            )
            out.append((req, resp))
        return out

    def assert_no_secret(self, token: str) -> None:
        for event in self.events:
            assert token not in repr(event)
            assert "@" not in event.url


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=6) as srv:
        yield srv


async def test_json_requests_and_streams_on_our_connections(server: DevServer) -> None:
    rec = Recorder()
    async with rec.client(server) as client:
        await client.list_models()
        assert await client.complete(model=MODEL, messages=MSG)
    pairs = rec.pairs()
    first_req, first_resp = pairs[0]
    assert first_req == RequestEvent("GET", server.url + "/api/v1/models", 1, False)
    assert first_resp.status == 200 and first_resp.error is None
    assert 0 <= first_resp.elapsed < 5
    streams = [resp for _, resp in pairs if resp.stream]
    assert streams and all(r.status == 200 and r.method == "POST" for r in streams)
    assert all(r.url.startswith(server.url + "/api/v1/") for _, r in pairs)
    rec.assert_no_secret(server.token)


async def test_streams_on_a_callers_session(server: DevServer) -> None:
    rec = Recorder()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
        rec.client(server, session=session) as client,
    ):
        assert await client.complete(model=MODEL, messages=MSG)
        await client.list_models()
    pairs = rec.pairs()
    assert any(resp.stream and resp.status == 200 for _, resp in pairs)
    assert pairs[-1][1].url == server.url + "/api/v1/models" and pairs[-1][1].status == 200
    rec.assert_no_secret(server.token)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_retried_429_gives_two_attempts(server: DevServer, stream: bool) -> None:
    rec = Recorder()
    server.inject(Fault.http_error(429, retry_after=1))
    async with rec.client(server) as client:
        if stream:
            assert await client.complete(model=MODEL, messages=MSG)
        else:
            await client.list_models()
    (req1, resp1), (req2, resp2), *_ = rec.pairs()
    assert (req1.attempt, req2.attempt) == (1, 2)
    assert req1.url == req2.url and req1.stream is req2.stream is stream
    assert (resp1.status, resp1.error) == (429, "RateLimitError")
    assert (resp2.status, resp2.error) == (200, None)
    rec.assert_no_secret(server.token)


async def test_a_connection_error_ends_the_attempt_without_a_status() -> None:
    rec = Recorder()
    client = InfernetClient(
        "http://127.0.0.1:9",  # discard: nothing listens
        token="secret-token",
        retry=fast_retry(max_retries=1),
        on_request=rec.on_request,
        on_response=rec.on_response,
    )
    async with client:
        with pytest.raises(APIConnectionError):
            await client.list_models()
    pairs = rec.pairs()
    assert [req.attempt for req, _ in pairs] == [1, 2]
    assert all(r.status is None and r.error == "APIConnectionError" for _, r in pairs)
    rec.assert_no_secret("secret-token")


async def test_a_failing_hook_is_logged_and_the_request_goes_on(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("hook bug")

    client = InfernetClient(
        server.base_url, token=server.token, on_request=broken, on_response=broken
    )
    with caplog.at_level(logging.WARNING, logger="infernet_async"):
        async with client:
            assert await client.list_models()
            assert await client.complete(model=MODEL, messages=MSG)
    assert any("hook" in r.getMessage() and r.exc_info for r in caplog.records)


def test_the_url_has_no_userinfo_and_no_token_and_events_are_frozen() -> None:
    transport = Transport(
        base_url="https://user:pw@example.com",
        token=Secret("tok-123"),
        timeouts=Timeouts(),
        retry=RetryPolicy(),
        on_request=lambda event: seen.append(event),
    )
    seen: list[RequestEvent] = []
    url = transport.url("/api/v1/jobs")
    AttemptHook(transport, "GET", url, {"q": "tok-123", "limit": "5"}, 1, False, None)
    (event,) = seen
    assert event.url == "https://example.com/api/v1/jobs?q=[REDACTED]&limit=5"
    with pytest.raises(FrozenInstanceError):
        event.attempt = 2  # type: ignore[misc]


async def test_the_readmes_counting_example(server: DevServer) -> None:
    readme = README.read_text()
    section = readme.index("**Hooks.**")
    block = re.search(r"```python\n(.*?)```", readme[section:], re.DOTALL)
    assert block is not None
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)
    server.inject(Fault.http_error(429, retry_after=1))
    client = InfernetClient(
        server.base_url, token=server.token, retry=fast_retry(), on_response=namespace["count"]
    )
    async with client:
        await client.list_models()
    assert dict(namespace["by_status"]) == {429: 1, 200: 1}
