"""The OpenAI-compatible surface: ``POST /v1/chat/completions``, ``GET /v1/models``.

What the hosted routes take: ``model``, ``messages`` of ``{role, content}`` strings, ``stream``,
``temperature``, ``max_tokens`` and ``min_trust_tier`` (also inside ``metadata``); they ignore
``top_p``, ``stop``, ``n`` and ``tools``, so those and any other field are refused here rather
than silently dropped. The token goes along as ``Authorization: Bearer``: a resale key
``ifr_res_…`` limits the call to its reservation; the hosted service ignores any other token. Its
stream is ``chat.completion.chunk`` objects (``ChunkDecoder``): ``[DONE]`` alone is no success,
only a finish chunk before it is. There are no job ids: a completion cannot be looked up or
streamed again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..events import EventDecoder
from . import TOP_P_ELSEWHERE, Call, Surface, check_trust_tier

__all__ = ["OpenAISurface", "read_openai_models"]

ROOT = "/v1"
# The anonymous tier's window (20 requests an hour per IP, per route): a 429 there names no time.
ANONYMOUS_WINDOW = 3600.0
_SENT_AS_IS = ("max_tokens", "temperature")


class OpenAISurface(Surface):
    name = "openai"
    title = "the OpenAI-compatible surface (/v1)"
    resumable = False
    refused = {
        "top_p": ("ignores top_p", TOP_P_ELSEWHERE),
        "node_id": ("cannot pin a node (node_id)", "use api='chat' (providerId) or api='jobs'"),
    }

    def chat_body(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self.refuse_unsupported(request)
        body: dict[str, Any] = {"model": request["model"], "messages": request["messages"]}
        for name in _SENT_AS_IS:
            if request.get(name) is not None:
                body[name] = request[name]
        tier = request.get("min_trust_tier")
        if tier is not None:
            body["min_trust_tier"] = check_trust_tier(tier)
        for name, value in self.extra_fields(request):
            if name != "metadata" or not isinstance(value, Mapping):
                raise self.ignored_field(name)
            body["metadata"] = dict(value)
        return body

    def stream_call(self, request: Mapping[str, Any]) -> Call:
        body = {**self.chat_body(request), "stream": True}
        return Call("POST", f"{ROOT}/chat/completions", body, quiet_429_wait=ANONYMOUS_WINDOW)

    def models_call(self) -> Call:
        return Call("GET", f"{ROOT}/models", quiet_429_wait=ANONYMOUS_WINDOW)

    def read_models(self, body: Any) -> Any:
        return read_openai_models(body)

    def decoder(self) -> EventDecoder:
        from .._openai_decoder import ChunkDecoder

        return ChunkDecoder()


def read_openai_models(body: Any) -> Any:
    """``{"object": "list", "data": [{"id", ...}]}`` as the documented ``{"models": [...]}``;
    a body without a ``data`` list is handed on unchanged, for the model to refuse."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return body
    models = [
        {**item, "id": item["id"]} if isinstance(item, dict) and "id" in item else item
        for item in body["data"]
    ]
    return {"models": models}
