"""Two gloo processes under torchrun match one process with the same global batch.

Tolerance. The sampler gives rank r the r-th contiguous half of every global batch, augmentation
is seeded per sample, and the all-gathered keys and embeddings arrive in single-process order,
so with a batch-independent backbone the two runs compute the same function: gradients are the
mean of per-rank means = the global mean, the queue and the prototypes receive the same keys in
the same order. What remains is float summation order (all-reduce vs one batched sum), ~1e-7
relative per step. Batch norm would add a real difference (per-rank statistics over 16 instead
of 32 samples), so the test registers a GroupNorm CNN (per-sample normalisation) as its backbone
and keeps cleaning off (per-rank clean subsets would make the loss a mean of unequal means).
The weights must agree to 1e-4 while training moved them by orders of magnitude more.

Few steps. A healthy (non-collapsed) contrastive model amplifies float-order differences: after 12
steps even one process with 1 vs 2 threads differs by ~5e-3 on the prototypes (measured), the
same size as the 1-vs-2-process gap. So the run is kept to 6 steps (2 per epoch), where the
amplification is still ~1e-7, with a 96-key queue so that it wraps (global batch 32) within them.
"""

import json
import os
import subprocess
import sys

import torch
from _launch import GN_OVERRIDES, free_port

LAUNCHER = os.path.join(os.path.dirname(__file__), "_launch.py")


def test_two_gloo_processes_match_one(tiny_web_data, tmp_path):
    env = {**os.environ, "CAPRO_TEST_GN": "1", "CAPRO_TEST_AT": ""}  # the GroupNorm backbone
    # stage 2 once per online keep rule (D21): the branches, their scores and the publishing of the
    # chosen one go through the same collectives on every rank
    args = ["run", str(tiny_web_data), *GN_OVERRIDES, "method.keep_rules=[paper,top1]", "--preset", "tiny"]
    one = subprocess.run([sys.executable, LAUNCHER, *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                          LAUNCHER, *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["model"]
    s1 = torch.load(tmp_path / "one" / "stage1" / "checkpoint.pt", weights_only=True)["model"]
    assert bool(a["prototypes_ready"]) and bool(b["prototypes_ready"])
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k
    moved = (a["classifier.weight"] - s1["classifier.weight"]).abs().max()
    assert moved > 1e-2  # stage 2 trained, so the agreement above is not vacuous
    assert not torch.equal(a["queue"], s1["queue"]) and torch.allclose(a["queue"], b["queue"], atol=1e-4)
    rules = [json.loads((tmp_path / run / "metrics.json").read_text())["online_rule"] for run in ("one", "two")]
    assert rules[0]["chosen"] == rules[1]["chosen"] and list(rules[1]["rules"]) == ["paper", "top1"]
    for r in ("paper", "top1"):
        assert abs(rules[0]["rules"][r]["score"] - rules[1]["rules"][r]["score"]) < 1e-9
        assert (tmp_path / "two" / "online_rules" / r / "stage2" / "done.json").is_file()
