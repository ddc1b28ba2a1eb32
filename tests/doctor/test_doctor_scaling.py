"""Effective scale, rank, dropout and bias advice (pure, plus one end-to-end with rank_pattern)."""

from __future__ import annotations

import pytest
from conftest import codes

from lora_doctor import diagnose
from lora_doctor.doctor.scaling import check_capacity, check_scale, effective_scale
from lora_doctor.doctor.settings import LoraSettings


def scale_codes(**kw) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in check_scale(LoraSettings(**kw), ["model.layers.0.self_attn.q_proj"])]


@pytest.mark.parametrize("kw, expected", [
    (dict(r=16, lora_alpha=128), [("scale-extreme", "error")]),
    (dict(r=16, lora_alpha=80), [("scale-high", "warning")]),
    (dict(r=16, lora_alpha=64), []),                     # exactly 4: not above 4
    (dict(r=16, lora_alpha=32), []),
    (dict(r=16, lora_alpha=16, use_rslora=True), []),    # 16 / sqrt(16) = 4
    (dict(r=16, lora_alpha=64, use_rslora=True), [("scale-extreme", "error")]),
    (dict(r=64, lora_alpha=8), [("scale-low", "info")]),
])
def test_scale_levels(kw, expected):
    assert scale_codes(**kw) == expected


def test_effective_scale_formula():
    assert effective_scale(16, 32, False) == 2.0
    assert effective_scale(16, 32, True) == 8.0


def test_rank_and_alpha_patterns_are_per_module(configs):
    report = diagnose(configs["llama"], {"target_modules": ["q_proj", "v_proj"], "r": 16, "lora_alpha": 32,
                                         "rank_pattern": {"q_proj": 4}})
    f = next(f for f in report.findings if f.code == "scale-extreme")
    assert all(m.endswith("q_proj") for m in f.data["modules"]) and len(f.data["modules"]) == 2
    assert report.summary["scale"]["max"] == 8.0 and report.summary["scale"]["min"] == 2.0
    alpha = diagnose(configs["llama"], {"target_modules": ["q_proj", "v_proj"], "r": 16, "lora_alpha": 32,
                                        "alpha_pattern": {"v_proj": 80}})
    assert "scale-high" in codes(alpha)


@pytest.mark.parametrize("kw, num_examples, expected", [
    (dict(r=1, lora_alpha=2), None, [("rank-one", "warning")]),
    (dict(r=64, lora_alpha=128), None, [("rank-high", "info")]),
    (dict(r=64, lora_alpha=128), 500, [("rank-high", "warning")]),
    (dict(r=16, lora_dropout=0.2), None, [("dropout-high", "info")]),
    (dict(r=16, lora_dropout=0.5), None, [("dropout-high", "warning")]),
    (dict(r=16, bias="all"), None, [("bias-trainable", "warning")]),
    (dict(r=16, bias="lora_only"), None, [("bias-trainable", "info")]),
    (dict(r=16, lora_dropout=0.1), None, []),
])
def test_capacity_advice(kw, num_examples, expected):
    assert [(f.code, f.severity) for f in check_capacity(LoraSettings(**kw), num_examples)] == expected


def test_invalid_settings_are_reported_together():
    from lora_doctor import InvalidSettingError

    with pytest.raises(InvalidSettingError, match="r must be.*lora_dropout.*bias"):
        LoraSettings.from_any({"r": 0, "lora_dropout": 1.5, "bias": "some"})
    with pytest.raises(InvalidSettingError, match="unknown LoRA setting"):
        LoraSettings.from_any({"rank": 8})


def test_bad_regex_and_negative_alpha_are_clear_errors():
    from lora_doctor import InvalidSettingError, diagnose

    with pytest.raises(InvalidSettingError) as info:
        diagnose("gpt2", {"r": 8, "target_modules": "["})
    assert "does not compile" in str(info.value)
    with pytest.raises(InvalidSettingError):
        diagnose("gpt2", {"r": 8, "lora_alpha": -4, "target_modules": ["c_attn"]})
