import copy

import pytest
import torch
import torch.nn.functional as F

from capro import bootstrap, cleaning, losses
from capro import prototypes as proto_math
from capro.errors import ConfigError
from capro.model.capro import CAPro, StepFlags

C, D, B = 4, 16, 12


def make_model(*, multi_label=False, queue_size=64, seed=0, **kw):
    torch.manual_seed(seed)
    return CAPro(
        num_classes=C,
        backbone="simple_cnn",
        in_chans=1,
        low_dim=D,
        queue_size=queue_size,
        multi_label=multi_label,
        **kw,
    )


def make_batch(*, multi_label=False, n=B, seed=1, same_views=False):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, 1, 16, 16, generator=g)
    batch = {
        "img": img,
        "img_aug": img.clone() if same_views else torch.randn(n, 1, 16, 16, generator=g),
    }
    if multi_label:
        batch["target"] = (torch.rand(n, C, generator=g) > 0.6).float()
        batch["domain"] = torch.zeros(n, C, dtype=torch.int8)
    else:
        batch["target"] = torch.randint(0, C, (n,), generator=g)
        batch["anchor"] = torch.zeros(n, dtype=torch.bool)
    batch["weight"] = torch.ones(n)
    return batch


def query_side(model, img):
    """Re-run the query branch (train-mode BN uses batch statistics, so this is deterministic)."""
    with torch.no_grad():
        v = model.encoder_q(img)
        z = F.normalize(model.projection(v), dim=1)
        return v, model.classifier(v), z


# ---------------------------------------------------------------- construction and inference
def test_buffers_and_shapes():
    m = make_model(queue_size=32)
    assert m.queue.shape == (32, D)
    assert torch.allclose(m.queue.norm(dim=1), torch.ones(32))
    assert m.prototypes.shape == (C, D) and not m.prototypes.any()
    assert not bool(m.prototypes_ready)
    assert m.feature_dim == 256 and m.num_classes == C and not m.multi_label
    ml = make_model(multi_label=True)
    assert ml.prototypes.shape == (C, 2, D)
    assert ml.class_projection.weight.shape == (C, D, D)
    assert set(m.state_dict()) >= {
        "queue",
        "queue_ptr",
        "prototypes",
        "prototypes_ready",
        "pos_weight",
    }


def test_inference_helpers():
    m = make_model().eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        feats = m.extract_features(x)
        assert feats.shape == (3, 256)
        assert torch.allclose(m(x), m.classifier(feats))
        emb = m.embed(x)
        assert torch.allclose(emb, F.normalize(m.projection(feats), dim=1))
    k = m.anchor_embeddings(x)
    assert torch.allclose(k, emb)  # encoder_k starts as an exact copy of encoder_q
    ml = make_model(multi_label=True).eval()
    assert ml.anchor_embeddings(x).shape == (3, C, D)
    assert torch.allclose(ml.anchor_embeddings(x).norm(dim=-1), torch.ones(3, C))


def test_bad_flags_are_config_errors():
    m = make_model()
    with pytest.raises(ConfigError, match="bootstrap"):
        m(make_batch(), StepFlags(bootstrap="mixmatch"))
    with pytest.raises(ConfigError, match="prototypes mode"):
        m(make_batch(), StepFlags(prototypes_mode="some"))
    with pytest.raises(ConfigError, match="pos_weight"):
        m.set_class_weights(torch.ones(C + 1))


# ---------------------------------------------------------------- momentum encoder and queue
def test_momentum_update_of_key_encoder_follows_the_formula():
    m = make_model(moco_m=0.9)
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    q0 = [p.detach().clone() for p in m.encoder_q.parameters()]
    k0 = [p.detach().clone() for p in m.encoder_k.parameters()]
    m._momentum_update_key_encoder()
    for pq, pk, k in zip(q0, k0, m.encoder_k.parameters()):
        assert torch.allclose(k, 0.9 * pk + 0.1 * pq, atol=1e-6)
    assert all(not p.requires_grad for p in m.encoder_k.parameters())


