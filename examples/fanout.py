"""Ask many questions at once, with a bound on how many stream at the same time.

    python examples/fanout.py

``client.gather(requests, concurrency=N)`` returns the outcomes in input order, once all are done;
``async with client.map(requests, concurrency=N) as outcomes`` hands each one over as it ends. A
failed job is an outcome (``status="error"``, with whatever text arrived), never an exception that
cancels its siblings; leaving the ``map`` block early cancels the jobs still running.
"""

import asyncio

from _connect import MODEL, connect

from infernet_async import BatchRequest
from infernet_async.devserver import Fault

COUNTRIES = ["France", "Germany", "Italy", "Spain", "Japan", "Canada"]


async def main() -> None:
    async with connect() as (client, server):
        requests = [
            BatchRequest(id=country, model=MODEL, prompt=f"What is the capital of {country}?")
            for country in COUNTRIES
        ]

        # In input order, once every answer is in.
        outcomes = await client.gather(requests, concurrency=3)
        for outcome in outcomes:
            print(f"{outcome.id:<8} {outcome.status:<6} {outcome.text}")

        # As each one ends. On the local control plane, the first submission gets a 404
        # model_not_found: that job's outcome is an error, and the others go on.
        if server is not None:
            server.inject(Fault.http_error(404, code="model_not_found", method="POST"))
        done = 0
        async with client.map(requests[:4], concurrency=2) as finished:
            async for outcome in finished:
                done += 1
                error = f" ({outcome.error.code})" if outcome.error else ""
                print(f"#{done} {outcome.id}: {outcome.status}{error}")


if __name__ == "__main__":
    asyncio.run(main())
