"""Nothing that arrived is lost: a deadline mid-answer, and a node that goes offline mid-answer.

    python examples/partial_on_cancel.py

``stream.text`` is everything received so far, whatever ended the stream: a timeout (a
cancellation), ``break``, or an error, whose ``partial_text`` holds the same text.
"""

import asyncio

from _connect import MODEL, connect

from infernet_async import InfernetClient, NodeDisconnectedError
from infernet_async.devserver import DevServer, Fault

QUESTION = [{"role": "user", "content": "Explain how neural networks learn, in detail."}]


async def with_a_deadline(client: InfernetClient) -> None:
    stream = client.stream(model=MODEL, messages=QUESTION, max_tokens=400)
    try:
        async with asyncio.timeout(0.6):  # far less than the answer needs
            async with stream:
                async for _token in stream:
                    pass
        print(f"finished in time: {stream.text}")
    except TimeoutError:
        # The timeout cancelled the read; the connection is closed and the text kept.
        print(f"timed out after {stream.token_count} tokens; kept: {stream.text!r}")


async def with_a_node_drop(client: InfernetClient, server: DevServer | None) -> None:
    if server is not None:
        # On the local control plane, make the serving node go offline after 5 tokens.
        server.inject(Fault.drop_node(after_tokens=5))
    try:
        async with client.stream(model=MODEL, messages=QUESTION) as stream:
            async for _token in stream:
                pass
        print(f"complete answer: {stream.text!r}")
    except NodeDisconnectedError as exc:
        # The guide: the partial response is valid, and the job was re-queued on another node.
        print(f"node went offline; partial answer: {exc.partial_text!r}")
        same = stream.text == exc.partial_text
        print(f"job {exc.job_id} was re-queued; stream.text is the same: {same}")


async def main() -> None:
    async with connect() as (client, server):
        await with_a_deadline(client)
        await with_a_node_drop(client, server)


if __name__ == "__main__":
    asyncio.run(main())
