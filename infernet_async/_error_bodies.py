"""Reading an error answer's body: its code, its message and the models it names, whichever of
the three shapes it has (see ``errors``); and cutting server text down to what a message can hold.

Rules: nothing here raises on any body; a message is always the server's own words, never a dump
of the body. Standard library only, like ``errors``, which builds the exceptions from what this
reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["cut_message", "excerpt", "header_value", "read_error_body"]

_EXCERPT_LIMIT = 200
_MESSAGE_LIMIT = 1000
# An error code is a word (``rate_limited``, ``invalid_key``); the chat surface puts a sentence in
# the same field.
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def cut_message(message: str) -> str:
    """``message`` cut to ``_MESSAGE_LIMIT`` characters: a server's message may be as large as an
    event (megabytes), and a log line or a traceback must stay readable."""
    if len(message) > _MESSAGE_LIMIT:
        return message[: _MESSAGE_LIMIT - 1] + "…"
    return message


def excerpt(text: str) -> str:
    """The start of a body that is not an error object, on one line."""
    flat = " ".join(text.split())
    if len(flat) > _EXCERPT_LIMIT:
        return flat[: _EXCERPT_LIMIT - 1] + "…"
    return flat


def read_error_body(body: Any) -> tuple[str | None, str | None, list[str]]:
    """The code, the message and the available models of an error body, in any of the three
    shapes (see ``errors``); ``None`` for what the body does not say."""
    if not isinstance(body, Mapping):
        return None, None, []
    code: str | None = None
    message: str | None = None
    available: list[str] = []
    error = body.get("error")
    if isinstance(error, Mapping):
        # OpenAI-shaped. Its code is either a word or the HTTP status as a number (no news).
        raw_code = error.get("code")
        if isinstance(raw_code, str) and _CODE.fullmatch(raw_code):
            code = raw_code
        raw_message = error.get("message")
        if isinstance(raw_message, str) and raw_message.strip():
            message = raw_message
        models = error.get("available_models", body.get("available_models"))
        if isinstance(models, list):
            available = [m for m in models if isinstance(m, str)]
    elif isinstance(error, str) and error:
        if _CODE.fullmatch(error):
            code = error
        else:
            # The chat surface's sentence: the message itself, with the hint it may add.
            message = error
            detail = body.get("detail")
            hint = detail.get("hint") if isinstance(detail, Mapping) else None
            if isinstance(hint, str) and hint.strip():
                message = f"{message} ({hint.strip()})"
    if message is None:
        raw_message = body.get("error_message", body.get("message"))
        if isinstance(raw_message, str) and raw_message.strip():
            message = raw_message
    if message is not None:
        message = cut_message(message)
    return code, message, available


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (any case), stripped; ``None`` when absent or empty."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value.strip() or None if isinstance(value, str) else None
