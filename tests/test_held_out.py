"""Candidates are judged on inputs no method calibrated on, however little calibration data there is."""

from __future__ import annotations

import torch

from pdo_hub.core.config import PostDownloadOptimizationConfig
from pdo_hub.optimizers import create_post_download_optimizer
from pdo_hub.optimizers.inputs import split_held_out
from tiny_models import build


def _rows(batches):
    return {tuple(row.tolist()) for batch in batches for row in batch}


def test_four_batches_hold_out_every_fourth_batch():
    batches = [torch.full((2, 3), float(i)) for i in range(8)]
    calibration, held_out, note = split_held_out(batches)
    assert [b[0, 0].item() for b in held_out] == [3.0, 7.0] and len(calibration) == 6
    assert "2 held-out calibration batches" == note


def test_fewer_than_four_batches_are_split_by_sample_never_judged_on_calibration_inputs():
    batches = [torch.arange(24.0).reshape(8, 3), torch.arange(24.0, 42.0).reshape(6, 3)]
    calibration, held_out, note = split_held_out(batches)
    assert held_out and not (_rows(calibration) & _rows(held_out)), "held-out samples must not be calibrated on"
    assert _rows(calibration) | _rows(held_out) == _rows(batches), "no sample is lost"
    assert sum(b.shape[0] for b in held_out) == 3 and "3 held-out samples" in note


def test_dict_batches_are_split_by_sample_in_every_tensor():
    batch = {"input_ids": torch.arange(8).reshape(4, 2), "attention_mask": torch.ones(4, 2, dtype=torch.long)}
    calibration, held_out, _ = split_held_out([batch])
    assert held_out[0]["input_ids"].tolist() == [[6, 7]] and calibration[0]["input_ids"].shape == (3, 2)
    assert held_out[0]["attention_mask"].shape == (1, 2)


def test_single_sample_batches_hold_out_the_last_one():
    batches = [torch.full((1, 3), float(i)) for i in range(3)]
    calibration, held_out, note = split_held_out(batches)
    assert len(calibration) == 2 and held_out[0][0, 0].item() == 2.0 and note == "1 held-out calibration batch"


def test_one_single_input_is_judged_on_perturbed_copies_and_the_report_says_so():
    model = build("MLP").eval()
    one = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    calibration, held_out, note = split_held_out([one])
    assert calibration == [one] and len(held_out) == 4
    assert all(not torch.equal(copy, one) and copy.shape == one.shape for copy in held_out)
    assert "perturbed from the one calibration input" in note

    config = PostDownloadOptimizationConfig(quantization_method="dynamic", enable_low_rank_optimization=False,
                                            auto_select_best_method=False, benchmark_optimizations=False)
    _, report = create_post_download_optimizer(config).optimize_model(model=model, model_name="mlp", example_inputs=one,
                                                                     calibration_data=[one])
    assert report["accuracy_metrics"]["evaluated_on"] == note
