"""Chunkings for the decoder tests: the same bytes whole, one byte at a time, and cut at random."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol


class Feedable(Protocol):
    def feed(self, chunk: bytes) -> list[Any]: ...

    def close(self) -> list[Any]: ...


def chunkings(data: bytes, seeds: tuple[int, ...] = (1, 2, 3)) -> Iterator[tuple[str, list[bytes]]]:
    """Yield (name, chunks): whole, byte at a time, and a few seeded random splits."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for seed in seeds:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
        bounds = [0, *cuts, len(data)] if len(data) > 1 else [0, len(data)]
        yield f"random{seed}", [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def decode_all(make: Callable[[], Feedable], chunks: list[bytes]) -> list[Any]:
    """Feed every chunk to a fresh decoder, then close it; all events in order."""
    decoder = make()
    events: list[Any] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events


def token_general(body: bytes) -> tuple[list[Any], int, str | None]:
    """TokenDecoder's general path only (SSEDecoder events, interpreted): the fast path's oracle.

    Returns the events (body fed whole, then closed), the malformed count and the last event id.
    """
    from infernet_async._token_decoder import TokenDecoder

    decoder = TokenDecoder()
    events = decoder._interpret(decoder._sse.feed(body))
    events += decoder._interpret(decoder._sse.close())
    return events, decoder.malformed, decoder.last_event_id
