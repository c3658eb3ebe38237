import json

import numpy as np
import pytest
from PIL import Image

from capro.cli import main
from capro.config import load_config
from capro.data.layout import read_classes, read_split
from capro.errors import ConfigError
from capro.text.clean import record_text
from capro.text.encode import create_encoder
from capro.text.pipeline import class_prototypes, encode_split_texts
from capro.utils.io import read_jsonl

CLASSES = [
    {"name": "Sneaker", "wnid": "n03472535"},
    {"name": "Dress", "wnid": "n03236735", "definition": "a one-piece garment for a woman"},
    {"name": "Tote", "definition": "a large open bag"},
]
ROWS = [
    {"id": "a", "image": "img/a.png", "label": "Sneaker", "title": "Running SHOES 2019",
     "description": "<b>white</b> sneakers http://shop.com/x", "tags": ["sport"]},
    {"id": "b", "image": "img/b.png", "label": "Dress", "title": "Summer dress",
     "tags": ["beach", "cotton"]},
    {"id": "c", "image": "img/c.png", "label": "Tote", "title": "IMG_2041.jpg"},
    {"id": "d", "image": "img/d.png", "label": "Sneaker", "description": "canvas gym shoes"},
]


@pytest.fixture()
def data_dir(tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    for i, row in enumerate(ROWS):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(root / row["image"])
    (root / "classes.json").write_text(json.dumps(CLASSES))
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


def _mtime(path):
    return path.stat().st_mtime_ns


def test_encode_split_texts(data_dir, tmp_path):
    cfg = load_config(preset="tiny")
    split = read_split(data_dir, "train")
    run = tmp_path / "run"
    emb = encode_split_texts(cfg, split, run)
    cleaned = read_jsonl(run / "text" / "cleaned.jsonl")
    assert cleaned == [
        {"id": "a", "text": "running shoes white sneakers sport"},
        {"id": "b", "text": "summer dress beach cotton"},
        {"id": "c", "text": ""},
        {"id": "d", "text": "canvas gym shoes"},
    ]
    assert [c["text"] for c in cleaned] == [record_text(r, cfg.data.text_fields) for r in split.records]
    expected = create_encoder("minilm").encode([c["text"] or " " for c in cleaned], batch_size=8)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    np.testing.assert_allclose(np.load(run / "text" / "texts.npy"), expected, atol=1e-5)

    stamp = _mtime(run / "text" / "texts.npy")
    again = encode_split_texts(cfg, split, run)  # unchanged inputs and config: skipped
    assert _mtime(run / "text" / "texts.npy") == stamp
    np.testing.assert_array_equal(again, emb)

    cfg_title = load_config(preset="tiny", overrides=["data.text_fields=[title]"])
    emb_title = encode_split_texts(cfg_title, split, run)  # config changed: recomputed
    assert read_jsonl(run / "text" / "cleaned.jsonl")[0]["text"] == "running shoes"
    assert not np.allclose(emb_title[0], emb[0])


def test_other_splits_get_their_own_files(data_dir, tmp_path):
    (data_dir / "val.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    run = tmp_path / "run"
    emb = encode_split_texts(load_config(preset="tiny"), read_split(data_dir, "val"), run)
    assert emb.shape == (1, 384)
    assert (run / "text" / "texts_val.npy").is_file() and (run / "text" / "cleaned_val.jsonl").is_file()
    assert not (run / "text" / "texts.npy").exists()


def test_class_prototypes(data_dir, tmp_path):
    cfg = load_config(preset="tiny")
    classes = read_classes(data_dir)
    run = tmp_path / "run"
    protos = class_prototypes(cfg, classes, run)
    rows = read_jsonl(run / "text" / "concepts.jsonl")
    assert [(r["class"], r["name"], r["source"]) for r in rows] == [
        (0, "Sneaker", "wordnet"), (1, "Dress", "wordnet"), (2, "Tote", "definition")]
    assert rows[0]["synsets"] == ["gym_shoe.n.01", "shoe.n.01", "plimsoll.n.02"]
    assert rows[2] == {"class": 2, "name": "Tote", "source": "definition", "synsets": [],
                       "text": "tote a large open bag"}
    expected = create_encoder("minilm").encode([r["text"] for r in rows], batch_size=8)
    assert protos.shape == (3, 384)
    np.testing.assert_allclose(protos, expected, atol=1e-5)
    np.testing.assert_allclose(np.load(run / "text" / "prototypes.npy"), expected, atol=1e-5)

    stamp = _mtime(run / "text" / "prototypes.npy")
    class_prototypes(cfg, classes, run)
    assert _mtime(run / "text" / "prototypes.npy") == stamp
    cfg_both = load_config(preset="tiny", overrides=["text.concept_source=both"])
    class_prototypes(cfg_both, classes, run)
    assert [r["source"] for r in read_jsonl(run / "text" / "concepts.jsonl")] == [
        "wordnet", "both", "definition"]


def test_cli_text(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["text", str(data_dir), "--out", str(run), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert str(run / "text" / "texts.npy") in out and str(run / "text" / "prototypes.npy") in out
    assert np.load(run / "text" / "texts.npy").shape == (4, 384)
    assert np.load(run / "text" / "prototypes.npy").shape == (3, 384)


def test_cli_errors_are_one_line(data_dir, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["text", str(data_dir), "text.encoder=xlnet", "--out", run]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'xlnet' is not a known encoder" in err

    with open(data_dir / "train.jsonl", "a") as fh:
        fh.write('{"id": "e", "image": "img/a.png", "label": "Boot"}\n')
    assert main(["text", str(data_dir), "--out", run, "--preset", "tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1 invalid rows" in err and "Boot" in err
    assert main(["text", str(data_dir), "--out", run, "--preset", "tiny", "--skip-bad"]) == 0
    assert [r["line"] for r in read_jsonl(tmp_path / "run" / "rejected.jsonl")] == [5]
    assert np.load(tmp_path / "run" / "text" / "texts.npy").shape == (4, 384)


def test_unknown_text_field_is_a_config_error(data_dir, tmp_path):
    cfg = load_config(preset="tiny", overrides=["data.text_fields=[title,caption]"])
    with pytest.raises(ConfigError, match="'data.text_fields': unknown field\\(s\\) caption"):
        encode_split_texts(cfg, read_split(data_dir, "train"), tmp_path / "run")
