"""Open-set metrics of every stage checkpoint of one finished run (where open-set rejection is
won or lost along the pipeline).

    python benchmarks/studies/openset_checkpoints.py RUN [--data DATA] [--out results/openset_checkpoints.json]

For ``RUN/model.pt`` and each ``best.pt`` / ``last.pt`` under ``RUN/stage*/`` and
``RUN/online_rules/<rule>/stage2/`` (D21's branches), on ``DATA/openset_test.jsonl`` (default:
the run's dataset): mean C-F1, PR-AUC, AUROC, the closed-set top-1 on the known images and the
mean top softmax probability on known and on unknown images; and ``auroc_prototype``, the AUROC
of a score that does not use the softmax: the best cosine between an image's embedding and the
class prototypes the checkpoint carries (None before stage 2 has prototypes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code

from common import RESULTS, machine_info  # noqa: E402

from capro.data.datasets import EvalDataset  # noqa: E402
from capro.engine.checkpoint import load_checkpoint  # noqa: E402
from capro.engine.evaluate import collect, max_softmax, read_openset  # noqa: E402
from capro.engine.runner import load_run_model  # noqa: E402
from capro.engine.stages import load_weights  # noqa: E402
from capro.eval.openset import openset_metrics  # noqa: E402
from capro.report.rundir import resolve_data_root  # noqa: E402
from capro.utils.io import read_json, write_json  # noqa: E402


def checkpoints(run: Path) -> dict[str, Path | None]:
    """Name -> checkpoint file (None: the run's final model, ``model.pt``)."""
    found = sorted(run.glob("stage*/*.pt")) + sorted(run.glob("online_rules/*/stage2/*.pt"))
    return {"final": None, **{str(p.relative_to(run)): p for p in found if p.name in ("best.pt", "last.pt")}}


def scores(logits: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """Open-set and closed-set figures of logits [N, C] against targets [N] (-1 unknown)."""
    (top, pred), known = max_softmax(logits), targets >= 0
    m = openset_metrics(top, pred, targets, num_known=logits.shape[1])
    return {"mean_cf1": m["mean_cf1"], "pr_auc": m["pr_auc"], "auroc": m["auroc"],
            "closed_top1": float((pred[known] == targets[known]).mean()),
            "max_prob_known": float(top[known].mean()), "max_prob_unknown": float(top[~known].mean()),
            "recall_span": [float(m["cr"].min()), float(m["cr"].max())]}


def prototype_auroc(model, ds, targets: np.ndarray) -> float | None:
    """AUROC (known over unknown) of each image's best cosine to the class prototypes [C, D]."""
    from sklearn.metrics import roc_auc_score

    if not bool(model.prototypes_ready):
        return None
    feats, _ = collect(model, ds, device=torch.device("cpu"), batch_size=256, fn="features")
    with torch.no_grad():
        z = torch.nn.functional.normalize(model.projection(torch.from_numpy(feats)), dim=1)  # [N, D] embeddings
        protos = torch.nn.functional.normalize(model.prototypes, dim=1)
        best = (z @ protos.T).max(dim=1).values.numpy()
    return float(roc_auc_score(targets >= 0, best))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--out", type=Path, default=RESULTS / "openset_checkpoints.json")
    args = p.parse_args(argv)
    root = resolve_data_root(args.run, args.data)
    model, classes, cfg, _ = load_run_model(args.run)
    records, targets = read_openset(root, classes)
    ds = EvalDataset(root, records, len(classes), size=cfg.data.image_size, channels=cfg.data.channels)
    metrics = read_json(args.run / "metrics.json")
    out = {"run": str(args.run), "online_rule": metrics.get("online_rule"), "checkpoints": {},
           "machine": machine_info()}
    for name, path in checkpoints(args.run).items():
        epoch = None
        if path is not None:
            state = load_checkpoint(path)
            load_weights(model, state["model"])
            epoch = state.get("epoch")
        logits, _ = collect(model, ds, device=torch.device("cpu"), batch_size=256)
        out["checkpoints"][name] = {"epoch": epoch, **scores(logits, targets),
                                    "auroc_prototype": prototype_auroc(model, ds, targets)}
        r = out["checkpoints"][name]
        print(f"{name:34s} epoch {epoch!s:>4}  C-F1 {r['mean_cf1']:5.1f}  PR-AUC {r['pr_auc']:.3f}  "
              f"AUROC {r['auroc']:.3f} (prototypes {r['auroc_prototype'] or float('nan'):.3f})  top-1 {100 * r['closed_top1']:.1f}  max-prob known "
              f"{r['max_prob_known']:.3f} unknown {r['max_prob_unknown']:.3f}", flush=True)
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
