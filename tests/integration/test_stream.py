"""TokenStream against the embedded control plane, in both dialects: tokens, text, job id,
events, timing, node disconnects (transparent retry, raise, restart), reconnects, stalls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from aiohttp import web

from infernet_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    Done,
    IncompleteStreamError,
    InfernetClient,
    JobInfo,
    Meta,
    NodeDisconnectedError,
    RateLimitError,
    Restart,
    RetryPolicy,
    StreamError,
    Timeouts,
    Token,
    TokenStream,
)
from infernet_async._ratelimit import RateLimiter
from infernet_async._response import SendListener
from infernet_async._surfaces import ApiChoice
from infernet_async.devserver import DevServer, Fault
from tests.helpers.client import (
    MODEL,
    MSG,
    client_for,
    data_events,
    fast_retry,
    raw_server,
    sse_handler,
)

ANSWER = "Paris is the capital of France. Each"  # the emulation's 8-token answer to MSG


@pytest.fixture(params=["data", "typed"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[DevServer]:
    async with DevServer(
        tokens_per_second=2000, time_to_first_token=0, answer_tokens=8, dialect=request.param
    ) as srv:
        yield srv


@pytest.fixture
async def client(server: DevServer) -> AsyncIterator[InfernetClient]:
    async with client_for(server.base_url, server.token) as c:
        yield c


def _posts(server: DevServer) -> int:
    return sum(1 for r in server.requests if r.method == "POST")


async def test_tokens_text_job_id_and_finished(server: DevServer, client: InfernetClient) -> None:
    stream = client.stream(model=MODEL, messages=MSG)
    assert isinstance(stream, TokenStream) and server.requests == []  # nothing sent yet
    async with stream:
        tokens = [token async for token in stream]
    assert all(isinstance(t, str) for t in tokens) and len(tokens) == 8
    assert "".join(tokens) == stream.text == ANSWER
    assert stream.finished and stream.terminal_reason == "done"
    assert stream.job_id is not None and stream.job_id.startswith("job_")
    assert server.job(stream.job_id) is not None
    body = server.requests[0].json
    assert body["stream"] is True and body["model"] == MODEL and "temperature" not in body


async def test_parameters_reach_the_request_body(server: DevServer, client: InfernetClient) -> None:
    stream = client.stream(
        model=MODEL, messages=MSG, max_tokens=3, temperature=0.2, top_p=0.9, node_id="node_4090a1"
    )
    async with stream:
        await stream.final_text()
    body = server.requests[0].json
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (3, 0.2, 0.9)
    assert body["node_id"] == "node_4090a1"
    assert stream.token_count == 3


async def test_iterating_without_async_with_sends_on_first_iteration(
    client: InfernetClient,
) -> None:
    stream = client.stream(model=MODEL, messages=MSG)
    assert [t async for t in stream] != [] and stream.finished
    assert [t async for t in stream] == []  # exhausted, not restarted
    await stream.aclose()


async def test_final_text_and_timing(client: InfernetClient) -> None:
    async with client.stream(model=MODEL, messages=MSG) as stream:
        assert stream.time_to_first_token is None and stream.tokens_per_second is None
        assert await stream.final_text() == ANSWER
        assert await stream.final_text() == ANSWER  # idempotent once finished
    assert stream.token_count == 8
    assert stream.time_to_first_token is not None and stream.time_to_first_token >= 0
    assert stream.tokens_per_second is None or stream.tokens_per_second > 0


async def test_events_are_typed(server: DevServer, client: InfernetClient) -> None:
    async with client.stream(model=MODEL, messages=MSG) as stream:
        events = [event async for event in stream.events()]
    kinds = [type(e) for e in events]
    assert kinds.count(Token) == 8 and kinds[-1] is Done
    if server.dialect == "typed":
        assert kinds[:2] == [JobInfo, Meta]
        done = events[-1]
        assert isinstance(done, Done) and done.text == ANSWER
    else:
        assert kinds == [Token] * 8 + [Done]


async def test_complete_returns_the_answer(client: InfernetClient) -> None:
    assert await client.complete(model=MODEL, messages=MSG) == ANSWER


async def test_stream_job_of_a_submitted_job(server: DevServer, client: InfernetClient) -> None:
    job = await client.submit(model=MODEL, messages=MSG)
    async with client.stream_job(job.id) as stream:
        text = await stream.final_text()
    assert text == ANSWER and stream.job_id == job.id and stream.finished
    assert _posts(server) == 1


async def test_malformed_event_is_skipped(server: DevServer, client: InfernetClient) -> None:
    server.inject(Fault.malformed_event(after_tokens=2))
    assert await client.complete(model=MODEL, messages=MSG) == ANSWER


async def test_slow_drip_one_byte_at_a_time(server: DevServer, client: InfernetClient) -> None:
    server.inject(Fault.slow_drip(byte_delay=0, chunk_size=1))
    async with client.stream(model=MODEL, messages=MSG) as stream:
        tokens = [t async for t in stream]
    assert "".join(tokens) == ANSWER and stream.finished


async def test_two_tasks_cannot_read_one_stream(client: InfernetClient) -> None:
    async with client.stream(model=MODEL, messages=MSG) as stream:
        stream._busy = True  # as if another task were inside __anext__
        with pytest.raises(RuntimeError, match="another task"):
            await stream.__anext__()
        stream._busy = False


# -- node_disconnected -----------------------------------------------------------------------------


async def test_node_drop_before_any_token_is_retried_transparently(
    server: DevServer, client: InfernetClient
) -> None:
    server.inject(Fault.drop_node(after_tokens=0))
    async with client.stream(model=MODEL, messages=MSG) as stream:
        tokens = [t async for t in stream]
    assert "".join(tokens) == ANSWER and stream.finished and stream.restarts == 1
    assert _posts(server) == 1  # followed the re-queued job, never resubmitted
    assert server.streams[-1].path.endswith(f"/jobs/{stream.job_id}/stream")


async def test_node_drop_after_tokens_raises_with_partial_text(
    server: DevServer, client: InfernetClient
) -> None:
    server.inject(Fault.drop_node(after_tokens=3))
    seen: list[str] = []
    with pytest.raises(NodeDisconnectedError) as info:
        async with client.stream(model=MODEL, messages=MSG) as stream:
            async for token in stream:
                seen.append(token)  # noqa: PERF401 - the list must survive the exception
    assert len(seen) == 3
    assert info.value.partial_text == "".join(seen) == stream.text == "Paris is the"
    assert info.value.job_id == stream.job_id is not None
    assert not stream.finished
    record = await server.wait_for_stream_close(stream.job_id)
    assert record.error == "node_disconnected"


async def test_restart_policy_follows_the_requeued_job_and_says_so(
    server: DevServer, client: InfernetClient
) -> None:
    server.inject(Fault.drop_node(after_tokens=3))
    stream = client.stream(model=MODEL, messages=MSG, on_node_disconnect="restart")
    shown = ""
    restarts: list[Restart] = []
    async with stream:
        async for event in stream.events():
            if isinstance(event, Restart):
                restarts.append(event)
                shown = ""  # the answer starts over
            elif isinstance(event, Token):
                shown += event.text
    assert [r.discarded_text for r in restarts] == ["Paris is the"]
    assert restarts[0].attempt == 2 and restarts[0].reason == "node_disconnected"
    assert shown == stream.text == ANSWER and stream.finished
    assert _posts(server) == 1


async def test_restarts_are_bounded() -> None:
    seen: list[str] = []

    async def always_drops(request):  # type: ignore[no-untyped-def]
        seen.append(f"{request.method} {request.path}")
        event = b'data: {"error": "node_disconnected", "message": "gone"}\n\n'
        handler = sse_handler([event], headers={"X-Infernet-Job-Id": "job_x"})
        return await handler(request)

    async with raw_server(always_drops) as url:
        client = client_for(url, retry=fast_retry(max_stream_restarts=2))
        async with client:
            with pytest.raises(NodeDisconnectedError) as info:
                async with client.stream(model=MODEL, messages=MSG) as stream:
                    async for _ in stream:
                        pass
    assert stream.restarts == 2 and info.value.job_id == "job_x"
    assert seen == ["POST /api/v1/jobs"] + ["GET /api/v1/jobs/job_x/stream"] * 2


async def test_no_restart_budget_raises_at_the_first_drop(server: DevServer) -> None:
    server.inject(Fault.drop_node(after_tokens=0))
    client = client_for(server.base_url, server.token, retry=fast_retry(max_stream_restarts=0))
    async with client:
        with pytest.raises(NodeDisconnectedError) as info:
            async with client.stream(model=MODEL, messages=MSG) as stream:
                async for _ in stream:
                    pass
    assert stream.restarts == 0 and info.value.partial_text == ""


async def test_complete_survives_a_node_drop_mid_answer(
    server: DevServer, client: InfernetClient
) -> None:
    server.inject(Fault.drop_node(after_tokens=4))
    assert await client.complete(model=MODEL, messages=MSG) == ANSWER


# -- dropped connections ---------------------------------------------------------------------------


@pytest.mark.parametrize("abort", [False, True], ids=["eof", "cut"])
async def test_dropped_connection_raises_incomplete_with_partial_text(
    server: DevServer, client: InfernetClient, abort: bool
) -> None:
    server.inject(Fault.disconnect(after_tokens=3, abort=abort))
    with pytest.raises(IncompleteStreamError) as info:
        async with client.stream(model=MODEL, messages=MSG) as stream:
            async for _ in stream:
                pass
    assert info.value.partial_text == stream.text == "Paris is the"
    assert info.value.job_id == stream.job_id
    assert stream.terminal_reason == "incomplete" and not stream.finished


@pytest.mark.parametrize("abort", [False, True], ids=["eof", "cut"])
async def test_stream_job_reconnects_and_skips_what_was_delivered(
    server: DevServer, client: InfernetClient, abort: bool
) -> None:
    server.configure(tokens_per_second=200)  # the job is still running when we reconnect
    job = await client.submit(model=MODEL, messages=MSG)
    server.inject(Fault.disconnect(after_tokens=3, abort=abort))
    async with client.stream_job(job.id) as stream:
        tokens = [t async for t in stream]
    assert "".join(tokens) == stream.text == ANSWER  # nothing twice, nothing missing
    assert stream.reconnects == 1 and stream.finished
    assert _posts(server) == 1  # never re-POSTed
    gets = [r for r in server.requests if r.path.endswith("/stream")]
    assert len(gets) == 2
    if server.dialect == "typed":
        assert gets[1].headers.get("Last-Event-ID") is not None


async def test_reconnect_to_a_finished_job_hands_out_only_the_rest() -> None:
    # A finished job replays as one event holding its whole text: only the rest may be handed out.
    calls: list[str | None] = []

    async def handler(request):  # type: ignore[no-untyped-def]
        calls.append(request.headers.get("Last-Event-ID"))
        if len(calls) == 1:
            return await sse_handler(data_events("Paris", " is", " the", done=False))(request)
        return await sse_handler(data_events(ANSWER))(request)

    async with raw_server(handler) as url:
        client = client_for(url)
        async with client, client.stream_job("job_x") as stream:
            tokens = [t async for t in stream]
    assert tokens == ["Paris", " is", " the", " capital of France. Each"]
    assert stream.text == ANSWER and stream.finished and len(calls) == 2


async def test_reconnect_to_a_different_attempt_is_not_spliced() -> None:
    calls: list[int] = []

    async def handler(request):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            return await sse_handler(data_events("Paris", " is", done=False))(request)
        return await sse_handler(data_events("Lyon", " is"))(request)

    async with raw_server(handler) as url:
        client = client_for(url)
        async with client, client.stream_job("job_x") as stream:
            with pytest.raises(IncompleteStreamError, match="differs") as info:
                async for _ in stream:
                    pass
    assert info.value.partial_text == "Paris is"


def _silent_then_whole(
    calls: list[str | None],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Two tokens, then neither bytes nor FIN (a half-open connection); a reconnect (its
    Last-Event-ID goes in ``calls``) gets the whole answer."""

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.headers.get("Last-Event-ID"))
        if len(calls) == 1:
            return await sse_handler([*data_events("Paris", " is", done=False), 30.0])(request)
        return await sse_handler(data_events("Paris", " is", " the", " capital."))(request)

    return handler


