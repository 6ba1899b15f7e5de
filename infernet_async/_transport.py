"""HTTP over aiohttp: the session, one request with timeouts and redirects, retries, and error
mapping.

Rules: this module and ``_aiohttp_stack`` (which it imports on first use, so that importing the
package and streaming on our own connections never load aiohttp) are the only ones outside the
devserver that use aiohttp, and no aiohttp exception leaves them (``map_transport_errors``). The
session we own is created inside the running loop, at its first JSON request, and rebuilt when that
loop is gone; a session the caller passed in is used as is and never closed by us.
Every request carries its own ``ClientTimeout``. ``Authorization`` goes only to the base URL's
origin, also across redirects, which we follow ourselves. Error bodies are parsed by a function that
never raises.

Proxies: each request (each redirect hop) asks ``ProxySettings.select`` for its proxy, and both
stacks go through the one it names: our stream connections (``StreamPool.request(proxy=)``) and
aiohttp's (``proxy=``, the credentials in ``proxy_headers`` for a ``CONNECT``, on the request for a
forwarded plain-http one). A session the caller passed in keeps its own settings.

One connection budget: ``max_connections`` bounds every socket the client opens. Our pool and the
aiohttp connector we build (``_aiohttp_stack.BudgetConnector``) take their sockets' slots from one
``ConnectionBudget``; neither has a limit of its own, and nothing here writes aiohttp's attributes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from ssl import SSLContext
from typing import TYPE_CHECKING, Any

from yarl import URL

from ._budget import ConnectionBudget
from ._config import RetryPolicy, Secret, Timeouts
from ._connect import fd_exhaustion_message
from ._connection import BodySink
from ._ids import job_path, validate_job_id
from ._native_response import NativeResponse
from ._pool import StreamPool
from ._proxy import Proxy, ProxySettings, proxy_refused
from ._ratelimit import active_limiter
from ._retry import decide_retry, parse_retry_after, server_retry_after
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    InfernetError,
    RateLimitError,
    error_for_response,
)
from .hooks import RequestEvent, RequestHook, ResponseEvent, ResponseHook

if TYPE_CHECKING:
    import aiohttp

    from ._aiohttp_stack import BudgetConnector

__all__ = [
    "DEFAULT_MAX_ANSWER_BYTES",
    "OpenStream",
    "SendListener",
    "StreamResponse",
    "Transport",
    "job_path",
    "map_transport_errors",
    "read_and_release",
    "parse_error_response",
    "validate_job_id",
]

logger = logging.getLogger("infernet_async")

USER_AGENT = f"infernet-async/{__version__}"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
# An error body is for a message; a proxy's 10 MB page is not read whole.
_ERROR_BODY_LIMIT = 64 * 1024
# A JSON answer (a job, a page of at most 100 jobs, the models) is far smaller; a body past this is
# refused rather than read into memory whole, whatever the server (or a proxy) sends.
_JSON_BODY_LIMIT = 32 * 1024 * 1024
# The longest answer a stream holds, in UTF-8 bytes (InfernetClient(max_answer_bytes=)): a job
# lasts at most 5 minutes, and no model writes 64 MiB in that time; a server streaming without end
# does.
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024


@contextmanager
def map_transport_errors(*, phase: str = "request", proxy: Proxy | None = None) -> Iterator[None]:
    """Turn aiohttp and socket errors raised inside the block into
    ``APIConnectionError``/``APITimeoutError`` (a proxy's refusal: see ``proxy_refused``).

    ``phase`` ("request" or "read") says whether the request had certainly been sent already, which
    decides whether a failed POST may be retried (see ``_retry``). ``proxy``: the proxy the request
    went through, named in the errors that are its own.
    """
    read_phase = phase == "read"
    try:
        yield
    except InfernetError:
        raise
    except Exception as exc:
        mapped = _mapped_error(exc, read_phase=read_phase, proxy=proxy)
        if mapped is None:
            raise
        raise mapped from exc


def _mapped_error(exc: Exception, *, read_phase: bool, proxy: Proxy | None) -> InfernetError | None:
    """The error of ours ``exc`` stands for, or ``None`` if it is none we map."""
    if "aiohttp" in sys.modules:
        # Without aiohttp loaded no aiohttp error exists, and none is imported for nothing.
        from ._aiohttp_stack import map_aiohttp_error

        mapped = map_aiohttp_error(exc, read_phase=read_phase, proxy=proxy)
        if mapped is not None:
            return mapped
    if isinstance(exc, TimeoutError):
        # aiohttp's ClientTimeout(total=...) raises a bare asyncio.TimeoutError.
        return APITimeoutError(
            "the request exceeded its total timeout", phase="total", request_sent=None
        )
    if isinstance(exc, OSError):
        message = fd_exhaustion_message(exc) or f"connection error: {exc}"
        return APIConnectionError(message, request_sent=True if read_phase else None)
    return None


def parse_error_response(
    status: int, raw: bytes, headers: Mapping[str, str], *, now: float | None = None
) -> APIError:
    """Build the ``APIError`` for an error response from its raw body; never raises.

    A JSON body with an ``error`` code decides the class; a non-JSON body (a proxy's HTML page)
    gives the status's class with a short excerpt of the text. For 429 the wait is ``Retry-After``,
    else ``X-RateLimit-Reset``, else the body's ``detail.resetAt``.
    """
    try:
        text = raw.decode("utf-8", errors="replace")
    except Exception:  # pragma: no cover - decode with "replace" does not raise; belt and braces
        text = ""
    body: Any = None
    try:
        body = json.loads(text) if text.strip() else None
    except ValueError:
        body = None
    retry_after: float | None = None
    if status in (429, 503):
        try:
            retry_after = server_retry_after(headers, body, now=time.time() if now is None else now)
        except Exception:  # a hostile header must not hide the error itself
            retry_after = None
    try:
        return error_for_response(status, body, text=text, headers=headers, retry_after=retry_after)
    except Exception:  # pragma: no cover - error_for_response is written not to raise
        return APIError(f"HTTP {status}", status=status)


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


class StreamResponse:
    """An open response on aiohttp (JSON requests, or a caller's session), with the interface of
    ``NativeResponse`` (our own connections): ``pump``, ``read_all``, ``read_at_intervals``,
    ``finish``, a synchronous ``close()``; the retries and the stream loop never ask which one
    they hold. Raw chunks come via ``iter_any()``.

    ``close()`` closes the connection (not a keep-alive release: the body was not read to its end),
    so the server sees the disconnect at once and the pool slot is free immediately. It is safe
    after the loop has closed.
    """

    __slots__ = ("_chunks", "_resp", "headers", "reason", "status", "url")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self._chunks = resp.content.iter_any()
        self.status = resp.status
        self.reason = resp.reason
        self.headers: Mapping[str, str] = resp.headers
        self.url = str(resp.url)

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    @property
    def closed(self) -> bool:
        return self._resp.closed

    async def read_chunk(self) -> bytes:
        """The next chunk of body bytes as it arrives; ``b""`` at the end of the body."""
        with map_transport_errors(phase="read"):
            try:
                return await self._chunks.__anext__()
            except StopAsyncIteration:
                return b""

    def read_at_intervals(self, interval: float, *, age: float = 0.0) -> None:
        """Not on a caller's session: aiohttp reads each chunk as it comes."""

    async def pump(self, sink: BodySink) -> bool:
        """Read chunks into ``sink`` until it asks for a wake-up (True) or the body ends
        (False)."""
        while True:
            chunk = await self.read_chunk()
            if not chunk:
                return False
            if sink(chunk):
                return True

    async def read_all(self, limit: int = _ERROR_BODY_LIMIT) -> bytes:
        """Up to ``limit`` bytes of a short body (an error, a redirect, a job object); a body
        cut short still says what it can, as on our own connections."""
        parts: list[bytes] = []
        size = 0
        try:
            while size < limit:
                chunk = await self.read_chunk()
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
        except APIConnectionError:
            pass
        return b"".join(parts)[:limit]

    def close(self) -> None:
        self._resp.close()

    def finish(self) -> None:
        """The stream ended cleanly: give the connection back to the pool if the body is fully
        read.
        """
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()


# A stream's open response: on our own connection (``_connection``), or on a caller's aiohttp
# session.
OpenStream = StreamResponse | NativeResponse
# Told True as each attempt of a request goes out, False as a wait before the next one begins: a
# stream's deadlines run from its request's sending, not from the client's own waits.
SendListener = Callable[[bool], None]


async def read_and_release(resp: OpenStream, limit: int = _ERROR_BODY_LIMIT) -> bytes:
    """Read a short body (up to ``limit`` bytes) and give the connection back to the pool if the
    body ended, as an error, a redirect or a job object is: the next request needs no new socket.
    Cancelled or failing, the connection is closed instead."""
    try:
        raw = await resp.read_all(limit)
    except BaseException:
        resp.close()
        raise
    resp.finish()
    return raw


async def _loop_sentinel(binding: _Binding) -> AsyncIterator[None]:
    # An async generator parked at its yield is closed by the loop's shutdown_asyncgens(), which
    # asyncio.run() and asyncio.Runner (so pytest-asyncio) call before closing the loop: the one
    # hook we get to close the session inside its own loop when the caller never called aclose(). No
    # __del__ scheduling needed.
    try:
        yield
    finally:
        binding.ended = True
        binding.pool.close()
        session = binding.session
        if session is not None and not session.closed:
            await session.close()


class _Binding:
    """What the client owns in one loop: our stream pool and the one connection budget, and
    aiohttp's session (with its connector) once a request needs it: a stream on our connections
    never loads aiohttp."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        budget: ConnectionBudget,
        ssl: SSLContext | bool | None,
    ) -> None:
        self.loop = loop
        self.budget = budget
        self.pool = StreamPool(loop, ssl=ssl, budget=budget)
        self.session: aiohttp.ClientSession | None = None
        self.connector: BudgetConnector | None = None
        self.ended = False  # the sentinel has run: rebuilt at the next request
        self._ssl = ssl
        self.sentinel = _loop_sentinel(self)

    def http_session(self) -> aiohttp.ClientSession:
        """Our aiohttp session in this loop, built (and aiohttp imported) on first use."""
        session = self.session
        if session is None:
            from ._aiohttp_stack import new_session

            session, self.connector = new_session(self.budget, self._ssl)
            self.session = session
            logger.debug("created an aiohttp session for loop %#x", id(self.loop))
        return session


class Transport:
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
        self._ssl = ssl
        self._max_connections = max_connections
        self._extra_headers = dict(headers or {})
        self._caller_session = session
        self._binding: _Binding | None = None
        # Closed for good (the client's aclose()): nothing builds a session again, and a request
        # made after, or a stream's reconnect, fails at once instead of retrying.
        self._closed = False
        # Bindings of other loops that are still open: closed by their own loop's shutdown.
        self._stale: list[_Binding] = []
        if session is not None and session.timeout.total is not None:
            warnings.warn(
                f"the aiohttp session passed to InfernetClient has ClientTimeout(total="
                f"{session.timeout.total}); infernet_async ignores it and sets its own timeouts "
                "per request (Timeouts.total, default 330 s), but the same total will cut your "
                "other long streams on that session: use ClientTimeout(total=None, sock_read=...)",
                UserWarning,
                stacklevel=3,
            )

    # -- session -----------------------------------------------------------------------------------

    @property
    def owns_session(self) -> bool:
        return self._caller_session is None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def has_session(self) -> bool:
        return self._caller_session is not None or self._binding is not None

    async def session(self) -> aiohttp.ClientSession:
        """The aiohttp session to use in the running loop, created (or rebuilt for a new loop) on
        demand."""
        binding = await self.bind()
        if binding is None:
            assert self._caller_session is not None
            return self._caller_session
        return binding.http_session()

    async def bind(self) -> _Binding | None:
        """Our pool and budget for the running loop, created (or rebuilt for a new loop) on demand;
        ``None`` on a caller's session. aiohttp is not loaded here (see ``session``)."""
        if self._closed:
            raise APIConnectionError("the client is closed", request_sent=False)
        if self._caller_session is not None:
            return None
        loop = asyncio.get_running_loop()
        binding = self._binding
        if binding is not None and binding.loop is loop and not binding.ended:
            return binding
        if binding is not None and binding.loop is not loop and not binding.loop.is_closed():
            # That loop still runs (another thread, or a loop not closed yet): its shutdown closes
            # the session.
            self._stale.append(binding)
        self._stale = [b for b in self._stale if not b.loop.is_closed()]
        # One budget for both stacks: max_connections bounds every socket the client opens.
        binding = _Binding(loop, ConnectionBudget(loop, self._max_connections), self._ssl)
        self._binding = binding
        await anext(binding.sentinel)
        return binding

    async def aclose(self) -> None:
        """Close the session we own in this loop, for good; a caller's session is left alone.
        Idempotent."""
        self._closed = True
        binding, self._binding = self._binding, None
        if binding is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is a coroutine, so a loop runs
            running = None
        if binding.loop is running:
            binding.budget.closed = True
            binding.pool.close()
            try:
                if binding.session is not None:
                    await binding.session.close()
            finally:
                # Finishing the sentinel here keeps it out of the loop's shutdown list.
                await asyncio.shield(_close_sentinel(binding.sentinel))
        elif not binding.loop.is_closed():
            self._stale.append(binding)

    # -- requests ----------------------------------------------------------------------------------

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

    def _client_timeout(self, *, stream: bool) -> aiohttp.ClientTimeout:
        import aiohttp  # loaded already: only a request on an aiohttp session asks

        t = self.timeouts
        # Streams: no aiohttp total (our own deadline covers the whole stream, and aiohttp's default
        # 300 s equals the server's job limit); sock_read is the idle timeout, which heartbeats
        # reset.
        return aiohttp.ClientTimeout(
            total=None if stream else t.total,
            sock_connect=t.connect,
            sock_read=t.read,
        )

    async def _send_once(
        self,
        method: str,
        url: URL,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool,
        on_send: SendListener | None = None,
        auth: bool = True,
    ) -> OpenStream:
        """One request, redirects followed by hand; an error status becomes an ``APIError`` (body
        read). Streams go over our own connections unless the session is the caller's.
        ``on_send(True)`` as each request goes out: on our own connections once the pool has given
        one (its wait for a free connection is the client's), on aiohttp's before it is asked.
        """
        binding = await self.bind()
        native = stream and binding is not None
        session: aiohttp.ClientSession | None = None
        if not native:
            session = binding.http_session() if binding is not None else self._caller_session
        timeout = None if native else self._client_timeout(stream=stream)
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
                    connect_timeout=self.timeouts.connect,
                    read_timeout=self.timeouts.read,
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
        self,
        method: str,
        url: URL,
        *,
        json_body: Any,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        stream: bool,
        retry: bool,
        on_send: SendListener | None = None,
        auth: bool = True,
        quiet_429_wait: float | None = None,
    ) -> OpenStream:
        """``_send_once`` under the rate limiter of the current fan-out worker, if there is one.

        The limiter waits before the request (pacing, a 429 pause, a model's no_capacity backoff)
        and learns from every answer, errors included (see ``_ratelimit``). ``quiet_429_wait``:
        how long a 429 that names no time means on this route (see ``Call``).
        """
        limiter = active_limiter()
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
            resp = await self._send_once(
                method,
                url,
                json_body=json_body,
                params=params,
                headers=headers,
                stream=stream,
                on_send=on_send,
                auth=auth,
            )
        except APIError as exc:
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

    def ensure_connection_limit(self, limit: int) -> int:
        """Let the pool hold at least ``limit`` connections; returns the pool's limit now.

        A fan-out of ``concurrency`` N calls this so the pool never caps it below N (its own
        capacity limiter bounds the sockets). A caller's session is left as it is.
        """
        if self._caller_session is not None:
            connector = self._caller_session.connector
            return connector.limit if connector is not None else limit
        self._max_connections = max(self._max_connections, limit)
        binding = self._binding
        if binding is not None:
            # One budget for both stacks, so growing it grows what aiohttp may open too.
            binding.budget.set_limit(max(binding.budget.limit, self._max_connections))
        return self._max_connections

    async def _with_retries(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool,
        read_body: bool = False,
        on_send: SendListener | None = None,
        auth: bool = True,
        quiet_429_wait: float | None = None,
    ) -> tuple[OpenStream, bytes]:
        """Send with retries; with ``read_body`` the body is read inside the retried block too, so
        a GET whose body is cut off is retried like one that failed earlier. ``on_send`` hears
        each attempt go out (True) and each wait before a retry begin (False)."""
        url = self.url(path)
        attempt = 0
        hooked = self._on_request is not None or self._on_response is not None
        while True:
            hook: _AttemptHook | None = None
            send_listener = on_send
            if hooked:
                hook = _AttemptHook(self, method, url, params, attempt + 1, stream, on_send)
                send_listener = hook.sent
            try:
                resp = await self._send_limited(
                    method,
                    url,
                    json_body=json_body,
                    params=params,
                    headers=headers,
                    stream=stream,
                    retry=attempt > 0,
                    on_send=send_listener,
                    auth=auth,
                    quiet_429_wait=quiet_429_wait,
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
                attempt += 1
                hint: float | None = None
                if isinstance(exc, RateLimitError):
                    hint = exc.retry_after
                elif isinstance(exc, APIError) and exc.status == 503:
                    # Only Retry-After: X-RateLimit-Reset rides on every response and dates the end
                    # of the rate-limit window, which says nothing about when a node frees up.
                    hint = parse_retry_after(exc.headers.get("Retry-After"), now=time.time())
                decision = decide_retry(
                    method, exc, attempt=attempt, policy=self.retry, retry_after=hint
                )
                if not decision.retry:
                    raise
                logger.info(
                    "%s %s failed (%s); retry %d/%d in %.2f s (%s)",
                    method,
                    path,
                    _describe(exc),
                    attempt,
                    self.retry.max_retries,
                    decision.delay,
                    decision.reason,
                )
                if on_send is not None:
                    on_send(False)
                await (self.retry.sleep or asyncio.sleep)(decision.delay)

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        auth: bool = True,
        quiet_429_wait: float | None = None,
    ) -> tuple[int, Any]:
        """Send a request (with retries); returns the answer's status and decoded JSON body.
        ``auth`` and ``quiet_429_wait``: see ``_surfaces.Call``."""
        resp, raw = await self._with_retries(
            method,
            path,
            json_body=json_body,
            params=params,
            stream=False,
            read_body=True,
            auth=auth,
            quiet_429_wait=quiet_429_wait,
        )
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
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        on_send: SendListener | None = None,
        auth: bool = True,
        quiet_429_wait: float | None = None,
    ) -> OpenStream:
        """Open an event stream (with retries for the opening only); the caller must ``close()``
        it. ``on_send``: see ``_with_retries``; ``auth``: whether the token goes along.
        """
        stream_headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        if headers:
            stream_headers.update(headers)
        resp, _ = await self._with_retries(
            method,
            path,
            json_body=json_body,
            headers=stream_headers,
            stream=True,
            on_send=on_send,
            auth=auth,
            quiet_429_wait=quiet_429_wait,
        )
        return resp


class _AttemptHook:
    """One attempt's calls to the client's hooks (see ``hooks``): ``on_request`` at once,
    ``on_response`` once, at the response's head or the attempt's failure. A hook's exception is
    logged, never raised."""

    __slots__ = (
        "_listener",
        "_method",
        "_on_response",
        "_sent",
        "_stream",
        "_url",
        "attempt",
        "done",
    )

    def __init__(
        self,
        transport: Transport,
        method: str,
        url: URL,
        params: Mapping[str, str] | None,
        attempt: int,
        stream: bool,
        listener: SendListener | None,
    ) -> None:
        if params:
            url = url.update_query(params)
        # No userinfo, and the token redacted should a query carry it.
        self._url = transport.redact(str(url.with_user(None)))
        self._method = method
        self._stream = stream
        self._listener = listener
        self._on_response = transport._on_response
        self._sent: float | None = None
        self.attempt = attempt
        self.done = False
        on_request = transport._on_request
        if on_request is not None:
            _call_hook(on_request, RequestEvent(method, self._url, attempt, stream))

    def sent(self, sending: bool) -> None:
        """The ``SendListener`` of the attempt: notes when its request first goes out, and
        passes every call on to the caller's listener."""
        if sending and self._sent is None:
            self._sent = time.monotonic()
        if self._listener is not None:
            self._listener(sending)

    def ended(self, status: int | None, exc: BaseException | None) -> None:
        self.done = True
        on_response = self._on_response
        if on_response is None:
            return
        elapsed = time.monotonic() - self._sent if self._sent is not None else 0.0
        event = ResponseEvent(
            self._method,
            self._url,
            self.attempt,
            self._stream,
            status,
            elapsed,
            type(exc).__name__ if exc is not None else None,
        )
        _call_hook(on_response, event)


def _call_hook(hook: Callable[[Any], None], event: RequestEvent | ResponseEvent) -> None:
    try:
        hook(event)
    except Exception:
        logger.warning("the %s hook %r raised; ignored", type(event).__name__, hook, exc_info=True)


async def read_capped(resp: OpenStream, limit: int) -> bytes:
    """The whole body, or an ``APIError`` (not retried) as soon as it grows past ``limit`` bytes;
    the connection is given back when the body ended, closed otherwise."""
    parts: list[bytes] = []
    size = 0

    def collect(data: bytes) -> bool:
        nonlocal size
        parts.append(data)
        size += len(data)
        return True  # back to the loop after each piece, to check the size

    try:
        while await resp.pump(collect) and size <= limit:
            pass
    except BaseException:
        resp.close()
        raise
    if size > limit:
        resp.close()  # the rest is never read: the connection cannot be reused
        raise APIError(
            f"the server's answer is larger than {limit} bytes; refusing to read it",
            status=resp.status,
        )
    resp.finish()
    return b"".join(parts)


async def _close_sentinel(sentinel: AsyncIterator[None]) -> None:
    aclose = getattr(sentinel, "aclose", None)
    if aclose is not None:
        await aclose()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"{exc.status} {exc.code or ''}".strip()
    return type(exc).__name__
