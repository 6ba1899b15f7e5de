"""The ``chat``, ``models`` and ``jobs`` commands: output, exits and error lines.

``main(argv)`` runs in a worker thread (it owns its event loop) while the DevServer runs on the
test's loop; capsys sees both. Ctrl-C is tested for real: a subprocess gets SIGINT mid-answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infernet_async import InfernetClient
from infernet_async.cli import main
from infernet_async.devserver import DevServer, Fault
from tests.helpers.paths import ROOT
from tests.helpers.signals import default_sigint

PROMPT = "What is the capital of France?"
EMBEDDED_NOTE = "using the embedded control plane"


@pytest.fixture
async def dev(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DevServer]:
    """A fast DevServer, configured for the CLI through the environment as a user would."""
    async with DevServer(tokens_per_second=2000, time_to_first_token=0) as server:
        monkeypatch.setenv("INFERNET_BASE_URL", server.base_url)
        monkeypatch.setenv("INFERNET_BEARER_TOKEN", server.token)
        yield server


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def expected_answer(server: DevServer, prompt: str = PROMPT, **options: object) -> str:
    async with InfernetClient(server.base_url, server.token) as client:
        return await client.complete(
            model="qwen2.5:14b", messages=[{"role": "user", "content": prompt}], **options
        )


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("infernet-async: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


# --- chat --------------------------------------------------------------------------------------


async def test_chat_streams_the_answer_to_stdout(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("chat", PROMPT) == 0
    out, err = capsys.readouterr()
    assert out == await expected_answer(dev) + "\n"
    assert "Paris" in out
    assert err == ""  # configured: no embedded-control-plane notice


async def test_chat_without_configuration_runs_on_the_embedded_control_plane(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "INFERNET_BASE_URL" not in os.environ and "INFERNET_BEARER_TOKEN" not in os.environ
    assert await cli("chat", "--max-tokens", "6", PROMPT) == 0
    out, err = capsys.readouterr()
    assert EMBEDDED_NOTE in err and err.count("\n") == 1
    assert out.startswith("Paris")


async def test_jobs_on_the_embedded_control_plane_say_it_starts_empty(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "INFERNET_BASE_URL" not in os.environ and "INFERNET_BEARER_TOKEN" not in os.environ
    assert await cli("jobs", "list") == 0
    _, err = capsys.readouterr()
    assert EMBEDDED_NOTE in err and "starts empty" in err and "infernet-async serve" in err


async def test_chat_sends_model_system_max_tokens_and_temperature(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["chat", "--model", "mistral:7b", "--system", "Be brief.", "--max-tokens", "3"]
    assert await cli(*argv, "--temperature", "0.2", "Tell me about Paris.") == 0
    body = next(r.json for r in dev.requests if r.method == "POST")
    assert body["model"] == "mistral:7b"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about Paris."},
    ]
    assert body["max_tokens"] == 3 and body["temperature"] == 0.2 and body["stream"] is True
    out, _ = capsys.readouterr()
    assert out.strip() and out.endswith("\n")


async def test_chat_reads_the_prompt_from_stdin(
    dev: DevServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))
    assert await cli("chat", "-") == 0
    out, _ = capsys.readouterr()
    assert out == await expected_answer(dev) + "\n"


async def test_chat_no_stream_prints_the_whole_answer_once(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("chat", "--no-stream", PROMPT) == 0
    out, err = capsys.readouterr()
    assert out == await expected_answer(dev) + "\n" and err == ""


async def test_chat_json_prints_one_event_per_line(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("chat", "--json", PROMPT) == 0
    out, _ = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    tokens = [e["text"] for e in events if e["type"] == "token"]
    assert len(tokens) > 1
    assert events[-1]["type"] == "done"
    assert events[-1]["text"] == "".join(tokens) == await expected_answer(dev)
    assert events[-1]["job_id"].startswith("job_")
    assert events[-1]["tokens"] == len(tokens)


async def test_chat_json_in_the_typed_dialect_reports_job_and_node(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, dialect="typed") as server:
        monkeypatch.setenv("INFERNET_BASE_URL", server.base_url)
        monkeypatch.setenv("INFERNET_BEARER_TOKEN", server.token)
        assert await cli("chat", "--json", "--max-tokens", "4", PROMPT) == 0
    types = [json.loads(line)["type"] for line in capsys.readouterr().out.splitlines()]
    assert types[0] == "job" and "meta" in types and types[-1] == "done"


async def test_chat_node_disconnect_keeps_the_partial_answer_and_says_why(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    full = await expected_answer(dev)
    dev.inject(Fault.drop_node(after_tokens=3))
    assert await cli("chat", PROMPT) == 1
    out, err = capsys.readouterr()
    assert out.rstrip("\n") and full.startswith(out.rstrip("\n")) and out != full + "\n"
    assert_one_error_line(err, "offline", "partial answer is above")


async def test_chat_json_reports_a_stream_error_as_an_event(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # JSON mode follows a re-queued job (up to max_stream_restarts times): every attempt drops.
    dev.inject(Fault.drop_node(after_tokens=2), times=10)
    assert await cli("chat", "--json", PROMPT) == 1
    out, err = capsys.readouterr()
    last = json.loads(out.splitlines()[-1])
    assert last["type"] == "error" and last["code"] == "node_disconnected"
    assert last["partial_text"] and last["job_id"].startswith("job_")
    assert_one_error_line(err, "offline")


async def test_chat_unknown_model_is_one_line(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("chat", "--model", "no-such-model:1b", PROMPT) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, "infernet-async models")


async def test_chat_bad_token_is_one_line(
    dev: DevServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", "not-the-token")
    assert await cli("chat", PROMPT) == 1
    _, err = capsys.readouterr()
    assert_one_error_line(err, "401", "INFERNET_BEARER_TOKEN")
    assert "not-the-token" not in err


async def test_chat_unreachable_control_plane_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("INFERNET_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", "t")
    assert await cli("chat", PROMPT) == 1
    _, err = capsys.readouterr()
    assert_one_error_line(err, "cannot reach")


async def test_chat_rate_limited_is_one_line(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # More 429s than the client's retries; a wait longer than it will honour.
    dev.inject(Fault.http_error(429, retry_after=3600), times=10)
    assert await cli("chat", PROMPT) == 1
    _, err = capsys.readouterr()
    assert_one_error_line(err, "rate limited")


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The host names looked up from now on; each lookup fails, as for a host that is not there."""
    import socket

    seen: list[str] = []

    def no_such_host(host: object, *args: object, **kwargs: object) -> object:
        seen.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    return seen