@pytest.mark.parametrize("reconnect", [True, False])
async def test_a_connection_gone_silent_is_a_dropped_one_for_a_stream_that_reconnects(
    reconnect: bool,
) -> None:
    # Two tokens, then neither bytes nor FIN (a half-open connection): the read timeout fires.
    calls: list[str | None] = []
    handler = _silent_then_whole(calls)

    async with raw_server(handler) as url, client_for(url, timeouts=Timeouts(read=0.3)) as client:
        stream = client.stream_job("job_x", reconnect=reconnect)
        async with stream:
            if reconnect:
                assert [t async for t in stream] == ["Paris", " is", " the", " capital."]
            else:
                with pytest.raises(APITimeoutError) as info:
                    async for _ in stream:
                        pass
                assert info.value.phase == "read" and info.value.partial_text == "Paris is"
    assert (stream.reconnects, len(calls)) == ((1, 2) if reconnect else (0, 1))


async def test_the_stall_deadline_does_not_run_through_a_reconnects_backoff() -> None:
    # Silent after two tokens: the read timeout (0.3 s) calls for a reconnect, whose backoff
    # (0.3 to 0.6 s) ends past the stall deadline counted from the last token (0.5 s). The stall
    # clock starts again as the reconnect goes out.
    calls: list[str | None] = []
    handler = _silent_then_whole(calls)

    timeouts = Timeouts(read=0.3, stall=0.5)
    retry = RetryPolicy(backoff_base=0.6)
    async with (
        raw_server(handler) as url,
        client_for(url, timeouts=timeouts, retry=retry) as client,
        client.stream_job("job_x") as stream,
    ):
        assert await stream.final_text() == "Paris is the capital."
    assert stream.reconnects == 1 and len(calls) == 2


