"""Sharded passes: each rank reads only its slice, and every rank gets one process's result."""

from pathlib import Path

import numpy as np
import pytest
import torch
from _gloo import run_gloo
from torch import nn
from torch.utils.data import Dataset

from capro.engine.evaluate import collect, evaluate_model
from capro.utils.dist import shard_range

N, BATCH, BAD = 23, 4, 9


@pytest.mark.parametrize(("n", "align", "world", "want"), [
    (200, 32, 2, [range(0, 96), range(96, 200)]),        # 7 batches: 3 and 4
    (5, 1, 3, [range(0, 1), range(1, 3), range(3, 5)]),
    (3, 4, 2, [range(0, 0), range(0, 3)]),               # one batch: rank 0 gets none
    (0, 8, 2, [range(0, 0), range(0, 0)]),
])
def test_shard_range_cuts_at_batch_boundaries(n, align, world, want):
    got = [shard_range(n, align=align, rank_=r, world=world) for r in range(world)]
    assert got == want
    assert [i for r in got for i in r] == list(range(n))
    assert all(r.start % align == 0 for r in got if len(r))


class Rows(Dataset):
    """Row i is ``[i, i², 1]``; image BAD cannot be read. Records which rows were read."""

    def __init__(self) -> None:
        self.read: list[int] = []

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        self.read.append(i)
        return {"img": torch.tensor([i, i * i / 10.0, 1.0]), "target": torch.tensor(i % 3),
                "index": torch.tensor(i), "valid": torch.tensor(i != BAD),
                "error": "broken file" if i == BAD else ""}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 3)


def _sharded(rank: int) -> tuple:
    ds, skipped = Rows(), []
    out, targets = collect(_model(), ds, device=torch.device("cpu"), batch_size=BATCH, skipped=skipped,
                           sharded=True)
    metrics = evaluate_model(_model(), Rows(), multi_label=False, device=torch.device("cpu"),
                             batch_size=BATCH, sharded=True)
    return out, targets, skipped, sorted(ds.read), metrics


def _all_checks(rank: int, work: str) -> dict:
    """Every two-rank check of this module, in one spawn of two gloo processes."""
    return {"collect": _sharded(rank), "encode": _encode(rank, f"{work}/two.npy"),
            "write": _write_two(rank, f"{work}/rows.npy")}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    work = tmp_path_factory.mktemp("two_ranks")
    return run_gloo(_all_checks, world=2, args=(str(work),)), work


def test_collect_shares_the_rows_and_gathers_one_process_result(two_ranks):
    ref_skipped: list = []
    ref_out, ref_targets = collect(_model(), Rows(), device=torch.device("cpu"), batch_size=BATCH,
                                   skipped=ref_skipped)
    ref_metrics = evaluate_model(_model(), Rows(), multi_label=False, device=torch.device("cpu"), batch_size=BATCH)
    assert ref_out.shape == (N - 1, 3) and ref_skipped == [(BAD, "broken file")]
    results = [r["collect"] for r in two_ranks[0]]
    # 6 batches of 4: rank 0 reads rows 0-11, rank 1 rows 12-22
    assert [r[3] for r in results] == [list(range(12)), list(range(12, N))]
    for out, targets, skipped, _, metrics in results:
        np.testing.assert_array_equal(out, ref_out)
        np.testing.assert_array_equal(targets, ref_targets)
        assert skipped == ref_skipped and metrics == ref_metrics


TEXTS = [f"text {i} about {'red ' * (i % 5)}shoes" for i in range(11)]


class Recording:
    """The real MiniLM encoder, recording the texts each call encodes."""

    def __init__(self) -> None:
        from capro.text.encode import create_encoder

        self.inner = create_encoder("minilm")
        self.name, self.dim, self.calls = self.inner.name, self.inner.dim, []

    def encode(self, texts, *, batch_size):
        self.calls.append(list(texts))
        return self.inner.encode(texts, batch_size=batch_size)


def _encode(rank: int, path: str) -> tuple:
    from capro.text.encode import encode_to_file

    enc = Recording()
    emb = encode_to_file(enc, TEXTS, path, batch_size=2, chunk_size=3, progress=False)
    return np.asarray(emb), enc.calls


def test_text_encoding_shares_the_chunks_among_ranks(two_ranks, tmp_path):
    one = Recording()
    from capro.text.encode import encode_to_file

    ref = np.asarray(encode_to_file(one, TEXTS, tmp_path / "one.npy", batch_size=2, chunk_size=3, progress=False))
    (a, calls_a), (b, calls_b) = (r["encode"] for r in two_ranks[0])
    # four chunks of the length order: rank 0 encodes chunks 0 and 2, rank 1 chunks 1 and 3
    assert calls_a == [one.calls[0], one.calls[2]] and calls_b == [one.calls[1], one.calls[3]]
    np.testing.assert_allclose(a, ref, atol=1e-6)
    np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npy", "one.npy.progress.json"]
    assert not (two_ranks[1] / "two.npy.chunks").exists() and (two_ranks[1] / "two.npy.progress.json").is_file()


def _square_rows(rows: range) -> tuple[np.ndarray, list]:
    """Row i = [i, i²]; position 5 is unreadable (a zero row)."""
    out = np.array([[i, i * i] for i in rows], np.float32)
    bad = [(i, "broken") for i in rows if i == 5]
    out[[i - rows.start for i, _ in bad]] = 0.0
    return out, bad


def _write_two(rank: int, out: str) -> tuple:
    from capro.engine.shards import write_sharded

    seen: list[range] = []

    def compute(rows: range):
        seen.append(rows)
        return _square_rows(rows)

    skipped = write_sharded(Path(out), 11, align=3, tag="t", compute=compute)
    return seen, skipped


def test_write_sharded_on_two_ranks_equals_one_and_resumes_slice_by_slice(two_ranks, tmp_path):
    from capro.engine.shards import shard_dir, write_sharded

    want = np.array([[i, i * i] for i in range(11)], np.float32)
    want[5] = 0.0
    (a_seen, a_bad), (b_seen, b_bad) = (r["write"] for r in two_ranks[0])
    assert a_seen == [range(0, 6)] and b_seen == [range(6, 11)]  # 4 blocks of 3: two each
    assert a_bad == b_bad == [(5, "broken")]
    np.testing.assert_array_equal(np.load(two_ranks[1] / "rows.npy"), want)
    assert not (two_ranks[1] / "rows.npy.shards").exists()

    # one process: a slice left on disk by an interrupted attempt is loaded, not recomputed
    out = tmp_path / "one.npy"
    parts = shard_dir(out, "t")
    parts.mkdir(parents=True)
    np.savez(parts / "0-11.npz", rows=want + 1, bad_pos=np.array([5]), bad_reason=np.array(["broken"]))
    calls: list[range] = []
    skipped = write_sharded(out, 11, align=3, tag="t", compute=lambda r: calls.append(r) or _square_rows(r))
    assert calls == [] and skipped == [(5, "broken")]
    np.testing.assert_array_equal(np.load(out), want + 1)
    skipped = write_sharded(out, 11, align=3, tag="u", compute=lambda r: calls.append(r) or _square_rows(r))
    assert calls == [range(0, 11)]  # another tag: computed
    np.testing.assert_array_equal(np.load(out), want)
