"""``infernet-async serve``: starts, prints the URL and token, serves, and stops on Ctrl-C."""

from __future__ import annotations

import os
import sys

import aiohttp
import pytest

from infernet_async.cli import main
from tests.helpers.devserver import Api, texts
from tests.helpers.paths import ROOT
from tests.helpers.serve import serve_process


async def test_serve_prints_url_and_token_serves_and_stops_on_sigint() -> None:
    arguments = ("--port", "0", "--token", "cli-token", "--dialect", "typed")
    speed = ("--tokens-per-second", "1000", "--time-to-first-token", "0", "--answer-tokens", "4")
    async with serve_process(*arguments, *speed) as banner:
        assert "local emulation" in banner[0]
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in banner
            if line.startswith("export ")
        )
        base_url = exports["INFERNET_BASE_URL"]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        assert exports["INFERNET_BEARER_TOKEN"] == "cli-token"
        async with aiohttp.ClientSession() as session:
            api = Api(session, base_url, "cli-token")
            _, events, _ = await api.read_stream()
            assert [e.event for e in events][-1] == "done" and len(texts(events)) == 4
            status, _, _ = await api.request("GET", "/models", token="dev-token")
            assert status == 401  # only the tokens given on the command line


def test_serve_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--host",
        "--port",
        "--token",
        "--dialect",
        "--heartbeat",
        "--job-timeout",
        "--upstream",
        "--seed",
    ):
        assert option in out


def test_serve_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    assert "cannot listen" in capsys.readouterr().err


def test_building_the_cli_and_importing_the_devserver_do_not_import_aiohttp_web() -> None:
    import subprocess

    code = (
        "import sys, infernet_async, infernet_async.devserver\n"
        "from infernet_async.cli import build_parser\n"
        "build_parser()\n"
        "from infernet_async.devserver import Fault, NodeSpec\n"
        "assert 'aiohttp.web' not in sys.modules, 'aiohttp.web imported'\n"
        "from infernet_async.devserver import DevServer\n"
        "assert 'aiohttp.web' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=30)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--port", "99999"),
        ("--port", "-1"),
        ("--tokens-per-second", "0"),
        ("--tokens-per-second", "nan"),
        ("--time-to-first-token", "-1"),
        ("--heartbeat", "-1"),
        ("--rate-limit-per-minute", "0"),
        ("--rate-limit-per-hour", "0"),
        ("--answer-tokens", "0"),
        ("--job-timeout", "0"),
        ("--node-drop-probability", "2"),
    ],
)
def test_serve_out_of_range_values_are_usage_errors(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("infernet-async serve: error: argument " + option), err


def test_serve_heartbeat_zero_is_still_accepted_as_off() -> None:
    from infernet_async.cli import build_parser

    args = build_parser().parse_args(["serve", "--heartbeat", "0", "--port", "0"])
    assert args.heartbeat == 0


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [("rate_limit_per_minute", 0, "rate limits"), ("port", 70000, "port")],
)
def test_serve_setting_the_server_refuses_is_one_line_and_exit_2(
    setting: str, value: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from infernet_async.cli import build_parser

    # Past the argument types (as a value they let through would be): the server's own checks,
    # and the bind's, still end in one line.
    args = build_parser().parse_args(["serve", "--port", "0"])
    setattr(args, setting, value)
    assert args.handler(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("infernet-async serve: error: "), captured.err
    assert fragment in lines[0]
