"""pytest fixtures for testing code that talks to Infernet: a fresh local control plane per test.

Enable in a ``conftest.py`` with ``pytest_plugins = ["infernet_async.devserver.pytest_plugin"]``.
The fixtures are async: they need pytest-asyncio (or another plugin that runs async fixtures).

- ``devserver``: a started ``DevServer`` tuned for tests (fast tokens, no time to first token);
- ``devserver_factory``: ``await devserver_factory(**options)`` for servers with other options;
  every server it made is closed when the test ends;
- ``devserver_env``: the ``devserver``, with ``INFERNET_BASE_URL`` and ``INFERNET_BEARER_TOKEN``
  pointing at it for the test, for code that configures itself from the environment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ._server import DevServer

__all__ = ["FAST", "devserver", "devserver_env", "devserver_factory"]

FAST: dict[str, Any] = {"tokens_per_second": 2000.0, "time_to_first_token": 0.0}
"""Near-instant generation: ``devserver`` uses these options, the factory starts from them."""

try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - without pytest-asyncio, e.g. under anyio's plugin
    _async_fixture = pytest.fixture  # type: ignore[assignment]


@_async_fixture
async def devserver() -> AsyncIterator[DevServer]:
    """A running ``DevServer`` with near-instant generation; closed after the test."""
    async with DevServer(**FAST) as server:
        yield server


@pytest.fixture
def devserver_env(devserver: DevServer, monkeypatch: pytest.MonkeyPatch) -> DevServer:
    """The ``devserver``, with the ``INFERNET_*`` variables pointing at it."""
    for name, value in devserver.env.items():
        monkeypatch.setenv(name, value)
    return devserver


@_async_fixture
async def devserver_factory() -> AsyncIterator[Callable[..., Awaitable[DevServer]]]:
    """An async factory of running ``DevServer``s (``FAST`` options unless overridden)."""
    servers: list[DevServer] = []

    async def make(**options: Any) -> DevServer:
        server = DevServer(**{**FAST, **options})
        servers.append(server)
        await server.start()
        return server

    try:
        yield make
    finally:
        for server in reversed(servers):
            await server.aclose()
