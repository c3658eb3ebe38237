"""``train.val_split=auto``: val.jsonl when DATA has it, else a held-out slice of the training rows."""

import csv
import dataclasses
import shutil
from collections import Counter

import numpy as np
import pytest

from capro.config import HOLDOUT_WINDOW, load_config
from capro.data.layout import Record, Split, read_split
from capro.engine.runner import run_pipeline
from capro.engine.validation import (
    HOLDOUT,
    holdout_rows,
    resolve_validation,
    select_window,
    trained_split,
)
from capro.report.export import export_run
from capro.utils.io import read_json, read_jsonl


def _records(counts: dict[int, int]) -> list[Record]:
    out = []
    for label, n in counts.items():
        out += [Record(id=f"c{label}_{i}", image=f"{label}_{i}.png", labels=(label,)) for i in range(n)]
    return out


def test_holdout_takes_a_share_of_every_label_and_is_seeded():
    recs = _records({0: 50, 1: 30, 2: 1, 3: 2})
    rows = holdout_rows(recs, share=0.1, most=100, seed=0)
    held = Counter(recs[i].label for i in rows)
    assert held == {0: 5, 1: 3, 3: 1}  # a label with one row keeps it; two rows give one
    assert np.array_equal(rows, holdout_rows(recs, share=0.1, most=100, seed=0))
    assert not np.array_equal(rows, holdout_rows(recs, share=0.1, most=100, seed=1))
    capped = holdout_rows(recs, share=0.1, most=4, seed=0)
    assert len(capped) == 4 and set(capped) <= set(rows)
    assert holdout_rows(recs, share=0.0, most=100, seed=0).size == 0


def test_holdout_draws_from_eligible_rows_and_a_label_without_any_lends_its_others():
    recs = _records({0: 50, 1: 30, 2: 20})
    eligible = np.zeros(len(recs), bool)
    eligible[[1, 3, 5, 7, 9, 11, 13]] = True      # 7 of label 0 (its share is 5)
    eligible[[50, 51]] = True                      # 2 of label 1 (its share is 3): both
    rows = holdout_rows(recs, share=0.1, most=100, seed=0, eligible=eligible)  # label 2: none eligible
    held = Counter(recs[i].label for i in rows)
    assert held == {0: 5, 1: 2, 2: 2}
    assert set(rows[[recs[i].label == 0 for i in rows]]) <= {1, 3, 5, 7, 9, 11, 13}
    assert {50, 51} <= set(rows)


def test_text_verified_rows_prefer_their_web_label_by_hand(tiny_web_data, tmp_path):
    from capro.engine.validation import text_verified
    from capro.text.pipeline import class_prototypes, encode_split_texts

    cfg = load_config(preset="tiny")
    train = read_split(tiny_web_data, "train")
    got = text_verified(cfg, train, tmp_path)
    emb = np.asarray(encode_split_texts(cfg, dataclasses.replace(train, name="holdout-draw"), tmp_path))
    protos = class_prototypes(cfg, train.classes, tmp_path)
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (protos / np.linalg.norm(protos, axis=1, keepdims=True)).T
    want = [cos[i, r.label] > max(cos[i, c] for c in range(len(protos)) if c != r.label)
            for i, r in enumerate(train.records)]
    assert got.dtype == bool and 0 < got.sum() < len(got)
    assert np.array_equal(got, want)


@pytest.fixture(scope="module")
def no_val_data(tiny_web_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("noval") / "data"
    shutil.copytree(tiny_web_data, root)
    (root / "val.jsonl").unlink()
    return root


def test_auto_uses_val_when_present_and_a_holdout_otherwise(tiny_web_data, no_val_data):
    cfg = load_config(preset="tiny")
    with_val = resolve_validation(cfg, tiny_web_data, read_split(tiny_web_data, "train"))
    assert with_val.split == "val" and not with_val.holdout and len(with_val.train) == 200
    train = read_split(no_val_data, "train")
    v = resolve_validation(cfg, no_val_data, train)
    assert v.split == HOLDOUT and len(v.holdout) == 20 and len(v.train) == 180
    assert {r.id for r in v.holdout}.isdisjoint(r.id for r in v.train.records)
    assert [r.id for r in v.train.records] == [r.id for r in train.records if r not in v.holdout]
    assert (with_val.window, v.window) == (1, HOLDOUT_WINDOW)  # D23: only a noisy split is averaged
    cfg.train.select_window = 3
    assert select_window(cfg, "val") == select_window(cfg, HOLDOUT) == 3
    assert resolve_validation(cfg, tiny_web_data, read_split(tiny_web_data, "train")).window == 3
    cfg.train.select_window = None
    cfg.train.val_split = "none"
    assert resolve_validation(cfg, no_val_data, train).split is None
    cfg.train.val_split = "val"  # named, but missing: nothing selects, nothing is held out
    named = resolve_validation(cfg, no_val_data, Split("train", train.records))
    assert named.split is None and len(named.train) == 200


def test_run_without_val_selects_on_the_holdout_and_records_it(no_val_data, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config(preset="tiny", overrides=["model.backbone=simple_cnn", "train.holdout_from=text",
                                                "stage1.epochs=4", "train.select_window=2"])
    metrics = run_pipeline(no_val_data, run, cfg, progress=False)
    assert metrics["validation"] == {"split": HOLDOUT, "labels": "web (noisy)", "held_out_rows": 20,
                                     "select_window": 2,
                                     "text_verified": 20}  # every label had at least its share
    assert metrics["n_train"] == 180
    held = read_jsonl(run / "holdout.jsonl")
    assert len(held) == 20 and all("held out of training" in r["reason"] for r in held)
    with open(run / "stage1" / "log.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # D23: from its second epoch on, each epoch is judged by the mean of its last 2 held-out scores
    raw = [float(r["holdout_top1"]) for r in rows]
    mean = [(raw[i - 1] + raw[i]) / 2 for i in range(1, len(raw))]
    assert rows[0]["holdout_top1_mean2"] == ""
    np.testing.assert_allclose([float(r["holdout_top1_mean2"]) for r in rows[1:]], mean)
    best = 1 + max(range(len(mean)), key=lambda i: (mean[i], -i))
    assert metrics["stages"]["stage1"]["kept_epoch"] == best
    assert metrics["stages"]["stage1"]["best_val"] == pytest.approx(mean[best - 1])
    err = capsys.readouterr().err
    assert "selecting epochs on 20 training rows held out" in err
    assert "judged by the mean of its last 2 scores" in err
    # later commands (capro clean, capro graph match) pick up the rows the run trained on
    rest = trained_split(read_split(no_val_data, "train"), run)
    assert len(rest) == 180 and not {r["id"] for r in held} & {r.id for r in rest.records}
    # the texts were encoded once, to draw the held-out rows; the text step took its rows from there
    ids = [r.id for r in read_split(no_val_data, "train").records]
    draw = np.load(run / "text" / "texts_holdout-draw.npy")
    np.testing.assert_array_equal(np.load(run / "text" / "texts.npy"), draw[[ids.index(r.id) for r in rest.records]])
    assert read_json(run / "text" / "_steps" / "texts" / "done.json")["taken_from"] == "holdout-draw"
    assert trained_split(read_split(no_val_data, "train"), tmp_path).records == read_split(no_val_data, "train").records
    # the cleaned dataset says why the held-out rows are not in it
    out = tmp_path / "export"
    export_run(run, out, format="jsonl")
    removed = {r["id"]: r["reason"] for r in read_jsonl(out / "removed.jsonl")}
    assert {r["id"] for r in held} <= set(removed)
    assert all(removed[r["id"]].startswith("held out of training") for r in held)
