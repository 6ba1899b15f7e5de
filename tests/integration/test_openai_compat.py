"""The devserver's ``/v1`` routes under the official ``openai`` client: what works against the
hosted service's OpenAI-compatible surface must work against the emulator, errors included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from infernet_async.devserver import DevServer, Fault

MODEL = "qwen2.5:14b"
PROMPT = "Explain how neural networks learn in three sentences."
RESALE_KEY = "ifr_res_openai_test"


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with DevServer(
        tokens_per_second=1000,
        time_to_first_token=0,
        answer_tokens=12,
        resale_keys={RESALE_KEY: [MODEL]},
        resale_rps=1,
    ) as server:
        yield server


@pytest.fixture
async def client(server: DevServer) -> AsyncIterator[openai.AsyncOpenAI]:
    # No retries: the 429 and 503 must surface as they are, at once.
    async with openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


async def test_streaming_joins_to_the_non_streaming_answer(client: openai.AsyncOpenAI) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": PROMPT}
    ]
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    pieces: list[str] = []
    finish: list[str | None] = []
    ids: set[str] = set()
    async with stream:
        async for chunk in stream:
            ids.add(chunk.id)
            assert chunk.model == MODEL
            choice = chunk.choices[0]
            pieces.append(choice.delta.content or "")
            finish.append(choice.finish_reason)
    assert len(ids) == 1 and finish[-1] == "stop" and finish[:-1] == [None] * (len(finish) - 1)
    assert len([p for p in pieces if p]) == 12

    completion = await client.chat.completions.create(model=MODEL, messages=messages)
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == "".join(pieces)
    assert completion.usage is not None and completion.usage.total_tokens == 0


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    ids = [model.id async for model in page]
    assert ids == ["llama3.1:8b", "mistral:7b", "qwen2.5:14b"]
    assert all(model.owned_by == "infernet" for model in page.data)


async def test_unknown_model_is_a_503_status_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 503
    body = caught.value.body
    assert isinstance(body, dict) and body["available_models"] == [
        "llama3.1:8b",
        "mistral:7b",
        "qwen2.5:14b",
    ]
    assert "gpt-9" in caught.value.message


async def test_a_node_drop_mid_stream_raises_instead_of_ending_quietly(
    server: DevServer, client: openai.AsyncOpenAI
) -> None:
    server.inject(Fault.drop_node(after_tokens=3))
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="node disconnected"):
        async with stream:
            async for chunk in stream:
                # A loop, not a comprehension: the tokens before the error must be kept.
                seen.append(chunk.choices[0].delta.content or "")  # noqa: PERF401
    assert len([s for s in seen if s]) == 3


async def test_a_resale_keys_429_is_a_rate_limit_error(server: DevServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=server.openai_base_url, api_key=RESALE_KEY, max_retries=0
    ) as keyed:
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [
            {"role": "user", "content": "What is 2 + 2?"}
        ]
        first = await keyed.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages
        )
        assert first.headers["X-RateLimit-Remaining-Requests"] == "0"
        assert (first.parse().choices[0].message.content or "").startswith("2 + 2 = 4.")
        with pytest.raises(openai.RateLimitError) as caught:
            await keyed.chat.completions.create(model=MODEL, messages=messages)
        assert caught.value.status_code == 429
        headers = caught.value.response.headers
        assert headers["X-Infernet-Limit-Type"] == "rps" and int(headers["Retry-After"]) >= 1
        with pytest.raises(openai.BadRequestError) as refused:
            server.reset_rate_limits()
            await keyed.chat.completions.create(model="mistral:7b", messages=messages)
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["code"] == "model_not_reserved"
