"""``StreamPool``: our HTTP/1.1 connections (``_connection``), by origin and proxy, and the one
request at a time each carries.

Proxies: a connection is keyed by its origin and the proxy it goes through (``_proxy``). An https
origin is reached through an ``http://`` proxy with a ``CONNECT host:port`` tunnel, then TLS to the
origin inside it (``_connect``); a plain-http origin through the proxy with absolute-form request
targets. The proxy's credentials go in the ``CONNECT`` or on the proxied request only.

Rules: every socket the pool opens holds a slot of the client's ``ConnectionBudget`` (``_budget``),
from before it connects until it is closed; a request that met a pooled connection the server had
closed goes once more on a new one, unless it may have reached the server; every error that leaves
the pool is an ``APIConnectionError``, an ``APITimeoutError`` or (a proxy's refusal) an
``APIError``. ``close()`` is synchronous.
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
from collections.abc import Callable, Mapping
from typing import Any

from yarl import URL

from ._budget import ConnectionBudget
from ._connect import Connector, Origin, PoolKey
from ._connection import Connection
from ._http1_request import encode_request
from ._native_response import NativeResponse
from ._proxy import Proxy
from .errors import APIConnectionError, APITimeoutError

__all__ = ["StreamPool"]


class StreamPool:
    """Our connections, by origin and proxy, each holding a slot of ``budget`` while open; idle
    ones kept for ``keepalive`` seconds."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        ssl: ssl_module.SSLContext | bool | None,
        limit: int | None = None,
        budget: ConnectionBudget | None = None,
        keepalive: float = 15.0,
    ) -> None:
        if budget is None:
            budget = ConnectionBudget(loop, limit if limit is not None else 100)
        self.loop = loop
        self.budget = budget
        self._connector = Connector(loop, ssl)
        self._keepalive = keepalive
        self._idle: dict[PoolKey, list[Connection]] = {}
        self._open: set[Connection] = set()
        self._connecting = 0
        self.closed = False
        # Resting connections (read_at_intervals), by the rest's length: one timer per length
        # wakes them all, so their reads come together in one turn of the event loop.
        self._resting: dict[float, tuple[list[Connection], asyncio.TimerHandle]] = {}
        budget.add_reclaimer(self._close_one_idle)

    @property
    def limit(self) -> int:
        """The most sockets open at once: the budget's, shared with the client's other stack."""
        return self.budget.limit

    @property
    def open_connections(self) -> int:
        return len(self._open) + self._connecting

    @property
    def in_use(self) -> int:
        """Connections carrying a request now (open, not idle in the pool)."""
        return len(self._open) - sum(map(len, self._idle.values()))

    def set_limit(self, limit: int) -> None:
        self.budget.set_limit(limit)

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        connect_timeout: float | None,
        read_timeout: float | None,
        on_send: Callable[[bool], None] | None = None,
        proxy: Proxy | None = None,
    ) -> NativeResponse:
        """Send one request on a pooled or new connection; returns once the head is in.
        ``on_send(True)`` once the pool has a connection, or a slot to open one, for it: a wait
        for a free connection is the client's, connecting is the request's. ``proxy``: the
        forward proxy to go through (``_proxy.ProxySettings.select``), or none.

        Raises:
            APIError: the proxy answered 407 (or refused the origin) to a plain-http request or
                to the ``CONNECT``.
        """
        if params:
            url = url.update_query(params)
        origin: Origin = (url.scheme, url.raw_host or "", url.port or 0)
        body = None
        header_items: list[tuple[str, str]] = []
        if not any(name.lower() == "host" for name in headers):
            # The caller's Host (a tunnel, a virtual host) replaces ours, as with aiohttp: two
            # Host fields are a 400 (RFC 9112 §3.2).
            header_items.append(("Host", url.host_port_subcomponent or ""))
        header_items.extend(headers.items())
        target = url.raw_path_qs
        if proxy is not None and url.scheme == "http":
            # Forwarded by the proxy (RFC 9112 §3.2.2): the absolute URL, and its credentials on
            # the request itself; an https origin gets them in the CONNECT instead.
            target = str(url.with_fragment(None))
            authorization = proxy.authorization
            if authorization is not None:
                header_items.append(("Proxy-Authorization", authorization))
        if json_body is not None:
            body = json.dumps(json_body).encode()
            header_items.append(("Content-Type", "application/json"))
        try:
            request = encode_request(method, target, header_items, body)
        except ValueError as exc:
            raise APIConnectionError(f"cannot send the request: {exc}", request_sent=False) from exc
        key: PoolKey = (origin, proxy)
        conn, reused = await self._acquire(key, connect_timeout, on_send)
        try:
            head = await conn.send(request, method=method, read_timeout=read_timeout)
        except APIConnectionError as exc:
            if not _resend_on_a_new_connection(method, exc, reused=reused, conn=conn):
                raise
            # The server had closed this pooled connection: the request never reached it. Once,
            # on a connection of its own.
            conn, _ = await self._acquire(key, connect_timeout, fresh=True)
            head = await conn.send(request, method=method, read_timeout=read_timeout)
        return NativeResponse(conn, head, url)

    def close(self) -> None:
        """Close every connection, idle or in use; the pool takes no more requests."""
        self.closed = True
        # Idle lists first: each closing connection looks itself up in them (O(n) each).
        self._idle.clear()
        for conn in list(self._open):
            conn.close()
        for _, timer in self._resting.values():
            timer.cancel()
        self._resting.clear()
        # Our waiters see the pool closed; the other stack's re-check and wait again.
        self.budget.wake_all()

    # -- connections -------------------------------------------------------------------------------

    async def _acquire(
        self,
        key: PoolKey,
        connect_timeout: float | None,
        on_granted: Callable[[bool], None] | None = None,
        *,
        fresh: bool = False,
    ) -> tuple[Connection, bool]:
        """A connection for ``key`` and whether it was reused from the pool; ``fresh``: a new
        one (an idle one may be closed to make room)."""
        budget = self.budget
        while True:
            if self.closed:
                raise APIConnectionError("the client is closed", request_sent=False)
            idle = self._idle.get(key)
            while idle and not fresh:
                conn = idle.pop()
                if conn.usable():
                    if on_granted is not None:
                        on_granted(True)
                    return conn, True
                conn.close()
            if budget.try_take():
                if on_granted is not None:
                    on_granted(True)
                return await self._connect(key, connect_timeout), False
            if budget.reclaim():
                # The closed socket's slot comes back at the next turn of the loop, after the
                # socket itself is gone: never one more open than the budget, even for a moment.
                await asyncio.sleep(0)
                continue
            await budget.wait()

    def _close_one_idle(self) -> bool:
        for conns in self._idle.values():
            if conns:
                conns.pop(0).close()
                return True
        return False

    async def _connect(self, key: PoolKey, connect_timeout: float | None) -> Connection:
        """A new connection for ``key``; the caller took a budget slot for it, which this gives
        back if connecting fails."""
        self._connecting += 1
        try:
            conn, sock = await self._connector.connect(
                lambda: Connection(self, key), key, connect_timeout
            )
        except BaseException:
            self._connecting -= 1
            self.budget.give()
            raise
        self._connecting -= 1
        if isinstance(self.loop, asyncio.SelectorEventLoop):
            conn.keep_socket(sock, tls=key[0][0] == "https")
        self._open.add(conn)
        if self.closed:
            conn.close()
            raise APIConnectionError("the client is closed", request_sent=False)
        return conn

    # -- called by its connections ----------------------------------------------------------------

    def _idle_again(self, conn: Connection) -> None:
        if self.closed:
            conn.close()
            return
        self._idle.setdefault(conn.key, []).append(conn)
        conn.idle(self._keepalive)
        # A waiter for this key takes it; any other may close it for the slot.
        self.budget.wake_one()

    def _rest(self, conn: Connection, interval: float) -> None:
        batch = self._resting.get(interval)
        if batch is None:
            timer = self.loop.call_later(interval, self._end_rest, interval)
            self._resting[interval] = batch = ([], timer)
        batch[0].append(conn)

    def _end_rest(self, interval: float) -> None:
        conns, _ = self._resting.pop(interval)
        for conn in conns:
            conn.rest_over()

    def _forget(self, conn: Connection) -> None:
        if conn not in self._open:
            return
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self.budget.give()


def _resend_on_a_new_connection(
    method: str, exc: APIConnectionError, *, reused: bool, conn: Connection
) -> bool:
    """Whether a request that failed on ``conn`` goes once more on a new connection: it was a
    pooled one, nothing of an answer came, and sending again cannot make a second job: a GET, or
    any request known not to have left (``request_sent`` False). A POST written whole and then
    met by the close is the ambiguous case: the server may have read it, so it is not resent
    (a second billed job is worse than an error)."""
    if not reused or conn.answered or isinstance(exc, APITimeoutError):
        return False
    return method in ("GET", "HEAD") or exc.request_sent is False
