"""ImageNet weights from installable packages, converted to timm backbones by structure."""

import pytest
import torch

from capro.errors import ConfigError
from capro.model.backbones import create_backbone
from capro.model.pretrained import adapt_input_channels, convert_efficientnet_lite, resolve_weights

timm = pytest.importorskip("timm", reason="timm is a dev dependency")


@pytest.fixture(scope="module")
def lite0():
    path, fits = resolve_weights("package:efficientnet-lite0")
    assert fits == "tf_efficientnet_lite0" and path.is_file()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_every_tensor_matched_by_name_and_shape_and_outputs_equal_the_package_model(lite0):
    from efficientnet_lite_pytorch import EfficientNet  # the package authors' own model class

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(lite0)  # strict: the file is in this class's names
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    own = net.state_dict()
    converted = convert_efficientnet_lite(lite0, own)
    assert set(converted) == set(own) and len(converted) == len(lite0) == 296
    assert all(converted[k].shape == own[k].shape for k in own)
    net.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = reference.eval()(x), net.eval()(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_greyscale_backbone_sees_a_grey_image_as_the_rgb_network_does():
    grey, dim = create_backbone("tf_efficientnet_lite0", in_chans=1, pretrained="package:efficientnet-lite0")
    rgb, _ = create_backbone("tf_efficientnet_lite0", in_chans=3, pretrained="package:efficientnet-lite0")
    assert dim == 1280 and grey.conv_stem.weight.shape[1] == 1
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(grey.eval()(x), rgb.eval()(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)


def test_adapt_input_channels_sums_rgb_filters():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    assert torch.equal(adapt_input_channels(w, 1), w[:, 0:1] + w[:, 1:2] + w[:, 2:3])
    assert adapt_input_channels(w, 3) is w
    with pytest.raises(ConfigError, match="4 channels"):
        adapt_input_channels(w, 4)


def test_wrong_backbone_or_package_names_the_fix():
    with pytest.raises(ConfigError, match="model.backbone=tf_efficientnet_lite0"):
        create_backbone("tf_efficientnet_lite1", in_chans=3, pretrained="package:efficientnet-lite0")
    with pytest.raises(ConfigError, match="unknown weight package 'resnet50'"):
        resolve_weights("package:resnet50")


@pytest.mark.parametrize("channels", [1, 3])
def test_finetune_preset_starts_from_the_shipped_weights_with_the_datas_channels(lite0, channels):
    from capro.config import load_config
    from capro.engine.stages import build_model

    cfg = load_config(preset="finetune", overrides=[f"data.channels={channels}"])
    model = build_model(cfg, 10, multi_label=False)
    stem = model.encoder_q.conv_stem.weight
    assert stem.shape[1] == channels
    torch.testing.assert_close(stem, adapt_input_channels(lite0["_conv_stem.weight"], channels))
    # the last block's projection too: the whole backbone, not only its stem, is pretrained
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, in_chans=channels)
    converted = convert_efficientnet_lite({**lite0, "_conv_stem.weight": adapt_input_channels(
        lite0["_conv_stem.weight"], channels)}, net.state_dict())
    own = model.encoder_q.state_dict()
    assert set(own) == set(converted) and len(own) == 294
    assert all(torch.equal(own[k], converted[k]) for k in own)
