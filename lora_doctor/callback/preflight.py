"""Before the first step: the config doctor and the memory planner on the real model and Trainer settings.

The plan is the one :func:`lora_doctor.plan_trainer` makes for the Trainer on the call stack: the
worst batch the dataset allows (``min(max_length, longest example)``, exactly ``max_length`` with
packing), TRL's workload for SFT/DPO/GRPO trainers. Without a Trainer in sight (a custom loop), the
first batch's shape is planned, and a note says so. A planner or doctor that raises becomes a
``warning`` finding; training goes on either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..findings import Finding
from ..units import format_bytes
from .lora_stats import Adapter, ModelSummary, init_findings, summarize

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
MIXED_PRECISION_FLAGS = (("bf16", "bf16"), ("fp16", "fp16"))   # TrainingArguments flag -> plan's name


@dataclass
class PreflightReport:
    """Everything the pre-flight panel shows."""

    summary: ModelSummary
    settings: dict[str, Any]
    plan: Any = None                      # lora_doctor.MemoryPlan when the planner ran
    findings: list[Finding] = field(default_factory=list)
    capacity_bytes: int | None = None     # the GPU's memory, from the plan or the device

    @property
    def planned_peak(self) -> int | None:
        return getattr(self.plan, "peak_bytes", None)

    @property
    def planned_device_peak(self) -> int | None:
        return getattr(self.plan, "device_peak_bytes", None)


def _lora_config(model: Any) -> Any:
    configs = getattr(model, "peft_config", None) or {}
    active = getattr(model, "active_adapter", None)
    active = active[0] if isinstance(active, (list, tuple)) and active else active
    return configs.get(active) or next(iter(configs.values()), None)


def _weights_dtype(model: torch.nn.Module, mode: str) -> str | None:
    """The load dtype: frozen floating weights for (Q)LoRA, the trained ones for full fine-tuning."""
    want_trainable = mode == "full"
    for p in model.parameters():
        if p.is_floating_point() and p.requires_grad == want_trainable:
            return DTYPE_NAMES.get(p.dtype)
    return None


def _on_cpu(model: torch.nn.Module) -> bool:
    first = next(model.parameters(), None)
    return first is None or first.device.type == "cpu"


def _checkpointing_enabled(model: Any) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):   # new name first: no deprecation warning
        if hasattr(type(base), name):
            return bool(getattr(base, name))
    return False


def plan_settings(model: Any, args: Any, summary: ModelSummary, batch: int | None, seq_len: int | None) -> dict:
    """Keyword arguments for ``lora_doctor.plan`` from the model and ``TrainingArguments``."""
    optim = getattr(args, "optim", "adamw_torch")
    base_config = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    settings: dict[str, Any] = {
        "mode": summary.mode,
        "batch_size": batch or getattr(args, "per_device_train_batch_size", 1),
        "seq_len": seq_len,
        "dtype": _weights_dtype(model, summary.mode),
        "mixed_precision": next((name for flag, name in MIXED_PRECISION_FLAGS if getattr(args, flag, False)), None),
        "optim": getattr(optim, "value", optim),
        "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False)
                                       or _checkpointing_enabled(model)),
        "attn_implementation": getattr(base_config, "_attn_implementation", None),
        "device": "cpu" if _on_cpu(model) else "cuda",   # whose optimizer implementation to model
    }
    lora = _lora_config(model)
    if lora is not None and summary.mode != "full":
        targets = getattr(lora, "target_modules", None)
        settings.update(
            r=getattr(lora, "r", None), lora_alpha=getattr(lora, "lora_alpha", None),
            target_modules=sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
            use_rslora=bool(getattr(lora, "use_rslora", False)),
            lora_dropout=float(getattr(lora, "lora_dropout", 0.0) or 0.0),
        )
    quant = getattr(base_config, "quantization_config", None)
    if summary.mode == "qlora" and quant is not None:
        get = quant.get if isinstance(quant, dict) else lambda k, d=None: getattr(quant, k, d)
        settings.update(quant_type=get("bnb_4bit_quant_type", "nf4"),
                        double_quant=bool(get("bnb_4bit_use_double_quant", False)))
    return {k: v for k, v in settings.items() if v is not None}


def _failed(code: str, what: str, exc: BaseException) -> Finding:
    return Finding(code, "warning", f"{what} failed on this model: {type(exc).__name__}: {exc}",
                   "training goes on without it; please report this with the model and settings",
                   {"error": repr(exc)})


INPUT_KEYS = ("images_per_sample", "image_size", "image_tokens", "audio_seconds")


def run_plan(model: Any, settings: dict, gpu: Any, trainer: Any = None) -> tuple[Any, list[Finding]]:
    """Plan ``trainer`` like :func:`lora_doctor.plan_trainer` (else ``model`` at ``settings``)."""
    from ..planner import plan
    from ..workloads.trainer import plan_trainer

    try:
        if trainer is not None:
            result = plan_trainer(trainer, gpu=gpu, fallback_seq_len=settings.get("seq_len"),
                                  inputs={k: settings[k] for k in INPUT_KEYS if k in settings})
            settings.update(batch_size=result.settings.batch_size, seq_len=result.details["batch"]["seq_len"],
                            trainer=result.details["batch"]["trainer"])
        else:
            result = plan(model, gpu=gpu, **settings)
            result.notes.insert(0, f"planned at the first batch's shape ({settings.get('batch_size')} x "
                                   f"{settings.get('seq_len')}): no Trainer found to read the dataset from")
    except Exception as exc:
        return None, [_failed("planner-failed", "the memory planner", exc)]
    findings = []
    if getattr(result, "fits", None) is False:
        findings.append(Finding(
            "memory-wont-fit", "warning",
            f"the planner predicts a device peak of {format_bytes(result.device_peak_bytes)}, more than the "
            f"{format_bytes(result.gpu.memory_bytes)} of {result.gpu.name}; largest term: {result.largest_term}",
            getattr(result, "recommendation", None) or "run `lora-doctor plan` for what would fit",
            {"device_peak_bytes": result.device_peak_bytes, "headroom_bytes": result.headroom_bytes},
        ))
    return result, findings


def run_diagnose(model: Any, args: Any, tokenizer: Any, trainer: Any = None) -> list[Finding]:
    from ..doctor import diagnose

    base_config = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    try:
        report = diagnose(model, _lora_config(model), training_args=args, tokenizer=tokenizer,
                          quantization_config=getattr(base_config, "quantization_config", None),
                          data_collator=getattr(trainer, "data_collator", None))
        return list(getattr(report, "findings", report) or [])
    except Exception as exc:
        return [_failed("doctor-failed", "the config doctor", exc)]


def _local_gpu(gpu: Any) -> Any:
    from ..gpus import detect_local_gpu, parse_gpu

    if gpu is not None:
        return parse_gpu(gpu)
    if not torch.cuda.is_available():
        return None
    try:
        return detect_local_gpu(torch.cuda.current_device())
    except Exception:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        from ..gpus import GpuSpec

        return GpuSpec(props.name, int(props.total_memory))


def run_preflight(model: Any, args: Any, tokenizer: Any, adapters: list[Adapter], *,
                  batch: int | None, seq_len: int | None, gpu: Any = None, use_library: bool = True,
                  inputs: dict | None = None) -> PreflightReport:
    """Summary, plan and findings for the panel. Never raises for a missing planner or doctor.

    ``inputs``: images / audio read from the first batch (callback.probes.batch_inputs)."""
    summary = summarize(model, adapters)
    settings = dict(plan_settings(model, args, summary, batch, seq_len), **(inputs or {}))
    findings = init_findings(adapters) if adapters else []
    plan = None
    gpu_spec = _local_gpu(gpu)
    if use_library:
        from .objective import find_trainer

        trainer = find_trainer()
        plan, plan_findings = run_plan(model, settings, gpu_spec, trainer)
        doctor = run_diagnose(model, args, tokenizer, trainer)
        seen = {f.code for f in doctor}
        findings = doctor + [f for f in findings if f.code not in seen] + plan_findings
    capacity = getattr(getattr(plan, "gpu", None), "memory_bytes", None) or getattr(gpu_spec, "memory_bytes", None)
    return PreflightReport(summary, settings, plan, findings, capacity)