def test_training_step_updates_key_encoder_only_when_asked():
    m = make_model(moco_m=0.5)
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.mul_(2.0)
    k0 = copy.deepcopy(m.encoder_k.state_dict())
    m(make_batch(), StepFlags(momentum_update_key=False))
    assert all(torch.equal(k0[n], t) for n, t in m.encoder_k.named_parameters())
    m(make_batch(), StepFlags())
    w = dict(m.encoder_k.named_parameters())["features.0.weight"]
    assert torch.allclose(w, 1.5 * k0["features.0.weight"], atol=1e-6)


def test_enqueue_wraps_around_when_queue_not_divisible_by_batch():
    m = make_model(queue_size=10)
    batches = [F.normalize(torch.randn(4, D), dim=1) for _ in range(3)]
    for keys in batches:
        m._dequeue_and_enqueue(keys)
    assert int(m.queue_ptr) == 2  # 12 keys written into 10 rows
    assert torch.equal(m.queue[4:8], batches[1])
    assert torch.equal(m.queue[8:10], batches[2][:2])
    assert torch.equal(m.queue[0:2], batches[2][2:])
    assert torch.equal(m.queue[2:4], batches[0][2:])


def test_enqueue_larger_than_queue_keeps_the_last_keys():
    m = make_model(queue_size=5)
    m._dequeue_and_enqueue(F.normalize(torch.randn(3, D), dim=1))
    keys = F.normalize(torch.randn(7, D), dim=1)
    m._dequeue_and_enqueue(keys)
    assert int(m.queue_ptr) == (3 + 7) % 5
    # sequential FIFO writes would leave key j at row (3 + j) % 5 for the last 5 keys j = 2..6
    for j in range(2, 7):
        assert torch.equal(m.queue[(3 + j) % 5], keys[j])


def test_instance_loss_uses_queue_before_and_collective_target_after_enqueue():
    m = make_model(queue_size=20)
    batch = make_batch(same_views=True)
    v, p, z = query_side(m, batch["img"])
    with torch.no_grad():
        m.queue.copy_(-z[:1].repeat(20, 1))  # every old key points away from every query
    queue_before = m.queue.clone()
    keys = z.clone()  # identical views and encoder_k == encoder_q: the keys equal the queries

    flags = StepFlags(momentum_update_key=False, beta=0.5)
    out = m(batch, flags)
    queue_after = m.queue.clone()
    assert torch.allclose(queue_after[:B], keys, atol=1e-6)
    assert torch.equal(queue_after[B:], queue_before[B:])

    inst_before = losses.instance_loss(z, keys, queue_before, temperature=0.1)
    inst_after = losses.instance_loss(z, keys, queue_after, temperature=0.1)
    assert not torch.isclose(inst_before, inst_after, atol=1e-3)
    assert torch.isclose(out.terms["inst"], inst_before, atol=1e-5)

    y = batch["target"]
    with torch.no_grad():
        q = m.aux_classifier(z)

    def aux_with(queue):
        key_probs = bootstrap.key_predictions(m.aux_classifier(queue), None, alpha=0.5)
        soft = bootstrap.collective_target(z, queue, key_probs)
        return losses.auxiliary_loss(q, y, soft, beta=0.5)

    assert not torch.isclose(aux_with(queue_before), aux_with(queue_after), atol=1e-4)
    assert torch.isclose(out.terms["aux"], aux_with(queue_after), atol=1e-5)


def test_collective_target_uses_prototypes_once_they_are_live():
    m = make_model(queue_size=20)
    batch = make_batch()
    with torch.no_grad():
        m.prototypes.copy_(F.normalize(torch.randn(C, D), dim=1))
    _, _, z = query_side(m, batch["img"])
    out = m(batch, StepFlags(use_prototypes=True, momentum_update_key=False, beta=1.0))
    with torch.no_grad():
        queue = m.queue
        key_probs = bootstrap.key_predictions(
            m.aux_classifier(queue), queue @ m.prototypes.t() / 0.1, alpha=0.5
        )
        soft = bootstrap.collective_target(z, queue, key_probs)
        expected = losses.soft_target_loss(m.aux_classifier(z), soft)
    assert torch.isclose(out.terms["aux"], expected, atol=1e-5)


