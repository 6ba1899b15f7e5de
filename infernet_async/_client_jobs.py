"""The jobs API of ``InfernetClient``: run a chat job to its answer (``complete``), submit one,
read it, wait for it, list jobs and models.

Rules: ``complete`` reads its answer through ``InfernetClient.stream``; every other method is one
JSON request through ``_call`` (retries, the move to another surface on a 404 page, the answer's
shape checked), which ``InfernetClient`` implements. Arguments are checked before anything is
sent: job ids before they go into a URL, the request before it is built. A surface without the
route raises ``NotSupportedError``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from pydantic import TypeAdapter

from ._client_lifecycle import ClientLifecycle
from ._config import Timeouts
from ._ids import validate_job_id
from ._job_wait import wait_for_job
from ._stream import TokenStream
from ._surfaces import Call, Surface
from ._surfaces._request import MessageLike, chat_request, job_list_params
from .models import JOB_ADAPTER, JOB_LIST_ADAPTER, MODEL_LIST_ADAPTER, Job, ModelInfo

__all__ = ["JobsAPI"]

_T = TypeVar("_T")
_Build = Callable[[Surface], Call]
_Read = Callable[[Surface, Any], Any]


class JobsAPI(ClientLifecycle):
    """The jobs API half of ``InfernetClient`` (see the module docstring)."""

    timeouts: Timeouts
    # ``InfernetClient.stream``, in ``_client.py`` with the rest of the streaming.
    stream: Callable[..., TokenStream]

    @abc.abstractmethod
    async def _call(self, adapter: TypeAdapter[_T], what: str, build: _Build, read: _Read) -> _T:
        """Send the surface's request for this and validate its answer as ``adapter``'s type."""

    async def complete(
        self,
        *,
        model: str,
        messages: Sequence[MessageLike],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        node_id: str | None = None,
        min_trust_tier: str | None = None,
        **extra: Any,
    ) -> str:
        """Stream a chat job to its end and return the whole answer.

        Nobody sees the tokens before the end, so a node disconnect always follows the re-queued
        job.
        """
        stream = self.stream(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            node_id=node_id,
            min_trust_tier=min_trust_tier,
            on_node_disconnect="restart",
            **extra,
        )
        async with stream:
            return await stream.final_text()

    async def submit(
        self,
        *,
        model: str,
        messages: Sequence[MessageLike],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        node_id: str | None = None,
        min_trust_tier: str | None = None,
        **extra: Any,
    ) -> Job:
        """Submit a chat job without streaming; returns the job (usually ``pending``).

        A failed submission is retried only when the failure shows no job was created (429, 503
        ``no_capacity``, a connection that failed before the request was sent): never a duplicate
        billed job. On the chat surface this is ``POST /api/chat``.

        Raises:
            NotSupportedError: on the OpenAI-compatible surface, which has no jobs to submit.
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
            stream=False,
            extra=extra,
        )
        return await self._call(
            JOB_ADAPTER,
            "job",
            lambda surface: surface.submit_call(body),
            lambda surface, data: surface.read_submitted(data, body),
        )

    async def get_job(self, job_id: str) -> Job:
        """The job's current state and, once completed, its result (on the chat surface, whose
        status route carries no result, read it with ``stream_job(job_id)``).

        Raises:
            NotSupportedError: on the OpenAI-compatible surface, which has no job ids.
        """
        self._ensure_open()
        validate_job_id(job_id)
        return await self._call(
            JOB_ADAPTER,
            "job",
            lambda surface: surface.job_call(job_id),
            lambda surface, data: surface.read_job(data),
        )

    async def wait_job(
        self,
        job_id: str,
        *,
        poll_interval: float = 0.5,
        max_poll_interval: float = 5.0,
        timeout: float | None = None,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    ) -> Job:
        """Poll a job until it completes, backing off from ``poll_interval`` to
        ``max_poll_interval``.

        Args:
            timeout: give up after this many seconds (default ``Timeouts.total``).

        Raises:
            JobTimeoutError: the job failed with ``timeout`` (the server's job time limit).
            JobFailedError: the job failed for another reason.
            APITimeoutError: the job was still running after ``timeout`` seconds (phase ``"wait"``).
        """
        validate_job_id(job_id)
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("need 0 < poll_interval <= max_poll_interval")
        return await wait_for_job(
            self.get_job,
            job_id,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            limit=timeout if timeout is not None else self.timeouts.total,
        )

    async def list_models(self) -> list[ModelInfo]:
        """Models with at least one online node (``/v1/models`` on the OpenAI-compatible and chat
        surfaces, where each has an ``id`` only)."""
        self._ensure_open()
        models = await self._call(
            MODEL_LIST_ADAPTER,
            "model list",
            lambda surface: surface.models_call(),
            lambda surface, data: surface.read_models(data),
        )
        return models.models

    async def list_jobs(
        self,
        *,
        limit: int | None = None,
        status: str | None = None,
        since: datetime | str | None = None,
    ) -> list[Job]:
        """Your recent jobs, newest first (``limit`` at most 100); ``since`` is a datetime or
        ISO-8601 text.

        Raises:
            NotSupportedError: on the chat and OpenAI-compatible surfaces, which list no jobs.
        """
        self._ensure_open()
        params = job_list_params(limit, status, since)
        jobs = await self._call(
            JOB_LIST_ADAPTER,
            "job list",
            lambda surface: surface.list_jobs_call(params),
            lambda surface, data: surface.read_job_list(data),
        )
        return jobs.jobs
