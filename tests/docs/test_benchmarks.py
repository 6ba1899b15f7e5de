"""The end-to-end benchmark's clients still do their job: each streams whole answers from the
DevServer with no error, so a change to the SDK (or to a peer) cannot leave ``bench_e2e.py``
measuring something else, or nothing. Peers not installed (the ``bench`` extra) are skipped.
``bench_fanout.py`` (fan-out pacing) runs its runners here and, whole, at a tiny N.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

import infernet_async
from infernet_async.devserver import DevServer, NodeSpec
from tests.helpers.paths import BENCHMARKS

ANSWER_TOKENS = 6
STREAMS = 3
# The clients that need more than the dev extra, and the module each imports.
NEEDS = {
    "httpx_sse": "httpx_sse",
    "aiohttp_sse_client2": "aiohttp_sse_client2",
    "openai_python": "openai",
}


def load_benchmark(name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bench = load_benchmark("bench_e2e")


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    node = NodeSpec(
        "node_bench",
        (bench.MODEL,),
        "bench-node",
        tokens_per_second=2000,
        time_to_first_token=0.0,
        capacity=STREAMS,
    )
    async with DevServer(
        tokens=bench.TOKEN, nodes=[node], answer_tokens=ANSWER_TOKENS, heartbeat_interval=None
    ) as running:
        yield running


@pytest.mark.parametrize("client", sorted(bench.RUNNERS))
async def test_each_bench_e2e_client_streams_whole_answers(client: str, server: DevServer) -> None:
    if client in NEEDS:
        pytest.importorskip(NEEDS[client])
    times = await bench.RUNNERS[client](server.base_url, STREAMS, ANSWER_TOKENS)
    assert [t.error for t in times] == [None] * STREAMS
    assert [t.tokens for t in times] == [ANSWER_TOKENS] * STREAMS
    assert all(t.first is not None and t.started <= t.first <= t.ended for t in times)
    kept = [t for t in times if t.text is not None]
    # The OpenAI surface's clients keep their answers, and each is the one the prompt gets.
    if client in ("openai_python", "infernet_async_openai", "infernet_async_openai_map"):
        assert len(kept) == STREAMS
    assert sorted(t.index for t in kept) == list(range(len(kept)))
    assert [t.text for t in kept] == [bench.expected_text(t.index, ANSWER_TOKENS) for t in kept]
    bench.check_answers(times, ANSWER_TOKENS)
    assert [t.error for t in times] == [None] * STREAMS


def test_a_wrong_answer_is_an_error() -> None:
    right = bench.StreamTimes(0.0, tokens=ANSWER_TOKENS, index=1)
    right.text = bench.expected_text(1, ANSWER_TOKENS)
    wrong = bench.StreamTimes(0.0, tokens=ANSWER_TOKENS, index=2)
    wrong.text = bench.expected_text(2, ANSWER_TOKENS)[:-1]
    bench.check_answers([right, wrong], ANSWER_TOKENS)
    assert right.error is None
    assert wrong.error is not None and wrong.error.startswith("answer 2: ")


def test_every_runner_but_the_opt_in_floor_runs_by_default() -> None:
    assert set(bench.RUNNERS) - set(bench.CLIENTS) == {"socket_floor"}


async def test_bench_ab_runs_the_fan_out_of_a_package(server: DevServer) -> None:
    bench_ab = load_benchmark("bench_ab")
    tokens = await bench_ab.fan_out(infernet_async, server.base_url, STREAMS, ANSWER_TOKENS)
    assert tokens == STREAMS * ANSWER_TOKENS


# ---------------------------------------------------------------- bench_fanout

fanout = load_benchmark("bench_fanout")


@pytest.mark.parametrize("mode", sorted(fanout.RUNNERS))
async def test_each_bench_fanout_runner_finishes_every_job(mode: str, server: DevServer) -> None:
    jobs = await fanout.RUNNERS[mode](server.base_url, STREAMS, STREAMS, ANSWER_TOKENS, "t")
    assert [j.error for j in jobs] == [None] * STREAMS
    assert all(j.ok and j.tokens == ANSWER_TOKENS and not j.rate_limited for j in jobs)
    if mode in ("interactive", "collect", "ours"):
        assert all(j.ttft is not None and j.ttft >= 0 for j in jobs)


def test_bench_fanout_reads_the_servers_windows() -> None:
    arrivals = [(100.0, 200), (100.5, 429), (130.0, 200), (160.2, 200), (161.0, 200), (225.0, 200)]
    windows = fanout.window_report(arrivals)
    assert [(w["ok"], w["429"]) for w in windows] == [(2, 1), (2, 0), (1, 0)]
    assert [w["opened_s"] for w in windows] == [0.0, pytest.approx(60.2), 125.0]
    assert windows[0]["lag_s"] is None
    assert windows[1]["lag_s"] == pytest.approx(0.2)
    assert windows[2]["lag_s"] == pytest.approx(4.8)
    assert windows[1]["spread_s"] == pytest.approx(0.8)


def test_bench_fanout_smoke(tmp_path: Path) -> None:
    """The whole script, servers and clients in processes of their own, at a tiny N (seconds)."""
    out = tmp_path / "fanout.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_fanout.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| case | N | budget | ours wall s (best) | unpaced wall s (best) |" in done.stdout
    report = json.loads(out.read_text())
    summaries = {s["case"]: s for s in report["summaries"]}
    assert set(summaries) == {"burst", "large", "shared"}
    for summary in summaries.values():
        # Within one window: every job done, each created once, no 429 either way.
        assert summary["ours_ok"] == summary["unpaced_ok"] == summary["total"]
        assert summary["jobs_created"] == summary["total"]
        assert summary["ours_429"] == summary["unpaced_429"] == 0
        assert summary["ours_wall_s"] > 0 and summary["unpaced_wall_s"] > 0
    assert summaries["shared"]["total"] == 6  # two client processes of 3 jobs on one token
    assert {c["mode"] for c in report["cell"]} == {"interactive", "collect"}
    for cell in report["cell"]:
        assert cell["errors"] == 0 and cell["ok"] == cell["jobs"] == 3
        assert cell["cpu_us_per_token"] > 0 and cell["ttft_median_ms"] is not None
