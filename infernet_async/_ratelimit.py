"""One rate limiter shared by every request of a client, so that workers pace together.

Rules (the control plane allows 60 requests a minute per token by default):
1. Learn the budget before fanning out: until a first answer arrives, at most ``burst`` requests
   are in flight (after a 429, one).
2. A budget, not a speed: while ``X-RateLimit-Remaining`` (less the requests in flight) allows,
   requests go at once, bounded only by the caller's concurrency; once it is spent, every request
   waits for the window to turn (``X-RateLimit-Reset``), then the new window's budget goes at
   once. Requests sent but not yet answered count against the budget, so a stale header never
   oversends, and at most a quarter of what an answer left is in flight unanswered, so clients
   sharing a token (each doing the same) rarely overrun it together (a simulation of two
   clients on one token in the tests: at most 3 429s in five windows). A cap of the caller's
   own is a ``Pacer`` (``gather(rate=, burst=)``).
3. One 429 pauses every request of the client until the time the server gave: ``Retry-After``,
   else ``X-RateLimit-Reset``, else the body's ``detail.resetAt`` (all the live plane sends), else
   the backoff.
4. ``no_capacity`` pauses only that model, with exponential backoff; then one request probes the
   model and the others follow once it succeeds, so a model coming back is not stampeded. A
   request for a paused model is refused at once (``NoCapacityError``, never sent) rather than
   held: a fan-out job waiting on a model that stays down would hold its slot and starve the jobs
   of the models that work, while refused it takes its retries and ends.

``RateLimitState`` is the decision logic: pure, with injected clocks. ``RateLimiter`` adds the thin
waiting part, on asyncio futures (anyio's cancellation reaches them as it reaches any await). The
limiter governs the requests it is passed with: the fan-out gives the client's to every job's
stream (``stream(rate_limiter=)``), which hands it to the transport with each request; the
transport calls ``acquire()`` before each of them, and ``observe()`` with the response (or
``release()`` when no response came back). Requests made without one are not delayed.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping

from ._server_wait import header, number, reset_wall_time, server_retry_after
from .errors import NoCapacityError, RateLimitError

__all__ = [
    "RateLimitState",
    "RateLimiter",
    "default_backoff",
]


# Reset is whole seconds; waiting a little past it avoids arriving a hair before the window turns.
_DEFAULT_RESET_MARGIN = 0.25
# The part of what an answer says is left that may be in flight, unanswered (see _budget_delay).
_UNANSWERED_SHARE = 4
# The most clients on one budget the limiter assumes: its share never drops below a sixteenth.
_MAX_SHARERS = 16


def default_backoff(attempt: int) -> float:
    """The documented ``min(1 s * 2^(attempt-1), 30 s)``, with up to 25 % jitter off the top."""
    base = min(2.0 ** (attempt - 1), 30.0)
    return base * (0.75 + 0.25 * random.random())


def _error_code(body: object) -> str | None:
    if isinstance(body, Mapping):
        code = body.get("error")
        if isinstance(code, str):
            return code
    return None


class RateLimitState:
    """The limiter's decisions, without waiting: ``reserve()`` says how long a request must wait.

    Args:
        burst: requests in flight while the budget is still unknown (rule 1).
        backoff: seconds to wait after the n-th failure in a row (a 429 giving no time,
            no_capacity).
        clock: a monotonic clock in seconds (pauses and pacing).
        wall_clock: unix time in seconds (to read ``X-RateLimit-Reset`` and ``resetAt``).
        reset_margin: extra seconds waited past a reset time given in whole seconds.
        probe_first: until a first answer tells the budget, hold requests beyond ``burst`` in
            flight (beyond one after a 429).
    """

    def __init__(
        self,
        *,
        burst: int = 10,
        backoff: Callable[[int], float] = default_backoff,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        reset_margin: float = _DEFAULT_RESET_MARGIN,
        probe_first: bool = True,
    ) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._burst = burst
        self._backoff = backoff
        self._clock = clock
        self._wall_clock = wall_clock
        self._reset_margin = reset_margin
        self.limit: int | None = None
        # Our estimate: the server's figure less the requests it has not answered yet.
        self.remaining: int | None = None
        self.reset_at: float | None = None  # unix seconds
        self.paused_until = -math.inf  # monotonic; set by a 429
        # How many clients seem to spend this budget: a 429 that came while our own count said
        # there was room doubles it (up to _MAX_SHARERS), and each then takes its share.
        self.sharers = 1
        self._limited_in_window = False
        self.outstanding = 0  # requests granted and not yet answered
        # No answer seen yet, or a 429 made the budget unknown again.
        self._awaiting_budget = probe_first
        self._probe_allowance = burst  # requests in flight while the budget is unknown
        self._probes = 0
        self._rate_limited_in_a_row = 0
        self._model_failures: dict[str, int] = {}
        self._model_paused_until: dict[str, float] = {}
        self._model_probing: set[str] = set()

    def probing(self) -> bool:
        """True while the budget is unknown and the probe requests that learn it are all out: a
        request asking now would wait for their answer."""
        return (
            self.remaining is None
            and self._awaiting_budget
            and self._probes >= self._probe_allowance
        )

    def pause_left(self) -> float | None:
        """Seconds left of the pause a 429 set, or ``None`` when requests are not paused."""
        left = self.paused_until - self._clock()
        return left if left > 0.0 else None

    def model_paused_until(self, model: str) -> float | None:
        """When ``model`` may be asked again (monotonic), or ``None`` when it is not backing off."""
        return self._model_paused_until.get(model)

    def model_pause_left(self, model: str) -> float | None:
        """Seconds left of ``model``'s no_capacity pause, or ``None`` when it is not paused now."""
        until = self._model_paused_until.get(model)
        if until is None:
            return None
        left = until - self._clock()
        return left if left > 0.0 else None

    def reserve(self, model: str | None = None, *, retry: bool = False) -> float:
        """Claim the right to send one request now, or say how long to wait before asking again.

        Returns ``0.0`` when the request may go (the grant is recorded: call ``observe()`` or
        ``release()`` for it), a positive number of seconds to wait, or ``math.inf`` to wait until
        the state changes (another request's answer). A ``retry`` has already waited what its own
        failure asked for (the client's retry policy), so its model's backoff does not hold it;
        the budget does, and so does a 429's pause, which is every request's (a retry that waited
        out the 429 that set it finds it over).
        """
        now = self._clock()
        if now < self.paused_until:
            return self.paused_until - now
        if model is not None and model in self._model_failures:
            until = self._model_paused_until.get(model, -math.inf)
            if now < until and not retry:
                return until - now
            if model in self._model_probing:
                return math.inf  # one request probes a model coming back, retries included
        delay = self._budget_delay(now)
        if delay > 0.0:
            return delay
        self.outstanding += 1
        if self.remaining is not None:
            self.remaining -= 1
        if model is not None and model in self._model_failures:
            self._model_probing.add(model)
        return 0.0

    def _budget_delay(self, now: float) -> float:
        wall = self._wall_clock()
        if self.reset_at is not None and wall >= self.reset_at + self._reset_margin:
            # A new window: the full limit again (our share of it), until a response says
            # otherwise. A window that passed without a 429 halves the sharers we assume: the
            # other client may be gone, and a lone one must not stay on half its budget.
            if not self._limited_in_window:
                self.sharers = max(self.sharers // 2, 1)
            self._limited_in_window = False
            self.remaining = self.limit // self.sharers if self.limit is not None else None
            self.reset_at = None
        if self.remaining is None:
            if not self._awaiting_budget:
                return 0.0
            if self._probes >= self._probe_allowance:
                return math.inf
            self._probes += 1
            return 0.0
        if self.remaining <= 0:
            if self.reset_at is None:
                return math.inf  # wait for an answer to tell us the window
            return self.reset_at + self._reset_margin - wall
        if self.outstanding * (_UNANSWERED_SHARE - 1) >= self.remaining:
            # At most a quarter of what the last answer left is in flight before later answers
            # say what is left now: another client on the same token may be spending it too,
            # and what both have in flight when it runs out comes back as 429s. Alone this
            # costs round trips only as the budget runs out, never a wait for the window.
            return math.inf
        # A budget, not a speed: what is left of it goes at once (the caller's concurrency bounds
        # it), and only a spent budget waits for the window to turn.
        return 0.0

    def release(self, model: str | None = None) -> None:
        """A granted request got no answer (connection error, cancellation): free its slot."""
        self.outstanding = max(self.outstanding - 1, 0)
        self._probes = max(self._probes - 1, 0)
        if model is not None:
            self._model_probing.discard(model)

    def observe(
        self,
        status: int,
        headers: Mapping[str, str],
        body: object = None,
        *,
        model: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Learn from the answer to a granted request: budget headers, a 429, a no_capacity.

        ``retry_after``: the wait a 429 means where its headers and body name none (the surface
        knows its route's window), else ``None``.
        """
        now = self._clock()
        wall = self._wall_clock()
        expected = self.remaining  # what we believed was left, before this answer
        self.outstanding = max(self.outstanding - 1, 0)
        self._probes = 0
        self._awaiting_budget = False
        self._read_budget(headers, wall)
        code = _error_code(body)
        if status == 429 or code == "rate_limited":
            if expected is not None and now >= self.paused_until:
                # Refused a request our count had room for: another client spends the same
                # budget (one token, several processes). From now on this one takes its share.
                self.sharers = min(self.sharers * 2, _MAX_SHARERS)
            self._limited_in_window = True
            self._rate_limited_in_a_row += 1
            delay = server_retry_after(headers, body, now=wall)
            if delay is None:
                delay = retry_after
            if delay is None:
                delay = self._backoff(self._rate_limited_in_a_row)
            self.paused_until = max(self.paused_until, now + delay)
            # After the pause the budget is unknown again: one request learns it before the rest go.
            self.remaining = None
            self.reset_at = None
            self._awaiting_budget = True
            self._probe_allowance = 1
        elif status < 400:
            self._rate_limited_in_a_row = 0
        if model is None:
            return
        self._model_probing.discard(model)
        if code == "no_capacity" or (status == 503 and code is None):
            if now >= self._model_paused_until.get(model, -math.inf):
                # The requests that were in flight as the model went down answer within the
                # pause their first failure set: one failure, not as many steps of the backoff.
                failures = self._model_failures.get(model, 0) + 1
                self._model_failures[model] = failures
                self._model_paused_until[model] = now + self._backoff(failures)
        elif status < 400:
            self._model_failures.pop(model, None)
            self._model_paused_until.pop(model, None)

    def _read_budget(self, headers: Mapping[str, str], wall: float) -> None:
        remaining = number(header(headers, "X-RateLimit-Remaining"))
        if remaining is None:
            return
        limit = number(header(headers, "X-RateLimit-Limit"))
        reset_at = reset_wall_time(header(headers, "X-RateLimit-Reset"), wall)
        # Our share of what the server says is left, less what we have in flight.
        estimate = max(int(remaining) // self.sharers - self.outstanding, 0)
        same_window = (
            reset_at is not None
            and self.reset_at is not None
            and abs(reset_at - self.reset_at) < 1.0
        )
        if same_window and self.remaining is not None:
            # Answers arrive out of order; within one window the budget only shrinks.
            estimate = min(estimate, self.remaining)
        self.remaining = estimate
        if limit is not None:
            self.limit = int(limit)
        if reset_at is not None:
            self.reset_at = reset_at


class RateLimiter:
    """The shared limiter: ``await acquire(model)``, then ``observe()`` or ``release()``.

    All workers of a client share one instance, so one 429 pauses them all. Pass a configured
    ``RateLimitState`` to change the burst, the backoff or the clocks.
    """

    def __init__(
        self, state: RateLimitState | None = None, *, longest_wait: float = math.inf
    ) -> None:
        self.state = state if state is not None else RateLimitState()
        # A 429's pause longer than this is not waited out: requests are refused at once, with
        # the time it ends (the client passes its RetryPolicy.max_retry_after).
        self.longest_wait = longest_wait
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait_for_probe(self) -> None:
        """Wait, claiming nothing, while the probe requests learn the budget (rule 1).

        A fan-out's jobs call this before they build their requests: a thousand jobs then park
        here at once and cheaply, so the event loop reads the probes' answers without first
        building the requests they wait to send; ``acquire()`` still decides each request.
        Returns at once, without an await, when no probe is out.
        """
        while self.state.probing():
            await self._wait_for_change(math.inf)

    async def acquire(self, model: str | None = None, *, retry: bool = False) -> None:
        """Wait until a request for ``model`` may go, and claim it.

        ``retry`` says the request is a retry that already slept its backoff. A cancelled wait
        leaves no claim behind. Raises ``NoCapacityError`` at once while ``model`` is paused after
        a ``no_capacity`` (rule 4), retries included.
        """
        # A request let through at once costs no trip through the event loop, as an uncontended
        # lock's acquire does not: a fan-out of thousands starts them all in one turn, and the
        # request's own awaits come next.
        while True:
            if model is not None:
                left = self.state.model_pause_left(model)
                if left is not None:
                    raise NoCapacityError(
                        f"no node has capacity for {model!r}: the control plane said so, and the "
                        f"client holds requests for it another {left:.1f} s (not sent)",
                        status=503,
                        code="no_capacity",
                    )
            paused = self.state.pause_left()
            if paused is not None and paused > self.longest_wait:
                until = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + paused))
                raise RateLimitError(
                    f"rate limited until {until} (another {paused:.0f} s, longer than the "
                    f"{self.longest_wait:g} s the client waits): not sent",
                    retry_after=paused,
                )
            delay = self.state.reserve(model, retry=retry)
            if delay <= 0.0:
                return  # no await after the grant: a cancellation here would leak the claim
            await self._wait_for_change(delay)

    async def _wait_for_change(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if an answer (or a lost request) changes the state.

        A future and a timer, not a cancel scope around an event: a fan-out of thousands starts
        with all but ``burst`` of its jobs waiting here for the first answer, so this is paid per
        job. Cancellation (anyio's too: it cancels the task) ends the wait as any await does.
        """
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(delay, _wake_one, waiter)
        # This loop's futures, each removed as its wait ends: a limiter may serve several event
        # loops in turn.
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    def observe(
        self,
        status: int,
        headers: Mapping[str, str],
        body: object = None,
        *,
        model: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Record the answer to a request that ``acquire()`` let through (see
        ``RateLimitState.observe``), and wake the waiters: it may let them go."""
        self.state.observe(status, headers, body, model=model, retry_after=retry_after)
        self._wake()

    def release(self, model: str | None = None) -> None:
        """Record that a request let through got no answer at all, and wake the waiters."""
        self.state.release(model)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            _wake_one(waiter)


def _wake_one(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
