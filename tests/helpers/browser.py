"""Whether the browser tests can run here: the rule lives in one function so it has its own test."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Literal

Verdict = Literal["run", "skip", "fail"]


def find_chromium() -> tuple[str | None, str | None]:
    """Debian's chromium and chromedriver, as found on PATH."""
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which(
        "chromedriver"
    )


def browser_verdict(
    chromium: str | None, chromedriver: str | None, env: Mapping[str, str]
) -> Verdict:
    """Run when both are installed; otherwise skip on a developer machine, but fail in CI
    (CI=true), where .ci/run installs them and a missing browser is a broken setup."""
    if chromium is not None and chromedriver is not None:
        return "run"
    return "fail" if env.get("CI") == "true" else "skip"
