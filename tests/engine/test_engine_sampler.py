import torch

from capro.engine.loop import EpochSampler


def _batches(sampler, b):
    idx = list(sampler)
    return [idx[i:i + b] for i in range(0, len(idx), b)]


def test_ranks_take_contiguous_slices_of_the_single_process_batches():
    one = EpochSampler(100, global_batch=8, steps=12, seed=3)
    one.set_epoch(2)
    ranks = []
    for r in range(2):
        s = EpochSampler(100, global_batch=8, steps=12, rank=r, world=2, seed=3)
        s.set_epoch(2)
        ranks.append(_batches(s, 4))
    for step, batch in enumerate(_batches(one, 8)):
        assert ranks[0][step] + ranks[1][step] == batch
    assert len(set(sum(_batches(one, 8), []))) == 96  # no repeats inside an epoch


def test_skip_resumes_the_same_epoch_order():
    s = EpochSampler(50, global_batch=10, steps=5, seed=0)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, skip=3)
    assert list(s) == full[30:]
    assert len(s) == 20


def test_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(30, global_batch=5, steps=6, seed=1), EpochSampler(30, global_batch=5, steps=6, seed=1)
    a.set_epoch(0)
    b.set_epoch(0)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_cleaning_state_counts_by_hand():
    from capro.engine.loop import CleaningState

    state = CleaningState.fresh(torch.arange(5).numpy())
    assert state.counts() == {"kept": 5, "relabeled": 0, "removed": 0}
    state.update(torch.tensor([1, 3, 4]), clean=torch.tensor([True, False, True]),
                 relabeled=torch.tensor([True, False, False]), target=torch.tensor([2, 3, 4]))
    # 1 relabelled (clean), 3 removed, 0 / 2 / 4 kept with their label
    assert state.counts() == {"kept": 3, "relabeled": 1, "removed": 1}
