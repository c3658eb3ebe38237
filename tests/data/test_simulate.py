import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capro.cli import main
from capro.data.fashion import FASHION_CLASSES, load_digits, load_fashion
from capro.data.layout import read_classes, read_split
from capro.data.simtext import DIGIT_VOCAB, FASHION_VOCAB
from capro.data.simulate import (
    CONFUSION,
    PROFILES,
    NoiseProfile,
    allocate,
    balanced,
    class_sizes,
    clutter,
    render,
    simulate,
    summarise,
)
from capro.errors import ConfigError, DataError, UsageError
from capro.utils.io import read_json, read_jsonl

NAMES = [c.name for c in FASHION_CLASSES]
TRAIN = 3000  # 300 per query class


def _crop(path: Path, size: int = 32) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "L" and img.size == (size, size)
    arr = np.asarray(img)
    o = (size - 28) // 2
    return arr[o:o + 28, o:o + 28]


def _hashes(images: np.ndarray) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = {}
    for i, im in enumerate(images):
        out.setdefault(hashlib.sha1(im.tobytes()).digest(), []).append(i)
    return out


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    out = tmp_path_factory.mktemp("web")
    summary = simulate(out, profile="web", train_size=TRAIN, val_size=300, test_size=500, seed=3, progress=False)
    return out, summary


