
import pytest
import torch

from capro.errors import ConfigError
from capro.model.backbones import BACKBONES, create_backbone

EXPECTED_DIM = {
    "resnet18": 512,
    "resnet50": 2048,
    "resnet18_tiny": 512,
    "resnet50_tiny": 2048,
    "resnet18_small": 512,
    "resnet50_small": 2048,
    "simple_cnn": 256,
}


def test_registry_lists_the_expected_names():
    assert set(BACKBONES) == set(EXPECTED_DIM)


@pytest.mark.parametrize("name", sorted(EXPECTED_DIM))
@pytest.mark.parametrize("in_chans", [1, 3])
def test_backbone_maps_tiny_images_to_pooled_features(name, in_chans):
    torch.manual_seed(0)
    net, dim = create_backbone(name, in_chans=in_chans)
    assert dim == EXPECTED_DIM[name]
    net.eval()
    with torch.no_grad():
        for size in (16, 32):
            feats = net(torch.randn(2, in_chans, size, size))
            assert feats.shape == (2, dim)
            assert torch.isfinite(feats).all()
    assert sum(p.numel() for p in net.parameters()) > 0


def test_tiny_stem_keeps_more_resolution_than_imagenet_stem():
    # resnet18 at 32 px halves twice before layer1 (8x8); the tiny stem halves once (16x16).
    seen = {}
    for name in ("resnet18", "resnet18_tiny", "resnet18_small"):
        net, _ = create_backbone(name, in_chans=1)
        net.layer1.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 1, 32, 32))
    assert seen["resnet18"][-1] == 8
    assert seen["resnet18_tiny"][-1] == 16
    assert seen["resnet18_small"][-1] == 32


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="not_a_backbone"):
        create_backbone("not_a_backbone")


def test_error_without_timm_lists_the_choices(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(ConfigError, match="resnet18_tiny"):
        create_backbone("efficientnet_b0")


def test_pretrained_weights_load_with_prefix_nesting_and_shape_mismatch(tmp_path):
    torch.manual_seed(1)
    source, _ = create_backbone("resnet18_tiny", in_chans=3)
    state = {"module." + k: v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # a classifier left in the file: unused
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state}, path)

    with pytest.warns(UserWarning) as record:
        net, _ = create_backbone("resnet18_tiny", in_chans=1, pretrained=str(path))
    messages = " ".join(str(w.message) for w in record)
    assert "conv1.weight" in messages  # 3-channel conv1 does not fit a 1-channel stem
    assert "fc.weight" in messages
    loaded, original = net.state_dict(), source.state_dict()
    assert torch.equal(loaded["layer4.1.conv2.weight"], original["layer4.1.conv2.weight"])
    assert torch.equal(loaded["bn1.running_var"], original["bn1.running_var"])
    assert loaded["conv1.weight"].shape == (64, 1, 3, 3)


def test_missing_pretrained_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        create_backbone("simple_cnn", pretrained=str(tmp_path / "nope.pt"))


def test_non_state_dict_file_is_a_config_error(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ConfigError, match="state dict"):
        create_backbone("simple_cnn", pretrained=str(path))
