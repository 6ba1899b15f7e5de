"""Stream an answer token by token: the README's first example.

    python examples/stream_tokens.py

Runs on the embedded control plane unless INFERNET_BASE_URL / INFERNET_BEARER_TOKEN are set.
"""

import asyncio
import os

from infernet_async import InfernetClient
from infernet_async.devserver import DevServer


async def ask(client: InfernetClient) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    async with client.stream(model="qwen2.5:14b", messages=messages) as stream:
        async for token in stream:
            print(token, end="", flush=True)
    print()
    print(f"({stream.token_count} tokens, finished: {stream.finished})")


async def main() -> None:
    if os.environ.get("INFERNET_BASE_URL") or os.environ.get("INFERNET_BEARER_TOKEN"):
        async with InfernetClient() as client:  # your account
            await ask(client)
    else:  # no account: a local control plane with emulated nodes
        async with DevServer() as server, InfernetClient(server.base_url, server.token) as client:
            await ask(client)


if __name__ == "__main__":
    asyncio.run(main())
