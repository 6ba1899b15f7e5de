"""ChunkDecoder: OpenAI chat.completion.chunk streams, the rules, and the fast path's exactness.

The reference here (``reference``) is written from the rules alone: SSEDecoder events, json.loads,
then the rules, with no template and no fast path. Every decoding below is compared with it, under
every chunking, so the fast path can only ever give what the rules give.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tracemalloc
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from infernet_async._event_build import error_event as _error_event
from infernet_async._openai_decoder import INCOMPLETE_MESSAGE, ChunkDecoder
from infernet_async.errors import INCOMPLETE_STREAM_CODE, EventTooLargeError
from infernet_async.events import (
    Done,
    ErrorEvent,
    EventDecoder,
    JobInfo,
    StreamEvent,
    Token,
)
from infernet_async.sse import SSEDecoder
from tests.helpers.chunking import chunkings, decode_all
from tests.helpers.paths import BENCHMARKS

CHUNK_ID = "chatcmpl-9a3f0c2e4b7d"
MODEL = "qwen2.5:14b"
HEAD: dict[str, Any] = {
    "id": CHUNK_ID,
    "object": "chat.completion.chunk",
    "created": 1764086400,
    "model": MODEL,
}


def compact(obj: Any, ensure_ascii: bool = False) -> bytes:
    """JSON as the hosted service writes it (JSON.stringify: no spaces, non-ASCII raw)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()


