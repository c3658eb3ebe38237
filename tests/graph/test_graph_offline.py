import json
import os

import numpy as np
import pytest
import scipy.sparse as sp

from capro.cli import main
from capro.config import load_config
from capro.data.layout import ClassInfo, Record, Split
from capro.errors import DataError
from capro.graph.enhance import enhance_text
from capro.graph.knn import TorchKnn, normalize_rows
from capro.graph.match import prototype_softmax, select_anchors, text_distances
from capro.graph.offline import build_anchors, evidence, load_anchor_result
from capro.graph.rerank import rerank_knn
from capro.utils.io import read_jsonl

C, N = 4, 240


@pytest.fixture(scope="module")
def web():
    """Noisy web data: 25% of web labels are wrong; features and texts follow the true class."""
    rng = np.random.default_rng(0)
    true = rng.integers(0, C, N)
    noisy = rng.random(N) < 0.25
    labels = np.where(noisy, (true + rng.integers(1, C, N)) % C, true)
    feats = 2.0 * np.eye(C, 32)[true] + rng.normal(size=(N, 32))
    protos = rng.normal(size=(C, 16)).astype(np.float32)
    text = (protos[true] + 1.2 * rng.normal(size=(N, 16))).astype(np.float32)
    classes = [ClassInfo(name=f"class{c}") for c in range(C)]
    records = [Record(id=f"s{i:03d}", image=f"img/{i}.png", labels=(int(labels[i]),)) for i in range(N)]
    return {"split": Split("train", records, [], classes), "feats": feats, "text": text,
            "protos": protos, "labels": labels, "true": true}


def _cfg(*overrides):
    return load_config(preset="tiny", overrides=["graph.backend=torch", "match.topk=20", *overrides])


def test_evidence_names_where_an_anchor_s_text_support_came_from():
    assert evidence(0.05, 0.2) == "own text"  # its own text already prefers the class
    assert evidence(-0.1, 0.2) == "neighbours"  # only the enhanced text does
    assert evidence(None, 0.1) == "neighbours"  # no text of its own
    assert evidence(-0.1, -0.05) == "neither"  # the text prefers another class even enhanced
    assert evidence(0.0, 0.0) == "neither"


def test_build_anchors_composes_the_steps(tmp_path, web):
    cfg = _cfg("match.score=distance", "match.min_margin=null", "graph.self_weight=0")  # the paper's anchors
    res = build_anchors(cfg, web["split"], web["feats"], web["text"], web["protos"], tmp_path, seed=0)
    x = normalize_rows(web["feats"])
    ids, _ = TorchKnn().search(x, k=cfg.graph.k)
    r_ids, r_dist = rerank_knn(x, ids, k1=cfg.graph.k1, k2=cfg.graph.k2, lam=cfg.graph.lam)
    enhanced, _ = enhance_text(r_ids, r_dist, web["text"], keep=cfg.graph.keep)
    dist = text_distances(enhanced, web["protos"], web["labels"], k1=cfg.graph.k1, k2=cfg.graph.k2)
    domain = select_anchors(dist, web["labels"], num_classes=C, topk=20)
    np.testing.assert_array_equal(np.load(tmp_path / "graph/knn_ids.npy"), ids)
    np.testing.assert_array_equal(np.load(tmp_path / "graph/rerank_ids.npy"), r_ids)
    np.testing.assert_allclose(res.enhanced, enhanced, atol=1e-6)
    np.testing.assert_allclose(res.text_distance, dist, atol=1e-6)
    np.testing.assert_array_equal(res.domain, domain)
    assert res.domain.dtype == np.int8 and res.domain.sum() == 4 * 20
    assert res.text_cosine.shape == (N, C)

    # anchors are cleaner than the web labels they are drawn from
    anchor = res.domain == 1
    assert (web["labels"][anchor] == web["true"][anchor]).mean() > (web["labels"] == web["true"]).mean() + 0.1

    rows = read_jsonl(tmp_path / "match/anchors.jsonl")
    assert len(rows) == 80 and set(rows[0]) == {"id", "class", "rank", "distance", "margin", "next_class",
                                                "text", "own_margin", "evidence"}
    own_cos = normalize_rows(web["text"]) @ normalize_rows(web["protos"]).T
    for r in rows[:5]:  # margins: class cosine minus the best other class's, by hand
        i, c = int(r["id"][1:]), int(r["class"][5:])
        others = [res.text_cosine[i, k] for k in range(C) if k != c]
        assert r["margin"] == pytest.approx(res.text_cosine[i, c] - max(others), abs=1e-5)
        assert r["next_class"] == f"class{[k for k in range(C) if k != c][int(np.argmax(others))]}"
        own = own_cos[i, c] - max(own_cos[i, k] for k in range(C) if k != c)
        assert r["own_margin"] == pytest.approx(own, abs=1e-5)
        assert r["evidence"] == evidence(r["own_margin"], r["margin"])
        assert r["text"] == web["split"].records[i].text()[:300]
    first = [r for r in rows if r["class"] == "class0"]
    assert [r["rank"] for r in first] == list(range(1, 21))
    assert all(a["distance"] <= b["distance"] for a, b in zip(first, first[1:]))
    scores = read_jsonl(tmp_path / "match/scores.jsonl")
    assert len(scores) == N and scores[0]["id"] == "s000"
    assert scores[0]["label"] == f"class{web['labels'][0]}" and len(scores[0]["top_classes"]) == 4

    loaded = load_anchor_result(tmp_path)
    for key in ("domain", "text_distance", "text_cosine", "enhanced"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(res, key))


