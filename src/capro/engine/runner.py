"""``run_pipeline``: every step of a CAPro run, in order, skipping the ones already finished.

    text -> stage1 -> features -> anchors (graph + match) -> stage2 -> stage3a -> stage3b

Each step has a fingerprint (its config section chained to the previous step's fingerprint and
the training manifest); a finished step with the same fingerprint is skipped on rerun. With
``resume`` an interrupted training stage continues from its last checkpoint. ``stageN.epochs=0``
skips a training stage (stage 3 needs stage 2); ``method.prototypes=all`` (MoPro) skips the text
and graph steps. Multi-label data (labels given as lists, or ``method.multi_label``) runs the
same steps: [N, C] anchors (positive and negative), per-class BCE weights
``sqrt((N - n_c) / n_c)`` from the web-label counts, per-class cleaning, and every sample
weighing 1 (D5: the released inverse-frequency sample weights are not applied). With
``DATA/openset_test.jsonl`` (single-label), each stage's model and the final one are also scored
for open-set recognition (``metrics["openset"]``). Results: ``RUN/metrics.json`` and
``RUN/model.pt`` (final weights, classes and config, for ``capro evaluate`` / ``capro predict``).

Examples:
    >>> cfg = load_config(preset="tiny")
    >>> metrics = run_pipeline("data/", "runs/tiny", cfg)
    >>> metrics["eval"]["test"]["top1"]
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capro.config import ONLINE_KEEP_RULES, Config, StageConfig, save_config, to_dict
from capro.data.channels import resolve_channels
from capro.data.layout import ClassInfo, Split, available_splits, read_classes
from capro.data.validate import load_split_for_run, read_truth
from capro.engine.artefacts import write_run_artefacts
from capro.engine.averaging import ema_horizon
from capro.engine.checkpoint import load_checkpoint, seed_everything
from capro.engine.distributed import DistInfo, amp_dtype, init_distributed, peer_failures
from capro.engine.evaluate import OPENSET_FILE, evaluate_model, evaluate_openset
from capro.engine.loop import CleaningState, stderr_isatty
from capro.engine.selection import EpochScorer, close_call, describe_close_call
from capro.engine.signals import Preempted
from capro.engine.stages import (
    OfflineCleaning,
    RunContext,
    anchor_mask,
    build_model,
    dump_features,
    load_weights,
    model_parts,
    offline_clean,
    train_stage,
)
from capro.engine.threads import set_threads
from capro.engine.validation import (
    HOLDOUT,
    HOLDOUT_DRAW,
    Validation,
    resolve_validation,
    text_verified,
    trained_split,
)
from capro.errors import CaproError
from capro.eval.noise import anchor_precision, memorisation, noise_detection, relabel_accuracy
from capro.model.capro import CAPro
from capro.utils.cache import file_digest, fingerprint, is_done, mark_done
from capro.utils.dist import barrier, broadcast_object
from capro.utils.io import atomic_write, link_tree, read_json, write_json, write_jsonl
from capro.utils.progress import progress as log_progress

MODEL_FILE = "model.pt"


LATER_KEYS: dict[str, dict[str, Any]] = {"data": {"augment": "per_image", "cache_size": 0},
                                         "method": {"keep_th": None, "keep_top": 0},
                                         "clean": {"stage2_checkpoint": "kept", "guard": True, "keep_rules": []},
                                         "graph": {"self_weight": 0.0, "index": "auto", "exact_max": 200_000,
                                                   "nlist": 0, "nprobe": 32, "hnsw_m": 32, "ef_search": 128,
                                                   "recall_queries": 1000},
                                         "match": {"score": "distance", "temperature": 0.05,
                                                   "min_margin": None, "min_anchors": 20},
                                         **{stage: {"ema_epochs": 0.0, "ema_max_share": 0.05}
                                            for stage in ("stage1", "stage2", "stage3")}}
"""Config keys added after runs were fingerprinted without them, with their default: at that
default they stay out of the fingerprint, so runs made before the key existed still count as
finished (and resume) under the newer code."""


def _fingerprints(cfg: Config, data_root: Path, n_train: int, val_split: str | None = None,
                  window: int = 1) -> dict[str, str]:
    def d(name: str) -> dict[str, Any]:
        """Config section ``name`` as the fingerprint sees it."""
        section = getattr(cfg, name)
        out = dataclasses.asdict(section)
        for key, default in LATER_KEYS.get(name, {}).items():
            if out.get(key) == default:
                out.pop(key)
        if isinstance(section, StageConfig):  # D24: a capped average trains otherwise than before
            horizon = ema_horizon(section.ema_epochs, section.epochs, section.ema_max_share)
            if horizon != section.ema_epochs:
                out["ema_horizon"] = horizon
        return out

    base = {
        "seed": cfg.seed, "n_train": n_train,
        "train_file": file_digest(data_root / "train.jsonl"),
        "data": {k: v for k, v in d("data").items() if k not in ("workers", "check_images", "skip_bad", "cache", "cache_ram_mb",
                                                                    "cache_disk_gb")},
        # method.keep_rules (D21) acts from stage 2 on: it is in stage 2's fingerprint only
        "model": d("model"), "method": {k: v for k, v in d("method").items() if k != "keep_rules"},
        # val_split as resolved (``auto`` with val.jsonl is ``val``, the fingerprint it had before
        # the key took ``auto``); a held-out split adds how it was drawn
        "train": {**{k: getattr(cfg.train, k) for k in ("momentum", "weight_decay", "amp", "max_steps_per_epoch",
                                                        "keep", "val_every")}, "val_split": val_split or "none"},
    }
    if val_split == HOLDOUT:
        base["train"].update(holdout=cfg.train.holdout, holdout_max=cfg.train.holdout_max)
        if cfg.train.holdout_from != "any":  # the rule before D20 keeps its fingerprint
            base["train"].update(holdout_from=cfg.train.holdout_from)
    if window != 1:  # D23's window as resolved; 1 keeps the fingerprint runs had before it
        base["train"].update(select_window=window)
    fps = {"stage1": fingerprint({"base": base, "stage": d("stage1")})}
    fps["features"] = fingerprint({"up": fps["stage1"], "step": "features"})
    fps["anchors"] = fingerprint({"up": fps["features"], "text": d("text"), "graph": d("graph"),
                                  "match": d("match")})
    rules = {"keep_rules": list(cfg.method.keep_rules)} if cfg.method.keep_rules else {}
    fps["stage2"] = fingerprint({"up": fps["anchors"], "stage": d("stage2"), **rules})
    fps["stage3a"] = fingerprint({"up": fps["stage2"], "clean": d("clean")})
    fps["stage3b"] = fingerprint({"up": fps["stage3a"], "stage": d("stage3")})
    return fps


def _eval_splits(data_root: Path, cfg: Config) -> list[str]:
    """The evaluation splits present, the configured one first."""
    present = [s for s in available_splits(data_root) if s != "train"]
    return sorted(present, key=lambda s: (s != cfg.train.eval_split, s))


def _save_model(path: Path, model: CAPro, classes: list[ClassInfo], cfg: Config, *, stage: str,
                multi_label: bool) -> None:
    with atomic_write(path, "wb") as fh:
        torch.save({"model": model.state_dict(), "classes": [dataclasses.asdict(c) for c in classes],
                    "config": to_dict(cfg), "stage": stage, "multi_label": multi_label}, fh)


def load_run_model(run_dir: str | os.PathLike, device: torch.device | str = "cpu"
                   ) -> tuple[CAPro, list[ClassInfo], Config, bool]:
    """The final model of a run (``RUN/model.pt``) in eval mode, its classes, config and multi-label flag."""
    from capro.config import config_from_dict

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise CaproError(f"{path}: not found; finish the run first (`capro run DATA --out {run_dir} --resume`)")
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    classes = [ClassInfo(**c) for c in state["classes"]]
    model = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None)),
                        len(classes), multi_label=bool(state["multi_label"]))
    load_weights(model, state["model"])
    model.to(device).eval()
    return model, classes, cfg, bool(state["multi_label"])


class _Pipeline:
    """State shared by the steps of one run (see :func:`run_pipeline`)."""

    def __init__(self, ctx: RunContext, fps: dict[str, str], validation: Validation | None = None) -> None:
        self.ctx, self.fps = ctx, fps
        self.validation = validation or Validation(None, ctx.train, [])
        self.stages: dict[str, dict[str, Any]] = {}
        self.eval_split = next(iter(_eval_splits(ctx.data_root, ctx.cfg)), None)
        self.eval_sets: dict[str, Any] = {}
        self._scorer: EpochScorer | None = None
        self.guard: dict[str, Any] | None = None
        self.keep_rule: dict[str, Any] | None = None
        self.online_rule: dict[str, Any] | None = None
        self.encoded_superset: Split | None = None
        """The training rows before the held-out split was drawn, when their texts were encoded
        to draw it (D20): the text step takes its rows from there."""

    def dir(self, name: str) -> Path:
        return self.ctx.run_dir / name

    def done(self, name: str) -> bool:
        return is_done(self.dir(name), self.fps[name])

    def finish(self, name: str, seconds: float, **info: Any) -> None:
        self.stages[name] = {"seconds": round(seconds, 3), **info}
        if self.ctx.is_main:
            mark_done(self.dir(name), self.fps[name], **self.stages[name])
        barrier()

    def cached(self, name: str) -> None:
        info = read_json(self.dir(name) / "done.json")
        info.pop("fingerprint", None)
        self.stages[name] = info

    def eval_set(self, split: str):
        """The evaluation dataset of ``split`` (read and validated once)."""
        ctx = self.ctx
        if split == HOLDOUT and self.validation.holdout and split not in self.eval_sets:
            self.eval_sets[split] = ctx.eval_dataset(self.validation.holdout)
        if split not in self.eval_sets:
            records = load_split_for_run(ctx.data_root, split, run_dir=ctx.run_dir,
                                         skip_bad=ctx.cfg.data.skip_bad,
                                         check_images=ctx.cfg.data.check_images, classes=ctx.classes)
            self.eval_sets[split] = ctx.eval_dataset(records.records)
        return self.eval_sets[split]

    def scorer(self) -> EpochScorer | None:
        """The per-epoch scorer (every rank holds one and scores its slice): ``train.val_split``
        (selects) and ``train.curve_splits`` that DATA has; None when there is nothing to score."""
        ctx, tc = self.ctx, self.ctx.cfg.train
        if tc.val_every == 0:
            return None
        if self._scorer is None:
            present = set(available_splits(ctx.data_root)) - {"train"}
            select = self.validation.split
            names = list(dict.fromkeys([*([select] if select else []), *tc.curve_splits]))
            held = {HOLDOUT} if self.validation.split == HOLDOUT else set()
            missing = [s for s in names if s not in present | held]
            if missing:
                raise CaproError(f"train.curve_splits names {missing[0]!r}, but {ctx.data_root} has no "
                                 f"{missing[0]}.jsonl; remove it or add the split")
            if not names:
                return None
            self._scorer = EpochScorer({s: self.eval_set(s) for s in names}, select, ctx.multi_label,
                                       every=tc.val_every, window=self.validation.window,
                                       device=ctx.dist.device, batch_size=tc.eval_batch_size, workers=ctx.cfg.data.workers,
                                       amp=ctx.amp)
        return self._scorer

    def evaluate(self, model: CAPro, split: str) -> dict:
        """Metrics of ``model`` on ``split``; every rank calls, scores its slice and gets them all."""
        ctx = self.ctx
        return evaluate_model(model, self.eval_set(split), multi_label=ctx.multi_label,
                              device=ctx.dist.device, batch_size=ctx.cfg.train.eval_batch_size,
                              workers=ctx.cfg.data.workers, amp=ctx.amp, show_progress=ctx.progress,
                              desc=f"eval {split}", sharded=True)

    def openset(self, model: CAPro) -> dict:
        """{"openset": metrics} on ``DATA/openset_test.jsonl`` for a single-label run; {} without it."""
        ctx = self.ctx
        if ctx.multi_label or not (ctx.data_root / OPENSET_FILE).is_file():
            return {}
        return {"openset": evaluate_openset(
            model, ctx.data_root, ctx.classes, size=ctx.cfg.data.image_size, channels=ctx.cfg.data.channels,
            device=ctx.dist.device, batch_size=ctx.cfg.train.eval_batch_size, workers=ctx.cfg.data.workers,
            amp=ctx.amp, on_bad_image=ctx.cfg.train.on_bad_image)}

    def stage_eval(self, model: CAPro) -> dict:
        """Metrics of ``model`` on the evaluation split (every rank scores its slice) and the
        open-set manifest (rank 0); {} without them."""
        out = self.openset(model) if self.ctx.is_main else {}
        if self.eval_split is not None:
            out["eval"] = {self.eval_split: self.evaluate(model, self.eval_split)}
        return out

    def train(self, name: str, st, model: CAPro, *, dataset, domain=None) -> CleaningState:
        """Run (or resume, or skip when done) a training stage; ``model`` ends with its weights."""
        path = self.dir(name) / "checkpoint.pt"
        if self.done(name) and path.is_file():
            self.cached(name)
            ck = load_checkpoint(path)
            load_weights(model, ck["model"])
            model.to(self.ctx.dist.device)
            return CleaningState.from_state(ck["cleaning"])
        t0 = time.perf_counter()
        cleaning, best = train_stage(self.ctx, name, st, model=model, dataset=dataset,
                                     fingerprint=self.fps[name], domain=domain, scorer=self.scorer())
        elapsed = load_checkpoint(path)["elapsed"] if self.ctx.is_main else time.perf_counter() - t0
        selection = {}
        if best.epoch is not None:
            kept = best.epoch if self.ctx.cfg.train.keep == "best" else st.epochs - 1
            selection = {"kept_epoch": kept, "best_epoch": best.epoch, "best_val": best.score}
        self.finish(name, elapsed, epochs=st.epochs, **selection, **self.stage_eval(model))
        return cleaning


def _features(p: _Pipeline, model: CAPro) -> np.ndarray:
    """[N, F] stage-1 features of the training split, memory-mapped from ``RUN/features/stage1.npy``
    (every rank extracts its slice, rank 0 assembles them)."""
    path = p.dir("features") / "stage1.npy"
    if broadcast_object(p.done("features") and path.is_file()):
        p.cached("features")
        return np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    feats = dump_features(p.ctx, model, path, tag=p.fps["features"][:16])
    p.stages["features"] = {"seconds": round(time.perf_counter() - t0, 3), "world_size": p.ctx.dist.world_size}
    if p.ctx.is_main:
        mark_done(p.dir("features"), p.fps["features"], **p.stages["features"])
    return feats


def _anchors(p: _Pipeline, stage1_model: CAPro) -> tuple[np.ndarray, np.ndarray | None]:
    """Anchors (``domain`` [N] int8, multi-label [N, C]) and text distances. The passes over the
    data (text encoding, features) are shared by all ranks; rank 0 builds the graph and matches;
    all load the result."""
    from capro.text.pipeline import class_prototypes, encode_split_texts

    ctx = p.ctx
    path = p.dir("anchors") / "anchors.npz"
    if broadcast_object(not (p.done("anchors") and path.is_file())):
        t0 = time.perf_counter()
        text_emb = encode_split_texts(ctx.cfg, ctx.train, ctx.run_dir, subset_of=p.encoded_superset)
        t_text = time.perf_counter() - t0
        feats = _features(p, stage1_model)
        if ctx.is_main:
            from capro.graph.offline import build_anchors

            t1 = time.perf_counter()
            protos = class_prototypes(ctx.cfg, ctx.classes, ctx.run_dir)
            res = build_anchors(ctx.cfg, ctx.train, np.asarray(feats), np.asarray(text_emb),
                                np.asarray(protos), ctx.run_dir, seed=ctx.cfg.seed)
            dist = res.text_distance if res.text_distance is not None else np.full(len(ctx.train), np.nan)
            with atomic_write(path, "wb", encoding=None) as fh:
                np.savez(fh, domain=np.asarray(res.domain, np.int8), text_distance=np.asarray(dist, np.float32))
            p.stages["text"] = {"seconds": round(t_text, 3), "world_size": ctx.dist.world_size}
            p.stages["anchors"] = {"seconds": round(time.perf_counter() - t1, 3),
                                   "n_anchors": int(anchor_mask(np.asarray(res.domain)).sum())}
            mark_done(p.dir("anchors"), p.fps["anchors"], **p.stages["anchors"], text_seconds=round(t_text, 3))
    barrier()
    if "anchors" not in p.stages:
        p.cached("anchors")
        if "features" not in p.stages and (p.dir("features") / "done.json").is_file():
            p.cached("features")
    with np.load(path) as z:
        domain, dist = z["domain"], z["text_distance"]
    return domain, (None if np.isnan(dist).all() else dist)


def _offline_clean(p: _Pipeline, model: CAPro, domain, text_distance) -> OfflineCleaning:
    """Stage 3a: every rank scores its slice of the images, rank 0 writes the verdicts, all load them."""
    path = p.dir("stage3a") / "verdicts.npz"
    ctx = p.ctx
    if broadcast_object(not (p.done("stage3a") and path.is_file())):
        t0 = time.perf_counter()
        verdict = offline_clean(ctx, model, domain, text_distance)
        if verdict is not None:  # rank 0
            with atomic_write(path, "wb", encoding=None) as fh:
                np.savez(fh, target=verdict.target, clean=verdict.clean, relabeled=verdict.relabeled)
            write_json(p.dir("stage3a") / "summary.json", verdict.counts())
            p.stages["stage3a"] = {"seconds": round(time.perf_counter() - t0, 3), **verdict.counts()}
            mark_done(p.dir("stage3a"), p.fps["stage3a"], **p.stages["stage3a"])
    barrier()
    if "stage3a" not in p.stages:
        p.cached("stage3a")
    with np.load(path) as z:
        return OfflineCleaning(z["target"], z["clean"], z["relabeled"])


def _clean_and_fine_tune(p: _Pipeline, model: CAPro, domain, text_distance) -> OfflineCleaning:
    """Stage 3a (offline cleaning) then stage 3b (the fine-tune on the kept rows) into ``model``."""
    ctx = p.ctx
    verdict = _offline_clean(p, model, domain, text_distance)
    keep = np.flatnonzero(verdict.clean)
    if keep.size == 0:
        raise CaproError("stage 3a removed every training sample; raise clean.pseudo_th or check the data")
    ds = ctx.train_dataset(records=[ctx.train.records[i] for i in keep], indices=keep,
                           targets=verdict.target[keep])
    p.train("stage3b", ctx.cfg.stage3, model, dataset=ds)
    return verdict


def _branch(p: _Pipeline, rule: str, where: str, fps: dict[str, str]) -> _Pipeline:
    """A pipeline for the steps ``fps`` names under ``RUN/<where>/<rule>/``, with ``rule`` as the
    method's keep rule; it shares ``p``'s validation, scorer and evaluation sets."""
    from capro.engine.keep_rules import rule_method

    ctx = p.ctx
    sub_cfg = dataclasses.replace(ctx.cfg, method=rule_method(ctx.cfg.method, rule))
    sub = _Pipeline(dataclasses.replace(ctx, cfg=sub_cfg, run_dir=ctx.run_dir / where / rule), fps, p.validation)
    sub._scorer, sub.eval_sets, sub.eval_split = p.scorer(), p.eval_sets, p.eval_split
    if ctx.is_main:
        sub.ctx.run_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    return sub


def _go_on_with(p: _Pipeline, sub: _Pipeline, stages: tuple[str, ...], model: CAPro,
                scores: dict[str, float | None], chosen: str, what: str,
                correct: dict[str, np.ndarray | None], close: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put the chosen branch ``sub``'s last stage into ``model`` on every rank, publish its
    ``stages`` as the run's own (rank 0) and log every candidate's score; return how close the
    choice was (:func:`~capro.engine.selection.close_call` of ``correct``, each candidate's
    per-row correctness on the selecting split, unless ``close`` says it already)."""
    load_weights(model, load_checkpoint(sub.dir(stages[-1]) / "checkpoint.pt")["model"])
    model.to(p.ctx.dist.device)
    close = close_call(scores, chosen, correct) if close is None else close
    if p.ctx.is_main:
        for stage in stages:
            _publish(sub.dir(stage), p.dir(stage))
        scorer = p.scorer()
        log_progress(f"{what}: " + ", ".join(
            f"{r} {'n/a' if v is None else f'{v:.4f}'}" for r, v in scores.items()) + f" on "
            f"{scorer.select if scorer is not None else 'no split'}; kept {chosen}{describe_close_call(close)}")
    barrier()
    p.stages.update({stage: sub.stages[stage] for stage in stages})
    return close


