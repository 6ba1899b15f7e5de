"""Shared fixtures: a clean environment for every test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_infernet_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own INFERNET_* settings."""
    import os

    for name in list(os.environ):
        if name.startswith("INFERNET_"):
            monkeypatch.delenv(name)
