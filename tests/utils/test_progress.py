import io

from capro.utils import progress as pg


def test_epoch_line_names_loss_scores_time_and_rates():
    row = {"epoch": 4, "loss": 1.23456, "val_top1": 0.812, "seconds": 0.94, "input_img_s": 17000.4,
           "step_img_s": 2100.0, "lr": 0.1}
    assert pg.epoch_line("stage2", 4, 110, row) == (
        "stage2 epoch 5/110: loss 1.2346, val_top1 0.8120, 0.9 s (input 17,000 img/s, step 2,100 img/s)")
    assert pg.epoch_line("stage1", 0, 2, {"loss": 2.0, "seconds": 1.0}) == "stage1 epoch 1/2: loss 2.0000, 1.0 s"
    # a run without val.jsonl shows its held-out score and the mean that selects (D23), not the losses
    row = {"loss": 2.0, "loss_cls": 1.5, "holdout_top1": 0.5, "holdout_top1_mean15": 0.45, "test_top1": 0.7,
           "seconds": 1.0}
    assert pg.epoch_line("stage2", 0, 2, row) == (
        "stage2 epoch 1/2: loss 2.0000, holdout_top1 0.5000, holdout_top1_mean15 0.4500, test_top1 0.7000, 1.0 s")


def test_stage_line_says_which_part_bounds_training():
    # 2,000 samples: 4 s waiting for input, 1 s in the step -> input-bound, 80 % waiting
    assert pg.stage_line("stage1", 10, 5.2, 4.0, 1.0, 2000) == (
        "stage1: 10 epochs in 5 s; input path 500 img/s, model step 2,000 img/s "
        "(input-bound: 80 % of the time waits for input)")
    assert pg.stage_line("stage3b", 1, 0.4, 0.1, 0.3, 300).startswith("stage3b: 1 epoch in 0 s; ")
    assert "step-bound: 25 %" in pg.stage_line("stage3b", 1, 0.4, 0.1, 0.3, 300)
    assert pg.stage_line("stage2", 3, 2.0, 0.0, 0.0, 0) == "stage2: 3 epochs in 2 s"


def test_progress_goes_to_the_chosen_stream():
    buf = io.StringIO()
    pg.set_progress_stream(buf)
    try:
        pg.progress("stage1 epoch 1/2: loss 1.0000, 0.5 s")
    finally:
        pg.set_progress_stream(None)
    assert buf.getvalue() == "stage1 epoch 1/2: loss 1.0000, 0.5 s\n"
