"""A one-page chat that streams Infernet answers to the browser through an aiohttp back end.

    python examples/aiohttp_chat/app.py            # then open http://127.0.0.1:8080/

The page (static/index.html) posts the conversation to /api/chat and reads the answer with fetch, as
the streaming guide shows; the handler relays the token stream with ``relay_to_aiohttp``, which
stops the upstream job stream as soon as the browser goes away. The bearer token stays on the
server. With INFERNET_BASE_URL / INFERNET_BEARER_TOKEN unset, it runs on the embedded control plane
(DevServer), so it works with no account.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from infernet_async import InfernetClient
from infernet_async.relay import relay_to_aiohttp

STATIC = Path(__file__).with_name("static")
DEFAULT_MODEL = "qwen2.5:14b"
MAX_MESSAGES = 50

client_key = web.AppKey("client", InfernetClient)
model_key = web.AppKey("model", str)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def _bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 with the API's error body, which the page's fetch code reads."""
    body = json.dumps({"error": "bad_request", "error_message": message})
    return web.HTTPBadRequest(text=body, content_type="application/json")


def _messages_from(body: Any) -> list[dict[str, str]]:
    """The conversation from the page, checked: the browser is not trusted."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise _bad_request(f"messages must be a list of 1 to {MAX_MESSAGES} messages")
    checked = []
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise _bad_request("each message needs a role (user or assistant) and a content")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        body = None
    messages = _messages_from(body)
    client = request.app[client_key]
    stream = client.stream(model=request.app[model_key], messages=messages, max_tokens=512)
    return await relay_to_aiohttp(request, stream)


def create_app(client: InfernetClient, *, model: str = DEFAULT_MODEL) -> web.Application:
    """The chat app, relaying through ``client`` (which the caller opens and closes)."""
    app = web.Application()
    app[client_key] = client
    app[model_key] = model
    app.router.add_get("/", index)
    app.router.add_post("/api/chat", chat)
    return app


@contextlib.asynccontextmanager
async def infernet_client() -> AsyncIterator[InfernetClient]:
    """A client for the configured control plane, or for an embedded one when none is configured."""
    async with contextlib.AsyncExitStack() as stack:
        base_url = os.environ.get("INFERNET_BASE_URL")
        token = os.environ.get("INFERNET_BEARER_TOKEN")
        if not base_url and not token:
            from infernet_async.devserver import DevServer

            dev = await stack.enter_async_context(DevServer())
            base_url, token = dev.base_url, dev.token
            print(f"Using the embedded control plane at {dev.url}", file=sys.stderr)
        yield await stack.enter_async_context(InfernetClient(base_url, token))


async def serve(host: str, port: int, model: str) -> None:
    async with infernet_client() as client:
        runner = web.AppRunner(create_app(client, model=model))
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]  # the real port when --port 0
            print(f"Chat on http://{bound_host}:{bound_port}/ (Ctrl-C to stop)", file=sys.stderr)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.model))


if __name__ == "__main__":
    main()
