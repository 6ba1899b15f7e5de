"""The ``chat`` subcommand: stream one answer to the terminal as it arrives.

Three output modes: tokens as they arrive (default), the whole answer at the end (``--no-stream``),
or one JSON object per line per event (``--json``, for scripts). Whatever the mode, Ctrl-C and a
failed stream leave the text that arrived on stdout before the process exits (130 for Ctrl-C, 1
for an error, with one line on stderr saying why); in JSON mode that text is in a last
``interrupted`` or ``error`` object, also when the request itself failed.

A node that drops mid-answer: tokens already on the terminal cannot be taken back, so the default
mode stops there and says so. ``--no-stream`` shows nothing before the end and ``--json`` can say
``restart``, so both follow the re-queued job to the whole answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ..errors import InfernetError, StreamError
from ._plumbing import (
    DEFAULT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    MODEL_ENV,
    add_answer_arguments,
    add_command,
    add_connection_arguments,
    open_client,
    run,
    write_out,
)

if TYPE_CHECKING:
    from .._client import InfernetClient
    from .._stream import TokenStream

__all__ = ["register"]

_HELP = "stream an answer to the terminal"
_DESCRIPTION = (
    "Ask a model and print the answer as it streams in. Ctrl-C stops it and keeps what "
    "arrived. With no INFERNET_BASE_URL and no INFERNET_BEARER_TOKEN, it runs on an "
    "embedded local control plane."
)


def register(subparsers: Any) -> None:
    """Add ``chat`` to the ``infernet-async`` command line."""
    parser = add_command(subparsers, "chat", _handle, help=_HELP, description=_DESCRIPTION)
    parser.add_argument("prompt", help='the question ("-" reads it from standard input)')
    parser.add_argument(
        "-m",
        "--model",
        help=f"the model (default ${MODEL_ENV} or {DEFAULT_MODEL}; see 'infernet-async models')",
    )
    parser.add_argument("-s", "--system", metavar="TEXT", help="a system message sent first")
    add_answer_arguments(parser, max_tokens_help="answer length cap", temperature_help="0.0 to 2.0")
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help=(
            "one JSON object per event and line, for scripts ('restart': a node dropped and the "
            "answer starts over; 'error': the request or the answer failed)"
        ),
    )
    output.add_argument(
        "--no-stream",
        action="store_true",
        help=(
            "print the answer once it is complete (a node that drops mid-answer is followed to "
            "the re-queued job)"
        ),
    )
    add_connection_arguments(parser)


def _handle(args: argparse.Namespace) -> int:
    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    if not args.prompt.strip():
        sys.stderr.write("infernet-async chat: error: the prompt is empty\n")
        return EXIT_USAGE
    return run(lambda: _chat(args))


async def _chat(args: argparse.Namespace) -> int:
    messages = [{"role": "user", "content": args.prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    model = args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    if args.json:
        return await _as_json_lines(args, model, messages)
    async with open_client(args) as client:
        # Nothing is on screen before the end with --no-stream, so a dropped node costs nothing
        # shown: follow the re-queued job. Streamed tokens cannot be taken back, so that mode stops.
        stream = _open_stream(client, args, model, messages, restart=args.no_stream)
        async with stream:
            if args.no_stream:
                return await _at_the_end(stream)
            return await _as_it_arrives(stream)


def _open_stream(
    client: InfernetClient,
    args: argparse.Namespace,
    model: str,
    messages: list[dict[str, str]],
    *,
    restart: bool,
) -> TokenStream:
    return client.stream(
        model=model,
        messages=messages,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        on_node_disconnect="restart" if restart else "raise",
    )


def _end_line(text: str) -> None:
    if text and not text.endswith("\n"):
        write_out("\n")


async def _as_it_arrives(stream: TokenStream) -> int:
    try:
        async for token in stream:
            write_out(token)
    finally:
        # Interrupted, failed or done: the tokens are on screen already; finish their line so the
        # shell prompt (or the error line) starts on its own.
        _end_line(stream.text)
    return EXIT_OK


async def _at_the_end(stream: TokenStream) -> int:
    try:
        text = await stream.final_text()
    except (asyncio.CancelledError, InfernetError):
        write_out(stream.text)
        _end_line(stream.text)
        raise
    write_out(text)
    _end_line(text)
    return EXIT_OK


def _json_line(payload: dict[str, Any]) -> None:
    write_out(json.dumps(payload, ensure_ascii=False) + "\n")


async def _as_json_lines(
    args: argparse.Namespace, model: str, messages: list[dict[str, str]]
) -> int:
    from ..events import Done, JobInfo, Meta, Restart, Token

    # The error objects cover the whole command, not just the reading: a script reads stdout, and
    # a request refused before any event (unknown model, bad token, unreachable control plane)
    # is as much its business as a stream that breaks halfway.
    stream: TokenStream | None = None
    try:
        async with open_client(args) as client:
            # A script is told when the answer starts over, so it can follow the re-queued job.
            stream = _open_stream(client, args, model, messages, restart=True)
            async with stream:
                async for event in stream.events():
                    if isinstance(event, Token):
                        _json_line({"type": "token", "text": event.text})
                    elif isinstance(event, JobInfo):
                        _json_line(
                            {
                                "type": "job",
                                "job_id": event.job_id,
                                "status": event.status,
                                "model": event.model,
                            }
                        )
                    elif isinstance(event, Meta):
                        _json_line(
                            {
                                "type": "meta",
                                "node_id": event.node_id,
                                "node_name": event.node_name,
                                "model": event.model,
                                "engine": event.engine,
                            }
                        )
                    elif isinstance(event, Restart):
                        _json_line(
                            {
                                "type": "restart",
                                "attempt": event.attempt,
                                "discarded_text": event.discarded_text,
                                "reason": event.reason,
                            }
                        )
                    elif isinstance(event, Done):
                        _json_line(
                            {
                                "type": "done",
                                "text": stream.text,
                                "job_id": stream.job_id,
                                "reason": event.reason,
                                "tokens": stream.token_count,
                                "time_to_first_token": stream.time_to_first_token,
                                "tokens_per_second": stream.tokens_per_second,
                            }
                        )
    except asyncio.CancelledError:
        _json_line({"type": "interrupted", **_so_far(stream)})
        raise
    except StreamError as exc:
        _json_line(
            {
                "type": "error",
                "code": exc.code,
                "message": exc.message,
                "partial_text": exc.partial_text,
                "job_id": exc.job_id,
            }
        )
        raise
    except (InfernetError, ValueError) as exc:
        so_far = _so_far(stream)
        _json_line(
            {
                "type": "error",
                "code": getattr(exc, "code", None),
                "message": str(exc),
                "partial_text": so_far["text"],
                "job_id": so_far["job_id"],
            }
        )
        raise
    return EXIT_OK


def _so_far(stream: TokenStream | None) -> dict[str, Any]:
    """The text and job id received, for the last object; none yet if the stream never opened."""
    if stream is None:
        return {"text": "", "job_id": None}
    return {"text": stream.text, "job_id": stream.job_id}
