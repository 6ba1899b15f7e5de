"""TokenDecoder's fast path on the chat surface's typed stream: exactly the general path.

The hosted chat stream is ``id: n`` + ``event: token`` + ``data: {"text":"..."}`` (compact JSON),
with ``: ping`` comments between events, sometimes ``event:`` before ``id:``, CRLF line ends in some
deployments, and other typed events (``job``, ``meta``, ``done``, ``routing``, ``log``) among the
tokens. The fast path takes all of these shapes; whatever it does not take goes to the SSE decoder
one event at a time. These properties generate such streams, near misses included, cut them
anywhere and compare, chunk by chunk, the decoder against its general path fed the same chunks
(SSE events interpreted one by one, no fast path): the same events from each ``feed()``, the same
size error at the same call, the same ``malformed`` count and last event id.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from infernet_async._token_decoder import TokenDecoder
from infernet_async.errors import EventTooLargeError
from infernet_async.events import (
    Done,
    JobInfo,
    Log,
    Meta,
    Routing,
    StreamEvent,
    Token,
)
from infernet_async.sse import SSEDecoder

# HARDENING_FUZZ_EXAMPLES (as in hardening/test_fuzz.py) raises the count for a longer local run.
EXAMPLES = int(os.environ.get("HARDENING_FUZZ_EXAMPLES", "200"))
FAST_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class GeneralOnly(TokenDecoder):
    """TokenDecoder without its fast path: every chunk through the SSE decoder, then interpreted."""

    __slots__ = ()

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[StreamEvent]:
        return self._interpret(self._sse.feed(chunk))

    def close(self) -> list[StreamEvent]:
        return self._interpret(self._sse.close())


def per_feed(decoder: TokenDecoder, chunks: list[bytes]) -> tuple[list[Any], int, Any]:
    """What each ``feed()`` (then ``close()``) returned, ``"too large"`` at the call that raised
    EventTooLargeError; the malformed count; the last event id (``None`` after a size error: the
    SSE decoder drops the ids of the call that fails, so they are not compared then)."""
    out: list[Any] = []
    try:
        for chunk in chunks:
            out.append(decoder.feed(chunk))  # noqa: PERF401 (the call that raises must be known)
        out.append(decoder.close())
    except EventTooLargeError:
        out.append("too large")
        return out, decoder.malformed, None
    return out, decoder.malformed, decoder.last_event_id


def assert_same(chunks: list[bytes], limit: int | None = None) -> list[StreamEvent]:
    """The fast path and the general path agree on ``chunks``, call by call; returns the events."""

    def make(kind: type[TokenDecoder]) -> TokenDecoder:
        return kind() if limit is None else kind(max_event_size=limit)

    fast = per_feed(make(TokenDecoder), chunks)
    general = per_feed(make(GeneralOnly), chunks)
    assert fast == general
    return [e for events in fast[0] if events != "too large" for e in events]


# --- generated typed streams

_SPECIAL = '"\\/\n\r\t\x00\x1f\x7f é中😀\u2028\ud800\udc00'
_texts = st.one_of(st.text(max_size=8), st.text(st.sampled_from(_SPECIAL), max_size=6))


@st.composite
def token_data(draw: Any) -> str:
    """A token event's data line, as the services write it or close to it."""
    text = draw(_texts)
    ensure_ascii = draw(st.booleans())
    if not ensure_ascii:  # lone surrogates travel escaped only
        text = text.encode("utf-8", "replace").decode("utf-8")
    compact = draw(st.booleans())
    payload = json.dumps(
        {"text": text},
        ensure_ascii=ensure_ascii,
        separators=(",", ":") if compact else (", ", ": "),
    )
    field = draw(st.sampled_from(["data: ", "data: ", "data:", "data:  "]))
    suffix = draw(st.sampled_from(["", "", "", "", " ", "}", '"', "]"]))
    return field + payload + suffix


