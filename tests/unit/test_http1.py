"""The sans-IO HTTP/1.1 layer: response parsing per RFC 9112 and injection-proof request encoding.

Every valid-input case is fed three ways (whole, byte at a time, in two halves) and must give the
same head and body; every invalid case must raise ProtocolError whichever way it is fed. Hypothesis
checks random valid responses in random splits and that garbage raises nothing but ProtocolError.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st

from infernet_async._http1 import ResponseParser
from infernet_async._http1_head import ProtocolError, ResponseHead
from infernet_async._http1_head import parse_fields as _parse_fields
from infernet_async._http1_request import encode_request

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _splits(raw: bytes) -> list[list[bytes]]:
    half = len(raw) // 2
    return [[raw], [raw[i : i + 1] for i in range(len(raw))], [raw[:half], raw[half:]]]


def parse(raw: bytes, *, method: str = "GET", eof: bool = False) -> tuple[ResponseParser, bytes]:
    """Feed raw whole, byte at a time and in halves; all three must agree. Returns the first."""
    results = []
    for pieces in _splits(raw):
        parser = ResponseParser(method=method)
        body = b"".join(parser.feed(piece) for piece in pieces)
        if eof:
            body += parser.feed_eof()
        results.append((parser, body))
    first, body = results[0]
    for other, other_body in results[1:]:
        assert other_body == body
        assert other.head == first.head
        assert other.complete == first.complete
        assert other.reusable == first.reusable
        assert other.framing == first.framing
    return first, body


def rejects(raw: bytes, match: str | None = None, *, eof: bool = False, **kwargs: object) -> None:
    """raw raises ProtocolError (with match in its message) however it is fed."""
    for pieces in _splits(raw):
        parser = ResponseParser(**kwargs)  # type: ignore[arg-type]
        with pytest.raises(ProtocolError, match=match):
            for piece in pieces:
                parser.feed(piece)
            if eof:
                parser.feed_eof()
            else:
                pytest.fail(f"accepted {raw!r}")


def chunked(body_chunks: list[bytes], *, trailers: bytes = b"") -> bytes:
    return (
        b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body_chunks) + b"0\r\n" + trailers + b"\r\n"
    )


OK_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


# Read through functions so that mypy does not narrow the attribute across a feed_eof() call.
def done(parser: ResponseParser) -> bool:
    return parser.complete


def can_reuse(parser: ResponseParser) -> bool:
    return parser.reusable


# -- status line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status", "reason", "version"),
    [
        (b"HTTP/1.1 200 OK", 200, "OK", "1.1"),
        (b"HTTP/1.1 200 ", 200, "", "1.1"),
        (b"HTTP/1.1 200", 200, "", "1.1"),
        (b"HTTP/1.0 404 Not Found", 404, "Not Found", "1.0"),
        (b"HTTP/1.1 503 Service\tUnavailable \xe9", 503, "Service\tUnavailable \xe9", "1.1"),
        (b"HTTP/1.1 599 x", 599, "x", "1.1"),
        (b"HTTP/1.2 200 OK", 200, "OK", "1.1"),  # a higher minor version reads as 1.1
    ],
)
def test_status_lines_accepted(line: bytes, status: int, reason: str, version: str) -> None:
    parser, body = parse(line + b"\r\nContent-Length: 2\r\n\r\nhi")
    assert parser.head == ResponseHead(
        status=status,
        reason=reason,
        http_version=version,
        headers=(("Content-Length", "2"),),
        keep_alive=version == "1.1",
    )
    assert body == b"hi"
    assert parser.complete


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/2 200 OK",
        b"HTTP/2.0 200 OK",
        b"HTTP/0.9 200 OK",
        b"http/1.1 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 200\tOK",
        b"HTTP/1.1 OK 200",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 600 High",
        b"HTTP/1.1 200 O\x00K",
        b"HTTP/1.1 200 O\x7fK",
        b"HTTP/1.1 200 OK\r\r",
        b"ICY 200 OK",
        b" HTTP/1.1 200 OK",
        b"",
    ],
)
def test_status_lines_rejected(line: bytes) -> None:
    rejects(line + b"\r\nContent-Length: 0\r\n\r\n")


def test_a_non_http_peer_fails_on_its_first_bytes() -> None:
    for start in (b"SSH-2.0-OpenSSH\r\n", b"\x16\x03\x01\x02\x00", b"HTTP/2", b"\r\n"):
        parser = ResponseParser()
        with pytest.raises(ProtocolError, match="not an HTTP/1.x response"):
            parser.feed(start)


def test_101_is_an_error_and_status_line_errors_are_short() -> None:
    rejects(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "101")
    parser = ResponseParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"HTTP/1.1 2x0 " + b"A" * 10_000 + b"\r\n\r\n")
    assert len(str(info.value)) < 120


# -- header fields -------------------------------------------------------------------------------


def test_headers_keep_order_case_and_duplicates_and_lose_ows() -> None:
    parser, _ = parse(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type:text/event-stream\r\n"
        b"X-Empty:\r\n"
        b"X-Blank: \t \r\n"
        b"set-cookie:  a=1 \t\r\n"
        b"Set-Cookie: b = 2\r\n"
        b"X-Latin: caf\xe9\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert parser.head is not None
    assert parser.head.headers == (
        ("Content-Type", "text/event-stream"),
        ("X-Empty", ""),
        ("X-Blank", ""),
        ("set-cookie", "a=1"),
        ("Set-Cookie", "b = 2"),
        ("X-Latin", "caf\xe9"),
        ("Content-Length", "0"),
    )


def test_obs_fold_is_replaced_by_one_space() -> None:
    parser, _ = parse(
        b"HTTP/1.1 200 OK\r\nX-Folded: first \r\n   second\r\n\tthird\r\n \r\nX-Next: n\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert parser.head is not None
    assert parser.head.headers[:2] == (("X-Folded", "first second third"), ("X-Next", "n"))


def test_bare_lf_ends_head_lines_but_bare_cr_is_rejected() -> None:
    parser, body = parse(b"HTTP/1.1 200 OK\nX-A: 1\r\nContent-Length: 2\n\nhi")
    assert parser.head is not None
    assert parser.head.headers == (("X-A", "1"), ("Content-Length", "2"))
    assert body == b"hi"
    parser, body = parse(b"HTTP/1.1 204 No Content\n\r\n")
    assert parser.complete
    assert body == b""
    rejects(b"HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\n\r\n", "bare CR")
    rejects(b"HTTP/1.1 200 OK\rX-A: 1\r\n\r\n", "bare CR")


@pytest.mark.parametrize(
    ("field", "match"),
    [
        (b"X-A : 1", "whitespace before the colon"),
        (b"X-A\t: 1", "whitespace before the colon"),
        (b"X A: 1", "field name"),
        (b"X@A: 1", "field name"),
        (b": 1", "field name"),
        (b"no colon", "without a colon"),
        (b"X-A: a\x00b", "invalid character"),
        (b"X-A: a\x01b", "invalid character"),
        (b"X-A: a\x7fb", "invalid character"),
    ],
)
def test_bad_header_fields_are_rejected(field: bytes, match: str) -> None:
    rejects(b"HTTP/1.1 200 OK\r\n" + field + b"\r\nContent-Length: 0\r\n\r\n", match)


def test_whitespace_before_the_first_header_is_rejected() -> None:
    rejects(b"HTTP/1.1 200 OK\r\n X-A: 1\r\nContent-Length: 0\r\n\r\n", "whitespace before")


def test_header_count_limit() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(4))
    parser = ResponseParser(max_headers=5)
    parser.feed(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")
    assert parser.complete
    rejects(
        b"HTTP/1.1 200 OK\r\n" + fields + b"X-4: v\r\nContent-Length: 0\r\n\r\n",
        "more than 5 header fields",
        max_headers=5,
    )


def test_head_size_limit_is_exact_and_never_buffers_unboundedly() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: "
    head += b"v" * (200 - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == 200
    assert parse_with(head, max_head_size=200).complete
    rejects(head, "larger than 199 bytes", max_head_size=199)
    # No end in sight: the error comes as soon as the limit is passed, however the bytes arrive.
    endless = b"HTTP/1.1 200 OK\r\nX: " + b"v" * 300
    for pieces in _splits(endless):
        parser = ResponseParser(max_head_size=200)
        with pytest.raises(ProtocolError, match="larger than 200"):
            for i, piece in enumerate(pieces):
                parser.feed(piece)
                assert sum(map(len, pieces[: i + 1])) <= 201


def parse_with(raw: bytes, **kwargs: int) -> ResponseParser:
    parser = ResponseParser(**kwargs)  # type: ignore[arg-type]
    parser.feed(raw)
    return parser


# -- interim responses ---------------------------------------------------------------------------


def test_1xx_responses_are_skipped() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    )
    parser, body = parse(raw)
    assert parser.head is not None
    assert parser.head.status == 200
    assert parser.head.headers == (("Content-Length", "2"),)
    assert body == b"hi"
    assert parser.reusable
    interim = ResponseParser()
    assert interim.feed(raw[:60]) == b""
    assert interim.head is None
    assert interim.framing == "unknown"
    assert not interim.complete


def test_a_bad_1xx_head_is_still_an_error() -> None:
    rejects(b"HTTP/1.1 100 Continue\r\nbad line\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "colon")


# -- framing -------------------------------------------------------------------------------------


def test_chunked_with_extensions_bws_and_trailers() -> None:
    raw = (
        OK_CHUNKED
        + b"5;name=value\r\nhello\r\n"
        + b'1 ; q="a \\"b\\"; c" ; flag\r\n \r\n'
        + b"0006\r\nworld!\r\n"
        + b"A\r\n0123456789\r\n"
        + b"000;last=1\r\nExpires: never\r\nX-Fold: a\r\n b\r\n\r\n"
    )
    parser, body = parse(raw)
    assert body == b"hello world!0123456789"
    assert parser.complete
    assert parser.reusable
    assert parser.framing == "chunked"
    assert parser.head is not None
    assert parser.head.headers == (("Transfer-Encoding", "chunked"),)


def test_chunked_body_arrives_as_it_comes_not_per_whole_chunk() -> None:
    parser = ResponseParser()
    assert parser.feed(OK_CHUNKED + b"a\r\n0123") == b"0123"
    assert parser.feed(b"456") == b"456"
    assert parser.feed(b"789\r") == b"789"
    assert parser.feed(b"\n") == b""
    assert not parser.complete
    assert parser.feed(b"0\r\n\r\n") == b""
    assert parser.complete


def test_one_chunk_per_read() -> None:
    parser = ResponseParser()
    parser.feed(OK_CHUNKED)
    assert parser.feed(b"5\r\nhello\r\n") == b"hello"
    assert parser.feed(bytearray(b"1\r\n \r\n")) == b" "
    assert parser.feed(b"5;x=y\r\nworld\r\n") == b"world"
    assert parser.feed(b"0\r\n\r\n") == b""
    assert parser.complete
    assert parser.reusable
    for bad in (b"5\r\nhelloXX", b"5\r\nhello\n\n", b"5\r\nhell\r\n\r\n", b"5 \r\nhello\r\n"):
        parser = ResponseParser()
        parser.feed(OK_CHUNKED)
        with pytest.raises(ProtocolError):
            parser.feed(bad)


def test_many_chunks_in_one_read() -> None:
    events = [b'data: {"text": " tok%d"}\n\n' % i for i in range(300)]
    parser = ResponseParser()
    parser.feed(OK_CHUNKED)
    assert parser.feed(chunked(events)) == b"".join(events)
    assert parser.complete
    assert parser.reusable


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_feed_takes_any_bytes_like(kind: type) -> None:
    raw = (
        OK_CHUNKED + b"3\r\nabc\r\n0;ext=" + b"x" * 30 + b"\r\nTrailer: " + b"t" * 30 + b"\r\n\r\n"
    )
    for size in (1, 5, 20, 40):
        parser = ResponseParser()
        body = b"".join(parser.feed(kind(raw[i : i + size])) for i in range(0, len(raw), size))
        assert body == b"abc"
        assert type(body) is bytes
        assert parser.complete


def test_content_length_body() -> None:
    parser, body = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world")
    assert body == b"hello world"
    assert parser.complete
    assert parser.reusable
    assert parser.framing == "length"
    partial = ResponseParser()
    assert partial.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello") == b"hello"
    assert not partial.complete
    assert partial.feed(b" world") == b" world"
    assert partial.complete


def test_close_delimited_body_ends_at_eof() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it\r\n0\r\n\r\n"
    parser = ResponseParser()
    assert parser.feed(raw) == b"all of it\r\n0\r\n\r\n"
    assert parser.framing == "close"
    assert not parser.complete
    assert parser.feed_eof() == b""
    assert done(parser)
    assert not parser.reusable
    parser, body = parse(raw, eof=True)
    assert body == b"all of it\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "method"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", "GET"),
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "HEAD"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "HEAD"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET"),
        (b"HTTP/1.1 201 Created\r\nContent-Length: 000, 0\r\n\r\n", "POST"),
    ],
)
def test_responses_without_a_body(raw: bytes, method: str) -> None:
    parser, body = parse(raw, method=method)
    assert body == b""
    assert parser.complete
    assert parser.framing == "none"
    assert parser.reusable


def test_connect_is_not_supported() -> None:
    with pytest.raises(ValueError, match="CONNECT"):
        ResponseParser(method="CONNECT")


def test_transfer_encoding_wins_over_content_length_but_spoils_reuse() -> None:
    parser, body = parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked([b"hello"])
    )
    assert body == b"hello"
    assert parser.complete
    assert parser.framing == "chunked"
    assert not parser.reusable


@pytest.mark.parametrize(
    "te",
    [
        [b"Chunked"],
        [b"CHUNKED"],
        [b", chunked"],
        [b"chunked ,"],
        [b"", b"chunked"],
    ],
)
def test_transfer_encoding_spellings_accepted(te: list[bytes]) -> None:
    fields = b"".join(b"Transfer-Encoding: %s\r\n" % v for v in te)
    parser, body = parse(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n" + chunked([b"x"]))
    assert body == b"x"
    assert parser.complete


@pytest.mark.parametrize(
    ("te", "match"),
    [
        ([b"gzip, chunked"], "unsupported transfer coding 'gzip'"),
        ([b"gzip"], "unsupported transfer coding"),
        ([b"gzip", b"chunked"], "unsupported transfer coding"),
        ([b"chunked, gzip"], "unsupported transfer coding"),
        ([b"chunked;foo=bar"], "unsupported transfer coding"),
        ([b"identity"], "unsupported transfer coding"),
        ([b"chunked, chunked"], "more than once"),
        ([b"chunked", b"chunked"], "more than once"),
        ([b""], "empty Transfer-Encoding"),
        ([b" , "], "empty Transfer-Encoding"),
    ],
)
def test_transfer_encodings_rejected(te: list[bytes], match: str) -> None:
    fields = b"".join(b"Transfer-Encoding: %s\r\n" % v for v in te)
    rejects(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n" + chunked([b"x"]), match)


def test_transfer_encoding_in_http_1_0_is_faulty_framing() -> None:
    rejects(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked([b"x"]), "1.0")


@pytest.mark.parametrize(
    "fields",
    [
        [b"5, 5"],
        [b"5", b"5"],
        [b"005", b"5 ,5"],
        [b" 5\t"],
    ],
)
def test_equal_content_lengths_are_accepted(fields: list[bytes]) -> None:
    head = b"".join(b"Content-Length: %s\r\n" % v for v in fields)
    parser, body = parse(b"HTTP/1.1 200 OK\r\n" + head + b"\r\nhello")
    assert body == b"hello"
    assert parser.complete


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ([b"5, 6"], "conflicting"),
        ([b"5", b"6"], "conflicting"),
        ([b"+5"], "invalid Content-Length"),
        ([b"-1"], "invalid Content-Length"),
        ([b"0x5"], "invalid Content-Length"),
        ([b"5a"], "invalid Content-Length"),
        ([b"5 5"], "invalid Content-Length"),
        ([b"5,"], "invalid Content-Length"),
        ([b""], "invalid Content-Length"),
        ([b"\xb2"], "invalid Content-Length"),  # latin-1 superscript two: str.isdigit() is True
        ([b"1" * 20], "too large"),
        ([b"9" * 5000], "too large"),  # beyond int()'s digit limit: still a ProtocolError
    ],
)
def test_bad_content_lengths_are_rejected(fields: list[bytes], match: str) -> None:
    head = b"".join(b"Content-Length: %s\r\n" % v for v in fields)
    rejects(b"HTTP/1.1 200 OK\r\n" + head + b"\r\nhello", match)


# -- chunk syntax --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_line", "match"),
    [
        (b"zz\r\n", "chunk size"),
        (b"-5\r\n", "chunk size"),
        (b"+5\r\n", "chunk size"),
        (b"0x10\r\n", "chunk size"),
        (b" 5\r\n", "chunk size"),
        (b"1_0\r\n", "chunk size"),
        (b"\r\n", "chunk size"),
        (b"5 \r\n", "chunk extension"),
        (b"5\t\r\n", "chunk extension"),
        (b"5;\r\n", "chunk extension"),
        (b"5;a=\r\n", "chunk extension"),
        (b'5;a="open\r\n', "chunk extension"),
        (b"5;a b\r\n", "chunk extension"),
        (b"5;a=b c\r\n", "chunk extension"),
        (b"5\n", "chunk size line"),
        (b"5;a\rb\r\n", "chunk size line"),
        (b"1" * 17 + b"\r\n", "longer than 16 hex digits"),
        (b"0" * 17 + b"\r\n", "longer than 16 hex digits"),
    ],
)
def test_bad_chunk_size_lines_are_rejected(size_line: bytes, match: str) -> None:
    rejects(OK_CHUNKED + size_line + b"hello\r\n0\r\n\r\n", match)


def test_sixteen_hex_digits_are_accepted() -> None:
    _, body = parse(OK_CHUNKED + b"0000000000000005\r\nhello\r\n0\r\n\r\n")
    assert body == b"hello"


def test_invalid_size_fails_before_its_line_ends() -> None:
    for start in (b"g", b"0x", b"12345678901234567", b"5x", b"-"):
        parser = ResponseParser()
        parser.feed(OK_CHUNKED)
        with pytest.raises(ProtocolError, match="chunk size"):
            parser.feed(start)


def test_chunk_size_line_length_is_capped() -> None:
    rejects(OK_CHUNKED + b"5;" + b"a" * 5000, "longer than 4096")


@pytest.mark.parametrize(
    "after_data", [b"XX", b"\n0\r\n\r\n", b"\rX", b"X\r\n", b"\r\r\n"], ids=repr
)
def test_missing_crlf_after_chunk_data(after_data: bytes) -> None:
    rejects(OK_CHUNKED + b"5\r\nhello" + after_data + b"0\r\n\r\n", "missing CRLF")


@pytest.mark.parametrize(
    ("trailers", "match"),
    [
        (b"no colon\r\n", "without a colon"),
        (b"X-A : 1\r\n", "whitespace before the colon"),
        (b" X-A: 1\r\n", "whitespace before the first trailer"),
        (b"X-A: 1\n", "bare LF"),
        (b"X-A: 1\rX\r\n", "bare CR"),
        (b"X-A: \x00\r\n", "invalid character"),
        (b"\n", "bare LF"),
    ],
)
def test_bad_trailers_are_rejected(trailers: bytes, match: str) -> None:
    rejects(OK_CHUNKED + b"1\r\nx\r\n0\r\n" + trailers + b"\r\n", match)


def test_trailer_limits() -> None:
    many = b"".join(b"T-%d: v\r\n" % i for i in range(4))
    parser = ResponseParser(max_headers=4)
    parser.feed(OK_CHUNKED + b"0\r\n" + many + b"\r\n")
    assert parser.complete
    rejects(OK_CHUNKED + b"0\r\n" + many + b"T-4: v\r\n\r\n", "more than 4", max_headers=4)
    rejects(OK_CHUNKED + b"0\r\nT: " + b"v" * 300 + b"\r\n\r\n", "trailer", max_head_size=200)
    rejects(OK_CHUNKED + b"0\r\nT: " + b"v" * 300, "trailer section larger", max_head_size=200)


# -- end of connection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "before any response bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "inside the response head"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "before any response bytes|inside the response head"),
        (OK_CHUNKED, "inside a chunked body"),
        (OK_CHUNKED + b"5\r\nhel", "inside a chunked body"),
        (OK_CHUNKED + b"5\r\nhello", "inside a chunked body"),
        (OK_CHUNKED + b"5\r\nhello\r\n0\r\n", "inside a chunked body"),
        (OK_CHUNKED + b"5\r\nhello\r\n0\r\nX: 1\r\n", "inside a chunked body"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "5 bytes short of Content-Length"),
    ],
)
def test_eof_inside_the_message_is_an_error(raw: bytes, match: str) -> None:
    parser = ResponseParser()
    parser.feed(raw)
    with pytest.raises(ProtocolError, match=match):
        parser.feed_eof()
    assert not parser.complete
    with pytest.raises(ProtocolError):
        parser.feed_eof()
    with pytest.raises(ProtocolError):
        parser.feed(b"more")


def test_eof_after_a_complete_message_is_fine_and_ends_reuse() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert parser.reusable
    assert parser.feed_eof() == b""
    assert parser.complete
    assert not can_reuse(parser)
    assert parser.feed_eof() == b""
    with pytest.raises(RuntimeError):
        parser.feed(b"x")


def test_errors_are_sticky() -> None:
    parser = ResponseParser()
    with pytest.raises(ProtocolError, match="chunk size"):
        parser.feed(OK_CHUNKED + b"zz\r\n")
    for _ in range(2):
        with pytest.raises(ProtocolError, match="chunk size"):
            parser.feed(b"5\r\nhello\r\n")
    with pytest.raises(ProtocolError):
        parser.feed(b"")


# -- reuse ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reusable"),
    [
        (OK_CHUNKED + b"0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", False),
        (
            b"HTTP/1.1 200 OK\r\nConnection: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            False,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: closed\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", False),  # not complete
        (OK_CHUNKED + b"0\r\n\r\nHTTP/1.1 200 OK\r\n", False),  # bytes after the end
        (b"HTTP/1.1 204 No Content\r\n\r\n\r\n", False),
    ],
)
def test_reusable(raw: bytes, reusable: bool) -> None:
    parser, _ = parse(raw)
    assert parser.reusable is reusable


def test_bytes_after_the_end_are_ignored() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA") == b"hi"
    assert parser.complete
    assert parser.reusable is False
    assert parser.feed(b"more") == b""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert parser.reusable
    assert parser.feed(b"") == b""
    assert parser.reusable
    assert parser.feed(b"x") == b""
    assert not parser.reusable


def test_keep_alive_flag() -> None:
    parser, _ = parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert parser.head is not None
    assert parser.head.keep_alive
    parser, _ = parse(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n")
    assert parser.head is not None
    assert not parser.head.keep_alive


# -- properties ----------------------------------------------------------------------------------

_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_names = st.text(alphabet=_TCHARS, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in {"content-length", "transfer-encoding", "connection"}
)
_value_chars = st.sampled_from([chr(c) for c in range(0x21, 0x7F)] + [" ", "\t", "\xe9"])
_values = st.text(alphabet=_value_chars, max_size=20).map(lambda v: v.strip(" \t"))
_tokens = st.text(alphabet=_TCHARS, min_size=1, max_size=6)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, ResponseHead, bytes, bool]:
    """A valid response: (bytes, the head it must parse to, its body, needs feed_eof)."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    raw = b""
    for _ in range(draw(st.integers(0, 2))):
        raw += b"HTTP/1.1 %d Info" % draw(st.sampled_from([100, 102, 103])) + eol
        raw += b"Link: </a>" + eol + eol
    status = draw(st.sampled_from([200, 201, 202, 206, 299, 400, 404, 429, 500, 503, 599]))
    reason = draw(st.text(alphabet=_value_chars, max_size=12).map(lambda r: r.strip()))
    headers = draw(st.lists(st.tuples(_names, _values), max_size=6))
    framing = draw(st.sampled_from(["chunked", "length", "close"]))
    body = draw(st.binary(max_size=300))
    if framing == "chunked":
        headers.insert(draw(st.integers(0, len(headers))), ("Transfer-Encoding", "chunked"))
        cuts = sorted(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=8)))
        bounds = [0, *(c for c in cuts if c < len(body)), len(body)]
        payload = b""
        for start, end in zip(bounds, bounds[1:], strict=False):
            if end == start:
                continue
            size = draw(st.sampled_from(["%x", "%X", "%04x"])) % (end - start)
            ext = b"".join(
                b"%s;%s=%s" % (draw(st.sampled_from([b"", b" "])), n.encode(), v.encode())
                for n, v in draw(st.lists(st.tuples(_tokens, _tokens), max_size=2))
            )
            payload += size.encode() + ext + b"\r\n" + body[start:end] + b"\r\n"
        trailers = b"".join(
            b"%s: %s\r\n" % (n.encode(), v.encode("latin-1"))
            for n, v in draw(st.lists(st.tuples(_names, _values), max_size=2))
        )
        payload += b"0\r\n" + trailers + b"\r\n"
    elif framing == "length":
        headers.insert(draw(st.integers(0, len(headers))), ("Content-Length", str(len(body))))
        payload = body
    else:
        payload = body
    raw += b"HTTP/1.1 %d %s" % (status, reason.encode("latin-1")) + eol
    raw += b"".join(b"%s: %s" % (n.encode(), v.encode("latin-1")) + eol for n, v in headers)
    raw += eol + payload
    head = ResponseHead(
        status=status,
        reason=reason,
        http_version="1.1",
        headers=tuple(headers),
        keep_alive=True,
    )
    return raw, head, body, framing == "close"


