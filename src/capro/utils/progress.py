"""Progress lines for logs: where they go, and the per-epoch and per-stage lines.

Without a progress bar (a log file, CI, a batch job), training prints one line per epoch and one
per stage to :func:`progress_stream`: stderr by default; ``capro demo`` sends them to stdout when
stdout is redirected, so that ``capro demo > log`` shows the run as it goes.
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

_SCORE = re.compile(r"_(top1|mAP_macro)(_mean\d+)?$")
"""``log.csv`` score columns: ``<split>_<metric>`` and D23's ``<split>_<metric>_mean<w>``."""

_STREAM: TextIO | None = None


def set_progress_stream(stream: TextIO | None) -> None:
    """Send progress lines to ``stream`` (None: stderr)."""
    global _STREAM
    _STREAM = stream


def progress_stream() -> TextIO:
    return _STREAM if _STREAM is not None else sys.stderr


def progress(message: str) -> None:
    """Write one progress line and flush it."""
    print(message, file=progress_stream(), flush=True)


def epoch_line(stage: str, epoch: int, epochs: int, row: dict) -> str:
    """``stage2 epoch 5/110: loss 1.2345, val_top1 0.8120, 0.9 s (input 17,000 img/s, step 2,100 img/s)``
    (every score column of the row: any split, its D23 trailing mean too)."""
    parts = [f"loss {row['loss']:.4f}"] if "loss" in row else []
    parts += [f"{k} {row[k]:.4f}" for k in row if _SCORE.search(k) and isinstance(row[k], float)]
    rates = ""
    if row.get("input_img_s") or row.get("step_img_s"):
        rates = f" (input {row.get('input_img_s', 0):,.0f} img/s, step {row.get('step_img_s', 0):,.0f} img/s)"
    return f"{stage} epoch {epoch + 1}/{epochs}: {', '.join(parts)}, {row.get('seconds', 0.0):.1f} s{rates}"


def stage_line(stage: str, epochs: int, seconds: float, input_seconds: float, step_seconds: float,
               samples: int) -> str:
    """One line at the end of a training stage: its time and which part bounds it."""
    head = f"{stage}: {epochs} epoch{'s' if epochs != 1 else ''} in {seconds:.0f} s"
    if samples == 0 or input_seconds + step_seconds == 0:
        return head
    inp, step = samples / max(input_seconds, 1e-9), samples / max(step_seconds, 1e-9)
    bound = "input-bound" if input_seconds > step_seconds else "step-bound"
    share = 100 * input_seconds / (input_seconds + step_seconds)
    return (f"{head}; input path {inp:,.0f} img/s, model step "
            f"{step:,.0f} img/s ({bound}: {share:.0f} % of the time waits for input)")