# ---------------------------------------------------------------- cleaning and prototypes
def setup_cleaning_case(m, batch):
    """Prototypes on the first C queries; labels shifted off the confident argmax."""
    _, p, z = query_side(m, batch["img"])
    with torch.no_grad():
        m.prototypes.copy_(z[:C])
    scores = cleaning.cleaning_scores(p, z @ m.prototypes.t() / 0.1, alpha=0.5)
    batch["target"] = (scores.argmax(1) + 1) % C
    batch["anchor"] = torch.zeros(B, dtype=torch.bool)
    batch["anchor"][:3] = True
    return z, scores


def test_cleaning_inside_training_step_protects_anchors():
    m = make_model()
    batch = make_batch()
    z, scores = setup_cleaning_case(m, batch)
    protos0 = m.prototypes.clone()
    flags = StepFlags(use_prototypes=True, clean=True, pseudo_th=0.45, momentum_update_key=False)
    out = m(batch, flags)

    expected = cleaning.clean_batch(scores, batch["target"], pseudo_th=0.45, anchor=batch["anchor"])
    unprotected = cleaning.clean_batch(scores, batch["target"], pseudo_th=0.45)
    assert unprotected.relabeled[:3].any()  # the case matters: an anchor would be relabelled
    assert expected.relabeled.any() and not expected.clean.all()
    assert torch.equal(out.target, expected.target)
    assert torch.equal(out.clean, expected.clean)
    assert torch.equal(out.relabeled, expected.relabeled)
    assert torch.equal(out.target[:3], batch["target"][:3]) and out.clean[:3].all()
    assert torch.equal(m.prototypes, protos0)  # update_prototypes is off

    y, keep = expected.target, expected.clean
    _, p, _ = query_side(m, batch["img"])
    assert torch.isclose(out.terms["cls"], F.cross_entropy(p[keep], y[keep]), atol=1e-5)

    out_free = copy.deepcopy(m)(batch, StepFlags(**{**flags.__dict__, "protect_anchors": False}))
    assert torch.equal(out_free.relabeled, unprotected.relabeled)


def test_cleaning_inside_training_step_takes_the_prior_out():
    """``StepFlags.log_prior`` reaches the step's cleaning: its verdicts are those of the
    prior-adjusted scores, and a prior that matters changes them."""
    m = make_model()
    batch = make_batch()
    _, p, z = query_side(m, batch["img"])
    with torch.no_grad():
        m.prototypes.copy_(z[:C])
    proto = z @ m.prototypes.t() / 0.1
    batch["target"] = torch.arange(B) % C
    prior = torch.full((C,), -4.0)
    prior[0] = 0.0  # class 0 holds nearly all the labels: its classifier head start is taken out
    flags = StepFlags(use_prototypes=True, clean=True, pseudo_th=0.45, momentum_update_key=False,
                      protect_anchors=False, log_prior=prior)
    out = copy.deepcopy(m)(batch, flags)
    expected = cleaning.clean_batch(cleaning.cleaning_scores(p, proto, alpha=0.5, log_prior=prior),
                                    batch["target"], pseudo_th=0.45)
    plain = cleaning.clean_batch(cleaning.cleaning_scores(p, proto, alpha=0.5), batch["target"], pseudo_th=0.45)
    assert torch.equal(out.target, expected.target) and torch.equal(out.clean, expected.clean)
    assert not (torch.equal(plain.target, expected.target) and torch.equal(plain.clean, expected.clean))


def test_prototype_update_uses_clean_set_with_corrected_labels():
    m = make_model(proto_m=0.7)
    batch = make_batch()
    z, scores = setup_cleaning_case(m, batch)
    protos0 = m.prototypes.clone()
    flags = StepFlags(
        use_prototypes=True,
        clean=True,
        update_prototypes=True,
        pseudo_th=0.45,
        momentum_update_key=False,
    )
    out = m(batch, flags)
    assert not out.clean.all()
    expected = proto_math.momentum_update(
        protos0, z[out.clean], out.target[out.clean], momentum=0.7
    )
    assert torch.allclose(m.prototypes, expected, atol=1e-5)


