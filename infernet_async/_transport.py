"""The transport: sends requests to one service origin, with redirects, retries, the rate limiter
and the request hooks.

Rules: this module, ``_session`` and ``_aiohttp_stack`` (imported on first use, so that importing
the package and streaming on our own connections never load aiohttp) are the only ones outside the
devserver that use aiohttp, and no aiohttp exception leaves them (``_transport_errors``). Streams go
over our own connections (``_connection``), JSON requests and a caller's session over aiohttp's.
Every request carries its own timeouts (``_deadlines``). ``Authorization`` goes only to the base
URL's origin, also across redirects, which we follow ourselves. A fan-out's rate limiter comes with
the request (``limiter=``) and governs each of its attempts.

Proxies: each request (each redirect hop) asks ``ProxySettings.select`` for its proxy, and both
stacks go through the one it names: our stream connections (``StreamPool.request(proxy=)``) and
aiohttp's (``proxy=``, the credentials in ``proxy_headers`` for a ``CONNECT``, on the request for a
forwarded plain-http one). A session the caller passed in keeps its own settings.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import TYPE_CHECKING, Any

from yarl import URL

from ._attempt_hooks import AttemptHook
from ._config import RetryPolicy, Secret, Timeouts
from ._deadlines import aiohttp_timeout, socket_timeouts
from ._ids import job_path, validate_job_id
from ._proxy import Proxy, ProxySettings, proxy_refused
from ._response import (
    OpenStream,
    SendListener,
    StreamResponse,
    read_and_release,
    read_capped,
)
from ._retry import Retrier, requested_wait
from ._session import SessionOwner
from ._transport_errors import describe_error, map_transport_errors, parse_error_response
from ._version import __version__
from .errors import APIConnectionError, APIError, RateLimitError
from .hooks import RequestHook, ResponseHook

if TYPE_CHECKING:
    import aiohttp

    from ._ratelimit import RateLimiter
    from ._surfaces import Call

__all__ = [
    "DEFAULT_MAX_ANSWER_BYTES",
    "Transport",
    "job_path",
    "validate_job_id",
]

logger = logging.getLogger("infernet_async")

USER_AGENT = f"infernet-async/{__version__}"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5

# A JSON answer (a job, a page of at most 100 jobs, the models) is far smaller; a body past this is
# refused rather than read into memory whole, whatever the server (or a proxy) sends.
_JSON_BODY_LIMIT = 32 * 1024 * 1024
# The longest answer a stream holds, in UTF-8 bytes (InfernetClient(max_answer_bytes=)): a job
# lasts at most 5 minutes, and no model writes 64 MiB in that time; a server streaming without end
# does.
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


@dataclass(frozen=True, slots=True)
class _Request:
    """One request as the surface asked for it (``call``), the same for each of its attempts.

    ``limiter``: the rate limiter that governs each attempt (a fan-out's), or ``None``.
    """

    call: Call
    url: URL
    stream: bool
    headers: Mapping[str, str] | None = None
    limiter: RateLimiter | None = None


class Transport(SessionOwner):
    """Sends requests to one service origin with retries; streams open here and are read by
    ``TokenStream``.
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: Secret | None,
        timeouts: Timeouts,
        retry: RetryPolicy,
        session: aiohttp.ClientSession | None = None,
        ssl: SSLContext | bool | None = None,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
        max_answer_bytes: int | None = DEFAULT_MAX_ANSWER_BYTES,
        proxies: ProxySettings | None = None,
        on_request: RequestHook | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        super().__init__(session=session, ssl=ssl, max_connections=max_connections)
        self.base_url = base_url
        self._on_request = on_request
        self._on_response = on_response
        # The caller's session keeps its own proxy settings: we pass none to it.
        self._proxies = proxies if proxies is not None and session is None else ProxySettings()
        self.max_answer_bytes = max_answer_bytes
        self._base = URL(base_url)
        self._token = token
        self.timeouts = timeouts
        self.retry = retry
        self._extra_headers = dict(headers or {})

    def url(self, path: str) -> URL:
        # Paths are built by the client from validated, quoted parts; ``encoded=True`` keeps
        # %-escapes as sent.
        return URL(self.base_url + path, encoded=True)

    def proxy_for(self, url: URL) -> Proxy | None:
        """The proxy a request to ``url`` goes through (see ``_proxy``); none on a caller's
        session, which keeps its own settings."""
        if not self._proxies.enabled:
            return None
        try:
            return self._proxies.select(url.scheme, url.raw_host or "", url.port)
        except ValueError as exc:
            raise APIConnectionError(str(exc), request_sent=False) from None

    def _headers(
        self, url: URL, extra: Mapping[str, str] | None, *, auth: bool = True
    ) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        headers.update(self._extra_headers)
        if extra:
            headers.update(extra)
        # ``auth`` False: a route that takes no token (the chat surface's) never sees it.
        if auth and self._token is not None and _origin(url) == _origin(self._base):
            headers["Authorization"] = f"Bearer {self._token.get()}"
        return headers

    async def _send_once(self, request: _Request, on_send: SendListener | None) -> OpenStream:
        """One request, redirects followed by hand; an error status becomes an ``APIError`` (body
        read). Streams go over our own connections unless the session is the caller's.
        ``on_send(True)`` as each request goes out: on our own connections once the pool has given
        one (its wait for a free connection is the client's), on aiohttp's before it is asked.
        """
        call, url, headers, stream = request.call, request.url, request.headers, request.stream
        method, json_body, params, auth = call.method, call.body, call.params, call.auth
        binding = await self.bind()
        native = stream and binding is not None
        session: aiohttp.ClientSession | None = None
        if not native:
            session = binding.http_session() if binding is not None else self._caller_session
        timeout = None if native else aiohttp_timeout(self.timeouts, stream=stream)
        connect_timeout, read_timeout = socket_timeouts(self.timeouts)
        for _ in range(_MAX_REDIRECTS + 1):
            started = time.monotonic()
            proxy = self.proxy_for(url)
            resp: OpenStream
            if native:
                assert binding is not None
                resp = await binding.pool.request(
                    method,
                    url,
                    headers=self._headers(url, headers, auth=auth),
                    json_body=json_body,
                    params=params,
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    on_send=on_send,
                    proxy=proxy,
                )
            else:
                kwargs: dict[str, Any] = {
                    "headers": self._headers(url, headers, auth=auth),
                    "timeout": timeout,
                    "allow_redirects": False,
                }
                if json_body is not None:
                    kwargs["json"] = json_body
                if params:
                    kwargs["params"] = params
                if self._ssl is not None:
                    kwargs["ssl"] = self._ssl
                if proxy is not None:
                    kwargs["proxy"] = proxy.url
                    authorization = proxy.authorization
                    if authorization is not None and url.scheme == "https":
                        # Into the CONNECT only (aiohttp's proxy_auth is deprecated).
                        kwargs["proxy_headers"] = {"Proxy-Authorization": authorization}
                    elif authorization is not None:
                        # A forwarded request carries the proxy's credentials itself.
                        kwargs["headers"]["Proxy-Authorization"] = authorization
                if on_send is not None:
                    on_send(True)
                assert session is not None
                with map_transport_errors(phase="request", proxy=proxy):
                    resp = StreamResponse(await session.request(method, url, **kwargs))
            logger.debug(
                "%s %s -> %s in %.0f ms",
                method,
                url.path,
                resp.status,
                (time.monotonic() - started) * 1000,
            )
            if resp.status == 407 and proxy is not None:
                # The proxy's answer to a plain-http request it would have forwarded: its own
                # error, named as such, not the origin's.
                reason = resp.reason
                resp.close()
                raise proxy_refused(
                    proxy,
                    407,
                    reason or "",
                    target=url.host_port_subcomponent or "",
                    headers=resp.headers,
                )
            if resp.status in _REDIRECT_STATUSES and "Location" in resp.headers:
                await read_and_release(resp)  # the connection serves again
                location = resp.headers["Location"]
                try:
                    target = url.join(URL(location))
                except ValueError:
                    target = None
                if target is None or target.scheme not in ("http", "https") or not target.host:
                    # A hostile or broken Location (bad IPv6 literal, file:, data:...) is the
                    # server's error, not a ValueError out of our own code.
                    raise APIError(
                        f"the server redirected to an unusable URL: {location[:200]!r}",
                        status=resp.status,
                    )
                if resp.status == 303 or (resp.status in (301, 302) and method != "GET"):
                    method, json_body = "GET", None
                if _origin(target) != _origin(self._base):
                    logger.debug("redirect to another origin; Authorization is not sent there")
                url = target
                params = None
                continue
            if resp.status >= 400:
                await self._raise_for_status(resp)
            return resp
        raise APIError(f"more than {_MAX_REDIRECTS} redirects", status=310)

    async def _raise_for_status(self, resp: OpenStream) -> None:
        # A whole error body leaves the connection reusable: a fan-out's 429s cost no sockets.
        raw = await read_and_release(resp)
        raise self.redacted(parse_error_response(resp.status, raw, resp.headers))

    def redact(self, text: str) -> str:
        """``text`` without the client's token, should the server have echoed it."""
        return self._token.redact(text) if self._token is not None else text

    def redacted(self, error: APIError) -> APIError:
        """``error`` with the token taken out of its message and body, wherever the server
        echoed it (a 401 quoting the header, a proxy's page): no message, repr or log line of
        ours shows it."""
        token = self._token
        if token is not None:
            error.message = token.redact(error.message)
            error.body = token.redact(error.body)
            error.args = (error.message,)
        return error

    async def _send_limited(
        self, request: _Request, *, retry: bool, on_send: SendListener | None
    ) -> OpenStream:
        """``_send_once`` under the request's ``limiter`` (a fan-out's), if it has one.

        The limiter waits before the request (pacing, a 429 pause, a model's no_capacity backoff)
        and learns from every answer, errors included (see ``_ratelimit``). ``retry``: this is a
        retry, which waited its own backoff already.
        """
        limiter, json_body = request.limiter, request.call.body
        model: str | None = None
        if limiter is not None:
            # The model a request is for, whichever surface's body it is (the chat surface's is
            # camelCase).
            named = (
                json_body.get("model", json_body.get("modelName"))
                if isinstance(json_body, Mapping)
                else None
            )
            model = named if isinstance(named, str) else None
            await limiter.acquire(model, retry=retry)
        try:
            resp = await self._send_once(request, on_send)
        except APIError as exc:
            quiet_429_wait = request.call.quiet_429_wait
            if (
                quiet_429_wait is not None
                and isinstance(exc, RateLimitError)
                and exc.retry_after is None
            ):
                exc.retry_after = quiet_429_wait
                exc.message += (
                    f" (the server gave no time; its window for this route is {quiet_429_wait:g} s)"
                )
            if limiter is not None:
                wait = exc.retry_after if isinstance(exc, RateLimitError) else None
                limiter.observe(exc.status, exc.headers, exc.body, model=model, retry_after=wait)
            raise
        except BaseException:
            if limiter is not None:
                limiter.release(model)
            raise
        if limiter is not None:
            limiter.observe(resp.status, resp.headers, model=model)
        return resp

    async def _with_retries(
        self, request: _Request, *, read_body: bool = False, on_send: SendListener | None = None
    ) -> tuple[OpenStream, bytes]:
        """Send with retries; with ``read_body`` the body is read inside the retried block too, so
        a GET whose body is cut off is retried like one that failed earlier. ``on_send`` hears
        each attempt go out (True) and each wait before a retry begin (False)."""
        call, url, stream = request.call, request.url, request.stream
        method, params = call.method, call.params
        retries = Retrier.for_requests(self.retry)
        hooked = self._on_request is not None or self._on_response is not None
        while True:
            hook: AttemptHook | None = None
            send_listener = on_send
            if hooked:
                hook = AttemptHook(self, method, url, params, retries.retries + 1, stream, on_send)
                send_listener = hook.sent
            try:
                resp = await self._send_limited(
                    request, retry=retries.retries > 0, on_send=send_listener
                )
                if hook is not None:
                    hook.ended(resp.status, None)
                if not read_body:
                    return resp, b""
                return resp, await read_capped(resp, _JSON_BODY_LIMIT)
            except BaseException as exc:
                if hook is not None and not hook.done:
                    hook.ended(exc.status if isinstance(exc, APIError) else None, exc)
                if not isinstance(exc, (APIError, APIConnectionError)):
                    raise
                if self._closed:
                    raise  # the client closed under the request: nothing to retry on
                decision = retries.decide(method, exc, retry_after=requested_wait(exc))
                if not decision.retry:
                    raise
                logger.info(
                    "%s %s failed (%s); retry %d/%d in %.2f s (%s)",
                    method,
                    url.raw_path,
                    describe_error(exc),
                    retries.retries,
                    retries.limit,
                    decision.delay,
                    decision.reason,
                )
                if on_send is not None:
                    on_send(False)
                await retries.sleep(decision.delay)

    async def request_json(self, call: Call) -> tuple[int, Any]:
        """Send a surface's request (with retries); returns the answer's status and decoded JSON
        body."""
        request = _Request(call, self.url(call.path), stream=False)
        resp, raw = await self._with_retries(request, read_body=True)
        try:
            return resp.status, json.loads(raw)
        except ValueError as exc:
            excerpt = raw[:200].decode("utf-8", errors="replace")
            raise APIError(
                f"the server answered {resp.status} with a body that is not JSON: {excerpt!r}",
                status=resp.status,
            ) from exc

    async def open_stream(
        self,
        call: Call,
        *,
        headers: Mapping[str, str] | None = None,
        on_send: SendListener | None = None,
        limiter: RateLimiter | None = None,
    ) -> OpenStream:
        """Open a surface's event stream (with retries for the opening only); the caller must
        ``close()`` it. ``on_send``: see ``_with_retries``; ``limiter``: see ``_Request``.
        """
        stream_headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        if headers:
            stream_headers.update(headers)
        request = _Request(
            call, self.url(call.path), stream=True, headers=stream_headers, limiter=limiter
        )
        resp, _ = await self._with_retries(request, on_send=on_send)
        return resp
