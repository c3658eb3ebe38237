"""Performance benchmark: the ratios of benchmark.md, measured side by side in one process.

    python benchmarks/perf.py            # full sizes (~15-30 min on 2 cores)
    python benchmarks/perf.py --quick    # small sizes (~2 min)

Measured here:
- training-step overhead: a CAPro stage-2 step (flags exactly as the engine sets them late in
  stage 2: prototypes, prototype loss and update, online cleaning, collective bootstrapping) over
  a plain cross-entropy step (backbone + classifier, forward, backward, SGD), same model, batch and
  image size, on synthetic tensors (data loading excluded). A third variant, cross-entropy plus
  the key encoder's forward pass, is the floor any MoCo-style method pays. The variants are
  interleaved (the order rotates every repeat) and the median of the per-repeat ratios is kept;
- prototype momentum update: ``capro.prototypes.momentum_update`` vs the sequential loop it
  replaces (same result, checked);
- kNN: the torch backend vs faiss ``IndexFlatIP`` on the same synthetic features (L2-normalised
  points around N / 100 random centres; the overlap of the neighbour lists is reported).
Read from the other benchmarks' results (run them first, or pass ``--run-missing``):
``graph_rerank.json`` (re-ranking vectorised vs loop, ``graph_scale.py rerank``),
``graph_pipeline_<n>.json`` (graph stage at scale, ``graph_scale.py pipeline --n N``) and
``text_encoding.json`` (``text_encoding.py``).

Writes ``benchmarks/results/perf.json`` (``perf_quick.json``), ``benchmarks/perf.png`` and the
perf table in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, STEP_TARGET, machine_info, perf_ratios, update_markdown  # noqa: E402

from capro.utils.io import read_json, write_json  # noqa: E402

QUICK = {"step": {"repeats": 5, "steps": 3, "warmup": 2}, "proto_n": 5000, "knn_sizes": [5000, 20000],
         "loop_nodes": 300, "input": {"n": 512, "epochs": 2, "repeats": 1}}
FULL = {"step": {"repeats": 15, "steps": 5, "warmup": 3}, "proto_n": 20000,
        "knn_sizes": [50000, 200000], "loop_nodes": 2000, "input": {"n": 2000, "epochs": 4, "repeats": 2}}


def _timed(fn: Callable[[], Any], steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def step_overhead(*, backbone: str = "resnet18_tiny", batch: int = 64, image_size: int = 32,
                  channels: int = 1, num_classes: int = 10, repeats: int = 15, steps: int = 5,
                  warmup: int = 3, seed: int = 0) -> dict[str, Any]:
    """Seconds per step of plain CE, CE + key forward and a CAPro stage-2 step; median ratios."""
    from capro.config import load_config
    from capro.engine.stages import build_model, stage_flags

    torch.manual_seed(seed)
    cfg = load_config(preset="cpu", overrides=[f"model.backbone={backbone}",
                                                f"data.image_size={image_size}",
                                                f"data.channels={channels}"])
    model = build_model(cfg, num_classes, multi_label=False)
    model.train()
    z = F.normalize(torch.randn(num_classes * 8, cfg.model.low_dim), dim=1)
    model.initialise_prototypes(z, torch.arange(num_classes).repeat(8))
    flags = stage_flags("stage2", cfg.stage2, cfg, cfg.stage2.epochs - 1, prototypes_ready=True)
    params = [p for k, p in model.named_parameters() if not k.startswith("encoder_k.")]
    opt = torch.optim.SGD(params, lr=0.01, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    shape = (batch, channels, image_size, image_size)
    batch_data = {"img": torch.randn(shape), "img_aug": torch.randn(shape),
                  "target": torch.randint(0, num_classes, (batch,)),
                  "anchor": torch.rand(batch) < 0.1, "weight": torch.ones(batch)}

    def ce_step() -> None:
        loss = F.cross_entropy(model(batch_data["img"]), batch_data["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def floor_step() -> None:
        ce_step()
        with torch.no_grad():
            model.encoder_k(batch_data["img_aug"])

    def capro_step() -> None:
        out = model(batch_data, flags)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    variants = {"ce": ce_step, "ce_plus_key_forward": floor_step, "capro_stage2": capro_step}
    for fn in variants.values():
        _timed(fn, warmup)
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % 3:] + names[:r % 3]:
            times[name].append(_timed(variants[name], steps))
    ratio = [c / b for c, b in zip(times["capro_stage2"], times["ce"])]
    floor = [f / b for f, b in zip(times["ce_plus_key_forward"], times["ce"])]
    return {
        "backbone": backbone, "batch": batch, "image_size": image_size, "channels": channels,
        "num_classes": num_classes, "queue": cfg.model.queue, "repeats": repeats,
        "steps_per_repeat": steps, "flags": {k: v for k, v in vars(flags).items()},
        "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "seconds": times,
        "ratio_capro_over_ce": statistics.median(ratio),
        "ratio_capro_over_ce_iqr": [float(np.percentile(ratio, 25)), float(np.percentile(ratio, 75))],
        "ratio_floor_over_ce": statistics.median(floor),
        "target": STEP_TARGET,
    }


def momentum_update_loop(prototypes: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, *,
                         momentum: float) -> torch.Tensor:
    """The sequential rule: ``P[y_i] = m P[y_i] + (1 - m) z_i`` for each i in order, then L2-norm."""
    p = prototypes.clone()
    for i in range(z.shape[0]):
        c = int(labels[i])
        p[c] = momentum * p[c] + (1 - momentum) * z[i]
    return F.normalize(p, dim=1)


def prototype_update(*, n: int = 20000, num_classes: int = 1000, dim: int = 128,
                     momentum: float = 0.999, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Vectorised vs loop momentum update of [C, D] prototypes with N samples."""
    from capro.prototypes import momentum_update

    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    z = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    vec_s, loop_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        vec = momentum_update(protos, z, labels, momentum=momentum)
        vec_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = momentum_update_loop(protos, z, labels, momentum=momentum)
        loop_s.append(time.perf_counter() - t0)
    return {"n": n, "num_classes": num_classes, "dim": dim, "momentum": momentum,
            "vectorised_seconds": statistics.median(vec_s), "loop_seconds": statistics.median(loop_s),
            "speedup": statistics.median(loop_s) / statistics.median(vec_s),
            "max_abs_diff": float((vec - ref).abs().max())}


