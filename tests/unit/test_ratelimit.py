"""The shared rate limiter: pacing from the budget headers, one 429 pausing every worker,
no_capacity backing off per model. Decisions run on a fake clock; the waiting part on short real
waits."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import anyio
import pytest

from infernet_async import NoCapacityError
from infernet_async._pacer import Pacer
from infernet_async._ratelimit import RateLimiter, RateLimitState, default_backoff
from infernet_async._server_wait import server_retry_after

WALL0 = 1_800_000_000.0  # a realistic unix time, so X-RateLimit-Reset reads as an epoch


class FakeClock:
    def __init__(self) -> None:
        self.elapsed = 0.0

    def monotonic(self) -> float:
        return 100.0 + self.elapsed

    def wall(self) -> float:
        return WALL0 + self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds


def make_state(clock: FakeClock, **options) -> RateLimitState:
    options.setdefault("backoff", lambda attempt: float(2 ** (attempt - 1)))
    options.setdefault("reset_margin", 0.0)
    return RateLimitState(clock=clock.monotonic, wall_clock=clock.wall, **options)


def budget(limit: int, remaining: int, reset_in: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(int(WALL0 + reset_in)),
    }


def grant(state: RateLimitState, model: str | None = None) -> None:
    assert state.reserve(model) == 0.0


def learn(state: RateLimitState, headers: dict[str, str]) -> None:
    """Send the probe request and observe its answer."""
    grant(state)
    state.observe(200, headers)


def spend(state: RateLimitState, *, budget_left: int, limit: int, reset_in: float) -> int:
    """Grant and answer, as a server counting ``budget_left`` down would, until the limiter holds
    a request for a time (the window); returns how many went. Never waits on the clock."""
    in_flight = 0
    sent = 0
    while True:
        delay = state.reserve()
        if delay == 0.0:
            in_flight += 1
            continue
        if in_flight == 0:
            return sent
        in_flight -= 1
        sent += 1
        budget_left -= 1
        assert budget_left >= 0, "the limiter sent past the budget"
        state.observe(200, budget(limit, budget_left, reset_in))


# ---------------------------------------------------------------- learning the budget


def test_until_a_first_answer_at_most_a_burst_is_in_flight():
    clock = FakeClock()
    state = make_state(clock, burst=3)
    for _ in range(3):
        grant(state)
    assert state.reserve() == math.inf  # the others wait for the first answer
    state.observe(200, budget(60, 57, 60))
    grant(state)
    grant(state)


def test_a_failed_probe_lets_the_next_request_probe():
    state = make_state(FakeClock(), burst=1)
    grant(state)
    state.release()
    grant(state)
    assert state.reserve() == math.inf


def test_a_server_without_budget_headers_is_not_paced():
    state = make_state(FakeClock())
    learn(state, {})
    for _ in range(1000):
        grant(state)


def test_probing_can_be_turned_off():
    state = make_state(FakeClock(), probe_first=False)
    for _ in range(5):
        grant(state)


# ---------------------------------------------------------------- pacing from headers


def test_the_budget_goes_at_once_not_spread_over_the_window():
    # A rate limit is a budget, not a speed: 59 left of 60 a minute go now, none is held back
    # for a time; only an answer (a round trip, not a slice of the window) is waited for.
    clock = FakeClock()
    state = make_state(clock, burst=1)
    learn(state, budget(60, 59, 60))
    assert spend(state, budget_left=59, limit=60, reset_in=60) == 59
    # Spent: every request waits for the window to turn, then the new window's budget goes.
    assert state.reserve() == pytest.approx(60.0)
    clock.advance(60.0)
    assert spend(state, budget_left=60, limit=60, reset_in=120) == 60
    assert state.reserve() == pytest.approx(60.0)


def test_at_most_a_quarter_of_what_is_left_is_in_flight_unanswered():
    # Another client may spend the same budget: before later answers say what is left now, this
    # one has at most a quarter of what the last answer left in flight.
    state = make_state(FakeClock(), burst=1)
    learn(state, budget(60, 40, 60))
    granted = 0
    while state.reserve() == 0.0:
        granted += 1
    assert granted == 10
    assert state.reserve() == math.inf  # not a time: the next answer frees it
    state.observe(200, budget(60, 39, 60))  # 9 still unanswered: 30 left after them
    assert state.reserve() == 0.0
    assert state.reserve() == math.inf
    state.release()  # lost, perhaps counted by the server: the budget it took stays taken
    assert state.remaining == 29
    assert state.reserve() == 0.0


def test_a_large_budget_is_never_held_to_a_microsecond_schedule():
    state = make_state(FakeClock(), burst=2)
    learn(state, budget(10**9, 10**9, 60))
    for _ in range(10_000):
        grant(state)


def test_a_pacer_caps_the_rate_with_a_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(2.0, burst=3, clock=clock.monotonic)
    for _ in range(3):
        assert pacer.reserve() == 0.0  # the burst goes at once
    assert pacer.reserve() == pytest.approx(0.5)  # then one every half second
    clock.advance(0.5)
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(0.5)
    clock.advance(10.0)  # a quiet spell refills the burst, not more
    for _ in range(3):
        assert pacer.reserve() == 0.0
    assert pacer.reserve() > 0.0
    with pytest.raises(ValueError):
        Pacer(0.0)
    with pytest.raises(ValueError):
        Pacer(1.0, burst=0)


def test_an_exhausted_budget_waits_for_the_reset():
    clock = FakeClock()
    state = make_state(clock)
    learn(state, budget(60, 0, 7))
    assert state.reserve() == pytest.approx(7.0)
    clock.advance(7.0)
    grant(state)  # a new window: the full limit again


def test_requests_in_flight_count_against_a_stale_header():
    clock = FakeClock()
    state = make_state(clock, burst=10)
    learn(state, budget(60, 8, 30))
    grant(state)
    grant(state)
    assert state.reserve() == math.inf  # two in flight: the next answer first
    # The first answer says 7 remain, but one of ours is still unanswered: 6 are left, not 7.
    state.observe(200, budget(60, 7, 30))
    assert state.remaining == 6
    state.observe(200, budget(60, 6, 30))
    assert spend(state, budget_left=6, limit=60, reset_in=30) == 6
    # Spent: the window, not an answer, is waited for.
    assert state.remaining == 0
    assert state.reserve() == pytest.approx(30.0)


def test_answers_out_of_order_never_raise_the_budget_within_a_window():
    state = make_state(FakeClock(), burst=100)
    learn(state, budget(60, 50, 30))
    grant(state)
    grant(state)
    state.observe(200, budget(60, 48, 30))
    # Which request an answer belongs to is unknown, so the one still unanswered is held back too.
    assert state.remaining == 47
    state.observe(200, budget(60, 49, 30))  # the older answer arrives last
    assert state.remaining == 47


def test_a_new_window_in_the_headers_replaces_the_budget():
    clock = FakeClock()
    state = make_state(clock)
    learn(state, budget(60, 0, 5))
    clock.advance(5.0)
    learn(state, budget(60, 59, 60))
    assert state.remaining == 59


def test_reset_given_as_a_delay_is_understood():
    clock = FakeClock()
    state = make_state(clock)
    learn(
        state, {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4"}
    )
    assert state.reserve() == pytest.approx(4.0)


def test_header_names_are_case_insensitive():
    state = make_state(FakeClock())
    learn(state, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(WALL0 + 3))})
    assert state.reserve() == pytest.approx(3.0)


# ---------------------------------------------------------------- one 429 pauses all


def test_one_429_pauses_every_request_and_every_model():
    clock = FakeClock()
    state = make_state(clock)
    learn(state, budget(60, 50, 60))
    for _ in range(3):
        grant(state)
    state.observe(429, {"Retry-After": "7"}, {"error": "rate_limited"})
    for model in (None, "a", "b"):
        assert state.reserve(model) == pytest.approx(7.0)
    clock.advance(7.0)
    # After the pause one request learns the budget again before the rest go.
    grant(state, "a")
    assert state.reserve("b") == math.inf
    state.observe(200, budget(60, 40, 50), model="a")
    grant(state, "b")


def test_429_pause_follows_x_ratelimit_reset_without_retry_after():
    clock = FakeClock()
    state = make_state(clock)
    grant(state)
    state.observe(429, budget(60, 0, 12), {"error": "rate_limited"})
    assert state.reserve() == pytest.approx(12.0)


def test_429_pause_follows_the_live_planes_body_reset_at():
    clock = FakeClock()
    state = make_state(clock)
    grant(state)
    reset_at = datetime.fromtimestamp(WALL0 + 9, tz=UTC).isoformat().replace("+00:00", "Z")
    state.observe(429, {}, {"error": "Too many requests", "detail": {"resetAt": reset_at}})
    assert state.reserve() == pytest.approx(9.0)


def test_429_without_any_time_backs_off_more_each_time():
    clock = FakeClock()
    state = make_state(clock)
    grant(state)
    state.observe(429, {}, None)
    assert state.reserve() == pytest.approx(1.0)
    clock.advance(1.0)
    grant(state)
    state.observe(429, {}, None)
    assert state.reserve() == pytest.approx(2.0)


def test_a_second_429_never_shortens_the_pause():
    state = make_state(FakeClock(), probe_first=False)
    grant(state)
    grant(state)
    state.observe(429, {"Retry-After": "10"})
    state.observe(429, {"Retry-After": "1"})
    assert state.reserve() == pytest.approx(10.0)


# ---------------------------------------------------------------- no_capacity per model


def test_no_capacity_backs_off_that_model_only():
    clock = FakeClock()
    state = make_state(clock, probe_first=False)
    grant(state, "big")
    state.observe(503, {}, {"error": "no_capacity"}, model="big")
    assert state.reserve("big") == pytest.approx(1.0)
    grant(state, "small")
    clock.advance(1.0)
    grant(state, "big")  # the probe for the model
    assert state.reserve("big") == math.inf  # the others wait for its answer
    state.observe(503, {}, {"error": "no_capacity"}, model="big")
    assert state.reserve("big") == pytest.approx(2.0)  # exponential
    clock.advance(2.0)
    grant(state, "big")
    state.observe(200, {}, model="big")
    assert state.model_paused_until("big") is None
    grant(state, "big")
    grant(state, "big")


async def test_a_request_for_a_paused_model_is_refused_at_once_not_held():
    clock = FakeClock()
    limiter = RateLimiter(make_state(clock, probe_first=False))
    await limiter.acquire("m")
    limiter.observe(503, {}, {"error": "no_capacity"}, model="m")
    for retry in (False, True):
        with pytest.raises(NoCapacityError, match="not sent") as info:
            await limiter.acquire("m", retry=retry)
        assert info.value.status == 503 and info.value.code == "no_capacity"
    assert limiter.state.outstanding == 0  # a refusal claims nothing
    await limiter.acquire("other")  # the other models go
    limiter.observe(200, {}, model="other")
    clock.advance(1.0)
    await limiter.acquire("m", retry=True)  # the pause is over: this one probes the model
    assert limiter.state.reserve("m") == math.inf  # the others wait for its answer


def test_a_lost_model_probe_lets_another_request_probe():
    clock = FakeClock()
    state = make_state(clock, probe_first=False)
    grant(state, "m")
    state.observe(503, {}, {"error": "no_capacity"}, model="m")
    clock.advance(1.0)
    grant(state, "m")
    state.release("m")
    grant(state, "m")


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "3"}, None, 3.0),
        ({"Retry-After": "2.5", "X-RateLimit-Reset": str(int(WALL0 + 40))}, None, 2.5),
        ({"Retry-After": "Thu, 01 Jan 2027 00:00:10 GMT"}, None, None),  # checked below
        ({"Retry-After": "soon"}, None, None),
        ({"X-RateLimit-Reset": str(int(WALL0 + 40))}, None, 40.0),
        ({}, {"detail": {"resetAt": "not a time"}}, None),
        # A naive time is UTC, as the retries have always read it (one parser for both now).
        ({}, {"detail": {"resetAt": "2027-01-31T00:00:00"}}, 1_801_353_600.0 - WALL0),
        ({}, "<html>", None),
        # A negative Retry-After is a broken server, not a wait: the next hint, else the backoff.
        ({"Retry-After": "-5"}, None, None),
        ({"Retry-After": "-5", "X-RateLimit-Reset": str(int(WALL0 + 40))}, None, 40.0),
        ({"retry-after": "3"}, None, 3.0),  # any case, also in a plain dict
    ],
)
def test_the_limiter_reads_a_429s_wait_with_the_retries_parser(headers, body, expected):
    delay = server_retry_after(headers, body, now=WALL0)
    if "GMT" in headers.get("Retry-After", ""):
        target = datetime(2027, 1, 1, 0, 0, 10, tzinfo=UTC).timestamp()
        assert delay == pytest.approx(max(target - WALL0, 0.0))
    else:
        assert delay == expected


def test_default_backoff_follows_the_documented_schedule():
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (20, 30.0)]:
        for _ in range(20):
            assert 0.75 * base <= default_backoff(attempt) <= base


def test_burst_must_be_positive():
    with pytest.raises(ValueError, match="burst"):
        RateLimitState(burst=0)


# ---------------------------------------------------------------- the waiting part


async def test_one_429_pauses_every_waiting_worker():
    limiter = RateLimiter(RateLimitState(backoff=lambda attempt: 0.0, reset_margin=0.0))
    await limiter.acquire()
    limiter.observe(200, {})
    released: list[float] = []

    async def worker() -> None:
        await limiter.acquire()
        released.append(anyio.current_time())
        limiter.observe(200, {})

    await limiter.acquire()
    limiter.observe(429, {"Retry-After": "0.2"}, {"error": "rate_limited"})
    paused_at = anyio.current_time()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(worker)
    assert len(released) == 5
    assert min(released) - paused_at >= 0.19


async def test_waiters_wake_when_the_probe_is_answered():
    limiter = RateLimiter(RateLimitState(burst=1))
    await limiter.acquire()  # the probe
    order: list[str] = []

    async def worker(name: str) -> None:
        await limiter.acquire()
        order.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "a")
            tg.start_soon(worker, "b")
            await anyio.wait_all_tasks_blocked()
            assert order == []
            limiter.observe(200, {"X-RateLimit-Remaining": "100"})
    assert sorted(order) == ["a", "b"]
    assert limiter.state.outstanding == 2


async def test_a_cancelled_wait_leaves_no_claim():
    limiter = RateLimiter(RateLimitState(burst=1))
    await limiter.acquire()
    with anyio.move_on_after(0.01):
        await limiter.acquire()  # waits for the probe's answer, then gives up
    assert limiter.state.outstanding == 1
    limiter.release()
    assert limiter.state.outstanding == 0
    with anyio.fail_after(5):
        await limiter.acquire()


async def test_a_request_let_through_at_once_does_not_yield_to_the_event_loop():
    # A fan-out of thousands then sends every first request in one turn of the loop, not one
    # turn each.
    limiter = RateLimiter(RateLimitState(burst=2))
    step = limiter.acquire()
    with pytest.raises(StopIteration):
        step.send(None)
    assert limiter.state.outstanding == 1


def test_the_limiter_works_across_event_loops():
    limiter = RateLimiter(RateLimitState(burst=1))

    async def probe_then_wait() -> None:
        await limiter.acquire()
        with anyio.move_on_after(0.01):
            await limiter.acquire()
        limiter.observe(200, {})

    anyio.run(probe_then_wait)
    anyio.run(probe_then_wait)


def test_a_retry_is_held_by_a_429s_pause_but_not_by_its_models_backoff():
    clock = FakeClock()
    state = make_state(clock, probe_first=False)
    grant(state, "m")
    state.observe(429, {"Retry-After": "30"}, model="m")
    assert state.reserve("m") == pytest.approx(30.0)
    # Another job's retry (of a no_capacity, say) is every request: the pause holds it too.
    assert state.reserve("x", retry=True) == pytest.approx(30.0)
    clock.advance(30.0)  # the 429's own retry slept the Retry-After: the pause is over
    grant(state, "x")
    state.observe(503, {}, {"error": "no_capacity"}, model="x")
    assert state.reserve("x") == pytest.approx(1.0)
    assert state.reserve("x", retry=True) == 0.0  # the client's retry policy did this waiting


def test_requests_in_flight_as_a_model_goes_down_count_as_one_failure():
    clock = FakeClock()
    state = make_state(clock, probe_first=False)
    for _ in range(3):
        grant(state, "m")
    for _ in range(3):
        state.observe(503, {}, {"error": "no_capacity"}, model="m")
    assert state.reserve("m") == pytest.approx(1.0)  # the first step of the backoff, not the third
    clock.advance(1.0)
    grant(state, "m")  # the probe
    state.observe(503, {}, {"error": "no_capacity"}, model="m")
    assert state.reserve("m") == pytest.approx(2.0)  # a failure after the pause: the next step


async def test_the_fan_out_passes_its_limiter_to_every_stream_it_opens():
    # No context variable: the limiter goes with the call, from the runner to client.stream (and
    # from there to the transport with each request).
    from infernet_async._fanout import BatchRequest, stream_job_runner

    seen: list[object] = []

    class Refusing:
        def stream(self, **arguments: object) -> object:
            seen.append(arguments.get("rate_limiter", "absent"))
            raise ValueError("no stream here")

    limiter = RateLimiter()
    request = BatchRequest(id="a", model="m", prompt="hi")
    await stream_job_runner(Refusing(), rate_limiter=limiter)(0, request, seen.append)
    await stream_job_runner(Refusing())(1, request, seen.append)
    assert seen == [limiter, "absent"]


async def test_waiting_for_the_probe_claims_nothing_and_ends_with_the_first_answer():
    limiter = RateLimiter(RateLimitState(burst=2))
    # No probe out: returns without an await (the coroutine ends on its first step).
    with pytest.raises(StopIteration):
        limiter.wait_for_probe().send(None)
    await limiter.acquire()
    await limiter.acquire()
    assert limiter.state.probing()
    done = anyio.Event()

    async def job() -> None:
        await limiter.wait_for_probe()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await anyio.sleep(0.02)
        assert not done.is_set() and limiter.state.outstanding == 2  # waiting claims nothing
        limiter.observe(200, {"X-RateLimit-Remaining": "100", "X-RateLimit-Limit": "100"})
        with anyio.fail_after(1):
            await done.wait()
    # A cancelled wait leaves nothing behind either.
    limiter.state.observe(429, {"Retry-After": "0"})
    await limiter.acquire()
    assert limiter.state.probing()
    with anyio.move_on_after(0.02):
        await limiter.wait_for_probe()
    assert limiter.state.outstanding == 1 and not limiter._waiters


async def test_a_fan_out_builds_no_request_while_the_probes_are_out():
    # A thousand jobs park before they build their requests, so the event loop reads the probes'
    # answers first instead of after building every request that waits for them.
    from infernet_async._fanout import BatchRequest, FanOut, gather, stream_job_runner

    limiter = RateLimiter(RateLimitState(burst=3))
    built_while_probing: list[bool] = []

    class Stream:
        text, job_id, token_count, time_to_send, time_to_first_token = "", None, 0, None, None

        async def __aenter__(self) -> Stream:
            await limiter.acquire()
            await anyio.sleep(0.01)
            limiter.observe(200, {"X-RateLimit-Remaining": "1000", "X-RateLimit-Limit": "1000"})
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            return None

        async def final_text(self, *, read_interval: float = 0.0) -> str:
            return ""

    class Client:
        def stream(self, **arguments: object) -> Stream:
            built_while_probing.append(limiter.state.probing())
            return Stream()

    requests = [BatchRequest(id=str(i), model="m", prompt="hi") for i in range(40)]
    outcomes = await gather(
        FanOut(stream_job_runner(Client(), rate_limiter=limiter), requests, concurrency=40)
    )
    assert [outcome.status for outcome in outcomes] == ["ok"] * 40
    assert built_while_probing.count(True) == 0
    assert len(built_while_probing) == 40


def test_a_429_while_our_count_had_room_means_the_budget_is_shared() -> None:
    # Two processes on one token: this one believed 30 were left when the server said no. From
    # then on it takes half of what the headers say is left, so the two stop colliding.
    clock = FakeClock()
    state = make_state(clock, burst=1)
    learn(state, budget(60, 40, 60))
    grant(state)
    state.observe(429, {"Retry-After": "1"})
    assert state.sharers == 2
    clock.advance(1.0)
    learn(state, budget(60, 20, 59))  # the probe after the pause: 20 left, our share 10
    assert state.remaining == 10
    for _ in range(3):
        grant(state)
    assert state.reserve() == math.inf
    for _ in range(3):  # meanwhile the other client spent the rest
        state.observe(200, budget(60, 0, 59))
    assert state.reserve() == pytest.approx(58.0)  # the window's turn, a second of it gone
    # A window without a 429 halves the estimate again: a lone client gets its whole budget back.
    clock.advance(60.0)
    assert state.reserve() == 0.0 and state.sharers == 2  # the window of the 429 turned
    state.observe(200, budget(60, 59, 60))
    clock.advance(60.0)
    assert state.reserve() == 0.0 and state.sharers == 1
    # A 429 to a request sent before any answer told the budget is no news about others.
    alone = make_state(FakeClock(), burst=1)
    grant(alone)
    alone.observe(429, {"Retry-After": "1"})
    assert alone.sharers == 1


# ---------------------------------------------------------------- two clients on one token


class SharedWindowServer:
    """A server's fixed-window budget that two clients spend: counts each request as it answers."""

    def __init__(self, clock: FakeClock, limit: int, window: float) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.window_end = window
        self.left = limit
        self.refused = 0

    def answer(self) -> tuple[int, dict[str, str]]:
        while self.clock.elapsed >= self.window_end:
            self.window_end += self.window
            self.left = self.limit
        reset_in = self.window_end - self.clock.elapsed
        if self.left == 0:
            self.refused += 1
            headers = budget(self.limit, 0, self.window_end)
            headers["Retry-After"] = str(math.ceil(reset_in))
            return 429, headers
        self.left -= 1
        return 200, budget(self.limit, self.left, self.window_end)


