"""``LoraDoctorCallback(auto_fallback=True)``: when the pre-flight plan predicts an OOM, make the loaded
model fit before the first step (gradient checkpointing, then the frozen base linears in 4-bit), or
stop with the plan. The micro-batch is the data loader's, so it is not a lever here.
"""

from __future__ import annotations

from typing import Any

from ..errors import WontFitError
from ..findings import Finding
from ..torch_dtypes import torch_dtype
from ..units import format_bytes
from .preflight import PreflightReport



def _enable_checkpointing(model: Any) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(base, "config", None) is not None:
        base.config.use_cache = False


def apply_fallback(model: Any, report: PreflightReport) -> Finding | None:
    """Change ``model`` in place so the plan fits; the finding says what changed. Raises WontFitError."""
    from ..fallback.convert import quantize_base_linears
    from ..fallback.decision import decide
    from ..fallback.load import plan_function

    plan = report.plan
    if plan is None or plan.fits is not False:
        return None
    if plan.mode == "full":
        raise WontFitError(f"auto_fallback: full fine-tuning does not fit ({plan.recommendation}); the in-place "
                           "fallback only converts PeftModels: wrap the model with peft first", plan)
    device = report.settings.get("device", "cuda")
    compute = "bf16" if plan.gpu.bf16 else "fp16"
    decision = decide(plan.settings, plan.gpu.memory_bytes, plan_function(model, plan.gpu, device),
                      compute_dtype=compute, allow_micro_batch=False)
    done = []
    if "gradient_checkpointing" in decision.changed:
        _enable_checkpointing(model)
        done.append("enabled gradient checkpointing (non-reentrant)")
    if "quantize_4bit" in decision.changed:
        s = decision.settings
        conversion = quantize_base_linears(model, compute_dtype=torch_dtype(compute), quant_type=s.quant_type,
                                           double_quant=s.double_quant)
        done.append(f"converted {len(conversion.converted)} frozen base linears to 4-bit {s.quant_type.upper()} "
                    f"({compute} compute), freeing {format_bytes(conversion.freed_bytes)}")
    report.plan = decision.plan
    report.settings = dict(report.settings, mode=decision.settings.mode,
                           gradient_checkpointing=decision.settings.gradient_checkpointing)
    return Finding(
        "auto-fallback-applied", "warning",
        f"the plan predicted {format_bytes(plan.device_peak_bytes)} on {plan.gpu.name} "
        f"({format_bytes(plan.gpu.memory_bytes)}); auto_fallback {'; '.join(done)} -> planned "
        f"{format_bytes(decision.plan.device_peak_bytes)}. Adapters and the optimizer are unchanged.",
        "to keep the model as it is, pass auto_fallback=False (the default) and change the settings yourself",
        {"changed": decision.changed, "decision": decision.to_dict()},
    )

