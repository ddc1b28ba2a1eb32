"""Robust spike and non-finite detection (pure, no torch)."""

import math

import pytest

from lora_doctor.callback.health import GRAD_NORM, LOSS, SpikeDetector, SpikeRule

RULE = SpikeRule(window=20, warmup=5, sigmas=6.0, min_ratio=2.0)


def feed(detector, values, start=1):
    return [(step, f) for step, v in enumerate(values, start) if (f := detector.observe(step, v))]


def noisy(n, level=1.0):
    return [level * (1 + 0.05 * math.sin(i * 1.7)) for i in range(n)]


def test_steady_series_raises_nothing():
    assert feed(SpikeDetector(GRAD_NORM, RULE), noisy(200)) == []


def test_spike_after_warmup_is_reported_at_its_step():
    values = noisy(15) + [50.0] + noisy(10)
    found = feed(SpikeDetector(GRAD_NORM, RULE), values)
    assert [(step, f.code, f.severity) for step, f in found] == [(16, "grad-norm-spike", "warning")]
    data = found[0][1].data
    assert data["step"] == 16 and data["value"] == 50.0 and data["threshold"] < 50.0


def test_no_judgement_during_warmup():
    assert feed(SpikeDetector(GRAD_NORM, RULE), [1.0, 1.0, 100.0, 1.0]) == []


def test_one_sided_drops_are_fine():
    assert feed(SpikeDetector(GRAD_NORM, RULE), noisy(15) + [0.001] * 3 + noisy(5)) == []


def test_consecutive_spikes_are_one_episode():
    found = feed(SpikeDetector(GRAD_NORM, RULE), noisy(15) + [50.0, 60.0, 70.0] + noisy(3) + [80.0])
    assert [step for step, _ in found] == [16, 22]


def test_min_ratio_guards_flat_series():
    # MAD is zero on a perfectly flat series; a 50% wiggle is not an explosion
    assert feed(SpikeDetector(GRAD_NORM, RULE), [1.0] * 10 + [1.5]) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_is_immediate_and_stays_out_of_the_window(bad):
    det = SpikeDetector(LOSS, RULE)
    found = feed(det, [2.0, bad, 2.0])   # during warm-up still
    assert [(s, f.code, f.severity) for s, f in found] == [(2, "loss-non-finite", "error")]
    assert det.stats().median == 2.0


def test_nonfinite_patience_for_fp16_loss_scaling():
    det = SpikeDetector(GRAD_NORM, RULE, nonfinite_patience=2)
    found = feed(det, [1.0, math.inf, math.inf, 1.0, math.inf, math.inf, math.inf, math.inf])
    assert [s for s, _ in found] == [7]   # the third in a row, reported once


def test_rule_validation():
    with pytest.raises(ValueError):
        SpikeRule(window=10, warmup=20)
    with pytest.raises(ValueError):
        SpikeRule(min_ratio=0.5)
