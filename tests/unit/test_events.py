"""TokenDecoder: both dialects, [DONE], errors, heartbeats, malformed events, the fast path."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from infernet_async._textfast import TEXT_EVENTS, text_of
from infernet_async._token_decoder import TokenDecoder
from infernet_async.errors import EventTooLargeError
from infernet_async.events import (
    Done,
    ErrorEvent,
    JobInfo,
    Meta,
    StreamEvent,
    Token,
)
from infernet_async.sse import SSEDecoder
from tests.helpers.chunking import chunkings, decode_all, token_general


def decode(body: bytes) -> list[StreamEvent]:
    """Decode under every chunking, check they agree, and return the events."""
    results = [decode_all(TokenDecoder, chunks) for _, chunks in chunkings(body)]
    for other in results[1:]:
        assert other == results[0]
    return results[0]


def malformed_count(body: bytes) -> int:
    counts = set()
    for _, chunks in chunkings(body):
        decoder = TokenDecoder()
        for chunk in chunks:
            decoder.feed(chunk)
        decoder.close()
        counts.add(decoder.malformed)
    assert len(counts) == 1
    return counts.pop()


GUIDE_STREAM = (
    b'data: {"text": "Paris"}\n\n'
    b'data: {"text": " is"}\n\n'
    b'data: {"text": " the"}\n\n'
    b'data: {"text": " capital"}\n\n'
    b'data: {"text": " of"}\n\n'
    b'data: {"text": " France"}\n\n'
    b'data: {"text": "."}\n\n'
    b"data: [DONE]\n\n"
)

TYPED_STREAM = (
    b'event: job\ndata: {"id": "job_9a3f", "status": "pending", "model_name": "qwen2.5:14b",'
    b' "provider_id": null}\n\n'
    b'id: 17\nevent: meta\ndata: {"provider_node_id": "node_1", "provider_name": "gpu-box",'
    b' "model": "qwen2.5:14b", "started_at": "2026-11-25T16:00:00Z", "engine": "ollama"}\n\n'
    b'id: 18\nevent: token\ndata: {"text": "Paris"}\n\n'
    b": ping\n\n"
    b'id: 19\nevent: token\ndata: {"text": " is"}\n\n'
    b": ping\n\n"
    b'id: 40\nevent: done\ndata: {"text": "Paris is", "finished_at": "2026-11-25T16:00:01Z",'
    b' "reason": "stop"}\n\n'
)


# --- data-only dialect


def test_guide_stream() -> None:
    events = decode(GUIDE_STREAM)
    assert events[-1] == Done()
    texts = [e.text for e in events if isinstance(e, Token)]
    assert "".join(texts) == "Paris is the capital of France."
    assert len(events) == 8


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_guide_stream_any_line_ending(line_end: bytes) -> None:
    assert decode(GUIDE_STREAM.replace(b"\n", line_end)) == decode(GUIDE_STREAM)


def test_done_is_an_exact_literal() -> None:
    assert decode(b"data:[DONE]\n\n") == [Done()]
    assert decode(b"data: [DONE] \n\n") == []
    assert decode(b"data: [done]\n\n") == []
    assert decode(b'data: "[DONE]"\n\n') == []
    assert malformed_count(b"data: [DONE] \n\n") == 1


def test_done_in_multi_line_data_is_not_done() -> None:
    assert decode(b"data: [DONE]\ndata: x\n\n") == []


def test_error_event_data_only() -> None:
    body = b'data: {"error": "node_disconnected", "message": "Node went offline mid-stream"}\n\n'
    assert decode(body) == [ErrorEvent("node_disconnected", "Node went offline mid-stream")]


def test_error_event_openai_shape() -> None:
    body = b'data: {"error": {"message": "overloaded", "code": "no_capacity"}}\n\n'
    assert decode(body) == [ErrorEvent("no_capacity", "overloaded")]


def test_error_event_without_message_uses_the_code() -> None:
    assert decode(b'data: {"error": "timeout"}\n\n') == [ErrorEvent("timeout", "timeout")]


def test_error_wins_over_text() -> None:
    body = b'data: {"text": "x", "error": "internal_error", "message": "boom"}\n\n'
    assert decode(body) == [ErrorEvent("internal_error", "boom")]


def test_null_error_is_not_an_error() -> None:
    assert decode(b'data: {"text": "x", "error": null}\n\n') == [Token("x")]


def test_tokens_with_escapes_and_unicode() -> None:
    texts = ["a\nb", 'say "hi"', "tab\there", "back\\slash", "é中😀", "\u2028", "", " ", "\x7f"]
    for ensure_ascii in (True, False):
        body = b"".join(
            b"data: " + json.dumps({"text": t}, ensure_ascii=ensure_ascii).encode() + b"\n\n"
            for t in texts
        )
        assert decode(body) == [Token(t) for t in texts]


def test_compact_json_and_extra_whitespace() -> None:
    body = b'data:{"text":"a"}\n\ndata: { "text" : "b" }\n\ndata:  {"text": "c"}\n\n'
    assert decode(body) == [Token("a"), Token("b"), Token("c")]


def test_token_without_text_is_skipped_not_malformed() -> None:
    body = b'data: {"encrypted_text": "zz"}\n\ndata: {}\n\ndata: {"text": null}\n\n'
    assert decode(body) == []
    assert malformed_count(body) == 0


def test_malformed_events_are_skipped_and_counted() -> None:
    body = (
        b'data: {"text": "a"}\n\n'
        b"data: {bad json\n\n"
        b"data: 42\n\n"
        b'data: "just a string"\n\n'
        b'data: {"text": 5}\n\n'
        b"data: " + b"[" * 5_000 + b"\n\n"  # deep nesting: RecursionError inside json
        b'data: {"text": "b"}\n\n'
    )
    assert decode(body) == [Token("a"), Token("b")]
    assert malformed_count(body) == 5


def test_blank_data_is_a_heartbeat_not_malformed() -> None:
    body = b"data:\n\ndata:  \n\n"
    assert decode(body) == []
    assert malformed_count(body) == 0


def test_invalid_utf8_in_a_token_is_replaced() -> None:
    assert decode(b'data: {"text": "a\xffb"}\n\n') == [Token("a\ufffdb")]


# --- typed dialect


def test_typed_stream() -> None:
    events = decode(TYPED_STREAM)
    assert events == [
        JobInfo("job_9a3f", "pending", "qwen2.5:14b"),
        Meta("node_1", "gpu-box", "qwen2.5:14b", "ollama", id="17"),
        Token("Paris", "18"),
        Token(" is", "19"),
        Done("Paris is", "stop", "40"),
    ]
    job = events[0]
    assert isinstance(job, JobInfo)
    assert job.data["provider_id"] is None
    meta = events[1]
    assert isinstance(meta, Meta)
    assert meta.data["started_at"] == "2026-11-25T16:00:00Z"


def test_typed_alternative_field_names() -> None:
    body = (
        b'event: job\ndata: {"job_id": "job_1", "model": "m"}\n\n'
        b'event: meta\ndata: {"node_id": "n", "model_name": "m2"}\n\n'
    )
    assert decode(body) == [JobInfo("job_1", None, "m"), Meta("n", None, "m2", None)]


def test_typed_done_ends_whatever_its_data() -> None:
    assert decode(b"event: done\ndata: not json\n\n") == [Done()]
    assert decode(b"event: done\ndata: [1]\n\n") == [Done()]
    assert decode(b"event: done\ndata: [DONE]\n\n") == [Done()]
    assert malformed_count(b"event: done\ndata: not json\n\n") == 0


def test_typed_done_needs_data_to_dispatch() -> None:
    # WHATWG: an event with an empty data buffer is never dispatched, so a bare "event: done" block
    # is nothing at all; the live plane always sends data with it.
    assert decode(b"event: done\n\n") == []


def test_typed_error() -> None:
    assert decode(b'id: 41\nevent: error\ndata: {"message": "node lost"}\n\n') == [
        ErrorEvent(None, "node lost", "41")
    ]
    assert decode(b'event: error\ndata: {"error": "node_disconnected", "message": "m"}\n\n') == [
        ErrorEvent("node_disconnected", "m")
    ]
    assert decode(b'event: error\ndata: {"code": "timeout"}\n\n') == [
        ErrorEvent("timeout", "timeout")
    ]
    assert decode(b'event: error\ndata: {"code": 500, "message": "x"}\n\n') == [
        ErrorEvent(None, "x")
    ]
    assert decode(b"event: error\ndata: plain words\n\n") == [ErrorEvent(None, "plain words")]


def test_token_event_error_shape() -> None:
    assert decode(b'event: token\ndata: {"error": "x", "message": "y"}\n\n') == [
        ErrorEvent("x", "y")
    ]


def test_unknown_event_types_ignored_not_counted() -> None:
    body = b'event: usage\ndata: {"tokens": 3}\n\nevent: future\ndata: ???\n\n'
    assert decode(body) == []
    assert malformed_count(body) == 0


def test_malformed_job_and_meta_counted() -> None:
    body = b"event: job\ndata: {oops\n\nevent: meta\ndata: [1]\n\n"
    assert decode(body) == []
    assert malformed_count(body) == 2


def test_pings_produce_nothing_even_after_an_id() -> None:
    body = b'id: 5\nevent: token\ndata: {"text": "a"}\n\n' + b": ping\n\n" * 20 + b"id: 6\n\n"
    assert decode(body) == [Token("a", "5")]


def test_last_event_id() -> None:
    decoder = TokenDecoder()
    assert decoder.last_event_id is None
    decoder.feed(b'id: 18\nevent: token\ndata: {"text": "a"}\n\n')
    assert decoder.last_event_id == "18"
    decoder.feed(b": ping\n\n")
    assert decoder.last_event_id == "18"


def test_data_only_tokens_carry_the_last_event_id() -> None:
    body = b'id: 3\n\ndata: {"text": "a"}\n\ndata: {"text": "b"}\n\n'
    assert decode(body) == [Token("a", "3"), Token("b", "3")]


# --- lifecycle and limits


def test_feed_after_close_raises() -> None:
    decoder = TokenDecoder()
    assert decoder.feed(b'data: {"text": "a"}\n\ndata: {"text": "b"}') == [Token("a")]
    assert decoder.close() == []
    assert decoder.close() == []
    with pytest.raises(RuntimeError):
        decoder.feed(b'data: {"text": "a"}\n\n')


@pytest.mark.parametrize("split", [None, 1, 7])
def test_size_limit_applies_on_every_path(split: int | None) -> None:
    body = b'data: {"text": "ok"}\n\n' + b'data: {"text": "' + b"x" * 500 + b'"}\n\n'
    chunks = [body] if split is None else [body[i : i + split] for i in range(0, len(body), split)]
    decoder = TokenDecoder(max_event_size=100)
    events: list[StreamEvent] = []
    with pytest.raises(EventTooLargeError):
        for chunk in chunks:
            events += decoder.feed(chunk)
        decoder.close()
    assert events == [Token("ok")]


def test_tokens_before_an_oversized_tail_are_not_lost() -> None:
    decoder = TokenDecoder(max_event_size=100)
    assert decoder.feed(b'data: {"text": "a"}\n\ndata: ' + b"x" * 300) == [Token("a")]
    with pytest.raises(EventTooLargeError):
        decoder.feed(b"\n\n")


def test_bytearray_and_memoryview_input() -> None:
    body = GUIDE_STREAM
    expected = decode(body)
    assert TokenDecoder().feed(bytearray(body)) == expected
    assert TokenDecoder().feed(memoryview(body)) == expected


# --- the fast path: exactly json.loads where it answers


def _loads_text(data: str) -> Any:
    obj = json.loads(data)
    return obj["text"]


# Arbitrary text, plus text dense in what JSON escapes: quotes, backslashes, control characters,
# non-ASCII, and surrogates (lone ones, and halves that json.loads joins into one character).
_SPECIAL = '"\\/\n\r\t\b\f\x00\x1f\x7f é中😀\u2028\ud800\udbff\udc00\udfff\ud83d\ude00'
json_texts = st.one_of(st.text(), st.text(st.sampled_from(_SPECIAL)))


@settings(max_examples=300, deadline=None)
@given(text=json_texts, ensure_ascii=st.booleans(), compact=st.booleans())
@example(text="\ud800", ensure_ascii=True, compact=False)  # lone surrogate via \ud800
@example(text="\ud800", ensure_ascii=False, compact=False)  # lone surrogate, raw
@example(text="\ud83d\ude00", ensure_ascii=True, compact=True)  # two halves: json.loads joins them
@example(text='\\"\n\x00\x1f', ensure_ascii=False, compact=False)
def test_text_of_matches_json_loads_on_dumps(text: str, ensure_ascii: bool, compact: bool) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    data = json.dumps({"text": text}, ensure_ascii=ensure_ascii, separators=separators)
    assert text_of(data) == _loads_text(data)
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert text_of(data) == text


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.text(),
        st.builds(lambda s: '{"text": "' + s, st.text()),
        st.builds(lambda s: '{"text":"' + s + '"}', st.text()),
        st.builds(
            lambda a, s, b: a + '{"text": "' + s + '"' + b,
            st.text(" \t\r\n}x,"),
            st.text(),
            st.text(" \t\r\n}x,"),
        ),
    )
)
@example(data='{"text": "a\tb"}')  # a raw control character: invalid JSON
@example(data='{"text": "\\u12"}')  # a truncated escape
@example(data='{"text": "a"} ')
@example(data=' {"text": "a"}')
@example(data='{"text": "a"}}')
@example(data='{"text": "a", "b": 1}')
@example(data='{"text": "\\ud800"}')
@example(data='{"text": "\ud800"}')
def test_text_of_never_disagrees_with_json_loads(data: str) -> None:
    fast = text_of(data)
    if fast is None:
        return  # declining is always allowed: the caller falls back to json.loads
    assert json.loads(data) == {"text": fast}


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(json_texts, min_size=1, max_size=8), ensure_ascii=st.booleans())
def test_token_stream_fast_and_general_paths_agree(texts: list[str], ensure_ascii: bool) -> None:
    if not ensure_ascii:
        # Lone surrogates cannot be sent raw as UTF-8; they can only travel escaped.
        texts = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]
    payloads = [json.dumps({"text": t}, ensure_ascii=ensure_ascii) for t in texts]
    body = b"".join(b"data: " + payload.encode() + b"\n\n" for payload in payloads)
    fast = TokenDecoder()
    fast.feed(b":\n")  # the first chunk settles the BOM check on the general path
    whole = fast.feed(body)  # the fast path, all events at once
    bytewise: list[StreamEvent] = []  # the fast path holding bytes between chunks
    decoder = TokenDecoder()
    for i in range(len(body)):
        bytewise += decoder.feed(body[i : i + 1])
    expected = [Token(json.loads(payload)["text"]) for payload in payloads]
    assert whole == bytewise == token_general(body)[0] == expected


def test_text_events_tiling_rejects_gaps() -> None:
    # TEXT_EVENTS finds events anywhere; the decoder's LF count is what proves they tile the text.
    text = 'x\ndata: {"text": "a"}\n\n'
    bodies = TEXT_EVENTS(text)
    assert bodies == ["a"]
    assert text.count("\n") != 2 * len(bodies)
    assert decode(text.encode()) == [Token("a")]
    assert decode(b'data: {"text": "a"}\n\nevent: x\ndata: {"text": "b"}\n\n') == [Token("a")]


def test_fast_path_is_taken_for_token_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    original = SSEDecoder.feed

    def counting_feed(self: SSEDecoder, chunk: Any) -> Any:
        calls.append(bytes(chunk))
        return original(self, chunk)

    monkeypatch.setattr(SSEDecoder, "feed", counting_feed)
    decoder = TokenDecoder()
    decoder.feed(b":\n")
    run = b'data: {"text": "a"}\n\ndata: {"text": "b\\n"}\n\n' * 200
    assert len(decoder.feed(run)) == 400  # big: the one-regex branch
    assert decoder.feed(b'data: {"text": "c"}\n\ndata: {"text":') == [Token("c")]  # small: the walk
    assert decoder.feed(b' "d"}\n\n') == [Token("d")]  # completes a buffered line
    assert calls == [b":\n"]
    typed = b'id: 7\nevent: token\ndata: {"text":"e"}\n\nevent: token\ndata: {"text":"f"}\n\n'
    assert decoder.feed(typed) == [Token("e", "7"), Token("f", "7")]
    assert decoder.last_event_id == "7"
    assert calls == [b":\n"]
    # Not a token: the SSE decoder's line loop decodes that one event; its bytes stay here.
    assert decoder.feed(b"data: [DONE]\n\n") == [Done(id="7")]
    assert calls == [b":\n"]


NEAR_MISSES = [
    b'data: {"text": "a"]\n\n',  # wrong closer
    b'data: {"text": "a"1\n\n',
    b'data: {"text": "a"} \n\n',  # trailing space: still valid JSON
    b'data: {"text": "a"}}\n\n',
    b'data: {"text": "a\tb"}\n\n',  # raw control character: invalid JSON
    b'data: {"text": "a\\x"}\n\n',  # invalid escape
    b'data: {"text": "\\u12"}\n\n',  # truncated escape
    b'data: {"text": "\\ud800"}\n\n',  # lone surrogate escape: valid
    b'data: {"text": "a"}\r\n\n',
    b'data: {"text": "a"}\n\r\n',
    b'data: {"text": "a", "b": 1}\n\n',
    b'data: {"text": "a"}\ndata: {"text": "b"}\n\n',  # two data lines: one event, not JSON
    b'data: {"text": "a"}\n\n\n',
    b'id: 1\ndata: {"text": "a"}\n\n',
    b'data:{"text": "a"}\n\ndata: {"text":"b"}\n\n',
    b'data: {"text":  "a"}\n\n',
    b'id: 5\nevent: token\ndata: {"text":"a"}\n\n',  # the typed shapes the fast path takes
    b'event: token\ndata: {"text": "a"}\n\n',
    b'id:5\nevent: token\ndata: {"text": "a"}\n\n',  # and near misses of them
    b'id: 5\x00\nevent: token\ndata: {"text": "a"}\n\n',
    b'id: 5\revent: token\ndata: {"text": "a"}\n\n',
    b'id: 5\r\nevent: token\ndata: {"text": "a"}\n\n',
    b'event: token\nid: 5\ndata: {"text": "a"}\n\n',
    b'id: 5\nevent: tokens\ndata: {"text": "a"}\n\n',
    b'id: 5\nevent: token\ndata:{"text": "a"}\n\n',
    b"id: 5\nevent: token\ndata: [DONE]\n\n",
    b'id: \nevent: token\ndata: {"text": "a"}\n\n',
]


@pytest.mark.parametrize("body", NEAR_MISSES)
def test_fast_path_near_misses_match_the_general_path(body: bytes) -> None:
    for repeat in (1, 3, 40):  # 40: past the size where the fast path switches to one regex call
        run = body * repeat
        fast = TokenDecoder()
        fast.feed(b":\n")
        fast_events = fast.feed(run) + fast.close()
        bytewise = TokenDecoder()
        bytewise_events = [e for i in range(len(run)) for e in bytewise.feed(run[i : i + 1])]
        bytewise_events += bytewise.close()
        general = token_general(run)
        assert fast_events == bytewise_events == general[0]
        assert fast.malformed == bytewise.malformed == general[1]
        assert fast.last_event_id == bytewise.last_event_id == general[2]


_ids = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(st.tuples(st.text(), st.one_of(st.none(), _ids), st.booleans()), max_size=8),
    compact=st.booleans(),
    data=st.data(),
)
def test_typed_token_stream_fast_and_general_paths_agree(
    events: list[tuple[str, str | None, bool]], compact: bool, data: st.DataObject
) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    body = b"".join(
        (b"" if event_id is None else b"id: " + event_id.encode() + b"\n")
        + (b"event: token\n" if typed else b"")
        + b"data: "
        + json.dumps({"text": text}, separators=separators).encode()
        + b"\n\n"
        for text, event_id, typed in events
    )
    fast = TokenDecoder()
    fast.feed(b":\n")
    whole = fast.feed(body)
    general = token_general(body)
    assert whole == general[0]
    assert fast.last_event_id == general[2]
    # Cut anywhere, in mixed input types: the fast path holds bytes across chunks.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=10)))
    bounds = [0, *cuts, len(body)]
    kinds = (bytes, bytearray, memoryview)
    chunked = TokenDecoder()
    chunked.feed(b":\n")
    pieces = [
        e
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
        for e in chunked.feed(kinds[i % 3](body[a:b]))
    ]
    assert pieces + chunked.close() == whole
    assert chunked.last_event_id == general[2]
    assert "".join(e.text for e in whole if isinstance(e, Token)) == "".join(
        t for t, _, _ in events
    )


def test_input_types_mixed_mid_event() -> None:
    decoder = TokenDecoder()
    decoder.feed(b":\n")
    assert decoder.feed(b'data: {"te') == []  # held by the fast path
    assert decoder.feed(memoryview(b'xt": "a"}\n')) == []
    assert decoder.feed(bytearray(b'\ndata: {"text": "b"}\n\n')) == [Token("a"), Token("b")]
    assert decoder.feed(b'data: {"text": "c"') == []
    assert decoder.feed(memoryview(b"}\n\n")) == [Token("c")]


def test_huge_chunk_after_held_bytes_is_not_copied() -> None:
    # The fast path holds the start of an event; a 32 MB chunk must go to the SSE decoder as it
    # is (which refuses it at once) rather than be appended to the held bytes first.
    decoder = TokenDecoder(max_event_size=1 << 20)
    decoder.feed(b":\n")
    assert decoder.feed(b'data: {"text": "') == []
    huge = b"x" * (32 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(EventTooLargeError):
            decoder.feed(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
