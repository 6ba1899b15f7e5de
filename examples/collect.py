"""Collect a whole answer: ``complete()`` for just the text, ``final_text()`` when you also want the
stream's figures.

    python examples/collect.py
"""

import asyncio

from _connect import MODEL, connect


async def main() -> None:
    async with connect() as (client, _):
        messages = [{"role": "user", "content": "What is 12 * 7?"}]

        # The answer as one string; a node that drops mid-answer is followed to the re-queued job.
        answer = await client.complete(model=MODEL, messages=messages)
        print(answer)

        # The same through a stream: final_text() reads it to the end.
        async with client.stream(model=MODEL, messages=messages) as stream:
            text = await stream.final_text()
        print(f"{text!r}: {stream.token_count} tokens, job {stream.job_id}")


if __name__ == "__main__":
    asyncio.run(main())
