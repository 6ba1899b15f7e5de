"""Error mapping: error bodies to classes (code first, status as fallback), parsing that never
raises, transport failures to SDK errors, and in-stream error codes to stream errors."""

from __future__ import annotations

import errno
import json
import traceback
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aioresponses import aioresponses
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InfernetError,
    InternalServerError,
    ModelNotFoundError,
    NoCapacityError,
    NodeDisconnectedError,
    NotFoundError,
    RateLimitError,
    StreamError,
)
from infernet_async._transport_errors import map_transport_errors, parse_error_response
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import (
    MODEL,
    MSG,
    MockResponse,
    client_for,
    fast_retry,
    raw_server,
    sse_handler,
)


def _body(code: str, message: str = "m") -> bytes:
    return json.dumps({"error": code, "error_message": message}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "unauthorized", AuthenticationError),
        (400, "bad_request", BadRequestError),
        (404, "model_not_found", ModelNotFoundError),
        (503, "no_capacity", NoCapacityError),
        (429, "rate_limited", RateLimitError),
        (500, "internal_error", InternalServerError),
        # The code decides, not the status: a 400 carrying no_capacity is still no_capacity.
        (400, "no_capacity", NoCapacityError),
        (200, "unauthorized", AuthenticationError),
    ],
)
def test_error_code_decides_the_class(status: int, code: str, cls: type[APIError]) -> None:
    error = parse_error_response(status, _body(code, "why"), {})
    assert type(error) is cls
    assert (error.status, error.code, error.message) == (status, code, "why")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, AuthenticationError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (504, InternalServerError),
        (418, APIError),
    ],
)
def test_status_decides_without_a_code(status: int, cls: type[APIError]) -> None:
    error = parse_error_response(status, b'{"message": "nope"}', {})
    assert type(error) is cls and error.code is None and error.message == "nope"


def test_html_page_from_a_proxy_gives_status_and_short_excerpt() -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 5000 + b"</body>"
    error = parse_error_response(502, page, {"Content-Type": "text/html"})
    assert isinstance(error, InternalServerError) and error.status == 502
    assert "502 Bad Gateway" in error.message and len(error.message) < 260
    assert error.body is None


def test_rate_limit_error_gets_the_wait_from_headers_or_body() -> None:
    error = parse_error_response(429, _body("rate_limited"), {"Retry-After": "7"})
    assert isinstance(error, RateLimitError) and error.retry_after == 7.0
    live = json.dumps({"error": "Too many", "detail": {"resetAt": 1_000_000_012}}).encode()
    from_body = parse_error_response(429, live, {}, now=1_000_000_000.0)
    assert isinstance(from_body, RateLimitError) and from_body.retry_after == 12.0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b'"text"',
        b"\xff\xfe\x00garbage",
        b'{"error": 5}',
        b'{"error": null}',
        b'{"error": {"nested": true}}',
        b"{" * 10000,
    ],
)
def test_odd_bodies_never_raise(raw: bytes) -> None:
    error = parse_error_response(500, raw, {"Retry-After": "\x00"})
    assert isinstance(error, InternalServerError) and error.status == 500


@settings(max_examples=200, deadline=None)
@given(status=st.integers(100, 599), raw=st.binary(max_size=300), retry_after=st.text(max_size=20))
def test_parsing_any_error_response_never_raises(status: int, raw: bytes, retry_after: str) -> None:
    error = parse_error_response(status, raw, {"Retry-After": retry_after})
    assert isinstance(error, APIError) and error.status == status


def test_connection_and_timeout_errors_are_siblings_of_api_error() -> None:
    assert not issubclass(APIConnectionError, APIError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APITimeoutError, TimeoutError)


# -- transport failures ----------------------------------------------------------------------------


def _raise_in_map(exc: BaseException) -> InfernetError:
    with pytest.raises(InfernetError) as info, map_transport_errors():
        raise exc
    assert info.value.__cause__ is exc
    return info.value


def test_no_aiohttp_exception_leaves_the_mapping() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    refused = _raise_in_map(aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "no")))
    assert type(refused) is APIConnectionError and refused.request_sent is False
    timeout = _raise_in_map(aiohttp.ConnectionTimeoutError("slow"))
    assert isinstance(timeout, APITimeoutError) and timeout.phase == "connect"
    read = _raise_in_map(aiohttp.SocketTimeoutError("idle"))
    assert isinstance(read, APITimeoutError) and read.phase == "read"
    assert type(_raise_in_map(aiohttp.ServerDisconnectedError())) is APIConnectionError
    assert type(_raise_in_map(aiohttp.ClientPayloadError("cut"))) is APIConnectionError
    total = _raise_in_map(TimeoutError())
    assert isinstance(total, APITimeoutError) and total.phase == "total"


def test_sdk_errors_and_cancellation_pass_through_the_mapping() -> None:
    import asyncio

    err = NoCapacityError("x", status=503, code="no_capacity")
    with pytest.raises(NoCapacityError) as info, map_transport_errors():
        raise err
    assert info.value is err
    with pytest.raises(asyncio.CancelledError), map_transport_errors():
        raise asyncio.CancelledError


def test_out_of_file_descriptors_says_so() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    emfile = OSError(errno.EMFILE, "Too many open files")
    error = _raise_in_map(aiohttp.ClientConnectorError(key, emfile))
    assert isinstance(error, APIConnectionError) and "too many open files" in str(error)
    assert "EMFILE" in str(error) and "ulimit" in str(error)
    enfile = _raise_in_map(OSError(errno.ENFILE, "Too many open files in system"))
    assert "ENFILE" in str(enfile)


