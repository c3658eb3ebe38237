import pytest

from capro.config import PRESETS, Config, config_from_dict, load_config, save_config, to_dict
from capro.errors import ConfigError


def test_defaults_are_the_papers_webvision_values():
    cfg = load_config()
    assert (cfg.model.queue, cfg.model.low_dim, cfg.model.moco_m, cfg.model.temperature) == (8192, 128, 0.999, 0.1)
    assert (cfg.method.alpha, cfg.method.beta, cfg.method.pseudo_th, cfg.match.topk) == (0.5, 0.1, 0.6, 50)
    assert (cfg.stage2.epochs, cfg.stage2.init_proto_epoch, cfg.stage2.start_clean_epoch) == (60, 5, 10)
    assert (cfg.graph.k, cfg.graph.keep, cfg.graph.k1, cfg.graph.k2, cfg.graph.lam) == (20, 5, 20, 6, 0.3)
    assert cfg.stage3.mixup and cfg.stage3.frozen_encoder_epoch > cfg.stage3.epochs
    # D22: stage 2 alone averages its weights; the tiny preset's 3-epoch stage 2 does not
    assert (cfg.stage1.ema_epochs, cfg.stage2.ema_epochs, cfg.stage3.ema_epochs) == (0, 5, 0)
    assert load_config(preset="tiny").stage2.ema_epochs == 0
    assert (cfg.stage1.ema_max_share, cfg.stage2.ema_max_share) == (0.05, 0.05)  # D24
    assert cfg.method.logit_adjust == 1.0  # D26: the web labels' class prior out of cleaning's scores
    # D23: the window is resolved per run from the selecting split; a number overrides it
    assert cfg.train.select_window is None and load_config(overrides=["train.select_window=5"]).train.select_window == 5


def test_preset_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: nuswide\nstage1:\n  epochs: 7\nmodel:\n  backbone: resnet18\n")
    cfg = load_config(path, overrides=["stage1.epochs=3", "method.beta=0.2", "data.text_fields=[title]"])
    assert cfg.preset == "nuswide"
    assert cfg.model.queue == 2048 and cfg.method.pseudo_th == 0.9 and cfg.graph.k == 40
    assert cfg.stage1.epochs == 3 and cfg.model.backbone == "resnet18"
    assert cfg.method.beta == 0.2 and cfg.data.text_fields == ["title"]


def test_int_is_accepted_for_float_and_null_for_optional():
    cfg = load_config(overrides=["stage1.lr=1", "stage2.init_proto_epoch=null"])
    assert cfg.stage1.lr == 1.0 and isinstance(cfg.stage1.lr, float)
    assert cfg.stage2.init_proto_epoch is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("stage1.epochz=3", "unknown config key 'stage1.epochz'"),
        ("nosection.x=1", "unknown config key 'nosection'"),
        ("stage1.epochs=three", "config key 'stage1.epochs'"),
        ("train.amp=fp8", "'train.amp'"),
        ("graph.keep=50", "'graph.keep'"),
        ("stage2.ema_epochs=-1", "'stage2.ema_epochs'"),
        ("train.select_window=0", "'train.select_window'"),
        ("stage2.ema_max_share=0", "'stage2.ema_max_share'"),
        ("method.logit_adjust=-1", "'method.logit_adjust'"),
        ("method.protect_anchors=maybe", "expected true/false"),
        ("justakey", "key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(overrides=[override])
    assert fragment in str(info.value)


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config(preset="nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    seq = tmp_path / "seq.yaml"
    seq.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(seq)


def test_save_load_roundtrip(tmp_path):
    cfg = load_config(preset="cpu", overrides=["seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert config_from_dict(to_dict(cfg)) == cfg


def test_every_preset_is_valid():
    for name in PRESETS:
        assert isinstance(load_config(preset=name), Config)


def test_exponent_without_dot_is_a_float():
    cfg = load_config(overrides=["stage3.lr=1e-4", "stage1.lr=2E-3"])
    assert cfg.stage3.lr == 1e-4 and cfg.stage1.lr == 2e-3