def _goes_on_from_best(cfg: Config) -> bool:
    """Whether the run goes on with stage 2's best epoch: it keeps it, or cleans offline from it (D12)."""
    return cfg.train.keep == "best" or (cfg.stage3.epochs > 0 and cfg.clean.stage2_checkpoint == "best")


def _stage2_score(sub: _Pipeline, model: CAPro, scorer: EpochScorer, *,
                  rows: bool) -> tuple[float | None, np.ndarray | None]:
    """The validation score of the stage-2 weights the run goes on with: the best epoch's when the
    run keeps it or cleans offline from it (D12), else that of ``model`` (what stage 2 handed on);
    with ``rows``, also those weights' per-row correctness on the selecting split
    (:meth:`~capro.engine.selection.EpochScorer.select_rows`). Every rank calls."""
    info = sub.stages.get("stage2", {})
    best = sub.dir("stage2") / "best.pt"
    if not (_goes_on_from_best(sub.ctx.cfg) and info.get("best_val") is not None):
        score, correct = scorer.select_rows(model)
        return score, correct if rows else None
    if not (rows and best.is_file()):
        return float(info["best_val"]), None
    weights = copy.deepcopy(model)
    load_weights(weights, load_checkpoint(best)["model"])
    return float(info["best_val"]), scorer.select_rows(weights.to(sub.ctx.dist.device))[1]