def _rate_limited(retry_after: float) -> web.Response:
    return web.json_response(
        {"error": "rate_limited", "error_message": "slow down"},
        status=429,
        headers={"Retry-After": str(retry_after)},
    )


async def test_the_stall_deadline_does_not_run_through_a_reconnects_retry_wait() -> None:
    # Silent after two tokens: the read timeout (0.3 s) calls for a reconnect, whose GET is told
    # to wait 1 s (429). That wait is the client's own: the stall (0.8 s) runs from the retry's
    # sending.
    calls: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            return await sse_handler([*data_events("Paris", " is", done=False), 30.0])(request)
        if len(calls) == 2:
            return _rate_limited(1.0)
        return await sse_handler(data_events("Paris", " is", " the", " capital."))(request)

    timeouts = Timeouts(read=0.3, stall=0.8)
    retry = RetryPolicy(backoff_base=0.05, backoff_max=0.05)
    async with (
        raw_server(handler) as url,
        client_for(url, timeouts=timeouts, retry=retry) as client,
        client.stream_job("job_x") as stream,
    ):
        assert await stream.final_text() == "Paris is the capital."
    assert len(calls) == 3


async def test_the_stall_deadline_does_not_run_through_the_limiters_wait_before_a_reconnect() -> (
    None
):
    # A fan-out worker's stream: another request of the client is answered 429 (wait 1 s) as this
    # stream's connection goes silent, so the shared limiter holds its reconnect.
    paths: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        paths.append(request.path)
        if "/job_other" in request.path:
            return _rate_limited(1.0)
        if sum(p.endswith("/job_x/stream") for p in paths) == 1:
            return await sse_handler([*data_events("Paris", " is", done=False), 30.0])(request)
        return await sse_handler(data_events("Paris", " is", " the", " capital."))(request)

    timeouts = Timeouts(read=0.3, stall=0.8)
    retry = RetryPolicy(backoff_base=0.05, backoff_max=0.05, max_retries=0)
    async with (
        raw_server(handler) as url,
        client_for(url, timeouts=timeouts, retry=retry) as client,
    ):
        limiter = RateLimiter()
        async with client.stream_job("job_x", rate_limiter=limiter) as stream:

            async def other() -> None:
                await asyncio.sleep(0.25)  # just before the read timeout
                with pytest.raises(RateLimitError):
                    await client.stream_job("job_other", rate_limiter=limiter).final_text()

            side = asyncio.create_task(other())
            try:
                assert await stream.final_text() == "Paris is the capital."
            finally:
                await side


