"""Multimodal families under the trace: real integer metadata inside a fake step (Qwen2-VL / Qwen2.5-VL,
Gemma-3, Idefics3), scoped and restored; the fake step equals the same step on real tensors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from lora_doctor import plan
from lora_doctor.measure.multimodal import MM_CONFIGS, MMCase, measure_case
from lora_doctor.models import resolve
from lora_doctor.plan_types import InputSettings, PlanSettings
from lora_doctor.trace.metadata import METADATA_FUNCTIONS, real_metadata
from lora_doctor.trace.run import trace_step


def _originals() -> dict[tuple[str, str], object]:
    import importlib

    from lora_doctor.trace.metadata import _owner

    out = {}
    for entries in METADATA_FUNCTIONS.values():
        for module_name, dotted in entries:
            owner, attr = _owner(importlib.import_module(module_name), dotted)
            out[(module_name, dotted)] = vars(owner)[attr]
    return out


@pytest.mark.slow
def test_qwen2_vl_traced_peak_matches_a_trainer_step_on_cpu():
    """Two Trainer steps on real tensors (random pixels) vs the fake trace of the same step: within 2%."""
    settings = PlanSettings(inputs=InputSettings(1, (224, 280)), target_modules="all-linear", seq_len=32,
                            batch_size=2)
    measured = measure_case(MMCase("qwen2-vl small", "qwen2_vl", settings))
    traced = plan(MM_CONFIGS["qwen2_vl"], target_modules="all-linear", seq_len=32, batch_size=2,
                  images_per_sample=1, image_size=(224, 280), engine="trace", device="cpu")
    assert traced.engine == "trace" and "trace_error" not in traced.details
    assert not any("does not run" in n for n in traced.notes)
    assert traced.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.02)


def test_qwen2_5_vl_fake_step_equals_the_real_step_and_restores_the_patches():
    """Window attention over two images: the fake step's peak is the real step's, to the byte."""
    before = _originals()
    resolved = resolve(MM_CONFIGS["qwen2_5_vl"])
    settings = PlanSettings(inputs=InputSettings(2, (224, 224)), target_modules="all-linear", seq_len=16,
                            batch_size=1)
    fake = trace_step(resolved, settings, foreach=False)
    real = trace_step(resolved, settings, fake=False, foreach=False)
    assert fake.peak_bytes == real.peak_bytes and fake.peak_phase == real.peak_phase
    assert _originals() == before
    assert torch._C._len_torch_dispatch_stack() == 0


def test_real_metadata_runs_real_ops_for_real_and_leaves_fake_ones_fake():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    grid = torch.tensor([[1, 16, 20], [1, 8, 8]])
    with FakeTensorMode(allow_non_fake_inputs=True):
        weight = torch.empty(4, 4)
        with real_metadata("qwen2_vl"):
            sizes = (grid.prod(-1) // 4).tolist()            # what get_image_features reads
            seqlens = torch.repeat_interleave(grid[:, 1] * grid[:, 2], grid[:, 0])
            mixed = weight * 2
        with real_metadata("llama"):                          # families that read nothing: untouched
            fake_sizes = grid.prod(-1)
    assert sizes == [80, 16] and seqlens.tolist() == [320, 64]
    assert isinstance(mixed, FakeTensor) and isinstance(fake_sizes, FakeTensor)


@pytest.mark.parametrize("name, size", [("gemma3", None), ("idefics3", (112, 112)), ("mllama", (112, 112))])
def test_fake_step_equals_the_real_step(name, size):
    """Gemma-3's bidirectional image mask, Idefics3's tiles (real pixel values), mllama's cross-attention."""
    resolved = resolve(MM_CONFIGS[name])
    settings = PlanSettings(inputs=InputSettings(1, size), target_modules="all-linear", seq_len=16, batch_size=1)
    fake = trace_step(resolved, settings, foreach=False)
    real = trace_step(resolved, settings, fake=False, foreach=False)
    assert fake.peak_bytes == real.peak_bytes and fake.peak_phase == real.peak_phase
    assert torch._C._len_torch_dispatch_stack() == 0
