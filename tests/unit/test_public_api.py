"""The public surface is small, explicit and importable: what ``__all__`` says is what there is."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import infernet_async

PUBLIC_MODULES = [
    "infernet_async",
    "infernet_async.cli",
    "infernet_async.devserver",
    "infernet_async.errors",
    "infernet_async.events",
    "infernet_async.hooks",
    "infernet_async.models",
    "infernet_async.relay",
    "infernet_async.sse",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_module_declares_a_sorted_all_of_names_it_has(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"


def test_the_package_exports_every_public_name_it_imports() -> None:
    public = {
        name
        for name, value in vars(infernet_async).items()
        if not name.startswith("_") and not isinstance(value, type(infernet_async))
    }
    assert public == set(infernet_async.__all__) - {"__version__"}


def test_the_contract_names_are_exported() -> None:
    for name in (
        "InfernetClient",
        "TokenStream",
        "SSEDecoder",
        "ServerSentEvent",
        "TokenDecoder",
        "Token",
        "Done",
        "ErrorEvent",
        "JobInfo",
        "Meta",
        "InfernetError",
        "APIError",
        "AuthenticationError",
        "BadRequestError",
        "ModelNotFoundError",
        "NoCapacityError",
        "RateLimitError",
        "InternalServerError",
        "JobFailedError",
        "JobTimeoutError",
        "StreamError",
        "NodeDisconnectedError",
        "IncompleteStreamError",
        "APIConnectionError",
        "APITimeoutError",
    ):
        assert name in infernet_async.__all__, name


def test_the_sans_io_layers_import_without_aiohttp_or_asyncio() -> None:
    # A meta-path finder that refuses aiohttp, asyncio and anyio: the decoder and the event layer
    # must not need them, so they run anywhere bytes do (an h11-style bring-your-own-I/O layer).
    script = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"aiohttp", "asyncio", "anyio", "pydantic"}:
            raise ImportError("refused: " + name)
        return None
sys.meta_path.insert(0, Refuse())
import importlib.util, pathlib, types
pkg = types.ModuleType("infernet_async")
pkg.__path__ = [str(pathlib.Path(sys.argv[1]))]
sys.modules["infernet_async"] = pkg
from infernet_async._token_decoder import TokenDecoder
decoder = TokenDecoder()
events = decoder.feed(b'data: {"text": "Paris"}\\n\\ndata: [DONE]\\n\\n')
print([type(event).__name__ for event in events])
"""
    package_dir = str(importlib.import_module("infernet_async").__path__[0])
    result = subprocess.run(
        [sys.executable, "-c", script, package_dir], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['Token', 'Done']"
