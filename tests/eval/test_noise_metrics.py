import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from capro.eval.noise import anchor_precision, memorisation, noise_detection, relabel_accuracy


def test_noise_detection_matches_sklearn():
    rng = np.random.default_rng(0)
    n = 500
    true = rng.integers(-1, 10, n)  # -1 = out-of-distribution
    web = np.where(rng.random(n) < 0.7, np.maximum(true, 0), rng.integers(0, 10, n))
    flagged = rng.random(n) < 0.3
    got = noise_detection(web, true, flagged)
    noisy = true != web
    p, r, f, _ = precision_recall_fscore_support(noisy, flagged, average="binary", zero_division=0)
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert got["n_noisy"] == int(noisy.sum()) and got["n_flagged"] == int(flagged.sum())
    assert got["noise_rate"] == pytest.approx(noisy.mean())
    assert noisy[true == -1].all()


def test_noise_detection_nothing_flagged():
    got = noise_detection(np.array([0, 1]), np.array([0, 2]), np.array([False, False]))
    assert (got["precision"], got["recall"], got["f1"]) == (0.0, 0.0, 0.0)


def test_relabel_and_anchor_shares():
    true = np.array([0, 1, 2, -1, 4])
    new = np.array([0, 2, 2, 3, 4])
    assert relabel_accuracy(true, new, np.array([1, 1, 0, 1, 0], bool)) == pytest.approx(1 / 3)
    assert relabel_accuracy(true, new, np.zeros(5, bool)) is None
    web = np.array([0, 1, 1, 3, 4])
    assert anchor_precision(web, true, np.array([1, 1, 1, 1, 0], bool)) == pytest.approx(0.5)
    assert anchor_precision(web, true, np.zeros(5, bool)) is None


def test_memorisation_hand_computed():
    web = np.array([0, 1, 2, 3, 4, 5])
    true = np.array([0, 1, 1, -1, 2, 5])   # rows 2, 3, 4 are noisy; row 3 out of distribution
    pred = np.array([0, 2, 2, 3, 2, 5])    # fits row 2's and row 3's wrong labels, row 4's true one
    got = memorisation(pred, web, true)
    assert got["noisy_fit"] == pytest.approx(2 / 3)
    assert got["noisy_true"] == pytest.approx(1 / 2)   # of rows 2 and 4 (in distribution)
    assert got["clean_fit"] == pytest.approx(2 / 3)    # rows 0, 1, 5: row 1 mispredicted
    assert (got["n_noisy"], got["n_clean"]) == (3, 3)
    assert memorisation(pred[:2], web[:2], true[:2])["noisy_fit"] is None
