"""``infernet-async batch``: JSONL in and out, resume by id after a crash, a kill or an interrupt,
a torn last line, and the embedded control plane by default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from infernet_async import InfernetClient
from infernet_async._fanout import BatchOutcome, BatchRequest, FanOut
from infernet_async.cli import main
from infernet_async.cli._batch_files import (
    BatchDefaults,
    BatchSummary,
    InvalidLine,
    OutcomeWriter,
    count_pending,
    iter_requests,
    run_batch,
    scan_output,
)
from infernet_async.devserver import DevServer
from tests.helpers.paths import ROOT
from tests.helpers.signals import default_sigint

MODEL = "qwen2.5:14b"
FAST = {
    "tokens_per_second": 2000.0,
    "time_to_first_token": 0.0,
    "heartbeat_interval": None,
    "rate_limit_per_minute": 1000,
}


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def read_outcomes(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prompts_posted(server: DevServer) -> list[str]:
    return [
        r.json["messages"][-1]["content"]
        for r in server.requests
        if r.method == "POST" and r.path.endswith("/jobs") and r.status == 200
    ]


async def run_cli(*argv: str) -> int:
    # main() runs its own event loop, so it gets a thread; the DevServer keeps serving in ours.
    return await anyio.to_thread.run_sync(main, list(argv))


def use_server(monkeypatch: pytest.MonkeyPatch, server: DevServer) -> None:
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)


# ---------------------------------------------------------------- files, without a server


def test_scan_output_cuts_a_torn_last_line_and_keeps_the_rest(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    good = [
        {"id": "a", "status": "ok"},
        {"id": "b", "status": "error"},
        {"id": "c", "status": "cancelled"},
        {"id": 7, "status": "ok"},
    ]
    body = "".join(json.dumps(x) + "\n" for x in good[:2]) + "not json\n"
    body += "".join(json.dumps(x) + "\n" for x in good[2:]) + '{"id": "d", "sta'
    out.write_text(body)
    state = scan_output(out)
    assert state.done == {"a", "b", "7"}  # a cancelled job runs again
    assert state.corrupt == 1 and state.lines == 4
    assert state.torn_bytes == len('{"id": "d", "sta')
    assert out.read_text().endswith('"ok"}\n')  # appending now keeps valid JSON lines
    assert scan_output(out, retry_failed=True).done == {"a", "7"}
    assert scan_output(tmp_path / "missing.jsonl").done == set()


def test_input_lines_get_ids_defaults_and_errors(tmp_path: Path):
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            {"id": "x", "prompt": "one"},
            {"prompt": "two", "model": "mistral:7b", "max_tokens": 3},
            "",
            "[1, 2]",
            {"id": "x", "prompt": "again"},
            {"id": 9, "messages": [{"role": "user", "content": "hi"}], "bogus": 1},
            {"id": "skip-me", "prompt": "done before"},
        ],
    )
    invalid: list[InvalidLine] = []
    lines: dict[str, int] = {}
    requests = list(
        iter_requests(
            source,
            BatchDefaults(MODEL, max_tokens=5, temperature=0.5),
            skip={"skip-me"},
            on_invalid=invalid.append,
            on_line=lambda request, line: lines.__setitem__(request.id or "", line),
        )
    )
    assert [r.id for r in requests] == ["x", "line-2"]
    assert requests[0].model == MODEL and requests[0].max_tokens == 5
    assert requests[0].temperature == 0.5
    assert requests[1].model == "mistral:7b" and requests[1].max_tokens == 3
    assert lines == {"x": 1, "line-2": 2}
    # The duplicate is named after its own line, so it never reads as the outcome of "x".
    assert [(i.line, i.id) for i in invalid] == [(4, "line-4"), (5, "line-5"), (6, "9")]
    assert invalid[1].duplicate_of == "x" and invalid[1].to_json()["duplicate_of"] == "x"
    assert "duplicate" in invalid[1].message and "bogus" in invalid[2].message
    assert count_pending(source, {"skip-me"}) == (5, 1)


# ---------------------------------------------------------------- the command on the DevServer


async def test_batch_runs_every_line_and_writes_one_outcome_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    source = write_lines(
        tmp_path / "in.jsonl",
        [{"id": f"q{i}", "prompt": f"Question {i}"} for i in range(6)] + ["{broken"],
    )
    out = tmp_path / "out.jsonl"
    async with DevServer(**FAST, answer_tokens=8) as server:
        use_server(monkeypatch, server)
        code = await run_cli("batch", str(source), "-o", str(out), "-c", "3", "--max-tokens", "4")
    assert code == 1  # one line was not a request
    outcomes = read_outcomes(out)
    assert len(outcomes) == 7
    ok = {o["id"]: o for o in outcomes if o["status"] == "ok"}
    assert sorted(ok) == [f"q{i}" for i in range(6)]
    assert all(o["tokens"] == 4 and o["text"] and o["job_id"] for o in ok.values())
    assert ok["q2"]["line"] == 3 and ok["q2"]["request"]["prompt"] == "Question 2"
    (bad,) = [o for o in outcomes if o["status"] == "error"]
    assert bad["id"] == "line-7" and bad["error"]["type"] == "InvalidRequest"
    err = capsys.readouterr().err
    assert "6 ok, 1 failed" in err and "tokens/s" in err
    assert len(prompts_posted(server)) == 6


async def test_resume_skips_ids_already_written_and_tolerates_a_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    source = write_lines(
        tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": f"Question {i}"} for i in range(5)]
    )
    out = tmp_path / "out.jsonl"
    # What a run killed mid-write leaves: two whole lines and half of a third.
    out.write_text(
        json.dumps({"id": "q0", "status": "ok", "text": "kept"})
        + "\n"
        + json.dumps({"id": "q3", "status": "ok", "text": "kept"})
        + "\n"
        + '{"id": "q1", "status": "ok", "te'
    )
    async with DevServer(**FAST, answer_tokens=3) as server:
        use_server(monkeypatch, server)
        assert await run_cli("batch", str(source), "-o", str(out), "--no-progress") == 0
    assert sorted(prompts_posted(server)) == ["Question 1", "Question 2", "Question 4"]
    outcomes = read_outcomes(out)  # every line parses: the torn one was cut off
    assert [o["id"] for o in outcomes[:2]] == ["q0", "q3"]
    assert outcomes[0]["text"] == "kept"
    assert sorted(o["id"] for o in outcomes) == [f"q{i}" for i in range(5)]
    err = capsys.readouterr().err
    assert "torn last line" in err and "resuming: 2" in err and "2 skipped" in err


def spawn_batch(source: Path, out: Path, server: DevServer, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, **server.env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "infernet_async", "batch", str(source), "-o", str(out), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )


async def wait_for_lines(out: Path, count: int, process: subprocess.Popen[str]) -> None:
    with anyio.fail_after(20):
        while not (out.exists() and len(out.read_text().splitlines()) >= count):
            assert process.poll() is None, "the batch ended before it could be stopped"
            await anyio.sleep(0.02)


async def test_resume_after_the_process_is_killed_mid_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    source = write_lines(
        tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": f"Question {i}"} for i in range(12)]
    )
    out = tmp_path / "out.jsonl"
    async with DevServer(**{**FAST, "tokens_per_second": 50.0}, answer_tokens=8) as server:
        process = spawn_batch(source, out, server, "-c", "2", "--no-progress")
        try:
            await wait_for_lines(out, 3, process)
            process.kill()  # SIGKILL: no cleanup of any kind
        finally:
            process.wait()
            assert process.stderr is not None
            process.stderr.close()
        before = {o["id"] for o in read_outcomes(out)}
        assert 3 <= len(before) < 12
        # The killed process's last POSTs may still sit in the server's socket buffers (this loop
        # was blocked in wait()): let the server take them in before counting, or they would be
        # counted as the resumed run's.
        posted_before = -1
        while posted_before != len(server.requests):
            posted_before = len(server.requests)
            await anyio.sleep(0.1)
        posted_before = len(prompts_posted(server))
        use_server(monkeypatch, server)
        assert await run_cli("batch", str(source), "-o", str(out), "-c", "4") == 0
        resubmitted = prompts_posted(server)[posted_before:]
    outcomes = read_outcomes(out)
    assert sorted(o["id"] for o in outcomes) == sorted(f"q{i}" for i in range(12))
    assert all(o["status"] == "ok" for o in outcomes)
    # Jobs whose outcome was written are never submitted again.
    assert not {f"Question {i[1:]}" for i in before} & set(resubmitted)
    assert len(resubmitted) == 12 - len(before)


async def test_an_interrupt_writes_partial_texts_and_the_next_run_redoes_those_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    source = write_lines(
        tmp_path / "in.jsonl",
        [{"id": "short", "prompt": "s", "max_tokens": 2}]
        + [{"id": f"long{i}", "prompt": f"l{i}"} for i in range(2)],
    )
    out = tmp_path / "out.jsonl"
    async with DevServer(**{**FAST, "tokens_per_second": 100.0}, answer_tokens=2000) as server:
        process = spawn_batch(source, out, server, "-c", "3", "--no-progress")
        try:
            await wait_for_lines(out, 1, process)
            await anyio.sleep(0.2)
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                while process.poll() is None:
                    await anyio.sleep(0.02)
        finally:
            process.wait()
            assert process.stderr is not None
            err = process.stderr.read()
            process.stderr.close()
        assert process.returncode == 130
        assert "stopped early" in err and "2 cancelled" in err
        cancelled = [o for o in read_outcomes(out) if o["status"] == "cancelled"]
        assert sorted(o["id"] for o in cancelled) == ["long0", "long1"]
        assert all(o["text"] and o["tokens"] for o in cancelled)
        use_server(monkeypatch, server)
        code = await run_cli("batch", str(source), "-o", str(out), "--max-tokens", "3")
    assert code == 0
    last = {o["id"]: o for o in read_outcomes(out)}  # the last line for an id wins
    assert {k: v["status"] for k, v in last.items()} == dict.fromkeys(
        ["short", "long0", "long1"], "ok"
    )


async def test_cancelling_run_batch_in_process_writes_cancelled_outcomes(tmp_path: Path):
    source = write_lines(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": "p"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    summary = BatchSummary()
    async with (
        DevServer(**{**FAST, "tokens_per_second": 100.0}, answer_tokens=2000) as server,
        InfernetClient(server.base_url, server.token) as client,
    ):
        with anyio.move_on_after(0.4):
            await run_batch(
                client,
                source,
                out,
                concurrency=3,
                defaults=BatchDefaults(MODEL),
                resume=scan_output(out),
                summary=summary,
            )
    assert summary.cancelled == 3 and summary.ok == 0
    assert all(o["status"] == "cancelled" and o["text"] for o in read_outcomes(out))
    assert scan_output(out).done == set()


async def test_jobs_ending_as_the_run_is_interrupted_are_written_and_not_redone(tmp_path: Path):
    # Every answer arrives in the loop turn of the interrupt: their outcomes are still in the
    # fan-out's stream when the block is left. Written, a rerun does not pay for them again.
    source = write_lines(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": "p"} for i in range(10)])
    out = tmp_path / "out.jsonl"
    answers = anyio.Event()

    class AnswersAtOnce:
        def map(self, requests: Any, *, concurrency: int, max_attempts: int) -> FanOut:
            async def run_job(index: int, request: BatchRequest, on_cancel: Any) -> BatchOutcome:
                try:
                    await answers.wait()
                except anyio.get_cancelled_exc_class():
                    on_cancel(BatchOutcome(index=index, request=request, status="cancelled"))
                    raise
                return BatchOutcome(index=index, request=request, status="ok", text="answer")

            return FanOut(run_job, requests, concurrency=concurrency)

    summary = BatchSummary()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:

            async def interrupt() -> None:
                await anyio.sleep(0.1)
                answers.set()
                scope.cancel()

            group.start_soon(interrupt)
            await run_batch(
                AnswersAtOnce(),  # type: ignore[arg-type]
                source,
                out,
                concurrency=10,
                defaults=BatchDefaults(MODEL),
                resume=scan_output(out),
                summary=summary,
            )
    assert summary.ok == 10 and [o["status"] for o in read_outcomes(out)] == ["ok"] * 10
    assert scan_output(out).done == {f"r{i}" for i in range(10)}


async def test_batch_runs_on_the_embedded_control_plane_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "Hello"}, {"prompt": "Bye"}])
    assert await run_cli("batch", str(source), "--max-tokens", "2", "--no-progress") == 0
    out = tmp_path / "in.out.jsonl"  # the default output name
    assert sorted(o["id"] for o in read_outcomes(out)) == ["line-1", "line-2"]
    err = capsys.readouterr().err
    assert "embedded control plane" in err and "2 ok, 0 failed" in err


async def test_the_progress_bar_comes_after_the_embedded_planes_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "Hello"}])
    assert await run_cli("batch", str(source), "--max-tokens", "2", "--progress") == 0
    err = capsys.readouterr().err
    assert err.startswith("infernet-async: no INFERNET_BASE_URL")  # not drawn onto the bar's line
    assert "%|" in err  # and the bar was drawn


async def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert await run_cli("batch", str(tmp_path / "missing.jsonl")) == 2
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    assert await run_cli("batch", str(source), "-o", str(source)) == 2
    err = capsys.readouterr().err
    assert "no such input file" in err and "must not be the input file" in err


# ---------------------------------------------------------------- input handling (QA reports)


def last_line_per_id(path: Path) -> dict[Any, dict[str, Any]]:
    """How a reader of the output sees it: the last line for an id wins."""
    return {o["id"]: o for o in read_outcomes(path)}


@pytest.mark.parametrize(
    "flag",
    [
        ("--temperature", "7"),
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--max-tokens", "0"),
        ("-c", "0"),
        ("--max-attempts", "-1"),
    ],
)
def test_out_of_range_defaults_are_usage_errors_and_nothing_is_written(
    tmp_path: Path, flag: tuple[str, str], capsys: pytest.CaptureFixture[str]
):
    # Accepted, every line failed validation and was written as done: a fixed rerun skipped them.
    source = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exited:
        main(["batch", str(source), "-o", str(out), "--no-progress", *flag])
    assert exited.value.code == 2
    assert not out.exists()
    assert f"argument {flag[0]}" in capsys.readouterr().err


async def test_a_duplicate_id_does_not_mask_the_outcome_of_the_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    source = write_lines(
        tmp_path / "in.jsonl",
        [{"id": "a", "prompt": "first a"}, {"id": "b", "prompt": "b"}, {"id": "a", "prompt": "2"}],
    )
    out = tmp_path / "out.jsonl"
    async with DevServer(**FAST, answer_tokens=3) as server:
        use_server(monkeypatch, server)
        # One at a time: the duplicate is read after "a" ended, so its line comes last.
        code = await run_cli("batch", str(source), "-o", str(out), "-c", "1", "--no-progress")
    assert code == 1  # the duplicate line is an input error
    outcomes = last_line_per_id(out)
    assert outcomes["a"]["status"] == "ok" and outcomes["a"]["request"]["prompt"] == "first a"
    assert outcomes["b"]["status"] == "ok"
    duplicate = outcomes["line-3"]
    assert duplicate["status"] == "error" and duplicate["duplicate_of"] == "a"
    assert duplicate["line"] == 3 and "duplicate id 'a'" in duplicate["error"]["message"]
    assert prompts_posted(server) == ["first a", "b"]
    assert "2 ok, 1 failed" in capsys.readouterr().err
    # A rerun asking for failed jobs again still counts "a" done; the duplicate is not run.
    assert scan_output(out, retry_failed=True).done == {"a", "b"}
    assert count_pending(source, scan_output(out, retry_failed=True).done) == (0, 3)


def test_an_id_that_is_its_own_line_name_is_not_reused_for_its_duplicate(tmp_path: Path):
    source = write_lines(
        tmp_path / "in.jsonl", [{"id": "line-2", "prompt": "explicit"}, {"prompt": "unnamed"}]
    )
    invalid: list[InvalidLine] = []
    requests = list(
        iter_requests(source, BatchDefaults(MODEL), skip=set(), on_invalid=invalid.append)
    )
    assert [r.id for r in requests] == ["line-2"]
    assert invalid[0].id is None and invalid[0].duplicate_of == "line-2"


async def test_a_bom_and_crlf_input_keeps_its_first_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'\xef\xbb\xbf{"id":"bom","prompt":"x"}\r\n{"id":"b","prompt":"y"}\r\n')
    out = tmp_path / "out.jsonl"
    async with DevServer(**FAST, answer_tokens=2) as server:
        use_server(monkeypatch, server)
        assert await run_cli("batch", str(source), "-o", str(out), "--no-progress") == 0
    outcomes = last_line_per_id(out)
    assert sorted(outcomes) == ["b", "bom"] and outcomes["bom"]["status"] == "ok"
    assert count_pending(source, scan_output(out).done) == (0, 2)


def test_a_line_that_is_not_utf8_is_an_error_line_and_the_others_run(tmp_path: Path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b'{"id":"a","prompt":"caf\xe9"}\n\xff\xfe\x00garbage\n{"id":"b","prompt":"y"}\n'
    )
    assert count_pending(source, set()) == (3, 0)
    assert count_pending(source, {"line-1", "b"}) == (1, 2)
    invalid: list[InvalidLine] = []
    requests = list(
        iter_requests(source, BatchDefaults(MODEL), skip=set(), on_invalid=invalid.append)
    )
    assert [r.id for r in requests] == ["b"]
    assert [(i.line, i.id) for i in invalid] == [(1, "line-1"), (2, "line-2")]
    assert all("not UTF-8" in i.message for i in invalid)


def test_a_lone_surrogate_escape_is_an_error_line_not_a_crash(tmp_path: Path):
    # Valid JSON, but "\ud800" has no UTF-8 form: writing its outcome used to end the run.
    source = write_lines(
        tmp_path / "in.jsonl", ['{"id":"s","prompt":"x\\ud800y"}', {"id": "t", "prompt": "ok"}]
    )
    invalid: list[InvalidLine] = []
    requests = list(
        iter_requests(source, BatchDefaults(MODEL), skip=set(), on_invalid=invalid.append)
    )
    assert [r.id for r in requests] == ["t"] and [i.id for i in invalid] == ["s"]
    out = tmp_path / "out.jsonl"
    with OutcomeWriter(out) as writer:  # an answer can spell one too
        writer.write({"id": "t", "status": "ok", "text": "x\ud800y"})
    assert read_outcomes(out) == [{"id": "t", "status": "ok", "text": "x\ud800y"}]


def batch_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["batch", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "embedded control plane" not in err  # refused before anything started
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_unusable_output_and_input_paths_are_one_line_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    for name in ("INFERNET_BASE_URL", "INFERNET_BEARER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    source = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    assert "is a directory" in batch_usage_error([str(source), "-o", str(tmp_path)], capsys)
    missing_dir = tmp_path / "nope" / "out.jsonl"
    assert "no such directory" in batch_usage_error([str(source), "-o", str(missing_dir)], capsys)
    assert not missing_dir.parent.exists()
    assert "is a directory" in batch_usage_error([str(tmp_path)], capsys)
    assert "no such input file" in batch_usage_error([str(tmp_path / "missing.jsonl")], capsys)
    # Unreadable input (chmod cannot make one for root, which the tests may run as).
    real_open = Path.open

    def refuse_input(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == source:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(Path, "open", refuse_input)
    err = batch_usage_error([str(source), "-o", str(out)], capsys)
    assert "cannot read the input file" in err and "Permission denied" in err
    assert not out.exists()
    # An output that cannot be written is found before the control plane starts, too.
    refused = out

    def refuse_output(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == refused:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse_output)
    err = batch_usage_error([str(source), "-o", str(out)], capsys)
    assert "cannot write the output file" in err and "Permission denied" in err
