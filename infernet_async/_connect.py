"""Connecting: from an origin (and the proxy it goes through) to a connected transport.

``Connector`` resolves names through a small DNS cache (one lookup at a time per name, kept
``_DNS_TTL`` seconds, as aiohttp's connector does), races a name's addresses with happy eyeballs
(RFC 8305), opens a ``CONNECT`` tunnel through an ``http://`` proxy to an https origin, and wraps
the socket in TLS with the client's context. Rules: the origin's headers never go into a
``CONNECT`` (only the proxy's own: Host, User-Agent, Proxy-Authorization); a failed connect raises
``APIConnectionError``, ``APITimeoutError`` or (a proxy's refusal) ``APIError``, naming the proxy
when there is one; a socket made here is closed on every failure.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, TypeVar

import aiohappyeyeballs

from ._http1 import ResponseParser
from ._http1_head import ProtocolError
from ._http1_request import encode_request
from ._proxy import Proxy, proxy_refused
from ._version import __version__
from .errors import APIConnectionError, APIError, APITimeoutError

__all__ = ["AddrInfo", "Connector", "Origin", "PoolKey", "fd_exhaustion_message"]

Origin = tuple[str, str, int]
# What a pooled connection can serve: its origin, through which proxy (or none).
PoolKey = tuple[Origin, Proxy | None]
# (family, type, proto, canonname, sockaddr), as getaddrinfo gives them.
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]
_P = TypeVar("_P", bound=asyncio.BaseProtocol)

_DNS_TTL = 10.0
_FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
# A proxy's answer to CONNECT: its head is all we read, and a head past this is not one.
_CONNECT_HEAD_LIMIT = 64 * 1024
_USER_AGENT = f"infernet-async/{__version__}"


def fd_exhaustion_message(exc: OSError) -> str | None:
    """The message for a connection that failed for want of a file descriptor, else ``None``."""
    if exc.errno in _FD_ERRNOS or "too many open files" in str(exc).lower():
        which = errno.errorcode.get(exc.errno or errno.EMFILE, "EMFILE")
        return (
            f"too many open files ({which}): the process has no file descriptor left for a new "
            "connection; close streams you no longer read, share one client, or raise the limit "
            "(ulimit -n)"
        )
    return None


class Connector:
    """Connected transports for the pool: the DNS cache, happy eyeballs, tunnels and TLS."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, ssl: ssl_module.SSLContext | bool | None
    ) -> None:
        self.loop = loop
        self._ssl = ssl
        self._ssl_context: ssl_module.SSLContext | None = None
        self._dns: dict[tuple[str, int], tuple[list[AddrInfo], float]] = {}
        self._lookups: dict[tuple[str, int], asyncio.Future[list[AddrInfo]]] = {}

    async def connect(
        self, protocol_factory: Callable[[], _P], key: PoolKey, connect_timeout: float | None
    ) -> tuple[_P, socket.socket]:
        """A protocol connected to ``key``'s origin, and the socket under its transport."""
        origin, proxy = key
        scheme, host, port = origin
        context = self.tls_context() if scheme == "https" else None
        peer = (proxy.host, proxy.port) if proxy is not None else (host, port)
        sock: socket.socket | None = None
        reached = False  # the socket to the proxy (or the origin) connected
        try:
            async with asyncio.timeout(connect_timeout):
                # RFC 8305, as aiohttp's connector does: a name whose first address black-holes
                # (broken IPv6) still connects through the next within the connect timeout.
                # aiohappyeyeballs rather than create_connection(happy_eyeballs_delay=...), whose
                # staggered_race leaks the winning socket when cancelled on Python < 3.12.
                infos = await self._resolve(*peer)
                if len(infos) == 1:
                    sock = await self._connect_socket(infos[0])
                else:
                    sock = await aiohappyeyeballs.start_connection(
                        infos, happy_eyeballs_delay=0.25, interleave=1, loop=self.loop
                    )
                reached = True
                if proxy is not None and context is not None:
                    await self._tunnel(sock, proxy, host, port)
                tunnelled, sock = sock, None  # from here on the transport owns it
                _, protocol = await self.loop.create_connection(
                    protocol_factory,
                    sock=tunnelled,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except BaseException as exc:
            if sock is not None:
                sock.close()
            error = _connect_error(exc, host, port, proxy, reached=reached)
            if error is exc:
                raise
            raise error from exc
        return protocol, tunnelled

    def tls_context(self) -> ssl_module.SSLContext:
        if isinstance(self._ssl, ssl_module.SSLContext):
            return self._ssl
        if self._ssl_context is None:
            context = ssl_module.create_default_context()
            if self._ssl is False:
                context.check_hostname = False
                context.verify_mode = ssl_module.CERT_NONE
            self._ssl_context = context
        return self._ssl_context

    async def _tunnel(self, sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
        """``CONNECT host:port`` through ``proxy`` on the connected ``sock``; returns once the
        proxy answered 2xx (the tunnel is open), else raises what its answer means.

        Only the proxy's own headers go in: Host, User-Agent and Proxy-Authorization, never the
        origin's Authorization.
        """
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        fields = [("Host", target), ("User-Agent", _USER_AGENT)]
        authorization = proxy.authorization
        if authorization is not None:
            fields.append(("Proxy-Authorization", authorization))
        await self.loop.sock_sendall(sock, encode_request("CONNECT", target, fields, None))
        # The head alone is parsed (as a GET's: a CONNECT's 2xx has no body, and the parser
        # refuses CONNECT for that reason); what a refusal's body says is not needed.
        parser = ResponseParser(method="GET")
        received = 0
        extra = b""
        while parser.head is None:
            data = await self.loop.sock_recv(sock, 16 * 1024)
            if not data:
                raise APIConnectionError(
                    f"the proxy {proxy.address} closed the connection instead of answering "
                    f"CONNECT {target}",
                    request_sent=False,
                )
            received += len(data)
            if received > _CONNECT_HEAD_LIMIT:
                raise APIConnectionError(
                    f"the proxy {proxy.address} answered CONNECT with an oversized head",
                    request_sent=False,
                )
            try:
                extra = parser.feed(data)
            except ProtocolError as exc:
                raise APIConnectionError(
                    f"the proxy {proxy.address} answered CONNECT {target} with a malformed "
                    f"response: {exc}",
                    request_sent=False,
                ) from exc
        head = parser.head
        if not 200 <= head.status < 300:
            raise proxy_refused(
                proxy, head.status, head.reason, target=target, headers=dict(head.headers)
            )
        if extra:
            # Nothing may come before our TLS ClientHello: the tunnel cannot be trusted.
            raise APIConnectionError(
                f"the proxy {proxy.address} sent data after opening the tunnel to {target}",
                request_sent=False,
            )

    async def _connect_socket(self, info: AddrInfo) -> socket.socket:
        """A connected socket to one address: no race to run (an IP literal, or a name with one
        address), so none of its machinery is paid for on every connection of a fan-out."""
        family, kind, proto, _, address = info
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await self.loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _resolve(self, host: str, port: int) -> list[AddrInfo]:
        """The addresses of ``host``: an IP literal as is; a name from a cache kept ``_DNS_TTL``
        seconds (as aiohttp's connector does), one lookup at a time per name, so a fan-out of a
        thousand streams costs one ``getaddrinfo`` in the executor, not a thousand."""
        key = (host, port)
        cached = self._dns.get(key)
        if cached is not None and cached[1] > self.loop.time():
            return cached[0]
        literal = _ip_literal(host, port)
        if literal is not None:
            self._dns[key] = (literal, float("inf"))  # parsing it again costs as much as a lookup
            return literal
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._getaddrinfo(host, port))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda done: self._resolved(key, done))
        # Shielded: one caller's cancellation must not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    async def _getaddrinfo(self, host: str, port: int) -> list[AddrInfo]:
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, kind, proto, name, addr) for family, kind, proto, name, addr in infos]

    def _resolved(self, key: tuple[str, int], lookup: asyncio.Future[list[AddrInfo]]) -> None:
        self._lookups.pop(key, None)
        if not lookup.cancelled() and lookup.exception() is None:
            self._dns[key] = (lookup.result(), self.loop.time() + _DNS_TTL)


def _ip_literal(host: str, port: int) -> list[AddrInfo] | None:
    if "%" in host:
        return None  # a scoped IPv6 address needs getaddrinfo for its scope id
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


def _connect_error(
    exc: BaseException, host: str, port: int, proxy: Proxy | None, *, reached: bool
) -> BaseException:
    """What a failed connect raises: ours as is; a timeout or socket error naming the proxy when
    there is one (an unreachable proxy is not an unreachable origin). ``reached``: the socket to
    the proxy (or origin) had connected, so what failed is the tunnel or TLS to the origin."""
    if isinstance(exc, APIConnectionError | APIError):
        return exc
    origin = f"{host}:{port}"
    if proxy is not None:
        origin += f" through the proxy {proxy.address}"
    if isinstance(exc, TimeoutError):
        return APITimeoutError(
            f"timed out connecting to {origin}", phase="connect", request_sent=False
        )
    if isinstance(exc, OSError):
        message = fd_exhaustion_message(exc) or (
            f"connection failed: cannot connect to the proxy {proxy.address}: {exc}"
            if proxy is not None and not reached
            else f"connection failed: cannot connect to {origin}: {exc}"
        )
        return APIConnectionError(message, request_sent=False)
    return exc
