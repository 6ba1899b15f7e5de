"""The browser relay in FastAPI: POST /api/chat streams an Infernet answer as Server-Sent Events.

    python examples/fastapi_relay.py --port 8000       # the chat page: http://127.0.0.1:8000/
    curl -N localhost:8000/api/chat -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "What is the capital of France?"}]}'

The same app as examples/aiohttp_chat (it serves the same page), on FastAPI. The body is
``sse_body(stream)``: the streaming guide's format (``data: {"text": ...}``, an error event when
the answer fails, ``data: [DONE]``), and Starlette's disconnect listener cancels it when the browser
goes away, which closes the job stream upstream at once. The bearer token stays on the server.
Runs on the embedded control plane unless INFERNET_BASE_URL / INFERNET_BEARER_TOKEN are set.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from infernet_async import InfernetClient
from infernet_async.relay import SSE_HEADERS, sse_body

MODEL = os.environ.get("INFERNET_MODEL", "qwen2.5:14b")
PAGE = Path(__file__).with_name("aiohttp_chat") / "static" / "index.html"


class Message(BaseModel):
    role: str = Field(pattern="^(user|assistant)$")
    content: str


class ChatIn(BaseModel):
    messages: list[Message] = Field(min_length=1, max_length=50)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client for the app's lifetime: its connection pool is shared by every request."""
    async with contextlib.AsyncExitStack() as stack:
        if os.environ.get("INFERNET_BASE_URL") or os.environ.get("INFERNET_BEARER_TOKEN"):
            client = InfernetClient()
        else:
            from infernet_async.devserver import DevServer

            server = await stack.enter_async_context(DevServer())
            client = InfernetClient(server.base_url, server.token)
        app.state.client = await stack.enter_async_context(client)
        yield


app = FastAPI(title="Infernet relay", lifespan=lifespan)


@app.get("/")
async def page() -> FileResponse:
    return FileResponse(PAGE)


@app.post("/api/chat")
async def chat(body: ChatIn, request: Request) -> StreamingResponse:
    messages = [m.model_dump() for m in body.messages]
    client: InfernetClient = request.app.state.client
    stream = client.stream(model=MODEL, messages=messages, max_tokens=512)
    return StreamingResponse(sse_body(stream), headers=dict(SSE_HEADERS))


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
