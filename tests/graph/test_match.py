import numpy as np
import pytest
from rerank_reference import re_ranking_loop

from capro.graph.knn import normalize_rows
from capro.graph.match import (
    anchor_counts,
    anchor_ranking,
    prototype_softmax,
    select_anchors,
    select_anchors_multilabel,
    text_cosine,
    text_distances,
    text_margins,
)


def _data(n=90, c=3, d=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    protos = rng.normal(size=(c, d))
    text = protos[labels] + 1.5 * rng.normal(size=(n, d))
    return text.astype(np.float32), protos.astype(np.float32), labels


def test_cosine_distances_and_cosine_matrix():
    text, protos, labels = _data()
    cos = text_cosine(text, protos)
    t, p = normalize_rows(text), normalize_rows(protos)
    np.testing.assert_allclose(cos, t @ p.T, atol=1e-6)
    dist = text_distances(text, protos, labels, method="cosine")
    np.testing.assert_allclose(dist, 1 - cos[np.arange(len(labels)), labels], atol=1e-6)


def test_rerank_distances_per_class_gallery():
    text, protos, labels = _data(n=70)
    dist = text_distances(text, protos, labels, method="rerank", k1=20, k2=6, lam=0.3)
    t, p = normalize_rows(text), normalize_rows(protos)
    for c in range(3):
        members = np.flatnonzero(labels == c)
        ref = re_ranking_loop(p[c:c + 1], t[members])[0]
        np.testing.assert_allclose(dist[members], ref, atol=1e-6)


def test_multilabel_distances_nan_outside_web_labels():
    text, protos, labels = _data(n=60)
    web = np.zeros((60, 3), dtype=bool)
    web[np.arange(60), labels] = True
    web[::4, 0] = True
    dist = text_distances(text, protos, web, method="rerank")
    assert np.isnan(dist[~web]).all() and np.isfinite(dist[web]).all()
    t, p = normalize_rows(text), normalize_rows(protos)
    members = np.flatnonzero(web[:, 0])
    np.testing.assert_allclose(dist[members, 0], re_ranking_loop(p[:1], t[members])[0], atol=1e-6)


def test_top_k_anchors_per_class_and_small_class_warning():
    labels = np.array([0, 0, 0, 0, 1, 1, 0, 2])
    dist = np.array([0.5, 0.1, 0.9, 0.1, 0.3, 0.2, 0.4, 0.7])
    with pytest.warns(UserWarning, match=r"2 class\(es\) have fewer than K=3 .*b \(2\), c \(1\)"):
        domain = select_anchors(dist, labels, num_classes=3, topk=3, class_names=["a", "b", "c"])
    # class 0: distances 0.5, 0.1, 0.9, 0.1, 0.4 -> indices 1, 3 (tie: lower index first), 6
    np.testing.assert_array_equal(domain, [0, 1, 0, 1, 1, 1, 1, 1])
    assert domain.dtype == np.int8


def test_random_anchors_are_seeded_and_within_class():
    labels = np.repeat(np.arange(4), 30)
    dist = np.linspace(0, 1, 120)
    a = select_anchors(dist, labels, num_classes=4, topk=5, mode="random", seed=3)
    b = select_anchors(dist, labels, num_classes=4, topk=5, mode="random", seed=3)
    c = select_anchors(dist, labels, num_classes=4, topk=5, mode="random", seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.bincount(labels[a == 1]), [5, 5, 5, 5])
    text_top = select_anchors(dist, labels, num_classes=4, topk=5)
    assert not np.array_equal(a, text_top)


def test_multilabel_positive_and_negative_anchors():
    web = np.zeros((9, 3), dtype=bool)
    web[:7, 0] = True     # 7 samples: 3 positives, min(7 - 3, 3) = 3 negatives
    web[5:9, 1] = True    # 4 samples: 3 positives, 1 negative
    web[[0, 8], 2] = True  # 2 samples: both positive, none negative
    dist = np.full((9, 3), np.nan)
    dist[:7, 0] = [0.6, 0.1, 0.7, 0.2, 0.9, 0.3, 0.8]
    dist[5:9, 1] = [0.4, 0.1, 0.3, 0.2]
    dist[[0, 8], 2] = [0.5, 0.6]
    with pytest.warns(UserWarning, match="fewer than K=3"):
        domain = select_anchors_multilabel(dist, web, topk=3)
    # class 0 by distance: 1, 3, 5 | 0 | 2, 6, 4 (the three farthest are negatives)
    np.testing.assert_array_equal(domain[:, 0], [0, 1, -1, 1, -1, 1, -1, 0, 0])
    np.testing.assert_array_equal(domain[:, 1], [0, 0, 0, 0, 0, -1, 1, 1, 1])
    np.testing.assert_array_equal(domain[:, 2], [1, 0, 0, 0, 0, 0, 0, 0, 1])
    with pytest.warns(UserWarning):
        no_neg = select_anchors_multilabel(dist, web, topk=3, negative=False)
    assert (no_neg >= 0).all() and (no_neg == 1).sum() == (domain == 1).sum()


def test_bad_mode_names():
    with pytest.raises(ValueError, match="matching method"):
        text_distances(np.ones((2, 2)), np.ones((1, 2)), np.zeros(2, int), method="bm25")
    with pytest.raises(ValueError, match="anchor mode"):
        select_anchors(np.zeros(2), np.zeros(2, int), num_classes=1, topk=1, mode="all")


def test_prototype_softmax_by_hand():
    cos = np.array([[0.9, 0.8, 0.1],    # fits class 0 and class 1 about as well
                    [0.9, 0.1, 0.1],    # fits only class 0
                    [0.2, 0.5, 0.4]])
    t = 0.1
    e = np.exp(cos / t)
    single = prototype_softmax(cos, np.array([0, 0, 2]), temperature=t)
    np.testing.assert_allclose(single, [e[0, 0] / e[0].sum(), e[1, 0] / e[1].sum(), e[2, 2] / e[2].sum()],
                               rtol=1e-6)
    assert single[1] > 0.99 and single[0] < 0.75  # the two-class text ranks below the clear one
    # multi-label: the other web labels leave the denominator
    web = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    multi = prototype_softmax(cos, web, temperature=t)
    np.testing.assert_allclose(multi[0, 0], e[0, 0] / (e[0, 0] + e[0, 2]), rtol=1e-6)
    np.testing.assert_allclose(multi[2, 1], e[2, 1] / (e[2, 1] + e[2, 0]), rtol=1e-6)
    assert np.isnan(multi[0, 2]) and np.isnan(multi[1, 1])
    assert np.isnan(prototype_softmax(cos, np.array([0, 5, 1]), temperature=t)[1])


def test_anchor_ranking_keeps_the_paper_distance_and_ranks_softmax_ascending():
    cos = np.array([[0.9, 0.8], [0.9, 0.1]])
    dist = np.array([0.1, 0.3], dtype=np.float32)
    labels = np.array([0, 0])
    np.testing.assert_array_equal(anchor_ranking(dist, cos, labels), dist)
    key = anchor_ranking(dist, cos, labels, score="softmax", temperature=0.1)
    assert key[1] < key[0]  # the clear text first, though it is farther from the prototype
    domain = select_anchors(key, labels, num_classes=2, topk=1)
    assert domain.tolist() == [0, 1]
    with pytest.raises(ValueError, match="anchor score"):
        anchor_ranking(dist, cos, labels, score="margin")


def test_text_margins_by_hand():
    cos = np.array([[0.9, 0.5, 0.2], [0.3, 0.4, 0.1], [0.2, 0.2, 0.8]])
    margin, nxt = text_margins(cos, np.array([0, 0, 5]))  # label 5 is outside 0..2
    np.testing.assert_allclose(margin[:2], [0.9 - 0.5, 0.3 - 0.4], atol=1e-6)
    assert np.isnan(margin[2]) and nxt.tolist() == [1, 1, -1]
    web = np.array([[True, True, False], [False, True, False], [True, True, True]])
    m, n = text_margins(cos, web)
    # sample 0 carries 0 and 1: both against class 2 (0.2); sample 2 carries every class
    np.testing.assert_allclose(m[0], [0.9 - 0.2, 0.5 - 0.2, np.nan], atol=1e-6)
    np.testing.assert_allclose(m[1], [np.nan, 0.4 - 0.3, np.nan], atol=1e-6)
    assert np.isnan(m[2]).all() and n.tolist() == [2, 0, -1]


def test_margin_floor_caps_at_k_and_tops_up_weak_classes():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    key = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.1, 0.2, 0.3, 0.1, 0.2])
    eligible = np.array([1, 0, 1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    with pytest.warns(UserWarning, match=r"1 class\(es\) have fewer texts that prefer them .*c \(0 of 2\)"):
        domain = select_anchors(key, labels, num_classes=3, topk=3, eligible=eligible, min_anchors=1,
                                class_names=["a", "b", "c"])
    # a: eligible 0, 2, 3, 4 -> the first three by key (cap); b: only 6 (evidence);
    # c: none eligible -> its best-ranked one (minimum), never the ineligible 1 of class a
    np.testing.assert_array_equal(domain, [1, 0, 1, 1, 0, 0, 1, 0, 1, 0])
    counts = anchor_counts(domain, labels, num_classes=3, topk=3, eligible=eligible, min_anchors=1,
                           class_names=["a", "b", "c"])
    assert [(c["samples"], c["with_evidence"], c["anchors"], c["why"]) for c in counts] == [
        (5, 4, 3, "cap"), (3, 1, 1, "evidence"), (2, 0, 1, "minimum")]
    # a minimum above the cap takes at most K: class b's one text with evidence is then too few
    capped = select_anchors(key, labels, num_classes=3, topk=2, eligible=np.ones(10, bool), min_anchors=9)
    assert [c["why"] for c in anchor_counts(capped, labels, num_classes=3, topk=2, eligible=eligible,
                                            min_anchors=9)] == ["cap", "minimum", "minimum"]
    with pytest.warns(UserWarning, match="fewer than K=3"):
        fixed_domain = select_anchors(key, labels, num_classes=3, topk=3)
    fixed = anchor_counts(fixed_domain, labels, num_classes=3, topk=3)
    assert [(c["anchors"], c["why"], c["with_evidence"]) for c in fixed] == [
        (3, "cap", None), (3, "cap", None), (2, "class size", None)]


def test_margin_floor_multilabel_positives_and_negatives():
    web = np.zeros((6, 2), dtype=bool)
    web[:, 0] = True
    key = np.full((6, 2), np.nan)
    key[:, 0] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    eligible = np.zeros((6, 2), dtype=bool)
    eligible[[1, 2], 0] = True
    against = np.zeros((6, 2), dtype=bool)
    against[[0, 3, 5], 0] = True  # 0 has evidence against too, but the two farthest come first
    domain = select_anchors_multilabel(key, web, topk=2, eligible=eligible, against=against,
                                       min_anchors=1)
    # positives: the eligible 1, 2; negatives: the farthest with evidence against, 5 then 3
    np.testing.assert_array_equal(domain[:, 0], [0, 1, 1, -1, 0, -1])
    assert (domain[:, 1] == 0).all()


@pytest.mark.parametrize("multi", [False, True])
def test_row_blocks_give_the_whole_array_result(monkeypatch, multi):
    from capro.graph import match

    rng = np.random.default_rng(5)
    n, c = 30, 4
    text = rng.normal(size=(n, 6)).astype(np.float32)
    protos = rng.normal(size=(c, 6)).astype(np.float32)
    labels = rng.random((n, c)) < 0.4 if multi else rng.integers(0, c, n)
    whole_cos = match.text_cosine(text, protos)
    whole = (match.text_margins(whole_cos, labels), match.prototype_softmax(whole_cos, labels))
    monkeypatch.setattr(match, "ROW_BLOCK", 7)  # 5 blocks, the last of 2 rows
    into = np.zeros((n, c), np.float32)
    cos = match.text_cosine(text, protos, out=into)
    assert cos is into
    np.testing.assert_allclose(cos, whole_cos, atol=1e-6)
    np.testing.assert_allclose(cos, normalize(text) @ normalize(protos).T, atol=1e-6)
    for got, want in zip(match.text_margins(whole_cos, labels), whole[0]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(match.prototype_softmax(whole_cos, labels), whole[1])
    for got, want in zip(match.text_margins_of(text, protos, labels), whole[0]):
        np.testing.assert_allclose(got, want, atol=1e-6)


def normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)