@PROPERTY_SETTINGS
@given(responses(), st.data())
def test_any_split_of_a_valid_response_parses_the_same(
    response: tuple[bytes, ResponseHead, bytes, bool], data: st.DataObject
) -> None:
    raw, head, body, needs_eof = response
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=False)]
    note(repr(pieces))
    for feeding in (pieces, [raw[i : i + 1] for i in range(len(raw))]):
        parser = ResponseParser()
        got = b"".join(parser.feed(piece) for piece in feeding)
        if needs_eof:
            assert not parser.complete
            got += parser.feed_eof()
        assert parser.head == head
        assert got == body
        assert parser.complete
        assert parser.reusable is not needs_eof


_PIECES = [
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"5\r\n",
    b"0\r\n",
    b";a=b",
    b"hello",
    b":",
    b" ",
    b"\x00",
    b"\xff",
    b"ffffffffffffffff\r\n",
]


@PROPERTY_SETTINGS
@given(
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=8)), max_size=20),
    st.lists(st.integers(0, 400), max_size=6),
    st.booleans(),
)
@example([OK_CHUNKED, b"5\r\nhello\r\n"], [], True)
@example([b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"], [3], True)
def test_garbage_raises_nothing_but_protocol_error(
    parts: list[bytes], cuts: list[int], eof: bool
) -> None:
    raw = b"".join(parts)
    bounds = sorted(c for c in cuts if c <= len(raw))
    parser = ResponseParser(max_head_size=512, max_headers=8)
    try:
        for a, b in zip([0, *bounds], [*bounds, len(raw)], strict=False):
            parser.feed(raw[a:b])
        if eof:
            parser.feed_eof()
    except ProtocolError as exc:
        assert len(str(exc)) < 200
        with pytest.raises(ProtocolError):
            parser.feed(b"x")


_FIELD_BYTES = st.sampled_from(
    [b"a", b"X-Y", b":", b" ", b"\t", b"v", b"\x80", b"\x7f", b"\x00", b"\n"]
)


@PROPERTY_SETTINGS
@given(st.lists(_FIELD_BYTES, max_size=40))
@example([b"X-Y", b":", b" ", b"v", b" ", b"\n"])
@example([b"X-Y", b":", b"v", b"\n", b" ", b"v", b"\n"])
def test_any_field_block_parses_as_the_line_by_line_reading_says(pieces: list[bytes]) -> None:
    """The one-pass reading of a plain head gives what the field-by-field one gives, or both
    refuse: the fast path is an optimisation, never a second grammar."""
    fields = b"".join(pieces)
    if fields and not fields.endswith(b"\n"):
        fields += b"\n"
    assume(not fields.startswith(b"\n") and b"\n\n" not in fields)  # an empty line ends the head
    lines = fields.split(b"\n")[:-1]
    try:
        expected = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in _parse_fields(lines, 0, 100, "header")
        ]
    except ProtocolError:
        expected = None
    parser = ResponseParser()
    try:
        parser.feed(b"HTTP/1.1 200 OK\n" + fields + b"Content-Length: 0\n\n")
    except ProtocolError:
        assert expected is None
        return
    assert parser.head is not None
    assert list(parser.head.headers) == [*(expected or []), ("Content-Length", "0")]


@PROPERTY_SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_in_a_chunked_body_raise_only_protocol_error(tail: bytes) -> None:
    parser = ResponseParser()
    parser.feed(OK_CHUNKED)
    try:
        for i in range(0, len(tail), 7):
            parser.feed(tail[i : i + 7])
        parser.feed_eof()
    except ProtocolError:
        return
    assert parser.complete


# -- request encoding ----------------------------------------------------------------------------


def test_encode_request_exact_bytes() -> None:
    assert encode_request(
        "GET",
        "/api/v1/jobs/job_1/stream",
        [("Host", "127.0.0.1:8080"), ("Accept", "text/event-stream")],
        None,
    ) == (
        b"GET /api/v1/jobs/job_1/stream HTTP/1.1\r\n"
        b"Host: 127.0.0.1:8080\r\nAccept: text/event-stream\r\n\r\n"
    )


def test_encode_request_adds_content_length() -> None:
    body = b'{"model": "qwen2.5:14b"}'
    assert encode_request("POST", "/api/v1/jobs", [("Host", "h")], body) == (
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: h\r\nContent-Length: 24\r\n\r\n" + body
    )
    assert encode_request("POST", "/", [], b"") == b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    given = encode_request("PUT", "/", [("content-length", "2")], b"hi")
    assert given == b"PUT / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi"
    assert encode_request("GET", "*", [("X", "caf\xe9\tok")], None).endswith(
        b"X: caf\xe9\tok\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("method", "target", "headers", "body"),
    [
        ("GET", "/a\r\nX-Injected: 1", [], None),
        ("GET", "/a\nb", [], None),
        ("GET", "/a\x00", [], None),
        ("GET", "/a b", [], None),
        ("GET", "/caf\xe9", [], None),
        ("GET", "", [], None),
        ("GE T", "/", [], None),
        ("GET\r\n", "/", [], None),
        ("", "/", [], None),
        ("GET", "/", [("X-A", "1\r\nX-Injected: 1")], None),
        ("GET", "/", [("X-A", "1\n")], None),
        ("GET", "/", [("X-A", "1\r")], None),
        ("GET", "/", [("X-A", "1\x00")], None),
        ("GET", "/", [("X-A", "1\x7f")], None),
        ("GET", "/", [("X-A", "\u2603")], None),
        ("GET", "/", [("X-A\r\nX-B", "1")], None),
        ("GET", "/", [("X-A:", "1")], None),
        ("GET", "/", [("X A", "1")], None),
        ("GET", "/", [("", "1")], None),
        ("POST", "/", [("Content-Length", "3")], b"hi"),
        ("POST", "/", [("Content-Length", "2"), ("Content-Length", "5")], b"hi"),
        ("POST", "/", [("Content-Length", "2"), ("Content-Length", "2")], None),
        ("POST", "/", [("Transfer-Encoding", "chunked")], b"hi"),
    ],
)
def test_encode_request_refuses_injection(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
) -> None:
    with pytest.raises(ValueError):
        encode_request(method, target, headers, body)


_HEADER_TEXT = st.lists(
    st.sampled_from(
        ["a", "X-Y", ":", " ", "\t", "\r", "\n", "\r\n", "\x00", "\x7f", "\xe9", "\u2603"]
    ),
    max_size=6,
).map("".join)


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(_HEADER_TEXT, _HEADER_TEXT), max_size=4))
@example([("X-A", "1\r\nX-Injected: 1")])
def test_a_request_is_refused_exactly_when_one_of_its_fields_is_invalid(
    headers: list[tuple[str, str]],
) -> None:
    """The whole-block check refuses what the per-field rules refuse, and nothing else."""
    valid = all(
        re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name)
        and re.fullmatch(r"[\t\x20-\x7e\x80-\xff]*", value)
        for name, value in headers
    )
    if valid:
        raw = encode_request("GET", "/", headers, None)
        lines = raw.split(b"\r\n")
        assert lines[1 : 1 + len(headers)] == [
            f"{name}: {value}".encode("latin-1") for name, value in headers
        ]
        assert raw.endswith(b"\r\n\r\n") and raw.count(b"\n") == len(headers) + 2
    else:
        with pytest.raises(ValueError):
            encode_request("GET", "/", headers, None)


