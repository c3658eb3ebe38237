"""Session-wide test data: tiny simulated web datasets (generated once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SIZES = {"train_size": 200, "val_size": 40, "test_size": 60, "image_size": 16}


@pytest.fixture(scope="session")
def tiny_web_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single-label ``web``-profile dataset: 200 train / 40 val / 60 test images of 16 px, with truth."""
    from capro.data.simulate import simulate

    root = tmp_path_factory.mktemp("tiny_web") / "data"
    simulate(root, profile="web", seed=0, progress=False, **TINY_SIZES)
    return root


@pytest.fixture(scope="session")
def tiny_multilabel_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-label (2x2 mosaic) ``web``-profile dataset of the same sizes, with truth."""
    from capro.data.simulate import simulate

    root = tmp_path_factory.mktemp("tiny_multilabel") / "data"
    simulate(root, profile="web", seed=0, multilabel=True, progress=False, **TINY_SIZES)
    return root


TINY_RUN_OVERRIDES = ["model.backbone=simple_cnn"]
"""The tiny preset with the fastest backbone: every pipeline step in well under a minute."""


@pytest.fixture(scope="session")
def tiny_run_overrides() -> list[str]:
    """:data:`TINY_RUN_OVERRIDES`, for tests that launch the same run themselves (a fixture, since
    ``from conftest import`` can resolve to another directory's ``conftest.py``)."""
    return list(TINY_RUN_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_run(tiny_web_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished ``capro run`` (preset tiny, all stages) on :func:`tiny_web_data`: (RUN, metrics)."""
    from capro.config import load_config
    from capro.engine.runner import run_pipeline

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = load_config(preset="tiny", overrides=TINY_RUN_OVERRIDES)
    return run, run_pipeline(tiny_web_data, run, cfg, progress=False)


@pytest.fixture(scope="session")
def bench_script():
    """``bench_script(name)``: the module ``benchmarks/<name>.py`` or ``benchmarks/studies/<name>.py``
    (its sibling imports resolve)."""
    import importlib
    import sys

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    paths = [str(benchmarks), str(benchmarks / "studies")]

    def load(name: str):
        sys.path[:0] = paths
        try:
            return importlib.import_module(name)
        finally:
            for path in paths:
                sys.path.remove(path)
    return load
