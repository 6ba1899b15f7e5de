"""One case per rule of WHATWG HTML "Interpreting an event stream", each under every chunking.

Every case runs with the input whole, one byte at a time and cut at random points; all must give
the expected events (so also the same events as each other). Expected: (event, data, id, retry).
"""

from __future__ import annotations

import pytest

from infernet_async.sse import ServerSentEvent, SSEDecoder
from tests.helpers.chunking import chunkings, decode_all

Expected = tuple[str, str, str | None, int | None]

CASES: list[tuple[str, bytes, list[Expected]]] = [
    # --- the byte stream
    ("utf8 decoded", "data: é中😀\n\n".encode(), [("message", "é中😀", None, None)]),
    ("invalid utf8 replaced", b"data: a\xffb\xc3\n\n", [("message", "a\ufffdb\ufffd", None, None)]),
    ("one leading BOM ignored", b"\xef\xbb\xbfdata: a\n\n", [("message", "a", None, None)]),
    # A second BOM is part of the first line's field name ("\ufeffdata"), an unknown field.
    ("only one BOM ignored", b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n", []),
    ("BOM later is data", b"data: \xef\xbb\xbfa\n\n", [("message", "\ufeffa", None, None)]),
    # --- line endings
    ("LF", b"data: a\n\n", [("message", "a", None, None)]),
    ("CRLF", b"data: a\r\n\r\n", [("message", "a", None, None)]),
    ("lone CR", b"data: a\r\r", [("message", "a", None, None)]),
    ("mixed endings", b"data: a\rdata: b\r\ndata: c\n\r\n", [("message", "a\nb\nc", None, None)]),
    ("LF CR is two line ends", b"data: a\n\r", [("message", "a", None, None)]),
    ("CR CR LF", b"data: a\r\r\n", [("message", "a", None, None)]),
    # --- lines
    ("comment ignored", b": hello\ndata: a\n\n", [("message", "a", None, None)]),
    ("comment with no text", b":\ndata: a\n\n", [("message", "a", None, None)]),
    ("first colon splits", b"data: a: b:c\n\n", [("message", "a: b:c", None, None)]),
    ("one leading space dropped", b"data:  a \n\n", [("message", " a ", None, None)]),
    ("no space after colon", b"data:a\n\n", [("message", "a", None, None)]),
    ("tab is not dropped", b"data:\ta\n\n", [("message", "\ta", None, None)]),
    ("field without colon", b"data\n\n", [("message", "", None, None)]),
    ("space before colon is in name", b"data : a\n\n", []),
    ("field names are case sensitive", b"Data: a\n\n", []),
    ("unknown field ignored", b"foo: bar\ndata: a\n\n", [("message", "a", None, None)]),
    ("NUL kept in data", b"data: a\x00b\n\n", [("message", "a\x00b", None, None)]),
    # --- data
    ("data lines joined with LF", b"data: a\ndata: b\n\n", [("message", "a\nb", None, None)]),
    ("final LF removed only once", b"data: a\ndata:\n\n", [("message", "a\n", None, None)]),
    ("empty data dispatches", b"data:\n\n", [("message", "", None, None)]),
    ("data of spaces", b"data:   \n\n", [("message", "  ", None, None)]),
    # --- dispatch
    ("blank line without data: nothing", b"event: x\n\n", []),
    ("event type reset after block", b"event: x\n\ndata: y\n\n", [("message", "y", None, None)]),
    ("event type default", b"data: default\n\n", [("message", "default", None, None)]),
    ("event type set", b"event: add\ndata: a\n\n", [("add", "a", None, None)]),
    ("empty event type means message", b"event:\ndata: a\n\n", [("message", "a", None, None)]),
    ("last event field wins", b"event: a\nevent: b\ndata: x\n\n", [("b", "x", None, None)]),
    ("comment-only block: nothing", b": ping\n\n: ping\n\n", []),
    # --- id
    ("id set", b"id: 7\ndata: a\n\n", [("message", "a", "7", None)]),
    (
        "id persists",
        b"id: 7\ndata: a\n\ndata: b\n\n",
        [("message", "a", "7", None), ("message", "b", "7", None)],
    ),
    ("id set after data, same block", b"data: a\nid: 8\n\n", [("message", "a", "8", None)]),
    (
        "id with NUL ignored",
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [("message", "a", "1", None), ("message", "b", "1", None)],
    ),
    (
        "empty id resets to empty",
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [("message", "a", "1", None), ("message", "b", "", None)],
    ),
    ("id-only block: nothing", b"id: 5\n\n", []),
    (
        "ping after id: nothing",
        b"id: 5\ndata: a\n\n: ping\n\n: ping\n\n",
        [("message", "a", "5", None)],
    ),
    ("id-only block still sets id", b"id: 5\n\ndata: a\n\n", [("message", "a", "5", None)]),
    # --- retry
    ("retry digits", b"retry: 1500\ndata: a\n\n", [("message", "a", None, 1500)]),
    (
        "retry reset after dispatch",
        b"retry: 10\ndata: a\n\ndata: b\n\n",
        [("message", "a", None, 10), ("message", "b", None, None)],
    ),
    ("retry not digits ignored", b"retry: 1a\ndata: a\n\n", [("message", "a", None, None)]),
    ("retry negative ignored", b"retry: -1\ndata: a\n\n", [("message", "a", None, None)]),
    ("retry decimal ignored", b"retry: 1.5\ndata: a\n\n", [("message", "a", None, None)]),
    ("retry empty ignored", b"retry\ndata: a\n\n", [("message", "a", None, None)]),
    (
        "retry non-ASCII digits ignored",
        "retry: ²\ndata: a\n\nretry: ١\ndata: b\n\n".encode(),
        [("message", "a", None, None), ("message", "b", None, None)],
    ),
    ("retry-only block: nothing", b"retry: 5\n\n", []),
    # --- end of stream
    ("unterminated event discarded", b"data: a\n", []),
    ("unterminated line discarded", b"data: a", []),
    (
        "complete events kept before an unfinished one",
        b"data: a\n\ndata: b\n",
        [("message", "a", None, None)],
    ),
    ("trailing CR completes a line", b"data: a\r\n\r", [("message", "a", None, None)]),
]


@pytest.mark.parametrize(("name", "body", "expected"), CASES, ids=[case[0] for case in CASES])
def test_whatwg_rule(name: str, body: bytes, expected: list[Expected]) -> None:
    want = [
        ServerSentEvent(event, data, event_id, retry) for event, data, event_id, retry in expected
    ]
    for chunking, chunks in chunkings(body):
        got = decode_all(SSEDecoder, chunks)
        assert got == want, f"{name} ({chunking})"


def test_cases_are_distinct() -> None:
    assert len({case[0] for case in CASES}) == len(CASES)
    assert len({case[1] for case in CASES}) == len(CASES)


def test_retry_sets_the_reconnection_time_without_an_event() -> None:
    for chunking, chunks in chunkings(b"retry: 250\n\nretry: x\n\n"):
        decoder = SSEDecoder()
        for chunk in chunks:
            assert decoder.feed(chunk) == []
        assert decoder.retry == 250, chunking


def test_huge_retry_value_ignored_without_raising() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: " + b"9" * 5000 + b"\ndata: a\n\n")
    assert events == [ServerSentEvent("message", "a", None, None)]
    assert decoder.retry is None


def test_last_event_id_tracks_the_buffer() -> None:
    decoder = SSEDecoder()
    assert decoder.last_event_id is None
    decoder.feed(b"id: 3\n\n")
    assert decoder.last_event_id == "3"
    decoder.feed(b"id: a\x00\n\n")
    assert decoder.last_event_id == "3"
    decoder.feed(b"id:\n\n")
    assert decoder.last_event_id == ""