def test_realised_rates_match_the_profile(web):
    out, summary = web
    prof = PROFILES["web"]
    rates = summary["rates"]
    # exact largest-remainder shares per query class: off by < 1 sample in 300 per class and kind
    for key in ("semantic", "uniform", "outlier", "text_missing", "text_mismatch", "query_mention", "junk"):
        assert abs(rates[key] - getattr(prof, key)) < 0.005, key
    assert rates["unseen_class"] == 0
    assert abs(rates["clean"] - (1 - 0.18 - 0.08 - 0.07)) < 0.005
    # the saved summary is what the files say
    truth, train = read_jsonl(out / "truth.jsonl"), read_jsonl(out / "train.jsonl")
    assert summarise(truth, train) == {k: summary[k] for k in ("rates", "per_class")}
    assert read_json(out / "simulation.json") == json.loads(json.dumps(summary))
    # balanced queries, like a crawl
    assert Counter(r["label"] for r in train) == Counter({n: TRAIN // 10 for n in NAMES})


def test_truth_is_consistent(web):
    out, _ = web
    truth, train = read_jsonl(out / "truth.jsonl"), read_jsonl(out / "train.jsonl")
    assert [t["id"] for t in truth] == [r["id"] for r in train]
    for t, r in zip(truth, train):
        q = NAMES.index(r["label"])
        assert (t["noise"] == "clean") == (t["true_label"] == r["label"])
        assert (t["noise"] == "outlier") == (t["true_label"] is None)
        if t["noise"] == "semantic":
            assert CONFUSION[q, NAMES.index(t["true_label"])] > 0
        if t["noise"] == "uniform":
            assert t["true_label"] != r["label"]
        fields = " ".join([r["title"], r["description"], *r["tags"]]).lower()
        if t["text"] == "missing":
            assert r["title"] == r["description"] == "" and r["tags"] == []
            assert not t["query_mention"] and not t["junk"]
            continue
        about = DIGIT_VOCAB if t["text_about"] == "digit" else FASHION_VOCAB[NAMES.index(t["text_about"])]
        assert any(name in fields for name in about.names)
        if t["text"] == "true":
            assert t["text_about"] == (t["true_label"] or "digit")
        else:
            assert t["text_about"] != (t["true_label"] or "digit")
        if t["query_mention"]:
            assert FASHION_VOCAB[q].query in fields


def test_semantic_noise_follows_the_confusion_rows(web):
    out, _ = web
    truth, train = read_jsonl(out / "truth.jsonl"), read_jsonl(out / "train.jsonl")
    counts = np.zeros((10, 10))
    for t, r in zip(truth, train):
        if t["noise"] == "semantic":
            counts[NAMES.index(r["label"]), NAMES.index(t["true_label"])] += 1
    # 54 semantic samples per query: the top look-alike gets the most, within sampling error
    freq = counts / counts.sum(1, keepdims=True)
    assert np.abs(freq - CONFUSION).max() < 0.25
    assert (counts.argmax(1) == CONFUSION.argmax(1)).mean() >= 0.7


def test_layout_validates_and_images_are_real(web):
    out, _ = web
    classes = read_classes(out)
    assert [(c.name, c.wnid) for c in classes] == [(c.name, c.wnid) for c in FASHION_CLASSES]
    for split, n in (("train", TRAIN), ("val", 300), ("test", 500)):
        s = read_split(out, split, classes)
        assert not s.problems and len(s) == n
        for rec in s.records:
            assert (out / rec.image).is_file()
    truth = {t["id"]: t for t in read_jsonl(out / "truth.jsonl")}
    x_tr, y_tr = load_fashion("train")
    x_te, y_te = load_fashion("t10k")
    digits, _ = load_digits()
    tr_h, te_h, dg_h = _hashes(x_tr), _hashes(x_te), _hashes(digits)
    # train images: Fashion-MNIST train items of the true class, or MNIST digits for outliers
    for r in read_jsonl(out / "train.jsonl")[:200]:
        h = hashlib.sha1(_crop(out / r["image"]).tobytes()).digest()
        t = truth[r["id"]]
        if t["true_label"] is None:
            assert h in dg_h
        else:
            assert any(NAMES[y_tr[i]] == t["true_label"] for i in tr_h[h])
    # val and test images: t10k items of the labelled class, and the two splits never share one
    seen = {}
    for split in ("val", "test"):
        for r in read_jsonl(out / f"{split}.jsonl"):
            h = hashlib.sha1(_crop(out / r["image"]).tobytes()).digest()
            assert any(NAMES[y_te[i]] == r["label"] for i in te_h[h])
            seen.setdefault(h, set()).add(split)
    shared = [h for h, splits in seen.items() if len(splits) > 1 and len(te_h[h]) == 1]
    assert not shared


def test_render_pads_or_resizes_to_seven_eighths():
    item = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    out = render(item, 32)
    np.testing.assert_array_equal(out[2:30, 2:30], item)
    assert out[:2].sum() == 0 and out[:, 30:].sum() == 0
    big = render(item, 64)
    assert big.shape == (64, 64) and big[:4].sum() == 0 and big[4:60, 4:60].sum() > 0


def test_allocate_exact_shares():
    codes = allocate(1000, [0.18, 0.08, 0.07], np.random.default_rng(0))
    assert np.bincount(codes, minlength=4).tolist() == [670, 180, 80, 70]
    codes = allocate(7, [0.5, 0.25], np.random.default_rng(0))
    assert np.bincount(codes, minlength=3).tolist() == [2, 3, 2]  # 3.5 and 1.75: largest remainders


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(train_size=60, val_size=20, test_size=20, progress=False)
    simulate(tmp_path / "a", seed=5, **kw)
    simulate(tmp_path / "b", seed=5, **kw)
    simulate(tmp_path / "c", seed=6, **kw)
    for name in ("classes.json", "train.jsonl", "val.jsonl", "test.jsonl", "truth.jsonl", "simulation.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    pngs = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "images").rglob("*.png"))
    assert len(pngs) == 100
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in pngs)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


def test_multilabel_mosaics(tmp_path):
    summary = simulate(tmp_path, train_size=2000, val_size=100, test_size=100, seed=1, multilabel=True,
                       progress=False)
    prof = PROFILES["web"]
    train = read_split(tmp_path, "train")
    assert not train.problems and train.multi_label and len(train) == 2000
    test = read_split(tmp_path, "test")
    assert not test.problems and all(1 <= len(r.labels) <= 4 for r in test.records)
    truth = read_jsonl(tmp_path / "truth.jsonl")
    rows = read_jsonl(tmp_path / "train.jsonl")
    for t, r in zip(truth, rows):
        assert isinstance(r["label"], list) and r["label"]
        assert isinstance(t["true_label"], list) and 1 <= len(t["true_label"]) <= 4
        web = (set(t["true_label"]) - set(t["dropped"])) | set(t["added"])
        assert set(r["label"]) == web
        assert (t["noise"] == "clean") == (set(r["label"]) == set(t["true_label"]))
    rates = summary["rates"]
    assert abs(rates["tag_drop"] - prof.tag_drop) < 0.005  # exact share of all true labels
    # images whose tags were all dropped must get a spurious one, so tag_add can only exceed the target
    assert prof.tag_add - 0.001 < rates["tag_add"] < prof.tag_add + 0.02
    assert abs(rates["text_missing"] - prof.text_missing) < 0.005
    img = Image.open(tmp_path / rows[0]["image"])
    assert img.size == (32, 32) and img.mode == "L"


def test_open_set_split(tmp_path):
    summary = simulate(tmp_path, train_size=1200, val_size=100, test_size=200, seed=2, open_set=True,
                       open_set_known=4, progress=False)
    known, unseen = NAMES[:4], NAMES[4:]
    assert [c.name for c in read_classes(tmp_path)] == known
    for split in ("train", "val", "test"):
        s = read_split(tmp_path, split)
        assert not s.problems
    truth = read_jsonl(tmp_path / "truth.jsonl")
    rows = read_jsonl(tmp_path / "train.jsonl")
    assert {r["label"] for r in rows} == set(known)
    for t in truth:
        if t["noise"] == "unseen_class":
            assert t["true_label"] is None and t["true_name"] in unseen
        elif t["noise"] != "outlier":
            assert t["true_label"] in known
    assert abs(summary["rates"]["unseen_class"] - PROFILES["web"].unseen) < 0.005
    openset = read_jsonl(tmp_path / "openset_test.jsonl")
    assert Counter(r["true_name"] for r in openset) == Counter({n: 50 for n in NAMES})
    assert all((r["label"] is None) == (r["true_name"] in unseen) for r in openset)
    assert {r["id"] for r in read_jsonl(tmp_path / "test.jsonl")} <= {r["id"] for r in openset}
    assert all((tmp_path / r["image"]).is_file() for r in openset)
    assert summary["sizes"] == {"train": 1200, "val": 100, "test": 200, "openset_test": 500}


def test_overrides_and_bad_rates(tmp_path):
    summary = simulate(tmp_path, train_size=200, val_size=10, test_size=10, progress=False,
                       overrides={"semantic": 0.4, "uniform": 0.0, "text_missing": 0.5})
    assert summary["rates"]["semantic"] == 0.4 and summary["rates"]["uniform"] == 0
    assert summary["rates"]["text_missing"] == 0.5 and summary["profile"] == "web+overrides"
    with pytest.raises(ConfigError, match="unknown noise rate 'nope'"):
        simulate(tmp_path / "x", overrides={"nope": 0.1}, progress=False)
    with pytest.raises(ConfigError, match="add up past 1"):
        simulate(tmp_path / "x", overrides={"semantic": 0.6, "uniform": 0.6}, progress=False)
    custom = NoiseProfile(0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 0.5)
    s = simulate(tmp_path / "y", profile=custom, train_size=100, val_size=10, test_size=10, progress=False)
    assert s["profile"] == "custom" and s["rates"]["outlier"] == 0.1


def test_refuses_a_foreign_non_empty_dir_and_reruns_over_a_simulation(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a previous simulation"):
        simulate(tmp_path, train_size=20, val_size=0, test_size=0, progress=False)
    out = tmp_path / "sim"
    simulate(out, train_size=40, val_size=10, test_size=10, open_set=True, progress=False)
    simulate(out, train_size=20, val_size=10, test_size=10, progress=False)
    assert len(list((out / "images" / "train").iterdir())) == 20
    assert not (out / "openset_test.jsonl").exists()


def test_missing_fashion_mnist(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAPRO_FASHION_MNIST", str(tmp_path / "none"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        simulate(tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert main(["simulate", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"capro simulate: error: Fashion-MNIST not found at {tmp_path / 'none'}; "
                   "install it with: apt-get install dataset-fashion-mnist")


def test_cli_prints_the_rate_table(tmp_path, capsys):
    rc = main(["simulate", "--out", str(tmp_path / "d"), "--train-size", "100", "--val-size", "10",
               "--test-size", "10", "--seed", "1", "--set", "semantic=0.3", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "semantic" in text and "0.300" in text and "train 100" in text
    assert read_json(tmp_path / "d" / "simulation.json")["noise_profile"]["semantic"] == 0.3
    assert main(["simulate", "--out", str(tmp_path / "e"), "--set", "semantic"]) == 2


def _colour_dataset(root: Path) -> list[str]:
    """A tiny RGB dataset in capro's layout: 3 WordNet classes, coloured squares, 20 train + 8 test each."""
    classes = [{"name": "tiger cat", "wnid": "n02123159"}, {"name": "drumstick", "wnid": "n03250847"},
               {"name": "shirt", "wnid": "n04197391"}]
    colours = [(220, 120, 20), (120, 60, 30), (30, 60, 200)]
    (root / "img").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(classes))
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 8)):
        rows = []
        for c, colour in enumerate(colours):
            for i in range(n):
                arr = np.zeros((40, 30, 3), np.uint8)
                arr[5:35, 5:25] = colour
                arr = np.clip(arr + rng.integers(0, 30, arr.shape), 0, 255).astype(np.uint8)
                rel = f"img/{split}_{c}_{i}.png"
                Image.fromarray(arr).save(root / rel)
                rows.append({"id": f"{split}{c}_{i}", "image": rel, "label": classes[c]["name"]})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [c["name"] for c in classes]


def test_a_capro_layout_dataset_as_source(tmp_path):
    names = _colour_dataset(tmp_path / "src")
    out = tmp_path / "sim"
    summary = simulate(out, source=tmp_path / "src", train_size=90, val_size=6, test_size=12, seed=0,
                       progress=False)
    assert [c.name for c in read_classes(out)] == names
    for split in ("train", "val", "test"):
        assert not read_split(out, split).problems
    conf = np.array(summary["confusion"])
    assert conf.shape == (3, 3) and np.allclose(conf.sum(1), 1) and np.all(np.diag(conf) == 0)
    # tiger cat and drumstick are far apart in WordNet; the shirt is nearer the drumstick (both artefacts)
    assert conf[2, 1] > conf[2, 0]
    assert summary["source"] == "src" and summary["rates"]["outlier"] == pytest.approx(0.07, abs=0.02)
    rows, truth = read_jsonl(out / "train.jsonl"), read_jsonl(out / "truth.jsonl")
    img = Image.open(out / rows[0]["image"])
    assert img.mode == "RGB" and img.size == (32, 32)
    texts = [" ".join([r["title"], r["description"], *r["tags"]]) for r, t in zip(rows, truth)
             if t["text"] == "true" and t["true_label"] == "tiger cat"]
    assert texts and all("tiger cat" in x for x in texts)
    # a class without test images cannot be simulated
    (tmp_path / "src" / "test.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "image": "img/test_0_0.png", "label": "tiger cat"}) + "\n" for i in range(3)))
    with pytest.raises(DataError, match="'drumstick' has no evaluation images"):
        simulate(tmp_path / "sim2", source=tmp_path / "src", train_size=30, progress=False)


def test_wordnet_confusion_without_wnids_uses_shared_words():
    from capro.data.layout import ClassInfo
    from capro.data.simulate import wordnet_confusion

    conf = wordnet_confusion([ClassInfo("red car"), ClassInfo("blue car"), ClassInfo("dog")])
    np.testing.assert_allclose(conf, [[0, 1, 0], [1, 0, 0], [0.5, 0.5, 0]])


def test_class_sizes_are_geometric_and_sum_to_n():
    sizes = class_sizes(2000, 10, 1 / 6, np.random.default_rng(0))
    assert sizes.sum() == 2000 and sizes.dtype.kind == "i"
    s = np.sort(sizes)
    # geometric from ratio * largest to the largest: each step the same factor 6 ** (1 / 9)
    np.testing.assert_allclose(s[-1] / s[0], 6, rtol=0.05)
    np.testing.assert_allclose(s[1:] / s[:-1], 6 ** (1 / 9), rtol=0.05)
    np.testing.assert_array_equal(class_sizes(2003, 10, 1.0, np.random.default_rng(0)), balanced(2003, 10))


def test_uneven_profile_overlapping_concepts_and_unequal_classes(tmp_path):
    out = tmp_path / "uneven"
    summary = simulate(out, profile="uneven", train_size=1000, val_size=50, test_size=50, seed=1,
                       progress=False)
    counts = {name: c["queries"] for name, c in summary["per_class"].items() if "queries" in c}
    assert sum(counts.values()) == 1000 and max(counts.values()) > 4 * min(counts.values())
    assert abs(summary["rates"]["overlap"] - 0.08) < 0.01
    rows = {r["id"]: r for r in read_jsonl(out / "train.jsonl")}
    overlap = [t for t in read_jsonl(out / "truth.jsonl") if t["noise"] == "overlap"]
    partners = {"Shirt": "T-shirt/top", "T-shirt/top": "Shirt", "Sandal": "Sneaker"}
    for t in overlap:
        web = rows[t["id"]]["label"]
        # it shows the partner class, its text is about what it shows and names the query
        assert t["text"] == "true" and t["query_mention"] and t["text_about"] == t["true_label"]
        if web in partners:
            assert t["true_label"] == partners[web]
    assert {rows[t["id"]]["label"] for t in overlap} >= {"Shirt", "T-shirt/top"}
    # balanced evaluation splits
    assert len({r["label"] for r in read_jsonl(out / "test.jsonl")}) == 10
    with pytest.raises(ConfigError, match="size_ratio"):
        simulate(tmp_path / "x", overrides={"size_ratio": 0.0}, progress=False)


def test_clutter_lays_a_shifted_dimmed_item_over_the_image():
    img = np.array([[0, 200], [10, 0]], dtype=np.uint8)
    other = np.array([[100, 0], [0, 50]], dtype=np.uint8)
    # rolled one row down: [[0, 50], [100, 0]], at half brightness [[0, 25], [50, 0]]; then the maximum
    assert clutter(img, other, 0.5, (1, 0)).tolist() == [[0, 200], [50, 0]]
    assert clutter(img, other, 1.0, (0, 0)).tolist() == [[100, 200], [10, 50]]


def test_weak_profile_clutters_every_image_and_leaves_the_others_unchanged(tmp_path):
    sizes = {"train_size": 200, "val_size": 40, "test_size": 40, "image_size": 16, "seed": 5, "progress": False}
    summary = simulate(tmp_path / "weak", profile="weak", **sizes)
    simulate(tmp_path / "web", profile="web", **sizes)
    assert abs(summary["rates"]["label_noise"] - 0.40) < 0.01
    # val and test draw the same items under both profiles: the weak image is the web image with
    # a second item laid over it (pixelwise maximum), on (nearly) every image
    changed = 0
    for row in read_jsonl(tmp_path / "web" / "val.jsonl") + read_jsonl(tmp_path / "web" / "test.jsonl"):
        plain = np.asarray(Image.open(tmp_path / "web" / row["image"]))
        busy = np.asarray(Image.open(tmp_path / "weak" / row["image"]))
        assert (busy >= plain).all()
        changed += int((busy != plain).any())
    assert changed >= 78
    with pytest.raises(UsageError, match="clutter"):
        simulate(tmp_path / "ml", profile="weak", multilabel=True, **sizes)
