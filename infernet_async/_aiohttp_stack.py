"""The aiohttp side of the transport, imported on first use (by ``_session``, which builds the
session, and ``_transport_errors``, which maps the errors): ``import infernet_async`` and the
stream path on our own connections never load aiohttp.

``BudgetConnector``: aiohttp's connector within the client's one ``ConnectionBudget``;
``new_session``: the session the client owns; ``map_aiohttp_error``: aiohttp's errors as ours.
"""

from __future__ import annotations

import asyncio
import weakref
from ssl import SSLContext
from typing import Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from ._budget import ConnectionBudget
from ._connect import fd_exhaustion_message
from ._proxy import Proxy, proxy_refused
from .errors import APIConnectionError, APITimeoutError, InfernetError

__all__ = ["BudgetConnector", "map_aiohttp_error", "new_session"]


class BudgetConnector(aiohttp.TCPConnector):
    """aiohttp's connector, opening its sockets within the client's ``ConnectionBudget``.

    It has no limit of its own: before each new socket it takes a slot of the budget (waiting like
    a stream would), and the slot comes back when that socket closes (its protocol's ``closed``
    future). An idle keep-alive socket of its own may be closed for a slot another request needs
    (``ConnectionBudget.reclaim``); one a request holds never is: ``connect`` (BaseConnector's
    public coroutine) marks each connection it hands out busy until it is released, with no await
    between aiohttp taking it from its pool and the mark.

    ``_create_connection`` is the hook ``BaseConnector`` leaves to its subclasses (TCPConnector and
    UnixConnector implement it); the budget wraps it and reads nothing private. Our attributes
    are prefixed ``_infernet_`` so none can shadow one of aiohttp's.
    """

    def __init__(self, budget: ConnectionBudget, **kwargs: Any) -> None:
        super().__init__(limit=0, **kwargs)
        self._infernet_budget = budget
        self._infernet_sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        self._infernet_busy: weakref.WeakSet[Any] = weakref.WeakSet()
        budget.add_reclaimer(self._infernet_close_one_idle)

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        connection = await super().connect(req, traces, timeout)
        proto = connection.protocol
        if proto is not None:
            self._infernet_busy.add(proto)
            connection.add_callback(lambda: self._infernet_released(proto))
        return connection

    def _infernet_released(self, proto: Any) -> None:
        self._infernet_busy.discard(proto)
        budget = self._infernet_budget
        if budget.waiting:
            budget.wake_one()  # a waiter may close this idle socket for its slot

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        budget = self._infernet_budget
        try:
            await budget.take()
        except APIConnectionError as exc:
            raise aiohttp.ClientConnectionError("Connector is closed.") from exc
        try:
            proto = await super()._create_connection(req, traces, timeout)
        except BaseException:
            budget.give()
            raise
        closed = getattr(proto, "closed", None)
        if closed is None or closed.done():
            budget.give()
        else:
            self._infernet_sockets.add(proto)
            closed.add_done_callback(lambda done: self._infernet_socket_closed(proto, done))
        return proto

    def _infernet_socket_closed(self, proto: Any, done: asyncio.Future[None]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved: a lost connection is not an unhandled error
        if proto in self._infernet_sockets:
            self._infernet_sockets.discard(proto)
            self._infernet_budget.give()

    def _infernet_close_one_idle(self) -> bool:
        busy = self._infernet_busy
        for proto in list(self._infernet_sockets):
            transport = proto.transport
            if proto not in busy and transport is not None and not transport.is_closing():
                self._infernet_sockets.discard(proto)
                transport.abort()  # its slot is given back after the abort's close callback
                self._infernet_budget.give()
                return True
        return False


def new_session(
    budget: ConnectionBudget, ssl: SSLContext | bool | None
) -> tuple[aiohttp.ClientSession, BudgetConnector]:
    """A session of ours: its sockets within ``budget``, no total timeout of its own (each request
    sets its own), no cookies."""
    connector = BudgetConnector(budget, ssl=ssl if ssl is not None else True)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    return session, connector


def map_aiohttp_error(
    exc: Exception, *, read_phase: bool, proxy: Proxy | None
) -> InfernetError | None:
    """The error of ours an aiohttp error stands for (see
    ``_transport_errors.map_transport_errors``), or ``None`` if ``exc`` is not one of aiohttp's."""
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        # Before ClientConnectorError, its base: the proxy is what could not be reached.
        where = proxy.address if proxy is not None else f"{exc.host}:{exc.port}"
        message = fd_exhaustion_message(exc.os_error) or (
            f"connection failed: cannot connect to the proxy {where}: {exc.os_error}"
        )
        return APIConnectionError(message, request_sent=False)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        # The proxy answered our CONNECT with an error status: nothing reached the origin.
        if proxy is None:
            return APIConnectionError(
                f"the proxy refused the tunnel: {exc.status} {exc.message}", request_sent=False
            )
        target = f"{exc.request_info.real_url.host}:{exc.request_info.real_url.port}"
        return proxy_refused(proxy, exc.status, exc.message, target=target, headers=exc.headers)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"timed out connecting: {exc}", phase="connect", request_sent=False)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return APITimeoutError(
            "timed out waiting for data from the server (read timeout)",
            phase="read",
            request_sent=True,
        )
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return APITimeoutError(f"timed out: {exc}", phase="read", request_sent=None)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Raised while establishing the connection: nothing of the request left this process.
        message = fd_exhaustion_message(exc.os_error) or f"connection failed: {exc}"
        return APIConnectionError(message, request_sent=False)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return APIConnectionError(
            "the server closed the connection before answering"
            if not read_phase
            else "the server closed the connection mid-response",
            request_sent=True if read_phase else None,
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return APIConnectionError(f"the response body was cut off: {exc}", request_sent=True)
    if isinstance(exc, HttpProcessingError):
        # A malformed body (broken chunk framing, say) read through aiohttp's pure-Python parser
        # raises its parser error itself, which is not a ClientError.
        return APIConnectionError(
            f"the response is malformed: {exc.message}", request_sent=True if read_phase else None
        )
    if isinstance(exc, aiohttp.ClientError):
        os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else None
        if os_error is None and isinstance(exc, OSError):
            os_error = exc
        message = (fd_exhaustion_message(os_error) if os_error is not None else None) or (
            f"connection error: {type(exc).__name__}: {exc}"
        )
        return APIConnectionError(message, request_sent=True if read_phase else None)
    return None