@pytest.mark.parametrize("seed", range(40))
def test_two_clients_on_one_token_collide_three_times_at_most(seed: int) -> None:
    import random

    rng = random.Random(seed)
    clock = FakeClock()
    server = SharedWindowServer(clock, limit=60, window=60.0)
    concurrency = 32
    clients = [make_state(clock, burst=10) for _ in range(2)]
    to_send = [150, 150]
    in_flight: list[list[int]] = [[], []]  # per client: the requests sent, answered in any order
    done = [0, 0]
    while done != to_send:
        i = rng.randrange(2)
        state = clients[i]
        pending = to_send[i] - done[i] - len(in_flight[i])
        if in_flight[i] and (rng.random() < 0.5 or not pending):
            in_flight[i].pop()
            status, headers = server.answer()
            state.observe(status, headers)
            if status == 200:
                done[i] += 1
            continue
        if pending and len(in_flight[i]) < concurrency and state.reserve() == 0.0:
            in_flight[i].append(1)
            continue
        if not in_flight[0] and not in_flight[1]:
            waits = [
                c.reserve() if to_send[k] > done[k] else math.inf for k, c in enumerate(clients)
            ]
            if 0.0 in waits:
                in_flight[waits.index(0.0)].append(1)
                continue
            finite = [w for w in waits if w < math.inf]
            assert finite, "both clients wait for answers that no request will give"
            clock.advance(min(finite))
    windows = math.ceil(clock.elapsed / 60.0) + 1
    assert server.refused <= 3, (server.refused, windows)
