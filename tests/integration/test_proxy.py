"""Requests through a real forward proxy: proxy.py (the dev extra), in a process of its own.

Both stacks go through it: JSON requests over aiohttp, streams over our own connections
(``_connection``), the fan-out and the CLI. The origin is a DevServer, reached over plain http or
over TLS (a ``Relay`` with a trustme certificate in front of it) under the name
``api.infernet.test``, which the proxy resolves to loopback (tests/helpers/proxy_plugin.py);
where the client must reach it directly (``NO_PROXY``), the test maps the name itself. Checked:
what the proxy and the origin each saw (credentials to the proxy only, never the origin's token in a
``CONNECT``), ``NO_PROXY`` and loopback, a 407 and an unreachable proxy named as such, and that a
stream through the proxy keeps its guarantees (partial text, cancellation, deadlines, no leak).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from infernet_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BatchRequest,
    InfernetClient,
    RetryPolicy,
    Timeouts,
)
from infernet_async.cli import main
from infernet_async.devserver import DevServer
from tests.helpers.client import MODEL, MSG
from tests.helpers.proxy import ORIGIN_HOST, ProxyServer, Relay, free_port, relay

pytest.importorskip("proxy", reason="proxy.py (the dev extra) runs the forward proxy")
trustme = pytest.importorskip("trustme")

USER, PASSWORD = "alice", "pr0xy-s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
NO_RETRY = RetryPolicy(max_retries=0)
FAST = Timeouts(connect=5.0, read=5.0, stall=5.0, total=30.0)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(scope="module")
def open_proxy_server() -> Iterator[ProxyServer]:
    server = ProxyServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_proxy_server() -> Iterator[ProxyServer]:
    server = ProxyServer(auth=(USER, PASSWORD))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def open_proxy(open_proxy_server: ProxyServer) -> ProxyServer:
    open_proxy_server.clear()
    return open_proxy_server


@pytest.fixture
def auth_proxy(auth_proxy_server: ProxyServer) -> ProxyServer:
    auth_proxy_server.clear()
    return auth_proxy_server


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("INFERNET_BASE_URL", raising=False)
    monkeypatch.delenv("INFERNET_BEARER_TOKEN", raising=False)


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture
def client_tls(ca: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
async def dev() -> AsyncIterator[DevServer]:
    async with DevServer(
        tokens_per_second=400.0, time_to_first_token=0, rate_limit_per_minute=10_000
    ) as server:
        yield server


@pytest.fixture
async def tls_origin(dev: DevServer, ca: Any) -> AsyncIterator[Relay]:
    """The DevServer behind TLS, with a certificate for ``api.infernet.test``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(ORIGIN_HOST, "127.0.0.1").configure_cert(ctx)
    async with relay(dev.port, ssl_context=ctx) as server:
        yield server


