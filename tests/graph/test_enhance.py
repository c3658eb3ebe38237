from pathlib import Path

import numpy as np
import pytest

from capro.graph.enhance import edge_weights, enhance_text, smoothing_matrix

# A copy of the golden fixture lives in the repository (tests/fixtures/README.md).
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "capro_released_golden.npz"


def test_reproduces_released_smoothing():
    g = np.load(FIXTURE)
    keep = int(g["keep"])
    out, isolated = enhance_text(g["rerank_ids"], g["rerank_dist"], g["text"], keep=keep,
                                 edge_weight="distance")
    np.testing.assert_allclose(out, g["enhanced_released"], atol=1e-5)
    assert not isolated.any()


def _dense_reference(ids, w, text):
    n = len(text)
    a = np.zeros((n, n))
    for i in range(n):
        for j, wij in zip(ids[i], w[i]):
            if j != i:
                a[i, j] = min(max(wij, 0.0), 1.0)
    a = np.maximum(a, a.T)
    s = a.sum(1, keepdims=True)
    a = np.divide(a, s, out=np.zeros_like(a), where=s > 0)
    out = a @ text
    out[s[:, 0] == 0] = text[s[:, 0] == 0]
    return out


def test_similarity_weights_hand_case():
    # node 0 lists itself and 1 (d=0.2) and 2 (d=0.6); node 1 lists 0 (d=0.5); node 2 lists 1 (d=0.9)
    ids = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    dist = np.array([[0.0, 0.2, 0.6], [0.0, 0.5, 1.0], [0.0, 0.9, 1.3]])
    text = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    out, isolated = enhance_text(ids, dist, text)
    # weights 1 - d clipped: A = [[0, .8, .4], [.5, 0, 0], [0, .1, 0]] -> max-sym -> row-normalise
    a = np.array([[0, 0.8, 0.4], [0.8, 0, 0.1], [0.4, 0.1, 0]])
    expected = (a / a.sum(1, keepdims=True)) @ text
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert not isolated.any()


def test_isolated_node_keeps_its_own_text():
    ids = np.array([[0, 1], [1, 0], [2, 0]])
    dist = np.array([[0.0, 0.3], [0.0, 0.3], [0.0, 1.0]])  # node 2's only edge has weight 0
    text = np.arange(6, dtype=np.float32).reshape(3, 2)
    out, isolated = enhance_text(ids, dist, text)
    np.testing.assert_array_equal(isolated, [False, False, True])
    np.testing.assert_allclose(out[2], text[2])
    np.testing.assert_allclose(out[0], text[1])


@pytest.mark.parametrize("mode", ["similarity", "distance"])
def test_matches_dense_reference_on_random_graph(mode):
    rng = np.random.default_rng(0)
    n, k = 60, 6
    others = [rng.permutation(np.delete(np.arange(n), i))[:k - 1] for i in range(n)]
    ids = np.concatenate([np.arange(n)[:, None], np.array(others)], axis=1)
    dist = np.sort(rng.uniform(-0.1, 1.2, (n, k)), axis=1)
    text = rng.normal(size=(n, 5)).astype(np.float32)
    out, _ = enhance_text(ids, dist, text, keep=4, edge_weight=mode)
    ref = _dense_reference(ids[:, :4], edge_weights(dist[:, :4], mode=mode), text)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_smoothing_matrix_is_sparse_and_row_stochastic():
    rng = np.random.default_rng(1)
    n = 5000
    ids = rng.integers(0, n, (n, 5))
    adj = smoothing_matrix(ids, np.full((n, 5), 0.5))
    assert adj.nnz <= 2 * 5 * n
    sums = np.asarray(adj.sum(1)).ravel()
    np.testing.assert_allclose(sums[sums > 0], 1.0)
    assert adj.diagonal().max() == 0


def test_edge_weight_modes():
    d = np.array([[-0.2, 0.25, 1.5]])
    np.testing.assert_allclose(edge_weights(d, mode="similarity"), [[1.0, 0.75, 0.0]])
    np.testing.assert_allclose(edge_weights(d, mode="distance"), [[0.0, 0.25, 1.0]])
    with pytest.raises(ValueError, match="edge weight mode"):
        edge_weights(d, mode="cosine")


def test_self_weight_mixes_the_own_text_back_in():
    ids = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]])
    dist = np.array([[0.0, 0.2, 0.6], [0.0, 0.2, 0.5], [0.0, 0.6, 0.5]])
    text = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    # node 0: edges to 1 (0.8, max with 1->0 = 0.8) and 2 (0.4): (0.8 * t1 + 0.4 * t2) / 1.2
    neighbours = (0.8 * text[1] + 0.4 * text[2]) / 1.2
    out, _ = enhance_text(ids, dist, text, self_weight=0.25)
    np.testing.assert_allclose(out[0], 0.25 * text[0] + 0.75 * neighbours, rtol=1e-6)
    paper, _ = enhance_text(ids, dist, text)
    np.testing.assert_allclose(paper[0], neighbours, rtol=1e-6)
    own, _ = enhance_text(ids, dist, text, self_weight=1.0)
    np.testing.assert_allclose(own, text)


def test_row_blocks_into_a_memory_mapped_file_equal_one_pass(tmp_path):
    rng = np.random.default_rng(3)
    n, k = 50, 5
    ids = np.concatenate([np.arange(n)[:, None], rng.integers(0, n, (n, k - 1))], axis=1)
    own = np.repeat(np.arange(n)[:, None], k, axis=1)
    ids[ids == 7] = own[ids == 7]
    ids[7] = 7  # no edge to or from node 7: isolated, it keeps its own text
    dist = np.sort(rng.uniform(0.0, 1.0, (n, k)), axis=1)
    np.save(tmp_path / "text.npy", rng.normal(size=(n, 6)).astype(np.float32))
    text = np.load(tmp_path / "text.npy", mmap_mode="r")  # read, never copied whole
    whole, iso = enhance_text(ids, dist, np.array(text), self_weight=0.25)
    into = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=text.shape)
    got, iso_b = enhance_text(ids, dist, text, self_weight=0.25, out=into, chunk=8)
    assert got is into and iso[7] and np.array_equal(iso, iso_b)
    np.testing.assert_array_equal(np.asarray(got), whole)  # blocks of 8 rows: bit for bit
    np.testing.assert_array_equal(np.asarray(got)[7], text[7])
