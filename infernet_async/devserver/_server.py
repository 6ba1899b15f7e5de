"""``DevServer``: the embedded local control plane as an async resource.

It owns the aiohttp runner and site and the ``Plane`` the app's handlers share (the job store, the
scheduler, the fault book, the rate limiters, the resale keys and the records), and exposes the
knobs tests turn. Lifecycle: ``start()`` binds (port 0 picks a free port), ``aclose()`` ends every
stream and job task and releases the port; both are idempotent, and a closed server cannot be
started again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Final, Literal

from aiohttp import web

from .._resource import AsyncResource
from ._controls import PlaneControls
from ._faults import FaultBook
from ._generator import LocalGenerator
from ._jobs import JobStore
from ._ratelimit import AnonymousLimiter, RateLimiter
from ._records import Recorder
from ._resale import ResaleBook
from ._scheduler import DEFAULT_NODES, NodeSpec, Scheduler
from ._sse_writer import NEWLINES, Dialect
from ._state import Plane, token_digests
from ._upstream import UpstreamBackend, UpstreamKind

__all__ = ["DevServer"]


class _Unset:
    pass


_UNSET: Final = _Unset()
HOSTED_ANONYMOUS_LIMIT: Final = 20
# The listen backlog, as uvicorn's and gunicorn's: a fan-out opens its connections all at once, and
# aiohttp's 128 would drop the SYNs past it (the client's kernel sends them again a second later).
LISTEN_BACKLOG: Final = 2048

_State = Literal["unopened", "started", "closed"]


class DevServer(PlaneControls, AsyncResource):
    """A local Infernet control plane on loopback, with simulated nodes, faults and records.

    One origin serves three surfaces over the same nodes, jobs, faults and records: the documented
    jobs API under ``/api/v1`` (bearer tokens), the OpenAI-compatible ``/v1`` routes and the
    playground chat routes under ``/api/chat`` (no token), the latter two as the hosted service
    writes them today.

    Args:
        host, port: where to listen; ``port=0`` picks a free port (read it from ``.url``).
        tokens: the accepted bearer tokens; jobs are visible only to the token that submitted them.
        dialect: ``"data"`` (the guide's ``data:``-only stream) or ``"typed"`` (the live plane's
            ``event:``/``id:`` stream).
        heartbeat_interval: seconds of silence before a ``: ping`` comment; ``None`` disables them.
        job_timeout: seconds after submission before an unfinished job fails with ``timeout``.
        nodes: the simulated provider nodes; ``None`` gives a default pool serving ``qwen2.5:14b``,
            ``llama3.1:8b`` and ``mistral:7b``.
        tokens_per_second, time_to_first_token: override every node's speed (use a high speed and
            ``0`` in tests).
        answer_tokens: make every local answer exactly this many tokens (before ``max_tokens``).
        rate_limit_per_minute, rate_limit_per_hour: per-token request limits.
        seed: makes answers, job ids and probabilistic faults reproducible.
        max_body_bytes: request bodies above this get 413 with a ``bad_request`` body.
        history_limit: finished jobs kept (oldest evicted first).
        node_drop_probability: chance that any attempt's node drops mid-answer (chaos mode).
        node_reconnect_delay: seconds before a node dropped by a fault comes back online.
        max_pending: queued jobs beyond this get ``no_capacity``.
        newline: the stream's line ending, ``"\\n"``, ``"\\r\\n"`` or ``"\\r"``.
        upstream: relay generation to an OpenAI-compatible (``.../v1``) or Ollama server.
        upstream_kind, upstream_api_key, upstream_model: how to talk to it.
        record_limit: how many request and stream records to keep.
        hosted: behave like the hosted service today: every ``/api/v1`` route answers the HTML 404
            page, the anonymous limit defaults to 20 an hour, and a dropped node strands its job
            (no re-queue: the chat stream sends ``: ping`` until ``chat_stream_max_seconds``; the
            job fails ``expired: …`` at ``job_timeout``).
        anonymous_rate_limit_per_hour: requests an hour per client IP on ``POST
            /v1/chat/completions`` and on ``POST /api/chat`` (each its own count) without a resale
            key; ``None`` is unlimited (the default; 20 with ``hosted``).
        resale_keys: reservation keys (``ifr_res_…``) and the model ids each reserves, for the
            ``/v1`` routes; ``set_reservation_state`` changes a key's state.
        resale_rps: requests per second each resale key may make (429 with ``Retry-After`` past
            it).
        chat_stream_max_seconds: how long a ``/api/chat/stream`` (and a ``/v1`` completion) may
            run before the server gives up on it (600 on the hosted service).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Sequence[str] | str = ("dev-token",),
        dialect: Dialect = "data",
        heartbeat_interval: float | None = 15.0,
        job_timeout: float = 300.0,
        nodes: Sequence[NodeSpec] | None = None,
        tokens_per_second: float | None = None,
        time_to_first_token: float | None = None,
        answer_tokens: int | None = None,
        rate_limit_per_minute: int = 60,
        rate_limit_per_hour: int = 1000,
        seed: int = 0,
        max_body_bytes: int = 1024 * 1024,
        history_limit: int = 1000,
        node_drop_probability: float = 0.0,
        node_reconnect_delay: float = 0.1,
        max_pending: int = 10_000,
        newline: str = "\n",
        upstream: str | None = None,
        upstream_kind: UpstreamKind = "auto",
        upstream_api_key: str | None = None,
        upstream_model: str | None = None,
        record_limit: int = 10_000,
        hosted: bool = False,
        anonymous_rate_limit_per_hour: int | None | _Unset = _UNSET,
        resale_keys: Mapping[str, Sequence[str]] | None = None,
        resale_rps: int = 10,
        chat_stream_max_seconds: float = 600.0,
    ) -> None:
        token_list = [tokens] if isinstance(tokens, str) else list(tokens)
        if not token_list or not all(token_list):
            raise ValueError("tokens must hold at least one non-empty token")
        if dialect not in ("data", "typed"):
            raise ValueError(f"unknown dialect {dialect!r}: expected 'data' or 'typed'")
        if newline not in NEWLINES:
            raise ValueError("newline must be one of '\\n', '\\r\\n', '\\r'")
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0 (or None to disable heartbeats)")
        if job_timeout <= 0:
            raise ValueError("job_timeout must be > 0")
        if tokens_per_second is not None and tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be > 0")
        if answer_tokens is not None and answer_tokens < 1:
            raise ValueError("answer_tokens must be >= 1")
        if not 0.0 <= node_drop_probability <= 1.0:
            raise ValueError("node_drop_probability must be within [0, 1]")
        if chat_stream_max_seconds <= 0:
            raise ValueError("chat_stream_max_seconds must be > 0")
        if isinstance(anonymous_rate_limit_per_hour, _Unset):
            anonymous_rate_limit_per_hour = HOSTED_ANONYMOUS_LIMIT if hosted else None
        self.host = host
        self.port = port
        self.tokens: tuple[str, ...] = tuple(token_list)
        self.hosted = hosted
        self.max_body_bytes = max_body_bytes
        self.seed = seed
        self.upstream = upstream
        self._upstream_kind: UpstreamKind = upstream_kind
        self._upstream_api_key = upstream_api_key
        self._upstream_model = upstream_model
        self._node_specs = list(nodes) if nodes is not None else None
        self._generator = LocalGenerator(seed=seed, answer_tokens=answer_tokens)
        store = JobStore(seed=seed, history_limit=history_limit)
        faults = FaultBook()
        self._plane = Plane(
            store=store,
            scheduler=Scheduler(
                store,
                faults,
                self._generator,
                nodes=self._node_specs or DEFAULT_NODES,
                seed=seed,
                job_timeout=job_timeout,
                tokens_per_second=tokens_per_second,
                time_to_first_token=time_to_first_token,
                node_drop_probability=node_drop_probability,
                node_reconnect_delay=node_reconnect_delay,
                max_pending=max_pending,
                hosted=hosted,
            ),
            faults=faults,
            recorder=Recorder(record_limit),
            limiter=RateLimiter(rate_limit_per_minute, rate_limit_per_hour),
            anonymous=AnonymousLimiter(anonymous_rate_limit_per_hour),
            resale=ResaleBook(resale_keys, resale_rps),
            token_digests=token_digests(token_list),
            max_body_bytes=max_body_bytes,
            dialect=dialect,
            newline=newline,
            heartbeat_interval=heartbeat_interval,
            hosted=hosted,
            chat_stream_max_seconds=chat_stream_max_seconds,
        )
        self._upstream_backend: UpstreamBackend | None = None
        self._runner: web.AppRunner | None = None
        self._state: _State = "unopened"

    # -- settings the plane holds ---------------------------------------------------------------

    @property
    def dialect(self) -> Dialect:
        """The jobs API's stream dialect, ``"data"`` or ``"typed"``."""
        return self._plane.dialect

    @dialect.setter
    def dialect(self, value: Dialect) -> None:
        self.configure(dialect=value)

    @property
    def heartbeat_interval(self) -> float | None:
        """Seconds of silence before a ``: ping``, or ``None``."""
        return self._plane.heartbeat_interval

    @heartbeat_interval.setter
    def heartbeat_interval(self, value: float | None) -> None:
        self.configure(heartbeat_interval=value)

    @property
    def newline(self) -> str:
        """The jobs API streams' line ending."""
        return self._plane.newline

    @property
    def anonymous_rate_limit_per_hour(self) -> int | None:
        return self._plane.anonymous.per_hour

    @property
    def chat_stream_max_seconds(self) -> float:
        return self._plane.chat_stream_max_seconds

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> DevServer:
        await self.start()
        return self

    async def start(self) -> None:
        """Bind and start serving; a no-op when already started.

        Raises:
            RuntimeError: the server was closed (a DevServer runs once).
            OSError: the address is in use.
        """
        if self._state == "started":
            return
        if self._state == "closed":
            raise RuntimeError("this DevServer was closed; create a new one")
        try:
            if self.upstream is not None:
                await self._connect_upstream(self.upstream)
            from ._app import build_app

            self._runner = web.AppRunner(
                build_app(self._plane),
                handler_cancellation=True,
                shutdown_timeout=1.0,
                access_log=None,
            )
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, backlog=LISTEN_BACKLOG)
            await site.start()
        except BaseException:
            await self._release()
            self._state = "closed"
            raise
        address = self._runner.addresses[0]
        self.port = int(address[1])
        self._state = "started"

    async def _connect_upstream(self, url: str) -> None:
        self._upstream_backend = backend = UpstreamBackend(
            url,
            kind=self._upstream_kind,
            api_key=self._upstream_api_key,
            model=self._upstream_model,
        )
        nodes = self._node_specs
        if nodes is None:
            models = await backend.served_models() or tuple(
                m for n in DEFAULT_NODES for m in n.models
            )
            nodes = [
                NodeSpec("node_upstream", tuple(dict.fromkeys(models)), "upstream", 50.0, 0.0, 8)
            ]
        self._plane.scheduler.use_backend(backend, nodes)

    async def aclose(self) -> None:
        """Stop serving: ends open streams and job tasks and frees the port. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        await self._release()

    async def _release(self) -> None:
        self._plane.closing = True
        await self._plane.scheduler.aclose()
        tasks = [t for t in self._plane.stream_tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._upstream_backend is not None:
            await self._upstream_backend.aclose()
            self._upstream_backend = None

    # -- addresses --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The origin, ``http://127.0.0.1:PORT``."""
        if self._state != "started":
            raise RuntimeError("the DevServer is not running: use 'async with' or await start()")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, ``url + "/api/v1"`` (what ``INFERNET_BASE_URL`` should hold)."""
        return self.url + "/api/v1"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI-compatible base URL, ``url + "/v1"`` (an OpenAI client's ``base_url``)."""
        return self.url + "/v1"

    @property
    def chat_url(self) -> str:
        """The playground chat route, ``url + "/api/chat"``."""
        return self.url + "/api/chat"

    @property
    def token(self) -> str:
        """The first accepted bearer token."""
        return self.tokens[0]

    @property
    def env(self) -> dict[str, str]:
        """``INFERNET_BASE_URL`` and ``INFERNET_BEARER_TOKEN`` pointing at this server."""
        return {"INFERNET_BASE_URL": self.base_url, "INFERNET_BEARER_TOKEN": self.token}

    def configure(
        self,
        *,
        tokens_per_second: float | None | _Unset = _UNSET,
        time_to_first_token: float | None | _Unset = _UNSET,
        answer_tokens: int | None | _Unset = _UNSET,
        dialect: Dialect | _Unset = _UNSET,
        heartbeat_interval: float | None | _Unset = _UNSET,
        node_drop_probability: float | _Unset = _UNSET,
    ) -> None:
        """Change generation speed, answer length, dialect or heartbeats for the jobs and streams to
        come."""
        scheduler = self._plane.scheduler
        if not isinstance(tokens_per_second, _Unset):
            scheduler.tokens_per_second = tokens_per_second
        if not isinstance(time_to_first_token, _Unset):
            scheduler.time_to_first_token = time_to_first_token
        if not isinstance(answer_tokens, _Unset):
            self._generator.answer_tokens = answer_tokens
        if not isinstance(dialect, _Unset):
            if dialect not in ("data", "typed"):
                raise ValueError(f"unknown dialect {dialect!r}")
            self._plane.dialect = dialect
        if not isinstance(heartbeat_interval, _Unset):
            self._plane.heartbeat_interval = heartbeat_interval
        if not isinstance(node_drop_probability, _Unset):
            scheduler.node_drop_probability = node_drop_probability

    def __repr__(self) -> str:
        where = self.url if self._state == "started" else self._state
        return f"<DevServer {where} dialect={self.dialect}>"
