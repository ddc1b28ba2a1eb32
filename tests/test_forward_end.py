"""The end of forward: what a Trainer step holds when the loss is computed, traced as the Trainer runs it.

The Trainer sets ``model.config.use_cache = False`` (``TrainingArguments.use_cache``), so a training
forward builds no KV cache. A trace that left the config's ``use_cache=True`` kept a DynamicCache of every
layer's keys and values until the forward returned, and peaked in forward above the real step (Llama-2-7B
QLoRA + bf16 autocast: 12.36 GiB in forward, 11.41 GiB without the cache; the default engine 11.55 GiB).
"""

from __future__ import annotations

import pytest

from lora_doctor.measure.tiny import tiny_config
from lora_doctor.memory.analytic import step_peak
from lora_doctor.memory.tables import CUBLAS_WORKSPACE_BYTES
from lora_doctor.models import config_from_dict, resolve
from lora_doctor.plan_types import PlanSettings

QLORA_AUTOCAST = PlanSettings(mode="qlora", mixed_precision="bf16", batch_size=2, seq_len=512)


@pytest.fixture(autouse=True)
def derive_on(monkeypatch):
    monkeypatch.setenv("LORA_DOCTOR_DERIVE", "1")  # the default engine: recipes + trace-derived layer terms


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_default_engine_within_2_percent_of_the_trace_at_the_end_of_forward(model_type):
    """QLoRA + autocast without checkpointing: the case whose trace peaked in forward (with the cache)."""
    from lora_doctor.trace import trace_step

    resolved = resolve(tiny_config(model_type))
    traced = trace_step(resolved, QLORA_AUTOCAST)
    totals = step_peak(resolved.arch, QLORA_AUTOCAST)
    analytic = sum(totals.breakdown.values()) - CUBLAS_WORKSPACE_BYTES
    assert abs(analytic / traced.peak_bytes - 1) <= 0.02
    # the end of forward (saved activations + logits, their fp32 copy, log-softmax) is within the
    # default engine's backward_start, which takes the larger of the forward-end and loss-backward sets
    assert traced.phase_peaks["forward"] <= totals.phases["backward_start"] - CUBLAS_WORKSPACE_BYTES
    assert traced.phase_peaks["forward"] <= traced.phase_peaks["backward"]


def test_traced_model_has_no_kv_cache_like_a_trainer():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lora_doctor.trace.build import build_model
    from lora_doctor.trace.run import _empty

    built = build_model(resolve(tiny_config("llama")), QLORA_AUTOCAST, _empty, FakeTensorMode(allow_non_fake_inputs=True))
    assert built.model.config.use_cache is False   # what Trainer.__init__ sets from TrainingArguments.use_cache


def test_a_hybrid_whose_first_layer_is_mamba_traces_without_a_cache():
    """Bamba's layers are all Mamba in the tiny config; with the config's use_cache=True the forward built a
    hybrid cache and the mask code asked it for get_seq_length, which only attention layers answer
    ("ValueError: `get_seq_length` can only be called on Attention layers"; also Jamba, GraniteMoE-hybrid,
    Kimi-Linear, Bailing-hybrid). Traced as the Trainer leaves the model, no cache is built."""
    from lora_doctor.trace import trace_step

    s = PlanSettings(mode="lora", target_modules="all-linear", batch_size=1, seq_len=64)
    assert trace_step(resolve(tiny_config("bamba")), s).peak_bytes > 0


@pytest.mark.slow
def test_trace_matches_a_real_trainer_step_at_the_end_of_forward():
    """Two real Trainer steps (bitsandbytes NF4 on CPU, bf16 autocast) against the trace run as on CPU."""
    from lora_doctor.measure.training import measure_training
    from lora_doctor.trace import trace_step

    cfg = tiny_config("llama")
    measured = measure_training(config_from_dict(cfg), QLORA_AUTOCAST)
    traced = trace_step(resolve(cfg), QLORA_AUTOCAST, foreach=False)
    assert abs(traced.peak_bytes / measured.peak_bytes - 1) <= 0.005   # with the cache: +1.7%, in forward