async def test_the_stall_deadline_holds_for_a_re_queued_attempt_when_collecting() -> None:
    # After a node drop the re-queued job waits 0.7 s, sends one token, then only pings: the stall
    # (0.5 s) runs from that attempt's first token, not only at the total deadline (3 s).
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            dropped = b'data: {"error": "node_disconnected", "message": "Node went offline"}\n\n'
            body = [*data_events("a", "b", done=False), dropped]
            return await sse_handler(body, headers={"X-Infernet-Job-Id": "job_x"})(request)
        pings = [b": ping\n\n", 0.1] * 60
        return await sse_handler([0.7, *data_events("c", done=False), *pings])(request)

    timeouts = Timeouts(read=5.0, stall=0.5, total=3.0)
    async with raw_server(handler) as url, client_for(url, timeouts=timeouts) as client:
        stream = client.stream(model=MODEL, messages=MSG, on_node_disconnect="restart")
        started = asyncio.get_running_loop().time()
        with pytest.raises(APITimeoutError) as info:
            async with stream:
                await stream.final_text()
        took = asyncio.get_running_loop().time() - started
    assert info.value.phase == "stall" and stream.restarts == 1 and stream.text == "c"
    assert took < 2.5  # the total deadline is 3 s


@pytest.mark.parametrize("waiting_for", ["a reconnect", "a retry"])
async def test_closing_the_client_ends_a_streams_wait_at_once(waiting_for: str) -> None:
    # App shutdown while a stream waits: a reconnect's backoff (1 to 2 s), or a 429's 3 s.
    async def handler(request: web.Request) -> web.StreamResponse:
        if waiting_for == "a retry":
            return _rate_limited(3.0)
        return await sse_handler(data_events("Paris", " is", done=False))(request)

    retry = RetryPolicy(backoff_base=2.0, backoff_max=2.0)
    async with raw_server(handler) as url:
        client = client_for(url, retry=retry)
        async with client:
            if waiting_for == "a retry":
                stream = client.stream(model=MODEL, messages=MSG)
            else:
                stream = client.stream_job("job_x")

            async def read() -> str:
                async with stream:
                    return await stream.final_text()

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.3)  # in the wait by now
            await client.aclose()
            with pytest.raises(StreamError, match="closed"):
                await asyncio.wait_for(reader, 0.3)


def test_the_default_read_timeout_is_under_the_stall_timeout() -> None:
    # A silent connection must meet the read timeout (a reconnect) before the stall one (an end).
    defaults = Timeouts()
    assert defaults.read is not None and defaults.stall is not None
    assert 15 < defaults.read < defaults.stall  # above the control plane's 15 s ping


async def test_closing_the_client_ends_its_streams_for_good() -> None:
    # App shutdown: client.aclose() while a stream_job (which reconnects) is read, and a stream
    # made before it but opened after. Neither reconnects, retries or builds a new session.
    async with DevServer(tokens_per_second=50, time_to_first_token=0, answer_tokens=40) as server:
        client = client_for(server.base_url, server.token, retry=RetryPolicy())
        async with client:
            job = await client.submit(model=MODEL, messages=MSG)
            reading = client.stream_job(job.id)
            later = client.stream(model=MODEL, messages=MSG)

            async def read() -> str:
                async with reading:
                    return await reading.final_text()

            reader = asyncio.create_task(read())
            while reading.token_count < 2:
                await asyncio.sleep(0.01)
            await client.aclose()
            with pytest.raises(IncompleteStreamError):
                await asyncio.wait_for(reader, 2.0)
            assert later.closed  # closed with the client, before it was ever opened
            with pytest.raises(StreamError, match="closed"):
                async with later:
                    await later.final_text()
            with pytest.raises(APIConnectionError, match="client is closed"):
                await client._transport.session()  # no session is built again
        assert reading.reconnects == 0 and client._transport._binding is None
        assert [r.path.endswith("/stream") for r in server.requests].count(True) == 1


@pytest.mark.parametrize("event_id", ["tok-1", "tok\u27131"])
async def test_a_reconnect_sends_the_last_event_id_only_if_a_header_can_carry_it(
    event_id: str,
) -> None:
    # SSE ids are any text; a header is not: an id it cannot carry is left out, and the replay
    # from the start is skipped by the filter as usual.
    def event(ident: str, kind: str, data: dict[str, str]) -> bytes:
        return f"id: {ident}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    first = [event(event_id, "token", {"text": "Paris"})]
    replay = [*first, event(event_id + "x", "token", {"text": " is"})]
    replay.append(event(event_id + "y", "done", {"text": "Paris is"}))
    calls: list[str | None] = []

    async def handler(request):  # type: ignore[no-untyped-def]
        calls.append(request.headers.get("Last-Event-ID"))
        return await sse_handler(first if len(calls) == 1 else replay)(request)

    async with (
        raw_server(handler) as url,
        client_for(url) as client,
        client.stream_job("job_x") as stream,
    ):
        assert [t async for t in stream] == ["Paris", " is"]
    assert calls == [None, event_id if event_id.isascii() else None]


