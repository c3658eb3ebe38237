"""``capro export-model``: the classifier alone, loaded with torch alone (TorchScript) and with
onnxruntime (ONNX), scores the demo's test images as ``capro predict`` does."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from capro.data.layout import read_split
from capro.engine.predict import predict_images
from capro.engine.runner import load_run_model


def _preprocess(paths, meta) -> np.ndarray:
    """model.json's preprocessing, written with PIL and numpy only (as a service would)."""
    pre = meta["preprocessing"]
    out = []
    for p in paths:
        im = Image.open(p).convert(pre["mode"])
        w, h = im.size
        s = pre["resize_shorter_side"]
        im = im.resize((s, round(h * s / w)) if w <= h else (round(w * s / h), s), Image.BILINEAR)
        c = pre["center_crop"]
        left, top = round((im.size[0] - c) / 2.0), round((im.size[1] - c) / 2.0)
        a = np.asarray(im.crop((left, top, left + c, top + c)), np.float32) * pre["scale"]
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        mean, std = np.array(pre["mean"], np.float32), np.array(pre["std"], np.float32)
        out.append((a - mean[:, None, None]) / std[:, None, None])
    return np.stack(out)


@pytest.fixture(scope="module")
def test_images(tiny_web_data):
    return [str(tiny_web_data / r.image) for r in read_split(tiny_web_data, "test").records]


@pytest.fixture(scope="module")
def reference(tiny_run, test_images):
    """(logits [N, K] of the run's model on the test transform, capro predict's top-1 names)."""
    run, _ = tiny_run
    model, classes, cfg, _ = load_run_model(run)
    from capro.data.transforms import eval_transform

    tf = eval_transform(size=cfg.data.image_size, channels=cfg.data.channels)
    x = torch.stack([tf(Image.open(p).convert("L")) for p in test_images])
    with torch.no_grad():
        logits = model(x).numpy()
    preds = [r["prediction"] for r in predict_images(run, test_images, device="cpu")]
    return logits, preds, [c.name for c in classes]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_matches_capro_predict(fmt, tiny_run, tmp_path, test_images, reference):
    run, _ = tiny_run
    out = tmp_path / fmt
    cli = subprocess.run([sys.executable, "-m", "capro", "export-model", str(run), "--format", fmt,
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    meta = json.loads((out / "model.json").read_text())
    ref_logits, ref_pred, names = reference
    assert meta["classes"] == names and meta["output"] == "softmax"
    assert meta["input"] == {"size": 16, "channels": 1}
    x = _preprocess(test_images, meta)
    if fmt == "torchscript":
        net = torch.jit.load(str(out / meta["file"]))
        with torch.no_grad():
            logits = net(torch.from_numpy(x)).numpy()
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out / meta["file"]), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {"image": x})[0]
    assert logits.shape == ref_logits.shape
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    assert [names[i] for i in logits.argmax(axis=1)] == ref_pred


def test_state_dict_export_rebuilds_from_the_backbone_registry(tiny_run, tmp_path, reference, test_images):
    from capro.data.transforms import eval_transform
    from capro.deploy import Classifier, export_model
    from capro.model.backbones import create_backbone

    run, _ = tiny_run
    meta = export_model(run, tmp_path, fmt="state-dict")
    state = torch.load(tmp_path / meta["file"], weights_only=True)
    encoder, dim = create_backbone(state["backbone"], in_chans=meta["input"]["channels"])
    net = Classifier(encoder, torch.nn.Linear(dim, len(meta["classes"]), bias=False))
    net.encoder.load_state_dict(state["encoder"])
    net.classifier.load_state_dict(state["classifier"])
    tf = eval_transform(size=16, channels=1)
    x = torch.stack([tf(Image.open(p).convert("L")) for p in test_images])
    with torch.no_grad():
        logits = net.eval()(x).numpy()
    np.testing.assert_allclose(logits, reference[0], atol=1e-5, rtol=0)


def test_unknown_format_is_a_clear_error(tiny_run, tmp_path):
    from capro.deploy import export_model
    from capro.errors import CaproError

    with pytest.raises(CaproError, match="torchscript, onnx, state-dict"):
        export_model(tiny_run[0], tmp_path, fmt="tflite")
