"""Where the repository's parts are, for tests that read or run them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "infernet_async"
EXAMPLES = ROOT / "examples"
BENCHMARKS = ROOT / "benchmarks"
README = ROOT / "README.md"
TESTS = ROOT / "tests"
