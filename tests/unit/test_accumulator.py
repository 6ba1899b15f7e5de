"""The sans-IO partial-response state and the replay filter, without sockets; then, over loopback,
what ``stream_job`` makes of a typed replay after a dropped connection."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from aiohttp import web

from infernet_async import IncompleteStreamError
from infernet_async._accumulator import Accumulator, ReplayDiverged, ReplayFilter
from infernet_async.events import Done, ErrorEvent, JobInfo, Meta, StreamEvent, Token
from tests.helpers.client import client_for, raw_server, sse_handler


def test_text_is_everything_added_and_joins_incrementally() -> None:
    acc = Accumulator()
    assert acc.text == "" and acc.token_count == 0
    acc.add_token("Par")
    assert acc.text == "Par"
    acc.add_token("is")
    acc.add_token(" is")
    assert acc.text == "Paris is" and acc.token_count == 3
    assert acc.text is acc.text  # cached until the next token


def test_finished_only_on_done_and_first_terminal_reason_wins() -> None:
    acc = Accumulator()
    acc.add_token("a")
    acc.fail("node_disconnected", code="node_disconnected", message="gone")
    acc.fail("closed")
    acc.finish(done_text="a")
    assert not acc.finished and acc.reason == "node_disconnected"
    assert acc.error_code == "node_disconnected" and acc.text == "a"
    done = Accumulator()
    done.finish(done_text="whole")
    done.fail("closed")
    assert done.finished and done.reason == "done" and done.done_text == "whole"


def test_job_id_first_one_wins() -> None:
    acc = Accumulator()
    acc.set_job_id(None)
    acc.set_job_id("")
    acc.set_job_id("job_1")
    acc.set_job_id("job_2")
    assert acc.job_id == "job_1"


def test_restart_discards_the_attempt_and_counts_it() -> None:
    acc = Accumulator()
    acc.add_token("old")
    acc.fail("node_disconnected")
    assert acc.restart() == "old"
    assert acc.text == "" and acc.reason is None and acc.attempt == 2
    assert acc.chars == acc.nbytes == 0  # max_answer_bytes counts the new attempt only
    acc.add_token("new")
    acc.finish()
    assert acc.text == "new" and acc.finished and acc.chars == 3


def _run(filt: ReplayFilter, events: Sequence[StreamEvent]) -> list[StreamEvent]:
    out = []
    for event in events:
        got = filt.feed(event)
        if got is not None:
            out.append(got)
    return out


def test_replay_of_the_same_attempt_is_skipped_in_the_typed_dialect() -> None:
    filt = ReplayFilter("AA")
    replay: list[StreamEvent] = [
        JobInfo("job_1"),
        Meta(id="1"),
        Token("A", "2"),
        Token("A", "3"),
        Token("B", "4"),
        Done(id="5"),
    ]
    assert _run(filt, replay) == [Token("B", "4"), Done(id="5")]
    assert filt.done


def test_replay_skipped_by_text_in_the_data_dialect() -> None:
    filt = ReplayFilter("Paris is")
    replay: list[StreamEvent] = [Token("Paris"), Token(" is"), Token(" the"), Done()]
    assert _run(filt, replay) == [Token(" the"), Done()]


def test_a_finished_jobs_whole_text_is_trimmed_to_the_rest() -> None:
    filt = ReplayFilter("Paris is")
    assert filt.feed(Token("Paris is the capital.", "9")) == Token(" the capital.", "9")
    assert filt.done
    assert ReplayFilter("Paris").feed(Token("Paris")) is None  # exactly what was delivered


def test_opaque_ids_skip_up_to_the_last_delivered_one() -> None:
    filt = ReplayFilter("ab")
    replay: list[StreamEvent] = [Token("a", "x1"), Token("b", "x2"), Token("c", "x3")]
    assert _run(filt, replay) == [Token("c", "x3")]


def test_a_different_attempt_is_not_spliced() -> None:
    filt = ReplayFilter("Paris is")
    assert filt.feed(Token("Paris")) is None
    with pytest.raises(ReplayDiverged):
        filt.feed(Token(" was"))


def test_errors_pass_through_a_replay() -> None:
    filt = ReplayFilter("Paris")
    error = ErrorEvent("node_disconnected", "gone")
    assert filt.feed(error) is error and filt.done


# -- a replay that is not the delivered text (typed dialect: ids do not vouch for the text) --------


def test_a_new_attempt_with_new_opaque_ids_is_not_skipped_blindly() -> None:
    # The job ran again: the last delivered id never comes back, so skipping "up to it" would
    # swallow the whole new answer and let ``done`` through.
    filt = ReplayFilter("Paris is")
    assert filt.feed(JobInfo("job_1")) is None
    with pytest.raises(ReplayDiverged):
        filt.feed(Token("Lyon", "b-1"))


def test_reused_numeric_ids_with_equal_lengths_are_not_spliced() -> None:
    filt = ReplayFilter("Paris is")
    with pytest.raises(ReplayDiverged):
        filt.feed(Token("Lyons", "1"))  # as long as "Paris", and numbered as it was


def test_a_reused_id_carrying_other_text_later_in_the_replay_diverges() -> None:
    filt = ReplayFilter("Paris is")
    assert filt.feed(Token("Paris", "1")) is None
    with pytest.raises(ReplayDiverged):
        filt.feed(Token(" be", "2"))


@pytest.mark.parametrize(
    "ids",
    [(None, None), ("1", "4"), ("a-1", "a-4")],
    ids=["data", "numeric", "opaque"],
)
def test_done_before_the_replay_caught_up_diverges(ids: tuple[str | None, str | None]) -> None:
    # The replay ended short of what was delivered: that is not the answer the caller saw.
    filt = ReplayFilter("Paris is the")
    assert filt.feed(Token("Paris", ids[0])) is None
    with pytest.raises(ReplayDiverged, match="ended"):
        filt.feed(Done(id=ids[1]))


def test_done_whose_whole_text_contradicts_the_delivered_text_diverges() -> None:
    filt = ReplayFilter("Paris is")
    assert _run(filt, [Token("Paris", "1"), Token(" is", "2")]) == []
    with pytest.raises(ReplayDiverged, match="whole text"):
        filt.feed(Done("Lyon is", "stop", "3"))


def test_done_whose_whole_text_begins_with_the_delivered_text_passes() -> None:
    filt = ReplayFilter("Paris is")
    done = Done("Paris is", "stop", "3")
    assert _run(filt, [Token("Paris", "1"), Token(" is", "2"), done]) == [done]
    assert filt.done


# -- legitimate replays and resumes --------------------------------------------------------------


def test_the_same_attempt_with_opaque_ids_hands_out_only_the_rest() -> None:
    filt = ReplayFilter("Paris is")
    done = Done("Paris is nice.", "stop", "a-4")
    replay: list[StreamEvent] = [
        Meta(id="a-0"),
        Token("Paris", "a-1"),
        Token(" is", "a-2"),
        Token(" nice.", "a-3"),
    ]
    assert _run(filt, [*replay, done]) == [Token(" nice.", "a-3"), done]


def test_reused_numeric_ids_with_the_same_text_replay_cleanly() -> None:
    # The job ran again and said the same thing: nothing is lost and nothing is repeated.
    filt = ReplayFilter("Paris is")
    done = Done("Paris is big.", "stop", "4")
    replay: list[StreamEvent] = [Token("Paris", "1"), Token(" is", "2"), Token(" big.", "3"), done]
    assert _run(filt, replay) == [Token(" big.", "3"), done]


def test_a_new_attempt_with_higher_ids_and_the_same_text_is_matched_by_text() -> None:
    # Higher ids alone do not prove a resume: a re-run numbered after the old one replays its
    # text from the start, which is skipped, not handed out twice.
    filt = ReplayFilter("Paris is")
    replay: list[StreamEvent] = [Token("Paris", "11"), Token(" is", "12"), Token(" big.", "13")]
    assert _run(filt, replay) == [Token(" big.", "13")]


def test_a_finished_job_replayed_as_one_later_numbered_event_is_trimmed() -> None:
    filt = ReplayFilter("Paris is")
    replay: list[StreamEvent] = [
        Meta(id="0"),
        Token("Paris is big.", "3"),
        Done("Paris is big.", "stop", "4"),
    ]
    assert _run(filt, replay) == [Token(" big.", "3"), Done("Paris is big.", "stop", "4")]


def test_a_stream_that_does_not_replay_the_delivered_text_diverges() -> None:
    # A server honouring Last-Event-ID would send only what comes after it; by ids alone that
    # cannot be told from a re-run numbered after the old attempt (ids only grow), so it is not
    # taken as a resume: a spliced answer would be worse than a reported gap.
    filt = ReplayFilter("Paris is")
    with pytest.raises(ReplayDiverged, match="differs"):
        filt.feed(Token(" big.", "3"))


def test_a_re_run_with_growing_ids_diverges_at_its_first_token() -> None:
    # The DevServer numbers a re-queued job's new attempt after the old one: nothing of it may be
    # handed out after the old text.
    filt = ReplayFilter("The cat sat")
    assert filt.feed(Meta(id="10")) is None
    with pytest.raises(ReplayDiverged, match="differs"):
        filt.feed(Token("A", "11"))


def test_a_data_only_replay_ending_with_a_bare_done_passes() -> None:
    filt = ReplayFilter("Paris is")
    assert _run(filt, [Token("Paris"), Token(" is"), Done()]) == [Done()]


def test_nothing_delivered_passes_everything() -> None:
    filt = ReplayFilter("")
    assert _run(filt, [Meta(id="1"), Token("A", "2"), Done("A", "stop", "3")]) == [
        Token("A", "2"),
        Done("A", "stop", "3"),
    ]


# -- end to end: stream_job reconnecting to a typed stream -----------------------------------------


def _typed(*events: tuple[str, str, dict[str, str]]) -> list[bytes | float]:
    return [
        f"id: {i}\nevent: {kind}\ndata: {json.dumps(body)}\n\n".encode() for i, kind, body in events
    ]


async def _reconnect(
    first: list[bytes | float], second: list[bytes | float]
) -> tuple[list[str], list[str | None], str, bool]:
    """Tokens handed out, the Last-Event-ID of each GET, the text and ``finished``; raises what
    the stream raises."""
    calls: list[str | None] = []
    first_handler, second_handler = sse_handler(first), sse_handler(second)

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.headers.get("Last-Event-ID"))
        return await (first_handler if len(calls) == 1 else second_handler)(request)

    async with raw_server(handler) as url:
        client = client_for(url)
        async with client, client.stream_job("job_x") as stream:
            tokens = [token async for token in stream]
    return tokens, calls, stream.text, stream.finished


_OLD = _typed(("a-1", "token", {"text": "Paris"}), ("a-2", "token", {"text": " is"}))


@pytest.mark.parametrize(
    "second",
    [
        _typed(
            ("b-1", "token", {"text": "Lyon"}),
            ("b-2", "token", {"text": " is a city."}),
            ("b-3", "done", {"text": "Lyon is a city.", "reason": "stop"}),
        ),
        _typed(
            ("1", "token", {"text": "Lyons"}),
            ("2", "token", {"text": " is"}),
            ("3", "token", {"text": " big."}),
            ("4", "done", {"text": "Lyons is big.", "reason": "stop"}),
        ),
        _typed(("a-1", "token", {"text": "Paris"}), ("a-3", "done", {"text": "Paris is"})),
    ],
    ids=["new-opaque-ids", "reused-numeric-ids", "done-before-caught-up"],
)
async def test_a_typed_replay_that_is_not_the_delivered_text_raises(
    second: list[bytes | float],
) -> None:
    with pytest.raises(IncompleteStreamError, match="differs") as info:
        await _reconnect(_OLD, second)
    assert info.value.partial_text == "Paris is"


async def test_a_typed_replay_of_the_same_attempt_with_opaque_ids_completes() -> None:
    second = [
        *_OLD,
        *_typed(
            ("a-3", "token", {"text": " nice."}),
            ("a-4", "done", {"text": "Paris is nice.", "reason": "stop"}),
        ),
    ]
    tokens, calls, text, finished = await _reconnect(_OLD, second)
    assert tokens == ["Paris", " is", " nice."] and text == "Paris is nice." and finished
    assert calls == [None, "a-2"]


async def test_a_re_run_with_growing_ids_is_not_spliced_onto_the_old_text() -> None:
    first = _typed(
        ("2", "token", {"text": "The"}),
        ("3", "token", {"text": " cat"}),
        ("4", "token", {"text": " sat"}),
    )
    second = _typed(
        ("10", "meta", {"provider_node_id": "node_b"}),
        ("11", "token", {"text": "A"}),
        ("12", "token", {"text": " dog"}),
        ("13", "token", {"text": " ran"}),
        ("14", "done", {"text": "A dog ran", "reason": "stop"}),
    )
    with pytest.raises(IncompleteStreamError, match="differs") as info:
        await _reconnect(first, second)
    assert info.value.partial_text == "The cat sat"


def test_memory_is_about_the_utf8_size_whatever_the_token_sizes() -> None:
    # One str per token held a one-character "€" token in ~80 bytes: 6.3 GB for a hostile stream.
    import sys

    for token in ("€", "ab", "😀", "x"):
        acc = Accumulator()
        count = 200_000
        for _ in range(count):
            acc.add_token(token)
        held = sum(map(sys.getsizeof, acc._pieces)) + sum(map(sys.getsizeof, acc._recent))
        utf8 = len(token.encode()) * count
        assert acc.nbytes == utf8 and acc.chars == len(token) * count
        assert held < 1.25 * utf8 + 32_768, (token, held, utf8)
        assert acc.text == token * count  # and the text is whole


def test_tokens_fold_without_changing_the_text_or_its_counts() -> None:
    acc = Accumulator()
    expected = ""
    for n in range(300):
        text = f"t{n}\u2028é" if n % 7 else "\ud83d"  # a lone surrogate a JSON escape can carry
        acc.add_token(text)
        expected += text
        if n % 50 == 0:
            assert acc.text == expected
    assert acc.text == expected and acc.token_count == 300 and acc.chars == len(expected)


def test_reading_the_text_holds_it_about_twice_at_most() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        acc = Accumulator()
        for _ in range(400_000):
            acc.add_token("ab")
        size = acc.nbytes
        tracemalloc.reset_peak()
        text = acc.text
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(text) == size
    # Everything traced at the peak: the pieces (freed as they are decoded), the decoded parts
    # and the joined text: about twice the answer, not three times.
    assert peak < 2.3 * size, peak / size
    acc.add_token("c")
    assert acc.text == text + "c" and acc._pieces == []
