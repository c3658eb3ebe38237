"""Graceful stop on SIGTERM / SIGINT, the signals schedulers send before pre-empting a job.

Inside ``with GracefulStop() as stop:`` the first SIGTERM or SIGINT only sets a flag; the training
loop checks ``stop.should_stop`` after each optimiser step, writes a checkpoint and exits with
:data:`EXIT_PREEMPTED` (raise :class:`Preempted`; the CLI turns it into that exit code). A second
SIGINT (Ctrl-C twice) raises :class:`KeyboardInterrupt` at once. Handlers can only be installed
from the main thread; elsewhere the context manager installs nothing and never requests a stop.

Under DDP every rank must stop after the same step, or the ranks that keep going wait forever in
the next collective: :func:`stop_requested_anywhere` all-reduces the flag (MAX) so that one
signalled rank stops them all.

Example (the loop)::

    with GracefulStop() as stop:
        for step in ...:
            train_step()
            if stop_requested_anywhere(stop.should_stop, device):
                save_checkpoint()
                raise Preempted(f"stopped by {stop.signal_name} after step {step}; "
                                f"checkpoint written; rerun with --resume")
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from capro.errors import CaproError

if TYPE_CHECKING:
    import torch

EXIT_PREEMPTED = 75
"""Exit code of a run stopped by SIGTERM / SIGINT after writing its checkpoint: ``EX_TEMPFAIL``
from ``sysexits.h`` ("temporary failure, retry later"), so a scheduler or wrapper script can tell
"pre-empted, rerun with --resume" from success (0), a failed run (1) and usage errors (2)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(CaproError):
    """The run stopped on request after writing a checkpoint; exit code :data:`EXIT_PREEMPTED`."""

    exit_code = EXIT_PREEMPTED


class GracefulStop:
    """Context manager: turn SIGTERM / SIGINT into a flag, restore the previous handlers on exit.

    Args:
        signals: the signals to catch.
        announce: print one line to stderr when the first signal arrives.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS, *,
                 announce: bool = True) -> None:
        self.signals = tuple(signals)
        self.announce = announce
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def should_stop(self) -> bool:
        """True once a stop signal arrived (or :meth:`request` was called)."""
        return self.signum is not None

    @property
    def signal_name(self) -> str | None:
        """``"SIGTERM"`` / ``"SIGINT"`` of the first signal received, else ``None``."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as if ``signum`` had arrived (the first request wins)."""
        if self.signum is None:
            self.signum = int(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None and self.announce:
            print(f"capro: got {signal.Signals(signum).name}; finishing the current step, then "
                  "writing a checkpoint (press Ctrl-C again to stop at once)", file=sys.stderr,
                  flush=True)
        self.request(signum)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGINT.

    Schedulers signal the whole process group (SLURM pre-emption, ``scancel``, Ctrl-C in a
    terminal), so the workers receive the stop signal too. Ignoring it lets the main process take
    its graceful stop and then shut its workers down itself, instead of losing a worker mid-batch.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def stop_requested_anywhere(flag: bool, device: torch.device | str | None = None) -> bool:
    """Logical OR of ``flag`` over all processes (all-reduce MAX); ``flag`` itself in one process.

    Every rank must call it at the same step. ``device`` must be the rank's CUDA device under
    NCCL; ``None`` picks the current CUDA device for NCCL and the CPU otherwise.
    """
    import torch  # here, so that installing the handlers does not import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    if device is None:
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
