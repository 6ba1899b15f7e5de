"""Hypothesis properties of the decoders: they never raise, and chunking never changes the result.

- any bytes, cut anywhere: ``feed()`` never raises and gives the same events as the bytes whole;
- events rendered to bytes (any line ending, comments, BOM) and cut anywhere decode to themselves;
- ``TokenDecoder`` agrees with its general path (SSE events interpreted one by one, no fast
  path) and with itself across chunkings and input types, counts included, size limit too.
"""

from __future__ import annotations

from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from infernet_async._token_decoder import TokenDecoder  # noqa: E402
from infernet_async.errors import EventTooLargeError  # noqa: E402
from infernet_async.sse import ServerSentEvent, SSEDecoder  # noqa: E402
from tests.helpers.chunking import token_general  # noqa: E402

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Pieces that make the decoders' interesting paths likely: field names, every line end, UTF-8
# fragments, the BOM, JSON token payloads, [DONE], invalid bytes.
_PIECES = [
    b"data",
    b"data:",
    b"data: ",
    b"event:",
    b"event: token",
    b"event: done",
    b"event: error",
    b"event: job",
    b"event: meta",
    b"id: ",
    b"id:7",
    b"retry: 5",
    b": ping",
    b":",
    b" ",
    b"\n",
    b"\n\n",
    b"\r",
    b"\r\n",
    b"a",
    b"1",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"\xe4\xb8",
    b"\xad",
    b"\xef\xbb\xbf",
    b'{"text": "',
    b'{"text":"',
    b'"}',
    b"\\n",
    b'\\"',
    b"\\u00e9",
    b'{"error": "x", "message": "m"}',
    b'{"id": "job_1"}',
    b"[DONE]",
    b"{",
    b"}",
    b'"',
    b"]",
    b"\t",
]

byte_soup = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join),
)


@st.composite
def cut(draw: Any, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included)."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def sse_run(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events


def token_run(chunks: list[bytes], limit: int | None = None) -> tuple[list[Any], int, Any, bool]:
    decoder = TokenDecoder() if limit is None else TokenDecoder(max_event_size=limit)
    events: list[Any] = []
    too_large = False
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        events += decoder.close()
    except EventTooLargeError:
        too_large = True
    return events, decoder.malformed, decoder.last_event_id, too_large


@PROPERTY_SETTINGS
@given(data=st.data(), body=byte_soup)
@example(data=None, body=b"\xef\xbb")
@example(data=None, body=b'data: {"text": "a"}\r\n\r\ndata: {"text": "b"}\n\n')
def test_sse_never_raises_and_ignores_chunking(data: Any, body: bytes) -> None:
    chunks = data.draw(cut(body)) if data is not None else [body[:1], body[1:]]
    note(f"chunks={chunks!r}")
    whole = sse_run([body])
    assert sse_run(chunks) == whole
    assert sse_run([body[i : i + 1] for i in range(len(body))]) == whole


@PROPERTY_SETTINGS
@given(data=st.data(), body=byte_soup)
def test_token_decoder_never_raises_and_ignores_chunking(data: Any, body: bytes) -> None:
    chunks = data.draw(cut(body))
    note(f"chunks={chunks!r}")
    # A leading comment settles the BOM check, so the fast path can run on the chunks that follow.
    for prefix in (b"", b":\n"):
        whole = token_run([prefix + body])
        general = token_general(prefix + body)
        assert (whole[0], whole[1], whole[2]) == general
        assert token_run([prefix, *chunks]) == whole
        kinds = (bytes, bytearray, memoryview)
        mixed = [kinds[i % 3](chunk) for i, chunk in enumerate(chunks)]
        assert token_run([prefix, *mixed]) == whole  # type: ignore[list-item]
        assert token_run([prefix] + [body[i : i + 1] for i in range(len(body))]) == whole


@PROPERTY_SETTINGS
@given(data=st.data(), body=byte_soup, limit=st.integers(1, 48))
def test_size_limit_ignores_chunking(data: Any, body: bytes, limit: int) -> None:
    chunks = data.draw(cut(body))
    note(f"chunks={chunks!r}")
    whole = token_run([b":\n", body], limit)
    assert token_run([b":\n", *chunks], limit) == whole
    assert token_run([b":\n"] + [body[i : i + 1] for i in range(len(body))], limit) == whole


# --- render -> cut -> decode roundtrip

_line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))

