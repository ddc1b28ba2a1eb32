"""``lora_doctor.plan``: predicted peak GPU memory of a training run, and whether it fits.

This is the public edge of the planner: it validates settings, resolves the model, runs an engine
(``analytic`` formulas, or ``trace`` on fake tensors) and adds the GPU verdict, the largest batch /
sequence length that fit, and a recommendation. No printing; rendering lives in lora_doctor.render.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from .errors import InvalidSettingError
from .gpus import GpuSpec, parse_gpu
from .memory.activations import RECIPES
from .memory.analytic import step_peak
from .memory.overhead import device_terms
from .memory.tables import DTYPE_ALIASES, DTYPE_BYTES, OPTIMIZERS
from .models import ResolvedModel, resolve
from .plan_types import MODES, MemoryPlan, PlanSettings
from .units import format_bytes

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
ENGINES = ("analytic", "trace")
OPTIM_ALIASES = {"adamw": "adamw_torch", "adam": "adamw_torch", "paged_adamw": "paged_adamw_32bit",
                 "adamw_bnb": "adamw_bnb_8bit", "bnb_8bit": "adamw_bnb_8bit"}
_MAX_SEARCH = 1 << 20


def plan(model: Any, *, mode: str = "lora", gpu: "str | int | GpuSpec | None" = None, batch_size: int = 1,
         seq_len: int = 512, r: int | None = None, lora_alpha: float | None = None,
         target_modules: "str | Sequence[str] | None" = None, use_rslora: bool | None = None,
         lora_dropout: float | None = None, dtype: str = "bf16", mixed_precision: str | None = None,
         optim: str = "adamw_torch", gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
         quant_type: str = "nf4", double_quant: bool = True, engine: str = "analytic",
         device: str = "cuda") -> MemoryPlan:
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

    Returns:
        a :class:`MemoryPlan`. Raises :class:`LoraDoctorError` subclasses on bad input.
    """
    resolved = resolve(model)
    lora = _lora_defaults(resolved.module, r=r, lora_alpha=lora_alpha, target_modules=target_modules,
                          use_rslora=use_rslora, lora_dropout=lora_dropout)
    settings = make_settings(mode=mode, batch_size=batch_size, seq_len=seq_len, **lora, dtype=dtype,
                             mixed_precision=mixed_precision, optim=optim,
                             gradient_checkpointing=gradient_checkpointing,
                             attn_implementation=attn_implementation, quant_type=quant_type,
                             double_quant=double_quant)
    if engine not in ENGINES:
        raise InvalidSettingError(f"engine must be one of {ENGINES}, got {engine!r}")
    if device not in ("cuda", "cpu"):
        raise InvalidSettingError(f"device must be 'cuda' or 'cpu', got {device!r}")
    gpu_spec = parse_gpu(gpu)
    compute = _engine(engine, device)
    result = compute(resolved, settings)
    return finish_plan(result, resolved, gpu_spec, lambda s: _analytic(resolved, s, device))


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


