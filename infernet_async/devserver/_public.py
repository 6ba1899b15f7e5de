"""What the hosted service's own routes (``/v1`` and ``/api/chat``) share, as a Next.js app writes
them: compact JSON answers, each surface's error body, the HTML "page not found", and the answers
to an injected ``http_error`` or a framework error (404, 405, 413) on those surfaces.

- OpenAI surface: ``{"error": {"message", "type": "infernet_error", "code": <status>}}``;
- chat surface: ``{"error": "<a sentence>", "detail"?: ...}``;
- anything else outside ``/api/v1`` (and all of ``/api/v1`` in hosted mode): the HTML 404 page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from aiohttp import web

from ._faults import Fault
from ._jobs import iso
from ._sse_writer import compact_dumps

__all__ = [
    "ANONYMOUS_OWNER",
    "RATE_LIMITED",
    "TRUST_TIERS",
    "Surface",
    "SurfaceError",
    "chat_error",
    "client_address",
    "fault_answer",
    "http_error_answer",
    "json_answer",
    "not_found_page",
    "number_field",
    "openai_error",
    "read_json",
    "surface_of",
    "valid_messages",
]

Surface = Literal["jobs", "openai", "chat", "other"]
RATE_LIMITED = "Rate limit exceeded — try again later"
TRUST_TIERS = ("public", "verified", "trusted")
# The owner of jobs from the hosted-style routes: no token's index, so /api/v1 never lists them.
ANONYMOUS_OWNER = -1

# Next.js's built-in not-found page, as the hosted service answers an unknown route.
NOT_FOUND_HTML = (
    '<!DOCTYPE html><html lang="en"><head><meta charSet="utf-8"/>'
    '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
    "<title>404: This page could not be found.</title></head><body>"
    '<div style="font-family:system-ui,&quot;Segoe UI&quot;,Roboto,Helvetica,Arial,sans-serif;'
    "height:100vh;text-align:center;display:flex;flex-direction:column;align-items:center;"
    'justify-content:center"><div><h1 class="next-error-h1" style="display:inline-block;'
    "margin:0 20px 0 0;padding:0 23px 0 0;font-size:24px;font-weight:500;vertical-align:top;"
    'line-height:49px">404</h1><div style="display:inline-block"><h2 style="font-size:14px;'
    'font-weight:400;line-height:49px;margin:0">This page could not be found.</h2></div></div>'
    "</div></body></html>"
)


def surface_of(path: str) -> Surface:
    """Which surface a request path belongs to."""
    for prefix, surface in (("/api/v1", "jobs"), ("/v1", "openai"), ("/api/chat", "chat")):
        if path == prefix or path.startswith(prefix + "/"):
            return surface  # type: ignore[return-value]
    return "other"


def json_answer(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer written as ``JSON.stringify`` writes it (``application/json``)."""
    return web.Response(
        body=compact_dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class SurfaceError(Exception):
    """Raised by the ``/v1`` and ``/api/chat`` handlers; the middleware sends ``response()``."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(body)
        self.status = status
        self.body = dict(body)
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_answer(self.body, status=self.status, headers=self.headers)


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "infernet_error",
    code: int | str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> SurfaceError:
    """``{"error": {"message", "type", "code", **extra}}``; ``code`` defaults to the status."""
    error = {"message": message, "type": type, "code": status if code is None else code, **extra}
    return SurfaceError(status, {"error": error}, headers)


def chat_error(status: int, message: str, detail: Any = None) -> SurfaceError:
    """``{"error": "<a sentence>", "detail"?: ...}``."""
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return SurfaceError(status, body)


def not_found_page() -> web.Response:
    return web.Response(
        text=NOT_FOUND_HTML,
        status=404,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "private, no-cache, no-store, max-age=0, must-revalidate"},
    )


def client_address(request: web.Request) -> str:
    """The client's IP as the hosted limits see it: the first ``X-Forwarded-For`` hop (so tests
    can play several clients from loopback), else the peer address."""
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    return forwarded or request.remote or "unknown"


async def read_json(request: web.Request, bad: SurfaceError) -> Any:
    """The request's JSON body, or raise ``bad``."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise bad from None


def fault_answer(surface: Surface, fault: Fault) -> web.Response:
    """An injected ``http_error`` in the surface's own error body (``Retry-After`` only when the
    fault names one: the hosted routes send no rate-limit headers)."""
    status = fault.status
    message = fault.message or (RATE_LIMITED if status == 429 else f"Injected fault: HTTP {status}")
    headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
    if surface == "openai":
        return openai_error(status, message, headers=headers).response()
    detail = None
    if status == 429:
        detail = {"resetAt": iso(time.time() + (fault.retry_after or 60))}
    error = chat_error(status, message, detail)
    error.headers.update(headers)
    return error.response()


def http_error_answer(
    surface: Surface, exc: web.HTTPException, max_body_bytes: int
) -> web.StreamResponse:
    """A framework error on a hosted-style route: 404 is the HTML page, 405 an empty body with
    ``Allow`` (as Next.js answers both), anything else the surface's error body."""
    if exc.status == 404 or surface not in ("openai", "chat"):
        return not_found_page()
    if exc.status == 405:
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return web.Response(status=405, headers=allow)
    message = exc.reason
    if exc.status == 413:
        message = f"Request body is larger than the {max_body_bytes}-byte limit"
    if surface == "openai":
        return openai_error(exc.status, message).response()
    return chat_error(exc.status, message).response()


def valid_messages(value: Any, bad: Callable[[str], SurfaceError]) -> list[dict[str, str]]:
    """The messages of a hosted-style body: a non-empty array of ``{role: str, content: str}``."""
    if not isinstance(value, list) or not value:
        raise bad("messages must be a non-empty array of {role, content} objects")
    clean: list[dict[str, str]] = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise bad(f"messages[{index}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise bad(f"messages[{index}].role must be a string")
        if not isinstance(content, str):
            raise bad(f"messages[{index}].content must be a string")
        try:
            # The generator and an upstream encode the prompt as UTF-8: a lone surrogate is the
            # client's error here, not a failed job later.
            content.encode("utf-8")
            role.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"messages[{index}] is not valid Unicode (a lone surrogate)") from None
        clean.append({"role": role, "content": content})
    return clean


def number_field(
    body: Mapping[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    bad: Callable[[str], SurfaceError],
    *,
    integer: bool = False,
) -> float:
    """``body[name]`` within ``[low, high]`` (an integer if asked), ``default`` when absent or
    null."""
    value = body.get(name)
    if value is None:
        return default
    wrong_kind = isinstance(value, bool) or not isinstance(value, int | float)
    if wrong_kind or (integer and not isinstance(value, int)) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise bad(f"{name} must be {kind} between {low:g} and {high:g}")
    return float(value)
