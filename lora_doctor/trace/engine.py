"""``engine="trace"``: a :class:`~lora_doctor.MemoryPlan` measured from one traced training step.

Falls back to the analytic engine, with a note saying why, when the real model code cannot run on
fake tensors (an op without a fake kernel, a value-dependent branch, an unknown architecture).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..memory.engine import analytic_plan, lora_scale
from ..memory.overhead import device_terms
from ..memory.tables import CUBLAS_WORKSPACE_BYTES
from ..inputs import plan_inputs
from ..models import ResolvedModel
from ..plan_types import MemoryPlan, PlanSettings
from .advice import shrink_advice
from .inputs import BATCHES, traceable
from .run import TraceResult, trace_step


def trace_plan(resolved: ResolvedModel, settings: PlanSettings, *, device: str = "cuda") -> MemoryPlan:
    """Trace one step of ``resolved`` with ``settings``; never raises for a model the trace can't run.

    ``device`` picks whose optimizer implementation runs: ``"cuda"`` (foreach, as on a GPU) or
    ``"cpu"`` (per-tensor), to compare against a CPU measurement. The verdict is added above the
    engines, by :func:`lora_doctor.verdict.finish_plan`.
    """
    if not traceable(resolved):   # multimodal families without a traced batch: see docs/multimodal.md
        plan = analytic_plan(resolved, settings, device)
        plan.notes.insert(0, f"the trace engine does not run {resolved.arch.model_type} yet (it traces "
                             f"{', '.join(sorted(BATCHES))} and text models); showing the analytic estimate")
        return plan
    try:
        result = trace_step(resolved, settings, foreach=device == "cuda")
    except Exception as exc:  # any failure inside third-party model code: fall back, say why
        plan = analytic_plan(resolved, settings, device)
        plan.notes.insert(0, f"trace failed ({type(exc).__name__}: {_first_line(exc)}); "
                             "showing the analytic estimate instead")
        plan.details["trace_error"] = f"{type(exc).__name__}: {_first_line(exc)}"
    else:
        plan = plan_from_trace(resolved, settings, result, device=device)
        if resolved.arch.towers:   # what the traced batch held: image tokens / audio frames per sample
            plan.notes.extend(plan_inputs(resolved.arch, settings.inputs).notes)
    return plan


def plan_from_trace(resolved: ResolvedModel, settings: PlanSettings, result: TraceResult, *,
                    device: str = "cuda") -> MemoryPlan:
    breakdown = dict(result.breakdown)
    # cuBLAS workspaces live in the caching allocator too (see memory.tables); the CPU has none
    workspace = CUBLAS_WORKSPACE_BYTES if device == "cuda" else 0
    breakdown["temporaries"] = breakdown.get("temporaries", 0) + workspace
    peak = result.peak_bytes + workspace
    overhead = device_terms(peak, breakdown.get("logits_and_loss", 0))
    scale = lora_scale(settings)
    advice = shrink_advice(result.breakdown, settings, result.peak_phase, resolved.arch)
    details: dict[str, Any] = {
        "phases": {phase: total + workspace for phase, total in result.phase_peaks.items()},
        "top_tensors": [asdict(t) for t in result.top_tensors],
        "categories": dict(result.breakdown),
        "shrink": advice,
        "ops": result.ops,
        "trace_seconds": round(result.seconds, 2),
    }
    return MemoryPlan(
        model=resolved.name, settings=settings, breakdown=dict(breakdown, **overhead),
        peak_bytes=peak, device_peak_bytes=peak + sum(overhead.values()),
        total_params=result.total_params, trainable_params=result.trainable_params, engine="trace",
        peak_phase=result.peak_phase, lora_scale=scale, targets=result.targets,
        notes=[*result.notes, advice], details=details,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
