"""``PlaneControls``: what a test does to a running control plane and reads back from it.

Faults, records, jobs, nodes, rate limits and reservations: each a thin call on the ``Plane`` the
app's handlers share. ``DevServer`` (``_server.py``) is one, with the lifecycle, the addresses and
the settings added.
"""

from __future__ import annotations

from typing import Any

from ._faults import Fault
from ._records import RequestRecord, StreamRecord
from ._resale import ReservationState
from ._state import Plane

__all__ = ["PlaneControls"]


class PlaneControls:
    """The knobs and records of a ``Plane`` (``DevServer`` documents them)."""

    _plane: Plane

    # -- faults -----------------------------------------------------------------------------------

    def inject(self, fault: Fault, *, times: int = 1, job_id: str | None = None) -> None:
        """Queue ``fault`` for the next ``times`` requests, job attempts or streams it matches.

        With ``job_id``, the fault strikes only that job: its next attempts (``drop_node``), its
        next streams (``GET /jobs/{id}/stream``), or requests whose path names it (``http_error``).
        """
        self._plane.faults.inject(fault, times, job_id)

    def clear_faults(self) -> None:
        self._plane.faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        return self._plane.faults.pending

    # -- records ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received (newest last), Authorization values redacted."""
        return list(self._plane.recorder.requests)

    @property
    def streams(self) -> list[StreamRecord]:
        """Every event stream served (newest last), open or closed."""
        return list(self._plane.recorder.streams)

    @property
    def open_streams(self) -> int:
        """How many event streams are open right now."""
        return self._plane.recorder.open_streams

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
        return await self._plane.recorder.wait_for_stream_close(job_id, timeout)

    def clear_records(self) -> None:
        self._plane.recorder.requests.clear()
        self._plane.recorder.streams.clear()

    # -- jobs and nodes --------------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any] | None:
        """A job's API object plus ``attempts`` (how many times it started on a node), or
        ``None``."""
        job = self._plane.store.get(job_id)
        if job is None:
            return None
        return {**job.to_json(), "attempts": job.attempts}

    @property
    def jobs_in_memory(self) -> int:
        """Jobs the store holds (unfinished ones plus the bounded finished history)."""
        return len(self._plane.store)

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """Each node's id, name, models, online flag, running job ids, capacity and speed."""
        return self._plane.scheduler.node_status()

    def drop_node(self, node_id: str, *, reconnect_after: float | None = None) -> None:
        """Take a node offline now (its streams get ``node_disconnected``, its jobs re-queue)."""
        self._plane.scheduler.drop_node(node_id, reconnect_after=reconnect_after)

    def restore_node(self, node_id: str) -> None:
        """Bring a node back online."""
        self._plane.scheduler.restore_node(node_id)

    def reset_rate_limits(self) -> None:
        """Forget every count: the tokens', the anonymous clients' and the resale keys'."""
        self._plane.limiter.reset()
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
