"""The end-to-end benchmark's clients still do their job: each streams whole answers from the
DevServer with no error, so a change to the SDK (or to a peer) cannot leave ``bench_e2e.py``
measuring something else, or nothing. Peers not installed (the ``bench`` extra) are skipped.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

import infernet_async
from infernet_async.devserver import DevServer, NodeSpec

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
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
