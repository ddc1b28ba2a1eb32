"""``load_for_training``: plan first, then load the model the way that fits (LoRA, or QLoRA on its own).

    model, decision = lora_doctor.load_for_training("meta-llama/Llama-3.1-8B", LoraConfig(...),
                                                    gpu="24GB", batch_size=8, seq_len=2048)
    print(decision.summary())

Planning reads only the config (no weights); if nothing fits, :class:`WontFitError` is raised before
any weight is loaded. See docs/fallback.md.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from ..errors import GpuNotAvailableError, InvalidSettingError
from ..gpus import GpuSpec, parse_gpu
from ..models import resolve
from ..plan_types import MemoryPlan, PlanSettings
from ..memory.engine import analytic_plan
from ..planner import make_settings
from ..verdict import finish_plan
from .decision import FallbackDecision, decide


def default_device(env: Mapping[str, str], cuda_count: int, current: int = 0) -> int | str:
    """Where ``load_for_training`` puts the model when no ``device_map`` is given (pure: env and device count in).

    Under torchrun / accelerate / deepspeed (``LOCAL_RANK`` set and ``WORLD_SIZE`` > 1) each rank takes
    its own GPU, ``cuda:LOCAL_RANK``; a single process takes the current CUDA device; no GPU: the CPU.
    """
    if cuda_count <= 0:
        return "cpu"
    local_rank, world_size = env.get("LOCAL_RANK"), env.get("WORLD_SIZE", "1")
    try:
        distributed = local_rank is not None and int(world_size or "1") > 1
        rank = int(local_rank) if distributed else current
    except ValueError:
        raise InvalidSettingError(f"LOCAL_RANK={local_rank!r} / WORLD_SIZE={world_size!r} are not integers; "
                                  "launch with torchrun, or pass device_map yourself") from None
    if distributed and not 0 <= rank < cuda_count:
        raise GpuNotAvailableError(
            f"LOCAL_RANK={rank} but this process sees {cuda_count} GPU(s); launch one process per visible GPU "
            f"(torchrun --nproc_per_node {cuda_count}), check CUDA_VISIBLE_DEVICES, or pass device_map yourself")
    return rank


def _targets(lora_config: Any) -> Any:
    targets = getattr(lora_config, "target_modules", None)
    return sorted(targets) if isinstance(targets, (set, frozenset, list, tuple)) else targets


def _gpu(gpu: Any) -> GpuSpec | None:
    try:
        return parse_gpu(gpu)
    except GpuNotAvailableError as exc:
        raise GpuNotAvailableError(
            f"load_for_training(gpu={gpu!r}) needs a GPU to plan against and found none ({exc}). "
            "Pass the memory to plan for (gpu='24GB', a GPU name or a byte count), "
            "or gpu=None to load LoRA as asked without planning."
        ) from None


def plan_fallback(model_id_or_path: Any, lora_config: Any, *, gpu: Any = "auto", batch_size: int = 1,
                  seq_len: int = 512, dtype: str | None = None, optim: str = "adamw_torch",
                  mixed_precision: str | None = None, gradient_checkpointing: bool = False,
                  attn_implementation: str = "sdpa", device: str = "cuda") -> FallbackDecision:
    """The decision :func:`load_for_training` acts on, without loading anything.

    ``dtype`` (the load dtype) defaults to bf16, or fp16 on a GPU without bf16.
    """
    spec = _gpu(gpu)
    compute = "bf16" if spec is None or spec.bf16 else "fp16"
    settings = make_settings(
        mode="lora", batch_size=batch_size, seq_len=seq_len, r=getattr(lora_config, "r", 8),
        lora_alpha=getattr(lora_config, "lora_alpha", 8), target_modules=_targets(lora_config),
        use_rslora=bool(getattr(lora_config, "use_rslora", False)), dtype=dtype or compute, mixed_precision=mixed_precision,
        optim=optim, gradient_checkpointing=gradient_checkpointing, attn_implementation=attn_implementation,
        quant_type="nf4", double_quant=True)
    if spec is None:
        return FallbackDecision(None, batch_size, compute_dtype=compute, requested=settings)
    return decide(settings, spec.memory_bytes, plan_function(model_id_or_path, spec, device), compute_dtype=compute)


def plan_function(model: Any, gpu: GpuSpec, device: str = "cuda") -> Callable[[PlanSettings], MemoryPlan]:
    """``settings -> MemoryPlan`` for one model and GPU (the model is resolved once)."""
    resolved = resolve(model)

    def plan_fn(s: PlanSettings) -> MemoryPlan:
        return finish_plan(analytic_plan(resolved, s, device), resolved, gpu, lambda x: analytic_plan(resolved, x, device))

    return plan_fn


def load_for_training(model_id_or_path: Any, lora_config: Any, *, gpu: Any = "auto", batch_size: int = 1,
                      seq_len: int = 512, optim: str = "adamw_torch", mixed_precision: str | None = None,
                      gradient_checkpointing: bool = False, **from_pretrained_kwargs: Any) -> tuple[Any, FallbackDecision]:
    """Load ``model_id_or_path`` for LoRA training in a way the planner says fits ``gpu``.

    Plans bf16 LoRA first; when its predicted device peak exceeds the GPU, adds gradient checkpointing,
    then a 4-bit NF4 base (double quantization, bf16 compute where the GPU has it, fp16 otherwise,
    ``prepare_model_for_kbit_training``), then a smaller micro-batch with gradient accumulation that
    keeps ``batch_size``. Returns the ``PeftModel`` and the :class:`FallbackDecision` (each step and the
    plan it rests on; pass ``decision.micro_batch_size`` / ``decision.gradient_accumulation_steps``
    to ``TrainingArguments``).

    ``gpu="auto"`` plans for the local GPU and raises :class:`GpuNotAvailableError` when there is none;
    ``gpu=None`` skips planning and loads bf16 LoRA as asked. Raises :class:`WontFitError` (with the
    plan) before loading any weight when nothing fits. ``from_pretrained_kwargs`` go to
    ``AutoModelForCausalLM.from_pretrained`` (``device_map`` defaults to this rank's GPU ``cuda:LOCAL_RANK``
    under torchrun, else the current GPU, or the CPU: :func:`default_device`).
    """
    if "quantization_config" in from_pretrained_kwargs:
        raise InvalidSettingError("load_for_training chooses the quantization itself; drop quantization_config")
    attn = from_pretrained_kwargs.get("attn_implementation") or "sdpa"
    decision = plan_fallback(model_id_or_path, lora_config, gpu=gpu, batch_size=batch_size, seq_len=seq_len,
                             optim=optim, mixed_precision=mixed_precision,
                             gradient_checkpointing=gradient_checkpointing,
                             attn_implementation=attn if attn in ("sdpa", "eager", "flash_attention_2") else "sdpa")
    return _load(model_id_or_path, lora_config, decision, decision.settings, from_pretrained_kwargs), decision


def _load(model_id_or_path: Any, lora_config: Any, decision: FallbackDecision, settings: Any,
          kwargs: dict[str, Any]) -> Any:
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ..torch_dtypes import torch_dtype  # lazily: planning without loading stays torch-free

    compute = torch_dtype(decision.compute_dtype)
    kwargs = dict(kwargs)
    kwargs.setdefault("dtype", compute)
    if "device_map" not in kwargs:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        kwargs["device_map"] = {"": default_device(os.environ, count, torch.cuda.current_device() if count else 0)}
    checkpointing = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    if settings.mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=settings.quant_type,
            bnb_4bit_use_double_quant=settings.double_quant, bnb_4bit_compute_dtype=compute)
        model = AutoModelForCausalLM.from_pretrained(model_id_or_path, **kwargs)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing,
                                                **checkpointing)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_id_or_path, **kwargs)
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(**checkpointing)
    return get_peft_model(model, lora_config)
