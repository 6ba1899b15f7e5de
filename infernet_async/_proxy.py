"""Which proxy a request goes through, decided without IO: the ``proxy=`` argument, else the
environment's ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``, as curl, requests
and httpx read them.

Rules:

- ``proxy=`` (explicit) is used for every URL, loopback included, and the environment is not read
  (httpx's rule: what the code says wins).
- Otherwise, with ``trust_env`` (the default), the environment is read once, when the client is
  built: ``https_proxy`` for https origins, ``http_proxy`` for http ones, ``all_proxy`` for both
  when the scheme's own is unset. Each in lower case if that is set (even empty, which hides the
  upper-case one, as curl and urllib do), else in upper case; ``HTTP_PROXY`` in upper case is
  ignored when ``REQUEST_METHOD`` is set (a CGI script, where a client's ``Proxy:`` header arrives
  as ``HTTP_PROXY``: "httpoxy"), as urllib ignores it.
- An environment proxy is never used for a loopback host (``localhost``, ``*.localhost``,
  127.0.0.0/8, ``::1``): the embedded control plane keeps working with a proxy set, as Go's
  ``httpproxy`` does. ``NO_PROXY`` (``no_proxy`` first) lists more: ``*`` (everything), host names
  (matching themselves and their subdomains, with or without a leading ``.`` or ``*.``),
  ``host:port``, IP addresses and CIDR ranges (``10.0.0.0/8``, ``[::1]:8080``), separated by commas
  or spaces, compared without case. Names are not resolved: an IP range matches IP literals only.
- Only ``http://`` proxies (the proxy URL's scheme; the origin may be https, tunnelled with
  ``CONNECT``). A value without a scheme is ``http://``, the default port is 80. Credentials come
  from the URL's userinfo (percent-decoded) and travel as ``Proxy-Authorization: Basic``, to the
  proxy only. No ``repr`` or message of ours shows them.

``ProxySettings.select`` is the function the transports call per request (both stacks, so JSON
requests and streams go the same way). Nothing here imports aiohttp or does IO.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ._config import is_loopback_host
from .errors import APIConnectionError, APIError, InfernetError

__all__ = [
    "Proxy",
    "ProxySettings",
    "parse_proxy_url",
    "proxy_refused",
    "resolve_proxies",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Proxy:
    """An ``http://`` forward proxy: where it is, and the ``Proxy-Authorization`` it takes.

    Equal proxies with different credentials are different proxies (connections are not shared
    between them). The ``repr`` never shows the credentials.
    """

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` (an IPv6 address in brackets): what messages name, without credentials."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The proxy's URL without credentials."""
        return f"http://{self.address}"

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value (RFC 7617 Basic, UTF-8), or ``None``."""
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        creds = ", credentials=<set>" if self.username is not None else ""
        return f"Proxy({self.url!r}{creds})"


def parse_proxy_url(value: str, *, source: str = "proxy=") -> Proxy:
    """A proxy URL as a ``Proxy``. ``source`` names where it came from in the error.

    Raises:
        ValueError: not an ``http://`` URL with a host (and a valid port). The message does not
            repeat the value, which may hold a password.
    """
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ValueError(f"{source}: the proxy URL is malformed (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme != "http":
        what = "SOCKS proxies are" if scheme.startswith("socks") else f"{scheme}:// proxies are"
        raise ValueError(
            f"{source}: {what} not supported, only http:// proxies (an https origin is tunnelled "
            "through them with CONNECT)"
        )
    if not host:
        raise ValueError(f"{source}: the proxy URL has no host")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if any(ch in (username or "") + (password or "") for ch in "\r\n\x00"):
        raise ValueError(f"{source}: the proxy credentials contain a line break or NUL")
    if username is not None and ":" in username:
        raise ValueError(f"{source}: the proxy user name contains ':' (RFC 7617 forbids it)")
    return Proxy(host=host.lower(), port=port or 80, username=username, password=password)


@dataclass(frozen=True, slots=True)
class _Unusable:
    """An environment proxy we cannot use: an error when a request would go through it."""

    message: str


@dataclass(frozen=True, slots=True)
class _NoProxy:
    """``NO_PROXY`` parsed: what bypasses the environment's proxies."""

    everything: bool = False
    names: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[tuple[IPNetwork, int | None], ...] = ()

    @classmethod
    def parse(cls, value: str) -> _NoProxy:
        names: list[tuple[str, int | None]] = []
        networks: list[tuple[IPNetwork, int | None]] = []
        for raw in value.replace(",", " ").split():
            entry = raw.strip().lower()
            if entry == "*":
                return cls(everything=True)
            host, port = _split_host_port(entry)
            if not host:
                continue
            try:
                networks.append((ipaddress.ip_network(host, strict=False), port))
                continue
            except ValueError:
                pass
            if host.startswith("*."):
                host = host[2:]
            host = host.lstrip(".").rstrip(".")
            if host:
                names.append((host, port))
        return cls(names=tuple(names), networks=tuple(networks))

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        ip = _ip(host)
        if ip is not None:
            return any(
                (entry_port is None or entry_port == port) and ip in network
                for network, entry_port in self.networks
            )
        return any(
            (entry_port is None or entry_port == port)
            and (host == name or host.endswith("." + name))
            for name, entry_port in self.names
        )


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host[:port]``, ``[v6][:port]``, a bare IPv6 address or a CIDR range."""
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            return "", None
        host, rest = entry[1:end], entry[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        return host, port
    if entry.count(":") == 1:
        host, _, text = entry.partition(":")
        return (host, int(text)) if text.isdigit() else (host, None)
    return entry, None  # a name, an IPv4 address or range, or a bare IPv6 one


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _normal_host(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def _is_loopback(host: str) -> bool:
    ip = _ip(host)
    return ip.is_loopback if ip is not None else is_loopback_host(host)


EnvProxy = Proxy | _Unusable | None


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The proxy choice of one client, fixed when it is built (see the module docstring)."""

    explicit: Proxy | None = None
    http: EnvProxy = None
    https: EnvProxy = None
    no_proxy: _NoProxy = field(default_factory=_NoProxy)

    @property
    def enabled(self) -> bool:
        """Whether any request may go through a proxy."""
        return self.explicit is not None or self.http is not None or self.https is not None

    def select(self, scheme: str, host: str, port: int | None = None) -> Proxy | None:
        """The proxy for a request to ``scheme://host:port``, or ``None`` to connect directly.

        Raises:
            ValueError: the environment names a proxy for this URL that we cannot use (a SOCKS
                one, say); the message says which variable.
        """
        if self.explicit is not None:
            return self.explicit
        entry = self.https if scheme == "https" else self.http
        if entry is None:
            return None
        host = _normal_host(host)
        if port is None:
            port = _DEFAULT_PORTS.get(scheme, 80)
        if _is_loopback(host) or self.no_proxy.matches(host, port):
            return None
        if isinstance(entry, _Unusable):
            raise ValueError(entry.message)
        return entry


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """The variable's (name, value), lower case first; ``None`` when unset or empty."""
    lower = name.lower()
    if lower in environ:
        value, used = environ[lower], lower
    elif name in environ:
        value, used = environ[name], name
    else:
        return None
    value = value.strip()
    return (used, value) if value else None