def _choose_online_rule(p: _Pipeline, model: CAPro, domain) -> CleaningState:
    """D21: one stage 2 per ``method.keep_rules`` entry, each in ``RUN/online_rules/<rule>/`` and
    from the stage-1 weights ``model`` holds now, with the same anchors; the chosen rule's stage 2
    is published as ``RUN/stage2`` and left in ``model``. With ``method.rule_probe_epochs`` the
    rules first train a short probe (:func:`_probe_online_rules`); when it decides, only the
    chosen rule trains to the end. Otherwise every rule trains its full stage 2 and the one whose
    stage-2 model scores best on the selecting split (:func:`_stage2_score`) is chosen. Without a
    selecting split only the first rule trains. Every rule's score and online-cleaning counts go
    to ``p.online_rule`` (``metrics.json``: ``online_rule``)."""
    from capro.engine.keep_rules import choose

    ctx, cfg = p.ctx, p.ctx.cfg
    scorer = p.scorer()
    rules = list(cfg.method.keep_rules)
    selects = scorer is not None and scorer.column is not None
    if not selects:
        if len(rules) > 1 and ctx.is_main and rules != list(ONLINE_KEEP_RULES):
            warnings.warn(f"method.keep_rules: no validation split is scored, so stage 2 trains with "
                          f"the first rule only ({rules[0]})", stacklevel=2)
        rules = rules[:1]
    start = copy.deepcopy(model.state_dict())
    dataset = ctx.train_dataset(domain=domain)
    subs = {rule: _branch(p, rule, "online_rules", {"stage2": fingerprint({"up": p.fps["stage2"], "rule": rule})})
            for rule in rules}
    split_at = _rules_split_at(cfg.stage2)
    probe = cfg.method.rule_probe_epochs
    record: dict[str, Any] | None = None
    if len(rules) > 1 and probe > 0 and split_at is not None and split_at + probe < cfg.stage2.epochs:
        record, _ = _probe_online_rules(p, model, domain, subs, dataset, split_at)
        for sub in subs.values():  # each rule's stage 2 goes on from the end of its probe
            sub.ctx = dataclasses.replace(sub.ctx, resume=True)
        if record["decided"]:
            rules = [record["chosen"]]
    runs: dict[str, CleaningState] = {}
    scores: dict[str, float | None] = {}
    correct: dict[str, np.ndarray | None] = {}
    for rule in rules:
        model.load_state_dict(start)
        runs[rule] = subs[rule].train("stage2", cfg.stage2, model, domain=domain, dataset=dataset)
        score, correct[rule] = _stage2_score(subs[rule], model, scorer, rows=len(rules) > 1) if selects else (None, None)
        scores[rule] = broadcast_object(score)
    seconds = {r: float(subs[r].stages["stage2"].get("seconds", 0.0)) for r in scores}
    if record is not None and record["decided"]:
        chosen = record["chosen"]
        scores = {r: v["score"] for r, v in record["rules"].items()}
        close = _go_on_with(p, subs[chosen], ("stage2",), model, scores, chosen, "online keep rule", correct,
                            close=record["close"])
        # the losers' probes count too
        seconds.update({r: v["probe_seconds"] for r, v in record["rules"].items() if r != chosen})
        counts = {r: {k: v[k] for k in ("kept", "relabeled", "removed")} for r, v in record["rules"].items()}
        counts[chosen] = runs[chosen].counts()
    else:
        chosen = choose(scores)
        close = _go_on_with(p, subs[chosen], ("stage2",), model, scores, chosen, "online keep rule", correct)
        counts = {r: runs[r].counts() for r in scores}
    p.stages["stage2"] = {**p.stages["stage2"], "seconds": round(sum(seconds.values()), 3)}  # every branch's
    p.online_rule = {"chosen": chosen, "split": None if scorer is None else scorer.select,
                     "rules": {r: {"score": scores[r], "best_epoch": subs[r].stages.get("stage2", {}).get("best_epoch"),
                               "seconds": round(seconds[r], 3), **counts[r]} for r in scores},
                     **({} if record is None else {"probe": record["probe"]}), **close}
    return runs[chosen]


