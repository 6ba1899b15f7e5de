"""Reservation (resale) keys of the OpenAI-compatible surface: who holds one, what it may use, and
how fast.

A ``Bearer ifr_res_…`` header names a key; any other ``Authorization`` is not this module's
business (the ``/v1`` routes ignore it). Each key is its own reservation: a set of model ids, a
state (``active`` unless a test says otherwise) and a requests-per-second window. The shared pool
(every key together, ``rps`` × the number of keys) is reported on successful answers, as the
hosted service reports its shared remaining requests; with one window per key it never runs out
first.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from ._ratelimit import WindowCounter

__all__ = ["RESALE_PREFIX", "Grant", "ReservationState", "ResaleBook", "ResaleError"]

RESALE_PREFIX = "ifr_res_"
ReservationState = Literal["active", "upcoming", "ended", "cancelled"]
_STATES: tuple[str, ...] = get_args(ReservationState)
_REFUSALS: dict[str, str] = {
    "upcoming": "This reservation has not started yet",
    "ended": "This reservation has ended",
    "cancelled": "This reservation was cancelled",
}


class ResaleError(Exception):
    """A key refused: ``status``, the reservation error ``code``, a message and headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


@dataclass(eq=False, slots=True)
class _Reservation:
    id: str
    digest: bytes
    models: tuple[str, ...]
    state: ReservationState = "active"


@dataclass(frozen=True, slots=True)
class Grant:
    """A key let through: its reservation's id and models, and the headers of a success."""

    reservation: str
    models: tuple[str, ...]
    remaining: int
    shared_remaining: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Remaining-Requests": str(self.remaining),
            "X-Infernet-Shared-Remaining-Requests": str(self.shared_remaining),
        }

    def check_model(self, model: str) -> None:
        if model not in self.models:
            raise ResaleError(
                400,
                "model_not_reserved",
                f'Model "{model}" is not part of this reservation '
                f"(reserved: {', '.join(self.models) or 'none'})",
            )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ResaleBook:
    """The configured reservation keys and their per-key requests-per-second limit."""

    def __init__(
        self,
        keys: Mapping[str, Sequence[str]] | None,
        rps: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rps < 1:
            raise ValueError("resale_rps must be >= 1")
        self.rps = rps
        self._by_key: dict[str, _Reservation] = {}
        for key, models in (keys or {}).items():
            if not key.startswith(RESALE_PREFIX) or len(key) == len(RESALE_PREFIX):
                raise ValueError(f"resale keys must look like '{RESALE_PREFIX}…', got {key!r}")
            if isinstance(models, str):
                models = (models,)
            reservation_id = "res_" + hashlib.sha256(key.encode()).hexdigest()[:12]
            self._by_key[key] = _Reservation(reservation_id, _digest(key), tuple(models))
        self._per_key = WindowCounter(rps, 1.0, clock)
        self._shared = WindowCounter(rps * max(len(self._by_key), 1), 1.0, clock)

    def set_state(self, key: str, state: ReservationState) -> None:
        if key not in self._by_key:
            raise KeyError(f"unknown resale key {key!r}")
        if state not in _STATES:
            raise ValueError(f"state must be one of {', '.join(_STATES)}, got {state!r}")
        self._by_key[key].state = state

    def _find(self, presented: str) -> _Reservation | None:
        digest = _digest(presented)
        found: _Reservation | None = None
        # Every key compared, in constant time each, whichever matches.
        for reservation in self._by_key.values():
            if hmac.compare_digest(digest, reservation.digest) and found is None:
                found = reservation
        return found

    def authorize(self, header: str | None) -> Grant | None:
        """``None`` when ``header`` is not a resale key (the request is anonymous), a ``Grant``
        when the key may go on (the request is counted), else raises ``ResaleError``."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value.startswith(RESALE_PREFIX):
            return None
        reservation = self._find(value)
        if reservation is None:
            raise ResaleError(401, "invalid_key", "Invalid or revoked reservation key")
        if reservation.state != "active":
            state = reservation.state
            raise ResaleError(403, f"reservation_{state}", _REFUSALS[state])
        mine = self._per_key.hit(reservation.id)
        if not mine.allowed:
            retry_after = mine.retry_after(self._per_key.clock())
            raise ResaleError(
                429,
                "rate_limit_exceeded",
                f"Rate limit exceeded: {self.rps} requests per second for this key",
                {
                    "Retry-After": str(retry_after),
                    "X-Infernet-Limit-Type": "rps",
                    "X-Infernet-Limit-Scope": "key",
                    "X-RateLimit-Limit": str(self.rps),
                    "X-RateLimit-Remaining": "0",
                    "X-Infernet-Reservation": reservation.id,
                },
            )
        shared = self._shared.hit("shared")
        return Grant(reservation.id, reservation.models, mine.remaining, shared.remaining)

    def reset(self) -> None:
        self._per_key.reset()
        self._shared.reset()
