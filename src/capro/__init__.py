"""capro: learn image classifiers from web-crawled images and their text (CAPro, NeurIPS 2023).

    >>> import capro
    >>> run = capro.run("data/crawl", "runs/crawl", preset="cpu")   # or capro.load_run("runs/crawl")
    >>> run.verdicts().head()                                         # per-sample verdicts (pandas)
    >>> run.predict(["image.png"])

See docs/api.md. The pure array-in, array-out steps are in :mod:`capro.functional`.
"""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that wait for work sleep instead of spinning, so that processes sharing the cores
# (two runs side by side, several local ranks) do not steal each other's time; read when torch
# loads its OpenMP runtime, so it is set before the first torch import (capro.engine.threads).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from capro.api import Run, load_run, run, validate  # noqa: E402
from capro.config import Config, load_config, save_config  # noqa: E402
from capro.data.simulate import simulate  # noqa: E402

__all__ = ["Config", "Run", "__version__", "load_config", "load_run", "run", "save_config", "simulate", "validate"]