async def test_stream_job_gives_up_after_the_reconnect_budget(server: DevServer) -> None:
    server.configure(tokens_per_second=100)
    client = client_for(server.base_url, server.token, retry=fast_retry(max_stream_restarts=1))
    async with client:
        job = await client.submit(model=MODEL, messages=MSG)
        server.inject(Fault.disconnect(after_tokens=1), times=2)
        with pytest.raises(IncompleteStreamError) as info:
            async with client.stream_job(job.id) as stream:
                async for _ in stream:
                    pass
    assert stream.reconnects == 1
    assert info.value.partial_text == stream.text == "Paris"


async def test_stream_with_reconnect_opt_in_resumes_via_the_job_stream(
    server: DevServer, client: InfernetClient
) -> None:
    server.configure(tokens_per_second=200)
    server.inject(Fault.disconnect(after_tokens=2, abort=True))
    async with client.stream(model=MODEL, messages=MSG, reconnect=True) as stream:
        assert await stream.final_text() == ANSWER
    assert stream.reconnects == 1 and _posts(server) == 1


async def test_typed_resume_skips_by_event_id() -> None:
    """The typed dialect's replay is skipped where it matches what was delivered (its texts, not
    only its ids), and the reconnect names the last event delivered."""
    first = [
        b'event: job\ndata: {"id": "job_x", "status": "processing"}\n\n',
        b'id: 1\nevent: meta\ndata: {"provider_node_id": "n"}\n\n',
        b'id: 2\nevent: token\ndata: {"text": "A"}\n\n',
        b'id: 3\nevent: token\ndata: {"text": "A"}\n\n',
    ]
    rest = [
        b'id: 4\nevent: token\ndata: {"text": "B"}\n\n',
        b'id: 5\nevent: done\ndata: {"text": "AAB", "reason": "stop"}\n\n',
    ]
    calls: list[str | None] = []

    async def handler(request):  # type: ignore[no-untyped-def]
        calls.append(request.headers.get("Last-Event-ID"))
        chunks = first if len(calls) == 1 else first + rest
        return await sse_handler(chunks)(request)

    async with raw_server(handler) as url:
        client = client_for(url)
        async with client, client.stream_job("job_x") as stream:
            tokens = [t async for t in stream]
    assert tokens == ["A", "A", "B"] and calls == [None, "3"]


# -- stalls and deadlines --------------------------------------------------------------------------


async def test_stall_timeout_raises_with_partial_text_though_pings_keep_coming() -> None:
    pings = [b": ping\n\n", 0.02] * 40
    handler = sse_handler(data_events("Hel", "lo", done=False) + pings)
    async with raw_server(handler) as url:
        client = client_for(url, timeouts=Timeouts(read=0.5, stall=0.15))
        async with client, client.stream(model=MODEL, messages=MSG) as stream:
            with pytest.raises(APITimeoutError) as info:
                async for _ in stream:
                    pass
    assert info.value.phase == "stall"
    assert info.value.partial_text == stream.text == "Hello"
    assert stream.terminal_reason == "timeout"


async def test_devserver_stall_fault_hits_the_stall_timeout(server: DevServer) -> None:
    server.inject(Fault.stall(after_tokens=2, seconds=5))
    client = client_for(server.base_url, server.token, timeouts=Timeouts(stall=0.3))
    async with client, client.stream(model=MODEL, messages=MSG) as stream:
        with pytest.raises(APITimeoutError) as info:
            await stream.final_text()
    assert info.value.partial_text == "Paris is" and info.value.phase == "stall"
    record = await server.wait_for_stream_close(stream.job_id)
    assert record.closed_by_client


async def test_first_token_timeout(server: DevServer) -> None:
    server.configure(time_to_first_token=2.0)
    client = client_for(server.base_url, server.token, timeouts=Timeouts(first_token=0.1))
    # The deadline runs from sending the request: on a starved machine it can pass before the
    # response head is in, and then __aenter__ raises it instead of final_text(); both are right.
    async with client:
        stream = client.stream(model=MODEL, messages=MSG)
        with pytest.raises(APITimeoutError) as info:
            async with stream:
                await stream.final_text()
    assert info.value.phase == "first_token" and info.value.partial_text == ""
    assert stream.terminal_reason == "timeout"


@pytest.mark.parametrize(
    "timeouts", [Timeouts(first_token=0.3), Timeouts(total=0.5)], ids=["first_token", "total"]
)
async def test_the_deadlines_run_from_sending_not_through_a_retrys_wait(timeouts: Timeouts) -> None:
    # A 429 asks for 0.6 s, longer than either deadline: the client waits it out and sends again.
    # The wait is the client's own, not the server's time: the retried request is answered in
    # time, and its time to first token is the server's, not the wait's.
    async with DevServer(tokens_per_second=2000, time_to_first_token=0, answer_tokens=8) as server:
        server.inject(Fault.http_error(429, retry_after=0.6))
        client = client_for(server.base_url, server.token, timeouts=timeouts, retry=RetryPolicy())
        async with client, client.stream(model=MODEL, messages=MSG) as stream:
            assert await stream.final_text() == ANSWER
        assert [r.status for r in server.requests] == [429, 200]
    assert stream.time_to_send is not None and stream.time_to_first_token is not None
    assert stream.time_to_send >= 0.6 > stream.time_to_first_token


