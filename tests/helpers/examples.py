"""Load a file under examples/ as a module, so tests can reuse an example's own functions."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.helpers.paths import EXAMPLES


def load_example(relative_path: str) -> ModuleType:
    path = EXAMPLES / relative_path
    name = "example_" + relative_path.removesuffix(".py").replace("/", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