@pytest.mark.parametrize(
    "argv",
    [
        ["chat", PROMPT],
        ["chat", "--json", PROMPT],
        ["models"],
        ["jobs", "show", "job_x"],
    ],
)
async def test_a_token_over_plain_http_is_refused_naming_the_flag_and_nothing_is_sent(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    lookups: list[str],
) -> None:
    monkeypatch.setenv("INFERNET_BASE_URL", "http://example.invalid")
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", "secret-token")
    assert await cli(*argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, "plain http://", "--allow-insecure", "INFERNET_ALLOW_INSECURE=1")
    # The command line names its own flag and variable, never the client's Python argument.
    assert "allow_insecure" not in err and "True" not in err
    assert "secret-token" not in err
    assert lookups == []


async def test_allow_insecure_from_the_flag_or_the_environment_lets_the_request_go(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    lookups: list[str],
) -> None:
    monkeypatch.setenv("INFERNET_BASE_URL", "http://example.invalid")
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", "secret-token")
    assert await cli("models", "--allow-insecure") == 1
    assert_one_error_line(capsys.readouterr().err, "cannot reach")
    monkeypatch.setenv("INFERNET_ALLOW_INSECURE", "1")
    assert await cli("models") == 1
    assert_one_error_line(capsys.readouterr().err, "cannot reach")
    assert lookups and set(lookups) == {"example.invalid"}


def test_batch_refused_over_plain_http_is_a_usage_error_before_any_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERNET_BASE_URL", "http://example.invalid")
    monkeypatch.setenv("INFERNET_BEARER_TOKEN", "secret-token")
    requests = tmp_path / "in.jsonl"
    requests.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    assert main(["batch", "--no-progress", str(requests)]) == 2
    _, err = capsys.readouterr()
    assert_one_error_line(err, "--allow-insecure")
    assert "allow_insecure" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "--temperature", "3", "hi"], "--temperature"),
        (["chat", "--max-tokens", "0", "hi"], "--max-tokens"),
        (["chat", "--json", "--no-stream", "hi"], "not allowed with"),
        (["jobs", "list", "--limit", "500"], "--limit"),
    ],
)
def test_usage_errors_exit_2_with_one_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and "Traceback" not in err