async def test_a_wait_for_a_free_pooled_connection_is_not_the_servers_time() -> None:
    # One connection for two streams of ~0.6 s each: the second waits for the first to end,
    # longer than its first token's deadline, before its request goes out.
    async with DevServer(tokens_per_second=10, time_to_first_token=0, answer_tokens=6) as server:
        client = client_for(
            server.base_url, server.token, max_connections=1, timeouts=Timeouts(first_token=0.4)
        )
        async with client:
            streams = [client.stream(model=MODEL, messages=MSG) for _ in range(2)]

            async def read(stream: TokenStream) -> str:
                async with stream:
                    return await stream.final_text()

            texts = await asyncio.gather(*map(read, streams))
    assert all(texts) and all(s.finished for s in streams)
    waited = max(streams, key=lambda s: s.time_to_send or 0.0)
    assert waited.time_to_send is not None and waited.time_to_send >= 0.4


async def test_total_timeout_covers_the_whole_stream(server: DevServer) -> None:
    server.configure(tokens_per_second=20)
    client = client_for(server.base_url, server.token, timeouts=Timeouts(total=0.2))
    async with client:
        stream = client.stream(model=MODEL, messages=MSG)
        # As above: the total deadline may pass while the request is still being opened.
        with pytest.raises(APITimeoutError) as info:
            async with stream:
                await stream.final_text()
    assert info.value.phase == "total" and isinstance(info.value, TimeoutError)
    assert len(info.value.partial_text) < len(ANSWER) and info.value.partial_text == stream.text


def head_after(delay: float) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler that takes ``delay`` seconds to send the response head (then a token)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(delay)
        return await sse_handler(data_events("late"))(request)

    return handler


@pytest.mark.parametrize(
    ("timeouts", "phase"),
    [
        (Timeouts(read=None, first_token=0.2), "first_token"),
        (Timeouts(read=None, total=0.2), "total"),
    ],
)
async def test_a_deadline_passing_before_the_response_head_ends_the_open(
    timeouts: Timeouts, phase: str
) -> None:
    # The watchdog covers the request itself: no read timeout here to end it instead.
    async with raw_server(head_after(5.0)) as url, client_for(url, timeouts=timeouts) as client:
        stream = client.stream(model=MODEL, messages=MSG)
        started = asyncio.get_running_loop().time()
        with pytest.raises(APITimeoutError) as info:
            async with asyncio.timeout(3.0), stream:
                pass
        assert asyncio.get_running_loop().time() - started < 2.0
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
    assert info.value.phase == phase and stream.terminal_reason == "timeout"


async def _stop_while_opening(client: InfernetClient) -> TokenStream:
    """Open a stream in a task, aclose() it from here 0.15 s in, and check what the reader got."""
    stream = client.stream(model=MODEL, messages=MSG)

    async def read() -> str:
        async with stream:
            return await stream.final_text()

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.15)
    await stream.aclose()
    with pytest.raises(StreamError, match="closed while it was opening"):
        await asyncio.wait_for(reader, 2.0)
    assert stream.closed and stream.terminal_reason == "closed" and stream.text == ""
    binding = client._transport._binding
    assert binding is not None and binding.pool.in_use == 0  # the connection went at once
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    return stream


async def test_aclose_from_another_task_stops_a_stream_waiting_to_retry() -> None:
    # A Stop button during a 429's Retry-After: nothing may be sent after it.
    async with DevServer(tokens_per_second=2000, time_to_first_token=0) as server:
        server.inject(Fault.http_error(429, retry_after=0.5))
        async with client_for(server.base_url, server.token, retry=RetryPolicy()) as client:
            await _stop_while_opening(client)
            await asyncio.sleep(0.6)  # past the Retry-After
        assert [r.status for r in server.requests] == [429]


async def test_aclose_from_another_task_stops_a_stream_waiting_for_its_head() -> None:
    async with raw_server(head_after(5.0)) as url, client_for(url) as client:
        await _stop_while_opening(client)


async def test_aclose_during_a_reconnects_backoff_ends_it_at_once_and_sends_nothing_more() -> None:
    # A backoff of 0.5 to 1 s: the reader must not sit it out.
    async with DevServer(tokens_per_second=200, time_to_first_token=0, answer_tokens=30) as server:
        client = client_for(server.base_url, server.token, retry=RetryPolicy(backoff_base=1.0))
        async with client:
            job = await client.submit(model=MODEL, messages=MSG)
            server.inject(Fault.disconnect(after_tokens=2))
            stream = client.stream_job(job.id)

            async def read() -> str:
                async with stream:
                    return await stream.final_text()

            reader = asyncio.create_task(read())
            while stream.reconnects == 0:
                await asyncio.sleep(0.01)
            await stream.aclose()
            with pytest.raises(StreamError, match="closed"):
                await asyncio.wait_for(reader, 0.3)
            await asyncio.sleep(1.0)  # past the backoff
    assert stream.text == "Paris is" and stream.terminal_reason == "closed"
    assert sum(1 for r in server.requests if r.path.endswith("/stream")) == 1


