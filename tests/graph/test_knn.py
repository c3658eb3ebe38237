from pathlib import Path

import numpy as np
import pytest
from cleanlab.internal.neighbor.knn_graph import create_knn_graph_and_index

from capro.errors import ConfigError, UsageError
from capro.graph.knn import (
    FaissIvf,
    FaissKnn,
    TorchKnn,
    create_index,
    create_knn_backend,
    exact_neighbours,
    faiss_available,
    knn_to_csr,
    normalize_rows,
    recall_at_k,
    resolve_index,
)

# A copy of the golden fixture lives in the repository (tests/fixtures/README.md).
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "capro_released_golden.npz"


@pytest.fixture(scope="module")
def golden():
    return np.load(FIXTURE)


def _clustered(n=400, d=24, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, d))
    return normalize_rows(centres[rng.integers(0, 10, n)] + 0.7 * rng.normal(size=(n, d)))


@pytest.mark.parametrize("backend", [TorchKnn(), TorchKnn(chunk_size=37, block_size=50), FaissKnn()])
def test_fixture_knn_reproduced(golden, backend):
    ids, sims = backend.search(golden["X"], k=20)
    assert ids.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_array_equal(ids, golden["knn_ids"])
    np.testing.assert_allclose(sims, golden["knn_sims"], atol=1e-6)


def test_torch_and_faiss_agree_and_match_brute_force():
    x = _clustered()
    t_ids, t_sims = TorchKnn(chunk_size=64, block_size=100).search(x, k=15)
    f_ids, f_sims = FaissKnn(chunk_size=128).search(x, k=15)
    np.testing.assert_array_equal(t_ids, f_ids)
    np.testing.assert_allclose(t_sims, f_sims, atol=1e-5)
    sims = x @ x.T
    np.fill_diagonal(sims, np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :15]
    np.testing.assert_array_equal(t_ids, expected)
    assert np.all(np.diff(t_sims[:, 1:], axis=1) <= 1e-6)


@pytest.mark.parametrize("name", ["torch", "faiss"])
def test_self_first_even_with_duplicates(name):
    x = _clustered(60, 8)
    x[10:14] = x[10]  # four identical rows tie with each other at similarity 1
    ids, sims = create_knn_backend(name).search(x, k=6)
    np.testing.assert_array_equal(ids[:, 0], np.arange(60))
    for i in range(10, 14):
        assert set(ids[i, :4]) == set(range(10, 14))
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-6)


def test_backend_registry_and_errors():
    assert create_knn_backend("auto").name == "faiss"  # faiss is installed in the dev environment
    assert create_knn_backend("torch").name == "torch"
    with pytest.raises(ConfigError, match="unknown kNN backend 'annoy'"):
        create_knn_backend("annoy")
    with pytest.raises(UsageError, match="exceeds the number of samples"):
        TorchKnn().search(_clustered(5, 4), k=6)


def test_knn_to_csr_matches_cleanlab_knn_graph():
    x = _clustered(200, 16, seed=3)
    ids, sims = TorchKnn().search(x, k=9)
    graph = knn_to_csr(ids, sims)
    ref, _ = create_knn_graph_and_index(x, n_neighbors=8, metric="cosine")
    assert graph.shape == (200, 200)
    np.testing.assert_array_equal(np.diff(graph.indptr), 8)
    np.testing.assert_array_equal(graph.indices, ref.indices)
    np.testing.assert_allclose(graph.data, ref.data, atol=1e-5)
    rows = graph.data.reshape(200, 8)
    assert np.all(np.diff(rows, axis=1) >= 0)


def test_knn_to_csr_keep_self_and_exact_duplicates():
    ids = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    sims = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 0.5], [1.0, 0.5, 0.25]], dtype=np.float32)
    g = knn_to_csr(ids, sims)
    np.testing.assert_array_equal(g.indices, [1, 2, 0, 2, 1, 0])
    np.testing.assert_allclose(g.data, [0.0, 0.5, 0.0, 0.5, 0.5, 0.75])
    assert g.nnz == 6  # the zero distance of the duplicate pair is stored explicitly
    g_self = knn_to_csr(ids, sims, drop_self=False)
    assert g_self.nnz == 9 and g_self[0, 0] == 0.0


def _clusters(n=3000, d=16, c=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 3
    return normalize_rows(centres[rng.integers(0, c, n)] + rng.normal(size=(n, d)))


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_keep_self_first_and_reach_high_recall(index):
    pytest.importorskip("faiss")
    x = _clusters()
    exact_ids, _ = TorchKnn().search(x, k=10)
    ids, sims = create_index(index, nprobe=8).search(x, k=10)
    assert ids.shape == (3000, 10) and (ids[:, 0] == np.arange(3000)).all()
    assert (np.diff(sims[:, 1:], axis=1) <= 1e-6).all()
    # recall by hand over the 9 non-self neighbours of every node, against the sampled estimate
    by_hand = np.mean([len(set(a[1:]) & set(b[1:])) / 9 for a, b in zip(ids, exact_ids)])
    assert by_hand > 0.9
    recall, used = recall_at_k(x, ids, queries=500, seed=1)
    assert used == 500 and abs(recall - by_hand) < 0.05
    assert recall_at_k(x, exact_ids, queries=500)[0] == 1.0


def test_exact_neighbours_of_sampled_queries_match_the_full_search():
    x = _clusters(n=700)
    full, _ = TorchKnn().search(x, k=8)
    q = np.array([0, 5, 699, 350])
    np.testing.assert_array_equal(exact_neighbours(x, q, k=8, block_size=100, query_chunk=3), full[q])


def test_index_choice_by_size():
    assert resolve_index("auto", 1000, exact_max=5000) == "exact"
    assert resolve_index("hnsw", 10, exact_max=5000) == "hnsw"
    if faiss_available():
        assert resolve_index("auto", 10_000, exact_max=5000) == "ivf"
    with pytest.raises(ConfigError, match="graph.index"):
        resolve_index("lsh", 10, exact_max=5)
    assert FaissIvf(nlist=0).cells(1_000_000) == 4000 and FaissIvf(nlist=0).cells(1000) == 25


def test_ivf_searches_on_a_gpu_only_with_faiss_gpu_and_a_cuda_device():
    from capro.graph.knn import gpu_id

    class CpuFaiss:  # faiss-cpu: no GPU resources
        pass

    class GpuFaiss:
        StandardGpuResources = object

        def __init__(self, gpus):
            self.gpus = gpus

        def get_num_gpus(self):
            return self.gpus

    assert gpu_id("cpu", GpuFaiss(1)) is None
    assert gpu_id("cuda", CpuFaiss()) is None and gpu_id("cuda:1", CpuFaiss()) is None
    assert gpu_id("cuda", GpuFaiss(0)) is None  # faiss-gpu but no visible GPU
    assert gpu_id("cuda", GpuFaiss(2)) == 0 and gpu_id("cuda:1", GpuFaiss(2)) == 1
    if faiss_available():  # the real faiss here: a CPU search either way
        import faiss

        x = _clusters(n=800)
        ivf = FaissIvf(nprobe=4, device="cuda")
        cpu_only = gpu_id("cuda", faiss) is None
        assert not cpu_only or type(ivf.build(x)).__name__ == "IndexIVFFlat"