def test_mopro_mode_updates_zero_prototypes_from_web_labels():
    m = make_model(proto_m=0.5)
    batch = make_batch()
    _, _, z = query_side(m, batch["img"])
    out = m(batch, StepFlags(prototypes_mode="all", update_prototypes=True, proto_loss=True))
    expected = proto_math.momentum_update(torch.zeros(C, D), z, batch["target"], momentum=0.5)
    assert torch.allclose(m.prototypes, expected, atol=1e-5)
    assert torch.isclose(
        out.terms["proto"], F.cross_entropy(torch.zeros(B, C), batch["target"]), atol=1e-5
    )  # the loss used the prototypes of before the update (zeros: uniform)


def test_initialise_prototypes_from_anchor_embeddings():
    m = make_model()
    x = torch.randn(8, 1, 16, 16)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    z = m.anchor_embeddings(x)
    m.initialise_prototypes(z, labels)
    expected, _ = proto_math.init_prototypes(z, labels, C)
    assert torch.allclose(m.prototypes, expected)
    assert bool(m.prototypes_ready) and not m.prototypes[3].any()


def test_empty_clean_set_gives_zero_masked_losses():
    m = make_model()
    batch = make_batch()
    _, p, z = query_side(m, batch["img"])
    with torch.no_grad():
        m.prototypes.copy_(F.normalize(torch.randn(C, D), dim=1))
    scores = cleaning.cleaning_scores(p, z @ m.prototypes.t() / 0.1, alpha=0.5)
    batch["target"] = scores.argmin(1)
    assert (scores.min(1).values < 1 / C).all()
    flags = StepFlags(use_prototypes=True, proto_loss=True, clean=True, pseudo_th=1.01)
    out = m(batch, flags)
    assert not out.clean.any()
    for name in ("cls", "aux", "recn", "proto"):
        assert out.terms[name].item() == 0.0
    assert torch.isfinite(out.loss) and out.terms["inst"] > 0
    out.loss.backward()


# ---------------------------------------------------------------- gradients
def projection_grads(model, batch, flags):
    model = copy.deepcopy(model)
    model(batch, flags).loss.backward()
    return [p.grad.clone() for p in model.projection.parameters()]


@pytest.mark.parametrize("proto_ready", [False, True])
def test_reconstruction_trains_projection_only_before_prototypes(proto_ready):
    m = make_model()
    batch = make_batch()
    base = StepFlags(use_prototypes=proto_ready, momentum_update_key=False)
    with_recn = projection_grads(m, batch, base)
    without = projection_grads(m, batch, StepFlags(**{**base.__dict__, "w_recn": 0.0}))
    same = all(torch.allclose(a, b, atol=1e-7) for a, b in zip(with_recn, without))
    assert same == proto_ready


def test_gradient_reaches_encoder_q_only_when_not_frozen():
    m = make_model()
    batch = make_batch()
    m(batch, StepFlags()).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder_q.parameters())
    assert all(p.grad is None for p in m.encoder_k.parameters())

    m = make_model()
    m.freeze_backbone(True)
    m(batch, StepFlags()).loss.backward()
    assert all(p.grad is None for p in m.encoder_q.parameters())
    assert m.classifier.weight.grad.abs().sum() > 0
    assert m.projection[0].weight.grad.abs().sum() > 0
    m.freeze_backbone(False)
    assert all(p.requires_grad for p in m.encoder_q.parameters())


