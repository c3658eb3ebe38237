"""Which optional parts of the model a run builds (plain-CE runs build no dead parts)."""

import pytest

from capro.config import load_config
from capro.engine.stages import build_model, model_parts

CE = ["stage2.epochs=0", "stage3.epochs=0", "method.bootstrap=none", "stage1.w_inst=0", "stage1.w_recn=0"]


@pytest.mark.parametrize(("overrides", "keys", "recon"), [
    (CE, False, False),
    ([*CE, "stage1.w_recn=0.5"], False, True),
    ([*CE, "stage1.w_inst=0.1"], True, False),
    ([*CE, "method.bootstrap=collective"], True, False),
    ([*CE, "method.bootstrap=label_smoothing"], False, False),
    ([*CE[1:], "stage2.epochs=3"], True, True),  # a stage 2 needs keys for its prototypes
    ([], True, True),
])
def test_model_parts_follow_the_losses_in_use(overrides, keys, recon):
    cfg = load_config(preset="tiny", overrides=overrides)
    assert model_parts(cfg) == {"momentum_keys": keys, "reconstructor": recon}
    model = build_model(cfg, 3, multi_label=False)
    assert hasattr(model, "encoder_k") is keys
    assert ("queue" in dict(model.named_buffers())) is keys
    assert (model.reconstructor is not None) is recon
