"""How every example finds a control plane: yours, or a local one.

With INFERNET_BASE_URL or INFERNET_BEARER_TOKEN set, ``connect()`` yields ``InfernetClient()`` for
them (your account, real nodes). Otherwise it starts the embedded control plane (``DevServer``:
emulated nodes, generated text, no account) and yields a client for it, together with the server
so an example can make a fault happen on purpose.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from infernet_async import InfernetClient
from infernet_async.devserver import DevServer

MODEL = os.environ.get("INFERNET_MODEL", "qwen2.5:14b")


@contextlib.asynccontextmanager
async def connect(
    **client_options: Any,
) -> AsyncIterator[tuple[InfernetClient, DevServer | None]]:
    if os.environ.get("INFERNET_BASE_URL") or os.environ.get("INFERNET_BEARER_TOKEN"):
        async with InfernetClient(**client_options) as client:
            yield client, None
        return
    async with (
        DevServer() as server,
        InfernetClient(server.base_url, server.token, **client_options) as client,
    ):
        yield client, server
