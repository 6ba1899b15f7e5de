"""``InfernetClient``: construction, the streams (``stream``, ``stream_job``), the fan-out (``map``,
``gather``), and ``_call``, the one path of every JSON request.

The rest of the client has rooms of its own: ``_client_options`` resolves and checks the
constructor's arguments, ``_client_lifecycle`` is the ``UNOPENED`` → ``OPENED`` → ``CLOSED``
state machine, ``_client_jobs`` the jobs API (``complete``, ``submit``, ``get_job``, ``wait_job``,
the lists). Nothing here touches the network before a running loop asks for it. The token lives in
a ``Secret``: no ``repr``, log line or exception of ours shows it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from ._client_jobs import JobsAPI
from ._client_options import resolve_client_options
from ._config import RetryPolicy, Timeouts
from ._fanout import (
    DEFAULT_READ_INTERVAL,
    BatchOutcome,
    FanOut,
    OutcomeCallback,
    Requests,
    gather,
    stream_job_runner,
)
from ._ids import validate_job_id
from ._pacer import Pacer
from ._ratelimit import RateLimiter, RateLimitState
from ._retry import policy_backoff
from ._stream import NodeDisconnectPolicy, TokenStream
from ._surfaces import ApiName, Call, Surface
from ._surfaces._request import MessageLike, chat_request
from ._transport import DEFAULT_MAX_ANSWER_BYTES, Transport
from ._wrong_shape import shape_problems
from .errors import APIError, NotFoundError, NotSupportedError, SurfaceNotServedError
from .hooks import RequestHook, ResponseHook

if TYPE_CHECKING:
    import aiohttp

__all__ = ["InfernetClient"]

_T = TypeVar("_T")


class InfernetClient(JobsAPI):
    """An asyncio client for the Infernet Protocol inference API.

    Args:
        base_url: the service origin, default ``$INFERNET_BASE_URL`` or
            ``https://infernetprotocol.com``; each API surface adds its own paths. A URL ending in
            ``/api/v1`` (the documented API's root) or ``/v1`` (the OpenAI-compatible one) names
            the same origin.
        token: the bearer token, default ``$INFERNET_BEARER_TOKEN``: an account token for the
            documented API, or a resale key ``ifr_res_…`` for the OpenAI-compatible surface. The
            keyless chat surface never receives it.
        api: the API surface to speak: ``"jobs"`` (the documented API of the streaming guide,
            ``/api/v1``), ``"openai"`` (``/v1/chat/completions``) or ``"chat"`` (``/api/chat``
            and its stream); default ``$INFERNET_API``. Left unset, the client finds it: it starts
            on ``jobs`` (``openai`` for a ``base_url`` ending in ``/v1``), and the first time a
            route answers a 404 page (no such route: the hosted service answers ``/api/v1`` so
            today) it sends that request again to ``chat``, then ``openai`` (``openai`` first for
            a resale key), and keeps the first surface that answers as an API. That costs one
            request the server does not rate-limit, once per client; the move is logged at DEBUG
            and ``client.api`` tells the surface in use.
        session: an ``aiohttp.ClientSession`` of yours to send every request with, streams
            included; it is never closed by the client, and it keeps its own proxy settings
            (its ``trust_env``, or a ``proxy=`` per request of yours): ``proxy`` and ``trust_env``
            here do not apply to it. Without one, the client creates a session for its JSON
            requests and reads streams over HTTP/1.1 connections of its own, which cost far less
            CPU per token.
        timeouts: connect, idle read, first token, stall and total timeouts (see ``Timeouts``).
        retry: retry counts and backoff (see ``RetryPolicy``).
        ssl: an ``ssl.SSLContext`` for custom CAs or client certificates; ``False`` disables
            verification and needs ``allow_insecure=True``.
        allow_insecure: allow sending the token over plain ``http://`` to a non-loopback host (and
            ``ssl=False``).
        max_connections: the most connections (sockets) the client has open at once, streams and
            other requests together, idle keep-alive ones included (a fan-out raises it to its
            ``concurrency``); a request that finds none free closes an idle one or waits for one.
            A request made while the client's own streams hold every connection waits for one
            of them to end.
        headers: extra headers for every request.
        max_answer_bytes: the longest answer a stream may hold, in UTF-8 bytes (default 64 MiB,
            far past any model's output); past it the stream raises ``AnswerTooLargeError`` with
            the answer so far, so a server streaming without end cannot exhaust memory: a stream
            holds about its answer's UTF-8 size (twice that while ``text`` is read), whatever the
            token sizes. ``None``: no limit.
        proxy: an ``http://[user:password@]host[:port]`` forward proxy for every request, JSON
            and streams (an https origin is tunnelled through it with ``CONNECT``; the
            credentials go to the proxy only, as ``Proxy-Authorization``). It wins over the
            environment. Default: the environment's, read when the client is built.
        trust_env: read ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either
            case, lower case first) when ``proxy`` is not given, as curl, requests and httpx do;
            loopback hosts never go through them. ``False``: connect directly unless ``proxy``
            says otherwise.
        on_request: called with a ``RequestEvent`` (method, URL without userinfo, attempt) as
            each attempt of each request starts, retries included, JSON requests and streams,
            on the client's connections or on ``session``.
        on_response: called once per attempt with a ``ResponseEvent``: its status (``None``
            when no response came), the seconds from sending to the response's head, and the
            error's class name if the attempt failed. Both hooks are synchronous and run on the
            event loop, so they must be quick; an exception in one is logged and ignored. They
            never see the token. See ``infernet_async.hooks``.

    Raises:
        ValueError: a malformed base URL or ``api``, a token that would travel unencrypted
            without ``allow_insecure``, a ``proxy`` that is not an ``http://`` URL (or given with
            ``session``), or an environment proxy for the base URL that cannot be used (SOCKS).
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        api: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        ssl: SSLContext | bool | None = None,
        allow_insecure: bool = False,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
        max_answer_bytes: int | None = DEFAULT_MAX_ANSWER_BYTES,
        proxy: str | None = None,
        trust_env: bool = True,
        on_request: RequestHook | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        options = resolve_client_options(
            base_url,
            token,
            api=api,
            environ=os.environ,
            has_session=session is not None,
            ssl=ssl,
            allow_insecure=allow_insecure,
            max_connections=max_connections,
            headers=headers,
            max_answer_bytes=max_answer_bytes,
            proxy=proxy,
            trust_env=trust_env,
        )
        self.base_url = options.base_url
        self._has_token = options.token is not None
        self._api = options.api_choice()
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self.retry = retry if retry is not None else RetryPolicy()
        super().__init__(
            Transport(
                base_url=self.base_url,
                token=options.token,
                timeouts=self.timeouts,
                retry=self.retry,
                session=session,
                ssl=ssl,
                max_connections=max_connections,
                headers=headers,
                max_answer_bytes=max_answer_bytes,
                proxies=options.proxies,
                on_request=on_request,
                on_response=on_response,
            )
        )
        # Shared by every worker of every fan-out of this client: one 429 pauses them all. Its
        # no_capacity backoff follows the client's retry policy.
        self.rate_limiter = RateLimiter(
            RateLimitState(backoff=policy_backoff(self.retry)),
            # A pause past what the retry policy waits (the anonymous tier's hour) is not slept
            # through: the fan-out's jobs end rate limited, saying until when, none of them sent.
            longest_wait=self.retry.max_retry_after,
        )

    def __repr__(self) -> str:
        token = "set" if self._has_token else "none"
        state = self._state.value
        return (
            f"InfernetClient(base_url={self.base_url!r}, api={self.api!r}, token=<{token}>, "
            f"state={state})"
        )

    @property
    def api(self) -> ApiName:
        """The API surface in use: ``"jobs"``, ``"openai"`` or ``"chat"``. With ``api=`` left
        unset it may change once, when the server shows it does not serve this one (see the
        class docstring); ``api_settled`` says whether that can still happen."""
        return self._api.name

    @property
    def api_settled(self) -> bool:
        """True once the surface is fixed: given by the caller, or answered as an API."""
        return self._api.settled

    # -- streaming ---------------------------------------------------------------------------------

    def stream(
        self,
        *,
        model: str,
        messages: Sequence[MessageLike],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        node_id: str | None = None,
        min_trust_tier: str | None = None,
        on_node_disconnect: NodeDisconnectPolicy = "raise",
        reconnect: bool = False,
        rate_limiter: RateLimiter | None = None,
        **extra: Any,
    ) -> TokenStream:
        """Submit a chat job with ``stream: true`` and return its ``TokenStream``.

        The request is sent on ``async with`` or on the first iteration, not here. On the jobs
        API ``extra`` fields go into the request body as they are (for parameters newer than this
        SDK); the other surfaces take only the fields they read (see ``NotSupportedError``).

        Args:
            node_id: pin the job to a node (``providerId`` on the chat surface; the
                OpenAI-compatible surface cannot).
            min_trust_tier: ``"public"``, ``"verified"`` or ``"trusted"``: the least trusted node
                that may serve the job (chat and OpenAI-compatible surfaces).
            on_node_disconnect: ``"raise"`` (``NodeDisconnectedError`` with the partial text once
                tokens were delivered) or ``"restart"`` (follow the re-queued job; ``events()``
                yields ``Restart``).
            reconnect: after a dropped connection, replay the job's stream and skip what was
                delivered, instead of raising ``IncompleteStreamError``. The job is never submitted
                twice. The OpenAI-compatible surface has no job stream to replay: there a dropped
                connection always raises.
            rate_limiter: governs every request of the stream (its opening, its reconnects):
                ``map()`` and ``gather()`` pass ``self.rate_limiter`` so that their jobs pace
                together. ``None`` (the default): the requests are not held.

        Raises:
            ValueError: invalid parameters (checked here, before anything is sent);
                ``NotSupportedError`` for one the surface would ignore (with ``api`` unset, at
                the first request, once the surface is known).
        """
        self._ensure_open()
        body = chat_request(
            model,
            messages,
            max_tokens,
            temperature,
            top_p,
            node_id,
            min_trust_tier,
            stream=True,
            extra=extra,
        )
        if self._api.settled:
            self._api.surface.stream_call(body)  # refused here, not when it would be sent
        return self._track(
            TokenStream(
                self._transport,
                self._api,
                request=body,
                on_node_disconnect=on_node_disconnect,
                reconnect=reconnect,
                rate_limiter=rate_limiter,
            )
        )

    def stream_job(
        self,
        job_id: str,
        *,
        on_node_disconnect: NodeDisconnectPolicy = "raise",
        reconnect: bool = True,
        rate_limiter: RateLimiter | None = None,
    ) -> TokenStream:
        """Stream a submitted job's tokens (``GET /api/v1/jobs/{id}/stream``, or
        ``GET /api/chat/stream/{id}`` on the chat surface).

        After a dropped connection it reconnects (up to ``RetryPolicy.max_stream_restarts`` times),
        sends ``Last-Event-ID``, and skips the replayed tokens that match the text already
        delivered (the live control plane replays a job's stream from its start); a replay that
        differs (the job ran again and said something else) raises ``IncompleteStreamError``.
        ``rate_limiter``: as for ``stream()``.

        Raises:
            NotSupportedError: on the OpenAI-compatible surface, which has no job ids.
        """
        self._ensure_open()
        validate_job_id(job_id)
        if self._api.settled:
            self._api.surface.job_stream_call(job_id)
        return self._track(
            TokenStream(
                self._transport,
                self._api,
                job_id=job_id,
                on_node_disconnect=on_node_disconnect,
                reconnect=reconnect,
                rate_limiter=rate_limiter,
            )
        )

    # -- fan-out -----------------------------------------------------------------------------------

    def map(
        self,
        requests: Requests,
        *,
        concurrency: int = 8,
        max_attempts: int = 3,
        on_outcome: OutcomeCallback | None = None,
        read_interval: float = DEFAULT_READ_INTERVAL,
        rate: float | None = None,
        burst: int = 1,
        **stream_options: Any,
    ) -> FanOut:
        """Stream many ``BatchRequest``s, at most ``concurrency`` at once; outcomes as they end.

        ``async with client.map(requests, concurrency=32) as outcomes:`` then ``async for outcome
        in outcomes``. Requests (an iterable or async iterable of any length) are pulled only when
        a slot is free; every job's requests go through ``rate_limiter``; the connection pool
        grows to ``concurrency``. A failed job is an outcome; leaving the block cancels the rest
        (their partial texts are then in ``FanOut.cancelled``). ``stream_options`` go to
        ``stream()`` (default: follow a re-queued job, replay a dropped connection). Once a job's
        tokens flow, its socket is read at most every ``read_interval`` seconds, many tokens a
        read (see ``TokenStream.final_text``; 0 reads each chunk as it comes). See ``FanOut`` and
        ``stream_job_runner``.

        Pacing: by default the jobs go as fast as the server's budget allows (``X-RateLimit-*``:
        what is left goes at once; a spent budget waits for the window). ``rate`` caps the
        submissions at that many a second (``rate=100 / 60`` for 100 a minute), ``burst`` of them
        back to back.
        """
        self._ensure_open()
        pacer = Pacer(rate, burst=burst) if rate is not None else None
        if rate is None and burst != 1:
            raise ValueError("burst goes with rate")
        return FanOut(
            stream_job_runner(
                self,
                max_attempts=max_attempts,
                stream_options=stream_options,
                read_interval=read_interval,
                pacer=pacer,
                rate_limiter=self.rate_limiter,
            ),
            requests,
            concurrency=concurrency,
            on_outcome=on_outcome,
            connection_limit=self._transport.ensure_connection_limit,
        )

    async def gather(
        self,
        requests: Requests,
        *,
        concurrency: int = 8,
        max_attempts: int = 3,
        on_outcome: OutcomeCallback | None = None,
        read_interval: float = DEFAULT_READ_INTERVAL,
        rate: float | None = None,
        burst: int = 1,
        **stream_options: Any,
    ) -> list[BatchOutcome]:
        """Like ``map()``, to the end: the outcomes in input order. Failed jobs do not raise.

        If the call is cancelled, every running job is cancelled at once and ``on_outcome``
        receives each one's ``cancelled`` outcome with its partial text.
        """
        fan_out = self.map(
            requests,
            concurrency=concurrency,
            max_attempts=max_attempts,
            on_outcome=on_outcome,
            read_interval=read_interval,
            rate=rate,
            burst=burst,
            **stream_options,
        )
        return await gather(fan_out)

    # -- helpers -----------------------------------------------------------------------------------

    async def _call(
        self,
        adapter: TypeAdapter[_T],
        what: str,
        build: Callable[[Surface], Call],
        read: Callable[[Surface, Any], Any],
    ) -> _T:
        """Send the surface's request for this (with retries) and validate its JSON answer, read
        into the documented API's shape, as ``adapter``'s type.

        A 404 page from a surface the client has not settled on moves it to the next surface,
        which gets the same request (see the class docstring). A success answer whose body is not
        JSON, or JSON of the wrong shape (an error object with a 200 included), is an
        ``APIError`` with the answer's status: never a bare ``ValueError``, a pydantic
        ``ValidationError`` or an empty list.
        """
        surface = self._api.surface
        first: SurfaceNotServedError | None = None
        while True:
            try:
                call = build(surface)
            except NotSupportedError as exc:
                if first is None:
                    raise
                # Moved here from a surface the server does not serve, and this one cannot do it.
                raise SurfaceNotServedError(
                    f"{first.message}; and {exc.message}", api=first.api, headers=first.headers
                ) from exc
            try:
                status, data = await self._transport.request_json(call)
            except NotFoundError as exc:
                if exc.body is not None:
                    raise
                moved = self._api.not_served(surface, call.path, exc)
                if first is None:
                    first = SurfaceNotServedError(
                        f"{self.base_url} does not serve {surface.title} (a 404 page on "
                        f"{call.path})",
                        api=surface.name,
                        headers=exc.headers,
                    )
                surface = moved
                continue
            self._api.settle(surface)
            break
        try:
            return adapter.validate_python(read(surface, data))
        except ValidationError as exc:
            # ``from None``: pydantic's own message quotes the offending values, and a body of the
            # wrong shape may be an echo of the request, bearer token included. The message names
            # the fields and the JSON types found instead; the body itself stays on ``.body``.
            raise APIError(
                f"the server answered {status} with a {what} of the wrong shape: "
                f"{shape_problems(exc, data)}",
                status=status,
                body=data,
            ) from None