def chunk_obj(delta: Any, finish: Any = None, **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def event(obj: Any, ensure_ascii: bool = False) -> bytes:
    return b"data: " + compact(obj, ensure_ascii) + b"\n\n"


def token_event(text: str, ensure_ascii: bool = False) -> bytes:
    return event(chunk_obj({"content": text}), ensure_ascii)


ROLE = event(chunk_obj({"role": "assistant", "content": ""}))
FINISH = event(chunk_obj({}, "stop"))
DONE = b"data: [DONE]\n\n"
HOSTED = ROLE + b"".join(token_event(t) for t in ["Paris", " is", " the", " capital", "."])
HOSTED += FINISH + DONE


# --- the reference: SSEDecoder + json.loads + the rules, nothing else


def _reference_chunk(obj: dict[str, Any]) -> tuple[str, str | None] | None:
    """(content, finish_reason) of the choice that counts; None when malformed."""
    if "choices" not in obj or obj["choices"] is None:
        return "", None
    choices = obj["choices"]
    if type(choices) is not list:
        return None
    for position, choice in enumerate(choices):
        if type(choice) is not dict:
            return None
        index = choice.get("index")
        if (index is None and position == 0) or (type(index) is int and index == 0):
            break
    else:
        return "", None
    delta = choice.get("delta", {})
    if type(delta) is not dict:
        return None
    content = delta.get("content")
    if content is not None and type(content) is not str:
        return None
    finish = choice.get("finish_reason")
    return content or "", finish if type(finish) is str and finish else None


_FALLBACK = "the stream reported an error"


class Reference:
    """The rules over SSEDecoder events, fed like a decoder (``feed``/``close``)."""

    def __init__(self, *, max_event_size: int | None = None) -> None:
        self.sse = (
            SSEDecoder() if max_event_size is None else SSEDecoder(max_event_size=max_event_size)
        )
        self.malformed = 0
        self.finish: str | None = None
        self.job = False

    @property
    def last_event_id(self) -> str | None:
        return self.sse.last_event_id

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        return self.interpret(self.sse.feed(chunk))

    def close(self) -> list[StreamEvent]:
        return self.interpret(self.sse.close())

    def interpret(self, raw: list[Any]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for item in raw:
            if item.event != "message":
                continue
            if item.data == "[DONE]":
                if self.finish is None:
                    out.append(ErrorEvent(INCOMPLETE_STREAM_CODE, INCOMPLETE_MESSAGE, item.id))
                else:
                    out.append(Done(None, self.finish, item.id))
                continue
            try:
                obj = json.loads(item.data)
            except (ValueError, RecursionError):
                self.malformed += bool(item.data.strip())
                continue
            if type(obj) is not dict:
                self.malformed += 1
                continue
            error: ErrorEvent | None = None
            fields: tuple[str, str | None] | None = ("", None)
            if obj.get("error") is not None and obj.get("error") is not False:
                detail = obj["error"]
                if type(detail) is dict:
                    code, message = detail.get("code"), detail.get("message")
                    error = ErrorEvent(
                        code if type(code) is str and code else None,
                        message if type(message) is str and message else _FALLBACK,
                        item.id,
                    )
                else:
                    error = _error_event(obj, item.id)
            else:
                fields = _reference_chunk(obj)
                if fields is None:
                    self.malformed += 1
                    continue
            if not self.job and type(obj.get("id")) is str:
                self.job = True
                model = obj.get("model")
                model = model if type(model) is str else None
                out.append(JobInfo(obj["id"], None, model, obj, item.id))
            if error is not None:
                out.append(error)
                continue
            assert fields is not None
            if fields[0]:
                out.append(Token(fields[0], item.id))
            if fields[1] is not None:
                self.finish = fields[1]
        return out


Result = tuple[list[list[StreamEvent]], int, str | None, bool]


def per_feed(make: Any, chunks: list[Any]) -> Result:
    """The events of each feed() and of close(), the malformed count, the last event id, and
    whether the size limit fired (decoding stops there)."""
    decoder = make()
    calls: list[list[StreamEvent]] = []
    too_large = False
    try:
        for piece in chunks:
            calls.append(decoder.feed(piece))  # noqa: PERF401 (stops at the size error)
        calls.append(decoder.close())
    except EventTooLargeError:
        too_large = True
    return calls, decoder.malformed, decoder.last_event_id, too_large


def reference(
    body: bytes, limit: int | None = None
) -> tuple[list[StreamEvent], int, str | None, bool]:
    """Events, malformed count, last event id and whether the size limit fired."""
    return flat(per_feed(lambda: Reference(max_event_size=limit), [body]))


def run(
    chunks: list[bytes], limit: int | None = None
) -> tuple[list[StreamEvent], int, str | None, bool]:
    return flat(per_feed(lambda: chunk_decoder(limit), chunks))


def chunk_decoder(limit: int | None = None) -> ChunkDecoder:
    return ChunkDecoder() if limit is None else ChunkDecoder(max_event_size=limit)


def flat(result: Result) -> tuple[list[StreamEvent], int, str | None, bool]:
    calls, *rest = result
    return [e for call in calls for e in call], *rest  # type: ignore[return-value]


def same_per_feed(chunks: list[Any], limit: int | None = None) -> Any:
    """ChunkDecoder and the reference, fed the same chunks, give the same events at each call
    (no latency added by the fast path), the same counts, ids and size errors."""
    ours = per_feed(lambda: chunk_decoder(limit), chunks)
    want = per_feed(lambda: Reference(max_event_size=limit), chunks)
    assert canon_calls(ours) == canon_calls(want)
    return ours


def canon_calls(result: Result) -> Any:
    calls, *rest = result
    return [canon((call, 0, None, False))[0] for call in calls], *rest


def canon(result: tuple[list[StreamEvent], int, str | None, bool]) -> Any:
    """The result with each JobInfo's data too (dataclass equality leaves it out)."""
    events, *rest = result
    return [(e, e.data if isinstance(e, JobInfo) else None) for e in events], *rest


def decode(body: bytes) -> list[StreamEvent]:
    """Decode under every chunking, check they agree with each other and with the reference,
    feed by feed."""
    want = reference(body)
    for name, chunks in chunkings(body):
        assert canon(flat(same_per_feed(chunks))) == canon(want), name
    return want[0]


def malformed_count(body: bytes) -> int:
    return reference(body)[1]


# --- the hosted stream and the rules


def test_hosted_stream() -> None:
    events = decode(HOSTED)
    assert events == [
        JobInfo(CHUNK_ID, None, MODEL),
        Token("Paris"),
        Token(" is"),
        Token(" the"),
        Token(" capital"),
        Token("."),
        Done(None, "stop"),
    ]
    job = events[0]
    assert isinstance(job, JobInfo)
    assert job.data["object"] == "chat.completion.chunk"
    assert job.data["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_role_chunk_yields_no_token() -> None:
    assert decode(ROLE) == [JobInfo(CHUNK_ID, None, MODEL)]
    assert malformed_count(ROLE) == 0


def test_done_without_a_finish_reason_is_an_incomplete_stream() -> None:
    body = ROLE + token_event("Par") + DONE
    assert decode(body)[-1] == ErrorEvent(INCOMPLETE_STREAM_CODE, INCOMPLETE_MESSAGE)
    assert INCOMPLETE_MESSAGE == (
        "the stream sent [DONE] without a finish_reason: the answer may be cut short"
    )
    assert decode(DONE) == [ErrorEvent(INCOMPLETE_STREAM_CODE, INCOMPLETE_MESSAGE)]


def test_finish_reason_is_remembered_and_its_content_still_counts() -> None:
    body = token_event("a") + event(chunk_obj({"content": "b"}, "length")) + token_event("c")
    assert decode(body + DONE) == [
        JobInfo(CHUNK_ID, None, MODEL),
        Token("a"),
        Token("b"),
        Token("c"),
        Done(None, "length"),
    ]
    # The last finish reason wins; a non-string or empty one is none.
    body = event(chunk_obj({}, "length")) + event(chunk_obj({}, "stop")) + DONE
    assert decode(body)[-1] == Done(None, "stop")
    for finish in ("", 5, True, ["stop"]):
        assert decode(event(chunk_obj({}, finish)) + DONE)[-1] == ErrorEvent(
            INCOMPLETE_STREAM_CODE, INCOMPLETE_MESSAGE
        )


def test_done_is_an_exact_literal() -> None:
    finish = event(chunk_obj({}, "stop"))
    assert decode(finish + b"data:[DONE]\n\n")[-1] == Done(None, "stop")
    for near in (b"data: [DONE] \n\n", b"data: [done]\n\n", b'data: "[DONE]"\n\n'):
        assert decode(finish + near) == [JobInfo(CHUNK_ID, None, MODEL)]
    assert malformed_count(b"data: [DONE] \n\n") == 1
    assert decode(b"data: [DONE]\ndata: x\n\n") == []


def test_error_chunk_then_done_gives_the_error_first() -> None:
    error = event({**HEAD, "error": {"message": "engine failed"}})
    events = decode(ROLE + token_event("Pa") + error + DONE)
    assert events == [
        JobInfo(CHUNK_ID, None, MODEL),
        Token("Pa"),
        ErrorEvent(None, "engine failed"),
        ErrorEvent(INCOMPLETE_STREAM_CODE, INCOMPLETE_MESSAGE),
    ]
    # The error chunk may be the first chunk: its JobInfo comes before the error.
    assert decode(error + DONE)[:2] == [
        JobInfo(CHUNK_ID, None, MODEL),
        ErrorEvent(None, "engine failed"),
    ]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"message": "m", "code": "no_capacity"}, ErrorEvent("no_capacity", "m")),
        ({"message": "m", "code": 503}, ErrorEvent(None, "m")),
        ({"message": "m", "code": ""}, ErrorEvent(None, "m")),
        ({"code": "timeout"}, ErrorEvent("timeout", "the stream reported an error")),
        ({"message": ""}, ErrorEvent(None, "the stream reported an error")),
        ({"message": 5}, ErrorEvent(None, "the stream reported an error")),
        ({}, ErrorEvent(None, "the stream reported an error")),
    ],
)
def test_openai_shaped_error(error: dict[str, Any], expected: ErrorEvent) -> None:
    body = event({"object": "chat.completion.chunk", "error": error})
    assert decode(body) == [expected]


