"""The sans-IO partial-response state and the replay filter, without sockets."""

from __future__ import annotations

import pytest

from infernet_async._accumulator import Accumulator, ReplayDiverged, ReplayFilter
from infernet_async.events import Done, ErrorEvent, JobInfo, Meta, Token


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
    assert acc.chars == 0  # max_answer_chars counts the new attempt only
    acc.add_token("new")
    acc.finish()
    assert acc.text == "new" and acc.finished and acc.chars == 3


def _run(filt: ReplayFilter, events: list[object]) -> list[object]:
    out = []
    for event in events:
        got = filt.feed(event)  # type: ignore[arg-type]
        if got is not None:
            out.append(got)
    return out


def test_replay_skipped_by_id_in_the_typed_dialect() -> None:
    filt = ReplayFilter("AA", last_id="3")
    replay = [
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
    replay = [Token("Paris"), Token(" is"), Token(" the"), Done()]
    assert _run(filt, replay) == [Token(" the"), Done()]


def test_a_finished_jobs_whole_text_is_trimmed_to_the_rest() -> None:
    filt = ReplayFilter("Paris is")
    assert filt.feed(Token("Paris is the capital.", "9")) == Token(" the capital.", "9")
    assert filt.done
    assert ReplayFilter("Paris").feed(Token("Paris")) is None  # exactly what was delivered


def test_opaque_ids_skip_up_to_the_last_delivered_one() -> None:
    filt = ReplayFilter("ab", last_id="x2")
    replay = [Token("a", "x1"), Token("b", "x2"), Token("c", "x3")]
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
