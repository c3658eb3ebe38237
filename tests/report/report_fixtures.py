"""Builds a small synthetic finished run (3 classes, 16 training rows, real PNG images) for the report tests.

Training rows ``t00``..``t15`` (web label, true label, verdict, anchor):

=====  ===========  ===========  ======================  ======
id     web          true         verdict                 anchor
=====  ===========  ===========  ======================  ======
t00    T-shirt/top  T-shirt/top  kept                    yes
t01    T-shirt/top  T-shirt/top  kept                    yes
t02    T-shirt/top  Trouser      relabeled -> Trouser
t03    T-shirt/top  (OOD)        removed
t04    T-shirt/top  T-shirt/top  kept (title has a URL)
t05    Trouser      Trouser      kept                    yes
t06    Trouser      T-shirt/top  kept                    yes
t07    Trouser      Bag          relabeled -> Bag
t08    Trouser      Trouser      kept (no text)
t09    Trouser      T-shirt/top  kept
t10    Bag          Bag          kept                    yes
t11    Bag          Bag          kept                    yes
t12    Bag          T-shirt/top  relabeled -> T-shirt/top
t13    Bag          Bag          removed
t14    Bag          Bag          kept
t15    Bag          Bag          (corrupt image: rejected by the run, no verdict)
=====  ===========  ===========  ======================  ======
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from PIL import Image

from capro.config import load_config, save_config
from capro.graph.knn import knn_to_csr
from capro.report.verdicts import verdict_row, write_verdicts
from capro.utils.io import write_json, write_jsonl

CLASSES = ["T-shirt/top", "Trouser", "Bag"]
A, B, C = CLASSES
# id -> (web, true, action, suggested, anchor, label_quality)
TRAIN = {
    "t00": (A, A, "kept", A, True, 0.9),
    "t01": (A, A, "kept", A, True, 0.8),
    "t02": (A, B, "relabeled", B, False, 0.1),
    "t03": (A, None, "removed", A, False, 0.05),
    "t04": (A, A, "kept", A, False, 0.5),
    "t05": (B, B, "kept", B, True, 0.95),
    "t06": (B, A, "kept", B, True, 0.7),
    "t07": (B, C, "relabeled", C, False, 0.2),
    "t08": (B, B, "kept", B, False, 0.6),
    "t09": (B, A, "kept", B, False, 0.4),
    "t10": (C, C, "kept", C, True, 0.9),
    "t11": (C, C, "kept", C, True, 0.85),
    "t12": (C, A, "relabeled", A, False, 0.15),
    "t13": (C, C, "removed", C, False, 0.3),
    "t14": (C, C, "kept", C, False, 0.7),
}
REJECTED = "t15"
URL_TITLE = "cotton tee http://shop.example.com/item?id=4 free shipping"
TEST_PRED = [("e0", A, A), ("e1", A, B), ("e2", B, B), ("e3", B, B), ("e4", C, C), ("e5", C, A)]


@dataclass
class SyntheticRun:
    run: Path
    data: Path
    train_ids: list[str]


def _png(path: Path, seed: int, *, size=(8, 8), mode: str = "L") -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def _log(path: Path, columns: list[str], rows: list[list[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)


def build_run(root: Path) -> SyntheticRun:
    data, run = root / "data", root / "run"
    write_json(data / "classes.json", [{"name": A, "wnid": "n04370048"}, {"name": B}, {"name": C}])
    train_rows = []
    for i, (rid, (web, *_)) in enumerate(TRAIN.items()):
        image = f"images/train/{rid}.png"
        _png(data / image, i, size=(10, 6) if rid == "t05" else (8, 8), mode="RGB" if rid == "t05" else "L")
        row = {"id": rid, "image": image, "label": web, "title": f"{web} photo number {i}",
               "tags": ["shop", web.lower()]}
        if rid == "t04":
            row["title"] = URL_TITLE
        if rid == "t08":
            row = {"id": rid, "image": image, "label": web}
        train_rows.append(row)
    (data / "images/train").mkdir(parents=True, exist_ok=True)
    (data / f"images/train/{REJECTED}.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    train_rows.append({"id": REJECTED, "image": f"images/train/{REJECTED}.png", "label": C})
    write_jsonl(data / "train.jsonl", train_rows)
    write_jsonl(data / "truth.jsonl", [{"id": rid, "true_label": t[1], "noise": "clean" if t[0] == t[1] else "uniform"}
                                       for rid, t in TRAIN.items()])
    val = [{"id": f"v{i}", "image": f"images/val/v{i}.png", "label": c} for i, c in enumerate(CLASSES)]
    test = [{"id": e, "image": f"images/test/{e}.png", "label": t} for e, t, _ in TEST_PRED]
    for i, r in enumerate(val + test):
        _png(data / r["image"], 100 + i)
    write_jsonl(data / "val.jsonl", val)
    write_jsonl(data / "test.jsonl", test)

    write_json(run / "run.json", {"data": str(data)})
    save_config(load_config(preset="tiny"), run / "config.yaml")
    write_jsonl(run / "rejected.jsonl", [{"file": str(data / "train.jsonl"), "line": 16, "id": REJECTED,
                                          "reason": "truncated or corrupt image (broken PNG file)"}])
    verdicts = [verdict_row(sample_id=rid, web_label=web, action=act, suggested_label=sug, anchor=anc,
                            score=0.9 if act != "removed" else 0.3, label_quality=q,
                            text_distance=0.1 * i, nearest_prototype=sug)
                for i, (rid, (web, _, act, sug, anc, q)) in enumerate(TRAIN.items())]
    write_verdicts(run / "stage3a" / "samples.jsonl", verdicts)
    ranks: dict[str, int] = {}
    anchors = []
    for rid, (web, _, _, _, anc, _) in TRAIN.items():
        if anc:
            r = ranks.get(web, 0)
            anchors.append({"id": rid, "class": web, "rank": r, "distance": 0.2 + 0.1 * r,
                            "margin": round(0.25 - 0.4 * r, 3), "next_class": B if web != B else A,
                            "evidence": "own text" if r == 0 else "neighbours"})
            ranks[web] = ranks.get(web, 0) + 1
    write_jsonl(run / "match" / "anchors.jsonl", anchors)
    write_json(run / "match" / "anchor_counts.json", {"topk": 3, "min_margin": 0.0, "min_anchors": 2, "classes": [
        {"class": A, "samples": 5, "with_evidence": 2, "anchors": 2, "why": "evidence"},
        {"class": B, "samples": 5, "with_evidence": 1, "anchors": 2, "why": "minimum"},
        {"class": C, "samples": 5, "with_evidence": 4, "anchors": 2, "why": "evidence"}]})
    write_jsonl(run / "text" / "concepts.jsonl", [
        {"class": 0, "name": A, "source": "wordnet", "synsets": ["jersey.n.03"], "text": "T-shirt; a close-fitting pullover shirt"},
        {"class": 1, "name": B, "source": "wordnet", "synsets": ["trouser.n.01"], "text": "trouser; a garment extending from the waist to the knee or ankle"},
        {"class": 2, "name": C, "source": "definition", "synsets": [], "text": "bag; a flexible container"},
    ])
    feats = np.random.default_rng(0).normal(size=(len(TRAIN), 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    sims = feats @ feats.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    (run / "graph").mkdir(parents=True)
    np.save(run / "graph" / "knn_ids.npy", ids)
    np.save(run / "graph" / "knn_sims.npy", np.take_along_axis(sims, ids, axis=1))
    sp.save_npz(run / "graph" / "knn_graph.npz", knn_to_csr(ids, np.take_along_axis(sims, ids, axis=1)))
    write_jsonl(run / "eval" / "test_predictions.jsonl",
                [{"id": e, "label": t, "pred": p, "score": 0.8} for e, t, p in TEST_PRED])
    write_json(run / "metrics.json", {
        "eval": {"test": {"top1": 4 / 6, "top5": 1.0, "n": 6}},
        "cleaning": {"kept": 10, "relabeled": 3, "removed": 2},
        "stages": {"stage1": {"seconds": 3.5}, "stage2": {"seconds": 5.25}, "stage3b": {"seconds": 1.0}},
        "train_truth": {"anchor_precision": 5 / 6, "noise_detection": {"precision": 0.6, "recall": 0.5, "f1": 0.545},
                        "relabel_accuracy": 1.0},
    })
    _log(run / "stage1" / "log.csv", ["epoch", "lr", "loss", "loss_ce", "top1"],
         [[0, 0.05, 2.1, 1.1, 0.3], [1, 0.025, 1.6, 0.9, 0.45], [2, 0.0, 1.4, 0.8, 0.5]])
    _log(run / "stage2" / "log.csv", ["epoch", "lr", "loss", "loss_ce", "loss_proto", "top1"],
         [[0, 0.05, 1.5, 0.8, 1.2, 0.52], [1, 0.02, 1.2, 0.7, 0.9, 0.6], [2, 0.0, 1.1, 0.6, "", 0.62]])
    _log(run / "stage3b" / "log.csv", ["epoch", "lr", "loss"], [[0, 0.01, 0.9], [1, 0.0, 0.8]])
    return SyntheticRun(run=run, data=data, train_ids=[*TRAIN, REJECTED])
