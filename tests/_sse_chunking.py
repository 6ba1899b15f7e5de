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
