"""Relaying generation from a real model server: OpenAI-compatible or Ollama (``--upstream URL``).

The devserver then adds only the Infernet API around it (jobs, queueing, streams, faults). OpenAI
streams are SSE (``data: {"choices": [{"delta": {"content"}}]}`` ... ``data: [DONE]``); Ollama
streams are NDJSON (``{"message": {"content"}, "done": false}`` ... ``{"done": true}``). Any
upstream failure becomes ``UpstreamError``, which fails the job with ``internal_error``.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Literal

from ._generator import Generation, GenerationRequest

if TYPE_CHECKING:
    import aiohttp

__all__ = ["UpstreamBackend", "UpstreamError", "UpstreamKind", "resolve_upstream"]

UpstreamKind = Literal["auto", "openai", "ollama"]


class UpstreamError(Exception):
    """The upstream model server failed or answered with an error."""


def resolve_upstream(
    url: str, kind: UpstreamKind = "auto"
) -> tuple[Literal["openai", "ollama"], str, str]:
    """Work out the upstream's kind, its chat endpoint and its model-list endpoint from a base URL.

    ``http://host:11434`` or ``.../api`` is Ollama; ``.../v1`` (or anything else) is
    OpenAI-compatible. A full chat endpoint URL is accepted as is.
    """
    base = url.rstrip("/")
    if kind == "auto":
        ollama_like = base.endswith(("/api", "/api/chat")) or (
            base.endswith(":11434") and "/v1" not in base
        )
        kind = "ollama" if ollama_like else "openai"
    if kind == "ollama":
        root = base.removesuffix("/api/chat").removesuffix("/api")
        return "ollama", root + "/api/chat", root + "/api/tags"
    root = base.removesuffix("/chat/completions")
    if not root.endswith("/v1"):
        root += "/v1"
    return "openai", root + "/chat/completions", root + "/models"


class _UpstreamGeneration:
    """Reads an upstream stream line by line; OpenAI SSE (``data: {...}``) or Ollama NDJSON."""

    def __init__(self, response: aiohttp.ClientResponse, kind: str, max_tokens: int) -> None:
        self._response = response
        self._kind = kind
        self._buffer = b""
        self._lines: list[bytes] = []
        self._eof = False
        self._remaining = max_tokens
        self.reason = "stop"
        self.planned_tokens: int | None = None

    def __aiter__(self) -> _UpstreamGeneration:
        return self

    async def _next_line(self) -> bytes | None:
        while not self._lines:
            if self._eof:
                return None
            import aiohttp

            try:
                chunk = await self._response.content.readany()
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"upstream stream broke: {exc}") from exc
            if not chunk:
                self._eof = True
                if self._buffer:
                    self._lines.append(self._buffer)
                    self._buffer = b""
                continue
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self._lines.extend(line.rstrip(b"\r") for line in complete)
        return self._lines.pop(0)

    async def __anext__(self) -> str:
        if self._remaining <= 0:
            self.reason = "length"
            await self.aclose()
            raise StopAsyncIteration
        while True:
            line = await self._next_line()
            if line is None:
                await self.aclose()
                raise StopAsyncIteration
            text = self._parse(line.decode("utf-8", "replace"))
            if text is None:
                continue
            if text == "":
                continue
            self._remaining -= 1
            return text

    def _parse(self, line: str) -> str | None:
        """The text in one line, ``None`` to skip it; raises ``StopAsyncIteration`` at the end."""
        if self._kind == "openai":
            if not line.startswith("data:"):
                return None
            data = line[5:].strip()
            if data == "[DONE]":
                raise StopAsyncIteration
            event = _loads(data)
            if "error" in event:
                raise UpstreamError(f"upstream error: {event['error']}")
            choices = event.get("choices") or [{}]
            choice = choices[0] if isinstance(choices[0], dict) else {}
            if choice.get("finish_reason"):
                self.reason = str(choice["finish_reason"])
            content = (choice.get("delta") or {}).get("content")
            return content if isinstance(content, str) else None
        if not line.strip():
            return None
        event = _loads(line)
        if "error" in event:
            raise UpstreamError(f"upstream error: {event['error']}")
        content = (event.get("message") or {}).get("content")
        if event.get("done"):
            self.reason = str(event.get("done_reason") or "stop")
            if isinstance(content, str) and content:
                self._remaining = 0
                return content
            raise StopAsyncIteration
        return content if isinstance(content, str) else None

    async def aclose(self) -> None:
        self._response.release()


def _loads(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # also too-long integers and deep nesting
        raise UpstreamError(f"upstream sent invalid JSON: {data[:80]!r}") from exc
    if not isinstance(value, dict):
        raise UpstreamError(f"upstream sent a non-object: {data[:80]!r}")
    return value


class UpstreamBackend:
    """Relays generation to a real model server; the devserver adds the Infernet API around it."""

    paced = False

    def __init__(
        self,
        url: str,
        *,
        kind: UpstreamKind = "auto",
        api_key: str | None = None,
        model: str | None = None,
    ) -> None:
        import aiohttp

        self.kind, self.chat_url, self.models_url = resolve_upstream(url, kind)
        self.engine = f"upstream-{self.kind}"
        # Its own session, closed by aclose(); made here, so only inside a running loop.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)
        )
        self._api_key = api_key
        self._model = model

    async def aclose(self) -> None:
        await self._session.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    async def list_models(self) -> list[str]:
        """The upstream's model names (empty when it cannot say)."""
        async with self._session.get(self.models_url, headers=self._headers()) as response:
            if response.status != 200:
                return []
            body = await response.json(content_type=None)
        if self.kind == "ollama":
            entries, key = body.get("models", []), "name"
        else:
            entries, key = body.get("data", []), "id"
        return [str(entry[key]) for entry in entries if isinstance(entry, dict) and key in entry]

    async def served_models(self) -> tuple[str, ...]:
        """The upstream's model names, or none when it cannot say within 5 seconds."""
        import aiohttp

        try:
            async with asyncio.timeout(5):
                return tuple(await self.list_models())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return ()

    async def start(self, request: GenerationRequest) -> Generation:
        """Open the upstream stream; raises ``UpstreamError`` when it answers with an error."""
        import aiohttp

        name = self._model or request.model
        chat = [{"role": m.get("role"), "content": m.get("content")} for m in request.messages]
        if self.kind == "ollama":
            payload: dict[str, Any] = {
                "model": name,
                "messages": chat,
                "stream": True,
                "options": {
                    "num_predict": request.max_tokens,
                    "temperature": request.temperature,
                    "top_p": request.top_p,
                },
            }
        else:
            payload = {
                "model": name,
                "messages": chat,
                "stream": True,
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                "top_p": request.top_p,
            }
        try:
            response = await self._session.post(
                self.chat_url, json=payload, headers=self._headers()
            )
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {exc}") from exc
        if response.status != 200:
            text = (await response.text())[:200]
            response.release()
            raise UpstreamError(f"upstream answered {response.status}: {text}")
        return _UpstreamGeneration(response, self.kind, request.max_tokens)