def test_jobs_api_shaped_error() -> None:
    body = b'data: {"error": "node_disconnected", "message": "Node went offline"}\n\n'
    assert decode(body) == [ErrorEvent("node_disconnected", "Node went offline")]
    body = b'data: {"error": "internal_error", "error_message": "boom"}\n\n'
    assert decode(body) == [ErrorEvent("internal_error", "boom")]
    assert decode(b'data: {"error": "timeout"}\n\n') == [ErrorEvent("timeout", "timeout")]


def test_error_wins_over_content_and_null_error_is_none() -> None:
    with_error = event(chunk_obj({"content": "x"}, "stop", error={"message": "bad"}))
    assert decode(with_error) == [JobInfo(CHUNK_ID, None, MODEL), ErrorEvent(None, "bad")]
    for nothing in (None, False):
        body = event(chunk_obj({"content": "x"}, error=nothing))
        assert decode(body) == [JobInfo(CHUNK_ID, None, MODEL), Token("x")]


def test_usage_chunks_and_choiceless_chunks_say_nothing() -> None:
    usage = {**HEAD, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
    body = event(usage) + event({"object": "x"}) + event({"choices": None})
    assert decode(body) == [JobInfo(CHUNK_ID, None, MODEL)]
    assert malformed_count(body) == 0


def test_only_the_choice_with_index_0_counts() -> None:
    def choices(*items: Any) -> bytes:
        return event({"choices": list(items)})

    assert decode(choices({"index": 1, "delta": {"content": "b"}})) == []
    two = choices(
        {"index": 1, "delta": {"content": "b"}, "finish_reason": "stop"},
        {"index": 0, "delta": {"content": "a"}},
    )
    assert decode(two + DONE) == [
        Token("a"),
        ErrorEvent(INCOMPLETE_STREAM_CODE, INCOMPLETE_MESSAGE),
    ]
    # The first choice without an index counts; a later one without an index does not.
    assert decode(choices({"delta": {"content": "a"}})) == [Token("a")]
    assert decode(choices({"index": 2, "delta": {}}, {"delta": {"content": "a"}})) == []
    # An index must be the integer 0.
    for index in (0.0, False, "0"):
        assert decode(choices({"index": index, "delta": {"content": "a"}})) == []


def test_malformed_events_are_skipped_and_counted() -> None:
    bad = [
        b"data: {not json\n\n",
        b"data: [1, 2]\n\n",
        b"data: 42\n\n",
        b'data: "just a string"\n\n',
        b"data: " + b"[" * 5_000 + b"\n\n",  # deep nesting: RecursionError inside json
        event({"choices": {"index": 0}}),
        event({"choices": "x"}),
        event({"choices": [5]}),
        event({"choices": [{"index": 0, "delta": None}]}),
        event({"choices": [{"index": 0, "delta": "hi"}]}),
        event({"choices": [{"index": 0, "delta": {"content": 5}}]}),
        event({"choices": [{"index": 0, "delta": {"content": ["a"]}}]}),
        event({"choices": [{"index": 0, "delta": {"content": {"text": "a"}}}]}),
    ]
    body = token_event("a") + b"".join(bad) + token_event("b")
    assert decode(body) == [JobInfo(CHUNK_ID, None, MODEL), Token("a"), Token("b")]
    assert malformed_count(body) == len(bad)
    assert run([body])[1] == len(bad)


def test_blank_data_and_pings_are_heartbeats() -> None:
    body = b"data:\n\ndata:  \n\n: ping\n\n:\n\n" + token_event("a")
    assert decode(body) == [JobInfo(CHUNK_ID, None, MODEL), Token("a")]
    assert malformed_count(body) == 0


def test_missing_delta_is_an_empty_delta() -> None:
    body = event({"choices": [{"index": 0, "finish_reason": "stop"}]}) + DONE
    assert decode(body) == [Done(None, "stop")]


def test_job_info_once_with_the_first_string_id() -> None:
    body = (
        event({"choices": [{"index": 0, "delta": {"content": "a"}}]})  # no id
        + event({"id": 7, "choices": []})  # not a string
        + event({"id": "chatcmpl-1", "model": 5, "choices": []})
        + event({"id": "chatcmpl-2", "model": "m", "choices": []})
        + token_event("b")
    )
    events = decode(body)
    assert events == [Token("a"), JobInfo("chatcmpl-1", None, None), Token("b")]
    job = events[1]
    assert isinstance(job, JobInfo) and job.data == {"id": "chatcmpl-1", "model": 5, "choices": []}
    # A malformed chunk is skipped whole: no JobInfo from it.
    assert decode(event({"id": "chatcmpl-1", "choices": 5})) == []


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"])
def test_any_line_ending(line_end: bytes) -> None:
    assert decode(HOSTED.replace(b"\n", line_end)) == decode(HOSTED)


def test_comments_and_pings_between_chunks() -> None:
    body = HOSTED.replace(b"\n\n", b"\n\n: ping\n\n:\n")
    assert decode(body) == decode(HOSTED)


def test_multi_line_data_is_joined() -> None:
    body = b'data: {"choices": [{"index": 0,\ndata:  "delta": {"content": "a\\nb"}}]}\n\n'
    assert decode(body) == [Token("a\nb")]


def test_other_event_types_are_skipped_and_ids_are_carried() -> None:
    body = (
        b"event: ping\ndata: {}\n\n"
        + b"event: error\ndata: not json\n\n"
        + b"id: 7\n"
        + token_event("a")
        + b"event: message\n"
        + token_event("b")
        + b"id: 8\nevent: usage\n"
        + token_event("c")
        + token_event("d")
    )
    assert decode(body) == [
        JobInfo(CHUNK_ID, None, MODEL, id="7"),
        Token("a", "7"),
        Token("b", "7"),
        Token("d", "8"),
    ]
    assert malformed_count(body) == 0


TEXTS = [
    "é中😀",
    "a\nb",
    'say "hi"',
    "tab\there",
    "back\\slash",
    "\u2028",
    "\u2029",
    "\x7f",
    "\x00\x1f",
    " ",
    "😀",
]


@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_unicode_and_escapes(ensure_ascii: bool) -> None:
    body = b"".join(token_event(t, ensure_ascii) for t in TEXTS)
    assert decode(body)[1:] == [Token(t) for t in TEXTS]


def test_surrogates() -> None:
    pair = b'data: {"choices":[{"index":0,"delta":{"content":"\\ud83d\\ude00"}}]}\n\n'
    lone = b'data: {"choices":[{"index":0,"delta":{"content":"\\ud800"}}]}\n\n'
    raw_u2028 = 'data: {"choices":[{"index":0,"delta":{"content":"\u2028"}}]}\n\n'
    body = pair + lone + pair + lone + raw_u2028.encode()
    assert decode(body) == [
        Token("😀"),
        Token("\ud800"),
        Token("😀"),
        Token("\ud800"),
        Token("\u2028"),
    ]


def test_invalid_utf8_in_content_is_replaced() -> None:
    body = token_event("a") + token_event("b").replace(b"b", b"b\xff\xc3") + token_event("c")
    assert decode(body)[1:] == [Token("a"), Token("b\ufffd\ufffd"), Token("c")]


def test_feed_after_close_raises_and_close_is_idempotent() -> None:
    decoder = ChunkDecoder()
    assert decoder.feed(token_event("a") + b"data: {") == [
        JobInfo(CHUNK_ID, None, MODEL),
        Token("a"),
    ]
    assert decoder.close() == []
    assert decoder.close() == []
    with pytest.raises(RuntimeError):
        decoder.feed(token_event("b"))


def test_bytearray_and_memoryview_input() -> None:
    expected = decode(HOSTED)
    assert ChunkDecoder().feed(bytearray(HOSTED)) == expected
    assert ChunkDecoder().feed(memoryview(HOSTED)) == expected
    decoder = ChunkDecoder()
    kinds = (bytes, bytearray, memoryview)
    events = [e for i in range(len(HOSTED)) for e in decoder.feed(kinds[i % 3](HOSTED[i : i + 1]))]
    assert events == expected


def test_last_event_id() -> None:
    decoder: EventDecoder = ChunkDecoder()
    assert decoder.last_event_id is None
    decoder.feed(b"id: 3\n" + token_event("a"))
    assert decoder.last_event_id == "3"
    decoder.feed(b": ping\n\n")
    assert decoder.last_event_id == "3"
    assert decoder.malformed == 0


# --- the fast path


def test_fast_path_is_taken_for_template_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    original = SSEDecoder.feed

    def counting_feed(self: SSEDecoder, chunk: Any) -> Any:
        calls.append(bytes(chunk))
        return original(self, chunk)

    monkeypatch.setattr(SSEDecoder, "feed", counting_feed)
    decoder = ChunkDecoder()
    assert decoder.feed(ROLE) == [JobInfo(CHUNK_ID, None, MODEL)]
    assert decoder.feed(token_event("a")) == [Token("a")]  # the general path learns from it
    assert len(calls) == 2
    assert decoder.feed(token_event("b")) == [Token("b")]  # one event per chunk
    run_of_tokens = b"".join(token_event(t) for t in TEXTS) * 20
    assert decoder.feed(run_of_tokens) == [Token(t) for t in TEXTS] * 20  # many events at once
    held = token_event("c") + token_event("d")
    assert [e for i in range(len(held)) for e in decoder.feed(held[i : i + 1])] == [
        Token("c"),
        Token("d"),
    ]
    assert len(calls) == 2
    # Anything else goes to the SSE decoder, cut at its blank line; the run goes on after it.
    assert decoder.feed(token_event("e") + b": ping\n\n" + token_event("f")) == [
        Token("e"),
        Token("f"),
    ]
    assert calls[2:] == [b": ping\n\n"]
    # An id (general path) in front of a run: the run's tokens carry it.
    assert decoder.feed(b"id: 9\n\n" + token_event("x") * 3) == [Token("x", "9")] * 3
    assert decoder.feed(token_event("y")) == [Token("y", "9")]
    assert calls[3:] == [b"id: 9\n\n"]
    assert decoder.feed(FINISH + DONE) == [Done(None, "stop", "9")]
    assert calls[4:] == [FINISH + DONE]  # one piece: no template event between them


def test_a_cr_ends_an_event_in_the_feed_that_brings_it() -> None:
    decoder = ChunkDecoder()
    decoder.feed(token_event("a"))
    assert decoder.feed(token_event("b")[:-2]) == []  # held
    assert decoder.feed(b"\r") == []  # the data line ends
    assert decoder.feed(b"\r") == [Token("b")]  # the blank line: at once, no waiting for a LF
    assert decoder.feed(token_event("c")[:-2] + b"\r\r") == [Token("c")]


def test_the_template_read_from_data_in_other_framing() -> None:
    # CRLF framing never takes the byte-level fast path; the data is still matched to the template
    # (no json.loads), exactly: a second "content" key after the slot is not the template.
    decoder = ChunkDecoder()
    decoder.feed(token_event("a"))
    crlf = [
        token_event("b"),
        token_event("c").replace(b'"c"', b'"c","content":"C"'),
        token_event("d").replace(b'"d"', b'"d","x":1'),
    ]
    events = [e for body in crlf for e in decoder.feed(body.replace(b"\n", b"\r\n"))]
    assert events == [Token("b"), Token("C"), Token("d")]


def test_a_chunk_like_the_template_but_not_it_goes_to_the_general_path() -> None:
    decoder = ChunkDecoder()
    decoder.feed(token_event("a"))
    assert decoder._head  # learned
    near = [
        token_event("b").replace(b'"finish_reason":null', b'"finish_reason":"stop"'),
        token_event("c").replace(b'"index":0', b'"index":1'),
        token_event("d").replace(b"}]}", b'}],"error":{}}'),
        token_event("e").replace(b"data: ", b"data:"),
        token_event("f").replace(b"\n\n", b" \n\n"),
        token_event("g").replace(b'"g"', b'"g" '),
        token_event("h").replace(b'"h"', b'"h\tx"'),  # a raw control character: not JSON
        token_event("i").replace(b'"i"', b'"i\\x"'),  # a bad escape
        token_event("j").replace(b'"j"', b"5"),
        token_event("k").replace(b'"k"', b'"k","content":"K"'),  # json.loads keeps the last
    ]
    events = [e for body in near for e in decoder.feed(body)]
    assert events == reference(token_event("a") + b"".join(near))[0][2:]
    assert events == [
        Token("b"),
        ErrorEvent(None, "the stream reported an error"),
        Token("e"),
        Token("f"),
        Token("g"),
        Token("K"),
    ]
    assert decoder.malformed == 3


def test_the_template_follows_a_changed_chunk_shape() -> None:
    other = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 2, "model": "m2"}
    second = [
        event({**other, "choices": [{"index": 0, "delta": {"content": t}, "logprobs": None}]})
        for t in "xyz"
    ]
    body = token_event("a") + token_event("b") + b"".join(second) + token_event("c")
    assert decode(body) == [
        JobInfo(CHUNK_ID, None, MODEL),
        Token("a"),
        Token("b"),
        Token("x"),
        Token("y"),
        Token("z"),
        Token("c"),
    ]


