"""The analytic engine's entry point: ``analytic_plan(resolved, settings) -> MemoryPlan``.

An engine only computes: it returns a :class:`~lora_doctor.MemoryPlan` without a GPU verdict. The
verdict, the max batch / sequence search and the recommendation are added above the engines, by
:mod:`lora_doctor.verdict`.
"""

from __future__ import annotations

from dataclasses import replace

from ..inputs import InputPlan
from ..models import ResolvedModel
from ..placement import placement_note
from ..plan_types import MemoryPlan, PlanSettings
from .activations import RECIPES
from .analytic import step_peak
from .overhead import device_terms
from .towers import TowerTerms, phase_hooks, tower_terms


def lora_scale(s: PlanSettings) -> float | None:
    """alpha / r (alpha / sqrt(r) with rsLoRA); None for full fine-tuning."""
    if s.mode == "full":
        return None
    return s.lora_alpha / (s.r ** 0.5 if s.use_rslora else s.r)


def analytic_plan(resolved: ResolvedModel, s: PlanSettings, device: str = "cuda") -> MemoryPlan:
    """Closed-form peak of one training step of ``resolved`` under ``s`` (no verdict)."""
    towers, inputs = tower_terms(resolved.arch, s, device)
    added, phases = phase_hooks(towers)
    lm_settings = replace(s, seq_len=towers.lm_seq_len) if towers.lm_seq_len != s.seq_len else s
    totals = step_peak(resolved.arch, lm_settings, device=device, extra_activations=added, extra_phases=phases)
    peak = sum(totals.breakdown.values())
    overhead = device_terms(peak, totals.loss_bytes)
    breakdown = dict(totals.breakdown, **overhead)
    notes = list(totals.notes) + list(inputs.notes) + list(towers.notes)
    where = placement_note(resolved.arch, s.target_modules) if s.mode != "full" else None
    if where:
        notes.append(where)
    recipe = RECIPES.get(resolved.arch.block, RECIPES["generic"])
    if s.attn_implementation == "sdpa" and not recipe.sdpa:
        notes.append(f"{resolved.arch.model_type} has no SDPA attention in transformers: planned with eager "
                     "attention (heads x seq x seq scores per layer); flash_attention_2 on a GPU avoids that")
    max_pos = resolved.arch.max_positions
    if max_pos and towers.lm_seq_len > max_pos:
        notes.append(f"sequence length {towers.lm_seq_len} exceeds the model's max_position_embeddings ({max_pos})")
    return MemoryPlan(
        model=resolved.name, settings=s, breakdown=breakdown, peak_bytes=int(peak),
        device_peak_bytes=int(peak + sum(overhead.values())), total_params=resolved.arch.total_params,
        trainable_params=totals.trainable_params, engine="analytic", peak_phase=totals.phase,
        lora_scale=lora_scale(s), targets=list(totals.targets), notes=notes,
        details={"phases": totals.phases, **({"inputs": _inputs_detail(inputs, towers)} if resolved.arch.towers else {})},
    )


def _inputs_detail(inputs: InputPlan, towers: TowerTerms) -> dict:
    """What the plan assumed about images / audio (JSON-friendly)."""
    return {"lm_seq_len": towers.lm_seq_len, "images_per_sample": inputs.images,
            "lm_tokens_per_image": inputs.lm_tokens_per_image, "vision_seq_per_image": inputs.vision_seq_per_image,
            "planned_image_size": list(inputs.planned_size) if inputs.planned_size else None,
            "audio_frames": inputs.audio_frames, "towers_training": list(towers.trains)}
