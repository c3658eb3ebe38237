import pytest
import torch
import torch.nn.functional as F

from capro.cleaning import class_log_prior, clean_batch, clean_batch_multilabel, cleaning_scores


def test_cleaning_scores_mix():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    proto = torch.tensor([[0.0, 5.0, 0.0]])
    got = cleaning_scores(logits, proto, alpha=0.25)
    expected = 0.25 * F.softmax(logits, 1) + 0.75 * F.softmax(proto, 1)
    assert torch.allclose(got, expected)


def test_class_log_prior_by_hand():
    labels = torch.tensor([0, 0, 0, 1, -1, 0, 1])  # counts 4, 2, 0 (+1 each: 5, 3, 1 of 9); -1 ignored
    got = class_log_prior(labels, 3, tau=0.5)
    assert torch.allclose(got, 0.5 * torch.log(torch.tensor([5 / 9, 3 / 9, 1 / 9])))


def test_cleaning_scores_take_the_prior_out_of_the_classifier_share():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.4, 0.0]])
    proto = torch.tensor([[0.0, 5.0, 0.0], [1.0, 0.0, 0.0]])
    prior = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    got = cleaning_scores(logits, proto, alpha=0.25, log_prior=prior)
    expected = 0.25 * F.softmax(logits - prior, 1) + 0.75 * F.softmax(proto, 1)
    assert torch.allclose(got, expected)
    # by hand, row 2's classifier share: exp(0.5)/0.6, exp(0.4)/0.3, 1/0.1, normalised
    w = torch.tensor([0.5, 0.4, 0.0]).exp() / torch.tensor([0.6, 0.3, 0.1])
    assert torch.allclose(got[1], 0.25 * w / w.sum() + 0.75 * F.softmax(proto[1], 0))
    # a uniform prior (balanced classes) changes nothing: the paper's scores
    uniform = class_log_prior(torch.arange(3).repeat(4), 3)
    assert torch.allclose(cleaning_scores(logits, proto, alpha=0.25, log_prior=uniform),
                          cleaning_scores(logits, proto, alpha=0.25))


def test_clean_batch_hand_cases():
    # C = 4, tau = 0.6, 1/C = 0.25 (exactly representable).
    scores = torch.tensor(
        [
            [0.25, 0.25, 0.25, 0.25],  # 0: s[y] == 1/C -> kept (>=)
            [0.24, 0.36, 0.20, 0.20],  # 1: s[y] < 1/C, max < tau -> removed
            [0.10, 0.60, 0.15, 0.15],  # 2: max == tau, argmax 1 != y 0 -> relabelled to 1
            [0.70, 0.10, 0.10, 0.10],  # 3: max >= tau, argmax == y -> kept, not relabelled
            [0.05, 0.05, 0.85, 0.05],  # 4: anchor, confident other class -> kept as is
            [0.01, 0.50, 0.49, 0.00],  # 5: anchor with tiny s[y] -> kept
            [0.30, 0.62, 0.04, 0.04],  # 6: s[y] >= 1/C but relabel rule first -> relabelled
        ],
        dtype=torch.float64,
    )
    target = torch.tensor([0, 0, 0, 0, 0, 0, 0])
    anchor = torch.tensor([False, False, False, False, True, True, False])
    r = clean_batch(scores, target, pseudo_th=0.6, anchor=anchor)
    assert r.target.tolist() == [0, 0, 1, 0, 0, 0, 1]
    assert r.kept.tolist() == [True, False, False, True, True, True, False]
    assert r.relabeled.tolist() == [False, False, True, False, False, False, True]
    assert r.clean.tolist() == [True, False, True, True, True, True, True]
    no_anchor = clean_batch(scores, target, pseudo_th=0.6)
    assert no_anchor.target.tolist() == [0, 0, 1, 0, 2, 0, 1]
    assert no_anchor.relabeled[4] and not no_anchor.clean[5]


def test_clean_batch_matches_loop_on_random_scores():
    g = torch.Generator().manual_seed(3)
    b, c, tau = 200, 5, 0.5
    scores = F.softmax(torch.randn(b, c, generator=g) * 2, 1)
    target = torch.randint(0, c, (b,), generator=g)
    anchor = torch.rand(b, generator=g) < 0.2
    r = clean_batch(scores, target, pseudo_th=tau, anchor=anchor)
    for i in range(b):
        s = scores[i].tolist()
        y = int(target[i])
        top = max(range(c), key=lambda j: s[j])
        if anchor[i]:
            exp_y, exp_keep, exp_rel = y, True, False
        elif s[top] >= tau and top != y:
            exp_y, exp_keep, exp_rel = top, False, True
        else:
            exp_y, exp_keep, exp_rel = y, s[y] >= 1 / c, False
        assert (int(r.target[i]), bool(r.kept[i]), bool(r.relabeled[i])) == (exp_y, exp_keep, exp_rel)
        assert bool(r.clean[i]) == (exp_keep or exp_rel)


