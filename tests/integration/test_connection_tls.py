"""Streams over TLS on our own connections (``_connection``), and the pool's lifecycle around them.

hardening/test_security.py checks TLS for the JSON requests, which go over aiohttp; a stream on a
client that owns its session goes over ``StreamPool`` instead, with its own ``create_connection``
and SSL context, so the same promises are checked here on that path: verification on by default, a
custom CA, the host name check, the explicit opt-out, reuse of a TLS connection, and a close that
leaves no socket behind. Also over plain HTTP: the keep-alive idle timeout, IPv6 loopback, and the
slots a cancelled connect or request gives back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from infernet_async import (
    APIConnectionError,
    APITimeoutError,
    BatchRequest,
    InfernetClient,
    InfernetError,
    RetryPolicy,
    Timeouts,
)
from infernet_async._native_response import NativeResponse
from infernet_async._pool import StreamPool
from tests.helpers.client import MODEL, MSG, Handler, data_events, record_rests, sse_handler

trustme = pytest.importorskip("trustme")

BOUND = 10.0
TOKEN = "t"
NO_RETRY = RetryPolicy(max_retries=0)
FAST = Timeouts(connect=2.0, read=2.0, stall=2.0, total=10.0)


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


def server_context(ca: Any, *hosts: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(ctx)
    return ctx


def trusting_context(ca: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class Seen:
    """What the server saw: each request's peer port and Host header, and the disconnects."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.hosts: list[str] = []
        self.gone = asyncio.Event()

    def wrap(self, handler: Handler) -> Handler:
        async def recording(request: web.Request) -> web.StreamResponse:
            assert request.transport is not None
            self.ports.append(int(request.transport.get_extra_info("peername")[1]))
            self.hosts.append(request.headers.get("Host", ""))
            try:
                return await handler(request)
            except (ConnectionResetError, asyncio.CancelledError):
                self.gone.set()
                raise

        return recording


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """``handler`` on a loopback port (TLS with ``ssl_context``); yields the API base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    name = f"[{host}]" if ":" in host else host
    try:
        yield f"{scheme}://{name}:{port}/api/v1"
    finally:
        await runner.cleanup()


def pool_of(client: InfernetClient) -> StreamPool:
    binding = client._transport._binding
    assert binding is not None
    return binding.pool


@contextlib.contextmanager
def no_resource_warnings() -> Iterator[None]:
    """Fails if a socket, transport or stream left open is found by the garbage collector."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


def slow_events(n: int, delay: float = 0.01) -> list[bytes | float]:
    """``n`` tokens ``delay`` apart, then ``[DONE]``: a stream that stays open a while."""
    out: list[bytes | float] = []
    for i in range(n):
        out.extend(data_events(str(i), done=False))
        out.append(delay)
    out.append(b"data: [DONE]\n\n")
    return out


# --- TLS ------------------------------------------------------------------------------------------


async def test_a_stream_over_tls_is_whole_and_its_connection_is_reused(ca: Any) -> None:
    seen = Seen()
    handler = seen.wrap(sse_handler(data_events("Par", "is")))
    async with (
        asyncio.timeout(BOUND),
        serve(handler, ssl_context=server_context(ca, "127.0.0.1")) as url,
        InfernetClient(
            url, token=TOKEN, timeouts=FAST, retry=NO_RETRY, ssl=trusting_context(ca)
        ) as client,
    ):
        async with client.stream(model=MODEL, messages=MSG) as stream:
            first = await anext(stream)
            resp = stream._resp
            assert isinstance(resp, NativeResponse)  # our connection, not aiohttp's
            transport = resp._conn._transport
            assert transport is not None
            assert transport.get_extra_info("ssl_object") is not None
            rest = [token async for token in stream]
        assert [first, *rest] == ["Par", "is"] and stream.finished
        assert await client.complete(model=MODEL, messages=MSG) == "Paris"
        pool = pool_of(client)
        assert pool.open_connections == 1 and pool.in_use == 0
    assert len(seen.ports) == 2 and seen.ports[0] == seen.ports[1]
    assert seen.hosts[0] == url.split("/")[2]