@pytest.mark.parametrize(
    ("status", "media", "body"),
    [
        (302, "text/html", "<html>moved somewhere</html>"),  # a redirect with no Location
        (204, None, ""),
        (200, "text/html", "<html>captive portal login</html>"),
    ],
)
async def test_an_answer_that_is_not_a_stream_says_what_it_was(
    status: int, media: str | None, body: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if status == 204:
            return web.Response(status=204)
        return web.Response(status=status, text=body, content_type=media)

    async with raw_server(handler) as url, client_for(url) as client:
        with pytest.raises(APIError, match=f"expected an event stream, got {status}") as info:
            async with client.stream(model=MODEL, messages=MSG) as stream:
                await stream.final_text()
        assert info.value.status == status and (body[:20] in str(info.value))
        binding = client._transport._binding
        assert binding is not None and binding.pool.in_use == 0


async def test_cancelling_an_open_under_a_deadline_stays_a_cancellation() -> None:
    async with (
        raw_server(head_after(5.0)) as url,
        client_for(url, timeouts=Timeouts(read=None, first_token=2.0)) as client,
    ):
        stream = client.stream(model=MODEL, messages=MSG)
        opening = asyncio.create_task(stream.__aenter__())
        await asyncio.sleep(0.1)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await stream.aclose()


# -- the deadline watchdog: one timer per stream, re-armed lazily ----------------------------------


async def test_tokens_just_under_the_stall_timeout_keep_it_from_firing_until_they_stop() -> None:
    # Six tokens 0.15 s apart span 2.5 stall periods: a watchdog that fired at the deadline it was
    # first armed with, instead of re-arming, would cut the stream after the second or third.
    texts = [f"t{i} " for i in range(6)]
    paced: list[bytes | float] = []
    for event in data_events(*texts, done=False):
        paced += [event, 0.15]
    pings: list[bytes | float] = [b": ping\n\n", 0.02] * 60  # heartbeats do not count
    loop = asyncio.get_running_loop()
    async with raw_server(sse_handler(paced + pings)) as url:
        client = client_for(url, timeouts=Timeouts(read=5, stall=0.3))
        async with client, client.stream(model=MODEL, messages=MSG) as stream:
            received: list[str] = []
            with pytest.raises(APITimeoutError) as info:
                async for token in stream:
                    received.append(token)
                    last = loop.time()
            silent = loop.time() - last
    assert received == texts
    assert info.value.phase == "stall" and info.value.partial_text == stream.text == "".join(texts)
    assert stream.terminal_reason == "timeout" and not stream._deadlines.armed
    assert silent >= 0.29  # never before the deadline; how late depends on the machine's load


async def test_the_first_token_brings_a_short_stall_deadline_forward() -> None:
    # The watchdog armed for first_token (5 s) must be re-armed earlier for the stall (0.2 s).
    handler = sse_handler(data_events("Hel", done=False) + [b": ping\n\n", 0.02] * 100)
    async with raw_server(handler) as url:
        client = client_for(url, timeouts=Timeouts(read=5, first_token=5, stall=0.2))
        async with client, client.stream(model=MODEL, messages=MSG) as stream:
            with pytest.raises(APITimeoutError) as info:
                async with asyncio.timeout(1.5):
                    await stream.final_text()
    assert info.value.phase == "stall" and info.value.partial_text == "Hel"


class _ScriptedResponse:
    """A ``StreamResponse`` whose reads follow a script: bytes are returned at once, as a chunk
    already buffered would be; ``None`` blocks until cancelled."""

    content_type = "text/event-stream"
    status = 200
    headers: dict[str, str] = {}

    def __init__(self, script: list[bytes | None], on_block: Callable[[], None] | None) -> None:
        self._script = script
        self._on_block = on_block
        self.closed = False

    async def read_chunk(self) -> bytes:
        step = self._script.pop(0) if self._script else None
        if step is not None:
            return step
        waiter = asyncio.get_running_loop().create_future()
        if self._on_block is not None:
            on_block = self._on_block
            # Runs when the read is cancelled, before the reading task resumes.
            waiter.add_done_callback(lambda _: on_block())
        await waiter
        raise AssertionError("unreachable: nothing completes the waiter")

    async def pump(self, sink: Callable[[bytes], bool]) -> bool:
        while True:
            chunk = await self.read_chunk()
            if not chunk:
                return False
            if sink(chunk):
                return True

    def close(self) -> None:
        self.closed = True

    def finish(self) -> None:
        self.closed = True


class _ScriptedTransport:
    def __init__(self, timeouts: Timeouts, resp: _ScriptedResponse) -> None:
        self.timeouts = timeouts
        self.retry = fast_retry()
        self.max_answer_bytes: int | None = None
        self.closed = False
        self.resp = resp

    def redact(self, text: str) -> str:
        return text

    async def open_stream(
        self, call: Any, *, on_send: SendListener | None = None, **_: Any
    ) -> _ScriptedResponse:
        if on_send is not None:
            on_send(True)  # as the real one does when the request goes out
        return self.resp


def _scripted_stream(
    timeouts: Timeouts, script: list[bytes | None], on_block: Callable[[], None] | None = None
) -> tuple[TokenStream, _ScriptedResponse]:
    resp = _ScriptedResponse(script, on_block)
    transport = cast(Any, _ScriptedTransport(timeouts, resp))
    return TokenStream(transport, ApiChoice("jobs"), job_id="job_x"), resp


async def test_a_chunk_buffered_when_the_deadline_has_passed_is_still_returned() -> None:
    a, b = data_events("A", "B", done=False)
    stream, resp = _scripted_stream(Timeouts(stall=0.05), [a, b, None])
    async with stream:
        assert await stream.__anext__() == "A"
        await asyncio.sleep(0.12)  # the stall deadline passes while the caller is busy
        assert await stream.__anext__() == "B"  # already there: no read has to wait
        with pytest.raises(APITimeoutError) as info:
            await stream.__anext__()
    assert info.value.phase == "stall" and info.value.partial_text == "AB" and resp.closed
    assert not stream._deadlines.armed


async def test_a_cancel_from_outside_racing_the_watchdog_wins() -> None:
    # The watchdog cancels the reading task; before the task resumes, someone else cancels it too.
    # That cancellation must reach the caller as CancelledError, not turn into a timeout.
    reader: asyncio.Task[Any] | None = None

    def cancel_from_outside() -> None:
        assert reader is not None
        reader.cancel()

    stream, resp = _scripted_stream(Timeouts(first_token=0.05), [], cancel_from_outside)

    async def consume() -> None:
        async with stream:
            await stream.final_text()

    reader = asyncio.create_task(consume())
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert reader.cancelling() == 1  # ours was withdrawn; the outside one stands
    assert stream.terminal_reason == "cancelled" and resp.closed and not stream._deadlines.armed


async def test_the_watchdog_timeout_leaves_the_task_uncancelled() -> None:
    stream, resp = _scripted_stream(Timeouts(first_token=0.05), [])
    async with stream:
        with pytest.raises(APITimeoutError) as info:
            await stream.final_text()
    assert info.value.phase == "first_token" and info.value.partial_text == ""
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # and no stray cancellation is pending
    assert resp.closed and not stream._deadlines.armed


async def test_a_cancel_from_outside_mid_read_propagates_and_disarms() -> None:
    stream, resp = _scripted_stream(Timeouts(stall=5), [*data_events("A", done=False), None])

    async def consume() -> None:
        async with stream:
            await stream.final_text()

    task = asyncio.create_task(consume())
    while stream.token_count == 0:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)  # now inside the blocking read, with the watchdog armed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.text == "A" and stream.terminal_reason == "cancelled"
    assert resp.closed and not stream._deadlines.armed