def _rules_split_at(st: StageConfig) -> int | None:
    """The first stage-2 epoch whose keep decisions depend on the keep rule (online cleaning acts
    from the epoch after ``start_clean_epoch``); None when stage 2 never cleans."""
    return None if st.start_clean_epoch is None else st.start_clean_epoch + 1


def _pause_at(sub: _Pipeline, model: CAPro, dataset, domain, until: int, *,
              resume: bool) -> tuple[float, CleaningState]:
    """Train ``sub``'s stage 2 (rule branch) up to epoch ``until`` and pause there (its ``last.pt``);
    ``model`` ends with the weights it would score. Returns the seconds it took and the
    online-cleaning state there."""
    t0 = time.perf_counter()
    cleaning, _ = train_stage(dataclasses.replace(sub.ctx, resume=resume), "stage2", sub.ctx.cfg.stage2,
                              model=model, dataset=dataset, fingerprint=sub.fps["stage2"], domain=domain,
                              scorer=sub.scorer(), stop_after=until)
    return time.perf_counter() - t0, cleaning


def _fork_stage(src: Path, dst: Path, fp: str) -> None:
    """Make ``dst`` a copy of the paused stage directory ``src`` whose checkpoints carry the
    fingerprint ``fp`` (rank 0; written whole or not at all; files are hard links where possible,
    since every file of a stage is replaced atomically, never edited in place)."""
    import shutil

    from capro.engine.checkpoint import save_checkpoint

    tmp = dst.with_name(dst.name + ".forking")
    shutil.rmtree(tmp, ignore_errors=True)
    link_tree(src, tmp)
    for name in ("last.pt", "best.pt"):
        if (tmp / name).is_file():
            save_checkpoint(tmp / name, {**load_checkpoint(tmp / name), "fingerprint": fp})
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _probe_score(sub: _Pipeline, column: str, since: int) -> float | None:
    """Mean of ``column`` (the selecting score) over the epochs from ``since`` in ``sub``'s stage-2 log."""
    from capro.report.rundir import read_log

    log = read_log(sub.dir("stage2") / "log.csv") or {}
    values = [v for e, v in zip(log.get("epoch", []), log.get(column, [])) if e is not None and e >= since
              and v is not None]
    return sum(values) / len(values) if values else None


