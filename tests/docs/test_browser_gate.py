"""The browser test skips only off CI: without Chromium it skips on a developer machine and fails
when CI=true (where .ci/run must have installed it)."""

from __future__ import annotations

import pytest

from tests.helpers.browser import browser_verdict


@pytest.mark.parametrize(
    ("chromium", "chromedriver", "env", "verdict"),
    [
        ("/usr/bin/chromium", "/usr/bin/chromedriver", {}, "run"),
        ("/usr/bin/chromium", "/usr/bin/chromedriver", {"CI": "true"}, "run"),
        (None, None, {}, "skip"),
        (None, None, {"CI": "false"}, "skip"),
        (None, None, {"CI": "true"}, "fail"),
        ("/usr/bin/chromium", None, {"CI": "true"}, "fail"),
        (None, "/usr/bin/chromedriver", {"CI": "true"}, "fail"),
        ("/usr/bin/chromium", None, {}, "skip"),
    ],
)
def test_browser_verdict(
    chromium: str | None, chromedriver: str | None, env: dict[str, str], verdict: str
) -> None:
    assert browser_verdict(chromium, chromedriver, env) == verdict