async def test_a_fan_out_over_tls_rests_its_sockets_and_loses_nothing(
    ca: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Resting pauses the TLS transport, not the socket: what the TLS layer holds when a rest
    # begins must come out, in order, when it ends.
    rests = record_rests(monkeypatch)
    tokens = [f"t{i} " for i in range(150)]
    chunks: list[bytes | float] = []
    for event in data_events(*tokens):
        chunks += [event, 0.002]
    requests = [BatchRequest(id=str(i), model=MODEL, prompt="q") for i in range(3)]
    with no_resource_warnings():
        async with (
            asyncio.timeout(BOUND),
            serve(sse_handler(chunks), ssl_context=server_context(ca, "127.0.0.1")) as url,
            InfernetClient(url, token=TOKEN, retry=NO_RETRY, ssl=trusting_context(ca)) as client,
        ):
            outcomes = await client.gather(requests, concurrency=3, read_interval=0.08)
            # Every connection goes back to the pool (once its terminating chunk is in).
            while pool_of(client).in_use:
                await asyncio.sleep(0.01)
    assert [o.text for o in outcomes] == ["".join(tokens)] * 3
    assert rests


async def test_an_untrusted_certificate_fails_before_the_request(ca: Any) -> None:
    seen = Seen()
    async with (
        asyncio.timeout(BOUND),
        serve(
            seen.wrap(sse_handler(data_events("x"))), ssl_context=server_context(ca, "127.0.0.1")
        ) as url,
        InfernetClient(url, token=TOKEN, timeouts=FAST, retry=NO_RETRY) as client,
    ):
        with pytest.raises(APIConnectionError) as info:
            await client.complete(model=MODEL, messages=MSG)
        assert pool_of(client).open_connections == 0
    err = info.value
    assert not isinstance(err, APITimeoutError)
    assert err.request_sent is False
    message = str(err).lower()
    assert "certificate verify failed" in message
    assert url.split("/")[2] in message  # says where
    assert isinstance(err.__cause__, ssl.SSLCertVerificationError)
    assert seen.ports == []  # no request, so no token, reached the server


async def test_a_certificate_for_another_host_name_fails(ca: Any) -> None:
    seen = Seen()
    ctx = server_context(ca, "infernet.example")  # signed by the trusted CA, for another name
    async with (
        asyncio.timeout(BOUND),
        serve(seen.wrap(sse_handler(data_events("x"))), ssl_context=ctx) as url,
        InfernetClient(
            url, token=TOKEN, timeouts=FAST, retry=NO_RETRY, ssl=trusting_context(ca)
        ) as client,
    ):
        with pytest.raises(APIConnectionError) as info:
            await client.complete(model=MODEL, messages=MSG)
    assert info.value.request_sent is False
    assert "mismatch" in str(info.value).lower()
    assert seen.ports == []


async def test_verification_off_connects_to_a_self_signed_server(ca: Any) -> None:
    seen = Seen()
    async with (
        asyncio.timeout(BOUND),
        serve(
            seen.wrap(sse_handler(data_events("o", "k"))),
            ssl_context=server_context(ca, "infernet.example"),  # neither trusted nor our name
        ) as url,
        InfernetClient(
            url, token=TOKEN, timeouts=FAST, retry=NO_RETRY, ssl=False, allow_insecure=True
        ) as client,
    ):
        assert await client.complete(model=MODEL, messages=MSG) == "ok"
        assert await client.complete(model=MODEL, messages=MSG) == "ok"
    assert len(seen.ports) == 2 and seen.ports[0] == seen.ports[1]


async def test_closing_the_pool_under_an_open_tls_stream_leaves_nothing_open(ca: Any) -> None:
    seen = Seen()
    handler = seen.wrap(sse_handler(slow_events(500)))
    with no_resource_warnings():
        async with (
            asyncio.timeout(BOUND),
            serve(handler, ssl_context=server_context(ca, "127.0.0.1")) as url,
            InfernetClient(
                url, token=TOKEN, timeouts=FAST, retry=NO_RETRY, ssl=trusting_context(ca)
            ) as client,
        ):
            async with client.stream(model=MODEL, messages=MSG) as stream:
                assert await anext(stream) == "0"
                resp = stream._resp
                assert isinstance(resp, NativeResponse)
                transport = resp._conn._transport
                assert transport is not None
                pool = pool_of(client)
                pool.close()
                assert transport.is_closing()
                assert pool.open_connections == 0
                with pytest.raises(InfernetError):
                    async for _ in stream:
                        pass
            await seen.gone.wait()  # the server saw the connection go
            with pytest.raises(APIConnectionError, match="closed"):
                await client.complete(model=MODEL, messages=MSG)
        del stream, resp, transport


async def test_a_tls_handshake_that_never_ends_hits_the_connect_timeout() -> None:
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # takes the ClientHello, never answers it
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timeouts = Timeouts(connect=0.2, read=2.0, stall=2.0, total=10.0)
    try:
        with no_resource_warnings():
            async with (
                asyncio.timeout(BOUND),
                InfernetClient(
                    f"https://127.0.0.1:{port}/api/v1",
                    token=TOKEN,
                    timeouts=timeouts,
                    retry=NO_RETRY,
                ) as client,
            ):
                with pytest.raises(APITimeoutError) as info:
                    await client.complete(model=MODEL, messages=MSG)
                assert accepted.is_set()
                assert pool_of(client).open_connections == 0
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.phase == "connect" and info.value.request_sent is False


async def test_a_stream_cancelled_during_the_tls_handshake_gives_its_slot_back() -> None:
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with no_resource_warnings():
            async with (
                asyncio.timeout(BOUND),
                InfernetClient(
                    f"https://127.0.0.1:{port}/api/v1",
                    token=TOKEN,
                    retry=NO_RETRY,
                    max_connections=1,
                ) as client,
            ):
                task = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
                await accepted.wait()
                pool = pool_of(client)
                assert pool.open_connections == 1  # connecting
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert pool.open_connections == 0
    finally:
        server.close()
        await server.wait_closed()


# --- Plain HTTP: keep-alive, IPv6, cancellation ---------------------------------------------------


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    seen = Seen()
    async with (
        asyncio.timeout(BOUND),
        serve(seen.wrap(sse_handler(data_events("ok")))) as url,
        InfernetClient(url, token=TOKEN, timeouts=FAST, retry=NO_RETRY) as client,
    ):
        await client._transport.session()  # binds the pool to this loop
        pool = pool_of(client)
        pool._keepalive = 0.05
        assert await client.complete(model=MODEL, messages=MSG) == "ok"
        assert pool.open_connections == 1  # kept alive, idle
        idle = next(iter(pool._open))
        transport = idle._transport
        assert transport is not None
        await asyncio.sleep(0.2)
        assert pool.open_connections == 0 and transport.is_closing()
        assert not any(pool._idle.values())
        assert await client.complete(model=MODEL, messages=MSG) == "ok"
    assert len(seen.ports) == 2 and seen.ports[0] != seen.ports[1]


async def test_a_busy_connection_is_not_closed_by_the_keepalive_timeout() -> None:
    # The idle timer must stop while the connection carries a request: a stream longer than the
    # keep-alive period comes through whole on the reused connection.
    seen = Seen()
    chunks: list[bytes | float] = [*data_events("a", done=False), 0.15, *data_events("b")]
    async with (
        asyncio.timeout(BOUND),
        serve(seen.wrap(sse_handler(chunks))) as url,
        InfernetClient(url, token=TOKEN, timeouts=FAST, retry=NO_RETRY) as client,
    ):
        await client._transport.session()
        pool_of(client)._keepalive = 0.05
        assert await client.complete(model=MODEL, messages=MSG) == "ab"
        assert await client.complete(model=MODEL, messages=MSG) == "ab"
    assert len(seen.ports) == 2 and seen.ports[0] == seen.ports[1]


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_a_stream_over_ipv6_loopback() -> None:
    seen = Seen()
    async with (
        asyncio.timeout(BOUND),
        serve(seen.wrap(sse_handler(data_events("v", "6"))), host="::1") as url,
        InfernetClient(url, token=TOKEN, timeouts=FAST, retry=NO_RETRY) as client,
    ):
        assert url.startswith("http://[::1]:")
        assert await client.complete(model=MODEL, messages=MSG) == "v6"
        assert await client.complete(model=MODEL, messages=MSG) == "v6"
    # RFC 9112 §3.2: an IPv6 literal goes in the Host header in brackets, with the port.
    assert seen.hosts == [url.split("/")[2]] * 2
    assert len(seen.ports) == 2 and seen.ports[0] == seen.ports[1]


async def test_a_request_cancelled_while_waiting_for_the_head_frees_its_connection() -> None:
    seen = Seen()
    started = asyncio.Event()

    async def never_answers(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.sleep(BOUND)
        raise AssertionError("unreachable")

    async with (
        asyncio.timeout(BOUND),
        serve(seen.wrap(never_answers)) as url,
        InfernetClient(url, token=TOKEN, retry=NO_RETRY, max_connections=1) as client,
    ):
        task = asyncio.create_task(client.complete(model=MODEL, messages=MSG))
        await started.wait()
        pool = pool_of(client)
        assert pool.open_connections == 1 and pool.in_use == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.open_connections == 0
        await seen.gone.wait()  # the server saw the disconnect at once


async def test_the_request_line_and_body_are_what_the_server_reads() -> None:
    # A raw look at what our encoder puts on the wire for the stream's POST.
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        got.extend([head, await reader.readexactly(length)])
        body = b"".join(data_events("ok"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            asyncio.timeout(BOUND),
            InfernetClient(
                f"http://127.0.0.1:{port}/api/v1", token=TOKEN, timeouts=FAST, retry=NO_RETRY
            ) as client,
        ):
            assert await client.complete(model=MODEL, messages=MSG) == "ok"
    finally:
        server.close()
        await server.wait_closed()
    head, body = got
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "POST /api/v1/jobs HTTP/1.1"
    fields = [line.split(":", 1) for line in lines[1:] if line]
    names = [name.lower() for name, _ in fields]
    assert names.count("host") == 1 and names.count("content-length") == 1
    values = {name.lower(): value.strip() for name, value in fields}
    assert values["host"] == f"127.0.0.1:{port}"
    assert values["accept"] == "text/event-stream"
    assert values["accept-encoding"] == "identity"
    assert values["authorization"] == f"Bearer {TOKEN}"
    assert values["content-type"] == "application/json"
    assert int(values["content-length"]) == len(body)
    assert json.loads(body)["model"] == MODEL


_CA_FILE_CLIENT = """
import asyncio, sys
from infernet_async import InfernetClient

async def main() -> None:
    async with InfernetClient(sys.argv[1], token="tok-ca-file", api="jobs") as client:
        models = [m.id for m in await client.list_models()]  # aiohttp
        async with client.stream_job("job_1") as stream:  # our own connections
            text = await stream.final_text()
    print(models, text)

asyncio.run(main())
"""


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR", "none"])
async def test_a_ca_from_the_environment_is_trusted_by_both_stacks(
    ca: Any, tmp_path: Any, variable: str
) -> None:
    # The system store, replaced by SSL_CERT_FILE / SSL_CERT_DIR (read when the process starts):
    # JSON requests (aiohttp) and streams (our connections) verify against the same CAs.
    import os
    import subprocess
    import sys

    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERNET_")}
    if variable == "SSL_CERT_FILE":
        env["SSL_CERT_FILE"] = str(pem)
    elif variable == "SSL_CERT_DIR":
        # A hashed directory, as c_rehash lays one out: <subject hash>.0
        digest = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(pem)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (tmp_path / f"{digest}.0").write_bytes(pem.read_bytes())
        env["SSL_CERT_DIR"] = str(tmp_path)
        env["SSL_CERT_FILE"] = str(tmp_path / "none.pem")  # not the system file

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/models"):
            return web.json_response({"models": [{"id": "m"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"text": "ok"}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    async with serve(handler, ssl_context=server_context(ca, "localhost")) as base:
        url = base.replace("127.0.0.1", "localhost")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CA_FILE_CLIENT,
            url,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    if variable == "none":  # the control: the system store does not know the test CA
        assert proc.returncode != 0 and b"certificate" in err.lower()
        return
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "['m'] ok"