def _probe_online_rules(p: _Pipeline, model: CAPro, domain, subs: dict[str, _Pipeline], dataset,
                        split_at: int) -> tuple[dict[str, Any], dict[str, np.ndarray | None]]:
    """D21's probe: the first rule trains stage 2 up to ``split_at`` (where the rules' keep
    decisions first differ) and every other rule starts from a copy of it; each then trains
    ``method.rule_probe_epochs`` more epochs and pauses. The rule whose mean selecting score over
    its probe epochs is best leads. The probe decides when the lead is significant (McNemar over
    the rows where the rules' probe-end weights disagree: the leader is chosen) or when the
    selecting split is held-out rows scored against web labels (a close call there chooses the
    first rule); a close call on clean labels leaves the choice to the full stages. Returns the
    record (``RUN/online_rules/probe.json``, re-used by a re-run: ``decided``, ``chosen``, each
    rule's score, probe seconds and counts) and each rule's probe-end per-row correctness.
    Every rank calls; ``model`` ends with the last rule's probe weights."""
    from capro.engine.keep_rules import choose

    ctx, cfg = p.ctx, p.ctx.cfg
    scorer = p.scorer()
    rules = list(subs)
    probe = cfg.method.rule_probe_epochs
    until = split_at + probe
    record_path = p.dir("online_rules") / "probe.json"
    fp = fingerprint({"up": p.fps["stage2"], "rules": rules, "probe": probe})
    if record_path.is_file():
        record = read_json(record_path)
        if record.get("fingerprint") == fp and all((subs[r].dir("stage2") / "last.pt").is_file() for r in rules):
            return record, {r: None for r in rules}
    first = subs[rules[0]]
    shared, _ = _pause_at(first, model, dataset, domain, split_at, resume=ctx.resume)
    for rule in rules[1:]:
        last = subs[rule].dir("stage2") / "last.pt"
        forked = ctx.resume and last.is_file() and load_checkpoint(last).get("fingerprint") == subs[rule].fps["stage2"]
        if ctx.is_main and not forked:
            _fork_stage(first.dir("stage2"), subs[rule].dir("stage2"), subs[rule].fps["stage2"])
        barrier()
    seconds: dict[str, float] = {}
    scores: dict[str, float | None] = {}
    correct: dict[str, np.ndarray | None] = {}
    counts: dict[str, dict[str, int]] = {}
    for rule in rules:
        seconds[rule], cleaning = _pause_at(subs[rule], model, dataset, domain, until, resume=True)
        scores[rule] = broadcast_object(_probe_score(subs[rule], scorer.column, split_at) if ctx.is_main else None)
        _, correct[rule] = scorer.select_rows(model)
        counts[rule] = cleaning.counts()
    leader = choose(scores)
    close = close_call(scores, leader, correct)
    on_web_labels = scorer.select == HOLDOUT
    decided = on_web_labels or not close.get("close_call", True)
    chosen = rules[0] if on_web_labels and close.get("close_call", True) else leader
    if chosen != leader:
        close = close_call(scores, chosen, correct)
    why = ("the lead is significant" if not close.get("close_call", True) else
           "a close call on held-out rows scored against web labels: the first rule" if decided else
           "a close call on clean labels: every rule trains its full stage 2")
    record = {"chosen": chosen if decided else None, "leader": leader, "decided": decided, "close": close,
              "probe": {"epochs": probe, "from_epoch": split_at, "until_epoch": until, "decided": decided,
                        "why": why, "shared_seconds": round(shared, 3),
                        "scores": scores, "leader": leader, **{k: close[k] for k in ("p_value", "disagree") if k in close}},
              "rules": {r: {"score": scores[r], "probe_seconds": round(seconds[r], 3), **counts[r]} for r in rules}}
    if ctx.is_main:
        write_json(record_path, {**record, "fingerprint": fp})
        log_progress(f"online keep rule probe (epochs {split_at}-{until - 1}): " + ", ".join(
            f"{r} {scores[r]:.4f}" for r in rules) + f" on {scorer.select}; {why}")
    barrier()
    return record, correct


