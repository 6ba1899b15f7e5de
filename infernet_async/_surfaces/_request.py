"""The SDK's own requests, built from a method's arguments before any surface sees them.

Rules: a request is the documented API's JSON (``ChatRequest``, or a job list's query), checked
here, before anything is sent: a bad message, an empty conversation or an unknown trust tier is a
``ValueError`` where the call is made. Each surface's ``chat_body`` then turns the request into
what it sends, or refuses a field it would ignore.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..models import ChatRequest, Message
from . import check_trust_tier

__all__ = ["MessageLike", "chat_request", "job_list_params"]

MessageLike = Message | Mapping[str, Any]


def chat_request(
    model: str,
    messages: Sequence[MessageLike],
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    node_id: str | None,
    min_trust_tier: str | None,
    *,
    stream: bool,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The chat request's JSON body; ``extra`` fields go in as they are.

    Raises:
        ValueError: ``messages`` is a string, empty, or holds an invalid message; a parameter is
            out of range; ``min_trust_tier`` is not a tier.
    """
    if isinstance(messages, str | bytes):  # type: ignore[unreachable]
        raise ValueError("messages must be a list of {'role', 'content'} messages, not a string")
    request = ChatRequest.model_validate(
        {
            **extra,
            "model": model,
            "messages": [
                m if isinstance(m, Message) else Message.model_validate(m) for m in messages
            ],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "node_id": node_id,
            "stream": stream,
        }
    )
    if not request.messages:
        raise ValueError("messages must not be empty")
    body = request.to_json()
    if min_trust_tier is not None:
        body["min_trust_tier"] = check_trust_tier(min_trust_tier)
    return body


def job_list_params(
    limit: int | None, status: str | None, since: datetime | str | None
) -> dict[str, str]:
    """The query of a job list; a naive ``since`` is taken as UTC.

    Raises:
        ValueError: ``limit`` is not within 1..100.
    """
    params: dict[str, str] = {}
    if limit is not None:
        if not 1 <= limit <= 100:
            raise ValueError("limit must be within 1..100")
        params["limit"] = str(limit)
    if status is not None:
        params["status"] = status
    if since is not None:
        if isinstance(since, datetime):
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            since = since.isoformat()
        params["since"] = since
    return params