def test_default_anchors_by_evidence_over_mixed_texts(tmp_path, web):
    cfg = _cfg("match.min_anchors=5")  # D13 ranking, D16 floor 0 with K = 20 as a cap, D17 weight 0.25
    res = build_anchors(cfg, web["split"], web["feats"], web["text"], web["protos"], tmp_path, seed=0)
    x = normalize_rows(web["feats"])
    ids, _ = TorchKnn().search(x, k=cfg.graph.k)
    r_ids, r_dist = rerank_knn(x, ids, k1=cfg.graph.k1, k2=cfg.graph.k2, lam=cfg.graph.lam)
    neighbours, _ = enhance_text(r_ids, r_dist, web["text"], keep=cfg.graph.keep)
    mixed = 0.25 * web["text"] + 0.75 * neighbours
    np.testing.assert_allclose(res.enhanced, mixed, atol=1e-6)
    cos = normalize_rows(mixed) @ normalize_rows(web["protos"]).T
    key = 1.0 - prototype_softmax(cos, web["labels"], temperature=cfg.match.temperature)
    own = cos[np.arange(N), web["labels"]]
    margin = own - np.where(np.eye(C, dtype=bool)[web["labels"]], -np.inf, cos).max(axis=1)
    expected = np.zeros(N, dtype=np.int8)
    for c in range(C):  # by hand: the 20 best-ranked with a positive margin, at least 5
        members = np.flatnonzero(web["labels"] == c)
        ranked = members[np.argsort(key[members], kind="stable")]
        ok = ranked[margin[ranked] >= 0][:20]
        expected[ok if len(ok) >= 5 else ranked[:5]] = 1
    np.testing.assert_array_equal(res.domain, expected)
    assert 0 < res.domain.sum() <= 4 * 20
    counts = json.loads((tmp_path / "match/anchor_counts.json").read_text())
    assert counts["topk"] == 20 and counts["min_margin"] == 0.0 and counts["min_anchors"] == 5
    for c, row in enumerate(counts["classes"]):
        members = web["labels"] == c
        assert row["samples"] == members.sum() and row["with_evidence"] == (margin[members] >= 0).sum()
        assert row["anchors"] == expected[members].sum()
        assert row["why"] == ("cap" if row["with_evidence"] >= 20 else "evidence")
    rows = read_jsonl(tmp_path / "match/anchors.jsonl")
    assert len(rows) == res.domain.sum() and all(r["margin"] >= -1e-6 for r in rows)


