"""Waiting for a job to end by polling its state, with a backoff and a deadline.

Rules: the interval grows by half each poll, from ``poll_interval`` up to ``max_poll_interval``.
A sleep that would pass the deadline is cut short to end on it, and one more poll follows before
giving up, so a job that completes just in time is still seen. A failed job is an error
(``JobTimeoutError`` for the server's time limit, else ``JobFailedError``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .errors import APITimeoutError, JobFailedError, JobTimeoutError
from .models import Job

__all__ = ["wait_for_job"]


async def wait_for_job(
    get_job: Callable[[str], Awaitable[Job]],
    job_id: str,
    *,
    poll_interval: float,
    max_poll_interval: float,
    limit: float | None,
) -> Job:
    """Poll ``get_job(job_id)`` until the job completes, for at most ``limit`` seconds.

    Raises:
        JobTimeoutError: the job failed with ``timeout`` (the server's job time limit).
        JobFailedError: the job failed for another reason.
        APITimeoutError: the job was still running after ``limit`` seconds (phase ``"wait"``).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + limit if limit is not None else None
    interval = poll_interval
    # Set once a sleep has been cut short to end at the deadline: the poll after it is the last,
    # even if the timer fired a clock tick early.
    last_poll = False
    while True:
        job = await get_job(job_id)
        if job.status == "completed":
            return job
        if job.status == "failed":
            cls = JobTimeoutError if job.error == "timeout" else JobFailedError
            raise cls(
                job.error_message or f"job {job.id} failed: {job.error}",
                job_id=job.id,
                code=job.error,
                job=job,
            )
        delay = interval
        if deadline is not None:
            now = loop.time()
            if last_poll or now >= deadline:
                # Only after a poll at or past the deadline: giving up when the next sleep
                # would overrun it quit up to max_poll_interval early.
                raise APITimeoutError(
                    f"job {job_id} still {job.status} after {now - start:.2f} s "
                    f"(timeout {limit} s)",
                    job_id=job_id,
                    phase="wait",
                )
            if now + delay >= deadline:
                delay = deadline - now
                last_poll = True
        await asyncio.sleep(delay)
        interval = min(interval * 1.5, max_poll_interval)
