"""FSDP (FSDP2 ``fully_shard`` semantics): every rank keeps 1/N of each parameter, gradient and state.

Per GPU, with N ranks (``torch.distributed.fsdp._fully_shard``):

* sharded: weights, quantization state, adapters, gradients and optimizer states, each / N;
* the root unit (embeddings, head, final norm: everything not in a wrapped decoder layer) stays
  all-gathered from the start of forward to the end of backward (``fully_shard`` resolves the
  root's ``reshard_after_forward`` to False);
* backward starts with the last layer already gathered (the root prefetches it); during backward,
  one decoder layer is all-gathered and the next one is prefetched
  (``_backward_prefetch``), and its unsharded gradients are copied into a flat reduce-scatter input
  (``foreach_reduce``): 2 gathered layers + 2 copies of one layer's gradients;
* ``fsdp_grad_op`` (SHARD_GRAD_OP, ``reshard_after_forward=False``) keeps every layer gathered
  between forward and backward: the whole model in the compute dtype at the start of backward.

Dtypes follow what accelerate does (``fsdp2_prepare_model``): with mixed precision the trainable
parameters are upcast to fp32 masters and gathered in the compute dtype; without it the run is
pure load dtype. QLoRA's 4-bit weights are sharded only with a floating ``bnb_4bit_quant_storage``
(accelerate leaves uint8 storage unsharded); option ``quant_storage`` (default ``"bf16"``, the
recipe for FSDP+QLoRA). CPU offload (``offload="all"``, ``CPUOffloadPolicy``) moves the sharded
parameters, gradients and the optimizer step to the host.
"""

from __future__ import annotations

from ..memory.tables import NF4_PACKED_BYTES, OPTIMIZERS
from ..units import format_bytes
from .context import Context, replace_terms
from .result import PerGpu


def fsdp(ctx: Context) -> PerGpu:
    p, n, arch = ctx.pers, ctx.n, ctx.arch
    upcast = ctx.full and ctx.s.mixed_precision is not None and ctx.load_bytes < 4
    trainable_bytes = 4 if upcast else (ctx.load_bytes if ctx.full else 4)
    weights = arch.total_params * 4 if upcast else p.weights
    gradients = p.trainable_params * trainable_bytes
    widen = 4 / ctx.load_bytes if upcast and OPTIMIZERS[ctx.s.optim].state_bytes is None else 1
    states, scratch = p.optimizer_states * widen, p.optimizer_scratch * widen   # states follow the param dtype
    notes = [f"{_label(ctx)}: weights, gradients and optimizer states split over {n} GPUs"]
    if upcast:
        notes.append("FSDP with mixed precision: accelerate upcasts the trainable parameters to fp32 (masters) "
                     "and gathers them in the compute dtype")

    replicated = 0   # 4-bit weights that stay whole on every rank (uint8 quant storage)
    if ctx.s.mode == "qlora" and str(ctx.option("quant_storage", "bf16")) == "uint8":
        replicated = int(p.quantized_params * NF4_PACKED_BYTES)
        notes.append("QLoRA with uint8 bnb_4bit_quant_storage: accelerate leaves the 4-bit weights unsharded; "
                     "set bnb_4bit_quant_storage=torch.bfloat16 to shard them")
    stored = weights + p.quantization_state + p.adapters
    gather_total = stored * (ctx.compute_bytes / 4) if upcast else stored
    total = max(arch.total_params, 1)
    unit = gather_total * ctx.layer_params / total
    root = gather_total * ctx.root_params / total
    layer_share = ctx.layer_params / total if ctx.full else 1 / max(arch.num_layers, 1)
    unit_grad = gradients * layer_share
    root_grad = gradients * ctx.root_params / total if ctx.full else 0
    grad_op = ctx.s.parallel.strategy == "fsdp_grad_op"
    # backward starts with the root's pre-backward prefetching the last layer (_backward_prefetch)
    forward_held = gather_total if grad_op else root + unit
    backward_held = (gather_total if grad_op else root + 2 * unit) + max(2 * unit_grad, 2 * root_grad)
    buffers = {"backward_start": forward_held, "backward_end": backward_held, "optimizer_step": 0}

    offload = ctx.s.parallel.offload == "all"
    sharded_weights = (weights - replicated) / n + replicated
    on_gpu = 0 if offload else 1
    phases = {}
    for phase, bd in ctx.phases.items():
        phases[phase] = replace_terms(
            bd, phase, ctx, weights=on_gpu * sharded_weights, quantization_state=on_gpu * p.quantization_state / n,
            adapters=on_gpu * p.adapters / n, gradients=on_gpu * gradients / n,
            optimizer_states=on_gpu * states / n, scratch=on_gpu * scratch / n,
            buffers=buffers.get(phase, forward_held))
    host = None
    if offload:
        host = int(sharded_weights + (p.quantization_state + p.adapters + gradients + states + scratch) / n)
        notes.append(f"FSDP CPU offload: {format_bytes(host)} of sharded parameters, gradients and optimizer "
                     "states per rank live in CPU RAM; the optimizer steps on the CPU")
    return PerGpu(phases, host, tuple(notes))


def _label(ctx: Context) -> str:
    return "FSDP SHARD_GRAD_OP" if ctx.s.parallel.strategy == "fsdp_grad_op" else "FSDP FULL_SHARD"