def test_rerun_skips_unchanged_steps_and_redoes_changed_ones(tmp_path, web):
    args = (web["split"], web["feats"], web["text"], web["protos"], tmp_path)
    build_anchors(_cfg(), *args)
    files = ["graph/knn_ids.npy", "graph/rerank_ids.npy", "graph/enhanced.npy",
             "match/text_distance.npy", "match/domain.npy"]
    before = {f: os.stat(tmp_path / f).st_mtime_ns for f in files}
    build_anchors(_cfg(), *args)
    assert {f: os.stat(tmp_path / f).st_mtime_ns for f in files} == before

    res = build_anchors(_cfg("match.topk=10", "match.min_margin=null"), *args)
    after = {f: os.stat(tmp_path / f).st_mtime_ns for f in files}
    assert [f for f in files if after[f] != before[f]] == ["match/domain.npy"]
    assert res.domain.sum() == 4 * 10

    build_anchors(_cfg("match.topk=10", "match.min_margin=null", "graph.edge_weight=distance"), *args)
    again = {f: os.stat(tmp_path / f).st_mtime_ns for f in files}
    assert [f for f in files if again[f] != after[f]] == files[2:]


def test_ablations_no_enhance_no_rerank_random(tmp_path, web):
    args = (web["split"], web["feats"], web["text"], web["protos"])
    raw = build_anchors(_cfg("graph.enhance=false"), *args, tmp_path / "a")
    np.testing.assert_array_equal(raw.enhanced, web["text"])
    assert not (tmp_path / "a/graph/knn_ids.npy").exists()

    plain = build_anchors(_cfg("graph.rerank=false", "match.method=cosine"), *args, tmp_path / "b")
    np.testing.assert_array_equal(np.load(tmp_path / "b/graph/rerank_ids.npy"),
                                  np.load(tmp_path / "b/graph/knn_ids.npy"))
    cos = plain.text_cosine[np.arange(N), web["labels"]]
    np.testing.assert_allclose(plain.text_distance, 1 - cos, atol=1e-5)

    rand = build_anchors(_cfg("match.anchors=random"), *args, tmp_path / "c", seed=1)
    np.testing.assert_array_equal(np.bincount(web["labels"][rand.domain == 1]), [20] * 4)


def test_multilabel_anchors(tmp_path, web):
    labels = web["labels"]
    records = [Record(id=f"s{i}", image="x.png", labels=tuple(sorted({int(labels[i]), int(i % C)})),
                      multi_label=True) for i in range(N)]
    split = Split("train", records, [], web["split"].classes)
    res = build_anchors(_cfg("match.topk=15"), split, web["feats"], web["text"], web["protos"], tmp_path)
    assert res.domain.shape == (N, C) and res.text_distance.shape == (N, C)
    carried = np.zeros((N, C), bool)
    for i, r in enumerate(records):
        carried[i, list(r.labels)] = True
    assert np.isnan(res.text_distance[~carried]).all()
    assert ((res.domain != 0) <= carried).all()
    np.testing.assert_array_equal((res.domain == 1).sum(0), [15] * C)
    np.testing.assert_array_equal((res.domain == -1).sum(0), [15] * C)
    rows = read_jsonl(tmp_path / "match/anchors.jsonl")
    assert {r["polarity"] for r in rows} == {"positive", "negative"} and len(rows) == 2 * 15 * C
    assert isinstance(read_jsonl(tmp_path / "match/scores.jsonl")[0]["text_distance"], dict)


def test_row_mismatch_is_a_data_error(tmp_path, web):
    with pytest.raises(DataError, match="text_emb has 10 rows but the train split has 240"):
        build_anchors(_cfg(), web["split"], web["feats"], web["text"][:10], web["protos"], tmp_path)