@pytest.fixture
def test_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """``*.test`` resolves to 127.0.0.1 in this process too (a client that connects directly)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def https_base(origin: Relay) -> str:
    return f"https://{ORIGIN_HOST}:{origin.port}/api/v1"


def http_base(dev: DevServer) -> str:
    return f"http://{ORIGIN_HOST}:{dev.port}/api/v1"


@contextlib.contextmanager
def no_resource_warnings() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


async def json_and_stream(client: InfernetClient) -> str:
    """A JSON request (aiohttp), a stream (our connections), and the JSON request again."""
    models = await client.list_models()
    assert models
    text = await client.stream(model=MODEL, messages=MSG).final_text()
    assert await client.list_models() == models
    return text


def connects(proxy: ProxyServer) -> list[dict[str, Any]]:
    return [r for r in proxy.records() if r["method"] == "CONNECT"]


def forwarded(proxy: ProxyServer) -> list[dict[str, Any]]:
    return [r for r in proxy.records() if r["method"] != "CONNECT"]


def origin_headers(dev: DevServer) -> list[dict[str, str]]:
    return [{k.lower(): v for k, v in r.headers.items()} for r in dev.requests]


# --- https and http origins, with and without credentials --------------------------------------


async def test_https_origin_through_a_proxy_with_credentials(
    auth_proxy: ProxyServer, dev: DevServer, tls_origin: Relay, client_tls: ssl.SSLContext
) -> None:
    async with InfernetClient(
        https_base(tls_origin), dev.token, proxy=auth_proxy.url, ssl=client_tls, retry=NO_RETRY
    ) as client:
        text = await json_and_stream(client)
    assert "Paris" in text
    tunnels = connects(auth_proxy)
    # One tunnel for aiohttp's JSON requests, one for our stream connection; nothing else.
    assert len(tunnels) == 2 and not forwarded(auth_proxy)
    for record in tunnels:
        assert record["host"] == ORIGIN_HOST and record["port"] == tls_origin.port
        assert record["headers"]["proxy-authorization"] == BASIC
        # The origin's token never goes into a CONNECT.
        assert "authorization" not in record["headers"]
        assert dev.token not in str(record)
    seen = origin_headers(dev)
    assert len(seen) == 3
    assert all("authorization" in h and "proxy-authorization" not in h for h in seen)
    assert all(PASSWORD not in str(h) for h in seen)


async def test_http_origin_through_a_proxy_with_credentials(
    auth_proxy: ProxyServer, dev: DevServer
) -> None:
    async with InfernetClient(
        http_base(dev), dev.token, proxy=auth_proxy.url, allow_insecure=True, retry=NO_RETRY
    ) as client:
        assert "Paris" in await json_and_stream(client)
    requests = forwarded(auth_proxy)
    assert not connects(auth_proxy)
    # Plain http is forwarded: absolute-form targets, credentials on every request to the proxy.
    assert [r["method"] for r in requests] == ["GET", "POST", "GET"]
    assert all(r["host"] == ORIGIN_HOST and r["port"] == dev.port for r in requests)
    assert all(r["headers"]["proxy-authorization"] == BASIC for r in requests)
    seen = origin_headers(dev)
    assert [r.path for r in dev.requests] == ["/api/v1/models", "/api/v1/jobs", "/api/v1/models"]
    assert all("proxy-authorization" not in h and "authorization" in h for h in seen)


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_a_proxy_without_credentials(
    scheme: str,
    open_proxy: ProxyServer,
    dev: DevServer,
    tls_origin: Relay,
    client_tls: ssl.SSLContext,
) -> None:
    base = https_base(tls_origin) if scheme == "https" else http_base(dev)
    async with InfernetClient(
        base,
        dev.token,
        proxy=open_proxy.url,
        ssl=client_tls,
        allow_insecure=True,
        retry=NO_RETRY,
    ) as client:
        assert "Paris" in await json_and_stream(client)
    records = open_proxy.records()
    assert records and all("proxy-authorization" not in r["headers"] for r in records)
    assert (len(connects(open_proxy)) == 2) == (scheme == "https")
    assert all("proxy-authorization" not in h for h in origin_headers(dev))


# --- the environment, NO_PROXY and loopback ----------------------------------------------------


async def test_https_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    open_proxy: ProxyServer,
    dev: DevServer,
    tls_origin: Relay,
    client_tls: ssl.SSLContext,
) -> None:
    monkeypatch.setenv("https_proxy", open_proxy.url)
    monkeypatch.setenv("NO_PROXY", "elsewhere.test,10.0.0.0/8")  # does not match
    async with InfernetClient(
        https_base(tls_origin), dev.token, ssl=client_tls, retry=NO_RETRY
    ) as client:
        await json_and_stream(client)
    assert len(connects(open_proxy)) == 2


async def test_http_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, open_proxy: ProxyServer, dev: DevServer
) -> None:
    monkeypatch.setenv("HTTP_PROXY", open_proxy.url)
    async with InfernetClient(
        http_base(dev), dev.token, allow_insecure=True, retry=NO_RETRY
    ) as client:
        await json_and_stream(client)
    assert [r["method"] for r in forwarded(open_proxy)] == ["GET", "POST", "GET"]


@pytest.mark.parametrize(
    "no_proxy", [ORIGIN_HOST, ".infernet.test", "infernet.test:{port}", "10.0.0.0/8, *"]
)
async def test_no_proxy_matching_connects_directly(
    monkeypatch: pytest.MonkeyPatch,
    test_names: None,
    no_proxy: str,
    open_proxy: ProxyServer,
    dev: DevServer,
    tls_origin: Relay,
    client_tls: ssl.SSLContext,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", open_proxy.url)
    monkeypatch.setenv("no_proxy", no_proxy.format(port=tls_origin.port))
    async with InfernetClient(
        https_base(tls_origin), dev.token, ssl=client_tls, retry=NO_RETRY
    ) as client:
        await json_and_stream(client)
    assert open_proxy.records() == []
    assert tls_origin.total == 2  # both stacks reached the origin themselves


async def test_loopback_is_never_proxied_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, dev: DevServer
) -> None:
    # An unreachable proxy: any request that went to it would fail.
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    async with InfernetClient(dev.base_url, dev.token, retry=NO_RETRY) as client:
        await json_and_stream(client)


async def test_trust_env_false_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    test_names: None,
    open_proxy: ProxyServer,
    dev: DevServer,
    tls_origin: Relay,
    client_tls: ssl.SSLContext,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", open_proxy.url)
    async with InfernetClient(
        https_base(tls_origin), dev.token, ssl=client_tls, retry=NO_RETRY, trust_env=False
    ) as client:
        await json_and_stream(client)
    assert open_proxy.records() == []


async def test_an_explicit_proxy_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    open_proxy: ProxyServer,
    auth_proxy: ProxyServer,
    dev: DevServer,
    tls_origin: Relay,
    client_tls: ssl.SSLContext,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", open_proxy.url)
    monkeypatch.setenv("NO_PROXY", "*")
    async with InfernetClient(
        https_base(tls_origin), dev.token, ssl=client_tls, retry=NO_RETRY, proxy=auth_proxy.url
    ) as client:
        await json_and_stream(client)
    assert open_proxy.records() == [] and len(connects(auth_proxy)) == 2


# --- errors: 407 and an unreachable proxy -------------------------------------------------------


def assert_names_the_proxy(message: str, proxy: str, *, not_: str) -> None:
    assert f"proxy {proxy}" in message, message
    assert not_ not in message, message
    assert PASSWORD not in message and USER not in message, message


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_407_is_an_api_error_naming_the_proxy(
    scheme: str,
    auth_proxy: ProxyServer,
    dev: DevServer,
    tls_origin: Relay,
    client_tls: ssl.SSLContext,
) -> None:
    base = https_base(tls_origin) if scheme == "https" else http_base(dev)
    bare = f"http://{auth_proxy.address}"  # the proxy wants credentials; the client has none
    async with InfernetClient(
        base, dev.token, proxy=bare, ssl=client_tls, allow_insecure=True, retry=RetryPolicy()
    ) as client:
        with pytest.raises(APIError) as json_error:
            await client.list_models()
        with pytest.raises(APIError) as stream_error:
            await client.stream(model=MODEL, messages=MSG).final_text()
    for caught in (json_error, stream_error):
        error = caught.value
        assert error.status == 407 and type(error) is APIError
        assert "requires authentication" in error.message
        assert_names_the_proxy(error.message, auth_proxy.address, not_=ORIGIN_HOST)
    assert dev.requests == []  # nothing reached the origin, and a 407 is not retried


async def test_wrong_credentials_are_a_407_that_says_so(
    auth_proxy: ProxyServer, dev: DevServer, tls_origin: Relay, client_tls: ssl.SSLContext
) -> None:
    wrong = f"http://{USER}:nope@{auth_proxy.address}"
    async with InfernetClient(
        https_base(tls_origin), dev.token, proxy=wrong, ssl=client_tls, retry=NO_RETRY
    ) as client:
        with pytest.raises(APIError) as caught:
            await client.stream(model=MODEL, messages=MSG).final_text()
    assert caught.value.status == 407
    assert "refused the credentials" in caught.value.message
    assert "nope" not in caught.value.message


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_an_unreachable_proxy_is_a_connection_error_naming_it(
    scheme: str, dev: DevServer, tls_origin: Relay, client_tls: ssl.SSLContext
) -> None:
    address = f"127.0.0.1:{free_port()}"
    base = https_base(tls_origin) if scheme == "https" else http_base(dev)
    async with InfernetClient(
        base,
        dev.token,
        proxy=f"http://{USER}:{PASSWORD}@{address}",
        ssl=client_tls,
        allow_insecure=True,
        retry=NO_RETRY,
    ) as client:
        with pytest.raises(APIConnectionError) as json_error:
            await client.list_models()
        with pytest.raises(APIConnectionError) as stream_error:
            await client.stream(model=MODEL, messages=MSG).final_text()
    for caught in (json_error, stream_error):
        assert caught.value.request_sent is False
        assert "cannot connect to the proxy" in caught.value.message
        assert_names_the_proxy(caught.value.message, address, not_=ORIGIN_HOST)
    assert dev.requests == []


# --- streams keep their guarantees through the proxy --------------------------------------------


async def test_a_cancelled_stream_through_the_proxy_keeps_its_text_and_closes_at_the_origin(
    auth_proxy: ProxyServer, tls_origin: Relay, client_tls: ssl.SSLContext, ca: Any
) -> None:
    async with DevServer(tokens_per_second=20.0, time_to_first_token=0, answer_tokens=200) as slow:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(ORIGIN_HOST).configure_cert(ctx)
        with no_resource_warnings():
            async with relay(slow.port, ssl_context=ctx) as origin:
                client = InfernetClient(
                    https_base(origin), slow.token, proxy=auth_proxy.url, ssl=client_tls
                )
                async with client:
                    stream = client.stream(model=MODEL, messages=MSG)
                    got: list[str] = []

                    async def read() -> None:
                        async for token in stream:
                            got.append(token)  # noqa: PERF401 (one at a time, as they come)

                    task = asyncio.create_task(read())
                    async with asyncio.timeout(10):
                        while len(got) < 3:
                            await asyncio.sleep(0.01)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    assert stream.text.startswith("".join(got)) and got
                    record = await slow.wait_for_stream_close(None, timeout=5)
                    assert record.closed_by_client and not record.completed
                    pool = client._transport._binding.pool  # type: ignore[union-attr]
                    assert pool.open_connections == 0
                await origin.settle()


async def test_a_first_token_deadline_holds_through_the_proxy(
    open_proxy: ProxyServer, tls_origin: Relay, client_tls: ssl.SSLContext, ca: Any
) -> None:
    async with DevServer(time_to_first_token=30.0) as late:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(ORIGIN_HOST).configure_cert(ctx)
        async with (
            relay(late.port, ssl_context=ctx) as origin,
            InfernetClient(
                https_base(origin),
                late.token,
                proxy=open_proxy.url,
                ssl=client_tls,
                retry=NO_RETRY,
                timeouts=Timeouts(first_token=0.5, total=10.0),
            ) as client,
        ):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(APITimeoutError):
                await client.stream(model=MODEL, messages=MSG).final_text()
            assert loop.time() - started < 5


async def test_streams_reuse_their_tunnel(
    open_proxy: ProxyServer, dev: DevServer, tls_origin: Relay, client_tls: ssl.SSLContext
) -> None:
    async with InfernetClient(
        https_base(tls_origin), dev.token, proxy=open_proxy.url, ssl=client_tls
    ) as client:
        for _ in range(3):
            assert await client.stream(model=MODEL, messages=MSG).final_text()
        pool = client._transport._binding.pool  # type: ignore[union-attr]
        assert pool.open_connections == 1
    assert len(connects(open_proxy)) == 1


# --- the fan-out and the CLI --------------------------------------------------------------------


async def test_the_fan_out_goes_through_the_proxy(
    auth_proxy: ProxyServer, dev: DevServer, tls_origin: Relay, client_tls: ssl.SSLContext
) -> None:
    async with InfernetClient(
        https_base(tls_origin), dev.token, proxy=auth_proxy.url, ssl=client_tls, timeouts=FAST
    ) as client:
        requests = [BatchRequest(model=MODEL, prompt=f"q{i}", id=str(i)) for i in range(12)]
        outcomes = await client.gather(requests, concurrency=4)
    assert all(o.ok and o.text for o in outcomes), [o.error for o in outcomes]
    tunnels = connects(auth_proxy)
    assert 1 <= len(tunnels) <= 4
    assert all(r["headers"]["proxy-authorization"] == BASIC for r in tunnels)
    assert len(dev.streams) == 12 and tls_origin.peak <= 4


async def test_cli_chat_through_proxy(
    monkeypatch: pytest.MonkeyPatch,
    open_proxy: ProxyServer,
    dev: DevServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", dev.token)
    argv = ["chat", "--base-url", dev.base_url, "--proxy", open_proxy.url, "Capital of France?"]
    assert await asyncio.to_thread(main, argv) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out and err == ""
    # An explicit proxy applies to loopback too: the request went through it.
    assert [r["method"] for r in forwarded(open_proxy)] == ["POST"]
    assert forwarded(open_proxy)[0]["port"] == dev.port


async def test_cli_407_is_one_line_naming_the_proxy(
    monkeypatch: pytest.MonkeyPatch,
    auth_proxy: ProxyServer,
    dev: DevServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", dev.token)
    bare = f"http://{auth_proxy.address}"
    argv = ["chat", "--base-url", dev.base_url, "--proxy", bare, "Capital of France?"]
    assert await asyncio.to_thread(main, argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and f"[407] the proxy {auth_proxy.address}" in err


async def test_cli_refuses_a_socks_proxy_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        await asyncio.to_thread(main, ["chat", "--proxy", "socks5://u:hunter22@h:1080", "hi"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "SOCKS proxies are not supported" in err and "hunter22" not in err


async def test_cli_embedded_control_plane_works_with_a_proxy_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HTTPS_PROXY", dead)
    monkeypatch.setenv("HTTP_PROXY", dead)
    assert await asyncio.to_thread(main, ["chat", "--max-tokens", "4", "Capital of France?"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Paris") and "embedded control plane" in err