def _choose_keep_rule(p: _Pipeline, model: CAPro, domain, text_distance) -> OfflineCleaning:
    """D19: stage 3a and 3b once per ``clean.keep_rules`` entry, each in ``RUN/keep_rules/<rule>/``
    and from the stage-2 weights ``model`` holds now; the rule whose fine-tuned model scores best on
    the selecting split is published as ``RUN/stage3a`` and ``RUN/stage3b`` and left in ``model``.
    Every rule's counts and score go to ``p.keep_rule`` (``metrics.json``: ``keep_rule``)."""
    from capro.engine.keep_rules import choose

    cfg = p.ctx.cfg
    start = copy.deepcopy(model.state_dict())
    scorer = p.scorer()
    runs: dict[str, tuple[_Pipeline, OfflineCleaning]] = {}
    scores: dict[str, float | None] = {}
    correct: dict[str, np.ndarray | None] = {}
    for rule in cfg.clean.keep_rules:
        model.load_state_dict(start)
        fp3a = fingerprint({"up": p.fps["stage2"], "clean": dataclasses.asdict(cfg.clean), "rule": rule})
        sub = _branch(p, rule, "keep_rules", {
            "stage3a": fp3a, "stage3b": fingerprint({"up": fp3a, "stage": dataclasses.asdict(cfg.stage3)})})
        runs[rule] = (sub, _clean_and_fine_tune(sub, model, domain, text_distance))
        score, correct[rule] = scorer.select_rows(model) if scorer is not None else (None, None)
        scores[rule] = broadcast_object(score)
    chosen = choose(scores)
    sub, verdict = runs[chosen]
    close = _go_on_with(p, sub, ("stage3a", "stage3b"), model, scores, chosen, "keep rule", correct)
    p.keep_rule = {"chosen": chosen, "split": None if scorer is None else scorer.select,
                   "rules": {r: {"score": scores[r], **runs[r][1].counts()} for r in scores}, **close}
    return verdict


def _publish(src: Path, dst: Path) -> None:
    """Replace directory ``dst`` with a copy of ``src`` (:func:`capro.utils.io.link_tree`)."""
    import shutil

    tmp = dst.with_name(dst.name + ".publishing")
    shutil.rmtree(tmp, ignore_errors=True)
    link_tree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def stage2_weights(run_dir: Path, cfg: Config) -> Path:
    """The stage-2 checkpoint offline cleaning and the fine-tune start from: ``best.pt`` under
    ``clean.stage2_checkpoint=best`` when validation was scored (D12), else what stage 2 handed on."""
    best = Path(run_dir) / "stage2" / "best.pt"
    if cfg.clean.stage2_checkpoint == "best" and best.is_file():
        return best
    return Path(run_dir) / "stage2" / "checkpoint.pt"


def _load_best(p: _Pipeline, stage: str, model: CAPro) -> None:
    """Put ``stage``'s best-validation weights into ``model`` (no-op without ``best.pt``, when no
    validation split was scored: the weights the stage handed on stay)."""
    path = p.dir(stage) / "best.pt"
    if path.is_file():
        load_weights(model, load_checkpoint(path)["model"])
        model.to(p.ctx.dist.device)


def _fine_tune_lost(p: _Pipeline, model: CAPro) -> bool:
    """D18: score the fine-tuned ``model`` and the stage-2 weights it started from on the
    selecting split (rank 0); when the fine-tune scores lower, put the stage-2 weights back into
    ``model`` on every rank. Both scores go to ``p.guard`` (``metrics.json``: ``fine_tune_guard``)."""
    scorer = p.scorer()
    stage2 = stage2_weights(p.ctx.run_dir, p.ctx.cfg)
    verdict = None
    if scorer is not None and scorer.column is not None:
        fine, fine_rows = scorer.select_rows(model)
        before = copy.deepcopy(model)
        load_weights(before, load_checkpoint(stage2)["model"])
        base, base_rows = scorer.select_rows(before.to(p.ctx.dist.device))
        kept = "stage3b" if fine >= base else "stage2"
        close = close_call({"stage3b": fine, "stage2": base}, kept, {"stage3b": fine_rows, "stage2": base_rows})
        verdict = {"split": scorer.select, "metric": scorer.metric, "stage3b": round(fine, 6),
                   "stage2": round(base, 6), "kept": kept, **close}
    verdict = broadcast_object(verdict)
    if verdict is None:
        return False
    p.guard = verdict
    if verdict["kept"] == "stage3b":
        if p.ctx.is_main and verdict.get("close_call"):
            log_progress(f"fine-tune guard: stage 3b scored {verdict['stage3b']:.4f} on {verdict['split']}, "
                         f"stage 2 {verdict['stage2']:.4f}; kept stage 3b{describe_close_call(verdict)}")
        return False
    load_weights(model, load_checkpoint(stage2)["model"])
    model.to(p.ctx.dist.device)
    if p.ctx.is_main:
        log_progress(f"fine-tune guard: stage 3b scored {verdict['stage3b']:.4f} on {verdict['split']}, "
                     f"below stage 2's {verdict['stage2']:.4f}; the run ends with stage 2's weights"
                     f"{describe_close_call(verdict)}")
    return True


def _truth_arrays(ctx: RunContext, truth: dict[str, dict]) -> np.ndarray | None:
    """True labels aligned with the training records: [N] (-1 out-of-distribution) or [N, C]."""
    index = {c.name: i for i, c in enumerate(ctx.classes)}
    if any(r.id not in truth for r in ctx.train.records):
        return None
    if ctx.multi_label:
        out = np.zeros((len(ctx.train), ctx.num_classes), np.float32)
        for i, r in enumerate(ctx.train.records):
            t = truth[r.id]["true_label"] or []
            out[i, [index[n] for n in (t if isinstance(t, list) else [t]) if n in index]] = 1
        return out
    return np.array([index.get(truth[r.id]["true_label"], -1) if truth[r.id]["true_label"] else -1
                     for r in ctx.train.records], dtype=np.int64)


def train_truth_metrics(ctx: RunContext, truth: dict[str, dict], *, domain: np.ndarray | None,
                        final: np.ndarray | None, flagged_relabel: np.ndarray | None,
                        removed: np.ndarray | None) -> dict | None:
    """Anchor precision, noise detection and relabel accuracy against ``truth.jsonl``.

    Single-label: per sample. Multi-label: per (sample, class) entry, an entry being noisy when
    its web label differs from the truth and flagged when cleaning flipped or removed it.
    """
    true = _truth_arrays(ctx, truth)
    if true is None:
        return None
    web = ctx.web_targets()
    out: dict[str, Any] = {"n": len(web)}
    if domain is not None:
        is_anchor = domain > 0 if ctx.multi_label else anchor_mask(domain)
        out["anchor_precision"] = anchor_precision(web, true, is_anchor)
    if final is not None:
        if ctx.multi_label:
            flagged = (final != web) | removed[:, None]
            new, relabeled = final, (final != web) & (final >= 0)
        else:
            flagged = removed | flagged_relabel
            new, relabeled = final, flagged_relabel
        out["noise_detection"] = noise_detection(web, true, flagged)
        out["relabel_accuracy"] = relabel_accuracy(true, new, relabeled)
    return out


