"""Hostile bytes against the sans-IO decoders: oversized lines, bad UTF-8, NULs, broken and abusive
JSON.

A server (or anything between it and us) can send any bytes. The decoders must turn every input into
events, skipped-malformed counts, or a typed ``InfernetError``; they must never raise another
exception and must never hold more memory than their size limit allows. Memory is measured with
tracemalloc (a bound, not a timing), against a 100 MB line fed in 64 KiB chunks.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any

import pytest

from infernet_async._token_decoder import TokenDecoder
from infernet_async.errors import EventTooLargeError, InfernetError
from infernet_async.events import Done, ErrorEvent, Token
from infernet_async.sse import ServerSentEvent, SSEDecoder

MiB = 1024 * 1024
HUGE_LINE = 100 * MiB
CHUNK = 64 * 1024


def token_event(text: str) -> bytes:
    return b"data: " + json.dumps({"text": text}).encode() + b"\n\n"


def feed_all(decoder: Any, chunks: Iterable[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.close())
    return out


def texts(events: Iterable[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, Token)]


class Measured:
    """What feeding a big input gave: the size error, other typed errors, the traced peak."""

    def __init__(self) -> None:
        self.first: EventTooLargeError | None = None
        self.peak = 0
        self.other: list[BaseException] = []


def feed_measured(decoder: Any, pieces: Iterable[bytes]) -> Measured:
    """Feed ``pieces`` under tracemalloc; the peak is what the decoder allocated on top."""
    m = Measured()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for piece in pieces:
            try:
                decoder.feed(piece)
            except EventTooLargeError as exc:
                # The decoder refused the stream; what a caller feeds after that is its own bug.
                m.first = exc
                break
            except InfernetError as exc:
                m.other.append(exc)
        m.peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return m


def huge_line(prefix: bytes, total: int = HUGE_LINE) -> Iterable[bytes]:
    # One chunk object, fed again and again: the test itself allocates nothing per chunk.
    chunk = b"x" * CHUNK
    yield prefix
    yield from repeat(chunk, total // CHUNK)


DECODERS: list[Any] = [
    pytest.param(SSEDecoder, id="sse"),
    pytest.param(TokenDecoder, id="token"),
]


# --- Oversized lines and events -------------------------------------------------------------------


@pytest.mark.parametrize("factory", DECODERS)
@pytest.mark.parametrize(
    "prefix",
    [b"data: ", b"", b": ", b"event: ", b"id: ", b"retry: 1"],
    ids=["data", "bare-field-name", "comment", "event", "id", "retry"],
)
def test_100mb_line_raises_event_too_large_with_bounded_memory(
    factory: Callable[[], Any], prefix: bytes
) -> None:
    decoder = factory()
    m = feed_measured(decoder, huge_line(prefix))
    assert m.other == []
    assert m.first is not None, "a 100 MB line must not be accepted"
    limit = m.first.limit
    assert 0 < limit < HUGE_LINE // 3, (
        "the limit must be small enough for this test to prove anything"
    )
    assert m.peak < 3 * limit, f"peak {m.peak / MiB:.1f} MiB for a limit of {limit / MiB:.1f} MiB"


@pytest.mark.parametrize("factory", DECODERS)
def test_event_of_many_lines_over_the_limit_raises_with_bounded_memory(
    factory: Callable[[], Any],
) -> None:
    # Each line is small; only their sum, the event being built, crosses the limit.
    line = b"data: " + b"y" * (CHUNK - 7) + b"\n"
    decoder = factory()
    m = feed_measured(decoder, repeat(line, HUGE_LINE // len(line)))
    assert m.other == []
    assert m.first is not None, "a 100 MB event must not be accepted"
    assert m.peak < 3 * m.first.limit


@pytest.mark.parametrize("factory", DECODERS)
def test_decoder_is_spent_after_an_oversized_event(factory: Callable[[], Any]) -> None:
    decoder = factory()
    m = feed_measured(decoder, huge_line(b"data: ", total=40 * MiB))
    assert m.first is not None
    # The stream cannot go on: nothing after the refused event is decoded, and a caller that keeps
    # feeding gets the size error again or the documented feed-after-close RuntimeError.
    with pytest.raises((EventTooLargeError, RuntimeError)):
        decoder.feed(b"\n\n" + token_event("after"))


def test_just_under_the_limit_is_accepted() -> None:
    m = feed_measured(SSEDecoder(), huge_line(b"data: ", total=40 * MiB))
    assert m.first is not None
    limit = m.first.limit
    body = "z" * (limit // 2)
    events = feed_all(SSEDecoder(), [b"data: ", body.encode(), b"\n\n"])
    assert [e.data for e in events] == [body]


# --- Encodings and control bytes ------------------------------------------------------------------


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events = feed_all(TokenDecoder(), [b'data: {"text": "a\xff\xfeb"}\n\n', token_event("ok")])
    assert texts(events) == ["a\ufffd\ufffdb", "ok"]


def test_truncated_utf8_sequence_at_end_of_line_does_not_eat_the_next_line() -> None:
    events = feed_all(SSEDecoder(), [b"data: a\xc3\n", b"data: b\n\n"])
    assert [e.data for e in events] == ["a\ufffd\nb"]


@pytest.mark.parametrize("cut", range(1, 4))
def test_multibyte_character_split_across_chunks_survives(cut: int) -> None:
    raw = token_event("→é")  # json.dumps escapes it; send raw UTF-8 too
    raw_utf8 = 'data: {"text": "→é"}\n\n'.encode()
    i = raw_utf8.index("→".encode()) + cut
    assert texts(feed_all(TokenDecoder(), [raw_utf8[:i], raw_utf8[i:]])) == ["→é"]
    assert texts(feed_all(TokenDecoder(), [raw])) == ["→é"]


def test_invalid_utf8_in_field_names_and_ids_is_harmless() -> None:
    decoder = SSEDecoder()
    events = feed_all(
        decoder, [b"ev\xffent: x\ndata: 1\n\nid: \xed\xa0\x80\ndata: 2\n\n\xff: \xff\n\n"]
    )
    assert [e.data for e in events] == ["1", "2"]
    assert events[1].id == "\ufffd\ufffd\ufffd"


def test_nul_bytes_in_data_are_kept() -> None:
    events = feed_all(SSEDecoder(), [b"data: a\x00b\n\n", b"event: \x00\ndata: \x00\n\n"])
    assert [(e.event, e.data) for e in events] == [("message", "a\x00b"), ("\x00", "\x00")]


def test_escaped_nul_in_json_text_is_a_token() -> None:
    assert texts(feed_all(TokenDecoder(), [b'data: {"text": "\\u0000"}\n\n'])) == ["\x00"]


def test_raw_nul_inside_json_string_is_a_token_or_skipped_never_raised() -> None:
    decoder = TokenDecoder()
    events = feed_all(decoder, [b'data: {"text": "a\x00b"}\n\n', token_event("ok")])
    assert texts(events) in (["a\x00b", "ok"], ["ok"])
    assert decoder.malformed == (1 if texts(events) == ["ok"] else 0)


def test_id_containing_nul_is_ignored() -> None:
    decoder = TokenDecoder()
    feed_all(decoder, [b'id: 7\ndata: {"text": "a"}\n\nid: 8\x009\ndata: {"text": "b"}\n\n'])
    assert decoder.last_event_id == "7"


def test_lone_surrogate_escapes_do_not_raise() -> None:
    events = feed_all(TokenDecoder(), [b'data: {"text": "\\ud800"}\n\n', token_event("ok")])
    assert texts(events)[-1] == "ok"


# --- Malformed and abusive JSON -------------------------------------------------------------------

SYNTAX_ERRORS = [
    b'{"text": ',
    b'{"text": "a"',
    b"{text: 'a'}",
    b'{"text": "a"}}',
    b"",
    b"{",
    b"\x00",
    b'{"text": "\xff',
]


@pytest.mark.parametrize("bad", SYNTAX_ERRORS)
def test_malformed_json_is_skipped_and_counted(bad: bytes) -> None:
    decoder = TokenDecoder()
    events = feed_all(decoder, [token_event("a"), b"data: " + bad + b"\n\n", token_event("b")])
    assert texts(events) == ["a", "b"]
    assert decoder.malformed == (0 if bad == b"" else 1)


@pytest.mark.parametrize(
    "odd",
    [b'{"text": 5}', b"[]", b'"text"', b"null", b"NaN", b"1e999999", b"{}", b'{"text": null}'],
)
def test_wrong_shape_json_gives_no_token_and_no_exception(odd: bytes) -> None:
    decoder = TokenDecoder()
    events = feed_all(decoder, [b"data: " + odd + b"\n\n", token_event("b")])
    assert texts(events) == ["b"]
    assert not any(isinstance(e, Done) for e in events)


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_deeply_nested_json_is_malformed_not_recursion_error(opener: bytes, depth: int) -> None:
    decoder = TokenDecoder()
    events = feed_all(decoder, [b"data: " + opener * depth + b"\n\n", token_event("after")])
    assert texts(events) == ["after"]
    assert decoder.malformed == 1


def test_deeply_nested_json_inside_a_valid_token_object() -> None:
    decoder = TokenDecoder()
    nested = b"[" * 100_000 + b"]" * 100_000
    events = feed_all(decoder, [b'data: {"text": "a", "x": ' + nested + b"}\n\n", token_event("b")])
    # Either the nesting is refused (malformed) or the token survives; never a RecursionError.
    assert texts(events) in (["b"], ["a", "b"])


@pytest.mark.parametrize("event", ["job", "meta", "token", "done", "error"])
def test_deeply_nested_json_in_every_typed_event(event: str) -> None:
    decoder = TokenDecoder()
    raw = f"event: {event}\ndata: ".encode() + b"[" * 100_000 + b"\n\n"
    events = feed_all(decoder, [raw, b'event: token\ndata: {"text": "ok"}\n\n'])
    assert texts(events) == ["ok"]
    if event == "done":  # ends the stream cleanly whatever its data holds
        assert isinstance(events[0], Done) and decoder.malformed == 0
    elif event == "error":  # an error whatever its data holds: the raw data is the message
        assert isinstance(events[0], ErrorEvent) and decoder.malformed == 0
    else:
        assert decoder.malformed == 1


def test_integer_with_too_many_digits_is_malformed_not_value_error() -> None:
    # CPython refuses int() of more than 4300 digits with a plain ValueError, not a JSONDecodeError.
    decoder = TokenDecoder()
    raw = b'data: {"text": "a", "n": ' + b"1" * 5000 + b"}\n\n"
    events = feed_all(decoder, [raw, token_event("b")])
    assert texts(events)[-1] == "b"
    assert not any(isinstance(e, ErrorEvent) for e in events)


@pytest.mark.parametrize("factory", DECODERS)
def test_retry_with_too_many_digits_is_ignored(factory: Callable[[], Any]) -> None:
    events = feed_all(factory(), [b"retry: " + b"9" * 5000 + b"\n", token_event("ok")])
    assert len(events) == 1


# --- Volume ---------------------------------------------------------------------------------------


def chunked(data: bytes, size: int = CHUNK) -> Iterable[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def test_two_hundred_thousand_tiny_events() -> None:
    n = 200_000
    decoder = TokenDecoder()
    count = 0
    for chunk in chunked(b'data: {"text": "x"}\n\n' * n):
        count += len(texts(decoder.feed(chunk)))
    assert count == n
    assert decoder.malformed == 0


def test_hundred_thousand_typed_events_with_ids() -> None:
    n = 100_000
    raw = b"".join(b'id: %d\nevent: token\ndata: {"text": "y"}\n\n' % i for i in range(n))
    decoder = TokenDecoder()
    count = 0
    for chunk in chunked(raw):
        count += len(texts(decoder.feed(chunk)))
    assert count == n
    assert decoder.last_event_id == str(n - 1)


UNITS = [b": ping\n\n", b"\n", b"\r\n", b"id: 1\n\n", b"retry: 5\n\n"]
UNIT_IDS = ["pings", "lf", "crlf", "ids", "retries"]


@pytest.mark.parametrize("unit", UNITS, ids=UNIT_IDS)
def test_300k_empty_blocks_produce_nothing(unit: bytes) -> None:
    decoder = SSEDecoder()
    for chunk in chunked(unit * 300_000):
        assert decoder.feed(chunk) == []
    assert decoder.close() == []


@pytest.mark.parametrize("unit", UNITS, ids=UNIT_IDS)
def test_empty_blocks_keep_no_memory(unit: bytes) -> None:
    # tracemalloc slows every allocation tenfold: a smaller count shows the same flat profile.
    decoder = SSEDecoder()
    m = feed_measured(decoder, chunked(unit * 50_000))
    assert m.first is None and m.other == []
    assert m.peak < 1 * MiB


def test_one_event_of_a_hundred_thousand_data_lines() -> None:
    events: list[ServerSentEvent] = feed_all(SSEDecoder(), chunked(b"data: ab\n" * 100_000 + b"\n"))
    assert len(events) == 1
    assert events[0].data == "\n".join(["ab"] * 100_000)
