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
from ..plan_types import TENSOR_TERMS, MemoryPlan, PlanSettings
from .activations import RECIPES
from .analytic import PhaseTotals, with_extra_terms
from .persistent import persistent_terms
from .targets import non_tensor_targets_note, peft_refused_note, reshaped_targets_note, targeted_families
from .workload import device_reserves, workload_peak
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
    added, extra = phase_hooks(towers)
    lm = replace(s, seq_len=towers.lm_seq_len) if towers.lm_seq_len != s.seq_len else s
    totals = with_extra_terms(workload_peak(resolved.arch, lm, device=device), added, extra)
    host_bytes, parallel_notes = None, ()
    if s.parallel.strategy is not None:  # several GPUs: what one of them holds (lora_doctor.parallel)
        totals, host_bytes, parallel_notes = _per_gpu(resolved, lm, totals, device)
    peak = sum(totals.breakdown.values())
    reserves, reserve_notes = device_reserves(s)
    overhead = device_terms(peak, totals.loss_bytes, reserves.get("vllm_reserve", 0))
    breakdown = dict({term: 0 for term in TENSOR_TERMS}, **totals.breakdown, **overhead)
    notes = list(totals.notes) + list(parallel_notes) + reserve_notes + list(inputs.notes) + list(towers.notes)
    where = placement_note(resolved.arch, s.target_modules) if s.mode != "full" else None
    if where:
        notes.append(where)
    for note in (non_tensor_targets_note, reshaped_targets_note, peft_refused_note):
        unwrappable = note(resolved.arch, s.target_modules) if s.mode != "full" else None
        if unwrappable:
            notes.append(unwrappable)
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
        details={"phases": totals.phases, **({"breakdowns": totals.breakdowns} if parallel_notes else {}),
                 **({"inputs": _inputs_detail(inputs, towers)} if resolved.arch.towers else {})},
        host_peak_bytes=host_bytes,
    )


def _per_gpu(resolved: ResolvedModel, s: PlanSettings, totals: PhaseTotals,
             device: str) -> tuple[PhaseTotals, int | None, tuple[str, ...]]:
    """Re-pick the peak phase from the per-GPU breakdowns of ``s.parallel``; host RAM is per node."""
    from ..parallel import per_gpu

    arch = resolved.arch
    targeted = [] if s.mode == "full" else targeted_families(arch, s.target_modules)
    pers = persistent_terms(arch, mode=s.mode, dtype=s.dtype, targeted=targeted, r=s.r, optim=s.optim,
                            double_quant=s.double_quant, device=device)
    split = per_gpu(arch, s, pers, totals.breakdowns or {totals.phase: totals.breakdown}, device)
    sums = {name: sum(bd.values()) for name, bd in split.phases.items()}
    phase = max(sums, key=sums.__getitem__)
    host = None
    if split.host_bytes_per_rank is not None:
        host = split.host_bytes_per_rank * int(s.parallel.option("gpus_per_node", min(s.parallel.num_gpus, 8)))
    return (replace(totals, breakdown=split.phases[phase], phase=phase, phases=sums, breakdowns=split.phases),
            host, split.notes)


def _inputs_detail(inputs: InputPlan, towers: TowerTerms) -> dict:
    """What the plan assumed about images / audio (JSON-friendly)."""
    return {"lm_seq_len": towers.lm_seq_len, "images_per_sample": inputs.images,
            "lm_tokens_per_image": inputs.lm_tokens_per_image, "vision_seq_per_image": inputs.vision_seq_per_image,
            "planned_image_size": list(inputs.planned_size) if inputs.planned_size else None,
            "audio_frames": inputs.audio_frames, "towers_training": list(towers.trains)}