@pytest.mark.parametrize(
    "obj",
    [
        # A "content" key outside the delta, with the same value: the slot must be the delta's.
        {"content": "a", "choices": [{"index": 0, "delta": {"content": "a"}}]},
        {"choices": [{"index": 0, "delta": {"content": "a"}}], "content": "a"},
        # Duplicate keys are rendered by hand below.
        {"choices": [{"index": 0, "delta": {"content": "a"}, "x": {"content": "a"}}]},
        {"choices": [{"index": 0, "delta": {"content": "a", "role": "content"}}]},
        {"choices": [{"delta": {"content": "a"}}]},
    ],
)
def test_templates_with_decoy_content_keys(obj: dict[str, Any]) -> None:
    first = event(obj)
    later = [first.replace(b'"a"', json.dumps(t).encode()) for t in ("b", "c\n", "a")]
    body = first + b"".join(later) * 3
    events = decode(body)
    assert [e.text for e in events if isinstance(e, Token)][:4] == ["a", "b", "c\n", "a"]


def test_duplicate_content_keys() -> None:
    # json.loads keeps the last value: a template on the first slot would be wrong.
    body = b"".join(
        b'data: {"choices":[{"index":0,"delta":{"content":"%s","content":"Z"}}]}\n\n' % t
        for t in (b"a", b"b", b"c")
    )
    assert decode(body) == [Token("Z")] * 3
    body = b"".join(
        b'data: {"choices":[{"index":0,"delta":{"content":"Z","content":"%s"}}]}\n\n' % t
        for t in (b"a", b"b", b"c")
    )
    assert decode(body) == [Token("a"), Token("b"), Token("c")]


