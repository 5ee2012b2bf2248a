"""Fig. 4's stated criterion and the mean ± std over seeds, on hand-written numbers."""

import math

import pytest
import torch
from torch import nn

from skqk.experiments.fig4 import UpdateTracker, decay_rate, decay_yardstick, settle_epoch, stabilisation
from skqk.experiments.report import aggregate, gap_text, qk_gaps, summary_table


def epochs(val_losses):
    return [{"epoch": i + 1, "flips": None, "val_loss": v, "val_accuracy": 0.1 * i} for i, v in enumerate(val_losses)]


def test_patterns_settle_at_the_first_point_from_which_every_later_flip_is_below_the_threshold():
    points = [(0.5, 0.05), (1.0, 0.02), (1.5, 0.004), (2.0, 0.012), (2.5, 0.008), (3.0, 0.003)]
    assert settle_epoch(points, 0.01) == 2.5  # 1.5 dips below but 2.0 rises above again
    assert settle_epoch(points, 0.02) == 1.5
    assert settle_epoch(points, 0.001) is None  # never below: not settled
    assert settle_epoch(points, 0.1) == 0.5


def test_ratio_is_val_loss_minimum_epoch_over_settle_epoch_on_the_step_measurements():
    steps = [{"step": 4 * (i + 1), "epoch": (i + 1) / 2, "flips": f} for i, f in enumerate([0.05, 0.02, 0.005, 0.004])]
    s = stabilisation(epochs([2.0, 1.5, 1.2, 1.4]), steps, 0.01, steps_per_epoch=8)
    assert s["settle_epoch"] == 1.5 and s["val_loss_min_epoch"] == 3 and s["ratio"] == 2.0
    assert s["measured_every"] == "4 steps" and not s["val_loss_still_falling"]
    assert s["val_accuracy_at_min"] == pytest.approx(0.2)


def test_without_step_measurements_the_epochs_are_used_and_a_falling_val_loss_is_flagged():
    rows = epochs([2.0, 1.5, 1.2])
    for row, f in zip(rows, [None, 0.02, 0.001]):
        row["flips"] = f
    s = stabilisation(rows, [], 0.01, steps_per_epoch=8)
    assert s["measured_every"] == "epoch" and s["settle_epoch"] == 3 and s["val_loss_still_falling"]
    assert s["settle_epoch_at"]["0.02"] == 3 and s["settle_epoch_at"]["0.005"] == 3


def test_decay_yardstick_compares_when_flips_and_weight_updates_fall_below_a_fraction_of_their_first_epoch():
    # flips fall 10x by epoch 1.5, the updates only by epoch 3: the patterns stop changing 2x earlier
    flips = [0.2, 0.2, 0.019, 0.01, 0.005, 0.004]
    updates = [0.01, 0.01, 0.005, 0.004, 0.002, 0.0009]
    points = [
        {"step": 4 * (i + 1), "epoch": (i + 1) / 2, "flips": f, "update": u}
        for i, (f, u) in enumerate(zip(flips, updates))
    ]
    d = decay_yardstick(points)
    assert d["patterns"]["first_epoch_mean"] == pytest.approx(0.2) and d["weights"]["first_epoch_mean"] == 0.01
    assert d["patterns"]["decay_epoch"]["0.1"] == 1.5 and d["weights"]["decay_epoch"]["0.1"] == 3.0
    assert d["ratio"]["0.1"] == 2.0
    assert d["patterns"]["decay_epoch"]["0.01"] is None and d["ratio"]["0.01"] is None  # never that low: no ratio
    rate_patterns, rate_weights = d["patterns"]["decay_rate_per_epoch"], d["weights"]["decay_rate_per_epoch"]
    assert rate_patterns > rate_weights > 0 and d["rate_ratio"] == pytest.approx(rate_patterns / rate_weights)
    s = stabilisation(epochs([2.0, 1.5, 1.2]), points, 0.01, steps_per_epoch=8)
    assert s["decay"] == d
    rising = [{**p, "flips": 0.1 * (i + 1), "update": 0.01 * (i + 1)} for i, p in enumerate(points)]
    assert decay_yardstick(rising)["rate_ratio"] is None  # neither series decays: no ratio of two growth rates