# ---------------------------------------------------------------- loss terms
def test_weighted_terms_and_total():
    m = make_model()
    batch = make_batch()
    batch["weight"] = torch.linspace(0.5, 2.0, B)
    v, p, z = query_side(m, batch["img"])
    flags = StepFlags(bootstrap="none", w_inst=0.5, w_recn=2.0, momentum_update_key=False)
    out = m(batch, flags)
    y, w = batch["target"], batch["weight"]
    assert torch.isclose(
        out.terms["cls"], (F.cross_entropy(p, y, reduction="none") * w).mean(), atol=1e-5
    )
    expected_total = (
        out.terms["cls"] + 0.5 * out.terms["inst"] + out.terms["aux"] + 2.0 * out.terms["recn"]
    )
    assert torch.isclose(out.loss.detach(), expected_total, atol=1e-5)
    assert set(out.terms) == {"cls", "inst", "aux", "recn"}
    assert out.logits.shape == (B, C) and not out.logits.requires_grad
    assert torch.equal(out.target, y) and out.clean.all() and not out.relabeled.any()

    out0 = m(batch, StepFlags(w_inst=0.0, w_recn=0.0, w_proto=0.0))
    assert set(out0.terms) == {"cls", "aux"}


@pytest.mark.parametrize("mode", ["self", "label_smoothing", "ncr"])
def test_baseline_bootstrap_targets(mode):
    m = make_model()
    batch = make_batch()
    _, _, z = query_side(m, batch["img"])
    with torch.no_grad():
        q = m.aux_classifier(z)
    y = batch["target"]
    soft = {
        "self": lambda: bootstrap.self_target(q),
        "label_smoothing": lambda: bootstrap.label_smoothing_target(y, C),
        "ncr": lambda: bootstrap.ncr_target(z, q.softmax(1)),
    }[mode]()
    out = m(batch, StepFlags(bootstrap=mode, beta=0.3))
    assert torch.isclose(out.terms["aux"], losses.auxiliary_loss(q, y, soft, beta=0.3), atol=1e-5)


def test_mixup_term_matches_manual_computation():
    m = make_model()
    batch = make_batch()
    torch.manual_seed(123)
    out = m(batch, StepFlags(mixup=True, mixup_alpha=0.8, momentum_update_key=False))
    torch.manual_seed(123)
    lam = float(torch.distributions.Beta(0.8, 0.8).sample())
    perm = torch.randperm(B)
    x, y = batch["img"], batch["target"]
    with torch.no_grad():
        logits = m.classifier(m.encoder_q(lam * x + (1 - lam) * x[perm]))
    assert torch.isclose(out.terms["mixup"], losses.mixup_loss(logits, y, y[perm], lam), atol=1e-5)


def test_analyse_matches_cleaning_scores():
    m = make_model().eval()
    with torch.no_grad():
        m.prototypes.copy_(F.normalize(torch.randn(C, D), dim=1))
    x = torch.randn(5, 1, 16, 16)
    res = m.analyse(x, alpha=0.3)
    with torch.no_grad():
        v = m.encoder_q(x)
        z = F.normalize(m.projection(v), dim=1)
        logits = m.classifier(v)
    assert torch.allclose(res["embedding"], z, atol=1e-6)
    assert torch.allclose(res["proto_logits"], z @ m.prototypes.t() / 0.1, atol=1e-5)
    expected = cleaning.cleaning_scores(logits, z @ m.prototypes.t() / 0.1, alpha=0.3)
    assert torch.allclose(res["scores"], expected, atol=1e-6)
    prior = torch.log(torch.linspace(1.0, 2.0, C) / torch.linspace(1.0, 2.0, C).sum())
    adjusted = m.analyse(x, alpha=0.3, log_prior=prior)["scores"]
    mixed = 0.3 * F.softmax(logits - prior, dim=1) + 0.7 * F.softmax(z @ m.prototypes.t() / 0.1, dim=1)
    assert torch.allclose(adjusted, mixed, atol=1e-6) and not torch.allclose(adjusted, expected, atol=1e-4)


