"""Input channels follow the data under any preset (a colour crawl is never turned grey)."""

import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from capro.config import load_config
from capro.data.channels import image_channels, is_grey, resolve_channels
from capro.data.layout import read_split
from capro.engine.runner import run_pipeline


def _colour_copy(src, dst):
    """``src`` with every image turned into a colour image (the red band brightened)."""
    shutil.copytree(src, dst)
    for path in (dst / "images").rglob("*.png"):
        grey = np.asarray(Image.open(path).convert("L"), dtype=np.uint16)
        rgb = np.stack([np.minimum(grey + 40, 255), grey, grey], axis=-1).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(path)
    return dst


def test_is_grey_by_mode_and_by_equal_bands():
    assert is_grey(Image.new("L", (4, 4), 7))
    assert is_grey(Image.new("RGB", (4, 4), (9, 9, 9)))  # saved as RGB, no colour in it
    assert not is_grey(Image.new("RGB", (4, 4), (9, 10, 9)))


def test_resolve_channels_follows_the_images_and_says_when_a_set_value_disagrees(tiny_web_data, tmp_path):
    colour = _colour_copy(tiny_web_data, tmp_path / "colour")
    grey_records = read_split(tiny_web_data, "train").records
    colour_records = read_split(colour, "train").records
    assert image_channels(tiny_web_data, grey_records) == 1 and image_channels(colour, colour_records) == 3
    for preset in ("cpu", "tiny", None):
        cfg = load_config(preset=preset)
        assert cfg.data.channels is None  # no preset decides the channels
        assert resolve_channels(cfg, colour, colour_records)[0].data.channels == 3
        assert resolve_channels(cfg, tiny_web_data, grey_records)[0].data.channels == 1
    kept, note = resolve_channels(load_config(preset="cpu", overrides=["data.channels=1"]), colour, colour_records)
    assert kept.data.channels == 1 and note.startswith("data.channels=1 trains on greyscale input, but the "
                                                       "training images are colour")
    assert resolve_channels(load_config(overrides=["data.channels=3"]), colour, colour_records)[1] is None


@pytest.mark.parametrize("colour", [True, False])
def test_preset_cpu_trains_colour_on_three_channels_and_grey_on_one(colour, tiny_web_data, tmp_path):
    data = _colour_copy(tiny_web_data, tmp_path / "colour") if colour else tiny_web_data
    cfg = load_config(preset="cpu", overrides=["model.backbone=simple_cnn", "data.image_size=16", "data.workers=0",
                                               "stage1.epochs=1", "stage2.epochs=0", "stage3.epochs=0",
                                               "train.max_steps_per_epoch=1"])
    run = tmp_path / "run"
    run_pipeline(data, run, cfg, progress=False)
    want = 3 if colour else 1
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["channels"] == want
    import torch

    state = torch.load(run / "model.pt", weights_only=False)["model"]
    first_conv = next(v for k, v in state.items() if k.startswith("encoder_q.") and v.dim() == 4)
    assert first_conv.shape[1] == want
    assert json.loads((run / "metrics.json").read_text())["final_stage"] == "stage1"