def test_clean_batch_multilabel_hand_case():
    # C = 4 -> 1/C = 0.25, tau = 0.9.
    pos = torch.tensor(
        [
            [0.95, 0.50, 0.10, 0.80],
            [0.20, 0.05, 0.99, 0.50],
        ],
        dtype=torch.float64,
    )
    target = torch.tensor([[0.0, 1.0, 1.0, -1.0], [1.0, 0.0, 1.0, 0.0]])
    anchor = torch.tensor([[0, 0, 0, 0], [-1, 0, 0, 0]], dtype=torch.int8)
    r = clean_batch_multilabel(pos, target, pseudo_th=0.9, num_classes=4, anchor=anchor)
    # row 0: c0 neg with s_pos .95 -> flip to 1; c1 pos .5 kept; c2 pos .10 < .25, s_neg .90 -> flip
    #        to 0; c3 was removed (-1) -> stays -1.
    # row 1: c0 anchor -> kept as 1 although s_pos .2 < .25; c1 neg s_neg .95 kept;
    #        c2 pos kept; c3 neg, s_neg .5 kept.
    assert r.target.tolist() == [[1.0, 1.0, 0.0, -1.0], [1.0, 0.0, 1.0, 0.0]]
    assert r.flipped.tolist() == [[True, False, True, False], [False, False, False, False]]
    assert r.clean.tolist() == [True, True]
    removed = clean_batch_multilabel(
        torch.tensor([[0.20, 0.80]]), torch.tensor([[1.0, 0.0]]), pseudo_th=0.9, num_classes=4
    )
    # s_pos .2 < .25 and s_neg .8 < .9 (drop positive); s_neg .2 < .25 and s_pos .8 < .9 (drop
    # negative): nothing kept or flipped.
    assert removed.target.tolist() == [[-1.0, -1.0]]
    assert removed.clean.tolist() == [False]


def test_clean_batch_multilabel_boundary_is_inclusive():
    pos = torch.tensor([[0.25, 0.75, 0.9]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0, 0.0]])
    r = clean_batch_multilabel(pos, target, pseudo_th=0.9, num_classes=4)
    assert r.target.tolist() == [[1.0, 0.0, 1.0]]
    assert r.flipped.tolist() == [[False, False, True]]


@pytest.mark.parametrize("seed", [0, 1])
def test_clean_batch_multilabel_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    b, c, tau = 30, 6, 0.7
    pos = torch.rand(b, c, generator=g, dtype=torch.float64)
    target = torch.randint(-1, 2, (b, c), generator=g).float()
    anchor = (torch.randint(-1, 2, (b, c), generator=g) * (torch.rand(b, c, generator=g) < 0.2))
    anchor = anchor.to(torch.int8)
    r = clean_batch_multilabel(pos, target, pseudo_th=tau, num_classes=c, anchor=anchor)
    for i in range(b):
        any_valid = False
        for k in range(c):
            sp = float(pos[i, k])
            sn = 1.0 - sp
            y = float(target[i, k])
            a = int(anchor[i, k]) != 0
            keep = (y == 1 and sp >= 1 / c) or (y == 0 and sn >= 1 / c) or a
            up = y == 0 and sp >= tau and not a
            down = y == 1 and sn >= tau and not a
            new = 1.0 if up else 0.0 if down else y
            if not (keep or up or down):
                new = -1.0
            any_valid |= keep or up or down
            assert float(r.target[i, k]) == new
            assert bool(r.flipped[i, k]) == (up or down)
        assert bool(r.clean[i]) == any_valid


def test_clean_batch_keep_threshold():
    # C = 4, tau = 0.9; keep_th 0.5 instead of 1/C = 0.25
    scores = torch.tensor([[0.30, 0.40, 0.20, 0.10],   # s[y] 0.30: kept by 1/C, removed at 0.5
                           [0.50, 0.30, 0.10, 0.10],   # s[y] == 0.5 -> kept (>=)
                           [0.05, 0.05, 0.05, 0.85],   # anchor -> kept whatever s[y]
                           [0.02, 0.93, 0.03, 0.02]],  # relabelled (max >= tau) either way
                          dtype=torch.float64)
    target = torch.zeros(4, dtype=torch.long)
    anchor = torch.tensor([False, False, True, False])
    paper = clean_batch(scores, target, pseudo_th=0.9, anchor=anchor)
    strict = clean_batch(scores, target, pseudo_th=0.9, anchor=anchor, keep_th=0.5)
    assert paper.kept.tolist() == [True, True, True, False]
    assert strict.kept.tolist() == [False, True, True, False]
    assert strict.relabeled.tolist() == paper.relabeled.tolist() == [False, False, False, True]
    assert strict.target.tolist() == [0, 0, 0, 1]
    assert torch.equal(clean_batch(scores, target, pseudo_th=0.9, anchor=anchor, keep_th=0.25).clean,
                       paper.clean)


def test_clean_batch_keep_top_requires_the_label_among_the_best_scores():
    # C = 4, tau = 0.9, keep_th = 1/C = 0.25; web label 0 for every row
    scores = torch.tensor([[0.30, 0.40, 0.20, 0.10],   # y ranks 2nd: kept at keep_top 0 and 2, not 1
                           [0.35, 0.35, 0.20, 0.10],   # tie for first: y is among the best -> kept
                           [0.26, 0.27, 0.28, 0.19],   # y ranks 3rd: kept only at keep_top 0 (and 3)
                           [0.05, 0.05, 0.05, 0.85],   # anchor -> kept whatever its rank
                           [0.02, 0.93, 0.03, 0.02],   # relabelled (max >= tau) at every keep_top
                           [0.20, 0.50, 0.20, 0.10]],  # ranks 2nd but s[y] < 1/C: removed everywhere
                          dtype=torch.float64)
    target = torch.zeros(6, dtype=torch.long)
    anchor = torch.tensor([False, False, False, True, False, False])
    kept = {k: clean_batch(scores, target, pseudo_th=0.9, anchor=anchor, keep_top=k).kept.tolist()
            for k in (0, 1, 2, 3)}
    assert kept[0] == [True, True, True, True, False, False]
    assert kept[1] == [False, True, False, True, False, False]
    assert kept[2] == [True, True, False, True, False, False]
    assert kept[3] == kept[0]
    agree = clean_batch(scores, target, pseudo_th=0.9, anchor=anchor, keep_top=1)
    assert agree.relabeled.tolist() == [False, False, False, False, True, False]
    assert agree.clean.tolist() == [False, True, False, True, True, False]
