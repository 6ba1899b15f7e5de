"""Fuzz the two sans-IO layers: only typed errors ever escape, and chunking never changes the
result.

Two invariants, checked by hypothesis on arbitrary bytes and on byte soups built from SSE fragments
(so the search reaches the interesting states: fields, line endings, [DONE], JSON, BOMs, NULs), and
replayed on the seed corpus in tests/hardening/fuzz_corpus/ under several chunkings:

1. ``feed()``/``close()`` raise nothing but ``InfernetError`` subclasses (any other exception is a
   bug);
2. the events, the error (if any), ``.malformed`` and ``.last_event_id`` do not depend on how the
   bytes were split into chunks.

Inputs that once crashed a decoder are kept in the corpus (named ``crash-*.sse``) so they are
replayed forever. ``HARDENING_FUZZ_EXAMPLES`` raises the number of hypothesis examples for a longer
local run (add ``--timeout=0``: pytest-timeout's 60 s covers the default count only)::

    HARDENING_FUZZ_EXAMPLES=20000 python -m pytest tests/hardening/test_fuzz.py --timeout=0 \
        -k "not corpus"
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from infernet_async._token_decoder import TokenDecoder
from infernet_async.errors import InfernetError
from infernet_async.sse import SSEDecoder

CORPUS = Path(__file__).parent / "fuzz_corpus"
EXAMPLES = int(os.environ.get("HARDENING_FUZZ_EXAMPLES", "250"))

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Fragments that steer the search into every branch of both layers.
FRAGMENTS: list[bytes] = [
    b"data:",
    b"data: ",
    b"data",
    b"event: token",
    b"event: done",
    b"event: error",
    b"event: job",
    b"event: meta",
    b"event:",
    b"id: 1",
    b"id: 2",
    b"id",
    b"id: \x00",
    b"retry: 100",
    b"retry: 1x",
    b"retry: " + b"9" * 40,
    b": ping",
    b":",
    b"\n",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b'{"text": "x"}',
    b'{"text": "\xc3\xa9"}',
    b'{"text": ',
    b'"tok"}',
    b"[DONE]",
    b" [DONE]",
    b'{"error": "node_disconnected", "message": "gone"}',
    b'{"error": "x"}',
    b'{"message": "m"}',
    b'{"id": "job_1", "status": "pending", "model_name": "m"}',
    b'{"provider_node_id": "n", "model": "m"}',
    b'{"text": "all", "reason": "stop"}',
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"{",
    b"[",
    b"[" * 50,
    b'"',
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"1e999",
    b" ",
]


@dataclass
class Outcome:
    """Everything a decoder produced for one input, comparable across chunkings."""

    events: list[Any] = field(default_factory=list)
    error: type[BaseException] | None = None
    malformed: int | None = None
    last_event_id: str | None = None


def run(factory: Callable[[], Any], chunks: Sequence[bytes]) -> Outcome:
    """Feed ``chunks`` then close; a typed error ends the run, anything else fails the test."""
    decoder = factory()
    out = Outcome()
    try:
        for chunk in chunks:
            out.events.extend(decoder.feed(chunk))
        out.events.extend(decoder.close())
    except InfernetError as exc:
        out.error = type(exc)
    except Exception as exc:  # the invariant under test: nothing untyped escapes
        pytest.fail(
            f"{type(decoder).__name__} raised untyped {type(exc).__name__}: {exc!r}",
            pytrace=True,
        )
    if isinstance(decoder, TokenDecoder):
        out.malformed = decoder.malformed
        out.last_event_id = decoder.last_event_id
    return out


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def chunkings(data: bytes, seed: int) -> list[list[bytes]]:
    """Byte at a time, fixed sizes, and seeded random splits (with empty chunks) of ``data``."""
    rng = random.Random(seed)
    out = [[data[i : i + 1] for i in range(len(data))]]
    out.extend([data[i : i + n] for i in range(0, len(data), n)] for n in (2, 3, 7, 64, 4096))
    for _ in range(4):
        cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 40))]
        out.append([b"", *split_at(data, cuts), b""])
    return out


def assert_invariant(factory: Callable[[], Any], data: bytes, chunks: Sequence[bytes]) -> None:
    assert b"".join(chunks) == data
    whole = run(factory, [data])
    chunked = run(factory, chunks)
    if whole.error is not None or chunked.error is not None:
        # A typed error aborts the feed() that raised it, so only the error itself is comparable.
        assert chunked.error == whole.error
    else:
        assert chunked == whole


DECODERS = [pytest.param(SSEDecoder, id="sse"), pytest.param(TokenDecoder, id="token")]

soup = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(b"".join)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)


@pytest.mark.parametrize("factory", DECODERS)
@FUZZ_SETTINGS
@given(data=st.binary(max_size=1500), cut=cuts)
@example(data=b"data: [DONE]\r\n\r\n", cut=[13, 14])
@example(data=b'data: {"text": "\xc3\xa9"}\n\n', cut=[17])
def test_arbitrary_bytes(factory: Callable[[], Any], data: bytes, cut: list[int]) -> None:
    assert_invariant(factory, data, split_at(data, cut))


@pytest.mark.parametrize("factory", DECODERS)
@FUZZ_SETTINGS
@given(data=soup, cut=cuts)
@example(data=b"retry: " + b"9" * 5000 + b"\n\n", cut=[3])
@example(data=b"data: " + b"[" * 20_000 + b"\n\n", cut=[100])
def test_sse_fragment_soup(factory: Callable[[], Any], data: bytes, cut: list[int]) -> None:
    assert_invariant(factory, data, split_at(data, cut))


@pytest.mark.parametrize("factory", DECODERS)
@FUZZ_SETTINGS
@given(data=soup, cut=cuts)
def test_fragment_soup_byte_at_a_time(
    factory: Callable[[], Any], data: bytes, cut: list[int]
) -> None:
    del cut
    assert_invariant(factory, data, [data[i : i + 1] for i in range(len(data))])


CHUNK_TYPES: list[Callable[[bytes], Any]] = [bytes, bytearray, memoryview]


@pytest.mark.parametrize("factory", DECODERS)
@FUZZ_SETTINGS
@given(data=soup, cut=cuts, kinds=st.lists(st.sampled_from(CHUNK_TYPES), min_size=1, max_size=8))
def test_mixed_chunk_types(
    factory: Callable[[], Any], data: bytes, cut: list[int], kinds: list[Callable[[bytes], Any]]
) -> None:
    # feed() takes any bytes-like object; a fast path keyed on ``bytes`` must not change results
    # when bytearray or memoryview chunks come in between.
    pieces = split_at(data, cut)
    chunks = [kinds[i % len(kinds)](p) for i, p in enumerate(pieces)]
    whole = run(factory, [data])
    mixed = run(factory, chunks)
    if whole.error is not None or mixed.error is not None:
        assert mixed.error == whole.error
    else:
        assert mixed == whole


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.suffix == ".sse")


def test_corpus_is_present() -> None:
    # The replay below is only as good as its seeds: an empty or missing corpus would pass silently.
    assert len(corpus_files()) >= 20


@pytest.mark.parametrize("factory", DECODERS)
@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_replay(factory: Callable[[], Any], path: Path) -> None:
    data = path.read_bytes()
    for chunks in chunkings(data, seed=len(data)):
        assert_invariant(factory, data, chunks)
