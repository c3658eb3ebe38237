"""The engine's commands: predict, evaluate, clean, run (errors), demo's table."""

import json
import shutil

from capro.cli import main
from capro.cli.demo import table
from capro.data.layout import read_classes, read_split
from capro.utils.io import read_json, read_jsonl


def test_predict_prints_sorted_topk_and_unknown_below_threshold(tiny_run, tiny_web_data, capsys):
    run, _ = tiny_run
    recs = read_split(tiny_web_data, "test").records[:2]
    images = [str(tiny_web_data / r.image) for r in recs]
    assert main(["predict", str(run), *images, "--topk", "3", "--json", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = {c.name for c in read_classes(tiny_web_data)}
    assert [r["image"] for r in rows] == images
    for r in rows:
        scores = [t["score"] for t in r["top"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
        assert r["prediction"] == r["top"][0]["label"] and r["prediction"] in names
    assert main(["predict", str(run), images[0], "--threshold", "1.01", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"] == "unknown"


def test_predict_missing_image_is_a_one_line_error(tiny_run, tmp_path, capsys):
    code = main(["predict", str(tiny_run[0]), str(tmp_path / "nope.png"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "nope.png" in err and len(err.strip().splitlines()) == 1


def test_evaluate_json_matches_the_run(tiny_run, capsys):
    run, metrics = tiny_run
    assert main(["evaluate", str(run), "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test"
    assert {k: out[k] for k in ("top1", "top5", "n")} == metrics["eval"]["test"]


def test_clean_rewrites_the_verdicts(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    assert main(["clean", str(run), "--pseudo-th", "0.0", "--device", "cpu"]) == 0
    rows = read_jsonl(run / "stage3a" / "samples.jsonl")
    summary = read_json(run / "stage3a" / "summary.json")
    # tau = 0: every non-anchor sample is relabelled to its argmax unless that is its web label
    assert summary["removed"] == 0 and sum(r["relabeled"] for r in rows) == summary["relabeled"]
    assert all(r["label"] == r["suggested_label"] for r in rows)
    assert not (run / "stage3a" / "done.json").exists()
    assert "relabelled" in capsys.readouterr().out


def test_run_rejects_an_unknown_config_key(tiny_web_data, tmp_path, capsys):
    code = main(["run", str(tiny_web_data), "stage9.epochs=1", "--out", str(tmp_path / "r"), "--preset", "tiny"])
    assert code == 2 and "stage9" in capsys.readouterr().err


def test_evaluate_without_a_model_names_the_fix(tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")
    code = main(["evaluate", str(tmp_path), "--device", "cpu"])
    assert code != 0 and "--data" in capsys.readouterr().err


def test_demo_table_lists_stage1_vs_final_and_cleaning():
    metrics = {"eval": {"test": {"top1": 0.5, "top5": 0.9, "n": 10}},
               "stages": {"stage1": {"eval": {"test": {"top1": 0.25}}}, "stage2": {}},
               "cleaning": {"kept": 7, "relabeled": 2, "removed": 1},
               "train_truth": {"anchor_precision": 0.875,
                               "noise_detection": {"precision": 0.5, "recall": 0.25, "f1": 0.33}}}
    text = "\n".join(table(metrics))
    assert "25.0%" in text and "50.0%" in text and "7 / 2 / 1" in text and "87.5%" in text
    assert "50.0% / 25.0%" in text
