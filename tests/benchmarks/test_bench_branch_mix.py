"""``benchmarks/studies/branch_mix.py``: the weight average and the softmax mix, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def branch_mix(bench_script):
    return bench_script("branch_mix")


def test_weight_average_averages_floats_and_keeps_counters(branch_mix):
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(7), "h": torch.tensor([0.5], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(9), "h": torch.tensor([1.5], dtype=torch.float16)}
    out = branch_mix.weight_average([a, b])
    assert out["w"].tolist() == [2.0, 4.0]
    assert out["bn.num_batches_tracked"].item() == 7
    assert out["h"].dtype == torch.float16 and out["h"].item() == 1.0


def test_softmax_mix_is_the_mean_of_softmaxes(branch_mix):
    x = np.array([[0.0, np.log(3.0)]], dtype=np.float32)   # softmax [0.25, 0.75]
    y = np.array([[np.log(3.0), 0.0]], dtype=np.float32)   # softmax [0.75, 0.25]
    np.testing.assert_allclose(branch_mix.softmax_mix([x, y]), [[0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(branch_mix.softmax_mix([x, x]), [[0.25, 0.75]], atol=1e-6)
