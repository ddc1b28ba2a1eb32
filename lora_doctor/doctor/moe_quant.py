"""QLoRA on a Mixture-of-Experts model: which weights bitsandbytes really quantizes (pure).

bitsandbytes (through transformers' quantizer) replaces ``nn.Linear`` layers only. transformers 5
stores MoE experts as fused 3-D parameters (``mlp.experts.gate_up_proj`` [experts, 2*inter, hidden],
``mlp.experts.down_proj``), which are no ``nn.Linear``: they load in the model dtype, and
``prepare_model_for_kbit_training`` then upcasts them to fp32. Verified on CPU with a tiny Mixtral
(4-bit: only q/k/v/o_proj, experts bf16) and a tiny Qwen3-MoE (same), bitsandbytes 0.50,
transformers 5.24 (``docs/memory-model.md``).
"""

from __future__ import annotations

from math import prod

from ..findings import Finding
from .inventory import LINEAR_KINDS, ModuleInventory
from .registry import finding
from .settings import QuantSettings

MOSTLY = 0.5   # warn when the experts are more than half of the weights


def check_moe_quantization(q: QuantSettings, inv: ModuleInventory) -> list[Finding]:
    if q.bits is None or not inv.expert_params:
        return []
    experts = sum(prod(shape) for _, shape in inv.expert_params)
    linear = sum(m.in_features * m.out_features for m in inv.modules
                 if m.kind in LINEAR_KINDS and m.scope not in ("head", "embedding"))
    share = experts / max(experts + linear, 1)
    if share <= MOSTLY:
        return []
    names = sorted({".".join(n.split(".")[-3:]) for n, _ in inv.expert_params})
    return [finding(
        "qlora-moe-experts-unquantized",
        f"{q.bits}-bit quantization reaches only nn.Linear layers, but {share:.0%} of this MoE's linear weights "
        f"({experts / 1e6:,.1f}M parameters in {names}) are fused 3-D expert parameters: they stay in the load "
        "dtype, and prepare_model_for_kbit_training upcasts them to fp32 (4 bytes each instead of ~0.53).",
        "Plan the memory with them unquantized (lora-doctor plan --mode qlora does), or load the model in bf16 "
        "with plain LoRA (--mode lora), which keeps the experts in bf16 (2 bytes each); to shrink the experts "
        "themselves use a checkpoint with quantized experts (e.g. a pre-quantized MXFP4/FP8 release).",
        expert_params=experts, quantized_params=linear, share=round(share, 3), parameters=names,
    )]
