"""Real parts for the proxy and connection-budget tests: a proxy.py forward proxy in a process of
its own, and a relay that counts the connections an origin sees.

``ProxyServer`` runs ``python -m proxy`` (proxy.py, from the dev extra) on a free loopback port,
with Basic authentication when asked, and with ``tests/helpers/proxy_plugin.py`` recording every
request it handles. ``Relay`` listens on loopback (TLS with a context) and pipes each connection
to a target port (a DevServer), counting the connections open at once: the origin's view of how many
sockets the client holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.helpers.paths import ROOT

REPO = ROOT
# Names under .test are resolved to 127.0.0.1 by the proxy's plugin (and by the tests' own
# getaddrinfo patch where a client connects directly): a non-loopback name, on loopback.
ORIGIN_HOST = "api.infernet.test"


def free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyServer:
    """proxy.py in a subprocess: ``url`` (with credentials when it has them), ``address``,
    ``records()`` (what it handled since ``clear()``)."""

    def __init__(self, *, auth: tuple[str, str] | None = None) -> None:
        self.auth = auth
        self._dir = tempfile.TemporaryDirectory(prefix="infernet-proxy-")
        self.record_file = Path(self._dir.name) / "records.jsonl"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        if self.auth is None:
            return f"http://{self.address}"
        return f"http://{self.auth[0]}:{self.auth[1]}@{self.address}"

    def start(self) -> None:
        port_file = Path(self._dir.name) / "port"
        command = [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--num-acceptors",
            "1",
            "--num-workers",
            "1",
            "--plugins",
            "tests.helpers.proxy_plugin.Record",
            "--log-level",
            "ERROR",
        ]
        if self.auth is not None:
            command += ["--basic-auth", f"{self.auth[0]}:{self.auth[1]}"]
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PROXY_RECORD_FILE": str(self.record_file),
        }
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
            env.pop(name, None)
            env.pop(name.lower(), None)
        self._process = subprocess.Popen(
            command,
            cwd=self._dir.name,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"proxy.py exited with {self._process.returncode}")
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit():
                self.port = int(text)
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1),
                ):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("proxy.py did not start listening within 30 s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self._dir.cleanup()

    def clear(self) -> None:
        self.record_file.write_text("")

    def records(self) -> list[dict[str, Any]]:
        if not self.record_file.exists():
            return []
        lines = self.record_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


class _Downstream(asyncio.Protocol):
    """The client's connection to the relay: counted open from ``connection_made`` until the
    client's end arrives (``eof_received``) or it is lost, both inside the loop's callback for it,
    so the count is exact: a client that closes one socket before opening the next is never seen
    holding both."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counted = True
        self.relay._opened(self)
        task = asyncio.ensure_future(self._connect())
        self.relay._tasks.add(task)
        task.add_done_callback(self.relay._tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(self), "127.0.0.1", self.relay.target
            )
        except OSError:
            if self.transport is not None:
                self.transport.abort()
            return
        if self.transport is None or self.transport.is_closing():
            upstream.abort()
            return
        self.upstream = upstream
        self.relay._transports.add(upstream)
        for data in self.pending:
            upstream.write(data)
        self.pending = []

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        self._gone()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        if self.counted:
            self.counted = False
            self.relay.open -= 1
        if self.upstream is not None:
            self.upstream.abort()


class _Upstream(asyncio.Protocol):
    def __init__(self, down: _Downstream) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        transport = self.down.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def eof_received(self) -> bool:
        transport = self.down.transport
        if transport is not None and not transport.is_closing():
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self.down.transport
        if transport is not None and not transport.is_closing() and not transport.can_write_eof():
            transport.close()


class Relay:
    """Accepts connections on loopback (TLS with ``ssl_context``) and pipes each to
    ``127.0.0.1:target``; ``open`` and ``peak`` count the client connections open at once
    (exactly, see ``_Downstream``), ``total`` all of them."""

    def __init__(self, target: int, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.ssl_context = ssl_context
        self.open = 0
        self.peak = 0
        self.total = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()

    def _opened(self, down: _Downstream) -> None:
        self.open += 1
        self.total += 1
        self.peak = max(self.peak, self.open)
        assert down.transport is not None
        self._transports.add(down.transport)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Downstream(self), "127.0.0.1", 0, ssl=self.ssl_context, backlog=512
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in list(self._transports):
            transport.abort()  # no graceful TLS shutdown with a client that may be gone
        await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until no connection is open (the client's closes have arrived)."""
        async with asyncio.timeout(timeout):
            while self.open:
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def relay(target: int, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Relay]:
    server = Relay(target, ssl_context=ssl_context)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
