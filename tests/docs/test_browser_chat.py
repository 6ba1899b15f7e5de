"""The chat page in a real browser: headless Chromium types a prompt and sees the streamed answer.

Serves examples/aiohttp_chat on loopback, relaying to an embedded DevServer, and drives Debian's
chromium through chromedriver with selenium. Skipped only on a developer machine without
Chromium; in CI (CI=true) a missing browser fails, because .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

# selenium is in the dev extra: missing, it is an error, not a reason to skip.
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from infernet_async import InfernetClient
from infernet_async.devserver import DevServer, Fault
from tests.helpers.browser import browser_verdict, find_chromium
from tests.helpers.examples import load_example

CHROMIUM, CHROMEDRIVER = find_chromium()
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WAIT = 20.0  # seconds a browser step may take on a loaded 2-core CI machine

VERDICT = browser_verdict(CHROMIUM, CHROMEDRIVER, os.environ)
if VERDICT == "fail":
    pytest.fail(
        "chromium and chromium-driver are required in CI (.ci/run installs them)", pytrace=False
    )
if VERDICT == "skip":
    pytest.skip("chromium / chromium-driver not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module, fresh profile; paths given so selenium never tries to
    download a driver."""
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(WAIT)
            yield driver
        finally:
            driver.quit()


@contextlib.asynccontextmanager
async def chat_server(**devserver_options: Any) -> AsyncIterator[tuple[str, DevServer]]:
    """examples/aiohttp_chat served on 127.0.0.1, relaying to an embedded DevServer."""
    from aiohttp import web

    chat_app = load_example("aiohttp_chat/app.py")
    async with (
        DevServer(**devserver_options) as dev,
        InfernetClient(dev.base_url, dev.token) as client,
    ):
        runner = web.AppRunner(chat_app.create_app(client))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            yield f"http://127.0.0.1:{port}/", dev
        finally:
            await runner.cleanup()


async def expected_answer(prompt: str, **devserver_options: Any) -> str:
    """What the same (deterministic) control plane answers through the SDK directly."""
    async with (
        DevServer(**devserver_options) as dev,
        InfernetClient(dev.base_url, dev.token) as client,
    ):
        return await client.complete(
            model="qwen2.5:14b", messages=[{"role": "user", "content": prompt}], max_tokens=512
        )


def ask(
    driver: webdriver.Chrome, url: str, prompt: str, *, stop_after: int | None = None
) -> dict[str, Any]:
    """Open the page, type ``prompt``, click Send, and wait until the answer ends.

    With ``stop_after=n``, click Stop once ``n`` characters of the answer are on the page. Returns
    what the page showed, including each distinct partial answer seen while it streamed.
    """
    driver.get(url)
    driver.find_element(By.ID, "prompt").send_keys(prompt)
    driver.find_element(By.ID, "send").click()
    status = driver.find_element(By.ID, "status")
    answer = driver.find_element(By.CSS_SELECTOR, ".assistant .text")
    seen: list[str] = []

    def finished(_: Any) -> bool:
        text = answer.text
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if stop_after is not None and len(text) >= stop_after and stop_button.is_enabled():
            stop_button.click()
        return status.get_attribute("data-state") not in ("idle", "streaming")

    stop_button = driver.find_element(By.ID, "stop")
    WebDriverWait(driver, WAIT, poll_frequency=0.02).until(finished)
    return {
        "state": status.get_attribute("data-state"),
        "status": status.text,
        "user": [el.text for el in driver.find_elements(By.CSS_SELECTOR, ".user .text")],
        "answer": answer.text,
        "notes": [el.text for el in driver.find_elements(By.CSS_SELECTOR, ".assistant .error")],
        "seen": seen,
    }


PROMPT = "What is the capital of France?"
# Slow enough that the page is seen mid-answer, fast enough to keep the test short.
PACE: dict[str, Any] = {"tokens_per_second": 40, "time_to_first_token": 0.05, "answer_tokens": 30}


async def test_chat_page_streams_the_answer_into_the_page(browser: webdriver.Chrome) -> None:
    async with chat_server(**PACE) as (url, dev):
        shown = await asyncio.to_thread(ask, browser, url, PROMPT)
        record = await dev.wait_for_stream_close()
    expected = await expected_answer(PROMPT, **PACE)
    assert shown["state"] == "done", shown
    assert shown["user"] == [PROMPT]
    assert shown["answer"] == expected.strip() and "Paris" in shown["answer"]
    assert shown["notes"] == []
    # It appeared token by token: the page showed partial answers, each a prefix of the next.
    assert len(shown["seen"]) >= 2, shown["seen"]
    assert all(b.startswith(a) for a, b in zip(shown["seen"], shown["seen"][1:], strict=False))
    assert record.completed and not record.closed_by_client


async def test_node_drop_keeps_the_partial_answer_and_shows_the_error(
    browser: webdriver.Chrome,
) -> None:
    async with chat_server(**PACE) as (url, dev):
        dev.inject(Fault.drop_node(after_tokens=4))
        shown = await asyncio.to_thread(ask, browser, url, PROMPT)
    expected = await expected_answer(PROMPT, **PACE)
    assert shown["state"] == "error", shown
    assert shown["answer"] and expected.startswith(shown["answer"])
    assert len(shown["answer"]) < len(expected)
    assert shown["notes"] == ["Stream error: Node went offline mid-stream"]


async def test_stop_button_cancels_the_upstream_stream(browser: webdriver.Chrome) -> None:
    slow = {**PACE, "tokens_per_second": 10, "answer_tokens": 200}
    async with chat_server(**slow) as (url, dev):
        shown = await asyncio.to_thread(ask, browser, url, PROMPT, stop_after=5)
        # The browser aborted its fetch; the relay must stop reading the job's stream at once.
        record = await dev.wait_for_stream_close(timeout=5)
    assert shown["state"] == "stopped", shown
    assert shown["answer"] and shown["notes"] == ["Stopped."]
    assert record.closed_by_client and not record.completed
    assert record.tokens_sent < 200
