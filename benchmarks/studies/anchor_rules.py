"""Anchor rules on validation seeds: which texts may become anchors, at 2k and 20k images.

    python benchmarks/studies/anchor_rules.py prepare --profiles web hard uneven --seeds 100 101 --sizes 2k 20k
    python benchmarks/studies/anchor_rules.py score   --profiles web hard uneven --seeds 100 101 --sizes 2k 20k
    python benchmarks/studies/anchor_rules.py long    --profiles web hard uneven --seeds 100 --sizes 2k

``prepare`` simulates each (profile, seed, size), trains capro's stage 1 and runs the offline
steps up to the anchors (text encoding, stage-1 features, kNN graph, re-ranking, enhancement,
text matching) with the defaults of the ``capro-ft`` row: at 2k images the ``long`` size (so a
later ``capro run`` of that row on the same directory reuses them), at 20k the 5-epoch stage 1 of
``benchmarks/studies/anchors.py``. Resumable: finished steps are skipped.

``long`` runs ``capro-ft`` of the ``long`` size on the prepared 2k data with D13 alone and with the
new anchor defaults (``LONG_VARIANTS``), reusing the prepared stage 1 and graph; read on
validation (the test figures are stored for the record). Writes
``benchmarks/results/anchor_rules_long.json``.

``score`` re-ranks the same texts, graph and prototypes with every rule and text variant, no
training, and scores the anchors against the simulator's ``truth.jsonl``:

- rules: ``paper`` (the K closest texts by re-ranked distance), ``d13`` (the K best by the
  margin-aware softmax, D13), and ``d13+floor`` (D13's order, only texts whose margin clears
  ``match.min_margin``, at most K, at least ``match.min_anchors``);
- texts: ``raw`` (the samples' own texts), ``enhanced`` (smoothed over the visual neighbours, the
  paper) and ``mixed`` (``graph.self_weight`` of the own text plus the rest of the enhanced one);

precision = the share of anchors whose true class is their web label, pooled over classes, and
the anchor count. Writes ``benchmarks/results/anchor_rules.json`` (one entry per (profile, seed,
size), merged with what is there).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code
from common import RESULTS, SIZES, Size, machine_info, row_metrics, row_overrides, update_markdown  # noqa: E402
from quality import _link_tree, curve_fields, ensure_data, log  # noqa: E402

from capro.config import load_config  # noqa: E402
from capro.graph.enhance import enhance_text  # noqa: E402
from capro.graph.match import (  # noqa: E402
    anchor_ranking,
    select_anchors,
    text_cosine,
    text_distances,
    text_margins,
)
from capro.utils.io import read_json, read_jsonl, write_json  # noqa: E402

DEFAULT_WORK = Path(os.environ.get("CAPRO_BENCH_WORK", "/tmp/capro-bench")) / "anchor-rules"
OUT = RESULTS / "anchor_rules.json"
BIG = Size("anchors20k", train_size=20_000, val_size=500, test_size=1000, image_size=16,
           e1=5, e2=1, e3=0, batch_size=128, backbone="simple_cnn", rows=("capro",))
"""The 20k-image size: ``benchmarks/studies/anchors.py``'s data and 5-epoch stage 1."""


def size_of(tag: str) -> Size:
    return SIZES["long"] if tag == "2k" else BIG


def run_overrides(tag: str, seed: int) -> list[str]:
    """The ``capro-ft`` row's overrides at 2k (``long``); ``anchors.py``'s run at 20k."""
    if tag == "2k":
        return row_overrides("capro-ft", SIZES["long"], seed)
    return [f"seed={seed}", "data.image_size=16", "model.backbone=simple_cnn", "data.workers=0",
            "stage1.epochs=5", "stage2.epochs=1", "stage3.epochs=0", "stage1.batch_size=128",
            "stage2.batch_size=128", "stage1.w_inst=1", "stage2.w_inst=1", "graph.backend=torch"]


def run_dir(work: Path, profile: str, seed: int, tag: str) -> Path:
    return work / tag / profile / f"seed{seed}" / "capro-ft"


def capro(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "capro", *args], check=True)


def prepare(work: Path, profile: str, seed: int, tag: str) -> Path:
    """Simulate (profile, seed, size), train stage 1 and run the offline steps to the anchors."""
    data = ensure_data(work / tag, size_of(tag), profile, seed)
    run = run_dir(work, profile, seed, tag)
    over = run_overrides(tag, seed)
    log(f"{profile} seed {seed} {tag}: stage 1 and the offline steps into {run}")
    # one stage-2 epoch and no stage 3: the anchors are built, nothing after them is spent on
    capro("run", str(data), "--out", str(run), "--preset", "cpu", *over, "stage2.epochs=1", "stage3.epochs=0")
    return run