# ---------------------------------------------------------------- multi-label
def test_multilabel_step_terms_and_cleaning():
    m = make_model(multi_label=True)
    pos_weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    m.set_class_weights(pos_weight)
    batch = make_batch(multi_label=True)
    batch["domain"][:2, 0] = 1
    batch["domain"][2, 1] = -1
    with torch.no_grad():
        v, p, z = query_side(m, batch["img"])
        zc = m.class_projection(z)
        m.prototypes.copy_(F.normalize(torch.randn(C, 2, D), dim=-1))
        pl = torch.einsum("bcd,ckd->bck", zc, m.prototypes) / 0.1
        pos = 0.5 * torch.sigmoid(p) + 0.5 * pl.softmax(-1)[..., 1]
    flags = StepFlags(
        use_prototypes=True,
        proto_loss=True,
        clean=True,
        update_prototypes=True,
        pseudo_th=0.5,
        momentum_update_key=False,
    )
    protos0 = m.prototypes.clone()
    out = m(batch, flags)
    exp = cleaning.clean_batch_multilabel(
        pos, batch["target"], pseudo_th=0.5, num_classes=C, anchor=batch["domain"]
    )
    assert exp.flipped.any()
    assert torch.equal(out.target, exp.target)
    assert torch.equal(out.clean, exp.clean)
    assert torch.equal(out.relabeled, exp.flipped.any(1))
    assert out.target[0, 0] == batch["target"][0, 0] and out.target[2, 1] == batch["target"][2, 1]
    keep = exp.clean
    y = exp.target[keep]
    assert torch.isclose(
        out.terms["cls"], losses.multilabel_bce(p[keep], y, pos_weight=pos_weight), atol=1e-5
    )
    cw = torch.tensor([1.0, pos_weight.mean().item()])
    assert torch.isclose(
        out.terms["proto"],
        losses.multilabel_prototype_loss(pl[keep], y, class_weight=cw),
        atol=1e-5,
    )
    expected_p = proto_math.momentum_update_multilabel(protos0, zc[keep], y, momentum=0.999)
    assert torch.allclose(m.prototypes, expected_p, atol=1e-5)


def test_multilabel_collective_target_uses_full_soft_bce():
    m = make_model(multi_label=True, queue_size=16)
    batch = make_batch(multi_label=True)
    with torch.no_grad():
        _, p, z = query_side(m, batch["img"])
        q = m.aux_classifier(m.class_projection(z))
    out = m(batch, StepFlags(beta=0.4, momentum_update_key=False))
    with torch.no_grad():
        hq = m.class_projection(m.queue)
        key_probs = bootstrap.key_predictions_multilabel(m.aux_classifier(hq), None, alpha=0.5)
        soft = bootstrap.collective_target_multilabel(z, m.queue, key_probs)
    y = batch["target"]
    expected = 0.6 * losses.multilabel_bce(q, y) + 0.4 * losses.soft_bce(q, soft)
    assert torch.isclose(out.terms["aux"], expected, atol=1e-5)
    res = m.eval().analyse(batch["img"], alpha=0.5)
    assert res["scores"].shape == (B, C) and res["proto_logits"].shape == (B, C)
    assert ((res["scores"] >= 0) & (res["scores"] <= 1)).all()


def test_multilabel_initialise_prototypes():
    m = make_model(multi_label=True)
    x = torch.randn(6, 1, 16, 16)
    labels = torch.tensor([[1, 0, -1, 0]] * 3 + [[0, 1, 0, -1]] * 3, dtype=torch.float)
    zc = m.anchor_embeddings(x)
    m.initialise_prototypes(zc, labels)
    expected, _ = proto_math.init_prototypes_multilabel(zc, labels)
    assert torch.allclose(m.prototypes, expected)


# ---------------------------------------------------------------- learning
def separable_data(n, *, multi_label, seed=0):
    """Class c lights up quadrant c of a 16x16 image; multi-label: any subset of quadrants."""
    g = torch.Generator().manual_seed(seed)
    quads = [
        (slice(0, 8), slice(0, 8)),
        (slice(0, 8), slice(8, 16)),
        (slice(8, 16), slice(0, 8)),
        (slice(8, 16), slice(8, 16)),
    ]
    if multi_label:
        target = (torch.rand(n, C, generator=g) > 0.5).float()
    else:
        target = F.one_hot(torch.randint(0, C, (n,), generator=g), C).float()
    img = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    for c, (r, s) in enumerate(quads):
        img[:, 0, r, s] += 2.0 * target[:, c].view(n, 1, 1)
    return img, target if multi_label else target.argmax(1)


