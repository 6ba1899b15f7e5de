"""A local Infernet control plane: the whole API on loopback, with simulated nodes and fault
injection.

``DevServer`` serves three surfaces on one origin, sharing its nodes, scheduler, jobs, faults and
records:

- the documented jobs API (``POST /api/v1/jobs`` with and without ``stream``,
  ``GET /api/v1/jobs/{id}``, ``GET /api/v1/jobs/{id}/stream``, ``GET /api/v1/jobs``,
  ``GET /api/v1/models``) as the API reference describes it: bearer auth, per-token job visibility
  and rate limits (``X-RateLimit-*`` headers, 429 with ``Retry-After``), the API's error bodies,
  both stream dialects, ``: ping`` heartbeats, node drops with re-queue, and the server-side job
  timeout;
- the OpenAI-compatible surface the hosted service serves today (``POST /v1/chat/completions``,
  stream or not, and ``GET /v1/models``; ``server.openai_base_url``): compact JSON, OpenAI chunks
  and ``[DONE]`` (after an error chunk too), OpenAI-shaped errors, no token needed, reservation
  keys (``resale_keys={"ifr_res_…": ["model", ...]}``, ``resale_rps``,
  ``server.set_reservation_state(key, "ended")``);
- the playground chat surface it serves (``POST /api/chat``, ``GET /api/chat/stream/{jobId}``,
  ``GET /api/chat/{jobId}/status``; ``server.chat_url``): typed events (``job`` with no id, then
  ``id:``/``event:`` ``meta``, ``token``, ``done`` or ``error``, no ``[DONE]``), replayed from the
  start on every GET, ``{"error": "<a sentence>"}`` bodies, no token.

Any other path answers Next.js's HTML 404 page (``/api/v1`` keeps its JSON 404).
``anonymous_rate_limit_per_hour=N`` limits ``POST /v1/chat/completions`` and ``POST /api/chat``
per client IP and route, as the hosted limits do (429 without headers). ``hosted=True`` (``serve
--hosted``) behaves like the hosted service today: every ``/api/v1`` route answers the HTML 404,
the anonymous limit defaults to 20 an hour, and a dropped node is not re-queued: the chat stream
sends ``: ping`` until ``chat_stream_max_seconds`` (600). By default a dropped node ends the chat
stream with ``event: error`` and the OpenAI stream with an error chunk, and the job re-queues (a
new GET of the chat stream shows the new attempt).

Answers come from a deterministic local emulation (no model: template text built from the prompt,
stable for a prompt and seed, reported by nodes as engine ``local-emulation``) or, with
``upstream=URL``, from a real OpenAI-compatible or Ollama server.

In a test or a notebook::

    from infernet_async.devserver import DevServer, Fault

    async with DevServer(tokens_per_second=1000, time_to_first_token=0, answer_tokens=8) as server:
        server.base_url   # "http://127.0.0.1:PORT/api/v1"; the token is server.token ("dev-token")
        server.inject(Fault.drop_node(after_tokens=3))  # the next job's node drops after 3 tokens
        server.inject(Fault.http_error(429, retry_after=1))  # the next request gets a 429
        ...  # run the code under test against server.base_url
        record = await server.wait_for_stream_close()
        assert record.closed_by_client and not record.completed

From a shell: ``infernet-async serve --port 8080 --token dev-token`` (prints the three surfaces'
URLs and the token; ``--hosted``, ``--resale-key KEY=model1,model2``, ``--anonymous-limit N``).

Faults (``server.inject(fault, times=1)``; each applies to the next ``times`` things it matches):

- ``Fault.http_error(status, retry_after=None, code=None, message=None, path=None, method=None)``:
  the next request gets ``status`` with the API's error body (429 also gets ``Retry-After``,
  ``X-RateLimit-*`` and ``detail.resetAt``);
- ``Fault.drop_node(after_tokens=None, probability=None)``: the next job attempt's node goes offline
  after ``n`` tokens (or, with a probability, at a seeded random token); the stream gets
  ``node_disconnected`` and the job is re-queued on another node;
- ``Fault.disconnect(after_tokens=0, abort=False)``: the next stream ends without ``[DONE]`` (a
  clean EOF, or with ``abort=True`` a connection closed mid-body);
- ``Fault.malformed_event(after_tokens=0)``: one event with broken JSON, then the stream goes on;
- ``Fault.stall(after_tokens=0, seconds=30)``: silence (no heartbeats either) for ``seconds``;
- ``Fault.slow_drip(byte_delay=0.001, chunk_size=1)``: the next stream written a byte at a time.

``Fault.http_error(429, live_plane=True)`` answers in the hosted plane's current shape (no
``error_message``, no headers) to test a client's fallbacks. On a ``/v1`` or ``/api/chat`` path an
``http_error`` answers in that surface's own body shape; the stream faults shape the OpenAI and
chat streams as they do the jobs API's.

Job and stream faults take ``model=`` to match only one model's jobs, and
``server.inject(fault, job_id=...)`` scripts a fault for one job.
``DevServer(node_drop_probability=p)`` drops nodes at random (seeded) on every attempt;
``server.drop_node(id)`` / ``restore_node(id)`` do it by hand; ``server.configure(...)`` changes
speed, answer length, dialect and heartbeats mid-test.

Records: ``server.requests`` (``RequestRecord``: method, path, query, headers with ``Authorization``
redacted, json, time, status), ``server.streams`` (``StreamRecord``: job_id, path, dialect,
opened_at, closed_at, tokens_sent, closed_by_client, completed, error, fault, and ``surface``:
``"jobs"``, ``"openai"`` or ``"chat"``),
``server.open_streams`` and ``await server.wait_for_stream_close(job_id=None, timeout=5)``.

pytest: add ``pytest_plugins = ["infernet_async.devserver.pytest_plugin"]`` to a ``conftest.py`` for
the ``devserver`` fixture (a fast server per test), ``devserver_env`` (the same, with
``INFERNET_BASE_URL``/``INFERNET_BEARER_TOKEN`` set to it; ``server.env`` holds both) and
``devserver_factory`` (``await factory(**options)``).

Importing this package does not import ``aiohttp.web``; ``DevServer`` loads it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._faults import Fault
from ._records import RequestRecord, StreamRecord
from ._scheduler import DEFAULT_NODES, NodeSpec

if TYPE_CHECKING:
    from ._server import DevServer

__all__ = [
    "DEFAULT_NODES",
    "DevServer",
    "Fault",
    "NodeSpec",
    "RequestRecord",
    "StreamRecord",
]


def __getattr__(name: str) -> Any:
    if name == "DevServer":
        from ._server import DevServer

        return DevServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"DevServer"})