def fit_to_training_labels(ctx: RunContext, model: CAPro, truth: dict[str, dict]) -> dict | None:
    """:func:`~capro.eval.noise.memorisation` of ``model`` on its training rows (test transform);
    None for multi-label data or without a truth row for every sample. Every rank calls (each
    scores its slice)."""
    from capro.engine.evaluate import collect

    true = _truth_arrays(ctx, truth)
    if ctx.multi_label or true is None:
        return None
    skipped: list[tuple[int, str]] = []
    with torch.random.fork_rng(devices=[]):
        logits, _ = collect(model, ctx.eval_dataset(), device=ctx.dist.device,
                            batch_size=ctx.cfg.train.eval_batch_size, workers=ctx.cfg.data.workers,
                            amp=ctx.amp, skipped=skipped, sharded=True)
    keep = np.setdiff1d(np.arange(len(ctx.train)), [i for i, _ in skipped])
    return memorisation(logits.argmax(axis=1), ctx.web_targets()[keep], true[keep])


def queue_too_big(queue: int, n_train: int) -> bool:
    """Whether a MoCo queue of ``queue`` keys is too large for ``n_train`` images (> N/2)."""
    return 2 * queue > n_train


def run_pipeline(data_root: str | os.PathLike, run_dir: str | os.PathLike, cfg: Config, *,
                 resume: bool = False, progress: bool | None = None) -> dict:
    """Run every step of CAPro on ``data_root`` into ``run_dir``; return the metrics (rank 0).

    Other ranks return ``{}``. Launch under ``torchrun`` for several processes. A process that
    loses a peer (it died or hung past ``CAPRO_DIST_TIMEOUT``) raises
    :class:`~capro.engine.distributed.PeerLost`; ``resume=True`` then continues from the last
    checkpoint, with the same or another number of processes as long as the global batch stays
    the same (:func:`~capro.engine.checkpoint.check_resume_batch`).
    """
    info = init_distributed(cfg.device)
    threads, why = set_threads(cfg.train.threads)
    if info.is_main:
        log_progress(f"threads: {threads} per process ({why})")
    with peer_failures(info.rank, info.world_size):
        try:
            return _run(Path(data_root).resolve(), Path(run_dir), cfg, info, resume=resume, progress=progress)
        except Preempted:
            # every rank stops at the same step (the stop is all-reduced): leave together, once
            # rank 0 has written the checkpoint, so no process tears down a connection another
            # still uses
            barrier()
            raise


def _check_concepts(classes: list[ClassInfo], cfg: Config) -> None:
    """Build every class's concept text once, quietly, so that a class that has none (no wnid,
    no definition, not a WordNet noun) stops the run before stage 1 rather than after it."""
    from capro.text.concepts import concept_texts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        concept_texts(classes, source=cfg.text.concept_source)


def _run(data_root: Path, run_dir: Path, cfg: Config, info: DistInfo, *, resume: bool,
         progress: bool | None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    classes = read_classes(data_root)
    train = load_split_for_run(data_root, "train", run_dir=run_dir, skip_bad=cfg.data.skip_bad,
                               check_images=cfg.data.check_images, classes=classes)
    if cfg.stage2.epochs > 0 and cfg.method.prototypes == "anchors":
        _check_concepts(classes, cfg)  # before any training: a class without a concept is a data error
    cfg, disagree = resolve_channels(cfg, data_root, train.records)
    if disagree and info.is_main:
        log_progress(disagree)
    validation = resolve_validation(cfg, data_root, train, eligible=lambda: text_verified(cfg, train, run_dir))
    drawn_from = train
    train = validation.train
    multi = cfg.method.multi_label if cfg.method.multi_label is not None else train.multi_label
    if multi and cfg.stage3.mixup and cfg.stage3.epochs > 0:
        warnings.warn("mix-up is implemented for single-label data only; stage 3b of this "
                      "multi-label run trains without it (set stage3.mixup=false to silence this)",
                      stacklevel=2)
        cfg = dataclasses.replace(cfg, stage3=dataclasses.replace(cfg.stage3, mixup=False))
    # the default online rules need no word: multi-label data simply trains one stage 2
    named_online = [] if list(cfg.method.keep_rules) == list(ONLINE_KEEP_RULES) else cfg.method.keep_rules
    for key, rules in (("clean.keep_rules", cfg.clean.keep_rules), ("method.keep_rules", named_online)):
        if multi and rules:
            warnings.warn(f"{key} chooses among single-label keep rules; this multi-label run "
                          "cleans with its method's rule only", stacklevel=2)
    if info.is_main and cfg.stage1.epochs == 0 and cfg.stage2.epochs > 0 and not cfg.model.pretrained:
        warnings.warn("stage1.epochs=0 without model.pretrained: the kNN graph and the anchors come from "
                      "randomly initialised features; set model.pretrained (e.g. --preset finetune) or "
                      "train stage 1", stacklevel=2)
    if info.is_main and model_parts(cfg)["momentum_keys"] and queue_too_big(cfg.model.queue, len(train.records)):
        warnings.warn(f"model.queue={cfg.model.queue} holds more than half of the "
                      f"{len(train.records)} training images: the instance loss then often finds an "
                      "older key of the same image among its negatives; set model.queue to N/8 or less",
                      stacklevel=2)
    if info.is_main:
        if validation.split != "val":  # the usual case needs no word; any other is said
            log_progress(validation.describe())
        if validation.holdout:
            write_jsonl(run_dir / "holdout.jsonl", [{"id": r.id, "label": r.label, "reason": "held out of "
                                                     "training as the validation split (train.val_split=auto, "
                                                     "no val.jsonl)"} for r in validation.holdout])
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "run.json", {"data": str(data_root), "world_size": info.world_size,
                                          "device": str(info.device), "resume": resume})
    ctx = RunContext(cfg=cfg, data_root=data_root, run_dir=run_dir, dist=info, classes=classes,
                     train=train, multi_label=multi, amp=amp_dtype(cfg.train.amp, info.device),
                     resume=resume, progress=info.is_main and (stderr_isatty() if progress is None else progress),
                     log_steps=progress is None)
    p = _Pipeline(ctx, _fingerprints(cfg, data_root, len(train), validation.split, validation.window),
                  validation)
    if validation.verified is not None:
        p.encoded_superset = dataclasses.replace(drawn_from, name=HOLDOUT_DRAW)
    t_run = time.perf_counter()

    seed_everything(cfg.seed)
    model = build_model(cfg, len(classes), multi_label=multi).to(info.device)
    final_stage = "stage1"
    cleaning = p.train("stage1", cfg.stage1, model, dataset=ctx.train_dataset())
    domain = text_distance = verdict = None
    if cfg.stage2.epochs > 0:
        if cfg.method.prototypes == "anchors":
            domain, text_distance = _anchors(p, model)
        if cfg.method.keep_rules and not multi:
            cleaning = _choose_online_rule(p, model, domain)
        else:
            cleaning = p.train("stage2", cfg.stage2, model, domain=domain,
                               dataset=ctx.train_dataset(domain=domain))
        final_stage = "stage2"
        if cfg.stage3.epochs > 0:
            if cfg.clean.stage2_checkpoint == "best":
                _load_best(p, "stage2", model)
            if cfg.clean.keep_rules and not multi:
                verdict = _choose_keep_rule(p, model, domain, text_distance)
            else:
                verdict = _clean_and_fine_tune(p, model, domain, text_distance)
            final_stage = "stage3b"
            if cfg.clean.guard and _fine_tune_lost(p, model):
                final_stage = "stage2"

    metrics: dict[str, Any] = {}
    # the passes over the data are shared by every rank; rank 0 writes
    t_eval = time.perf_counter()
    evals = {s: p.evaluate(model, s) for s in _eval_splits(data_root, cfg)}
    p.stages["eval"] = {"seconds": round(time.perf_counter() - t_eval, 3), "world_size": info.world_size}
    truth = read_truth(data_root)
    fit = fit_to_training_labels(ctx, model, truth) if truth else None
    if info.is_main:
        _save_model(run_dir / MODEL_FILE, model, classes, cfg, stage=final_stage, multi_label=multi)
        metrics = {"eval": evals,
                   "final_stage": final_stage, "multi_label": multi, "world_size": info.world_size,
                   "n_train": len(train), "stages": p.stages,
                   "validation": {"split": validation.split, "labels": validation.labels,
                                  "held_out_rows": len(validation.holdout), "select_window": validation.window,
                                  **({} if validation.verified is None else {"text_verified": validation.verified})},
                   "seconds": round(time.perf_counter() - t_run, 3), **p.openset(model)}
        if p.guard is not None:
            metrics["fine_tune_guard"] = p.guard
        if p.keep_rule is not None:
            metrics["keep_rule"] = p.keep_rule
        if p.online_rule is not None:
            metrics["online_rule"] = p.online_rule
        final = flagged = removed = None
        if verdict is not None:
            final, removed, flagged = verdict.target, ~verdict.clean, verdict.relabeled
            metrics["cleaning"] = {**verdict.counts(), "source": "stage3a"}
        elif final_stage == "stage2":
            final = cleaning.target.numpy()
            removed, flagged = ~cleaning.clean.numpy(), cleaning.relabeled.numpy()
            metrics["cleaning"] = {**cleaning.counts(), "source": "stage2-online"}
        else:
            metrics["cleaning"] = {"kept": len(train), "relabeled": 0, "removed": 0, "source": "none"}
        if truth:
            tt = train_truth_metrics(ctx, truth, domain=domain, final=final, flagged_relabel=flagged,
                                     removed=removed)
            if tt is not None:
                metrics["train_truth"] = {**tt, **({"memorisation": fit} if fit else {})}
        write_json(run_dir / "metrics.json", metrics)
    write_run_artefacts(run_dir, model, {s: ([r.id for r in ds.records], ds) for s, ds in p.eval_sets.items()},
                        [c.name for c in classes], multi_label=multi, device=info.device,
                        batch_size=cfg.train.eval_batch_size, workers=cfg.data.workers)
    barrier()
    return metrics



