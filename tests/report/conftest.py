"""Fixtures of the report tests: a synthetic finished run (see report_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_fixtures import SyntheticRun, build_run


@pytest.fixture
def synthetic_run(tmp_path: Path) -> SyntheticRun:
    return build_run(tmp_path)