# -- after the end ---------------------------------------------------------------------------------


async def test_final_text_after_a_failure_raises_the_same_error(
    server: DevServer, client: InfernetClient
) -> None:
    server.inject(Fault.drop_node(after_tokens=2))
    stream = client.stream(model=MODEL, messages=MSG)
    with pytest.raises(NodeDisconnectedError) as first:
        await stream.final_text()
    with pytest.raises(NodeDisconnectedError) as second:
        await stream.final_text()
    assert first.value is second.value
    await stream.aclose()


async def test_final_text_after_aclose_mid_stream_is_a_stream_error(
    server: DevServer, client: InfernetClient
) -> None:
    server.configure(tokens_per_second=100)
    async with client.stream(model=MODEL, messages=MSG) as stream:
        await stream.__anext__()
    with pytest.raises(StreamError, match="closed") as info:
        await stream.final_text()
    assert info.value.partial_text == "Paris" and stream.terminal_reason == "closed"


async def test_repr_shows_state_not_secrets(client: InfernetClient) -> None:
    stream = client.stream(model=MODEL, messages=MSG)
    assert "state=new" in repr(stream)
    async with stream:
        await stream.final_text()
    assert "finished=True" in repr(stream) and "tokens=8" in repr(stream)
    await asyncio.sleep(0)


async def test_resume_falls_back_to_text_when_one_id_tags_every_event() -> None:
    # WHATWG: an id persists across events, so a server that sent "id: 7" once tags every later
    # token with 7. Skipping "everything up to 7" would skip the rest of the answer too.
    head = [b'id: 7\ndata: {"text": "A"}\n\n', b'data: {"text": "B"}\n\n']
    calls: list[int] = []

    async def handler(request):  # type: ignore[no-untyped-def]
        calls.append(1)
        chunks = head if len(calls) == 1 else [*head, *data_events("C")]
        return await sse_handler(chunks)(request)

    async with raw_server(handler) as url:
        client = client_for(url)
        async with client, client.stream_job("job_x") as stream:
            tokens = [t async for t in stream]
    assert tokens == ["A", "B", "C"] and stream.finished


def test_the_default_first_token_deadline_is_well_under_the_total() -> None:
    # Heartbeats alone, or a head dripped a byte at a time, no longer run until the total: the
    # first token's deadline ends them, while a job queued forty times the service's typical
    # start (1 to 3 s) still gets its answer.
    defaults = Timeouts()
    assert defaults.first_token is not None and defaults.total is not None
    assert 3 * 40 <= defaults.first_token <= defaults.total / 2


@pytest.mark.parametrize("shape", ["pings", "dripped head"])
async def test_a_server_that_sends_nothing_useful_meets_the_first_token_deadline(
    shape: str,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            if shape == "pings":
                writer.write(head)
                for _ in range(200):
                    writer.write(b": ping\n\n")
                    await asyncio.sleep(0.01)
            else:
                for byte in head:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # The defaults' proportions, scaled down: read and stall as the defaults, first token at
    # a third of a second (the default's 120 s), so neither the read timeout (the bytes keep
    # coming) nor the stall timeout (no first token yet) can be what ends it.
    timeouts = Timeouts(first_token=0.3)
    try:
        async with client_for(f"http://127.0.0.1:{port}", "t", api="jobs", timeouts=timeouts) as c:
            started = asyncio.get_running_loop().time()
            with pytest.raises(APITimeoutError) as info:
                await c.stream_job("job_1").final_text()
            elapsed = asyncio.get_running_loop().time() - started
    finally:
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers)
        server.close()
        await server.wait_closed()
    assert info.value.phase == "first_token" and info.value.job_id == "job_1"
    assert elapsed < 1.5