def make_settings(**kw: Any) -> PlanSettings:
    """Validate and normalize raw settings (collects every problem into one error)."""
    problems: list[str] = []
    mode = kw["mode"]
    if mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name in ("batch_size", "seq_len", "r"):
        value = kw[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    dropout = kw.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        problems.append(f"lora_dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(kw["lora_alpha"], (int, float)) or kw["lora_alpha"] <= 0:
        problems.append(f"lora_alpha must be positive, got {kw['lora_alpha']!r}")
    dtype = DTYPE_ALIASES.get(str(kw["dtype"]).lower(), str(kw["dtype"]).lower())
    if dtype not in DTYPE_BYTES:
        problems.append(f"dtype must be one of fp32, bf16, fp16, got {kw['dtype']!r}")
    mp = kw["mixed_precision"]
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
    )


def _engine(engine: str, device: str) -> Callable[[ResolvedModel, PlanSettings], MemoryPlan]:
    if engine == "trace":
        from .trace import trace_plan  # optional engine; imports torch

        return lambda resolved, settings: trace_plan(resolved, settings, device=device)
    return lambda resolved, settings: _analytic(resolved, settings, device)


def _analytic(resolved: ResolvedModel, s: PlanSettings, device: str = "cuda") -> MemoryPlan:
    totals = step_peak(resolved.arch, s, device=device)
    peak = sum(totals.breakdown.values())
    overhead = device_terms(peak, totals.loss_bytes)
    breakdown = dict(totals.breakdown, **overhead)
    scale = None
    if s.mode != "full":
        scale = s.lora_alpha / (s.r ** 0.5 if s.use_rslora else s.r)
    notes = list(totals.notes)
    recipe = RECIPES.get(resolved.arch.block, RECIPES["generic"])
    if s.attn_implementation == "sdpa" and not recipe.sdpa:
        notes.append(f"{resolved.arch.model_type} has no SDPA attention in transformers: planned with eager "
                     "attention (heads x seq x seq scores per layer); flash_attention_2 on a GPU avoids that")
    max_pos = resolved.arch.max_positions
    if max_pos and s.seq_len > max_pos:
        notes.append(f"seq_len {s.seq_len} exceeds the model's max_position_embeddings ({max_pos})")
    return MemoryPlan(
        model=resolved.name, settings=s, breakdown=breakdown, peak_bytes=int(peak),
        device_peak_bytes=int(peak + sum(overhead.values())), total_params=resolved.arch.total_params,
        trainable_params=totals.trainable_params, engine="analytic", peak_phase=totals.phase,
        lora_scale=scale, targets=list(totals.targets), notes=notes,
        details={"phases": totals.phases},
    )


def finish_plan(result: MemoryPlan, resolved: ResolvedModel, gpu: GpuSpec | None,
                analytic: Callable[[PlanSettings], MemoryPlan]) -> MemoryPlan:
    """Add the GPU verdict, the max batch / sequence search and the recommendation to an engine result."""
    result.gpu = gpu
    if gpu is None:
        result.recommendation = _recommend_without_gpu(result)
        return result
    capacity = gpu.memory_bytes
    result.headroom_bytes = capacity - result.device_peak_bytes
    result.fits = result.headroom_bytes >= 0
    s = result.settings
    result.max_batch_size = _largest(lambda b: analytic(replace(s, batch_size=b)).device_peak_bytes <= capacity)
    max_pos = resolved.arch.max_positions
    limit = max_pos or _MAX_SEARCH
    result.max_seq_len = _largest(lambda n: analytic(replace(s, seq_len=n)).device_peak_bytes <= capacity,
                                  limit=limit)
    if max_pos and result.max_seq_len == limit:
        result.notes.append(f"max seq len is capped at the model's max_position_embeddings ({limit}); more would fit")
    if s.mode != "fp32" and s.dtype == "bf16" and not gpu.bf16:
        result.notes.append(f"{gpu.name} has no bf16 support: load in fp16 (with fp16 mixed precision) or fp32")
    result.recommendation = recommend(result, analytic)
    return result


def _largest(fits: Callable[[int], bool], limit: int = _MAX_SEARCH) -> int:
    """Largest n in [1, limit] with fits(n) (fits is monotone); 0 when even 1 does not fit."""
    if not fits(1):
        return 0
    if fits(limit):
        return limit
    lo, hi = 1, 2
    while hi < limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# Levers in the order we suggest them: cheapest in quality and speed first.
_LEVERS: tuple[Callable[[PlanSettings], PlanSettings | None], ...] = (
    lambda s: None if s.gradient_checkpointing else replace(s, gradient_checkpointing=True),
    lambda s: replace(s, mode="lora") if s.mode == "full" else None,
    lambda s: replace(s, mode="qlora") if s.mode == "lora" else None,
    lambda s: replace(s, optim="adamw_bnb_8bit") if s.mode == "full" and s.optim.startswith("adamw_torch") else None,
    lambda s: replace(s, batch_size=micro_batch_sizes(s.batch_size)[0]) if s.batch_size > 1 else None,
)


def micro_batch_sizes(n: int) -> list[int]:
    """Micro-batches that keep ``n`` as the effective batch with gradient accumulation, largest first
    (the proper divisors of n)."""
    return [d for d in range(n // 2, 0, -1) if n % d == 0]


_MODE_CHANGE = {"lora": "use LoRA instead of full fine-tuning (--mode lora)",
                "qlora": "load the base in 4-bit (--mode qlora)"}


def describe_changes(before: PlanSettings, after: PlanSettings) -> str:
    """What differs between two settings, as the CLI flags a user would change."""
    parts = []
    if after.gradient_checkpointing and not before.gradient_checkpointing:
        parts.append("enable gradient checkpointing (--gradient-checkpointing)")
    if after.mode != before.mode:
        parts.append(_MODE_CHANGE[after.mode] if after.mode != "qlora" or before.mode == "lora"
                     else f"{_MODE_CHANGE['lora']} with a 4-bit base (--mode qlora)")
    if after.optim != before.optim:
        parts.append(f"use an 8-bit optimizer (--optim {after.optim})")
    if after.batch_size < before.batch_size:
        parts.append(f"micro-batch {after.batch_size} with {before.batch_size // after.batch_size}x gradient "
                     f"accumulation (--batch-size {after.batch_size})")
    return " + ".join(parts)


def recommend(result: MemoryPlan, analytic: Callable[[PlanSettings], MemoryPlan]) -> str:
    gpu = result.gpu
    assert gpu is not None
    if result.fits:
        more = ""
        if result.max_batch_size and result.max_batch_size > result.settings.batch_size:
            more = f"; micro-batch up to {result.max_batch_size} fits at seq_len {result.settings.seq_len}"
        return f"Fits on {gpu.name} with {format_bytes(result.headroom_bytes)} to spare{more}."
    short = format_bytes(-result.headroom_bytes)
    biggest = result.largest_term.replace("_", " ")
    head = f"Does not fit on {gpu.name} (short by {short}; largest term: {biggest})."
    original = result.settings
    for lever in _LEVERS:  # one lever alone, in order of preference
        changed = lever(original)
        if changed is not None and (trial := analytic(changed)).device_peak_bytes <= gpu.memory_bytes:
            return f"{head} To fit: {describe_changes(original, changed)} -> {format_bytes(trial.device_peak_bytes)}."
    s = original
    while True:  # otherwise stack them
        s_next = next((c for lever in _LEVERS if (c := lever(s)) is not None), None)
        if s_next is None:
            break
        s = s_next
        trial = analytic(s)
        if trial.device_peak_bytes <= gpu.memory_bytes:
            return f"{head} To fit: {describe_changes(original, s)} -> {format_bytes(trial.device_peak_bytes)}."
    return (f"{head} Nothing fits even with {describe_changes(original, s) or 'the usual levers'}: "
            "use a larger GPU or shorter sequences.")


def _recommend_without_gpu(result: MemoryPlan) -> str:
    return (f"Peak {format_bytes(result.device_peak_bytes)} on the device; the largest term is "
            f"{result.largest_term.replace('_', ' ')}. Pass --gpu to get a verdict.")
