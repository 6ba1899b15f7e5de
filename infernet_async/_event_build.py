"""How the decoders build stream events: the ``Token`` fast constructors and the error mapping.

Shared by ``TokenDecoder`` and ``ChunkDecoder``. Rule: what is built here equals what the public
constructors build (``Token(text, id)``, ``ErrorEvent(code, message, id)``); only the cost differs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from itertools import repeat
from typing import Any

from .events import ErrorEvent, StreamEvent, Token

__all__ = ["error_event", "first_str", "new", "new_token", "new_tokens", "set_text", "set_token_id"]

# Tokens the decoder builds itself fill their slots directly instead of running the frozen dataclass
# __init__ (one object.__setattr__ per field): half the cost of the most frequent allocation. The
# hottest paths inline new_token with these three.
new = object.__new__
_token_slots: Any = Token.__dict__
set_text = _token_slots["text"].__set__
set_token_id = _token_slots["id"].__set__


def new_token(text: str, event_id: str | None) -> Token:
    token: Token = new(Token)
    set_text(token, text)
    set_token_id(token, event_id)
    return token


def new_tokens(texts: list[str], event_id: str | None) -> list[StreamEvent]:
    """One ``Token`` per text, built by C-level ``map`` calls (no Python frame per token)."""
    count = len(texts)
    tokens: list[StreamEvent] = list(map(new, repeat(Token, count)))
    deque(map(set_text, tokens, texts), 0)
    deque(map(set_token_id, tokens, repeat(event_id, count)), 0)
    return tokens


def first_str(obj: Mapping[str, Any], *keys: str) -> str | None:
    """The value of the first of ``keys`` that ``obj`` maps to a string, else ``None``."""
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str):
            return value
    return None


def error_event(obj: Mapping[str, Any], event_id: str | None) -> ErrorEvent:
    """The ``ErrorEvent`` of a JSON object with an ``error`` (a code, or an object)."""
    error = obj.get("error")
    if isinstance(error, Mapping):  # the OpenAI-style {"error": {"message": ..., "code": ...}}
        code = first_str(error, "code")
        message = first_str(error, "message")
    else:
        code = error if isinstance(error, str) else first_str(obj, "code")
        message = first_str(obj, "message", "error_message")
    if not message:
        message = code or "the stream reported an error"
    return ErrorEvent(code or None, message, event_id)
