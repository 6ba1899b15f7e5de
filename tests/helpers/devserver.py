"""Test helpers for the devserver tests: a bare aiohttp client and a tiny SSE parser.

Deliberately independent of the SDK (``infernet_async.sse`` and the client are tested elsewhere):
the devserver must be checked as an HTTP peer on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

PROMPT = [{"role": "user", "content": "Explain how neural networks learn in three sentences."}]


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(raw: bytes) -> tuple[list[Event], list[str]]:
    """Events and comments in a complete stream (any of CRLF, CR, LF line endings)."""
    events: list[Event] = []
    comments: list[str] = []
    for block in re.split(r"(?:\r\n|\r|\n){2}", raw.decode()):
        if not block:
            continue
        event, data, event_id = "message", [], None
        for line in re.split(r"\r\n|\r|\n", block):
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                event_id = value
        if data:
            events.append(Event(event, "\n".join(data), event_id))
    return events, comments


def texts(events: list[Event]) -> list[str]:
    """The text of every token event (data dialect ``{"text"}`` or typed ``event: token``)."""
    out = []
    for event in events:
        if event.event in ("message", "token") and event.data != "[DONE]":
            try:
                payload = event.json()
            except json.JSONDecodeError:
                continue
            if "text" in payload:
                out.append(payload["text"])
    return out


class Api:
    """A thin client: base URL, bearer token, JSON in and out."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None) -> None:
        self.session = session
        self.base_url = base_url
        self.token = token

    def headers(self, token: str | None = None) -> dict[str, str]:
        token = token or self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        headers = {**self.headers(token), **kwargs.pop("headers", {})}
        async with self.session.request(
            method, self.base_url + path, headers=headers, **kwargs
        ) as response:
            body = await response.json(content_type=None)
            return response.status, body, response.headers

    async def submit(self, content: str = "What is 2 + 2?", **fields: Any) -> dict[str, Any]:
        body = {"model": "qwen2.5:14b", "messages": [{"role": "user", "content": content}]}
        status, job, _ = await self.request("POST", "/jobs", json={**body, **fields})
        assert status == 201, job
        return dict(job)

    async def wait_job(self, job_id: str, *, token: str | None = None) -> dict[str, Any]:
        import asyncio

        async with asyncio.timeout(10):
            while True:
                status, job, _ = await self.request("GET", f"/jobs/{job_id}", token=token)
                assert status == 200, job
                if job["status"] in ("completed", "failed"):
                    return dict(job)
                await asyncio.sleep(0.01)

    @asynccontextmanager
    async def stream(
        self,
        job_id: str | None = None,
        *,
        token: str | None = None,
        **fields: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``GET /jobs/{id}/stream`` when given an id, else ``POST /jobs`` with ``stream: true``."""
        headers = {**self.headers(token), "Accept": "text/event-stream"}
        if job_id is not None:
            context = self.session.get(f"{self.base_url}/jobs/{job_id}/stream", headers=headers)
        else:
            body = {"model": "qwen2.5:14b", "messages": PROMPT, "stream": True, **fields}
            context = self.session.post(f"{self.base_url}/jobs", json=body, headers=headers)
        async with context as response:
            yield response

    async def read_stream(
        self, job_id: str | None = None, **fields: Any
    ) -> tuple[aiohttp.ClientResponse, list[Event], list[str]]:
        async with self.stream(job_id, **fields) as response:
            raw = await response.read()
        events, comments = parse_sse(raw)
        return response, events, comments
