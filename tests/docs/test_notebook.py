"""examples/quickstart.ipynb runs top to bottom in a real kernel; an interrupt keeps the text.

Executed with nbclient on an ipykernel whose "python3" kernelspec is this interpreter (written to a
temporary JUPYTER_PATH, which Jupyter searches first), so the kernel imports this checkout whatever
kernels the machine has installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from infernet_async.devserver import DevServer
from tests.helpers.examples import EXAMPLES

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = EXAMPLES / "quickstart.ipynb"
ROOT = EXAMPLES.parent
CELL_TIMEOUT = 60


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A "python3" kernelspec for this interpreter, found before any other, and a kernel
    environment that imports this checkout."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (this checkout)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # jupyter_core warns (DeprecationWarning) about its platformdirs migration unless told.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )


def cell_outputs(cell: Any, output_type: str) -> list[Any]:
    return [o for o in cell.get("outputs", []) if o["output_type"] == output_type]


def stdout_of(cell: Any) -> str:
    return "".join(o["text"] for o in cell_outputs(cell, "stream") if o["name"] == "stdout")


def displayed_markdown(cell: Any) -> list[str]:
    return [
        o["data"]["text/markdown"]
        for o in cell_outputs(cell, "display_data")
        if "text/markdown" in o["data"]
    ]


def live_cell_index(nb: Any) -> int:
    return next(i for i, c in enumerate(nb.cells) if "live-stream" in c.metadata.get("tags", []))


async def test_quickstart_runs_top_to_bottom(
    kernel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fast control plane of the test's, configured the way a user configures their account.
    async with DevServer(tokens_per_second=2000, time_to_first_token=0) as server:
        monkeypatch.setenv("INFERNET_BASE_URL", server.base_url)
        monkeypatch.setenv("INFERNET_BEARER_TOKEN", server.token)
        nb = await execute_quickstart()
    check_quickstart_outputs(nb)


async def execute_quickstart() -> Any:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Checks the notebook must pass, run in its kernel after its own cells.
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import asyncio, sys\n"
            "print(sys.executable)\n"
            "print('nest_asyncio' in sys.modules, asyncio.get_running_loop().is_running())"
        )
    )
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3")
    await client.async_execute()
    return nb


def check_quickstart_outputs(nb: Any) -> None:
    errors = [o for c in nb.cells for o in cell_outputs(c, "error")]
    assert errors == []
    live = nb.cells[live_cell_index(nb)]
    shown = displayed_markdown(live)
    stats = stdout_of(nb.cells[live_cell_index(nb) + 1]).splitlines()
    assert stats[0].startswith("finished: True, ") and " tokens, job job_" in stats[0]
    answer = "\n".join(stats[1:])
    assert shown == [answer] and answer.startswith("Neural networks")
    complete = next(c for c in nb.cells if "client.complete(" in c.source)
    assert cell_outputs(complete, "execute_result")[0]["data"]["text/plain"] == "'6 × 7 = 42.'"
    fan_out = next(c for c in nb.cells if "fan-out" in c.metadata.get("tags", []))
    assert stdout_of(fan_out).splitlines() == [
        "France   ok     Paris is the capital of France.",
        "Germany  ok     Berlin is the capital of Germany.",
        "Italy    ok     Rome is the capital of Italy.",
        "Japan    ok     Tokyo is the capital of Japan.",
    ]
    executable, flags = stdout_of(nb.cells[-1]).splitlines()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert flags == "False True"  # no nest_asyncio; top-level await ran in the kernel's loop


async def wait_for_tokens(server: DevServer, count: int, deadline: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while not any(record.tokens_sent >= count for record in server.streams):
        assert loop.time() < give_up, "the live cell never streamed"
        await asyncio.sleep(0.02)


async def test_interrupting_the_live_cell_keeps_the_text_that_arrived(
    kernel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with DevServer(tokens_per_second=20, time_to_first_token=0, answer_tokens=400) as server:
        monkeypatch.setenv("INFERNET_BASE_URL", server.base_url)
        monkeypatch.setenv("INFERNET_BEARER_TOKEN", server.token)
        nb = nbformat.read(NOTEBOOK, as_version=4)
        index = live_cell_index(nb)
        nb.cells = nb.cells[: index + 2]  # up to the cell that prints what the stream holds
        nb.cells[index].source = nb.cells[index].source.replace("max_tokens=60", "max_tokens=400")
        client = nbclient.NotebookClient(
            nb, timeout=CELL_TIMEOUT, allow_errors=True, kernel_name="python3"
        )
        async with client.async_setup_kernel():
            for i, cell in enumerate(nb.cells):
                running = asyncio.ensure_future(
                    client.async_execute_cell(cell, i, execution_count=i + 1)
                )
                if i == index:
                    # A person presses the stop button once a few tokens are on screen.
                    await wait_for_tokens(server, 5)
                    await client.km.interrupt_kernel()
                await running
        record = await server.wait_for_stream_close(timeout=5)

    live, stats_cell = nb.cells[index], nb.cells[index + 1]
    (error,) = cell_outputs(live, "error")
    assert error["ename"] in ("CancelledError", "KeyboardInterrupt")
    stats = stdout_of(stats_cell).splitlines()
    assert stats[0].startswith("finished: False, ")
    partial = "\n".join(stats[1:])
    assert partial and displayed_markdown(live) == [partial]
    assert record.closed_by_client and not record.completed
    assert 5 <= record.tokens_sent < 400