@pytest.mark.parametrize("multi_label", [False, True])
def test_loss_decreases_on_a_separable_problem(multi_label):
    m = make_model(multi_label=multi_label, queue_size=64, moco_m=0.9, proto_m=0.9)
    img, target = separable_data(64, multi_label=multi_label)
    anchors = torch.zeros(64, dtype=torch.bool)
    anchors[:16] = True
    with torch.no_grad():
        z = m.anchor_embeddings(img[anchors])
    labels = target[anchors]
    m.initialise_prototypes(z, labels)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    history = []
    g = torch.Generator().manual_seed(3)
    for step in range(20):
        flags = StepFlags(  # cleaning starts once the model has learnt something (epoch gating)
            use_prototypes=True,
            proto_loss=True,
            update_prototypes=True,
            clean=step >= 10,
            pseudo_th=0.9 if multi_label else 0.6,
        )
        idx = torch.randperm(64, generator=g)[:16]
        x = img[idx]
        batch = {
            "img": x,
            "img_aug": x + 0.1 * torch.randn(x.shape, generator=g),
            "target": target[idx],
            "weight": torch.ones(16),
        }
        if multi_label:
            batch["domain"] = anchors[idx].view(-1, 1).expand(-1, C).to(torch.int8)
        else:
            batch["anchor"] = anchors[idx]
        out = m(batch, flags)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append(out.terms["cls"].item())
        if step >= 10:
            assert (out.target == target[idx]).all()  # relabelling agrees with the truth here
    assert sum(history[-4:]) / 4 < 0.6 * sum(history[:4]) / 4
    m.eval()
    with torch.no_grad():
        logits = m(img)
    if multi_label:
        acc = ((logits > 0).float() == target).float().mean()
    else:
        acc = (logits.argmax(1) == target).float().mean()
    assert acc > 0.8


# ---------------------------------------------------------------- plain-CE runs build no dead parts
def _train_ce_steps(model, multi_label, steps=3):
    """A few SGD steps (momentum, weight decay) with every optional term off, as the ``ce`` row."""
    flags = StepFlags(bootstrap="none", w_inst=0.0, w_recn=0.0)
    params = [p for k, p in model.named_parameters() if not k.startswith("encoder_k.")]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in range(steps):
        out = model.training_step(make_batch(multi_label=multi_label, seed=10 + step), flags)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return out


@pytest.mark.parametrize("multi_label", [False, True])
def test_lean_model_trains_the_same_weights_to_the_bit(multi_label):
    full = make_model(multi_label=multi_label)
    lean = make_model(multi_label=multi_label, momentum_keys=False, reconstructor=False)
    assert not hasattr(lean, "encoder_k") and "queue" not in dict(lean.named_buffers())
    assert lean.reconstructor is None and not hasattr(lean, "projection_k")
    full_out = _train_ce_steps(full, multi_label)
    lean_out = _train_ce_steps(lean, multi_label)
    assert torch.equal(full_out.loss, lean_out.loss)
    assert set(lean_out.terms) == {"cls", "aux"} == set(full_out.terms)
    lean_state = lean.state_dict()
    shared = [k for k in full.state_dict() if k in lean_state]
    assert len(shared) == len(lean_state)
    for key in shared:
        assert torch.equal(full.state_dict()[key], lean_state[key]), key


def test_lean_model_refuses_a_step_that_needs_keys():
    lean = make_model(momentum_keys=False, reconstructor=False)
    with pytest.raises(ConfigError, match="instance loss"):
        lean.training_step(make_batch(), StepFlags(bootstrap="none", w_inst=1.0, w_recn=0.0))
    with pytest.raises(ConfigError, match="collective"):
        lean.training_step(make_batch(), StepFlags(bootstrap="collective", w_inst=0.0, w_recn=0.0))
