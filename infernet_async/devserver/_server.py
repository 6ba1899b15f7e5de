"""``DevServer``: the embedded local control plane as an async resource.

It owns the aiohttp runner and site and the ``Plane`` the app's handlers share (the job store, the
scheduler, the fault book, the rate limiters, the resale keys and the records), and exposes the
knobs tests turn. Lifecycle: ``start()`` binds (port 0 picks a free
port),
``aclose()`` ends every stream and job task and releases the port; both are idempotent, and a closed
server cannot be started again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web

from .._resource import AsyncResource
from ._faults import Fault, FaultBook
from ._generator import LocalGenerator
from ._jobs import JobStore, iso
from ._ratelimit import AnonymousLimiter, RateLimiter
from ._records import Recorder, RequestRecord, StreamRecord
from ._resale import ResaleBook, ReservationState
from ._scheduler import DEFAULT_NODES, NodeSpec, Scheduler
from ._sse_writer import NEWLINES, Dialect
from ._state import Plane
from ._upstream import UpstreamBackend, UpstreamKind

if TYPE_CHECKING:
    import aiohttp

__all__ = ["DevServer"]


class _Unset:
    pass


_UNSET: Final = _Unset()
HOSTED_ANONYMOUS_LIMIT: Final = 20
# The listen backlog, as uvicorn's and gunicorn's: a fan-out opens its connections all at once, and
# aiohttp's 128 would drop the SYNs past it (the client's kernel sends them again a second later).
LISTEN_BACKLOG: Final = 2048

_State = Literal["unopened", "started", "closed"]


class DevServer(AsyncResource):
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
        # Digests, so every comparison is between equal-length values and leaks no token length.
        self._token_digests = [hashlib.sha256(t.encode()).digest() for t in token_list]
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
        self._scheduler_options: dict[str, Any] = {
            "seed": seed,
            "job_timeout": job_timeout,
            "tokens_per_second": tokens_per_second,
            "time_to_first_token": time_to_first_token,
            "node_drop_probability": node_drop_probability,
            "node_reconnect_delay": node_reconnect_delay,
            "max_pending": max_pending,
            "hosted": hosted,
        }
        self._plane = Plane(
            store=store,
            scheduler=Scheduler(
                store,
                faults,
                self._generator,
                nodes=self._node_specs or DEFAULT_NODES,
                **self._scheduler_options,
            ),
            faults=faults,
            recorder=Recorder(record_limit),
            limiter=RateLimiter(rate_limit_per_minute, rate_limit_per_hour),
            anonymous=AnonymousLimiter(anonymous_rate_limit_per_hour),
            resale=ResaleBook(resale_keys, resale_rps),
            dialect=dialect,
            newline=newline,
            heartbeat_interval=heartbeat_interval,
            hosted=hosted,
            chat_stream_max_seconds=chat_stream_max_seconds,
        )
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._state: _State = "unopened"

    # -- the shared state, as the handlers see it --------------------------------------------------

    @property
    def _store(self) -> JobStore:
        return self._plane.store

    @property
    def _faults(self) -> FaultBook:
        return self._plane.faults

    @property
    def _recorder(self) -> Recorder:
        return self._plane.recorder

    @property
    def _limiter(self) -> RateLimiter:
        return self._plane.limiter

    @property
    def _scheduler(self) -> Scheduler:
        return self._plane.scheduler

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

    # -- lifecycle
    # ----------------------------------------------------------------------------------

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
                build_app(self), handler_cancellation=True, shutdown_timeout=1.0, access_log=None
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
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)
        )
        backend = UpstreamBackend(
            url,
            self._session,
            kind=self._upstream_kind,
            api_key=self._upstream_api_key,
            model=self._upstream_model,
        )
        nodes = self._node_specs
        if nodes is None:
            try:
                async with asyncio.timeout(5):
                    names = await backend.list_models()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                names = []
            models = tuple(names) or tuple(m for n in DEFAULT_NODES for m in n.models)
            nodes = [
                NodeSpec("node_upstream", tuple(dict.fromkeys(models)), "upstream", 50.0, 0.0, 8)
            ]
        self._plane.scheduler = Scheduler(
            self._store, self._faults, backend, nodes=nodes, **self._scheduler_options
        )

    async def aclose(self) -> None:
        """Stop serving: ends open streams and job tasks and frees the port. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        await self._release()

    async def _release(self) -> None:
        self._plane.closing = True
        await self._scheduler.aclose()
        tasks = [t for t in self._plane.stream_tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

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

    # -- faults -----------------------------------------------------------------------------------

    def inject(self, fault: Fault, *, times: int = 1, job_id: str | None = None) -> None:
        """Queue ``fault`` for the next ``times`` requests, job attempts or streams it matches.

        With ``job_id``, the fault strikes only that job: its next attempts (``drop_node``), its
        next streams (``GET /jobs/{id}/stream``), or requests whose path names it (``http_error``).
        """
        self._faults.inject(fault, times, job_id)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        return self._faults.pending

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
        scheduler = self._scheduler
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

    def _fault_response(self, fault: Fault) -> web.Response:
        if fault.live_plane:
            live: dict[str, Any] = {"error": fault.message or "Rate limit exceeded"}
            if fault.status == 429:
                live["detail"] = {"resetAt": iso(time.time() + (fault.retry_after or 60))}
            return web.json_response(live, status=fault.status)
        body: dict[str, Any] = {
            "error": fault.code,
            "error_message": fault.message or f"Injected fault: HTTP {fault.status} {fault.code}",
        }
        headers: dict[str, str] = {}
        retry_after = fault.retry_after
        if fault.status == 429 and retry_after is None:
            retry_after = 1
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if fault.status == 429:
            reset = time.time() + (retry_after or 1)
            body["detail"] = {"resetAt": iso(reset)}
            headers["X-RateLimit-Limit"] = str(self._limiter.per_minute)
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = str(int(reset + 0.999))
        return web.json_response(body, status=fault.status, headers=headers)

    # -- auth and records -------------------------------------------------------------------------

    def _authenticate(self, header: str | None) -> int | None:
        """The index of the presented token, or ``None``; compares every token in constant time."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        # aiohttp decodes header bytes with surrogateescape: encode them back the same way, or a
        # token that is not UTF-8 raises here and the request gets a 500 instead of a 401.
        presented = hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).digest()
        found: int | None = None
        for index, digest in enumerate(self._token_digests):
            if hmac.compare_digest(presented, digest) and found is None:
                found = index
        return found

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received (newest last), Authorization values redacted."""
        return list(self._recorder.requests)

    @property
    def streams(self) -> list[StreamRecord]:
        """Every event stream served (newest last), open or closed."""
        return list(self._recorder.streams)

    @property
    def open_streams(self) -> int:
        """How many event streams are open right now."""
        return self._recorder.open_streams

    async def wait_for_stream_close(
        self,
        job_id: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 (tests expect a timeout argument, as documented)
    ) -> StreamRecord:
        """Wait until a stream (of ``job_id``, or any) is closed and return its record.

        If a matching stream is open, waits for the oldest one; otherwise returns the newest closed
        one, or waits for one to open and close.

        Raises:
            TimeoutError: nothing matching closed within ``timeout`` seconds.
        """
        return await self._recorder.wait_for_stream_close(job_id, timeout)

    def clear_records(self) -> None:
        self._recorder.requests.clear()
        self._recorder.streams.clear()

    # -- jobs and nodes
    # -----------------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any] | None:
        """A job's API object plus ``attempts`` (how many times it started on a node), or
        ``None``."""
        job = self._store.get(job_id)
        if job is None:
            return None
        return {**job.to_json(), "attempts": job.attempts}

    @property
    def jobs_in_memory(self) -> int:
        """Jobs the store holds (unfinished ones plus the bounded finished history)."""
        return len(self._store)

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """Each node's id, name, models, online flag, running job ids, capacity and speed."""
        return self._scheduler.node_status()

    def drop_node(self, node_id: str, *, reconnect_after: float | None = None) -> None:
        """Take a node offline now (its streams get ``node_disconnected``, its jobs re-queue)."""
        self._scheduler.drop_node(node_id, reconnect_after=reconnect_after)

    def restore_node(self, node_id: str) -> None:
        """Bring a node back online."""
        self._scheduler.restore_node(node_id)

    def reset_rate_limits(self) -> None:
        """Forget every count: the tokens', the anonymous clients' and the resale keys'."""
        self._limiter.reset()
        self._plane.anonymous.reset()
        self._plane.resale.reset()

    def set_reservation_state(self, key: str, state: ReservationState) -> None:
        """Set a resale key's reservation ``"active"``, ``"upcoming"``, ``"ended"`` or
        ``"cancelled"`` (the last three answer 403 ``reservation_<state>``).

        Raises:
            KeyError: ``key`` is not one of ``resale_keys``.
            ValueError: an unknown state.
        """
        self._plane.resale.set_state(key, state)

    def __repr__(self) -> str:
        where = self.url if self._state == "started" else self._state
        return f"<DevServer {where} dialect={self.dialect}>"