def test_decay_rate_of_an_exponential_is_its_rate_and_skips_zeros():
    values = [(x / 2, 3.0 * math.exp(-0.7 * x / 2)) for x in range(8)] + [(4.0, 0.0)]
    assert decay_rate(values) == pytest.approx(0.7)
    assert decay_rate([(1.0, 0.5), (2.0, 0.0)]) is None  # one positive point: no fit


def test_update_tracker_measures_the_relative_weight_change_since_its_previous_call_overall_and_per_layer():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    tracker = UpdateTracker(None)
    assert tracker(net) is None  # nothing to compare with yet
    with torch.no_grad():
        net[2].weight.fill_(2.0)  # 2 of the 9 parameters move by 1
    update = tracker(net)
    assert update["overall"] == pytest.approx(math.sqrt(2 / 9))
    assert update["per_layer"] == {"0": 0.0, "2": pytest.approx(math.sqrt(2 / 3))}
    assert tracker(net)["overall"] == 0.0  # compared with the previous call, not the first


def test_aggregate_gives_mean_and_sample_std_per_cell_over_seeds():
    cells = [
        {"model": "m", "n": 1, "N": 2, "method": "qk", "variant": "base", "seed": s, "val_accuracy": a, "val_loss": 1.0}
        for s, a in ((0, 0.4), (1, 0.5), (2, 0.6))
    ] + [{"model": "m", "n": 1, "N": 2, "method": "traditional", "seed": 0, "val_accuracy": 0.3, "val_loss": 2.0}]
    qk, trad = aggregate(cells)
    assert qk["seeds"] == [0, 1, 2] and qk["val_accuracy"] == pytest.approx(0.5)
    assert qk["val_accuracy_std"] == pytest.approx(0.1) and qk["val_loss_std"] == 0.0
    assert trad["variant"] == "base" and trad["val_accuracy_std"] == 0.0
    table = summary_table({"experiment": "qkgap", "cells": cells})
    assert "| m | 1 | 2 | qk | base | 3 | 0.5000 ± 0.1000 | 1.0000 ± 0.0000 | +10.00 |" in table
    assert "| m | 1 | 2 | traditional | base | 1 | 0.3000 | 2.0000 |  |" in table
    pretrained = {"model": "m", "n": 1, "N": 1, "method": "pretrain", "seed": 0, "val_accuracy": 0.2, "val_loss": 3.0}
    table = summary_table({"experiment": "fig5", "cells": [pretrained, *cells]}).splitlines()
    assert table[2:] == [
        "| m | 1 | pre-trained | 1 | 0.2000 | | | 3.0000 | |",
        "| m | 1 | 2 | 3 | 0.5000 ± 0.1000 | 0.3000 | +10.00 | 1.0000 ± 0.0000 | 2.0000 |",
    ]


def test_qk_gap_is_paired_by_seed_and_with_the_same_named_traditional_variant():
    def cell(method, variant, seed, acc):
        return {"model": "m", "n": 1, "N": 2, "method": method, "variant": variant, "seed": seed, "val_accuracy": acc}

    cells = [cell("traditional", "base", s, a) for s, a in ((0, 0.40), (1, 0.60))]
    cells += [cell("qk", "base", s, a) for s, a in ((0, 0.38), (1, 0.59))]  # behind on both seeds
    cells += [cell("traditional", "long", s, a) for s, a in ((0, 0.50), (1, 0.50))]
    cells += [cell("qk", "long", 0, 0.55), cell("qk", "lr", 1, 0.65)]
    gaps = qk_gaps(cells)
    assert gaps[("m", 1, 2, "qk", "base")] == pytest.approx([-2.0, -1.0])  # unpaired stds would be ~14 points
    assert gaps[("m", 1, 2, "qk", "long")] == pytest.approx([5.0])  # against traditional "long", not base
    assert gaps[("m", 1, 2, "qk", "lr")] == pytest.approx([5.0])  # no traditional "lr": against base, seed 1
    assert gap_text(gaps[("m", 1, 2, "qk", "base")]) == "-1.50 ± 0.71 (QK ahead 0/2)"