def test_cli_steps_and_cleanlab_export(tmp_path, web, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.json").write_text(json.dumps([{"name": c.name} for c in web["split"].classes]))
    with open(data / "train.jsonl", "w") as fh:
        for r in web["split"].records:
            fh.write(json.dumps({"id": r.id, "image": r.image, "label": f"class{r.label}"}) + "\n")
    run = tmp_path / "run"
    (run / "features").mkdir(parents=True)
    (run / "text").mkdir()
    np.save(run / "features/stage1.npy", web["feats"].astype(np.float32))
    np.save(run / "text/texts.npy", web["text"])
    np.save(run / "text/prototypes.npy", web["protos"])
    # argparse: the KEY=VALUE overrides directly follow the positional arguments
    common = ["graph.backend=torch", "match.topk=20", "data.check_images=false", "--preset", "tiny"]
    assert main(["graph", str(run), "knn", *common]) == 0
    assert (run / "graph/rerank_dist.npy").is_file()
    assert main(["graph", str(run), "enhance", *common]) == 0
    assert main(["graph", str(run), "match", *common, "--data", str(data)]) == 0
    assert "80 anchors over 4 classes" in capsys.readouterr().out
    assert load_anchor_result(run).domain.sum() == 80
    assert main(["graph", str(run), "export-knn", *common, "--out", str(tmp_path / "g.npz")]) == 0
    g = sp.load_npz(tmp_path / "g.npz")
    assert g.shape == (N, N) and g.nnz == N * 9

    assert main(["graph", str(tmp_path / "nowhere"), "knn", *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage1.npy: missing stage-1 features" in err[0]


def test_softmax_anchor_score_ranks_by_the_margin_to_other_prototypes(tmp_path, web):
    assert _cfg().match.score == "softmax"  # the default (D13)
    cfg = _cfg("match.temperature=0.1", "match.min_margin=null")  # D13 alone: a fixed top-K
    res = build_anchors(cfg, web["split"], web["feats"], web["text"], web["protos"], tmp_path, seed=0)
    p = prototype_softmax(res.text_cosine, web["labels"], temperature=0.1)
    np.testing.assert_array_equal(res.domain, select_anchors(1.0 - p, web["labels"], num_classes=C, topk=20))
    rows = read_jsonl(tmp_path / "match/anchors.jsonl")
    first = [r for r in rows if r["class"] == "class0"]
    assert all(a["score"] >= b["score"] for a, b in zip(first, first[1:]))
    assert first[0]["score"] == pytest.approx(float(p[int(first[0]["id"][1:])]), abs=1e-5)
    # the distance ranking (the paper's) is another step: it reruns, and gives the first anchors
    paper = build_anchors(_cfg("match.score=distance", "match.min_margin=null"), web["split"], web["feats"], web["text"], web["protos"], tmp_path, seed=0)
    np.testing.assert_array_equal(paper.domain, select_anchors(paper.text_distance, web["labels"],
                                                               num_classes=C, topk=20))


def test_approximate_knn_records_its_recall(tmp_path, web, capsys):
    pytest.importorskip("faiss")
    import sys

    from capro.utils.progress import set_progress_stream

    set_progress_stream(sys.stdout)
    try:
        build_anchors(_cfg("graph.index=hnsw", "graph.recall_queries=100"), web["split"], web["feats"],
                      web["text"], web["protos"], tmp_path, seed=0)
    finally:
        set_progress_stream(None)
    done = json.loads((tmp_path / "graph/_steps/knn/done.json").read_text())
    ids = np.load(tmp_path / "graph/knn_ids.npy")
    exact, _ = TorchKnn().search(normalize_rows(web["feats"]), k=ids.shape[1])
    assert done["backend"] == "hnsw" and done["recall_queries"] == 100
    assert 0.9 <= done["recall"] <= 1.0
    assert f"kNN (hnsw): recall@9 {done['recall']:.3f} against exact search on 100 sampled nodes" in capsys.readouterr().out
    full = np.mean([len(set(a[1:]) & set(b[1:])) / (ids.shape[1] - 1) for a, b in zip(ids, exact)])
    assert abs(done["recall"] - full) < 0.05
    # auto below graph.exact_max searches exactly, with the fingerprint exact search always had
    exact_run = build_anchors(_cfg(), web["split"], web["feats"], web["text"], web["protos"], tmp_path / "e", seed=0)
    np.testing.assert_array_equal(np.load(tmp_path / "e/graph/knn_ids.npy"), exact)
    assert exact_run.domain.shape == (N,)
