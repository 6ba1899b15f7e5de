"""The ``InfernetClient`` constructor's options, resolved from the arguments and the environment.

Pure: no IO, no session, no loop. Every mistake is a ``ValueError`` raised here, where the caller
makes it, never at the first request: a base URL or ``api`` that is not one, a token that would
travel unencrypted (``InsecureTransportError``), ``ssl=False`` without ``allow_insecure``, bad
limits or headers, a ``proxy`` with a session of the caller's, an environment proxy that cannot be
used for the base URL. The checks run in a fixed order, so the same mistakes give the same error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ssl import SSLContext
from urllib.parse import urlsplit

from ._config import Secret, is_loopback_host, resolve_base_url, resolve_token
from ._proxy import ProxySettings, resolve_proxies
from ._surfaces import ApiChoice, ApiName, is_resale_key, resolve_api
from .errors import InsecureTransportError

__all__ = ["ClientOptions", "resolve_client_options"]


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the constructor's arguments and the environment come to, checked."""

    base_url: str
    token: Secret | None
    # The surface the caller fixed (``api=`` or ``$INFERNET_API``), else None: find it, starting
    # on ``start_api``.
    api: ApiName | None
    start_api: ApiName
    resale_key: bool
    proxies: ProxySettings

    def api_choice(self) -> ApiChoice:
        """A new client's surface choice (``ApiChoice`` changes as the server answers)."""
        return ApiChoice(
            self.api, start=self.start_api, resale_key=self.resale_key, origin=self.base_url
        )


def resolve_client_options(
    base_url: str | None,
    token: str | None,
    *,
    api: str | None,
    environ: Mapping[str, str],
    has_session: bool,
    ssl: SSLContext | bool | None,
    allow_insecure: bool,
    max_connections: int,
    headers: Mapping[str, str] | None,
    max_answer_bytes: int | None,
    proxy: str | None,
    trust_env: bool,
) -> ClientOptions:
    """Resolve and check the constructor's options (see ``InfernetClient`` for each).

    Raises:
        InsecureTransportError: a token for plain ``http://`` to a non-loopback host without
            ``allow_insecure``.
        ValueError: any other option that is not valid (see the module docstring).
    """
    resolved_url, root = resolve_base_url(base_url)
    chosen = resolve_api(api, environ)
    secret = resolve_token(token)
    parts = urlsplit(resolved_url)
    if (
        secret is not None
        and parts.scheme == "http"
        and not is_loopback_host(parts.hostname)
        and not allow_insecure
    ):
        raise InsecureTransportError(parts.hostname)
    if ssl is False and not allow_insecure:
        raise ValueError("ssl=False disables certificate checks; it needs allow_insecure=True")
    if max_connections < 1:
        raise ValueError("max_connections must be >= 1")
    if max_answer_bytes is not None and max_answer_bytes < 1:
        raise ValueError("max_answer_bytes must be >= 1, or None for no limit")
    if headers and any(k.lower() == "authorization" for k in headers):
        raise ValueError("pass the token as token=, not as an Authorization header")
    if headers and any(
        ch in text for k, v in headers.items() for text in (k, v) for ch in "\r\n\x00"
    ):
        # aiohttp would refuse it too, but only at the first request and with its own error:
        # refuse it where the mistake is made, as for the token.
        raise ValueError("a header name or value contains a line break or NUL")
    if proxy is not None and has_session:
        raise ValueError(
            "proxy= applies to the client's own connections; a session of yours keeps its own "
            "proxy settings (pass proxy= to its requests, or build it with trust_env=True)"
        )
    proxies = resolve_proxies(proxy, trust_env=trust_env and not has_session, environ=environ)
    # An environment proxy that cannot be used for the base URL (SOCKS, say) is an error here,
    # not at the first request.
    proxies.select(parts.scheme, parts.hostname or "", parts.port)
    return ClientOptions(
        base_url=resolved_url,
        token=secret,
        api=chosen,
        start_api="openai" if root == "/v1" else "jobs",
        resale_key=secret is not None and is_resale_key(secret.get()),
        proxies=proxies,
    )
