"""Follow the re-queued job when a node drops mid-answer: ``on_node_disconnect="restart"``.

    python examples/restart_policy.py

By default a node that goes offline after tokens were delivered raises ``NodeDisconnectedError``
with the partial text (you decide what to do). With the restart policy the stream follows the
re-queued job instead, ``events()`` yields a ``Restart`` event so a display can start over, and
``stream.text`` then holds the new attempt only (``Restart.discarded_text`` the abandoned one).
"""

import asyncio

from _connect import MODEL, connect

from infernet_async import Restart, Token
from infernet_async.devserver import Fault


async def main() -> None:
    async with connect() as (client, server):
        if server is not None:
            # On the local control plane, make the first node go offline after 4 tokens.
            server.inject(Fault.drop_node(after_tokens=4))
        messages = [{"role": "user", "content": "What is the capital of Japan?"}]
        stream = client.stream(model=MODEL, messages=messages, on_node_disconnect="restart")
        async with stream:
            async for event in stream.events():
                if isinstance(event, Restart):
                    print(f"\n[node went offline; restarting, discarding {event.discarded_text!r}]")
                elif isinstance(event, Token):
                    print(event.text, end="", flush=True)
        print()
        print(f"final answer: {stream.text!r} (restarts: {stream.restarts})")


if __name__ == "__main__":
    asyncio.run(main())
