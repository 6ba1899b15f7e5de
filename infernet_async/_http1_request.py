"""Sans-IO HTTP/1.1, the request side: ``encode_request`` turns a request into bytes and refuses
anything that could inject a header or a second request. Standard library only."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ._http1_head import TCHAR

__all__ = ["encode_request"]

_TOKEN_STR = re.compile(r"[" + TCHAR.decode() + r"]+")
_TARGET_STR = re.compile(r"[\x21-\x7e]+")
_VALUE_STR = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# Every field line at once; with one LF per field (a CR LF inside a value would make a line of
# its own that also matches), no line ran into another. The per-field checks then run only to name
# the field at fault.
_FIELD_BLOCK_STR = re.compile(r"(?:[" + TCHAR.decode() + r"]+: [\t\x20-\x7e\x80-\xff]*\r\n)*")


def encode_request(
    method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None
) -> bytes:
    """One HTTP/1.1 request as bytes: request line, the headers as given, CRLF, body.

    Content-Length is added when body is not None and the caller gave none (a given one must
    match the body). Raises ValueError on a method or field name that is not a token, a target
    that is not visible ASCII (CR, LF, NUL, spaces, non-ASCII), a value holding a control
    character other than HTAB or a character outside latin-1, and on Transfer-Encoding with a
    body (the body goes out with Content-Length): no header injection is possible.
    """
    if _TOKEN_STR.fullmatch(method) is None:
        raise ValueError(f"invalid HTTP method {method[:40]!r}")
    if _TARGET_STR.fullmatch(target) is None:
        raise ValueError(f"invalid request target {target[:40]!r}")
    headers = list(headers)
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers])
    if _FIELD_BLOCK_STR.fullmatch(fields) is None or fields.count("\n") != len(headers):
        for name, value in headers:
            if _TOKEN_STR.fullmatch(name) is None:
                raise ValueError(f"invalid header name {name[:40]!r}")
            if _VALUE_STR.fullmatch(value) is None:
                raise ValueError(f"invalid character in the value of header {name!r}")
    out = [f"{method} {target} HTTP/1.1\r\n".encode("ascii"), fields.encode("latin-1")]
    given_length: str | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length":
            if given_length is not None:
                raise ValueError("more than one Content-Length header")
            given_length = value.strip(" \t")
        elif lower == "transfer-encoding" and body is not None:
            raise ValueError("Transfer-Encoding with a body: the body is sent with Content-Length")
    if body is not None:
        if given_length is None:
            out.append(b"Content-Length: %d\r\n" % len(body))
        elif given_length != str(len(body)):
            raise ValueError(f"Content-Length {given_length!r} does not match the body's length")
    out.append(b"\r\n")
    if body:
        out.append(body)
    return b"".join(out)
