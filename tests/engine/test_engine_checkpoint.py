import random

import numpy as np
import pytest
import torch

from capro.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from capro.errors import CaproError


def _draw():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            np.random.randn())


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    np.random.randn()  # leave a cached gaussian in NumPy's state
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "rng": rng_state(), "epoch": 3})
    expected = _draw()
    ck = load_checkpoint(path)  # weights_only=True inside
    set_rng_state(ck["rng"])
    assert _draw() == expected
    assert ck["epoch"] == 3
    opt2 = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ck["optimizer"])
    buf = opt2.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt.state_dict()["state"][0]["momentum_buffer"])


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails inside torch.save
        save_checkpoint(path, {"epoch": 2, "bad": lambda: 0})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_corrupt_or_missing_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CaproError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(CaproError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