def _env_proxy(environ: Mapping[str, str], scheme: str) -> EnvProxy:
    found = _env(environ, f"{scheme.upper()}_PROXY")
    if found is not None and found[0] == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
        found = None  # httpoxy: in a CGI script, HTTP_PROXY may be a client's header
    if found is None:
        found = _env(environ, "ALL_PROXY")
    if found is None:
        return None
    name, value = found
    try:
        return parse_proxy_url(value, source=name)
    except ValueError as exc:
        return _Unusable(
            f"{exc}; unset {name}, add the host to NO_PROXY, or pass trust_env=False or proxy="
        )


def resolve_proxies(
    proxy: str | None = None,
    *,
    trust_env: bool = True,
    environ: Mapping[str, str] | None = None,
) -> ProxySettings:
    """The proxy settings for a client: ``proxy`` if given, else the environment's when
    ``trust_env`` (``environ``, default ``os.environ``).

    Raises:
        ValueError: ``proxy`` is not a usable proxy URL.
    """
    if proxy is not None:
        return ProxySettings(explicit=parse_proxy_url(proxy))
    if not trust_env:
        return ProxySettings()
    env = os.environ if environ is None else environ
    found = _env(env, "NO_PROXY")
    return ProxySettings(
        http=_env_proxy(env, "http"),
        https=_env_proxy(env, "https"),
        no_proxy=_NoProxy.parse(found[1]) if found is not None else _NoProxy(),
    )


def proxy_refused(
    proxy: Proxy,
    status: int,
    reason: str,
    *,
    target: str,
    headers: Mapping[str, str] | None = None,
) -> InfernetError:
    """The error for a proxy that answered ``status`` instead of forwarding the request (or
    opening the tunnel) to ``target``.

    407: an ``APIError`` naming the proxy (the credentials are missing or wrong); another 4xx
    (the proxy's policy refuses the host): an ``APIError`` with that status; 5xx (the proxy could
    not reach the origin): an ``APIConnectionError`` that says nothing was sent to the origin, so
    it is retried like a refused connection.
    """
    answer = f"{status} {reason}".strip()
    if status == 407:
        hint = (
            "it refused the credentials in the proxy URL"
            if proxy.username is not None
            else "put its credentials in the proxy URL (http://user:password@host:port)"
        )
        return APIError(
            f"the proxy {proxy.address} requires authentication ({answer}): {hint}",
            status=407,
            headers=headers,
        )
    message = f"the proxy {proxy.address} refused to connect to {target}: {answer}"
    if 400 <= status < 500:
        return APIError(message, status=status, headers=headers)
    return APIConnectionError(message, request_sent=False)
