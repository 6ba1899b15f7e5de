"""SSEDecoder behaviour beyond the spec table: chunk boundaries, close(), input types, size limits,
linear cost, and the sans-IO rule (no asyncio/aiohttp imports)."""

from __future__ import annotations

import array
import ast
from pathlib import Path
from typing import Any

import pytest

from infernet_async.errors import DecodeError, EventTooLargeError
from infernet_async.sse import DEFAULT_MAX_EVENT_SIZE, ServerSentEvent, SSEDecoder
from tests.helpers.paths import PACKAGE


def ev(data: str, event: str = "message", id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(event, data, id, None)


# --- line endings across chunk boundaries


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [ev("a\nb")]
    assert decoder.feed(b"\n") == []  # the LF of that last CRLF, not another blank line
    assert decoder.feed(b"data: c\n\n") == [ev("c")]


def test_cr_at_chunk_end_dispatches_at_once() -> None:
    # A server using CR line ends must not wait for the next chunk to see its event.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [ev("a")]
    assert decoder.feed(b"data: b\r\r") == [ev("b")]


def test_pending_cr_skips_only_one_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\n") == [ev("a")]


def test_pending_cr_then_other_byte() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [ev("a")]
    assert decoder.feed(b"data: b\n\n") == [ev("b")]


def test_lf_alone_after_pending_cr_leaves_the_decoder_consistent() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\r")
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [ev("a")]


def test_multibyte_character_split_across_chunks() -> None:
    body = "data: é😀中\n\n".encode()
    for cut in range(1, len(body)):
        decoder = SSEDecoder()
        assert decoder.feed(body[:cut]) + decoder.feed(body[cut:]) == [ev("é😀中")], cut


# --- BOM


def test_bom_split_over_three_chunks() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"\xbb") == []
    assert decoder.feed(b"\xbfdata: a\n\n") == [ev("a")]


def test_bom_prefix_that_is_not_a_bom_is_kept() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb") == []
    # The held bytes are a (broken) first field name; the line after it is intact.
    assert decoder.feed(b"x\ndata: a\n\n") == [ev("a")]
    decoder = SSEDecoder()
    decoder.feed(b"\xef")
    assert decoder.feed(b"\xbbxdata: b\n\n") == []


def test_bom_alone_then_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb\xbf") == []
    assert decoder.feed(b"\xef\xbb\xbfdata: a\n\n") == []  # a second BOM is not stripped
    assert decoder.feed(b"data: b\n\n") == [ev("b")]


# --- close()


def test_close_discards_unfinished_event_and_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\ndata: c") == [ev("a")]
    assert decoder.close() == []


def test_close_is_idempotent() -> None:
    decoder = SSEDecoder()
    assert decoder.close() == []
    assert decoder.close() == []
    assert decoder.closed


def test_feed_after_close_raises() -> None:
    decoder = SSEDecoder()
    decoder.close()
    with pytest.raises(RuntimeError, match="after close"):
        decoder.feed(b"data: a\n\n")
    with pytest.raises(RuntimeError):
        decoder.feed(b"")


def test_empty_chunks_change_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: a") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == [ev("a")]


# --- input types


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like_inputs(kind: Any) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(kind(b"data: a\n")) == []
    assert decoder.feed(kind(b"\ndata: b\n\n")) == [ev("a"), ev("b")]


def test_memoryview_slice_and_other_formats() -> None:
    raw = b"xxdata: a\n\nyy"
    decoder = SSEDecoder()
    assert decoder.feed(memoryview(raw)[2:-2]) == [ev("a")]
    # A non-byte format is read as its raw bytes.
    words = array.array("H", b"data: bb\n\n")
    assert SSEDecoder().feed(memoryview(words)) == [ev("bb")]


def test_input_buffer_is_not_retained() -> None:
    chunk = bytearray(b"data: a")
    decoder = SSEDecoder()
    decoder.feed(chunk)
    chunk[:] = b"XXXXXXX"  # the caller reuses its buffer
    assert decoder.feed(b"\n\n") == [ev("a")]


# --- size limit


def test_default_limit_is_a_few_mib() -> None:
    assert 1 << 20 <= DEFAULT_MAX_EVENT_SIZE <= 64 << 20


def test_invalid_limit_rejected() -> None:
    with pytest.raises(ValueError):
        SSEDecoder(max_event_size=0)


def test_line_over_limit_in_one_chunk() -> None:
    decoder = SSEDecoder(max_event_size=100)
    with pytest.raises(EventTooLargeError) as info:
        decoder.feed(b"data: " + b"x" * 200 + b"\n\n")
    assert info.value.limit == 100
    assert isinstance(info.value, DecodeError)
    with pytest.raises(RuntimeError):
        decoder.feed(b"data: a\n\n")
    assert decoder.close() == []


