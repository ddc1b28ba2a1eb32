"""``lora_doctor.plan``: predicted peak GPU memory of a training run, and whether it fits.

This is the public edge of the planner: it validates settings, resolves the model, runs an engine
(``analytic`` formulas, or ``trace`` on fake tensors) and adds the GPU verdict, the largest batch /
sequence length that fit, and a recommendation. No printing; rendering lives in lora_doctor.render.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Sequence

from .errors import InvalidSettingError
from .gpus import GpuSpec, parse_gpu
from .inputs import make_inputs, plan_inputs
from .memory.engine import analytic_plan
from .memory.targets import FALLBACK_TARGETS, fallback_targets_note
from .memory.tables import DTYPE_ALIASES, DTYPE_BYTES, OPTIMIZERS
from .models import ResolvedModel, resolve
from .parallel import make_parallel
from .plan_types import MODES, InputSettings, MemoryPlan, ParallelSettings, PlanSettings, WorkloadSettings
from .verdict import finish_plan
from .workloads import make_workload

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
ENGINES = ("analytic", "trace")
OPTIM_ALIASES = {"adamw": "adamw_torch", "adam": "adamw_torch", "paged_adamw": "paged_adamw_32bit",
                 "adamw_bnb": "adamw_bnb_8bit", "bnb_8bit": "adamw_bnb_8bit"}


def plan(model: Any, *, mode: str = "lora", gpu: "str | int | GpuSpec | None" = None, batch_size: int = 1,
         seq_len: int = 512, r: int | None = None, lora_alpha: float | None = None,
         target_modules: "str | Sequence[str] | None" = None, use_rslora: bool | None = None,
         lora_dropout: float | None = None, dtype: str = "bf16", mixed_precision: str | None = None,
         optim: str = "adamw_torch", gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
         quant_type: str = "nf4", double_quant: bool = True, engine: str = "analytic",
         device: str = "cuda", trainer: str = "hf", fused_lm_head: bool | None = None,
         num_gpus: int | None = None, strategy: str | None = None, offload: str | None = None,
         parallel_options: "dict[str, Any] | None" = None,
         images_per_sample: int = 0, image_size: "tuple[int, int] | None" = None,
         image_tokens: int | None = None, audio_seconds: float | None = None,
         min_pixels: int | None = None, max_pixels: int | None = None, **trainer_options: Any) -> MemoryPlan:
    """Predict the peak memory of one training step.

    Args:
        model: a hub id, a local directory / config.json, a ``PretrainedConfig``, a config dict, or a
            loaded ``nn.Module`` / ``PeftModel``.
        mode: ``"full"``, ``"lora"`` or ``"qlora"`` (bitsandbytes 4-bit base + LoRA).
        gpu: ``"24GB"``, ``"24GiB"``, ``"80G"``, a byte count, a GPU name (``"RTX3090"``, ``"A100-80GB"``),
            ``"auto"`` (the local GPU via NVML), or None for no verdict.
        dtype: dtype the base weights are loaded in (``fp32``, ``bf16``, ``fp16``).
        mixed_precision: the Trainer's ``bf16`` / ``fp16`` autocast; None = off.
        target_modules: None (peft's default for the architecture), ``"all-linear"``, a list of names
            or a regex string. Ignored for ``mode="full"``.
        r, lora_alpha, target_modules, use_rslora, lora_dropout: left as None, they come from the
            ``LoraConfig`` of a ``PeftModel`` passed as ``model``; otherwise r=16, lora_alpha=32,
            peft's default targets, no rsLoRA, no dropout.
        engine: ``"analytic"`` (closed-form, milliseconds) or ``"trace"`` (runs the real model code
            on fake tensors).
        device: ``"cuda"`` (default) or ``"cpu"``: whose optimizer implementation to model (torch's
            CUDA AdamW holds a full-size scratch copy; the CPU one works one parameter at a time).
        trainer, fused_lm_head: the trainer whose step is planned (the workload axis,
            :mod:`lora_doctor.workloads`): ``"hf"`` (plain Trainer), ``"sft"``, ``"dpo"``, ``"grpo"``
            (TRL, from the installed TRL version's defaults; a note says which). ``fused_lm_head=None``
            is the trainer's default (TRL patches a fused LM head).
        **trainer_options: TRL config fields, spelled as TRL spells them: ``max_length``,
            ``packing``, ``padding_free``, ``activation_offloading``, ``use_liger_kernel`` (sft);
            ``max_length``, ``precompute_ref_log_probs``, ``beta``, ``disable_dropout`` (dpo);
            ``max_completion_length``, ``num_generations``, ``generation_batch_size``,
            ``steps_per_generation``, ``beta``, ``use_vllm``, ``vllm_mode``,
            ``vllm_gpu_memory_utilization`` (grpo, where ``seq_len`` is the prompt length). Unknown
            names are an error.
        num_gpus, strategy, offload: the parallel axis (:mod:`lora_doctor.parallel`); ``peak_bytes`` is
            per GPU. ``num_gpus`` defaults to the GPU spec's count (``gpu="8xH100"``). ``strategy``:
            ``"ddp"`` (default for several GPUs), ``"fsdp"``, ``"fsdp_grad_op"``, ``"zero1"``-``"zero3"``;
            ``offload``: None, ``"optimizer"`` or ``"all"`` (``plan.host_peak_bytes``: CPU RAM per node).
        parallel_options: strategy details such as DeepSpeed bucket sizes or ``gradient_as_bucket_view``;
            :mod:`lora_doctor.parallel.launch` reads them (and the three above) from launch configs.
        images_per_sample, image_size, image_tokens, audio_seconds: the input axis
            (:mod:`lora_doctor.inputs`).
        min_pixels, max_pixels: the resize bounds of a Qwen2-VL / Qwen2.5-VL processor when they are
            not its defaults (56*56 and 28*28*1280); an error for models whose processor resizes otherwise.

    Returns:
        a :class:`MemoryPlan`. Raises :class:`LoraDoctorError` subclasses on bad input.
    """
    gpu_spec = parse_gpu(gpu)
    workload = make_workload(trainer, fused_lm_head, **trainer_options)
    if gpu_spec is not None and workload.trainer == "grpo":   # vLLM colocate reserves a fraction of it
        workload = replace(workload, options=tuple(sorted(workload.options + (("gpu_memory_bytes", gpu_spec.memory_bytes),))))
    parallel = make_parallel(num_gpus, strategy, offload, gpu_count=gpu_spec.count if gpu_spec else 1,
                             **(parallel_options or {}))
    inputs = make_inputs(images_per_sample, image_size, image_tokens, audio_seconds, min_pixels, max_pixels)
    resolved = resolve(model)
    plan_inputs(resolved.arch, inputs)   # images for a text-only model, audio beyond 30 s: clear errors now
    lora = _lora_defaults(resolved.module, r=r, lora_alpha=lora_alpha, target_modules=target_modules,
                          use_rslora=use_rslora, lora_dropout=lora_dropout)
    settings = make_settings(mode=mode, batch_size=batch_size, seq_len=seq_len, **lora, dtype=dtype,
                             mixed_precision=mixed_precision, optim=optim,
                             gradient_checkpointing=gradient_checkpointing,
                             attn_implementation=attn_implementation, quant_type=quant_type,
                             double_quant=double_quant, workload=workload, parallel=parallel, inputs=inputs)
    if engine not in ENGINES:
        raise InvalidSettingError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "trace" and parallel.strategy is not None:
        raise InvalidSettingError("the trace engine plans one GPU; plan several GPUs (num_gpus, strategy, offload) "
                                  "with engine='analytic'")
    if engine == "trace" and workload.trainer != "hf":
        raise InvalidSettingError(f"engine='trace' traces a plain Trainer step; trainer={workload.trainer!r} "
                                  "(TRL's fused head, reference forward, generation) is planned by engine='analytic'")
    if device not in ("cuda", "cpu"):
        raise InvalidSettingError(f"device must be 'cuda' or 'cpu', got {device!r}")
    fallback = fallback_targets_note(resolved.arch, settings.target_modules)
    if fallback:  # every engine and the recommender's LoRA levers then adapt the same layers
        settings = replace(settings, target_modules=FALLBACK_TARGETS)
    compute = _engine(engine, device)
    result = compute(resolved, settings)
    result.notes += resolved.notes + ([fallback] if fallback and mode != "full" else [])
    return finish_plan(result, resolved, gpu_spec, lambda s: analytic_plan(resolved, s, device))


_LORA_DEFAULTS = {"r": 16, "lora_alpha": 32, "target_modules": None, "use_rslora": False, "lora_dropout": 0.0}


def _lora_defaults(module: Any, **given: Any) -> dict[str, Any]:
    """Explicit values win; then the LoraConfig of a PeftModel; then the documented defaults."""
    config = None
    peft_config = getattr(module, "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        config = peft_config.get(getattr(module, "active_adapter", "default")) or next(iter(peft_config.values()))
    out = {}
    for key, default in _LORA_DEFAULTS.items():
        value = given[key]
        if value is None and config is not None:
            value = getattr(config, key, None)
            if isinstance(value, (set, frozenset)):
                value = sorted(value)
        out[key] = default if value is None else value
    return out


# Upper bounds far beyond real runs: they keep the arithmetic (and the trace) finite and fast.
_INT_LIMITS = {"batch_size": 1 << 20, "seq_len": 1 << 27, "r": 1 << 16}
_STR_FIELDS = ("mode", "dtype", "optim", "attn_implementation", "quant_type")
_BOOL_FIELDS = ("use_rslora", "gradient_checkpointing", "double_quant")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def make_settings(**kw: Any) -> PlanSettings:
    """Validate and normalize raw settings (collects every problem into one error)."""
    problems: list[str] = []
    for name in _STR_FIELDS:  # wrong types first: lookups below hash and compare these values
        if not isinstance(kw[name], str):
            problems.append(f"{name} must be a string, got {type(kw[name]).__name__} {str(kw[name])[:40]!r}")
    for name in _BOOL_FIELDS:
        if not isinstance(kw.get(name, False), bool):
            problems.append(f"{name} must be True or False, got {kw[name]!r}")
    mp = kw["mixed_precision"]
    if mp is not None and not isinstance(mp, (str, bool)):
        problems.append(f"mixed_precision must be None, 'bf16' or 'fp16', got {mp!r}")
    if problems:
        raise InvalidSettingError("; ".join(problems))
    mode = kw["mode"]
    if mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name, limit in _INT_LIMITS.items():
        value = kw[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
            problems.append(f"{name} must be a positive integer (at most {limit:,}), got {str(value)[:40]!r}")
    dropout = kw.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        problems.append(f"lora_dropout must be in [0, 1), got {dropout!r}")
    if not _is_number(kw["lora_alpha"]) or kw["lora_alpha"] <= 0:
        problems.append(f"lora_alpha must be a positive finite number, got {kw['lora_alpha']!r}")
    dtype = DTYPE_ALIASES.get(kw["dtype"].lower(), kw["dtype"].lower())
    if dtype not in DTYPE_BYTES:
        problems.append(f"dtype must be one of fp32, bf16, fp16, got {kw['dtype']!r}")
    mp = None if mp in (None, False, "no", "none", "") else DTYPE_ALIASES.get(str(mp).lower(), str(mp).lower())
    if mp is not None and mp not in ("bf16", "fp16"):
        problems.append(f"mixed_precision must be None, 'bf16' or 'fp16', got {kw['mixed_precision']!r}")
    optim = OPTIM_ALIASES.get(kw["optim"], kw["optim"])
    if optim not in OPTIMIZERS:
        problems.append(f"optim must be one of {', '.join(sorted(OPTIMIZERS))}, got {kw['optim']!r}")
    attn = kw["attn_implementation"]
    if attn not in ATTN_IMPLEMENTATIONS:
        problems.append(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {attn!r}")
    if kw["quant_type"] not in ("nf4", "fp4"):
        problems.append(f"quant_type must be 'nf4' or 'fp4', got {kw['quant_type']!r}")
    if problems:
        raise InvalidSettingError("; ".join(problems))
    from .memory.targets import normalize_targets

    targets = normalize_targets(kw["target_modules"])
    return PlanSettings(
        mode=mode, batch_size=kw["batch_size"], seq_len=kw["seq_len"], r=kw["r"], lora_alpha=kw["lora_alpha"],
        target_modules=list(targets) if isinstance(targets, tuple) else targets, use_rslora=bool(kw["use_rslora"]),
        lora_dropout=float(kw.get("lora_dropout", 0.0)), dtype=dtype, mixed_precision=mp, optim=optim, gradient_checkpointing=bool(kw["gradient_checkpointing"]),
        attn_implementation="sdpa" if attn == "flash_attention_2" else attn,
        quant_type=kw["quant_type"], double_quant=bool(kw["double_quant"]),
        workload=kw.get("workload") or WorkloadSettings(), parallel=kw.get("parallel") or ParallelSettings(),
        inputs=kw.get("inputs") or InputSettings(),
    )


def _engine(engine: str, device: str) -> Callable[[ResolvedModel, PlanSettings], MemoryPlan]:
    if engine == "trace":
        from .trace import trace_plan  # optional engine; imports torch

        return lambda resolved, settings: trace_plan(resolved, settings, device=device)
    return lambda resolved, settings: analytic_plan(resolved, settings, device)