def test_an_encoded_request_round_trips_through_h11() -> None:
    h11 = pytest.importorskip("h11")
    raw = encode_request("POST", "/api/v1/jobs?x=1", [("Host", "h"), ("X-Empty", "")], b"{}")
    server = h11.Connection(our_role=h11.SERVER)
    server.receive_data(raw)
    request = server.next_event()
    assert request.method == b"POST"
    assert request.target == b"/api/v1/jobs?x=1"
    assert list(request.headers) == [(b"host", b"h"), (b"x-empty", b""), (b"content-length", b"2")]
    assert server.next_event().data == b"{}"


# -- sans-IO -------------------------------------------------------------------------------------


def test_the_module_imports_without_asyncio_or_aiohttp() -> None:
    script = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"aiohttp", "asyncio", "anyio", "socket", "ssl", "pydantic"}:
            raise ImportError("refused: " + name)
        return None
sys.meta_path.insert(0, Refuse())
import pathlib, types
pkg = types.ModuleType("infernet_async")
pkg.__path__ = [str(pathlib.Path(sys.argv[1]))]
sys.modules["infernet_async"] = pkg
from infernet_async._http1 import ResponseParser
parser = ResponseParser()
body = parser.feed(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
print(body.decode(), parser.complete)
"""
    package_dir = str(importlib.import_module("infernet_async").__path__[0])
    result = subprocess.run(
        [sys.executable, "-c", script, package_dir], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "True"]


def test_body_decoded_before_a_fault_in_the_same_feed_rides_on_the_error() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"3\r\nabc\r\n2\r\nde\r\nzz\r\n")
    assert info.value.body == b"abcde"
