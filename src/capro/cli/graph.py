"""``capro graph RUN {knn,enhance,match,export-knn} [KEY=VALUE ...] [options]``: the offline graph
and text-matching steps (config overrides go right after the step name).

- ``knn``: visual kNN graph of the stage-1 features, re-ranked (``RUN/graph/``);
- ``enhance``: + smoothing of the texts over that graph (``RUN/graph/enhanced.npy``);
- ``match``: + text matching and anchors (``RUN/match/``);
- ``export-knn --out FILE.npz``: the kNN graph as a scipy CSR distance matrix, the form
  cleanlab's ``knn_graph`` argument takes (load it with ``scipy.sparse.load_npz``).

Inputs default to the run's files (``RUN/features/stage1.npy``, ``RUN/text/texts.npy``,
``RUN/text/prototypes.npy``, the config in ``RUN/config.yaml`` and the dataset in ``RUN/run.json``);
each can be given explicitly. Finished steps with unchanged inputs and config are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from capro.cli._common import add_config_args
from capro.config import load_config
from capro.errors import DataError
from capro.graph import offline
from capro.graph.knn import knn_to_csr
from capro.utils.io import atomic_write

ACTIONS = ("knn", "enhance", "match", "export-knn")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "graph", help="visual kNN graph, re-ranking, text enhancement, text matching and anchors",
        description="Build the visual kNN graph of a run's stage-1 features and re-rank it (knn), "
                    "smooth the texts over it (enhance), match them to the textual prototypes and "
                    "pick the anchors (match), or export the kNN graph for cleanlab (export-knn). "
                    "Config overrides (KEY=VALUE) go right after the step name.")
    p.add_argument("run_dir", metavar="RUN", help="run directory")
    p.add_argument("action", choices=ACTIONS, help="which step to run (earlier steps run as needed)")
    p.add_argument("--data", metavar="DIR", help="dataset directory (default: the one in RUN/run.json)")
    p.add_argument("--features", metavar="FILE", help="[N, F] .npy (default RUN/features/stage1.npy)")
    p.add_argument("--texts", metavar="FILE", help="[N, D] .npy (default RUN/text/texts.npy)")
    p.add_argument("--prototypes", metavar="FILE", help="[C, D] .npy (default RUN/text/prototypes.npy)")
    p.add_argument("--out", metavar="FILE", help="export-knn: where to write the .npz")
    p.add_argument("--keep-self", action="store_true",
                   help="export-knn: keep each node itself in its row (cleanlab expects it left out)")
    add_config_args(p)
    p.set_defaults(func=run)


def _load(path: Path, what: str, hint: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}; {hint}")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc}); recreate it") from exc


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    saved = run_dir / "config.yaml"
    cfg_path = args.config or (saved if saved.is_file() else None)
    cfg = load_config(cfg_path, preset=args.preset, overrides=args.overrides)

    if args.action == "export-knn":
        if not args.out:
            raise DataError("export-knn needs --out FILE.npz")
        ids_path = offline.graph_dir(run_dir) / "knn_ids.npy"
        if args.features is None and not (run_dir / "features" / "stage1.npy").is_file() and ids_path.is_file():
            ids, sims = np.load(ids_path), np.load(offline.graph_dir(run_dir) / "knn_sims.npy")
        else:
            knn, _ = offline.graph_knn(cfg, _features(args, run_dir), run_dir)
            ids, sims = knn["knn_ids"], knn["knn_sims"]
        graph = knn_to_csr(ids, sims, drop_self=not args.keep_self)
        with atomic_write(args.out, "wb", encoding=None) as fh:
            sp.save_npz(fh, graph)
        print(f"capro graph: {graph.shape[0]} x {graph.shape[1]} kNN distance graph "
              f"({graph.nnz} entries) -> {args.out}")
        return 0

    features = _features(args, run_dir)
    if args.action == "knn":
        rr, _ = offline.graph_rerank(cfg, features, run_dir)
        print(f"capro graph: {rr['rerank_ids'].shape[0]} nodes x {rr['rerank_ids'].shape[1]} neighbours "
              f"-> {offline.graph_dir(run_dir)}")
        return 0
    texts = _load(Path(args.texts or run_dir / "text" / "texts.npy"), "text embeddings",
                  "run `capro text DATA --out RUN` first or pass --texts FILE")
    if args.action == "enhance":
        enhanced, _ = offline.graph_enhance(cfg, features, np.asarray(texts), run_dir)
        print(f"capro graph: {enhanced.shape[0]} enhanced texts -> "
              f"{offline.graph_dir(run_dir) / 'enhanced.npy'}")
        return 0
    protos = _load(Path(args.prototypes or run_dir / "text" / "prototypes.npy"), "textual prototypes",
                   "run `capro text DATA --out RUN` first or pass --prototypes FILE")
    from capro.data.validate import load_split_for_run
    from capro.engine.validation import trained_split
    from capro.report.rundir import resolve_data_root

    root = resolve_data_root(run_dir, args.data)
    split = load_split_for_run(root, "train", run_dir=run_dir, skip_bad=cfg.data.skip_bad,
                               check_images=cfg.data.check_images)
    split = trained_split(split, run_dir)  # the rows the run trained on
    res = offline.build_anchors(cfg, split, features, np.asarray(texts), np.asarray(protos), run_dir,
                                seed=cfg.seed)
    n_pos = int((res.domain > 0).sum())
    n_neg = int((res.domain < 0).sum())
    neg = f", {n_neg} negative" if res.domain.ndim == 2 else ""
    print(f"capro graph: {n_pos} anchors{neg} over {res.text_cosine.shape[1]} classes -> "
          f"{offline.match_dir(run_dir) / 'anchors.jsonl'}")
    return 0


def _features(args: argparse.Namespace, run_dir: Path) -> np.ndarray:
    path = Path(args.features or run_dir / "features" / "stage1.npy")
    return np.asarray(_load(path, "stage-1 features",
                            "they are written on the way to stage 2: run `capro train --until stage2` or "
                            "`capro run` first, or pass --features FILE"))
