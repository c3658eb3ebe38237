"""CAPro's steps as pure functions, arrays in and arrays out, for use on your own features.

Shapes: N samples, C classes, T text-embedding dims, F visual-feature dims, D embedding dims,
k neighbours per sample.

Text and anchors (NumPy):
    text_cosine(text [N, T], prototypes [C, T]) -> [N, C]
    text_margins(cos [N, C], labels [N]) -> (own [N], margin [N])   the evidence rule (D16)
    prototype_softmax(cos [N, C], labels [N]) -> [N]                 the anchor ranking score (D13)
    text_distances(text, prototypes, labels) -> [N]                  k-reciprocal distance to the label's prototype
    select_anchors(distance [N], labels [N], num_classes=C, topk=K) -> domain [N] (1 = anchor)
Visual graph (NumPy):
    rerank_knn(features [N, F], ids [N, k]) -> (ids, distances)     k-reciprocal re-ranking
    enhance_text(ids [N, k], dist [N, k], text [N, T]) -> [N, T]     text smoothed over visual neighbours
Training (torch):
    cleaning_scores(logits [B, C], proto_logits [B, C], alpha=, log_prior=None) -> [B, C]
    class_log_prior(labels [N], C, tau=) -> [C]                       log_prior (method.logit_adjust)
    clean_batch(scores [B, C], target [B], pseudo_th=) -> keep / relabel / remove
    init_prototypes(z [N, D], labels [N], C), momentum_update(prototypes [C, D], z, labels, momentum=)
    collective_target(z [B, D], keys [Q, D], key_probs [Q, C]) -> [B, C]
    prototype_loss, instance_loss, auxiliary_loss (see :mod:`capro.losses`)

Each function's docstring states its arguments; docs/api.md lists them with examples.
"""

from capro.bootstrap import collective_target, key_predictions
from capro.cleaning import class_log_prior, clean_batch, clean_batch_multilabel, cleaning_scores
from capro.graph.enhance import edge_weights, enhance_text
from capro.graph.match import (
    prototype_softmax,
    select_anchors,
    select_anchors_multilabel,
    text_cosine,
    text_distances,
    text_margins,
)
from capro.graph.rerank import re_ranking, rerank_knn
from capro.losses import auxiliary_loss, instance_loss, prototype_loss
from capro.prototypes import init_prototypes, momentum_update

__all__ = [
    "auxiliary_loss", "class_log_prior", "clean_batch", "clean_batch_multilabel", "cleaning_scores", "collective_target",
    "edge_weights", "enhance_text", "init_prototypes", "instance_loss", "key_predictions", "momentum_update",
    "prototype_loss", "prototype_softmax", "re_ranking", "rerank_knn", "select_anchors",
    "select_anchors_multilabel", "text_cosine", "text_distances", "text_margins",
]