def test_empty_prompt_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "  "]) == 2
    assert capsys.readouterr().err == "infernet-async chat: error: the prompt is empty\n"


# --- models and jobs ----------------------------------------------------------------------------


async def test_models_lists_the_online_models(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("models") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "NODES", "TOKENS/S"]
    assert {line.split()[0] for line in lines[1:]} == {"qwen2.5:14b", "llama3.1:8b", "mistral:7b"}
    assert await cli("models", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["id"] for m in data["models"]} == {"qwen2.5:14b", "llama3.1:8b", "mistral:7b"}


async def test_jobs_list_show_and_wait(dev: DevServer, capsys: pytest.CaptureFixture[str]) -> None:
    async with InfernetClient(dev.base_url, dev.token) as client:
        job = await client.submit(
            model="qwen2.5:14b", messages=[{"role": "user", "content": PROMPT}]
        )
    answer = await expected_answer(dev)

    assert await cli("jobs", "wait", job.id, "--poll-interval", "0.01") == 0
    out = capsys.readouterr().out
    assert f"id:        {job.id}" in out and "status:    completed" in out
    assert out.endswith("\n" + answer + "\n")

    assert await cli("jobs", "show", job.id, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == job.id and shown["result"]["content"] == answer

    assert await cli("jobs", "list", "--limit", "5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "MODEL", "CREATED"]
    assert any(line.split()[:3] == [job.id, "completed", "qwen2.5:14b"] for line in lines[1:])

    assert await cli("jobs", "list", "--status", "failed", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"jobs": []}


async def test_jobs_show_unknown_job_is_one_line(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("jobs", "show", "job_doesnotexist") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, "job_doesnotexist")


async def test_jobs_wait_timeout_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with DevServer(tokens_per_second=5, time_to_first_token=0) as server:
        monkeypatch.setenv("INFERNET_BASE_URL", server.base_url)
        monkeypatch.setenv("INFERNET_BEARER_TOKEN", server.token)
        async with InfernetClient(server.base_url, server.token) as client:
            job = await client.submit(
                model="qwen2.5:14b", messages=[{"role": "user", "content": PROMPT}]
            )
        assert await cli("jobs", "wait", job.id, "--timeout", "0.2", "--poll-interval", "0.05") == 1
    assert_one_error_line(capsys.readouterr().err, "timed out", job.id)


# --- Ctrl-C, for real --------------------------------------------------------------------------


async def interrupt_chat(server: DevServer, *extra: str) -> tuple[int, str, str]:
    """Run ``infernet-async chat`` in a subprocess and SIGINT it once output began."""
    env = {
        **os.environ,
        "INFERNET_BASE_URL": server.base_url,
        "INFERNET_BEARER_TOKEN": server.token,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infernet_async",
        "chat",
        *extra,
        PROMPT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        preexec_fn=default_sigint,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = await asyncio.wait_for(proc.stdout.read(1), 20)
        assert first, "the command printed nothing"
        await asyncio.sleep(0.1)  # a few more tokens
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(
            asyncio.gather(proc.stdout.read(), proc.stderr.read()), 20
        )
        code = await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code, (first + rest).decode(), err.decode()


async def test_ctrl_c_prints_what_arrived_and_exits_130() -> None:
    async with DevServer(tokens_per_second=40, time_to_first_token=0, answer_tokens=400) as server:
        code, out, err = await interrupt_chat(server)
        record = await server.wait_for_stream_close()
    full = await _answer_of(server)
    assert code == 130, err
    assert err.rstrip("\n").endswith("infernet-async: interrupted") and "Traceback" not in err
    partial = out.rstrip("\n")
    assert partial and full.startswith(partial) and len(partial) < len(full)
    assert record.closed_by_client and not record.completed


async def test_ctrl_c_in_json_mode_ends_with_an_interrupted_event() -> None:
    async with DevServer(tokens_per_second=40, time_to_first_token=0, answer_tokens=400) as server:
        code, out, err = await interrupt_chat(server, "--json")
    assert code == 130, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["type"] == "interrupted"
    assert events[-1]["text"] == "".join(e["text"] for e in events if e["type"] == "token")
    assert events[-1]["text"]


async def _answer_of(server: DevServer) -> str:
    async with DevServer(tokens_per_second=5000, time_to_first_token=0, answer_tokens=400) as fast:
        return await expected_answer(fast)


# --- a dropped node, and a request refused before any event ------------------------------------


async def test_chat_no_stream_follows_a_dropped_node_to_the_whole_answer(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    full = await expected_answer(dev)
    dev.inject(Fault.drop_node(after_tokens=3))
    assert await cli("chat", "--no-stream", PROMPT) == 0
    out, err = capsys.readouterr()
    assert out == full + "\n" and err == ""
    assert "node_disconnected" in [record.error for record in dev.streams]


async def test_chat_json_reports_a_restart_and_then_the_whole_answer(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    full = await expected_answer(dev)
    dev.inject(Fault.drop_node(after_tokens=3))
    assert await cli("chat", "--json", PROMPT) == 0
    out, err = capsys.readouterr()
    assert err == ""
    events = [json.loads(line) for line in out.splitlines()]
    types = [e["type"] for e in events]
    assert types.count("restart") == 1 and types[-1] == "done"
    cut = types.index("restart")
    restart, done = events[cut], events[-1]
    before = "".join(e["text"] for e in events[:cut] if e["type"] == "token")
    after = "".join(e["text"] for e in events[cut:] if e["type"] == "token")
    assert restart["reason"] == "node_disconnected" and restart["attempt"] == 2
    assert restart["discarded_text"] == before and before and full.startswith(before)
    assert done["text"] == after == full


@pytest.mark.parametrize(
    ("setting", "code", "fragment"),
    [
        ("unknown model", "model_not_found", "infernet-async models"),
        ("bad token", "unauthorized", "INFERNET_BEARER_TOKEN"),
        # Refused before a stream exists (the client's own check), an instant stand-in for an
        # unreachable control plane, whose retries would cost the suite seconds.
        ("not a URL", None, "base_url must be an http(s) URL"),
    ],
)
async def test_chat_json_reports_a_refused_request_as_an_error_object(
    setting: str,
    code: str | None,
    fragment: str,
    dev: DevServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["chat", "--json", PROMPT]
    if setting == "unknown model":
        argv[1:1] = ["--model", "no-such-model:1b"]
    elif setting == "bad token":
        monkeypatch.setenv("INFERNET_BEARER_TOKEN", "not-the-token")
    else:
        monkeypatch.setenv("INFERNET_BASE_URL", "not-a-url")
    assert await cli(*argv) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out
    error = json.loads(lines[0])
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert error["partial_text"] == "" and error["job_id"] is None
    assert_one_error_line(err, fragment)


# --- --api: every command on every surface ----------------------------------------------------


@pytest.mark.parametrize("api", ["jobs", "openai", "chat"])
async def test_chat_and_models_work_on_every_surface(
    dev: DevServer, api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = await expected_answer(dev)
    assert await cli("chat", "--api", api, PROMPT) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert await cli("models", "--api", api, "--json") == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert "qwen2.5:14b" in [m["id"] for m in models]


async def test_jobs_commands_on_the_chat_surface_and_their_limits_elsewhere(
    dev: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    async with InfernetClient(dev.url, api="chat") as client:
        job = await client.submit(model="qwen2.5:14b", messages=[{"role": "user", "content": "Hi"}])
    assert await cli("jobs", "wait", "--api", "chat", job.id) == 0
    assert job.id in capsys.readouterr().out
    assert await cli("jobs", "show", "--api", "openai", job.id) == 1
    assert_one_error_line(capsys.readouterr().err, "OpenAI-compatible surface", "no job ids")
    assert await cli("jobs", "list", "--api", "chat") == 1
    assert_one_error_line(capsys.readouterr().err, "chat surface (/api/chat) cannot list jobs")


async def test_api_from_the_environment_and_a_bad_value(
    dev: DevServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFERNET_API", "chat")
    assert await cli("chat", PROMPT) == 0
    assert [r.path for r in dev.requests if r.method == "POST"] == ["/api/chat"]
    capsys.readouterr()
    monkeypatch.setenv("INFERNET_API", "soap")
    assert await cli("chat", PROMPT) == 1
    assert_one_error_line(capsys.readouterr().err, "INFERNET_API must be one of")