@pytest.mark.parametrize(
    ("first", "later"),
    [
        # Two "content" keys with the same value: json.loads keeps the second.
        (
            b'{"choices":[{"index":0,"delta":{"content":"a","content":"a"}}]}',
            b'{"choices":[{"index":0,"delta":{"content":"%s","content":"a"}}]}',
        ),
        # A decoy "content" before the delta's, with the same value.
        (
            b'{"content":"a","choices":[{"index":0,"delta":{"content":"a"}}]}',
            b'{"content":"%s","choices":[{"index":0,"delta":{"content":"a"}}]}',
        ),
        (
            b'{"x":{"content":"a"},"choices":[{"index":0,"delta":{"content":"a"}}]}',
            b'{"x":{"content":"%s"},"choices":[{"index":0,"delta":{"content":"a"}}]}',
        ),
        # A decoy in another choice, and a key that ends in a quote.
        (
            b'{"choices":[{"index":1,"delta":{"content":"a"}},{"index":0,"delta":{"content":"a"}}]}',
            b'{"choices":[{"index":1,"delta":{"content":"%s"}},{"index":0,"delta":{"content":"a"}}]}',
        ),
        (
            b'{"\\"content":"a","choices":[{"index":0,"delta":{"content":"a"}}]}',
            b'{"\\"content":"%s","choices":[{"index":0,"delta":{"content":"a"}}]}',
        ),
    ],
)
def test_the_proof_rejects_a_slot_that_is_not_the_content(first: bytes, later: bytes) -> None:
    body = b"data: " + first + b"\n\n"
    body += b"".join(b"data: " + later % t + b"\n\n" for t in (b"b", b"c", b"\\n"))
    assert json.loads(first)["choices"][-1]["delta"]["content"] == "a"
    assert decode(body) == [Token("a")] * 4


