"""LoRA statistics, memory judgement, the preflight adapter and Trainer glue, without a Trainer run."""

from types import SimpleNamespace

from callback_support import tiny_llama, tiny_lora  # first: sets the offline environment

import pytest
import torch

import lora_doctor
import lora_doctor.doctor
import lora_doctor.planner
from lora_doctor.callback import lora_stats
from lora_doctor.callback.glue import is_logging_step, move_before_reporters
from lora_doctor.callback.memory import MemoryMeter, MemoryReading, judge_memory, memory_metrics
from lora_doctor.callback.monitor import module_of
from lora_doctor.callback.preflight import plan_settings, run_preflight

GIB = 1024**3


def test_summary_counts_match_the_model():
    model = tiny_lora()
    summary = lora_stats.summarize(model)
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.mode == "lora" and summary.lora_scales == [2.0] and summary.ranks == [4]
    assert summary.adapted_families == ["q_proj", "v_proj"]
    assert set(summary.uncovered_families) == {"k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (summary.adapted_linears, summary.total_linears) == (4, 14)


def test_full_finetuning_summary():
    summary = lora_stats.summarize(tiny_llama())
    assert summary.mode == "full" and summary.adapted_linears == 0
    assert summary.trainable_params == summary.total_params


def test_rslora_scale():
    summary = lora_stats.summarize(tiny_lora(r=4, alpha=8, use_rslora=True))
    assert summary.lora_scales == [4.0]   # 8 / sqrt(4)


def test_delta_norm_trace_identity_matches_explicit_product():
    model = tiny_lora()
    adapters = lora_stats.find_adapters(model)
    with torch.no_grad():
        for ad in adapters:
            ad.b.normal_()
    explicit = [(ad.scaling * ad.b @ ad.a).norm().item() for ad in adapters]
    assert lora_stats.delta_norms(adapters) == pytest.approx(explicit, rel=1e-4)
    bases = lora_stats.base_norms(adapters)
    assert bases[0] == pytest.approx(adapters[0].base_weight.norm().item(), rel=1e-5)


def test_zero_init_and_dead_adapters():
    model = tiny_lora()
    adapters = lora_stats.find_adapters(model)
    assert lora_stats.init_findings(adapters) == []          # peft default: A random, B zero
    with torch.no_grad():
        adapters[0].a.zero_()
    [finding] = lora_stats.init_findings(adapters)
    assert finding.code == "init-both-zero" and finding.severity == "error"
    assert finding.data["modules"] == [adapters[0].name]
    _, b_norms = lora_stats.adapter_norms(adapters)
    dead = lora_stats.dead_adapter_finding(adapters, b_norms, step=20)
    assert dead.code == "adapters-dead" and dead.data["count"] == 4


def test_module_of():
    assert module_of("model.layers.0.self_attn.q_proj.lora_A.default.weight") == "model.layers.0.self_attn.q_proj"
    assert module_of("model.norm.weight") == "model.norm"


def test_memory_meter_without_cuda_reads_nothing():
    reading = MemoryMeter("cpu").read()
    assert reading == MemoryReading() and not reading.measured
    assert memory_metrics(reading, None) == {}


def test_judge_memory_plan_off_and_low_headroom():
    reading = MemoryReading(allocated_peak=12 * GIB, reserved_peak=int(23 * GIB), device_used=int(23.5 * GIB),
                            capacity=24 * GIB)
    codes = {f.code: f for f in judge_memory(reading, 10 * GIB, 11 * GIB, step=1)}
    assert set(codes) == {"memory-plan-off", "memory-headroom-low"}
    assert codes["memory-plan-off"].data["error"] == pytest.approx(0.2)
    fine = MemoryReading(allocated_peak=int(10.5 * GIB), reserved_peak=11 * GIB, device_used=12 * GIB, capacity=24 * GIB)
    assert judge_memory(fine, 10 * GIB, 11 * GIB, step=1) == []
    assert memory_metrics(fine, 10 * GIB)["doctor/memory_plan_error"] == pytest.approx(0.05)


def test_plan_settings_from_training_arguments(tmp_path):
    from transformers import TrainingArguments

    model = tiny_lora()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, gradient_accumulation_steps=2,
                             optim="adamw_torch", gradient_checkpointing=True, report_to="none", use_cpu=True)
    settings = plan_settings(model, args, lora_stats.summarize(model), batch=None, seq_len=77)
    assert settings == {
        "mode": "lora", "batch_size": 3, "seq_len": 77, "dtype": "fp32", "optim": "adamw_torch",
        "gradient_checkpointing": True, "attn_implementation": settings["attn_implementation"],
        "device": "cpu", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_rslora": False,
        "lora_dropout": 0.0,
    }


def test_preflight_calls_plan_and_diagnose_when_present(monkeypatch):
    from lora_doctor.findings import Finding

    calls = {}

    def fake_plan(model, **kwargs):
        calls["plan"] = (model, kwargs)
        return SimpleNamespace(peak_bytes=GIB, device_peak_bytes=2 * GIB, fits=True, gpu=None, breakdown={}, notes=[])

    def fake_diagnose(model, lora_config=None, **kwargs):
        calls["diagnose"] = (model, lora_config, kwargs)
        return SimpleNamespace(findings=[Finding("scale-high", "warning", "m", "f")])

    monkeypatch.setattr(lora_doctor.planner, "plan", fake_plan)   # preflight imports them when called
    monkeypatch.setattr(lora_doctor.doctor, "diagnose", fake_diagnose)
    model = tiny_lora()
    report = run_preflight(model, SimpleNamespace(per_device_train_batch_size=2), "tok",
                           lora_stats.find_adapters(model), batch=2, seq_len=8)
    assert calls["plan"][0] is model and calls["plan"][1]["seq_len"] == 8 and calls["plan"][1]["r"] == 4
    assert calls["diagnose"][0] is model and calls["diagnose"][1].r == 4 and calls["diagnose"][2]["tokenizer"] == "tok"
    assert report.planned_peak == GIB and [f.code for f in report.findings] == ["scale-high"]


def test_preflight_survives_a_raising_planner(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(lora_doctor.planner, "plan", broken)
    monkeypatch.setattr(lora_doctor.doctor, "diagnose", broken)
    model = tiny_lora()
    report = run_preflight(model, SimpleNamespace(), None, lora_stats.find_adapters(model), batch=1, seq_len=4)
    assert {f.code: f.severity for f in report.findings} == {
        "planner-failed": "warning", "doctor-failed": "warning"}


def test_move_before_reporters_keeps_iteration_intact():
    class Cb:
        def __init__(self, name):
            self.name = name

    DefaultFlowCallback = type("DefaultFlowCallback", (Cb,), {})
    flow, tb, wandb, me, printer = DefaultFlowCallback("flow"), Cb("tb"), Cb("wandb"), Cb("me"), Cb("printer")
    handler = SimpleNamespace(callbacks=[flow, tb, wandb, me, printer])
    seen = []
    for cb in handler.callbacks:
        seen.append(cb.name)
        if cb is me:
            assert move_before_reporters(handler, me)
    assert seen == ["flow", "tb", "wandb", "me", "printer"]
    assert [cb.name for cb in handler.callbacks] == ["flow", "me", "tb", "wandb", "printer"]


def test_is_logging_step():
    args = SimpleNamespace(logging_strategy="steps", logging_first_step=False)
    state = SimpleNamespace(logging_steps=10, max_steps=100)
    assert [s for s in range(1, 101) if is_logging_step(args, state, s)] == list(range(10, 101, 10))