_OTHER_DATA = [
    "data: [DONE]",
    'data: {"id":"job_1","status":"pending","model_name":"m","provider_id":null}',
    'data: {"provider_node_id":"n","provider_name":"gpu","model":"m","engine":"ollama"}',
    'data: {"text":"all of it","reason":"stop","finished_at":"t"}',
    'data: {"peers":["a","b"]}',
    'data: {"message":"loading","line":"l"}',
    'data: {"error":"node_disconnected","message":"gone"}',
    'data: {"text":"a","x":1}',
    'data: {"text": 5}',
    "data: not json",
    "data: 42",
    "data:",
    "data",
    "data: ",
]

_HEADERS = [
    "event: token",
    "event: token",
    "event: token",
    "event: job",
    "event: meta",
    "event: done",
    "event: routing",
    "event: log",
    "event: error",
    "event: usage",
    "event: tokens",  # near misses of the shapes the walk takes
    "event:token",
    "event: token ",
    "event:",
    "id:7",
    "id",
    ": ping",
    ":",
    ":: x",
    "retry: 5",
    "retry: x",
    "ID: 1",
]

_ids = st.sampled_from(["1", "2", "17", "", "x y", "a\x00b", "é", " 3"])


@st.composite
def block(draw: Any) -> list[str]:
    """The lines of one block, its blank line included (the last, empty, line)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return [": ping", ""]
    if kind == 1:  # an extra blank line, or an id-only block
        return [""] if draw(st.booleans()) else ["id: " + draw(_ids), ""]
    headers: list[str] = []
    if draw(st.booleans()):
        headers.append("id: " + draw(_ids))
    if kind < 8:
        headers.append("event: token")
    else:
        headers.append(draw(st.sampled_from(_HEADERS)))
    if draw(st.integers(0, 4)) == 0:
        headers.append(draw(st.sampled_from(_HEADERS)))
    if draw(st.integers(0, 4)) == 0:
        headers.append("id: " + draw(_ids))
    headers = draw(st.permutations(headers))
    if kind < 7:
        data = [draw(token_data())]
    else:
        data = [draw(st.one_of(token_data(), st.sampled_from(_OTHER_DATA)))]
    if draw(st.integers(0, 9)) == 0:  # two data lines, or a field after the data
        data.append(draw(st.sampled_from([*_OTHER_DATA, *_HEADERS])))
    return [*headers, *data, ""]


@st.composite
def typed_stream(draw: Any) -> bytes:
    """A chat-surface stream: blocks of lines with one line end, or mixed line ends."""
    blocks = draw(st.lists(block(), max_size=12))
    lines = [line for lines in blocks for line in lines]
    style = draw(st.sampled_from(["\n", "\r\n", "\r", "mixed"]))
    if style == "mixed":
        ends = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines)))
    else:
        ends = [style] * len(lines)
    body = "".join(line + end for line, end in zip(lines, ends, strict=False)).encode(
        "utf-8", "surrogatepass"
    )
    if draw(st.integers(0, 9)) == 0:  # an unfinished tail
        tails = [b"id: 9", b"id: 9\r", b"data: {", b"\r", b"event: token\r\n"]
        body += draw(st.sampled_from(tails))
    return body


@st.composite
def cuts(draw: Any, body: bytes) -> list[bytes]:
    """``body`` cut at arbitrary points (empty chunks included)."""
    points = sorted(draw(st.lists(st.integers(0, len(body)), max_size=16)))
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@FAST_SETTINGS
@given(body=typed_stream(), data=st.data(), settle=st.booleans())
@example(body=b'event: token\r\nid: 1\r\ndata: {"text":"a"}\r\n\r\n', data=None, settle=True)
@example(
    body=b'id: 1\ndata: {"text":"a"}\n\n: ping\n\nevent: job\ndata: {}\n\n', data=None, settle=False
)
def test_typed_streams_fast_and_general_agree_under_any_chunking(
    body: bytes, data: Any, settle: bool
) -> None:
    # A leading comment settles the BOM check, so that the fast path runs from the first chunk on.
    prefix = [b":\n"] if settle else []
    chunks = data.draw(cuts(body)) if data is not None else [body]
    note(f"chunks={chunks!r}")
    whole = assert_same([*prefix, body])
    assert assert_same([*prefix, *chunks]) == whole
    bytewise = [body[i : i + 1] for i in range(len(body))]
    assert assert_same([*prefix, *bytewise]) == whole
    kinds = (bytes, bytearray, memoryview)
    mixed = [kinds[i % 3](chunk) for i, chunk in enumerate(chunks)]
    assert assert_same([*prefix, *mixed]) == whole  # type: ignore[list-item]


@FAST_SETTINGS
@given(body=typed_stream(), data=st.data(), limit=st.integers(1, 120))
def test_typed_streams_size_limit_fast_and_general_agree(
    body: bytes, data: Any, limit: int
) -> None:
    chunks = data.draw(cuts(body))
    note(f"chunks={chunks!r}")
    assert_same([b":\n", body], limit)
    assert_same([b":\n", *chunks], limit)


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.tuples(_texts, st.integers(0, 3), st.booleans(), st.booleans()), min_size=1, max_size=40
    ),
    crlf=st.booleans(),
    event_first=st.booleans(),
    data=st.data(),
)
def test_chat_stream_fast_and_general_agree(
    events: list[tuple[str, int, bool, bool]],
    crlf: bool,
    event_first: bool,
    data: Any,
) -> None:
    """What the service writes: job, meta, token events with ids, pings, done; long enough for the
    one-regex branch too."""
    end = b"\r\n" if crlf else b"\n"

    def event(kind: str, payload: object, event_id: int | None) -> bytes:
        lines = [b"event: " + kind.encode()]
        if event_id is not None:
            id_line = b"id: %d" % event_id
            lines = [*lines, id_line] if event_first else [id_line, *lines]
        lines.append(b"data: " + json.dumps(payload, separators=(",", ":")).encode())
        return end.join(lines) + end + end

    parts = [event("job", {"id": "j", "status": "pending"}, None), event("meta", {"model": "m"}, 1)]
    texts = []
    for number, (text, other, ping, _) in enumerate(events, start=2):
        text = text.encode("utf-8", "replace").decode("utf-8")
        texts.append(text)
        parts.append(event("token", {"text": text}, number))
        if ping:
            parts.append(b": ping" + end + end)
        if other == 3:
            parts.append(event("log", {"message": "step"}, None))
    parts.append(event("done", {"text": "".join(texts), "reason": "stop"}, len(events) + 2))
    body = b"".join(parts)
    chunks = data.draw(cuts(body))
    decoded = assert_same([b":\n", *chunks])
    assert decoded == assert_same([b":\n", *parts]) == assert_same([b":\n", body])
    assert [e.text for e in decoded if isinstance(e, Token)] == texts
    assert isinstance(decoded[-1], Done)


# --- the fast path is taken


def _chat(end: bytes, event_first: bool) -> list[bytes]:
    def event(kind: str, payload: str, event_id: int | None) -> bytes:
        lines = [b"event: " + kind.encode()]
        if event_id is not None:
            id_line = b"id: %d" % event_id
            lines = [*lines, id_line] if event_first else [id_line, *lines]
        lines.append(b"data: " + payload.encode())
        return end.join(lines) + end + end

    return [
        event("job", '{"id":"j","status":"pending","model_name":"m"}', None),
        event("meta", '{"provider_node_id":"n","model":"m"}', 1),
        event("token", '{"text":"Paris"}', 2),
        b": ping" + end + end,
        event("token", '{"text":" is"}', 3),
        event("routing", '{"peers":["a"]}', None),
        event("log", '{"message":"step"}', 4),
        event("token", '{"text":" \\"it\\""}', 5),
        event("done", '{"text":"Paris is \\"it\\"","reason":"stop"}', 6),
    ]


EXPECTED = [
    JobInfo("j", "pending", "m"),
    Meta("n", None, "m", None, id="1"),
    Token("Paris", "2"),
    Token(" is", "3"),
    Routing({"peers": ["a"]}, "3"),
    Log("step", id="4"),
    Token(' "it"', "5"),
    Done('Paris is "it"', "stop", "6"),
]


def test_chat_shapes_take_the_fast_path(monkeypatch: Any) -> None:
    """Either field order, pings, CRLF: the SSE decoder never sees the bytes, and its line loop
    runs only for the events that are not tokens (one call each)."""
    feeds: list[bytes] = []
    loops: list[list[str]] = []
    original_feed = SSEDecoder.feed
    original_loop = SSEDecoder._interpret

    def counting_feed(self: SSEDecoder, chunk: Any) -> Any:
        feeds.append(bytes(chunk))
        return original_feed(self, chunk)

    def counting_loop(self: SSEDecoder, lines: list[str]) -> Any:
        loops.append(lines)
        return original_loop(self, lines)

    monkeypatch.setattr(SSEDecoder, "feed", counting_feed)
    monkeypatch.setattr(SSEDecoder, "_interpret", counting_loop)
    for end in (b"\n", b"\r\n"):
        for event_first in (False, True):
            parts = _chat(end, event_first)
            body = b"".join(parts)
            chunkings = [parts, [body]]
            if end == b"\n":  # (a CRLF cut after its CR goes to the SSE decoder: it ends a line)
                chunkings.append([body[i : i + 7] for i in range(0, len(body), 7)])
            for chunks in chunkings:
                feeds.clear()
                loops.clear()
                decoder = TokenDecoder()
                decoder.feed(b":\n")
                events = [e for chunk in chunks for e in decoder.feed(chunk)]
                assert events == EXPECTED
                assert decoder.last_event_id == "6"
                assert feeds == [b":\n"]
                assert len(loops) == 1 + 5  # the ":\n" line, then job, meta, routing, log, done


def test_a_lone_cr_that_ends_an_event_dispatches_it_at_once() -> None:
    decoder = TokenDecoder()
    decoder.feed(b":\n")
    assert decoder.feed(b'id: 1\r\nevent: token\r\ndata: {"text":"a"}\r\n') == []
    assert decoder.feed(b"\r") == [Token("a", "1")]  # the blank line's CR ends it
    assert decoder.feed(b'\nid: 2\r\ndata: {"text":"b"}\r\n\r\n') == [Token("b", "2")]
    assert decoder.feed(b'data: {"text":"c"}\r\rdata: {"text":"d"}\n\n') == [
        Token("c", "2"),
        Token("d", "2"),
    ]
    assert decoder.close() == []


# --- every cut of streams dense in CR line ends

CR_BODIES = [
    b': a\rdata: {"text":"x"}\n\n',  # a comment ended by a CR alone, in a region taken whole
    b'id: 1\rdata: {"text":"x"}\n\nid: 2\revent: token\ndata: {"text":"y"}\n\n',
    b'event: token\r\ndata: {"text":"a"}\r\n\r\nid: 2\rdata: {"text":"b"}\n\r: ping\r\n\r\n',
    b'id: 3\r\nevent: token\r\ndata: {"text":"c"}\r\n\rdata: {"text":"d"}\r\r\n\n',
    b'data: {"text":"e"}\n\r\ndata: [DONE]\r\rid: 4\n\n\rdata: {"text":"f"}\r\n\n',
]


def _cuts(body: bytes, pieces: int) -> list[list[bytes]]:
    """Every way to cut ``body`` in ``pieces`` (2 or 3) non-empty chunks."""
    size = len(body)
    if pieces == 2:
        return [[body[:i], body[i:]] for i in range(1, size)]
    return [[body[:i], body[i:j], body[j:]] for i in range(1, size - 1) for j in range(i + 1, size)]


def test_every_cut_of_streams_with_cr_line_ends() -> None:
    for body in CR_BODIES:
        whole = assert_same([b":\n", body])
        for chunks in _cuts(body, 2):
            assert assert_same([b":\n", *chunks]) == whole, chunks
    body = CR_BODIES[2]
    whole = assert_same([b":\n", body])
    for chunks in _cuts(body, 3):
        assert assert_same([b":\n", *chunks]) == whole, chunks


def test_every_cut_with_an_oversized_line_after_heartbeats() -> None:
    # The SSE decoder raises at once when nothing was dispatched before the long line in the same
    # chunk, and keeps the error for the next call when something was.
    for head in (b": ping\n\n", b"id: 1\n\n: ping\r\n\r\n", b'data: {"text":"a"}\n\n: ping\n\n'):
        body = head + b"data: " + b"a" * 30 + b"\n\n"
        assert_same([b":\n", body], limit=12)
        for chunks in _cuts(body, 2):
            assert_same([b":\n", *chunks], limit=12)
