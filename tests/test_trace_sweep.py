"""Analytic vs traced: the trace runs the real code, so it keeps the formulas honest for big shapes.

Sweeps models x modes x sequence lengths x gradient checkpointing on small-but-not-tiny configs and
compares the analytic peak with the traced one (both modelling a CUDA run). Goal from the issue:
within 10% everywhere, 5% at the median.
"""

from __future__ import annotations

import itertools
import statistics

import pytest

from lora_doctor.models import resolve
from lora_doctor.plan_types import PlanSettings

MODELS = {
    "llama-gqa": dict(model_type="llama", hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, vocab_size=8000),
    "gpt2": dict(model_type="gpt2", n_embd=512, n_layer=4, n_head=8, vocab_size=8000, n_positions=4096,
                 bos_token_id=0, eos_token_id=0),
}
CASES = list(itertools.product(MODELS, ("full", "lora", "qlora"), (256, 1024), (False, True)))


@pytest.fixture(scope="module")
def sweep() -> dict[tuple, float]:
    from lora_doctor.memory.tables import CUBLAS_WORKSPACE_BYTES
    from lora_doctor.memory.engine import analytic_plan as _analytic
    from lora_doctor.trace import trace_step

    resolved = {name: resolve(dict(cfg)) for name, cfg in MODELS.items()}
    errors = {}
    for name, mode, seq, gc in CASES:
        s = PlanSettings(mode=mode, batch_size=2, seq_len=seq, gradient_checkpointing=gc)
        traced = trace_step(resolved[name], s).peak_bytes
        analytic = _analytic(resolved[name], s).peak_bytes - CUBLAS_WORKSPACE_BYTES  # a constant both engines add
        errors[(name, mode, seq, gc)] = analytic / traced - 1
    return errors


def _table(errors: dict[tuple, float]) -> str:
    return "\n".join(f"{k}: {v:+.1%}" for k, v in sorted(errors.items(), key=lambda kv: -abs(kv[1])))


def test_analytic_within_10_percent_of_trace_everywhere(sweep):
    worst = max(abs(e) for e in sweep.values())
    assert worst <= 0.10, _table(sweep)


def test_analytic_median_within_5_percent_of_trace(sweep):
    assert statistics.median(abs(e) for e in sweep.values()) <= 0.05, _table(sweep)


def test_sweep_ran_every_case(sweep):
    assert len(sweep) == len(CASES)
