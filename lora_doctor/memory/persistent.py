"""Memory that lives for the whole run: weights, quantization state, adapters, gradients, optimizer.

Formulas (bytes; P = parameters, b(dtype) = bytes per element):

* weights, full / LoRA: ``P_total * b(load dtype)``.
* weights, QLoRA: the linear layers bitsandbytes converts (``LinearFamily.quantizable``: exact
  nn.Linear / Conv1D, not the output head) as NF4: ``P_q * 0.5``; everything else (embeddings, head,
  norms, biases, 3-D MoE experts, nn.Linear subclasses such as Falcon's FalconLinear) in fp32,
  because ``peft.prepare_model_for_kbit_training`` upcasts every non-quantized fp16/bf16 parameter.
* quantization state: one fp32 absmax per 64 weights (``P_q / 16`` bytes), or with double
  quantization a uint8 absmax per 64 plus an fp32 absmax per 256 of those (about ``P_q / 62``).
* adapters: ``r * (in + out)`` per wrapped linear, fp32 (peft's ``autocast_adapter_dtype=True``).
* gradients: one per trainable parameter in its own dtype.
* optimizer states: ``states * trainable * bytes`` (torch keeps AdamW states in the parameter dtype;
  bitsandbytes 8-bit states are 1 byte + a block absmax; paged states are not on the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import ArchSpec, LinearFamily
from .tables import (
    ABSMAX_DOUBLE_QUANT_BYTES, ABSMAX_FP32_BYTES, DTYPE_BYTES, NF4_PACKED_BYTES, OPTIMIZERS,
)


@dataclass(frozen=True)
class Persistent:
    weights: int
    quantization_state: int
    adapters: int
    gradients: int            # all gradients, at the end of backward
    optimizer_states: int     # on the device (paged optimizers: 0)
    optimizer_scratch: int    # temporaries inside optimizer.step()
    trainable_params: int
    adapter_params: int
    head_gradient: int        # the first gradient backward creates (output head), full fine-tuning
    largest_linear_params: int
    quantized_params: int
    notes: tuple[str, ...] = ()
    largest_quantized_params: int = 0   # the one 4-bit weight dequantized at a time (QLoRA); not the head


def lora_params(families: list[LinearFamily], r: int) -> int:
    return sum(r * (f.in_features + f.out_features) * f.count for f in families)


def quantized_families(arch: ArchSpec) -> list[LinearFamily]:
    """The linear families a 4-bit load really quantizes: bitsandbytes' classes, the output head kept."""
    return [f for f in arch.linear_families if f.scope != "head" and f.quantizable]


def unquantized_notes(arch: ArchSpec) -> list[str]:
    """Why QLoRA leaves weights beyond the embeddings, head and norms unquantized (fused experts, subclasses)."""
    notes = []
    subclassed = [f for f in arch.linear_families if f.scope != "head" and not f.quantizable]
    if subclassed:
        classes = sorted({f.module_class or "an nn.Linear subclass" for f in subclassed})
        params = sum(f.weight_params for f in subclassed)
        notes.append(f"QLoRA: {', '.join(classes)} ({params / 1e6:,.0f}M weights in "
                     f"{', '.join(sorted({f.name for f in subclassed}))}) stay unquantized: transformers' bitsandbytes "
                     "integration converts only exact nn.Linear and Conv1D, not subclasses of nn.Linear")
    if arch.expert_params:
        notes.append("MoE experts stored as 3-D parameters are not quantized by bitsandbytes (only nn.Linear is)")
    return notes


def persistent_terms(arch: ArchSpec, *, mode: str, dtype: str, targeted: list[LinearFamily], r: int,
                     optim: str, double_quant: bool, device: str = "cuda", extra_adapter_params: int = 0) -> Persistent:
    """``extra_adapter_params``: adapter parameters beyond the linear families (peft's LoRA on fused
    MoE expert parameters), from the trace-derived terms of :mod:`.layer_terms`."""
    load = DTYPE_BYTES[dtype]
    notes: list[str] = []
    quantizable = quantized_families(arch)
    q_weight = sum(f.weight_params for f in quantizable)
    largest = max((f.in_features * f.out_features for f in arch.linear_families), default=0)
    if mode == "qlora":
        rest = arch.total_params - q_weight
        weights = int(q_weight * NF4_PACKED_BYTES + rest * 4)
        qstate = int(q_weight * (ABSMAX_DOUBLE_QUANT_BYTES if double_quant else ABSMAX_FP32_BYTES))
        if load != 4:
            notes.append(f"QLoRA: {rest / 1e6:,.0f}M non-quantized parameters (embeddings, head, norms"
                         f"{', MoE experts' if arch.expert_params else ''}"
                         f"{', nn.Linear subclasses' if any(not f.quantizable for f in arch.linear_families) else ''}"
                         ") are upcast to fp32 by "
                         "prepare_model_for_kbit_training")
        notes += unquantized_notes(arch)
    else:
        weights, qstate, q_weight = arch.total_params * load, 0, 0
    # buffers keep their own dtypes (fp32 rope tables, bool masks); those made in the default dtype take the load's
    weights += arch.buffer_bytes + arch.load_dtype_buffer_params * (load - 4)

    adapter_params = lora_params(targeted, r) + extra_adapter_params if mode != "full" else 0
    adapters = adapter_params * 4
    if mode == "full":
        trainable, grad_bytes = arch.total_params, load
        head = arch.head_params if not arch.tied_embeddings else arch.embedding_params
        head_grad = head * load
    else:
        trainable, grad_bytes, head_grad = adapter_params, 4, 0
    gradients = trainable * grad_bytes

    spec = OPTIMIZERS[optim]
    state_bytes = spec.state_bytes if spec.state_bytes is not None else grad_bytes
    states = int(spec.states * trainable * state_bytes)
    if spec.paged:
        notes.append(f"{optim}: optimizer states ({states / 2**30:.2f} GiB) are paged to CPU under memory pressure; "
                     "not counted on the GPU")
        states = 0
    if device == "cpu":  # torch's CPU AdamW loops over parameters: scratch is one parameter at a time
        biggest = max(largest, arch.embedding_params if mode == "full" else 0) if mode == "full" else \
            max((r * max(f.in_features, f.out_features) for f in targeted), default=0)
        scratch = int(spec.scratch_copies * biggest * state_bytes)
    else:
        scratch = int(spec.scratch_copies * trainable * state_bytes)
    return Persistent(int(weights), qstate, adapters, int(gradients), states, scratch, int(trainable),
                      adapter_params, int(head_grad), largest, q_weight, tuple(notes),
                      max((f.in_features * f.out_features for f in quantizable), default=0) if mode == "qlora" else 0)
