"""What a finished run leaves for people and other tools, beside the metrics.

- ``RUN/eval/<split>_predictions.jsonl``: per evaluation image ``{"id", "label", "pred", "score"}``
  (class names; multi-label: lists of names and the top-3 predictions), read by the report's
  confusion matrix.
- ``RUN/graph/knn_graph.npz``: the visual kNN graph as the scipy CSR of cosine distances that
  cleanlab's ``knn_graph`` arguments take.
- ``RUN/report.html``: the self-contained report (:mod:`capro.report.html`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from capro.engine.evaluate import collect
from capro.errors import CaproError
from capro.utils.dist import is_main
from capro.utils.io import atomic_write, write_jsonl


def write_predictions(path: Path, ids: list[str], logits: np.ndarray, targets: np.ndarray,
                      names: list[str], *, multi_label: bool) -> int:
    """Write one prediction row per image; ``logits`` [N, C], ``targets`` [N] or [N, C]."""
    if multi_label:
        scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :3]
        rows = ({"id": i, "label": [names[c] for c in np.flatnonzero(t > 0.5)],
                 "pred": [names[c] for c in tp], "score": [round(float(s[c]), 6) for c in tp]}
                for i, t, s, tp in zip(ids, targets, scores, top))
    else:
        probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
        pred = probs.argmax(axis=1)
        rows = ({"id": i, "label": names[int(t)], "pred": names[int(p)], "score": round(float(s[p]), 6)}
                for i, t, p, s in zip(ids, targets, pred, probs))
    return write_jsonl(path, rows)


def write_knn_graph(run_dir: Path) -> Path | None:
    """Export ``RUN/graph/knn_{ids,sims}.npy`` as ``knn_graph.npz`` (None when there is no graph)."""
    from capro.graph.knn import knn_to_csr

    g = run_dir / "graph"
    if not (g / "knn_ids.npy").is_file() or not (g / "knn_sims.npy").is_file():
        return None
    csr = knn_to_csr(np.load(g / "knn_ids.npy"), np.load(g / "knn_sims.npy"))
    out = g / "knn_graph.npz"
    with atomic_write(out, "wb") as fh:
        sp.save_npz(fh, csr)
    return out


def write_run_artefacts(run_dir: Path, model: torch.nn.Module, eval_sets: dict[str, tuple[list[str], object]],
                        names: list[str], *, multi_label: bool, device: torch.device,
                        batch_size: int, workers: int) -> None:
    """Predictions for every evaluation split, the cleanlab kNN graph, and the HTML report.

    ``eval_sets`` maps split -> (ids, EvalDataset). The report is best-effort: a failure there is
    a warning, never a failed run (the metrics and the model are already written). In a
    distributed run every rank calls (each scores its slice); rank 0 writes.
    """
    for split, (ids, dataset) in eval_sets.items():
        skipped: list[tuple[int, str]] = []
        logits, targets = collect(model, dataset, device=device, batch_size=batch_size, workers=workers,
                                  skipped=skipped, sharded=True)
        if not is_main():
            continue
        unread = {pos for pos, _ in skipped}
        ids = [i for pos, i in enumerate(ids) if pos not in unread]  # unreadable images: no row
        write_predictions(run_dir / "eval" / f"{split}_predictions.jsonl", ids, logits, targets, names,
                          multi_label=multi_label)
    if not is_main():
        return
    write_knn_graph(run_dir)
    from capro.report.html import write_report

    try:
        write_report(run_dir)
    except (CaproError, OSError, ValueError) as exc:
        warnings.warn(f"the HTML report could not be written ({exc}); run `capro report {run_dir}`",
                      stacklevel=2)