def test_a_template_is_never_learned_across_lines_or_from_a_finish_chunk() -> None:
    multi = b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"a"}}]}\n\n'
    decoder = ChunkDecoder()
    decoder.feed(multi * 3)
    assert not decoder._head
    decoder.feed(event(chunk_obj({"content": "x"}, "stop")) * 3)
    assert not decoder._head
    decoder.feed(ROLE * 3)  # no content: nothing to learn from
    assert not decoder._head


# --- size limit


@pytest.mark.parametrize("split", [None, 1, 7, 64])
def test_size_limit_applies_on_every_path(split: int | None) -> None:
    small = token_event("ok")
    big = token_event("x" * 500)
    body = small + small + big + small
    chunks = [body] if split is None else [body[i : i + split] for i in range(0, len(body), split)]
    decoder = ChunkDecoder(max_event_size=300)
    events: list[StreamEvent] = []
    with pytest.raises(EventTooLargeError):
        for piece in chunks:
            events += decoder.feed(piece)
        decoder.close()
    assert events == [JobInfo(CHUNK_ID, None, MODEL), Token("ok"), Token("ok")]


def test_events_before_an_oversized_tail_are_not_lost() -> None:
    decoder = ChunkDecoder(max_event_size=300)
    decoder.feed(token_event("a"))
    assert decoder.feed(token_event("b") + b"data: " + b"x" * 600) == [Token("b")]
    with pytest.raises(EventTooLargeError):
        decoder.feed(b"\n\n")