TEXTS: dict[str, float | str] = {"raw": "raw", "enhanced": 0.0, "mixed25": 0.25, "mixed50": 0.5,
                                 "fill": "fill"}
"""Text variant -> ``graph.self_weight`` (``raw``: no smoothing; ``fill``: the own text where it
is present, the enhanced one where it is empty)."""
FLOORS = (0.0, 0.05, 0.1, 0.15)
TOPK = 50
MIN_ANCHORS = 20


def _texts(run: Path, cfg, rows: list[dict]) -> dict[str, np.ndarray]:
    raw = np.load(run / "text" / "texts.npy").astype(np.float32)
    ids, dist = np.load(run / "graph" / "rerank_ids.npy"), np.load(run / "graph" / "rerank_dist.npy")
    empty = np.array([not " ".join(str(r.get(f) or "") for f in cfg.data.text_fields).strip() for r in rows])
    out = {}
    for name, w in TEXTS.items():
        if w == "raw":
            out[name] = raw
        elif w == "fill":
            enh, _ = enhance_text(ids, dist, raw, keep=cfg.graph.keep, edge_weight=cfg.graph.edge_weight)
            out[name] = np.where(empty[:, None], enh, raw)
        else:
            out[name], _ = enhance_text(ids, dist, raw, keep=cfg.graph.keep, edge_weight=cfg.graph.edge_weight,
                                        self_weight=float(w))
    return out


def _score(domain: np.ndarray, web: np.ndarray, true: np.ndarray, num_classes: int) -> dict[str, float]:
    at = np.flatnonzero(domain > 0)
    per = [int((domain[web == c] > 0).sum()) for c in range(num_classes)]
    return {"precision": float(np.mean(true[at] == web[at])), "anchors": int(len(at)),
            "min_per_class": int(min(per)), "max_per_class": int(max(per))}


