"""A handful of benchmarks/accuracy.py cases as tests: the analytic peak within 5% of a real step.

Each case runs two real Trainer steps on CPU (peft LoRA, bitsandbytes NF4) under the live-storage
tracker; the full table with all cases is ``python benchmarks/accuracy.py``.
"""

from __future__ import annotations

import pytest

from lora_doctor import plan
from lora_doctor.measure.cases import CASES, TINY_CONFIGS, case_config
from lora_doctor.measure.training import measure_training

SELECTED = ["llama lora q,v bf16", "llama qlora all-linear +gc", "gpt2 full fp32 adamw",
            "qwen2 gqa tied full bf16 adamw", "gemma3-text lora all-linear bf16", "qwen3-moe full bf16 adamw",
            "gpt2 dropout 0.1 lora c_attn bf16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SELECTED)
def test_analytic_peak_within_5_percent_of_measured(name, monkeypatch):
    monkeypatch.setenv("LORA_DOCTOR_DERIVE", "1")  # the default engine: recipes + trace-derived layer terms
    case = next(c for c in CASES if c.name == name)
    s = case.settings
    measured = measure_training(case_config(case.model), s)
    predicted = plan(TINY_CONFIGS[case.model], mode=s.mode, batch_size=s.batch_size, seq_len=s.seq_len,
                     r=s.r, lora_alpha=s.lora_alpha, target_modules=s.target_modules, dtype=s.dtype,
                     mixed_precision=s.mixed_precision, optim=s.optim,
                     gradient_checkpointing=s.gradient_checkpointing, attn_implementation=s.attn_implementation,
                     device="cpu")
    assert measured.losses and all(l == l for l in measured.losses)  # it really trained (finite loss)
    assert predicted.trainable_params == measured.trainable_params
    error = abs(predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes
    assert error < 0.05, f"{name}: predicted {predicted.peak_bytes}, measured {measured.peak_bytes}"
