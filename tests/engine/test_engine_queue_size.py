"""The run warns when the MoCo queue is large against the training set."""

from capro.engine.runner import queue_too_big


def test_queue_larger_than_half_the_data_is_flagged() -> None:
    # The cpu preset's 1024 keys suit the 10k demo; 4096 keys on 4,000 images do not.
    assert not queue_too_big(1024, 10_000)
    assert queue_too_big(4096, 4000)
    # The boundary: exactly half is accepted, one more key is not.
    assert not queue_too_big(500, 1000)
    assert queue_too_big(501, 1000)