def test_line_at_limit_is_accepted() -> None:
    line = b"data: " + b"x" * 94  # exactly 100 bytes
    for chunks in ([line + b"\n\n"], [line, b"\r\n\r\n"], [bytes([b]) for b in line + b"\n\n"]):
        decoder = SSEDecoder(max_event_size=100)
        events = [e for chunk in chunks for e in decoder.feed(chunk)]
        assert events == [ev("x" * 94)]


def test_unterminated_tail_over_limit() -> None:
    decoder = SSEDecoder(max_event_size=100)
    with pytest.raises(EventTooLargeError):
        decoder.feed(b"data: " + b"x" * 200)


def test_events_before_the_oversized_line_are_delivered_first() -> None:
    decoder = SSEDecoder(max_event_size=100)
    events = decoder.feed(b"data: a\n\ndata: b\n\n" + b"data: " + b"y" * 500)
    assert events == [ev("a"), ev("b")]
    with pytest.raises(EventTooLargeError):
        decoder.feed(b"\n\n")
    with pytest.raises(RuntimeError):  # raised once, then the decoder is simply closed
        decoder.feed(b"\n\n")


def test_pending_size_error_raised_by_close() -> None:
    decoder = SSEDecoder(max_event_size=100)
    assert decoder.feed(b"data: a\n\n" + b"z" * 300 + b"\n") == [ev("a")]
    with pytest.raises(EventTooLargeError):
        decoder.close()
    assert decoder.close() == []


def test_event_data_over_limit_across_many_lines() -> None:
    decoder = SSEDecoder(max_event_size=1000)
    with pytest.raises(EventTooLargeError, match="data"):
        for _ in range(200):
            decoder.feed(b"data: 0123456789\n")


def test_many_small_events_never_hit_the_limit() -> None:
    decoder = SSEDecoder(max_event_size=64)
    events: list[ServerSentEvent] = []
    for _ in range(1000):
        events += decoder.feed(b"data: 0123456789\n\n")
    assert len(events) == 1000


def test_big_line_fed_in_chunks_keeps_memory_bounded() -> None:
    # 100 MB offered in 64 KiB chunks: the decoder gives up just past the limit and never holds more
    # than the limit, so only about limit / chunk chunks are ever built.
    limit = 1 << 20
    chunk = b"x" * (64 << 10)
    decoder = SSEDecoder(max_event_size=limit)
    fed = 0
    with pytest.raises(EventTooLargeError):
        decoder.feed(b"data: ")
        while fed < 100_000_000:
            decoder.feed(chunk)
            fed += len(chunk)
            assert len(decoder._buf) <= limit
    assert fed <= limit
    assert len(decoder._buf) == 0


def test_default_limit_applies_to_a_100_mb_line() -> None:
    decoder = SSEDecoder()
    chunk = b"y" * (1 << 20)
    fed = 0
    with pytest.raises(EventTooLargeError):
        while fed < 100_000_000:
            decoder.feed(chunk)
            fed += len(chunk)
            assert len(decoder._buf) <= DEFAULT_MAX_EVENT_SIZE
    assert fed <= DEFAULT_MAX_EVENT_SIZE