def test_huge_rest_after_a_complete_event_is_not_copied() -> None:
    decoder = ChunkDecoder(max_event_size=1 << 20)
    decoder.feed(token_event("a"))
    huge = token_event("b") + b"x" * (32 << 20)
    tracemalloc.start()
    try:
        assert decoder.feed(huge) == [Token("b")]  # the size error waits for the next call
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The rest goes to the SSE decoder as a view, never into the held bytes (which would copy
    # it twice); the SSE decoder itself makes one copy of a view, as it does for TokenDecoder.
    assert peak < 48 << 20
    with pytest.raises(EventTooLargeError):
        decoder.close()


def test_huge_chunk_after_held_bytes_is_not_copied() -> None:
    decoder = ChunkDecoder(max_event_size=1 << 20)
    decoder.feed(token_event("a"))
    assert decoder.feed(token_event("b")[:40]) == []  # held by the fast path
    huge = b"x" * (32 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(EventTooLargeError):
            decoder.feed(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


# --- properties

PROPERTIES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text dense in what JSON escapes, non-ASCII, and surrogates (lone ones and pairs).
_SPECIAL = '"\\/\n\r\t\b\f\x00\x1f\x7f é中😀\u2028\ud800\udbff\udc00\udfff\ud83d\ude00'
texts = st.one_of(st.text(max_size=12), st.text(st.sampled_from(_SPECIAL), max_size=8))
_ids = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=3)


def _render(obj: Any, ensure_ascii: bool, spaced: bool = False) -> bytes:
    separators = (", ", ": ") if spaced else (",", ":")
    text = json.dumps(obj, ensure_ascii=ensure_ascii, separators=separators)
    # Lone surrogates cannot be UTF-8: sent raw, they arrive as invalid bytes (replaced).
    return text.encode("utf-8", "surrogatepass")


@st.composite
def stream_event(draw: Any) -> bytes:
    """One event of an OpenAI-ish stream: mostly template chunks, then near misses of all kinds."""
    kind = draw(
        st.sampled_from(
            ["token"] * 8
            + ["other-id", "spaced", "extra", "role", "finish", "finish-content", "usage"]
            + ["error", "error-string", "done", "ping", "id", "event", "malformed", "bare"]
            + ["no-space", "trailing", "multi-line"]
        )
    )
    text = draw(texts)
    ascii_ = draw(st.booleans())
    if kind in ("token", "trailing", "no-space", "id", "event"):
        body = b"data: " + _render(chunk_obj({"content": text}), ascii_)
        if kind == "trailing":
            body += draw(st.sampled_from([b" ", b"}", b",", b"\t"]))
        elif kind == "no-space":
            body = b"data:" + body[6:]
        elif kind == "id":
            body = b"id: " + draw(_ids).encode() + b"\n" + body
        elif kind == "event":
            body = b"event: " + draw(st.sampled_from([b"message", b"token", b""])) + b"\n" + body
        return body + b"\n\n"
    if kind == "other-id":
        obj = {**chunk_obj({"content": text}), "id": "chatcmpl-" + draw(_ids)}
        return b"data: " + _render(obj, ascii_) + b"\n\n"
    if kind == "spaced":
        return b"data: " + _render(chunk_obj({"content": text}), ascii_, spaced=True) + b"\n\n"
    if kind == "extra":
        extra = draw(st.sampled_from([{"logprobs": None}, {"usage": None}, {"n": 1}]))
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None, **extra}
        return b"data: " + _render({**HEAD, "choices": [choice]}, ascii_) + b"\n\n"
    if kind == "role":
        return ROLE
    if kind in ("finish", "finish-content"):
        delta = {"content": text} if kind == "finish-content" else {}
        reason = draw(st.sampled_from(["stop", "length", ""]))
        return b"data: " + _render(chunk_obj(delta, reason), ascii_) + b"\n\n"
    if kind == "usage":
        return event({**HEAD, "choices": [], "usage": {"completion_tokens": 3}})
    if kind == "error":
        error = {"message": text, "code": draw(st.sampled_from([None, 5, "x"]))}
        return b"data: " + _render({**HEAD, "error": error}, ascii_) + b"\n\n"
    if kind == "error-string":
        return b'data: {"error": "node_disconnected", "message": "gone"}\n\n'
    if kind == "done":
        return DONE
    if kind == "ping":
        return b": ping\n\n"
    if kind == "malformed":
        return draw(
            st.sampled_from(
                [
                    b"data: {oops\n\n",
                    b"data: [1]\n\n",
                    event({"choices": {"index": 0}}),
                    event(chunk_obj({"content": 5})),
                    event(chunk_obj(None)),
                ]
            )
        )
    if kind == "multi-line":
        rendered = _render(chunk_obj({"content": text}), ascii_)
        cut_at = draw(st.integers(0, len(rendered)))
        return b"data: " + rendered[:cut_at] + b"\ndata: " + rendered[cut_at:] + b"\n\n"
    # "bare": a template event cut short or run on (a near miss at every byte)
    whole = b"data: " + _render(chunk_obj({"content": text}), ascii_) + b"\n\n"
    return whole[: draw(st.integers(0, len(whole)))] + b"\n\n"


streams = st.tuples(
    st.lists(stream_event(), min_size=1, max_size=14),
    st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r", b"mixed"]),
)


def _join(events: list[bytes], line_end: bytes) -> bytes:
    if line_end == b"mixed":  # only some events in CRLF
        return b"".join(
            e.replace(b"\n", b"\r\n") if i % 3 == 2 else e for i, e in enumerate(events)
        )
    return b"".join(events).replace(b"\n", line_end)


@st.composite
def cuts(draw: Any, body: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@PROPERTIES
@given(stream=streams, data=st.data())
@example(stream=([token_event("a"), token_event("b")], b"\n"), data=None)
def test_fast_path_equals_the_reference(stream: tuple[list[bytes], bytes], data: Any) -> None:
    events, line_end = stream
    # A template chunk first, then the stream: the fast path runs from the second feed on.
    primer = token_event("p")
    rest = _join(events, line_end)
    body = primer + rest
    want = canon(reference(body))
    chunked = data.draw(cuts(rest)) if data is not None else [rest]
    note(f"chunks={chunked!r}")
    assert canon(run([body])) == want
    kinds = (bytes, bytearray, memoryview)
    mixed = [kinds[i % 3](piece) for i, piece in enumerate(chunked)]
    bytewise = [body[i : i + 1] for i in range(len(body))]
    for chunks in ([primer, rest], [primer, *chunked], bytewise, [primer, *mixed]):
        assert canon(flat(same_per_feed(chunks))) == want


# Pieces that make near misses of the template likely, for the byte-soup property.
_PIECES = [
    token_event("a"),
    token_event("b")[:30],
    token_event("c")[30:],
    ROLE,
    FINISH,
    DONE,
    b"data: ",
    b"data:",
    b'{"choices":[{"index":0,"delta":{"content":"',
    b'"}}]}',
    b'"},"finish_reason":null}]}',
    b"\\u00e9",
    b"\\ud83d\\ude00",
    b'\\"',
    b"\n",
    b"\n\n",
    b"\r",
    b"\r\n",
    b": ping\n",
    b"id: 1\n",
    b"event: x\n",
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"x",
    b"\t",
]
byte_soup = st.one_of(
    st.binary(max_size=150), st.lists(st.sampled_from(_PIECES), max_size=30).map(b"".join)
)


@PROPERTIES
@given(body=byte_soup, data=st.data())
def test_any_chunking_decodes_like_the_whole(body: bytes, data: Any) -> None:
    chunked = data.draw(cuts(body))
    note(f"chunks={chunked!r}")
    for prefix in (b"", token_event("p")):  # the second runs with a template learned
        whole = run([prefix + body])
        assert canon(whole) == canon(reference(prefix + body))
        assert canon(flat(same_per_feed([prefix, *chunked]))) == canon(whole)
        bytewise = [body[i : i + 1] for i in range(len(body))]
        assert canon(flat(same_per_feed([prefix, *bytewise]))) == canon(whole)


@PROPERTIES
@given(stream=streams, data=st.data(), limit=st.integers(40, 400))
def test_size_limit_behaves_as_in_token_decoder(
    stream: tuple[list[bytes], bytes], data: Any, limit: int
) -> None:
    events, line_end = stream
    small = b'data: {"choices":[{"index":0,"delta":{"content":"p"}}]}\n\n'
    body = small + _join(events, line_end)
    chunked = data.draw(cuts(body))
    note(f"chunks={chunked!r}")
    want = canon(reference(body, limit))
    assert canon(run([body], limit)) == want
    bytewise = [body[i : i + 1] for i in range(len(body))]
    for chunks in ([small, body[len(small) :]], chunked, bytewise):
        assert canon(flat(same_per_feed(chunks, limit))) == want


# --- the benchmark's new corpora still measure what they claim


def _load_bench_parser() -> ModuleType:
    path = BENCHMARKS / "bench_parser.py"
    if "bench_parser" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_parser", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_parser"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_parser"]


@pytest.mark.parametrize("suite", ["openai", "chat-lf", "chat-crlf-event-first"])
def test_bench_parser_corpora_decode_to_their_text(suite: str) -> None:
    bench = _load_bench_parser()
    corpus = bench.SUITES[suite].make(300)
    for chunks in bench.make_chunkings(corpus).values():
        decoded = decode_all(ChunkDecoder if suite == "openai" else _token_decoder, chunks)
        assert "".join(e.text for e in decoded if isinstance(e, Token)) == corpus.text
        assert isinstance(decoded[-1], Done)
        # Every installed contestant reads it too (a peer that is not installed is skipped).
        table, cleanups, _ = bench.contestants(bench.SUITES[suite].dialect)
        try:
            for name, contestant in table.items():
                assert contestant(chunks) == corpus.text, name
        finally:
            for cleanup in cleanups:
                cleanup()


def _token_decoder() -> Any:
    from infernet_async._token_decoder import TokenDecoder

    return TokenDecoder()