_event = st.fixed_dictionaries(
    {
        "event": st.one_of(st.none(), _line_text),
        # Data may span lines; only CR cannot be expressed (it would end a line).
        "data": st.text(st.characters(blacklist_characters="\r", blacklist_categories=["Cs"])),
        "id": st.one_of(st.none(), _line_text.filter(lambda s: "\x00" not in s)),
        "retry": st.one_of(st.none(), st.integers(0, 10**12)),
        "comment": st.one_of(st.none(), _line_text),
        "heartbeat": st.booleans(),
        "tight": st.booleans(),  # "data:value" instead of "data: value" where that is the same
    }
)


def render(events: list[dict[str, Any]], line_end: bytes, bom: bool) -> bytes:
    lines: list[str] = []
    for event in events:
        if event["comment"] is not None:
            lines.append(":" + event["comment"])
        if event["id"] is not None:
            lines.append("id: " + event["id"])
        if event["event"] is not None:
            lines.append("event: " + event["event"])
        if event["retry"] is not None:
            lines.append(f"retry: {event['retry']}")
        for value in event["data"].split("\n"):
            tight = event["tight"] and not value.startswith(" ")
            lines.append(("data:" if tight else "data: ") + value)
        lines.append("")
        if event["heartbeat"]:
            lines += [": ping", ""]
    body = line_end.join(line.encode() for line in lines) + (line_end if lines else b"")
    return (b"\xef\xbb\xbf" if bom else b"") + body


def expected(events: list[dict[str, Any]]) -> list[ServerSentEvent]:
    out = []
    last_id = None
    for event in events:
        if event["id"] is not None:
            last_id = event["id"]
        out.append(
            ServerSentEvent(event["event"] or "message", event["data"], last_id, event["retry"])
        )
    return out


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    events=st.lists(_event, max_size=6),
    line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    bom=st.booleans(),
)
def test_rendered_events_decode_to_themselves_under_any_chunking(
    data: Any, events: list[dict[str, Any]], line_end: bytes, bom: bool
) -> None:
    body = render(events, line_end, bom)
    chunks = data.draw(cut(body))
    note(f"chunks={chunks!r}")
    want = expected(events)
    assert sse_run([body]) == want
    assert sse_run(chunks) == want
    assert sse_run([body[i : i + 1] for i in range(len(body))]) == want


# --- the last-event-ID after a size error


def _size_error_run(make: Any, chunks: list[bytes]) -> tuple[list[Any], Any, bool]:
    decoder = make()
    events: list[Any] = []
    too_large = False
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        events += decoder.close()
    except EventTooLargeError:
        too_large = True
    return events, decoder.last_event_id, too_large


# Lines whose data, not their length, overflows a small limit: the data error fires on a line in the
# middle of a run, after id lines that a one-chunk feed and a byte-at-a-time feed both must count.
_limited_line = st.one_of(
    st.builds(lambda n: b"id:%d" % n, st.integers(0, 99)),
    st.builds(lambda k: b"data:" + b"x" * k, st.integers(0, 6)),
    st.builds(lambda k: b'data: {"text": "' + b"t" * k + b'"}', st.integers(0, 4)),
    st.sampled_from([b"", b"", b"event: token", b": ping", b"retry: 3"]),
)


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    lines=st.lists(_limited_line, max_size=16),
    line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    limit=st.integers(4, 24),
    kind=st.sampled_from(["sse", "token", "chunk"]),
)
@example(
    data=None,
    lines=[b"data:aaa", b"id:7", b"data:bbb", b"data:c"],
    line_end=b"\n",
    limit=8,
    kind="sse",
)
def test_last_event_id_after_a_size_error_ignores_chunking(
    data: Any, lines: list[bytes], line_end: bytes, limit: int, kind: str
) -> None:
    from infernet_async._openai_decoder import ChunkDecoder

    factory = {"sse": SSEDecoder, "token": TokenDecoder, "chunk": ChunkDecoder}[kind]

    def make() -> Any:
        return factory(max_event_size=limit)

    body = b"".join(line + line_end for line in lines)
    chunks = data.draw(cut(body)) if data is not None else [body]
    note(f"chunks={chunks!r}")
    # A leading comment settles the BOM check, so the fast paths can run on the chunks that follow.
    whole = _size_error_run(make, [b":\n", body])
    assert _size_error_run(make, [b":\n", *chunks]) == whole
    assert _size_error_run(make, [b":\n"] + [body[i : i + 1] for i in range(len(body))]) == whole