def knn_backends(sizes: list[int], *, dim: int = 128, k: int = 20) -> list[dict[str, Any]]:
    """Seconds of the torch and faiss kNN backends on the same synthetic features."""
    from capro.graph.knn import create_knn_backend, faiss_available, normalize_rows

    out = []
    for i, n in enumerate(sizes):
        rng = np.random.default_rng(i)
        centres = rng.standard_normal((max(n // 100, 2), dim), dtype=np.float32)
        x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, dim), dtype=np.float32)
        x = normalize_rows(x)
        row: dict[str, Any] = {"n": n, "dim": dim, "k": k}
        ids = {}
        order = ["torch", "faiss"] if i % 2 == 0 else ["faiss", "torch"]
        for name in order:
            if name == "faiss" and not faiss_available():
                continue
            t0 = time.perf_counter()
            ids[name], _ = create_knn_backend(name).search(x, k=k)
            row[f"{name}_seconds"] = time.perf_counter() - t0
        if len(ids) == 2:
            row["torch_over_faiss"] = row["torch_seconds"] / row["faiss_seconds"]
            row["neighbour_overlap"] = float(np.mean([len(np.intersect1d(a, b)) / k
                                                      for a, b in zip(ids["torch"], ids["faiss"])]))
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def _read(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return read_json(path) if path.is_file() else None


def imported_results(*, run_missing: bool, quick: bool, loop_nodes: int) -> dict[str, Any]:
    """The other benchmarks' results (re-ranking, graph scale, text encoding)."""
    if run_missing and _read("graph_rerank.json") is None:
        import graph_scale

        graph_scale.main(["rerank", *(["--n", "5000"] if quick else []), "--loop-nodes", str(loop_nodes)])
    if run_missing and _read("text_encoding.json") is None:
        import text_encoding

        write_json(text_encoding.RESULTS, text_encoding.run_benchmark(n_texts=1000 if quick else 5000))
    graph = sorted((read_json(p) for p in RESULTS.glob("graph_pipeline_*.json")),
                   key=lambda g: (g["n"], str(g.get("knn", ""))))
    return {"rerank": _read("graph_rerank.json"), "text_encoding": _read("text_encoding.json"),
            "graph_scale": graph, "price": _read("price.json")}


def perf_table(perf: dict[str, Any]) -> str:
    """Markdown: the ratio table, then the graph stage at scale."""
    lines = ["| measurement | ratio | target | detail |", "|---|---|---|---|"]
    st, pu, rr, te = (perf.get(k) for k in ("step_overhead", "prototype_update", "rerank", "text_encoding"))
    details = {}
    if st:
        ms = st["median_seconds"]
        details["train step: CAPro stage 2 / plain CE"] = (
            f"{st['backbone']}, batch {st['batch']}, {st['image_size']} px; median s/step: CE "
            f"{ms['ce']:.3f}, CE+key {ms['ce_plus_key_forward']:.3f}, CAPro {ms['capro_stage2']:.3f}; "
            f"IQR of ratio {st['ratio_capro_over_ce_iqr'][0]:.2f}–{st['ratio_capro_over_ce_iqr'][1]:.2f}")
    if pu:
        details[f"prototype update N={pu['n']}: loop / vectorised"] = (
            f"C={pu['num_classes']}, D={pu['dim']}: {pu['vectorised_seconds'] * 1000:.1f} ms vs "
            f"{pu['loop_seconds']:.2f} s; max abs diff {pu['max_abs_diff']:.1e}")
    if rr:
        details[f"re-ranking N={rr['n']}: loop / vectorised"] = (
            f"k={rr['k']}: {rr['vectorised_seconds']:.1f} s vs {rr['loop_seconds_extrapolated']:.0f} s "
            f"(loop timed on {rr['loop_nodes_timed']} nodes, extrapolated); max abs diff "
            f"{rr['max_abs_diff_on_timed_nodes']:.1e}")
    for row in perf.get("knn", []):
        if "torch_over_faiss" in row:
            details[f"kNN N={row['n']}: torch / faiss"] = (
                f"D={row['dim']}, k={row['k']}: torch {row['torch_seconds']:.1f} s, faiss "
                f"{row['faiss_seconds']:.1f} s; neighbour overlap {row['neighbour_overlap']:.4f}")
    if te:
        details["text encoding: capro / sentence-transformers"] = (
            f"{te['texts']} texts, MiniLM: {te['capro_texts_per_s']} vs {te['direct_texts_per_s']} texts/s; "
            f"max abs diff {te['max_abs_diff']:.1e}")
    for label, value, target in perf_ratios(perf):
        lines.append(f"| {label} | {value:.2f}× | {'≤ ' + format(target, '.2f') + '×' if target else ''} "
                     f"| {details.get(label, '')} |")
    price = perf.get("price") or {}
    for code in ("after", "before"):
        rows = price.get(code, {})
        for val, what in (("no-val", "held-out rows"), ("val", "`val.jsonl`")):
            r = rows.get(val, {})
            if "ce" in r and "capro-ft" in r:
                ratio = r["capro-ft"]["wall_seconds"] / r["ce"]["wall_seconds"]
                lines.append(f"| whole run ({rows.get('label', code)}, {what}): `capro-ft` / `ce` | {ratio:.2f}× | "
                             f"≤ 1.40× | long protocol, one thread: {r['capro-ft']['wall_seconds']:.0f} vs "
                             f"{r['ce']['wall_seconds']:.0f} s (`price.py`) |")
    graph = perf.get("graph_scale") or []
    if graph:
        lines += ["", "| graph stage N | kNN | kNN s | re-rank s | enhance s | total s | peak RSS GiB |",
                  "|---|---|---|---|---|---|---|"]
        for g in graph:
            s = g["stages"]
            knn = next(v for k, v in s.items() if k.startswith("knn"))
            lines.append(f"| {g['n']:,} | {g.get('knn', 'exact')} ({g['backend']}) | {knn['seconds']:.0f} | "
                         f"{s['rerank']['seconds']:.0f} | {s['enhance']['seconds']:.0f} | "
                         f"{g['pipeline_seconds']:.0f} | {g['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


INPUT_CASES = (
    # (name, stage, image size, backbone): the long protocol's rows and a heavier step
    ("ce_16px_simple_cnn", "ce", 16, "simple_cnn"),
    ("stage2_16px_simple_cnn", "stage2", 16, "simple_cnn"),
    ("stage2_32px_resnet18_tiny", "stage2", 32, "resnet18_tiny"),
)
INPUT_TARGETS = {"ce_16px_simple_cnn": 2.0, "stage2_16px_simple_cnn": 1.5, "stage2_32px_resnet18_tiny": 1.3}
"""Whole-epoch speed-ups (per-image path over batched path) the input path must reach."""
BARE_TARGET = 1.8
"""A long-protocol ``ce`` epoch may cost at most this many times the bare model steps."""


def _input_data(root: Path, image_size: int, n: int) -> Path:
    from capro.data.simulate import simulate

    data = root / f"data{image_size}"
    if not (data / "train.jsonl").is_file():
        simulate(data, profile="web", seed=0, train_size=n, val_size=20, test_size=20,
                 image_size=image_size, progress=False)
    return data


def _epoch_seconds(data: Path, run: Path, *, stage: str, image_size: int, backbone: str, augment: str,
                   epochs: int) -> tuple[list[float], list[dict[str, str]]]:
    """Train ``epochs`` epochs of ``stage`` (``ce``: stage 1 as the ``ce`` row; ``stage2``: CAPro
    with prototypes, cleaning and bootstrapping from epoch 1) with the engine; per-epoch seconds."""
    import csv
    import shutil

    from capro.config import load_config
    from capro.data.layout import read_classes, read_split
    from capro.engine.distributed import DistInfo
    from capro.engine.stages import RunContext, build_model, train_stage

    shutil.rmtree(run, ignore_errors=True)
    over = [f"data.image_size={image_size}", f"model.backbone={backbone}", "model.queue=256",
            "data.workers=0", f"data.augment={augment}", "stage1.batch_size=128", "stage2.batch_size=128",
            f"stage1.epochs={epochs}", f"stage2.epochs={epochs}", "stage2.frozen_encoder_epoch=0",
            "stage2.init_proto_epoch=0", "stage2.start_clean_epoch=0"]
    if stage == "ce":
        over += ["method.bootstrap=none", "stage1.w_inst=0", "stage1.w_recn=0"]
    cfg = load_config(preset="cpu", overrides=over)
    classes = read_classes(data)
    train = read_split(data, "train", classes)
    ctx = RunContext(cfg=cfg, data_root=data, run_dir=run, dist=DistInfo(0, 1, 0, torch.device("cpu")),
                     classes=classes, train=train, multi_label=False)
    torch.manual_seed(0)
    model = build_model(cfg, len(classes), multi_label=False)
    name = "stage1" if stage == "ce" else "stage2"
    domain = None
    if stage == "stage2":
        domain = (np.random.default_rng(0).random(len(train)) < 0.1).astype(np.int8)
    train_stage(ctx, name, getattr(cfg, name), model=model, dataset=ctx.train_dataset(domain=domain),
                fingerprint="perf", domain=domain)
    with open(run / name / "log.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["seconds"]) for r in rows], rows


def bare_steps(*, image_size: int, backbone: str, steps: int, batch: int = 128, repeats: int = 3) -> float:
    """Median seconds of ``steps`` CE steps (backbone + linear head, forward, backward, SGD) on
    ready tensors: the floor an epoch of the ``ce`` row could reach."""
    from capro.config import load_config
    from capro.engine.stages import build_model

    cfg = load_config(preset="cpu", overrides=[f"model.backbone={backbone}", f"data.image_size={image_size}"])
    torch.manual_seed(0)
    model = build_model(cfg, 10, multi_label=False)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 1, image_size, image_size), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    _timed(step, 2)
    return statistics.median(_timed(step, steps) * steps for _ in range(repeats))


def input_path(*, n: int = 2000, epochs: int = 4, repeats: int = 2, workdir: Path | None = None) -> dict[str, Any]:
    """Whole training epochs on the per-image path vs the batched path, interleaved, same process.

    Epoch 0 of each run is left out of the medians (it builds the image store on the batched
    path and initialises the prototypes in stage 2); it is reported as ``first_epoch_seconds``.
    """
    import tempfile

    root = Path(workdir or tempfile.mkdtemp(prefix="capro-input-"))
    out: dict[str, Any] = {"n_train": n, "epochs_per_run": epochs, "repeats": repeats,
                           "threads": torch.get_num_threads(), "cases": {}}
    for name, stage, size, backbone in INPUT_CASES:
        data = _input_data(root, size, n)
        seconds: dict[str, list[float]] = {"per_image": [], "batch": []}
        first: dict[str, list[float]] = {"per_image": [], "batch": []}
        rates: dict[str, dict[str, float]] = {}
        for r in range(repeats):
            for augment in (("per_image", "batch") if r % 2 == 0 else ("batch", "per_image")):
                secs, rows = _epoch_seconds(data, root / "run", stage=stage, image_size=size,
                                            backbone=backbone, augment=augment, epochs=epochs)
                first[augment].append(secs[0])
                seconds[augment] += secs[1:]
                rates[augment] = {k: statistics.median(float(x[k]) for x in rows[1:])
                                  for k in ("input_img_s", "step_img_s")}
        med = {k: statistics.median(v) for k, v in seconds.items()}
        case = {"stage": stage, "image_size": size, "backbone": backbone,
                "epoch_seconds": med, "first_epoch_seconds": {k: statistics.median(v) for k, v in first.items()},
                "all_epoch_seconds": seconds, "images_per_second": rates,
                "speedup": med["per_image"] / med["batch"], "target": INPUT_TARGETS[name]}
        if stage == "ce":
            steps = n // 128
            bare = bare_steps(image_size=size, backbone=backbone, steps=steps)
            case.update(bare_steps_seconds=bare, steps=steps,
                        ratio_epoch_over_bare={k: v / bare for k, v in med.items()}, bare_target=BARE_TARGET)
        out["cases"][name] = case
        print(json.dumps({name: {k: v for k, v in case.items() if k != "all_epoch_seconds"}}), flush=True)
    return out


def input_table(perf: dict[str, Any]) -> str:
    """Markdown: whole-epoch seconds of each case on both paths, the speed-up and its target."""
    cases = perf.get("input_path", {}).get("cases", {})
    if not cases:
        return ""
    lines = ["| case | per-image path (s/epoch) | batched path (s/epoch) | speed-up | target | "
             "batched: input img/s | batched: step img/s |", "|---|---|---|---|---|---|---|"]
    for name, c in cases.items():
        e, r = c["epoch_seconds"], c["images_per_second"]["batch"]
        lines.append(f"| `{name}` | {e['per_image']:.2f} | {e['batch']:.2f} | {c['speedup']:.2f}x | "
                     f">= {c['target']}x | {r['input_img_s']:,.0f} | {r['step_img_s']:,.0f} |")
    for name, c in cases.items():
        if "bare_steps_seconds" in c:
            ratio = c["ratio_epoch_over_bare"]
            lines.append(f"\n`{name}`: {c['steps']} bare CE steps on ready tensors take "
                         f"{c['bare_steps_seconds']:.2f} s; an epoch costs {ratio['batch']:.2f}x that on the "
                         f"batched path (target <= {c['bare_target']}x) and {ratio['per_image']:.2f}x on the "
                         "per-image path.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (minutes)")
    p.add_argument("--only", nargs="+", choices=["step", "proto", "knn", "input", "price"],
                   help="measure only these (the others are kept from the previous result file)")
    p.add_argument("--run-missing", action="store_true",
                   help="run the re-ranking and text-encoding benchmarks when their results are absent")
    p.add_argument("--no-markdown", action="store_true")
    p.add_argument("--step-repeats", type=int, help="interleaved repeats of the step timing")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice, the core count)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    name = "perf_quick" if args.quick else "perf"
    path = RESULTS / f"{name}.json"
    perf: dict[str, Any] = read_json(path) if args.only and path.is_file() else {}
    todo = set(args.only or ["step", "proto", "knn", "input"])
    if "step" in todo:
        step_sizes = {**sizes["step"], **({"repeats": args.step_repeats} if args.step_repeats else {})}
        perf["step_overhead"] = step_overhead(**step_sizes)
        print(json.dumps({k: v for k, v in perf["step_overhead"].items() if k != "seconds"}), flush=True)
    if "proto" in todo:
        perf["prototype_update"] = prototype_update(n=sizes["proto_n"])
        print(json.dumps(perf["prototype_update"]), flush=True)
    if "knn" in todo:
        perf["knn"] = knn_backends(sizes["knn_sizes"])
    if "input" in todo:
        perf["input_path"] = input_path(**sizes["input"])
    if "price" in todo and not args.quick:  # whole runs, each a fresh process (benchmarks/price.py)
        import price

        price.main(["--markdown"] if not args.no_markdown else [])
    perf.update(imported_results(run_missing=args.run_missing, quick=args.quick,
                                 loop_nodes=sizes["loop_nodes"]))
    perf["machine"] = machine_info()
    perf["size"] = "quick" if args.quick else "full"
    write_json(path, perf)
    if not args.no_markdown:
        from plots import plot_perf

        plot_perf(perf_ratios(perf), HERE / f"{name}.png",
                  title=f"capro performance ratios ({perf['size']} sizes, 2-core CPU)")
        if not args.quick:
            update_markdown("perf", perf_table(perf))
            if perf.get("input_path"):
                update_markdown("input", input_table(perf))
    print(perf_table(perf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
