"""Shared by the tests of the benchmark scripts: import a script of ``benchmarks/`` as a module."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script(name)``: the module ``benchmarks/<name>.py`` (its sibling imports resolve)."""
    def load(name: str):
        sys.path.insert(0, str(BENCHMARKS))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(BENCHMARKS))
    return load
