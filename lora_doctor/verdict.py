"""The layer above the engines: a fit verdict, the largest batch / sequence that fit, and what to change.

Engines (:mod:`lora_doctor.memory.engine`, :mod:`lora_doctor.trace`) return a
:class:`~lora_doctor.MemoryPlan` without a verdict; :func:`finish_plan` adds one, re-planning with the
analytic engine for the searches and the levers. Nothing here imports an engine's caller.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .gpus import GpuSpec
from .models import ResolvedModel
from .plan_types import MemoryPlan, PlanSettings
from .units import format_bytes

_MAX_SEARCH = 1 << 20


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
    max_pos = max_pos if max_pos and max_pos > 0 else None
    image_tokens = result.details.get("inputs", {}).get("lm_seq_len", s.seq_len) - s.seq_len   # multimodal
    limit = max(max_pos - image_tokens, 1) if max_pos else _MAX_SEARCH
    result.max_seq_len = _largest(lambda n: analytic(replace(s, seq_len=n)).device_peak_bytes <= capacity,
                                  limit=limit)
    if max_pos and result.max_seq_len == limit:
        result.notes.append(f"max seq len is capped at the model's max_position_embeddings ({max_pos}"
                            f"{f' minus {image_tokens} image tokens' if image_tokens else ''}); more would fit")
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


def _parallel(s: PlanSettings, **changes: object) -> PlanSettings:
    return replace(s, parallel=replace(s.parallel, **changes))


# Levers in the order we suggest them: cheapest in quality and speed first. Sharding (on the GPUs the
# run already has) keeps the quality of the run, so it comes before LoRA / 4-bit.
_LEVERS: tuple[Callable[[PlanSettings], PlanSettings | None], ...] = (
    lambda s: None if s.gradient_checkpointing else replace(s, gradient_checkpointing=True),
    lambda s: _parallel(s, strategy="zero3") if s.parallel.num_gpus > 1 and s.parallel.strategy in (
        "ddp", "zero1", "zero2", "fsdp_grad_op") else None,
    lambda s: _parallel(s, strategy="zero3", offload="optimizer") if s.parallel.num_gpus > 1 and not s.parallel.offload
    and s.parallel.strategy in ("zero3", "fsdp") else None,
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
    if after.parallel != before.parallel:
        parts.append(_describe_parallel(after, before.parallel.num_gpus != after.parallel.num_gpus))
    if after.optim != before.optim:
        parts.append(f"use an 8-bit optimizer (--optim {after.optim})")
    if after.batch_size < before.batch_size:
        parts.append(f"micro-batch {after.batch_size} with {before.batch_size // after.batch_size}x gradient "
                     f"accumulation (--batch-size {after.batch_size})")
    return " + ".join(parts)


def _describe_parallel(s: PlanSettings, count: bool) -> str:
    p = s.parallel
    flags = f"--strategy {p.strategy}" + (f" --offload {p.offload}" if p.offload else "")
    where = f"{p.num_gpus} GPUs with " if count else ""
    return f"{where}{p.strategy}{' + offload ' + p.offload if p.offload else ''} ({flags})"


def recommend(result: MemoryPlan, analytic: Callable[[PlanSettings], MemoryPlan]) -> str:
    """What to change so the run fits; never raises (a lever that cannot be planned is skipped)."""

    def safe(s: PlanSettings) -> MemoryPlan | None:
        try:
            return analytic(s)
        except Exception:  # noqa: BLE001 - a lever that fails is only dropped, never an error for a valid plan
            return None

    text = _recommend(result, safe)
    if not result.fits:
        more = scale_out(result, safe)
        if more:
            text += " " + more
    return text


# Ways to spread the same run over more GPUs, fastest first: (strategy, offload).
SCALE_OUT: tuple[tuple[str, str | None], ...] = (
    ("zero2", None), ("fsdp", None), ("zero3", None), ("zero3", "optimizer"), ("zero3", "all"),
)
GPU_COUNTS = (2, 4, 8, 16, 32, 64, 128, 256)
LAUNCHABLE_GPUS = 64     # eight 8-GPU nodes
FASTER_AT_MOST = 8       # times the GPUs of the cheapest option


def scale_out(result: MemoryPlan, analytic: Callable[[PlanSettings], "MemoryPlan | None"]) -> str | None:
    """How many GPUs of this kind the unchanged run needs, with which strategy and offload."""
    gpu = result.gpu
    assert gpu is not None
    options: list[tuple[int, str, MemoryPlan]] = []
    for strategy, offload in SCALE_OUT:
        for n in (c for c in GPU_COUNTS if c >= result.settings.parallel.num_gpus):
            s = _parallel(result.settings, num_gpus=n, strategy=strategy, offload=offload)
            trial = analytic(s)
            if trial is not None and trial.device_peak_bytes <= gpu.memory_bytes:
                options.append((n, _describe_parallel(s, False), trial))
                break
    if not options:
        return None
    # a faster strategy is worth naming only at a GPU count people launch for one run; past that, the
    # unsharded terms (activations, logits) are what is left, and the levers above are the real fix
    launchable = [o for o in options if o[0] <= LAUNCHABLE_GPUS]
    options = launchable or options[:1]
    fewest = min(n for n, _, _ in options)
    first = options[0]      # the fastest strategy that fits at all
    cheapest = next(o for o in options if o[0] == fewest)
    # the fastest strategy, unless it needs many times the GPUs of the cheapest one (offload costs
    # step time, not hardware): then the cheapest alone
    picks = [first] if first is cheapest else \
        [first, cheapest] if first[0] <= FASTER_AT_MOST * fewest else [cheapest]
    parts = []
    for n, how, trial in picks:
        host = f", {format_bytes(trial.host_peak_bytes)} CPU RAM per node" if trial.host_peak_bytes else ""
        parts.append(f"{n}x {gpu.name} with {how} -> {format_bytes(trial.device_peak_bytes)} per GPU{host}")
    return "Without changing the run: needs " + ", or ".join(parts) + "."


def _recommend(result: MemoryPlan, analytic: Callable[[PlanSettings], "MemoryPlan | None"]) -> str:
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
        if changed is not None and (trial := analytic(changed)) is not None \
                and trial.device_peak_bytes <= gpu.memory_bytes:
            return f"{head} To fit: {describe_changes(original, changed)} -> {format_bytes(trial.device_peak_bytes)}."
    s = original
    while True:  # otherwise stack them
        s_next = next((c for lever in _LEVERS if (c := lever(s)) is not None), None)
        if s_next is None:
            break
        s = s_next
        trial = analytic(s)
        if trial is not None and trial.device_peak_bytes <= gpu.memory_bytes:
            return f"{head} To fit: {describe_changes(original, s)} -> {format_bytes(trial.device_peak_bytes)}."
    return (f"{head} Nothing fits even with {describe_changes(original, s) or 'the usual levers'}: "
            "use a larger GPU or shorter sequences.")


def _recommend_without_gpu(result: MemoryPlan) -> str:
    return (f"Peak {format_bytes(result.device_peak_bytes)} on the device; the largest term is "
            f"{result.largest_term.replace('_', ' ')}. Pass --gpu to get a verdict.")
