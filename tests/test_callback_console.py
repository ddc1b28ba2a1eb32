"""Snapshot tests: the panels and status line rendered at a fixed width (UPDATE_SNAPSHOTS=1 rewrites)."""

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from lora_doctor.callback.console import (DoctorConsole, Status, alarm_panel, alarm_plain, preflight_panel,
                                          preflight_plain, status_text)
from lora_doctor.callback.lora_stats import ModelSummary
from lora_doctor.callback.memory import MemoryReading
from lora_doctor.callback.preflight import PreflightReport
from lora_doctor.findings import Finding
from lora_doctor.gpus import GpuSpec
from lora_doctor.plan_types import MemoryPlan, PlanSettings

SNAPSHOTS = Path(__file__).parent / "snapshots"
GIB = 1024**3
WIDTH = 80


def report() -> PreflightReport:
    summary = ModelSummary(mode="qlora", total_params=6_738_415_616, trainable_params=39_976_960,
                           lora_scales=[2.0], ranks=[16], adapted_families=["q_proj", "k_proj", "v_proj", "o_proj"],
                           uncovered_families=["gate_proj", "up_proj", "down_proj"], adapted_linears=128,
                           total_linears=224)
    gpu = GpuSpec("RTX4090", 24564 * 1024**2)
    plan = MemoryPlan(model="meta-llama/Llama-2-7b-hf", settings=PlanSettings(mode="qlora"),
                      breakdown={"weights": int(3.6 * GIB), "quantization_state": int(0.2 * GIB),
                                 "adapters": int(0.15 * GIB), "optimizer_states": int(0.3 * GIB),
                                 "activations": int(4.1 * GIB), "logits_and_loss": int(1.9 * GIB),
                                 "cuda_context": int(0.4 * GIB)},
                      peak_bytes=int(10.4 * GIB), device_peak_bytes=int(11.5 * GIB), total_params=6_738_415_616,
                      trainable_params=39_976_960, gpu=gpu, fits=True, headroom_bytes=int(12.5 * GIB))
    findings = [Finding("coverage-partial", "info", "MLP projections are not adapted",
                        "add gate_proj, up_proj, down_proj for generation tasks"),
                Finding("scale-high", "warning", "effective LoRA scale 8 (lora_alpha=128, r=16) is large",
                        "use lora_alpha=32 (scale 2)")]
    return PreflightReport(summary, {"seq_len": 2048, "batch_size": 4}, plan, findings, gpu.memory_bytes)


ALARM = [Finding("grad-norm-spike", "warning", "gradient norm spiked at step 15: 114 is 1000.0x the recent median 0.114",
                 "lower the learning rate", {"step": 15})]
STATUS = Status(step=120, loss=1.234, grad_norm=0.84, grad_median=0.8, top_module="model.layers.3.mlp.down_proj",
                top_module_norm=0.41, delta_ratio_max=0.0123, dead_adapters=0,
                memory=MemoryReading(int(10.9 * GIB), int(11.6 * GIB), int(12.0 * GIB), 24 * GIB),
                planned_peak=int(10.4 * GIB), alarms=1)


def rich_text(renderable) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=WIDTH, color_system=None, force_terminal=False).print(renderable)
    return buffer.getvalue()


def check(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("name, render", [
    ("callback_preflight_rich.txt", lambda: rich_text(preflight_panel(report()))),
    ("callback_preflight_plain.txt", lambda: preflight_plain(report()) + "\n"),
    ("callback_alarm_rich.txt", lambda: rich_text(alarm_panel(ALARM, "stopping; checkpoint out/checkpoint-15"))),
    ("callback_alarm_plain.txt", lambda: alarm_plain(ALARM, "stopping; checkpoint out/checkpoint-15") + "\n"),
    ("callback_status.txt", lambda: status_text(STATUS) + "\n"),
])
def test_snapshot(name, render):
    check(name, render())


def test_memory_row_without_plan_or_gpu():
    r = report()
    r.capacity_bytes = None
    assert "planned tensor peak 10.40 GiB (no GPU to compare with); largest: activations" in preflight_plain(r)
    assert "cuda_context" not in preflight_plain(r)
    r.plan = None
    assert "no plan (no GPU: nothing to measure)" in preflight_plain(r)


def test_plain_text_when_not_a_terminal_and_ansi_when_forced():
    out = io.StringIO()
    DoctorConsole(file=out).status(STATUS)
    assert out.getvalue() == status_text(STATUS) + "\n"
    out = io.StringIO()
    DoctorConsole(file=out, rich=True, width=WIDTH).preflight(report())
    assert "\x1b[" in out.getvalue() and "╭" in out.getvalue()


def test_disabled_console_prints_nothing():
    out = io.StringIO()
    DoctorConsole(False, file=out).alarm(ALARM)
    assert out.getvalue() == ""