async def test_out_of_file_descriptors_for_real() -> None:
    """Exhaust this process's descriptors, then connect: the error must say what happened."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = client_for("http://127.0.0.1:9", retry=fast_retry(max_retries=0))
    async with client:
        await client._transport.session()  # the loop's own descriptors exist before we run out
        held: list[int] = []
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(soft, len(os.listdir("/proc/self/fd")) + 64), hard)
        )
        try:
            try:
                while True:
                    held.append(os.dup(0))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
            with pytest.raises(APIConnectionError) as info:
                await client.list_models()
            # A stream goes over the SDK's own connections: the same message there.
            with pytest.raises(APIConnectionError) as stream_info:
                await client.complete(model=MODEL, messages=MSG)
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "too many open files" in str(info.value)
    assert "too many open files" in str(stream_info.value)
    assert stream_info.value.request_sent is False


# -- against the control plane ---------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=6) as srv:
        yield srv


async def test_api_errors_from_the_control_plane(server: DevServer) -> None:
    async with client_for(server.base_url, "wrong") as bad:
        with pytest.raises(AuthenticationError) as auth:
            await bad.list_models()
    assert auth.value.status == 401 and auth.value.code == "unauthorized"
    async with client_for(server.base_url, server.token) as client:
        with pytest.raises(ModelNotFoundError):
            await client.submit(model="no-such-model", messages=MSG)
        with pytest.raises(NotFoundError):
            await client.get_job("job_doesnotexist")
        with pytest.raises(BadRequestError):
            await client.submit(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])


async def test_stream_open_errors_raise_at_async_with(server: DevServer) -> None:
    async with client_for(server.base_url, server.token) as client:
        with pytest.raises(ModelNotFoundError):
            async with client.stream(model="no-such-model", messages=MSG):
                pass


async def test_in_stream_code_decides_the_class_though_status_is_200(server: DevServer) -> None:
    server.inject(Fault.drop_node(after_tokens=2))
    async with client_for(server.base_url, server.token) as client:
        with pytest.raises(NodeDisconnectedError) as info:
            async with client.stream(model=MODEL, messages=MSG) as stream:
                async for _ in stream:
                    pass
    assert info.value.code == "node_disconnected" and info.value.partial_text == stream.text
    assert stream.terminal_reason == "node_disconnected"


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (b'data: {"error": "internal_error", "message": "boom"}\n\n', "internal_error"),
        (b'id: 9\nevent: error\ndata: {"message": "boom"}\n\n', None),  # the live plane: no code
    ],
)
async def test_other_in_stream_errors_are_stream_errors(event: bytes, code: str | None) -> None:
    chunks = [b'data: {"text": "Hel"}\n\n', b'data: {"text": "lo"}\n\n', event]
    async with raw_server(sse_handler(chunks)) as url, client_for(url) as client:
        with pytest.raises(StreamError) as info:
            async with client.stream(model=MODEL, messages=MSG) as stream:
                async for _ in stream:
                    pass
    assert type(info.value) is StreamError
    assert (info.value.code, info.value.message, info.value.partial_text) == (code, "boom", "Hello")


async def test_mocked_html_gateway_error_on_a_stream_over_a_callers_session() -> None:
    # A caller's aiohttp session carries the stream (our own connections do otherwise; the same
    # page over them is in hardening/test_faults.py).
    with aioresponses() as mock:
        mock.post(
            "https://api.example.test/api/v1/jobs",
            status=502,
            body="<html><body><h1>502 Bad Gateway</h1></body></html>",
            content_type="text/html",
            response_class=MockResponse,
        )
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        async with (
            session,
            client_for(
                "https://api.example.test", retry=fast_retry(max_retries=0), session=session
            ) as client,
        ):
            with pytest.raises(InternalServerError) as info:
                async with client.stream(model=MODEL, messages=MSG):
                    pass
    assert info.value.status == 502 and "502 Bad Gateway" in info.value.message
    text = "".join(traceback.format_exception(info.value))
    assert "Bearer" not in text


async def test_mocked_transport_failures_reach_the_caller_as_sdk_errors() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("api.example.test", 443, True, True, None, None, None)
    emfile = aiohttp.ClientConnectorError(key, OSError(errno.EMFILE, "Too many open files"))
    with aioresponses() as mock:
        mock.get("https://api.example.test/api/v1/models", exception=emfile)
        mock.post(
            "https://api.example.test/api/v1/jobs", exception=aiohttp.ServerDisconnectedError()
        )
        client = client_for("https://api.example.test", retry=fast_retry(max_retries=0))
        async with client:
            with pytest.raises(APIConnectionError, match="too many open files") as fds:
                await client.list_models()
            with pytest.raises(APIConnectionError) as cut:
                await client.submit(model=MODEL, messages=MSG)
    assert fds.value.request_sent is False
    assert cut.value.request_sent is not False  # the job may exist: not safe to resubmit
    assert not isinstance(fds.value.__cause__, InfernetError)


def test_a_huge_in_stream_error_message_is_cut_but_the_partial_text_is_whole() -> None:
    from infernet_async.errors import stream_error_for_code

    partial = "x" * 100_000
    error = stream_error_for_code(
        "node_disconnected", "m" * 5_000_000, partial_text=partial, job_id="job_1"
    )
    assert type(error).__name__ == "NodeDisconnectedError"
    assert len(error.message) == 1000 and error.message.endswith("…")
    assert len(str(error)) <= 1000
    assert error.partial_text == partial


def test_a_short_in_stream_error_message_is_kept_as_sent() -> None:
    from infernet_async.errors import stream_error_for_code

    error = stream_error_for_code("oops", "Node went offline", partial_text="", job_id=None)
    assert error.message == "Node went offline"
    assert error.code == "oops"
