"""The CAPro model: query/key encoders, heads, MoCo queue, class prototypes and the training step.

The method's state (queue, prototypes) and its updates live in the module, in the style of
facebookresearch/moco's builder. The math is delegated to the pure functions of
``capro.losses``, ``capro.bootstrap``, ``capro.cleaning`` and ``capro.prototypes``.

Shapes: B samples per rank, C classes, F backbone feature dims, D embedding dims (``low_dim``),
Q queue size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from capro import bootstrap, cleaning, losses
from capro import prototypes as proto_math
from capro.errors import ConfigError
from capro.model.backbones import create_backbone
from capro.model.heads import (
    ClassProjection,
    NormLinear,
    PerClassLinear,
    projection_head,
    reconstructor_head,
)
from capro.utils.dist import concat_all_gather, is_dist, rank, world_size

__all__ = ["CAPro", "StepFlags", "StepOutput"]

BOOTSTRAP_MODES = ("none", "collective", "self", "label_smoothing", "ncr")
PROTOTYPE_MODES = ("anchors", "all")
KEY_HEADS = ("momentum", "shared")


@dataclass
class StepFlags:
    """What one training step does; the engine derives these from the stage and the epoch."""

    use_prototypes: bool = False
    """Prototypes are initialised: prototype logits and the detached reconstruction input are on."""
    proto_loss: bool = False
    update_prototypes: bool = False
    clean: bool = False
    prototypes_mode: str = "anchors"
    """``anchors`` (CAPro) or ``all`` (MoPro: prototypes live from step 0)."""
    bootstrap: str = "collective"
    alpha: float = 0.5
    beta: float = 0.1
    pseudo_th: float = 0.6
    keep_th: float | None = None
    """Single-label keep threshold on s[y]; None = 1/C (the paper)."""
    keep_top: int = 0
    """Single-label: keep only labels among the ``keep_top`` best-scored classes; 0 = off."""
    log_prior: Tensor | None = None
    """Single-label: [C] tau log of the web labels' class shares, taken out of the classifier's
    share of the cleaning score (``method.logit_adjust``); None = off."""
    protect_anchors: bool = True
    w_inst: float = 1.0
    w_recn: float = 1.0
    w_proto: float = 1.0
    mixup: bool = False
    mixup_alpha: float = 0.8
    momentum_update_key: bool = True


@dataclass
class StepOutput:
    """Result of ``CAPro.training_step``; everything except ``loss`` is detached."""

    loss: Tensor
    terms: dict[str, Tensor]
    target: Tensor
    """[B] corrected labels (multi-label: [B, C] float in {1, 0, -1})."""
    clean: Tensor
    """[B] bool, the clean set S (all True when cleaning is off)."""
    relabeled: Tensor
    """[B] bool (multi-label: any class flipped)."""
    logits: Tensor
    """[B, C] main-classifier logits."""


@dataclass
class _Forward:
    """Query-side quantities of one batch (with grad)."""

    v: Tensor  # [B, F] backbone features
    p: Tensor  # [B, C] main logits
    z: Tensor  # [B, D] normalised embedding
    q: Tensor  # [B, C] auxiliary logits
    recon: Tensor | None  # [B, F]; None without a reconstructor
    zc: Tensor | None  # multi-label: [B, C, D] per-class embeddings


class CAPro(nn.Module):
    """Cross-modality Aligned Prototypes on top of a MoCo-style momentum encoder.

    Submodules: ``encoder_q``, ``encoder_k`` (momentum copy), ``projection``, ``projection_k``
    (``key_head="momentum"``: a momentum copy of ``projection`` that computes the keys),
    ``reconstructor``, ``classifier``, ``aux_classifier``; multi-label adds ``class_projection``
    and makes ``aux_classifier`` one logit per class embedding.

    ``key_head="shared"`` computes the keys with the query's ``projection`` as the released code
    does. With a stop-gradient key and no momentum copy, the instance loss then pulls every
    query towards a key made by the same, just-updated head, which turns the head into a power
    iteration on the (uncentred) feature moments: z collapses to one direction within tens of
    steps (measured: mean pairwise cosine 0.9999 after 10 steps with simple_cnn and
    resnet18_tiny, at lr 0.1 and 0.01), the auxiliary classifier cannot learn and prototypes
    carry no information. ``"momentum"`` (the default, as in MoCo and MoPro) keeps the keys on a
    slowly moving head and does not collapse.
    Buffers: ``queue`` [Q, D], ``queue_ptr``, ``prototypes`` [C, D] (multi-label [C, 2, D]),
    ``prototypes_ready``, ``pos_weight`` [C].

    ``momentum_keys=False`` builds no ``encoder_k``, ``projection_k`` or queue, and
    ``reconstructor=False`` no reconstructor: a run whose instance loss, reconstruction loss,
    collective bootstrapping and prototypes are all off (plain cross-entropy) pays for none of
    them, and trains exactly the same weights (their loss terms had weight 0).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet50",
        in_chans: int = 3,
        low_dim: int = 128,
        queue_size: int = 8192,
        moco_m: float = 0.999,
        proto_m: float = 0.999,
        temperature: float = 0.1,
        multi_label: bool = False,
        pretrained: str | None = None,
        key_head: str = "momentum",
        momentum_keys: bool = True,
        reconstructor: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if key_head not in KEY_HEADS:
            raise ConfigError(
                f"unknown model.key_head {key_head!r}: choose one of {', '.join(KEY_HEADS)}"
            )
        if queue_size < 1:
            raise ConfigError(f"model.queue must be >= 1, got {queue_size}")
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.low_dim = low_dim
        self.moco_m = moco_m
        self.proto_m = proto_m
        self.temperature = temperature

        self.encoder_q, self.feature_dim = create_backbone(
            backbone, in_chans=in_chans, pretrained=pretrained
        )
        self.has_keys = momentum_keys
        if momentum_keys:
            self.encoder_k = copy.deepcopy(self.encoder_q)
            for param in self.encoder_k.parameters():
                param.requires_grad = False
        self.projection = projection_head(self.feature_dim, low_dim)
        self.key_head = key_head
        if key_head == "momentum" and momentum_keys:
            self.projection_k = copy.deepcopy(self.projection)
            for param in self.projection_k.parameters():
                param.requires_grad = False
        # built even when left out, so that the heads after it start from the same random draws
        recon_head = reconstructor_head(low_dim, self.feature_dim)
        self.reconstructor = recon_head if reconstructor else None
        self.classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
        if multi_label:
            self.class_projection = ClassProjection(num_classes, low_dim)
            self.aux_classifier: nn.Module = PerClassLinear(num_classes, low_dim)
            proto_shape: tuple[int, ...] = (num_classes, 2, low_dim)
        else:
            self.aux_classifier = NormLinear(low_dim, num_classes)
            proto_shape = (num_classes, low_dim)

        if momentum_keys:
            self.register_buffer("queue", F.normalize(torch.randn(queue_size, low_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("prototypes", torch.zeros(proto_shape))
        self.register_buffer("prototypes_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("pos_weight", torch.ones(num_classes))

    # ------------------------------------------------------------------ inference
    def forward(
        self, x: Tensor | dict[str, Tensor], flags: StepFlags | None = None
    ) -> Tensor | StepOutput:
        """``flags`` None: main-classifier logits [B, C] of images x. Otherwise ``training_step``.

        The dispatch lets the engine call the training step through DistributedDataParallel.
        """
        if flags is None:
            return self.classifier(self.encoder_q(x))
        return self.training_step(x, flags)

    def extract_features(self, x: Tensor) -> Tensor:
        """[B, F] pooled ``encoder_q`` features (for the kNN graph)."""
        return self.encoder_q(x)

    def embed(self, x: Tensor) -> Tensor:
        """[B, D] L2-normalised query embedding."""
        return self._project(self.encoder_q(x))

    def freeze_backbone(self, frozen: bool) -> None:
        """Switch gradients of the ``encoder_q`` parameters off (``frozen``) or on."""
        for param in self.encoder_q.parameters():
            param.requires_grad = not frozen

    def set_class_weights(self, pos_weight: Tensor) -> None:
        """Multi-label positive-class weights [C] for the BCE losses (``losses.pos_weights``)."""
        pos_weight = torch.as_tensor(pos_weight, dtype=self.pos_weight.dtype)
        if pos_weight.shape != self.pos_weight.shape:
            raise ConfigError(
                f"pos_weight has shape {tuple(pos_weight.shape)}, expected ({self.num_classes},)"
            )
        self.pos_weight.copy_(pos_weight)

    # ------------------------------------------------------------------ prototypes
    @torch.no_grad()
    def anchor_embeddings(self, x: Tensor, *, shuffle: bool = True) -> Tensor:
        """Momentum-encoder embeddings of anchor images: [B, D] (multi-label [B, C, D]).

        With ``shuffle``, uses shuffle-BN across ranks when every rank passes the same batch size
        (else no shuffle); every rank must then call. ``shuffle=False`` involves no other rank
        (in eval mode batch norm uses its running statistics, so shuffling changes nothing).
        """
        if shuffle and is_dist() and world_size() > 1 and _same_size_on_all_ranks(x.shape[0], x.device):
            x, idx_unshuffle = self._batch_shuffle_ddp(x)
            k = self._batch_unshuffle_ddp(self._project_key(self.encoder_k(x)), idx_unshuffle)
        else:
            k = self._project_key(self.encoder_k(x))
        return self.class_projection(k) if self.multi_label else k

    @torch.no_grad()
    def initialise_prototypes(self, z: Tensor, labels: Tensor) -> None:
        """Set the prototypes from anchor embeddings gathered over all ranks.

        Single-label: z [N, D], labels [N] long. Multi-label: z [N, C, D], labels [N, C] in
        {1, 0, -1} (the domain-derived targets). Classes without anchors keep a zero prototype.
        """
        z = z.to(self.prototypes)
        if self.multi_label:
            protos, _ = proto_math.init_prototypes_multilabel(z, labels.to(z.device))
        else:
            protos, _ = proto_math.init_prototypes(z, labels.to(z.device), self.num_classes)
        self.prototypes.copy_(protos)
        self.prototypes_ready.fill_(True)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], flags: StepFlags) -> StepOutput:
        """One CAPro iteration, returning the total loss and diagnostics.

        ``batch``: "img" [B, ...] weak view, "img_aug" [B, ...] strong view, "target" [B] long
        (multi-label [B, C] float), "anchor" [B] bool (multi-label "domain" [B, C] int8),
        "weight" [B] float (optional, ones), "valid" [B] bool (optional, all True). Under DDP
        every rank must pass the same B (shuffle-BN and the all-gathers of keys and
        prototype-update samples rely on it).

        Invalid samples (placeholders for images that could not be read, kept so that every rank
        keeps the same B) are left out of everything the step learns from: every loss term
        (the instance loss is the mean over the valid samples only), the cleaning verdict
        (reported as not clean and not relabelled, with the input label), the prototype update,
        the in-batch neighbours of the ``ncr`` targets, and the queue (only valid keys are
        enqueued; the mask is all-gathered, so every rank's queue gets the same keys). A step
        with a placeholder computes what the same step without it would, except where the
        backbone itself mixes samples: a train-mode BatchNorm (and the shuffle-BN of the keys)
        includes the placeholder in its batch statistics, like any other sample of the batch.
        """
        _check_flags(flags)
        img, img_aug = batch["img"], batch["img_aug"]
        n = img.shape[0]
        weight = batch.get("weight")
        weight = (
            torch.ones(n, device=img.device) if weight is None else weight.to(img.device).float()
        )
        valid = batch.get("valid")
        valid = (
            torch.ones(n, dtype=torch.bool, device=img.device)
            if valid is None
            else valid.to(img.device).bool()
        )
        proto_on = flags.use_prototypes or flags.prototypes_mode == "all"

        out = self._query_forward(img, detach_recon_input=proto_on)
        keys = queue_before = None
        if self.has_keys:
            if flags.momentum_update_key:
                self._momentum_update_key_encoder()
            keys = self._keys(img_aug)
            queue_before = self.queue.clone()
            self._dequeue_and_enqueue(keys, valid)
        else:
            self._check_lean(flags, proto_on)
        protos = self.prototypes.clone()
        step = self._multilabel_step if self.multi_label else self._single_label_step
        return step(batch, flags, out, keys, queue_before, protos, weight, valid, proto_on)

    def _single_label_step(
        self,
        batch: dict[str, Tensor],
        flags: StepFlags,
        out: _Forward,
        keys: Tensor,
        queue_before: Tensor,
        protos: Tensor,
        weight: Tensor,
        valid: Tensor,
        proto_on: bool,
    ) -> StepOutput:
        """The cleaning, prototype and loss part of a step for single-label data (keys already enqueued)."""
        target = batch["target"].to(out.p.device).long()
        web = target
        n = target.shape[0]
        soft = self._soft_target_single(flags, out, target, valid, proto_on)
        proto_logits = out.z @ protos.t() / self.temperature

        if flags.clean:
            anchor = batch.get("anchor") if flags.protect_anchors else None
            scores = cleaning.cleaning_scores(
                out.p.detach(), proto_logits.detach(), alpha=flags.alpha, log_prior=flags.log_prior
            )
            result = cleaning.clean_batch(
                scores,
                target,
                pseudo_th=flags.pseudo_th,
                anchor=None if anchor is None else anchor.to(target.device).bool(),
                keep_th=flags.keep_th,
                keep_top=flags.keep_top,
            )
            target, clean, relabeled = result.target, result.clean, result.relabeled
        else:
            clean = torch.ones(n, dtype=torch.bool, device=target.device)
            relabeled = torch.zeros(n, dtype=torch.bool, device=target.device)
        target, clean, relabeled = _drop_invalid(valid, web, target, clean, relabeled)

        if flags.update_prototypes:
            self._update_prototypes(out.z.detach(), target, clean)

        y, w = target[clean], weight[clean]
        terms = {
            "cls": losses.classification_loss(out.p[clean], y, weight=w),
            **self._instance_term(out, keys, queue_before, valid),
            "aux": losses.auxiliary_loss(
                out.q[clean], y, None if soft is None else soft[clean], beta=flags.beta, weight=w
            ),
            **self._reconstruction_term(out, clean, w),
        }
        if flags.proto_loss:
            terms["proto"] = losses.prototype_loss(
                out.z[clean], protos, y, temperature=self.temperature, weight=w
            )
        if flags.mixup:
            terms["mixup"] = self._mixup_loss(batch["img"][clean], y, flags.mixup_alpha)
        return self._finish(terms, flags, target, clean, relabeled, out.p)

    def _multilabel_step(
        self,
        batch: dict[str, Tensor],
        flags: StepFlags,
        out: _Forward,
        keys: Tensor,
        queue_before: Tensor,
        protos: Tensor,
        weight: Tensor,
        valid: Tensor,
        proto_on: bool,
    ) -> StepOutput:
        """Multi-label, with D6: per-class prototypes [C, 2, D], masked BCE losses, per-class cleaning."""
        target = batch["target"].to(out.p.device).float()
        web = target
        n = target.shape[0]
        soft = self._soft_target_multi(flags, out, target, valid, proto_on)
        proto_logits = torch.einsum("bcd,ckd->bck", out.zc, protos) / self.temperature

        if flags.clean:
            domain = batch.get("domain") if flags.protect_anchors else None
            pos_scores = (
                flags.alpha * torch.sigmoid(out.p.detach())
                + (1 - flags.alpha) * (proto_logits.detach().softmax(dim=-1)[..., 1])
            )
            result = cleaning.clean_batch_multilabel(
                pos_scores,
                target,
                pseudo_th=flags.pseudo_th,
                num_classes=self.num_classes,
                anchor=None if domain is None else domain.to(target.device),
            )
            target, clean, relabeled = result.target, result.clean, result.flipped.any(dim=1)
        else:
            clean = torch.ones(n, dtype=torch.bool, device=target.device)
            relabeled = torch.zeros(n, dtype=torch.bool, device=target.device)
        target, clean, relabeled = _drop_invalid(valid, web, target, clean, relabeled)

        if flags.update_prototypes:
            self._update_prototypes(out.zc.detach(), target, clean)

        y, w = target[clean], weight[clean]
        pos_weight = self.pos_weight
        aux = losses.multilabel_bce(out.q[clean], y, pos_weight=pos_weight, weight=w)
        if soft is not None:
            aux = (1 - flags.beta) * aux + flags.beta * losses.soft_bce(
                out.q[clean], soft[clean], mask=y >= 0, weight=w
            )
        terms = {
            "cls": losses.multilabel_bce(out.p[clean], y, pos_weight=pos_weight, weight=w),
            **self._instance_term(out, keys, queue_before, valid),
            "aux": aux,
            **self._reconstruction_term(out, clean, w),
        }
        if flags.proto_loss:
            class_weight = torch.stack([torch.ones_like(pos_weight[0]), pos_weight.mean()])
            terms["proto"] = losses.multilabel_prototype_loss(
                proto_logits[clean], y, class_weight=class_weight, weight=w
            )
        if flags.mixup:
            terms["mixup"] = self._mixup_loss(batch["img"][clean], y, flags.mixup_alpha)
        return self._finish(terms, flags, target, clean, relabeled, out.p)

    def _finish(
        self,
        terms: dict[str, Tensor],
        flags: StepFlags,
        target: Tensor,
        clean: Tensor,
        relabeled: Tensor,
        logits: Tensor,
    ) -> StepOutput:
        """Weight and sum the loss terms; report the active ones detached."""
        scale = {"inst": flags.w_inst, "recn": flags.w_recn, "proto": flags.w_proto}
        loss = sum(scale.get(name, 1.0) * value for name, value in terms.items())
        active = {
            name: value.detach() for name, value in terms.items() if scale.get(name, 1.0) != 0
        }
        return StepOutput(
            loss=loss,
            terms=active,
            target=target,
            clean=clean,
            relabeled=relabeled,
            logits=logits.detach(),
        )

    # ------------------------------------------------------------------ analysis (stage 3a)
    @torch.no_grad()
    def analyse(self, x: Tensor, *, alpha: float, log_prior: Tensor | None = None) -> dict[str, Tensor]:
        """Offline-cleaning quantities of images x (the caller sets eval mode).

        Returns "scores" [B, C] = alpha softmax(p - log_prior) + (1 - alpha) softmax(z Pᵀ / T)
        (``log_prior`` [C] or None: :func:`capro.cleaning.cleaning_scores`; multi-label:
        positive-class scores alpha sigmoid(p) + (1 - alpha) softmax_{neg,pos}[pos]), "logits"
        [B, C], "proto_logits" [B, C] (multi-label: the positive-minus-negative prototype logit,
        whose sigmoid is the prototype's positive probability) and "embedding" [B, D].
        """
        v = self.encoder_q(x)
        logits = self.classifier(v)
        z = self._project(v)
        if self.multi_label:
            pl = torch.einsum("bcd,ckd->bck", self.class_projection(z), self.prototypes)
            pl = pl / self.temperature
            proto_logits = pl[..., 1] - pl[..., 0]
            scores = alpha * torch.sigmoid(logits) + (1 - alpha) * torch.sigmoid(proto_logits)
        else:
            proto_logits = z @ self.prototypes.t() / self.temperature
            scores = cleaning.cleaning_scores(logits, proto_logits, alpha=alpha, log_prior=log_prior)
        return {"scores": scores, "logits": logits, "proto_logits": proto_logits, "embedding": z}

    # ------------------------------------------------------------------ private helpers
    def _instance_term(
        self, out: _Forward, keys: Tensor | None, queue_before: Tensor | None, valid: Tensor
    ) -> dict[str, Tensor]:
        """{"inst": the MoCo loss of the valid samples}; {} for a model without momentum keys."""
        if keys is None:
            return {}
        return {
            "inst": losses.instance_loss(
                out.z[valid], keys[valid], queue_before, temperature=self.temperature
            )
        }

    def _reconstruction_term(self, out: _Forward, clean: Tensor, w: Tensor) -> dict[str, Tensor]:
        """{"recn": the reconstruction loss of the clean samples}; {} without a reconstructor."""
        if out.recon is None:
            return {}
        return {"recn": losses.reconstruction_loss(out.recon[clean], out.v[clean], weight=w)}

    def _check_lean(self, flags: StepFlags, proto_on: bool) -> None:
        """A model built without momentum keys (a plain-CE run) cannot take a step that needs them."""
        needs = [why for why, on in (("the instance loss", flags.w_inst > 0),
                                     ("collective bootstrapping", flags.bootstrap == "collective"),
                                     ("prototypes", proto_on)) if on]
        if needs:
            raise ConfigError(f"this model was built without momentum keys, which {needs[0]} needs; "
                              "build it with momentum_keys=True (capro.engine.stages.model_parts)")

    def _project(self, v: Tensor) -> Tensor:
        return F.normalize(self.projection(v), dim=1)

    def _project_key(self, v: Tensor) -> Tensor:
        """[B, D] normalised key embedding of momentum-encoder features v [B, F]."""
        head = self.projection_k if self.key_head == "momentum" else self.projection
        return F.normalize(head(v), dim=1)

    def _query_forward(self, img: Tensor, *, detach_recon_input: bool) -> _Forward:
        v = self.encoder_q(img)
        p = self.classifier(v)
        z = self._project(v)
        recon = None
        if self.reconstructor is not None:
            recon = self.reconstructor(z.detach() if detach_recon_input else z)
        if self.multi_label:
            zc = self.class_projection(z)
            return _Forward(v=v, p=p, z=z, q=self.aux_classifier(zc), recon=recon, zc=zc)
        return _Forward(v=v, p=p, z=z, q=self.aux_classifier(z), recon=recon, zc=None)

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q for the backbone (and the momentum key head)."""
        pairs = [(self.encoder_k, self.encoder_q)]
        if self.key_head == "momentum":
            pairs.append((self.projection_k, self.projection))
        k_params = [p for k, _ in pairs for p in k.parameters()]
        q_params = [p.detach() for _, q in pairs for p in q.parameters()]
        torch._foreach_mul_(k_params, self.moco_m)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.moco_m)

    @torch.no_grad()
    def _keys(self, img_aug: Tensor) -> Tensor:
        """Momentum keys [B, D] of the strong view, with shuffle-BN across ranks."""
        if is_dist() and world_size() > 1:
            img_aug, idx_unshuffle = self._batch_shuffle_ddp(img_aug)
            keys = self._project_key(self.encoder_k(img_aug))
            return self._batch_unshuffle_ddp(keys, idx_unshuffle)
        return self._project_key(self.encoder_k(img_aug))

    @torch.no_grad()
    def _batch_shuffle_ddp(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Give this rank a random slice of the global batch (all ranks pass the same size)."""
        x_all = concat_all_gather(x)
        idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(idx_shuffle, src=0)
        idx_this = idx_shuffle.view(world_size(), -1)[rank()]
        return x_all[idx_this], torch.argsort(idx_shuffle)

    @torch.no_grad()
    def _batch_unshuffle_ddp(self, x: Tensor, idx_unshuffle: Tensor) -> Tensor:
        """Undo ``_batch_shuffle_ddp``: rows of this rank's original samples."""
        x_all = concat_all_gather(x)
        return x_all[idx_unshuffle.view(world_size(), -1)[rank()]]

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: Tensor, valid: Tensor | None = None) -> None:
        """Write the all-gathered keys FIFO at ``queue_ptr``, wrapping around the end.

        keys [B, D]; valid [B] bool (None: all): only the valid keys of the global batch are
        written, in rank order. When more than Q keys are written, only the last Q are kept.
        """
        keys = concat_all_gather(keys)
        if valid is not None:
            keys = keys[concat_all_gather(valid.contiguous())]
        size = self.queue.shape[0]
        n = keys.shape[0]
        start = self.queue_ptr + max(n - size, 0)
        keys = keys[-size:]
        idx = (start + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    @torch.no_grad()
    def _key_probs(self, alpha: float, proto_on: bool) -> Tensor:
        """Prediction u_j [Q, C] for every key in the (updated) queue; uniform prototype term when off."""
        queue = self.queue
        if self.multi_label:
            hq = self.class_projection(queue)
            proto_pos = None
            if proto_on:
                pl = torch.einsum("qcd,ckd->qck", hq, self.prototypes) / self.temperature
                proto_pos = pl.softmax(dim=-1)[..., 1]
            return bootstrap.key_predictions_multilabel(
                self.aux_classifier(hq), proto_pos, alpha=alpha
            )
        proto_logits = queue @ self.prototypes.t() / self.temperature if proto_on else None
        return bootstrap.key_predictions(self.aux_classifier(queue), proto_logits, alpha=alpha)

    @torch.no_grad()
    def _collective_targets(self, z: Tensor, alpha: float, proto_on: bool) -> Tensor:
        """Collective bootstrapping targets b [B, C] of embeddings z against the whole queue."""
        key_probs = self._key_probs(alpha, proto_on)
        if self.multi_label:
            return bootstrap.collective_target_multilabel(z, self.queue, key_probs)
        return bootstrap.collective_target(z, self.queue, key_probs)

    @torch.no_grad()
    def _soft_target_single(
        self, flags: StepFlags, out: _Forward, target: Tensor, valid: Tensor, proto_on: bool
    ) -> Tensor | None:
        """Soft target [B, C] of the auxiliary classifier for ``flags.bootstrap`` (None: plain CE)."""
        mode = flags.bootstrap
        if mode == "collective":
            return self._collective_targets(out.z.detach(), flags.alpha, proto_on)
        if mode == "self":
            return bootstrap.self_target(out.q)
        if mode == "label_smoothing":
            return bootstrap.label_smoothing_target(target, self.num_classes)
        if mode == "ncr":
            return _ncr_among_valid(out.z.detach(), out.q.detach().softmax(dim=1), valid)
        return None

    @torch.no_grad()
    def _soft_target_multi(
        self, flags: StepFlags, out: _Forward, target: Tensor, valid: Tensor, proto_on: bool
    ) -> Tensor | None:
        """Multi-label soft targets in [0, 1] per class ("label_smoothing": y (1 - 0.1) + 0.05)."""
        mode = flags.bootstrap
        if mode == "collective":
            return self._collective_targets(out.z.detach(), flags.alpha, proto_on)
        if mode == "self":
            return torch.sigmoid(out.q.detach())
        if mode == "label_smoothing":
            return target.clamp(min=0) * 0.9 + 0.05
        if mode == "ncr":
            return _ncr_among_valid(out.z.detach(), torch.sigmoid(out.q.detach()), valid)
        return None

    @torch.no_grad()
    def _update_prototypes(self, z: Tensor, target: Tensor, clean: Tensor) -> None:
        """Momentum-update the prototypes with the all-gathered clean samples, in rank order.

        z [B, D] (multi-label [B, C, D]) detached query embeddings, target the corrected labels.
        Every rank passes its full batch plus its clean mask, so sizes match for the all-gather.
        """
        z_all = concat_all_gather(z.contiguous())
        target_all = concat_all_gather(target.contiguous())
        clean_all = concat_all_gather(clean.contiguous())
        z_all, target_all = z_all[clean_all], target_all[clean_all]
        if self.multi_label:
            new = proto_math.momentum_update_multilabel(
                self.prototypes, z_all.to(self.prototypes), target_all, momentum=self.proto_m
            )
        else:
            new = proto_math.momentum_update(
                self.prototypes, z_all.to(self.prototypes), target_all, momentum=self.proto_m
            )
        self.prototypes.copy_(new)

    def _mixup_loss(self, img: Tensor, target: Tensor, alpha: float) -> Tensor:
        """Mix-up loss of the weak view: lambda ~ Beta(alpha, alpha), mixed with a permutation.

        Single-label: lambda CE(y) + (1 - lambda) CE(y[perm]); multi-label: the same mix of the
        masked, pos-weighted BCE.
        """
        if img.shape[0] == 0:
            return self.classifier.weight.sum() * 0.0
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(img.shape[0], device=img.device)
        logits = self.classifier(self.encoder_q(lam * img + (1 - lam) * img[perm]))
        if not self.multi_label:
            return losses.mixup_loss(logits, target, target[perm], lam)
        bce_a = losses.multilabel_bce(logits, target, pos_weight=self.pos_weight)
        bce_b = losses.multilabel_bce(logits, target[perm], pos_weight=self.pos_weight)
        return lam * bce_a + (1 - lam) * bce_b


def _check_flags(flags: StepFlags) -> None:
    if flags.bootstrap not in BOOTSTRAP_MODES:
        raise ConfigError(
            f"unknown bootstrap mode {flags.bootstrap!r}: choose one of {', '.join(BOOTSTRAP_MODES)}"
        )
    if flags.prototypes_mode not in PROTOTYPE_MODES:
        raise ConfigError(
            f"unknown prototypes mode {flags.prototypes_mode!r}: "
            f"choose one of {', '.join(PROTOTYPE_MODES)}"
        )


def _drop_invalid(
    valid: Tensor, web: Tensor, target: Tensor, clean: Tensor, relabeled: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Invalid samples: input label ``web``, not clean, not relabelled (the rest unchanged)."""
    keep = valid.view(-1, *([1] * (target.dim() - 1)))
    return torch.where(keep, target, web.to(target.dtype)), clean & valid, relabeled & valid


@torch.no_grad()
def _ncr_among_valid(z: Tensor, probs: Tensor, valid: Tensor) -> Tensor:
    """NCR targets [B, C] whose neighbours are valid samples only (invalid rows: own prediction)."""
    out = probs.to(torch.promote_types(probs.dtype, torch.float32)).clone()
    out[valid] = bootstrap.ncr_target(z[valid], probs[valid]).to(out)
    return out


def _same_size_on_all_ranks(n: int, device: torch.device) -> bool:
    sizes = concat_all_gather(torch.tensor([n], device=device))
    return bool((sizes == n).all())
