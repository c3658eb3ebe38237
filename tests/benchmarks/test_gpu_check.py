"""benchmarks/gpu_check.py runs its CPU-runnable parts (``--tiny`` on CPU, DDP on gloo)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_tiny_runs_every_check_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = {r["check"]: r for r in json.loads(out.read_text())}
    assert set(res) == {"machine", "train_step", "ddp_one_process", "knn", "input_path"}
    step = res["train_step"]
    assert step["ce"]["images_per_s"] > 0 and step["capro_stage2"]["images_per_s"] > 0
    assert step["capro_over_ce_time"] > 0 and step["amp"] == "off"
    assert res["ddp_one_process"]["backend"] == "gloo" and res["ddp_one_process"]["finite"]
    knn = res["knn"]
    assert knn["neighbour_overlap"] == 1.0  # exact search on both sides
    assert knn["cpu_queries"] == knn["n"]
    inp = res["input_path"]
    assert inp["store_views_images_per_s"] > 0 and inp["jpeg_decode_images_per_s"] > 0
    assert inp["step_images_per_s"] == step["capro_stage2"]["images_per_s"]
    assert inp["bound_with_store"] in ("input", "step")
