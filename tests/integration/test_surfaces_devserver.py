"""Every surface against the embedded control plane: the same client calls, the same answers.

The DevServer serves the documented API, the OpenAI-compatible surface and the chat surface on one
origin, from the same nodes, so one prompt gives one answer whichever surface carried it; the
faults and the hosted switch show what each surface does when things go wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from infernet_async import (
    APITimeoutError,
    IncompleteStreamError,
    InfernetClient,
    NotSupportedError,
    StreamError,
    Timeouts,
)
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import MODEL, MSG, fast_retry

SURFACES = ["jobs", "openai", "chat"]


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(
        tokens_per_second=2000, time_to_first_token=0, answer_tokens=8, heartbeat_interval=0.05
    ) as srv:
        yield srv


def client_of(server: DevServer, api: str | None, **kw: Any) -> InfernetClient:
    kw.setdefault("retry", fast_retry())
    token = server.token if api in (None, "jobs") else kw.pop("token", None)
    return InfernetClient(server.url, token, api=api, **kw)


async def test_one_prompt_gives_one_answer_on_every_surface(server: DevServer) -> None:
    answers: dict[str, str] = {}
    for api in SURFACES:
        async with (
            client_of(server, api) as client,
            client.stream(model=MODEL, messages=MSG) as stream,
        ):
            tokens = [t async for t in stream]
        assert stream.finished and stream.api == api and len(tokens) == 8
        assert stream.text == "".join(tokens) and stream.job_id
        answers[api] = stream.text
    assert len(set(answers.values())) == 1, answers


async def test_complete_and_list_models_on_every_surface(server: DevServer) -> None:
    expected = sorted({m for node in server.nodes for m in node["models"]})
    for api in SURFACES:
        async with client_of(server, api) as client:
            assert await client.complete(model=MODEL, messages=MSG)
            assert sorted(m.id for m in await client.list_models()) == expected


async def test_openai_stream_ids_are_completion_ids(server: DevServer) -> None:
    async with client_of(server, "openai") as client:
        stream = client.stream(model=MODEL, messages=MSG)
        async with stream:
            await stream.final_text()
    assert stream.job_id is not None and stream.job_id.startswith("chatcmpl-")


@pytest.mark.parametrize("api", SURFACES)
async def test_a_dropped_node_is_never_a_clean_answer(server: DevServer, api: str) -> None:
    server.inject(Fault.drop_node(after_tokens=3))
    async with client_of(server, api) as client:
        stream = client.stream(model=MODEL, messages=MSG)
        async with stream:
            with pytest.raises(StreamError) as info:
                async for _ in stream:
                    pass
    assert not stream.finished and info.value.partial_text == stream.text
    assert len(stream.text) > 0 and stream.token_count == 3


async def test_chat_jobs_submit_wait_and_replay(server: DevServer) -> None:
    async with client_of(server, "chat") as client:
        job = await client.submit(model=MODEL, messages=MSG)
        done = await client.wait_job(job.id, poll_interval=0.01, max_poll_interval=0.05)
        assert done.status == "completed" and done.id == job.id
        replay = client.stream_job(job.id)
        async with replay:
            text = await replay.final_text()
        assert replay.finished and replay.job_id == job.id and text
        with pytest.raises(NotSupportedError):
            await client.list_jobs()
    assert all(r.headers.get("Authorization") is None for r in server.requests)


async def test_a_dropped_chat_connection_resumes_with_the_replay_deduplicated(
    server: DevServer,
) -> None:
    server.inject(Fault.disconnect(after_tokens=3, abort=True))
    async with client_of(server, "chat") as client:
        stream = client.stream(model=MODEL, messages=MSG, reconnect=True)
        async with stream:
            tokens = [t async for t in stream]
        whole = await client.complete(model=MODEL, messages=MSG)
    assert stream.finished and stream.reconnects == 1 and "".join(tokens) == whole


async def test_a_dropped_openai_connection_is_incomplete_with_the_partial_text(
    server: DevServer,
) -> None:
    server.inject(Fault.disconnect(after_tokens=3, abort=True))
    async with client_of(server, "openai") as client:
        stream = client.stream(model=MODEL, messages=MSG, reconnect=True)
        async with stream:
            with pytest.raises(IncompleteStreamError) as info:
                await stream.final_text()
    assert info.value.partial_text == stream.text and stream.token_count == 3


async def test_unset_api_finds_chat_on_a_server_shaped_like_the_hosted_one() -> None:
    async with (
        DevServer(
            hosted=True, tokens_per_second=2000, time_to_first_token=0, answer_tokens=5
        ) as srv,
        client_of(srv, None, retry=fast_retry()) as client,
    ):
        answer = await client.complete(model=MODEL, messages=MSG)
        assert client.api == "chat" and answer
        await client.complete(model=MODEL, messages=MSG)
    posts = [r.path for r in srv.requests if r.method == "POST"]
    assert posts == ["/api/v1/jobs", "/api/chat", "/api/chat"]


async def test_hosted_chat_stream_after_a_node_drop_only_pings_until_the_stall_deadline() -> None:
    async with DevServer(
        hosted=True,
        tokens_per_second=2000,
        time_to_first_token=0,
        answer_tokens=8,
        heartbeat_interval=0.05,
    ) as srv:
        srv.inject(Fault.drop_node(after_tokens=2))
        async with client_of(srv, "chat", timeouts=Timeouts(stall=0.4)) as client:
            stream = client.stream(model=MODEL, messages=MSG)
            async with asyncio.timeout(5), stream:
                with pytest.raises(APITimeoutError) as info:
                    await stream.final_text()
    assert info.value.phase == "stall" and info.value.partial_text == stream.text
    assert stream.token_count == 2
