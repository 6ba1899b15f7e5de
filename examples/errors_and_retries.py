"""Errors and retries: what the client retries for you, and what reaches your code as which class.

    python examples/errors_and_retries.py

The client retries 429 (after ``Retry-After``), 503 ``no_capacity``, 500 and connection errors with
exponential backoff and jitter (``RetryPolicy``); a submission is retried only when the failure
shows that no job was created, so a retry never bills you twice. Everything else is raised at once,
as a subclass of ``InfernetError`` chosen by the body's error code.
"""

import asyncio
import logging

from _connect import MODEL, connect

from infernet_async import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    InfernetClient,
    InfernetError,
    ModelNotFoundError,
    RateLimitError,
    RetryPolicy,
    StreamError,
)
from infernet_async.devserver import DevServer, Fault

QUESTION = [{"role": "user", "content": "What is the capital of Italy?"}]


async def retried_for_you(client: InfernetClient, server: DevServer | None) -> None:
    if server is not None:  # on the local control plane: no capacity twice, then a free node
        server.inject(Fault.http_error(503), times=2)
    answer = await client.complete(model=MODEL, messages=QUESTION)
    print(f"answer after retries: {answer}")


async def raised_at_once(client: InfernetClient, server: DevServer | None) -> None:
    try:
        await client.complete(model="no-such-model:1b", messages=QUESTION)
    except ModelNotFoundError as exc:  # 404 model_not_found: retrying cannot help
        print(f"{type(exc).__name__}: status={exc.status} code={exc.code} message={exc.message!r}")

    if server is not None:  # a rate limit longer than RetryPolicy.max_retry_after is not waited out
        server.inject(Fault.http_error(429, retry_after=600))
    try:
        await client.complete(model=MODEL, messages=QUESTION)
    except RateLimitError as exc:
        print(f"{type(exc).__name__}: retry after {exc.retry_after:g} s")


async def one_handler_for_all(client: InfernetClient) -> str | None:
    """The shape of a caller that must not crash: most specific first, InfernetError last."""
    try:
        return await client.complete(model=MODEL, messages=QUESTION)
    except AuthenticationError:
        print("check INFERNET_BEARER_TOKEN")
    except StreamError as exc:  # the answer broke off; exc.partial_text is what arrived
        print(f"partial answer: {exc.partial_text!r}")
    except APIError as exc:  # any other error answer from the control plane
        print(f"API error {exc.status} {exc.code}: {exc.message}")
    except APIConnectionError as exc:  # no answer at all (also timeouts: APITimeoutError)
        print(f"cannot reach the control plane: {exc}")
    except InfernetError as exc:  # e.g. JobFailedError from wait_job()
        print(f"failed: {exc}")
    return None


async def main() -> None:
    # The client logs each retry (at INFO) on the "infernet_async" logger.
    logging.basicConfig(format="  log: %(message)s", level=logging.WARNING)
    logging.getLogger("infernet_async").setLevel(logging.INFO)
    # Short backoff so the example is quick; the default starts at 1 s.
    async with connect(retry=RetryPolicy(max_retries=3, backoff_base=0.05)) as (client, server):
        await retried_for_you(client, server)
        await raised_at_once(client, server)
        if server is not None:
            server.inject(Fault.drop_node(after_tokens=2))
        stream_answer = await one_handler_for_all(client)
        print(f"complete() followed the re-queued job: {stream_answer}")


if __name__ == "__main__":
    asyncio.run(main())
