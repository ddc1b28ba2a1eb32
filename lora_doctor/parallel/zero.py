"""DeepSpeed ZeRO stages 1-3: which model states each rank keeps, and the buckets it adds.

DeepSpeed (``deepspeed/runtime/zero/stage_1_and_2.py``, ``stage3.py``, 0.19) trains with 16-bit
parameters and gradients (h = 2 bytes with ``bf16``/``fp16`` enabled, as the Trainer sets them for
``bf16=True``) and keeps fp32 master weights next to the optimizer states; unlike a plain Trainer run
of a model loaded in bf16, which trains pure bf16. Per GPU, P trainable parameters, N ranks, K bytes
of optimizer state (AdamW: 8) plus 4 for the masters, as DeepSpeed's
``estimate_zero2/3_model_states_mem_needs`` count them (their "18" = 2 + 4 + 4 + 8):

* stage 1: ``hP`` params + ``hP`` grads + ``(4 + 4 + K)P/N`` (fp32 grads, masters, states);
* stage 2: ``hP`` params + ``(h + 4 + 4 + K)P/N``;
* stage 3: ``(h + 4 + 4 + K)P/N`` + the gathered layer's params and grads (``2hL``, L = its params).

Frozen parameters (a LoRA base) are replicated by stages 1-2 and partitioned by stage 3. Buckets:
``reduce_bucket_size`` elements of the reduction dtype (fp32 for stage 1, h for 2-3), twice with
``overlap_comm`` (on by default for stage 3 only); stage 3 also prefetches
``stage3_prefetch_bucket_size`` parameters and keeps those below
``stage3_param_persistence_threshold`` elements whole on every rank. Missing keys take DeepSpeed's
defaults; ``"auto"`` takes what ``transformers.integrations.deepspeed`` fills in from hidden_size.
Offload: ``"optimizer"`` moves fp32 grads, masters and states to the host; ``"all"`` (stage 3)
also the 16-bit parameter partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..memory.tables import NF4_PACKED_BYTES, OPTIMIZERS
from ..units import format_bytes
from .context import Context, replace_terms
from .result import PerGpu

# deepspeed/runtime/zero/config.py defaults (elements).
ZERO_DEFAULTS = {"reduce_bucket_size": 500_000_000, "allgather_bucket_size": 500_000_000,
                 "stage3_prefetch_bucket_size": 50_000_000, "stage3_param_persistence_threshold": 100_000,
                 "stage3_max_live_parameters": 1_000_000_000}


def auto_values(hidden_size: int) -> dict[str, int]:
    """What the Trainer's HfDeepSpeedConfig fills in for ``"auto"`` (transformers/integrations/deepspeed.py)."""
    return {"reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size}


@dataclass(frozen=True)
class ZeroStates:
    """Model states per GPU in bytes, split the way DeepSpeed's estimators count them."""

    params16: int        # 16-bit (or fp32 without mixed precision) parameters kept on the GPU
    grads16: int         # 16-bit gradients kept on the GPU (full for stage 1, a partition for stage 2)
    fp32_grads: int      # fp32 gradient partition the optimizer steps on
    masters: int         # fp32 master partition
    states: int          # optimizer state partition
    gathered: int        # stage 3: the gathered layer's 16-bit params and grads
    host: int            # offloaded to CPU RAM, per rank

    @property
    def gpu(self) -> int:
        return self.params16 + self.grads16 + self.fp32_grads + self.masters + self.states + self.gathered


def zero_model_states(trainable: int, n: int, stage: int, *, frozen_bytes: int = 0, largest_layer: int = 0,
                      offload: str | None = None, h: int = 2, state_bytes: float = 8.0) -> ZeroStates:
    """Per-GPU model states of ZeRO ``stage`` (1-3) for ``trainable`` parameters on ``n`` ranks."""
    master = 4 if h < 4 else 0
    fp32_grads = 4 if h < 4 else 0
    p_n = trainable / n
    params16 = trainable * h + frozen_bytes if stage < 3 else (trainable * h + frozen_bytes) / n
    grads16 = {1: trainable * h, 2: p_n * h, 3: 0}[stage]
    gathered = 2 * h * largest_layer if stage == 3 else 0
    host = 0
    optimizer_side = p_n * (fp32_grads + master + state_bytes)
    if offload in ("optimizer", "all"):
        host += optimizer_side
        optimizer_side = 0
        if stage == 2:
            grads16 = 0          # reduced gradients are copied straight into the host buffers
    if offload == "all":
        host += params16
        params16 = 0
    f, m, s = (0, 0, 0) if not optimizer_side else (p_n * fp32_grads, p_n * master, p_n * state_bytes)
    return ZeroStates(int(params16), int(grads16), int(f), int(m), int(s), int(gathered), int(host))


def zero(ctx: Context) -> PerGpu:
    p, n, arch, s = ctx.pers, ctx.n, ctx.arch, ctx.s
    stage = int(s.parallel.strategy[-1])
    h = 4 if ctx.load_bytes == 4 and s.mixed_precision is None else 2
    spec = OPTIMIZERS[s.optim]
    state_bytes = spec.states * (spec.state_bytes or 4)
    frozen = _frozen_bytes(ctx, h)
    trainable_layer = ctx.layer_params if ctx.full else 0
    states = zero_model_states(p.trainable_params, n, stage, frozen_bytes=frozen, largest_layer=trainable_layer,
                               offload=s.parallel.offload, h=h, state_bytes=state_bytes)
    opt = dict(_options(ctx))
    reduce_dtype = 4 if stage == 1 else h
    overlap = bool(opt.get("overlap_comm", stage == 3))
    reduce_buffers = int(opt["reduce_bucket_size"]) * reduce_dtype * (2 if overlap else 1)
    gathered_layer = 0
    persistent = 0
    if stage == 3:   # frozen base layers are gathered too (params only, no grads)
        frozen_layer = frozen * ctx.layer_params / max(arch.total_params, 1)
        live = min(int(opt["stage3_max_live_parameters"]), ctx.layer_params + int(opt["stage3_prefetch_bucket_size"]))
        gathered_layer = int(live * h) if ctx.full else int(2 * frozen_layer)   # current + prefetched
        if arch.hidden_size < int(opt["stage3_param_persistence_threshold"]):
            persistent = arch.other_params * h   # norms stay whole on every rank
    scratch = spec.scratch_copies * p.trainable_params * 4 / n if ctx.device == "cuda" else p.optimizer_scratch / n
    if s.parallel.offload:
        scratch = 0
    on_gpu_masters = states.masters + states.states
    phases = {}
    for phase, bd in ctx.phases.items():
        grads = states.grads16 + (states.fp32_grads if phase == "optimizer_step" else 0)
        grads += states.gathered // 2 if phase == "backward_end" else 0   # the gathered layer's 16-bit grads
        buffers = 0 if phase == "optimizer_step" else reduce_buffers * (phase == "backward_end")
        buffers += (gathered_layer + persistent) if phase != "optimizer_step" else persistent
        phases[phase] = replace_terms(bd, phase, ctx, weights=states.params16, quantization_state=_qstate(ctx, stage),
                                      adapters=0, gradients=grads, optimizer_states=on_gpu_masters,
                                      scratch=scratch, buffers=buffers)
    notes = [f"ZeRO-{stage} on {n} GPUs: {'16-bit' if h == 2 else 'fp32'} parameters"
             + (" with fp32 master weights (DeepSpeed keeps them; a plain bf16 Trainer run does not)" if h == 2 else "")
             + f"; reduce buckets {format_bytes(reduce_buffers)} (reduce_bucket_size {int(opt['reduce_bucket_size']):,}"
             + (", overlap_comm" if overlap else "") + ")"]
    if not ctx.full:
        notes.append("LoRA under ZeRO: adapters are trained in 16-bit with fp32 masters; the frozen base is "
                     + ("partitioned (stage 3)" if stage == 3 else "replicated on every GPU (stages 1-2)"))
    host = states.host if s.parallel.offload else None
    if host is not None:
        notes.append(f"ZeRO-Offload ({s.parallel.offload}): {format_bytes(host)} per rank in pinned CPU RAM")
    return PerGpu(phases, host, tuple(notes))


def _frozen_bytes(ctx: Context, h: int) -> int:
    """The frozen base as DeepSpeed holds it: cast to 16-bit with bf16/fp16 (4-bit weights stay packed)."""
    if ctx.full:
        return 0
    p = ctx.pers
    if ctx.s.mode == "qlora":
        packed = p.quantized_params * NF4_PACKED_BYTES
        return int(packed + (p.weights - packed) * h / 4)
    return int(p.weights * h / ctx.load_bytes)


def _qstate(ctx: Context, stage: int) -> int:
    return ctx.pers.quantization_state // (ctx.n if stage == 3 else 1)


def _options(ctx: Context) -> dict[str, int]:
    out = dict(ZERO_DEFAULTS)
    auto = auto_values(ctx.arch.hidden_size)
    for key, value in ctx.par.options:
        out[key] = auto.get(key, ZERO_DEFAULTS.get(key)) if value == "auto" else value
    return out