def score_run(run: Path) -> dict:
    """Every rule x text variant on one prepared run: precision and count of the anchors."""
    cfg = load_config(run / "config.yaml")
    data = Path(read_json(run / "run.json")["data"])
    names = [c["name"] for c in read_json(data / "classes.json")]
    index = {n: i for i, n in enumerate(names)}
    rows = read_jsonl(data / "train.jsonl")
    truth = {t["id"]: t for t in read_jsonl(data / "truth.jsonl")}
    web = np.array([index[r["label"]] for r in rows])
    true = np.array([index.get(truth[r["id"]]["true_label"] or "", -1) for r in rows])
    protos = np.load(run / "text" / "prototypes.npy")
    g = cfg.graph
    res: dict = {"n_train": len(rows), "noise_rate": float(np.mean(true != web)),
                 "class_sizes": [int((web == c).sum()) for c in range(len(names))], "rules": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-class and weak-evidence warnings, by design here
        for tname, text in _texts(run, cfg, rows).items():
            cos = text_cosine(text, protos)
            dist = text_distances(text, protos, web, method="rerank", k1=g.k1, k2=g.k2, lam=g.lam)
            soft = anchor_ranking(dist, cos, web, score="softmax", temperature=cfg.match.temperature)
            margin, _ = text_margins(cos, web)
            rules = {"paper": (dist, None), "d13": (soft, None)}
            rules.update({f"d13+floor{f:g}": (soft, margin >= f) for f in FLOORS})
            for rname, (key, eligible) in rules.items():
                domain = select_anchors(key, web, num_classes=len(names), topk=TOPK, eligible=eligible,
                                        min_anchors=MIN_ANCHORS)
                res["rules"][f"{rname}/{tname}"] = _score(domain, web, true, len(names))
    return res


def score_and_save(work: Path, profile: str, seed: int, tag: str) -> None:
    run = run_dir(work, profile, seed, tag)
    if not (run / "graph" / "rerank_ids.npy").is_file():
        log(f"{run}: not prepared; run `prepare` first")
        return
    res = score_run(run)
    all_res = read_json(OUT) if OUT.is_file() else {}
    all_res[f"{profile}_seed{seed}_{tag}"] = {"profile": profile, "seed": seed, "size": tag, **res,
                                              "topk": TOPK, "min_anchors": MIN_ANCHORS,
                                              "commit": machine_info().get("commit"),
                                              "date": time.strftime("%Y-%m-%d")}
    write_json(OUT, dict(sorted(all_res.items())))
    best = ", ".join(f"{k} {100 * v['precision']:.1f} ({v['anchors']})" for k, v in res["rules"].items()
                     if k.endswith("/enhanced") or k.endswith("/raw"))
    log(f"{profile} seed {seed} {tag}: {best}")


LONG_VARIANTS: dict[str, tuple[str, ...]] = {
    "d13": ("graph.self_weight=0", "match.min_margin=null", "clean.guard=false"),
    "d16": ("graph.self_weight=0.25", "match.min_margin=0", "match.min_anchors=5", "clean.guard=false"),
    "d16m20": ("graph.self_weight=0.25", "match.min_margin=0", "match.min_anchors=20", "clean.guard=false"),
    "rules": ("graph.self_weight=0.25", "match.min_margin=0", "match.min_anchors=20", "clean.guard=false",
              "clean.keep_rules=[paper,top1,th0.3]"),
    "rules+guard": ("graph.self_weight=0.25", "match.min_margin=0", "match.min_anchors=20",
                    "clean.keep_rules=[paper,top1,th0.3]"),
}
"""The end-to-end checks: ``capro-ft`` of the ``long`` size with D13 alone (enhanced texts, fixed
top-K) and with the evidence floor and own-text mixing (at least 5 or 20 anchors per class), the
fine-tune guard (D18) off, so that only the anchors differ; then on top of ``d16m20`` the keep
rule chosen per run (D19), without and with the guard (the second reuses the first's stage 2)."""
DONORS = {"rules+guard": "rules"}
LONG_OUT = RESULTS / "anchor_rules_long.json"


def run_long(work: Path, profile: str, seed: int, variant: str) -> dict:
    """``capro-ft`` (``long``) with ``variant``'s anchors, reusing the prepared stage 1 and graph."""
    from capro.engine.runner import run_pipeline

    prepared = run_dir(work, profile, seed, "2k")
    run = prepared.parent / f"long-{variant}"
    donor = prepared.parent / f"long-{DONORS[variant]}" if variant in DONORS else prepared
    steps = ("text", "stage1", "features", "graph", "anchors", "match", "stage2") if variant in DONORS else (
        "text", "stage1", "features", "graph")
    if variant in DONORS and not (donor / "metrics.json").is_file():
        raise RuntimeError(f"run the {DONORS[variant]} variant of {profile} seed {seed} first")
    for step in steps:
        if (donor / step).is_dir() and not (run / step).exists():
            run.mkdir(parents=True, exist_ok=True)
            _link_tree(donor / step, run / step)
    overrides = [*run_overrides("2k", seed), *LONG_VARIANTS[variant]]
    cfg = load_config(preset="cpu", overrides=overrides)
    data = Path(read_json(prepared / "run.json")["data"])
    t0 = time.perf_counter()
    metrics = run_pipeline(data, run, cfg, resume=True, progress=False)
    fields = curve_fields(run)
    return {"val_stage_last": stage_last_val(run), "guard": metrics.get("fine_tune_guard"),
            "keep_rule": metrics.get("keep_rule"), "profile": profile, "seed": seed, "variant": variant, "overrides": list(LONG_VARIANTS[variant]),
            "val": row_metrics(metrics, split="val"), "test": row_metrics(metrics, split="test"),
            "val_best": fields["best"]["val_best"], "n_anchors": metrics["stages"].get("anchors", {}).get("n_anchors"),
            "wall_seconds": round(time.perf_counter() - t0, 1), "command_overrides": overrides,
            "machine": machine_info(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def stage_last_val(run: Path) -> dict[str, float | None]:
    """Validation top-1 at the last epoch of each training stage of ``run``."""
    curves = curve_fields(run)["curves"]
    last = {st: [v for s, v in zip(curves["stage"], curves["val_top1"]) if s == st][-1:]
            for st in ("stage1", "stage2", "stage3b")}
    return {st: (v[0] if v else None) for st, v in last.items()}


def long_and_save(work: Path, profile: str, seed: int, variants: list[str]) -> None:
    for variant in variants:
        done = read_json(LONG_OUT) if LONG_OUT.is_file() else {}
        key = f"{profile}_seed{seed}_{variant}"
        if key in done:
            continue
        res = run_long(work, profile, seed, variant)
        done = read_json(LONG_OUT) if LONG_OUT.is_file() else {}
        done[key] = res
        write_json(LONG_OUT, dict(sorted(done.items())))
        log(f"{key}: val {res['val']['top1']}, test {res['test']['top1']}, anchors "
            f"{res['val']['anchor_precision']}")


TABLE_RULES = ("paper", "d13", "d13+floor0", "d13+floor0.05", "d13+floor0.1")
RULE_NAMES = {"paper": "paper: top-K by distance", "d13": "D13: top-K by margin-aware softmax",
              "d13+floor0": "D13 + margin ≥ 0 (D16)", "d13+floor0.05": "D13 + margin ≥ 0.05",
              "d13+floor0.1": "D13 + margin ≥ 0.1"}
TEXT_NAMES = {"raw": "raw", "enhanced": "enhanced", "mixed25": "mixed 0.25 (D17)", "mixed50": "mixed 0.5",
              "fill": "own, enhanced where empty"}
DEFAULT = "d13+floor0/mixed25"


def rules_table(res: dict) -> str:
    """Markdown: anchor precision % (anchor count) of every rule x text variant x run."""
    order = {"web": 0, "hard": 1, "uneven": 2}
    keys = sorted(res, key=lambda k: (res[k]["size"] != "2k", order.get(res[k]["profile"], 9), res[k]["seed"]))
    head = [f"{res[k]['profile']} {res[k]['size']} s{res[k]['seed']}" for k in keys]
    lines = ["| anchors | texts | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(keys)]
    for rule in TABLE_RULES:
        for text in TEXT_NAMES:
            name = f"{rule}/{text}"
            cells = []
            for k in keys:
                r = res[k]["rules"].get(name)
                cells.append("–" if r is None else f"{100 * r['precision']:.1f} ({r['anchors']})")
            row = f"| {RULE_NAMES[rule]} | {TEXT_NAMES[text]} | " + " | ".join(cells) + " |"
            lines.append(row.replace("| D13 + margin ≥ 0 (D16) | mixed 0.25 (D17) |",
                                     "| **D13 + margin ≥ 0 (D16)** | **mixed 0.25 (D17): default** |"))
    return "\n".join(lines)


def long_table(res: dict) -> str:
    """Markdown: the long-regime ``capro-ft`` runs, validation top-1 at the last epoch."""
    lines = ["| profile, seed | anchors | anchor precision % | stage 2 val % | capro-ft val % (last) | "
             "best val % | test % (recorded, not used) |", "|---|---|---|---|---|---|---|"]
    for k in sorted(res, key=lambda k: (res[k]["profile"], res[k]["seed"], res[k]["variant"])):
        r = res[k]
        v, t = r["val"], r["test"]
        name = {"d13": "D13 alone", "d16": "D16 + D17, min 5", "d16m20": "D16 + D17, min 20",
                "rules": "D16 + D17 + D19", "rules+guard": "D16 + D17 + D19 + D18"}[r["variant"]]
        if r.get("keep_rule"):
            name += f" [{r['keep_rule']['chosen']}]"
        if r.get("guard"):
            name += f" [guard: {r['guard']['kept']}]"
        s2 = r.get("val_stage_last", {}).get("stage2")
        lines.append(f"| {r['profile']} {r['seed']} | {name} ({r['n_anchors']}) | "
                     f"{100 * v['anchor_precision']:.1f} | {'–' if s2 is None else f'{100 * s2:.1f}'} | "
                     f"{100 * v['top1']:.1f} | {100 * r['val_best']:.1f} | {100 * t['top1']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["prepare", "score", "long", "table"])
    p.add_argument("--profiles", nargs="+", default=["web", "hard", "uneven"])
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101])
    p.add_argument("--sizes", nargs="+", default=["2k", "20k"], choices=["2k", "20k"],
                   help="long: 2k only (the long size)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--variants", nargs="+", default=list(LONG_VARIANTS), choices=list(LONG_VARIANTS),
                   help="long: which anchor settings")
    args = p.parse_args(argv)
    if args.action == "table":
        update_markdown("anchor-rules", rules_table(read_json(OUT)))
        if LONG_OUT.is_file():
            res = read_json(LONG_OUT)
            for r in res.values():  # runs recorded before the field existed
                run = run_dir(args.work, r["profile"], r["seed"], "2k").parent / f"long-{r['variant']}"
                if "val_stage_last" not in r and run.is_dir():
                    r["val_stage_last"] = stage_last_val(run)
            write_json(LONG_OUT, res)
            update_markdown("anchor-rules-long", long_table(res))
        return 0
    for tag in args.sizes:
        for seed in args.seeds:
            for profile in args.profiles:
                if args.action == "prepare":
                    prepare(args.work, profile, seed, tag)
                elif args.action == "long":
                    long_and_save(args.work, profile, seed, args.variants)
                else:
                    score_and_save(args.work, profile, seed, tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