def clean_run(run_dir: str | os.PathLike, *, data: str | os.PathLike | None = None,
              pseudo_th: float | None = None, protect_anchors: bool | None = None,
              device: str = "auto", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Stage 3a on a run's stage-2 model: rewrite ``RUN/stage3a/samples.jsonl``; return the counts.

    ``overrides`` (``clean.*`` and ``method.*`` keys, e.g. ``clean.pseudo_th=0.8``) change the
    run's config for this cleaning only.

    With ``clean.keep_rules`` the keep rule is the one the run chose (``metrics.json``). The
    stage's done marker is removed, so the next ``capro run`` re-derives stage 3a (and 3b)
    from the run's config.
    """
    from capro.config import config_from_dict, load_config, read_yaml
    from capro.engine.distributed import resolve_device
    from capro.errors import UsageError
    from capro.report.rundir import resolve_data_root

    run_dir = Path(run_dir)
    other = [o for o in overrides if not o.strip().startswith(("clean.", "method."))]
    if other:
        raise UsageError(f"{other[0]!r}: offline cleaning takes clean.* and method.* keys only; the rest "
                         "of the run's config is fixed by its trained model")
    cfg = config_from_dict(read_yaml(run_dir / "config.yaml"))
    if overrides:
        cfg = load_config(run_dir / "config.yaml", overrides=list(overrides))
    if pseudo_th is not None:
        cfg.clean.pseudo_th = pseudo_th
    if protect_anchors is not None:
        cfg.clean.protect_anchors = protect_anchors
    chosen = ((read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {})
              .get("keep_rule") or {}).get("chosen")
    if cfg.clean.keep_rules and chosen:  # D19: the rule the run chose, not the method's
        from capro.engine.keep_rules import rule_method

        cfg = dataclasses.replace(cfg, method=rule_method(cfg.method, chosen))
    ckpt = stage2_weights(run_dir, cfg)
    if not ckpt.is_file():
        raise CaproError(f"{ckpt}: not found; offline cleaning needs a finished stage 2 "
                         f"(`capro run DATA --out {run_dir}` with stage2.epochs > 0)")
    root = resolve_data_root(run_dir, data)
    dev = resolve_device(device if device != "auto" else cfg.device)
    classes = read_classes(root)
    train = load_split_for_run(root, "train", run_dir=run_dir, skip_bad=cfg.data.skip_bad,
                               check_images=cfg.data.check_images, classes=classes)
    train = trained_split(train, run_dir)  # the rows the run trained on
    multi = cfg.method.multi_label if cfg.method.multi_label is not None else train.multi_label
    ctx = RunContext(cfg=cfg, data_root=root, run_dir=run_dir, dist=DistInfo(0, 1, 0, dev),
                     classes=classes, train=train, multi_label=multi)
    model = build_model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None)),
                        len(classes), multi_label=multi)
    load_weights(model, load_checkpoint(ckpt)["model"])
    model.to(dev)
    domain = text_distance = None
    anchors = run_dir / "anchors" / "anchors.npz"
    if anchors.is_file():
        with np.load(anchors) as z:
            domain, dist = z["domain"], z["text_distance"]
        text_distance = None if np.isnan(dist).all() else dist
    verdict = offline_clean(ctx, model, domain, text_distance)
    counts = verdict.counts()
    write_json(run_dir / "stage3a" / "summary.json", counts)
    (run_dir / "stage3a" / "done.json").unlink(missing_ok=True)
    return counts
