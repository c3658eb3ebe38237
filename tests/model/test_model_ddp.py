"""Two real gloo processes on CPU: queue, prototypes, shuffle-BN and DDP gradients agree."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from capro import prototypes as proto_math
from capro.model.capro import CAPro, StepFlags

C, D, B, Q, WORLD = 4, 16, 4, 20, 2


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # identical model and prototypes on both ranks
        model = CAPro(
            num_classes=C, backbone="simple_cnn", in_chans=1, low_dim=D, queue_size=Q, proto_m=0.5
        )
        with torch.no_grad():
            model.prototypes.copy_(F.normalize(torch.randn(C, D), dim=1))
            model.queue_ptr.fill_(15)  # the global batch of 8 wraps around the end of the queue
        model.eval()  # BN running statistics: keys do not depend on how the batch is shuffled
        g = torch.Generator().manual_seed(100 + rank)
        batch = {
            "img": torch.randn(B, 1, 16, 16, generator=g),
            "img_aug": torch.randn(B, 1, 16, 16, generator=g),
            "target": torch.randint(0, C, (B,), generator=g),
            "anchor": torch.zeros(B, dtype=torch.bool),
        }
        saved = {"queue0": model.queue.clone(), "protos0": model.prototypes.clone()}
        flags = StepFlags(use_prototypes=True, update_prototypes=True, clean=True, pseudo_th=1.01)
        ddp = DistributedDataParallel(model)  # keep a reference: its reducer syncs the backward
        out = ddp(batch, flags)
        out.loss.backward()
        with torch.no_grad():
            saved["keys"] = model._project(model.encoder_k(batch["img_aug"]))
            saved["z"] = model.embed(batch["img"])
        saved.update(
            queue=model.queue.clone(),
            ptr=int(model.queue_ptr),
            protos=model.prototypes.clone(),
            target=out.target,
            clean=out.clean,
            grad=model.classifier.weight.grad.clone(),
        )
        x = batch["img"]
        saved["anchor_shuffled"] = model.anchor_embeddings(x)
        with torch.no_grad():
            saved["anchor_local"] = model._project(model.encoder_k(x))
        uneven = x[: 3 - rank]  # batches of different size: embedded locally, no shuffle
        saved["uneven_diff"] = (
            (model.anchor_embeddings(uneven) - model._project(model.encoder_k(uneven))).abs().max()
        )
        shuffled, idx_unshuffle = model._batch_shuffle_ddp(x)
        saved.update(
            x=x, shuffled=shuffled, unshuffled=model._batch_unshuffle_ddp(shuffled, idx_unshuffle)
        )
        torch.save(saved, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_queue_prototypes_and_shuffle_bn(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))

    # queue: both ranks' keys, rank order, written FIFO from row 15 with wrap-around
    assert torch.equal(r0["queue"], r1["queue"])
    keys = torch.cat([r0["keys"], r1["keys"]])
    rows = (15 + torch.arange(2 * B)) % Q
    assert torch.allclose(r0["queue"][rows], keys, atol=1e-6)
    untouched = torch.ones(Q, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(r0["queue"][untouched], r0["queue0"][untouched])
    assert r0["ptr"] == r1["ptr"] == (15 + 2 * B) % Q

    # prototypes: identical on both ranks, updated from the gathered clean sets of unequal size
    assert torch.equal(r0["protos"], r1["protos"])
    assert r0["clean"].sum() != r1["clean"].sum() or not torch.cat([r0["clean"], r1["clean"]]).all()
    clean = torch.cat([r0["clean"], r1["clean"]])
    z = torch.cat([r0["z"], r1["z"]])
    target = torch.cat([r0["target"], r1["target"]])
    expected = proto_math.momentum_update(r0["protos0"], z[clean], target[clean], momentum=0.5)
    assert torch.allclose(r0["protos"], expected, atol=1e-5)

    # DDP averaged the gradients
    assert torch.allclose(r0["grad"], r1["grad"], atol=1e-6)

    # shuffle-BN in eval mode gives the keys of the unshuffled batch; the shuffle is a permutation
    for r in (r0, r1):
        assert torch.allclose(r["anchor_shuffled"], r["anchor_local"], atol=1e-5)
        assert torch.equal(r["unshuffled"], r["x"])
        assert r["uneven_diff"] < 1e-6
    before = torch.cat([r0["x"], r1["x"]]).flatten(1)
    after = torch.cat([r0["shuffled"], r1["shuffled"]]).flatten(1)
    assert torch.equal(before.sum(1).sort().values, after.sum(1).sort().values)