# --- linear cost, by counting bytes touched in the buffer


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes every read of it touches."""

    touched = 0

    def __add__(self, other: Any) -> bytearray:  # type: ignore[override]
        CountingBuffer.touched += len(self) + len(other)
        return bytearray(self) + other

    def __iadd__(self, other: Any) -> CountingBuffer:  # type: ignore[override]
        CountingBuffer.touched += len(other)
        return super().__iadd__(other)  # type: ignore[return-value]

    def __bytes__(self) -> bytes:
        CountingBuffer.touched += len(self)
        return bytes(bytearray(self))

    def decode(self, *args: Any, **kwargs: Any) -> str:
        CountingBuffer.touched += len(self)
        return super().decode(*args, **kwargs)


@pytest.mark.parametrize("length", [2_000, 20_000])
def test_byte_at_a_time_is_linear(length: int) -> None:
    body = b"data: " + b"x" * length + b"\n\n"
    decoder = SSEDecoder()
    decoder.feed(b"\n")  # settle the BOM check, so the buffer below is the one in use
    decoder._buf = CountingBuffer()
    CountingBuffer.touched = 0
    events = []
    for i in range(len(body)):
        events += decoder.feed(body[i : i + 1])
    assert events == [ev("x" * length)]
    # Each byte is appended once and read once when its line completes: a rescanning decoder would
    # touch length**2 / 2 bytes.
    assert CountingBuffer.touched <= 3 * len(body)


# --- the layering surface (what TokenDecoder and ChunkDecoder use)


def test_at_boundary_follows_event_boundaries() -> None:
    decoder = SSEDecoder()
    assert not decoder.at_boundary  # the BOM is still undecided
    decoder.feed(b": hi\n")
    assert decoder.at_boundary
    decoder.feed(b"id: 1\n")
    assert decoder.at_boundary  # an id field belongs to no event: it applies at once
    decoder.feed(b"event: x\n")
    assert not decoder.at_boundary
    decoder.feed(b"data: a\n")
    assert not decoder.at_boundary
    decoder.feed(b"\r")
    assert not decoder.at_boundary  # a pending CR: the next LF is not a blank line
    decoder.feed(b"\n")
    assert decoder.at_boundary
    decoder.close()
    assert not decoder.at_boundary


def test_take_partial_line_hands_over_the_next_events_start() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\nda") == [ev("a")]
    assert decoder.at_boundary
    assert decoder.take_partial_line() == b"da"
    assert decoder.take_partial_line() == b""
    # The caller feeds the bytes back first: as if the decoder had kept them.
    assert decoder.feed(b"da" + b"ta: b\n\n") == [ev("b")]


def test_take_partial_line_gives_nothing_inside_an_event() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\nda")
    assert not decoder.at_boundary
    assert decoder.take_partial_line() == b""
    assert decoder.feed(b"ta: b\n\n") == [ev("a\nb")]


def test_feed_lines_is_feed_of_the_lines_with_lf() -> None:
    decoder = SSEDecoder()
    lines = ["id: 4", "event: e", "data: a", "", "data: b", "", "data: c"]
    assert decoder.feed_lines(lines) == [ev("a", "e", "4"), ev("b", id="4")]
    assert not decoder.at_boundary
    assert decoder.feed(b"\n") == [ev("c", id="4")]
    # The lines were the stream's start: a BOM fed after them is no BOM, but a field name.
    after = SSEDecoder()
    assert after.feed_lines([": hi"]) == []
    assert after.feed(b"\xef\xbb\xbfdata: x\n\n") == []


def test_feed_lines_refuses_lines_that_would_not_follow_the_stream() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\nda")
    with pytest.raises(RuntimeError):
        decoder.feed_lines(["data: b", ""])
    decoder.close()
    with pytest.raises(RuntimeError):
        decoder.feed_lines([])


def test_last_event_id_is_writable_and_carried_by_the_next_events() -> None:
    decoder = SSEDecoder()
    decoder.last_event_id = "41"
    assert decoder.feed(b"data: a\n\nid: 42\ndata: b\n\n") == [ev("a", id="41"), ev("b", id="42")]
    assert decoder.last_event_id == "42"


def test_defer_error_keeps_a_size_error_for_the_next_call() -> None:
    decoder = SSEDecoder(max_event_size=8)
    with pytest.raises(RuntimeError):
        decoder.defer_error(EventTooLargeError("x", limit=8))  # open: nothing raised it
    with pytest.raises(EventTooLargeError) as raised:
        decoder.feed(b"data: 123456789\n")
    decoder.defer_error(raised.value)
    with pytest.raises(EventTooLargeError) as again:
        decoder.feed(b"data: a\n\n")
    assert again.value is raised.value
    with pytest.raises(RuntimeError):  # raised once, as feed() itself does
        decoder.feed(b"")


def test_ids_before_a_data_size_error_count_however_chunked() -> None:
    body = b"data:aaa\nid:7\ndata:bbb\ndata:c\n"
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        decoder = SSEDecoder(max_event_size=8)
        with pytest.raises(EventTooLargeError):
            for chunk in chunks:
                decoder.feed(chunk)
        assert decoder.last_event_id == "7"


# --- sans-IO


_FORBIDDEN = {"asyncio", "aiohttp", "anyio", "pydantic", "socket", "httpx"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level
            names.add(prefix + (node.module or ""))
    return names


@pytest.mark.parametrize(
    "module", ["sse", "events", "_textfast", "_sse_layer", "_token_decoder", "_openai_decoder"]
)
def test_sans_io_modules_import_no_io(module: str) -> None:
    package = PACKAGE
    seen: set[str] = set()
    pending = [module]
    while pending:  # follow relative imports inside the package
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _imports(package / f"{name}.py"):
            if imported.startswith("."):
                if imported.lstrip("."):
                    pending.append(imported.lstrip("."))
            else:
                assert imported.split(".")[0] not in _FORBIDDEN, f"{name}.py imports {imported}"
    # The walk did follow the imports: every decoder reaches the errors module (the event types and
    # the JSON scanner import nothing of the package).
    assert "errors" in seen or module in ("events", "_textfast")
