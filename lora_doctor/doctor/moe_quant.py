"""QLoRA weights that bitsandbytes does not quantize: fused MoE experts and nn.Linear subclasses (pure).

transformers' bitsandbytes integration (``replace_with_bnb_linear``) converts a layer only when
``isinstance(module, Conv1D) or type(module) is nn.Linear``. Two kinds of weights escape it, load in
the model dtype, and are then upcast to fp32 by ``prepare_model_for_kbit_training``:

* MoE experts that transformers 5 stores as fused 3-D parameters (``mlp.experts.gate_up_proj``
  [experts, 2*inter, hidden], ``mlp.experts.down_proj``): no module at all. Verified on CPU with a tiny
  Mixtral and a tiny Qwen3-MoE (4-bit: only q/k/v/o_proj, experts bf16);
* subclasses of nn.Linear: Falcon's ``FalconLinear`` (every linear of the model but the head, so a
  Falcon "QLoRA" has no 4-bit weight at all), Llama-4's and PhiMoE's routers, DeepSeek-V4's grouped
  output projection. Verified on CPU with a tiny Falcon.

Both checked with bitsandbytes 0.50, transformers 5.24 (``docs/memory-model.md``). The planner models the
same rule (``LinearFamily.quantizable``); this check warns when the share left out is large.
"""

from __future__ import annotations

from math import prod

from ..findings import Finding
from .inventory import LINEAR_KINDS, ModuleInventory
from .registry import finding
from .settings import QuantSettings

LARGE_SHARE = 0.25   # warn when more than a quarter of the weights stay unquantized (4 bytes each vs ~0.53)


def check_moe_quantization(q: QuantSettings, inv: ModuleInventory) -> list[Finding]:
    """One finding when a 4-/8-bit load leaves a large share of the linear and expert weights unquantized."""
    if q.bits is None:
        return []
    experts = sum(prod(shape) for _, shape in inv.expert_params)
    linears = [m for m in inv.modules if m.kind in LINEAR_KINDS and m.scope not in ("head", "embedding")]
    skipped = [m for m in linears if not m.bnb_converts]
    subclass = sum(m.in_features * m.out_features for m in skipped)
    converted = sum(m.in_features * m.out_features for m in linears) - subclass
    share = (experts + subclass) / max(experts + subclass + converted, 1)
    if share <= LARGE_SHARE:
        return []
    causes, names = [], []
    if experts:
        expert_names = sorted({".".join(n.split(".")[-3:]) for n, _ in inv.expert_params})
        names += expert_names
        causes.append(f"{experts / 1e6:,.1f}M parameters in {expert_names} are fused 3-D MoE expert parameters, "
                      "no nn.Linear at all")
    classes = sorted({m.type_name for m in skipped})
    if skipped:
        layer_names = sorted({m.name.rsplit(".", 1)[-1] for m in skipped})
        names += layer_names
        causes.append(f"{subclass / 1e6:,.1f}M parameters in {layer_names} are {'/'.join(classes)} layers: "
                      f"{'/'.join(classes)} {'is a subclass' if len(classes) == 1 else 'are subclasses'} of nn.Linear, "
                      "and transformers' bitsandbytes integration only converts exact nn.Linear (and Conv1D)")
    fix = ("Plan the memory with them unquantized (lora-doctor plan --mode qlora does), or load the model in bf16 "
           "with plain LoRA (--mode lora), which keeps them in bf16 (2 bytes each)")
    fix += ("; to shrink the experts themselves use a checkpoint with quantized experts (e.g. a pre-quantized "
            "MXFP4/FP8 release)." if experts else
            "; QLoRA's 4-bit saving does not reach these layers, so it buys little on this model.")
    return [finding(
        "qlora-moe-experts-unquantized" if experts else "qlora-weights-unquantized",
        f"{q.bits}-bit quantization leaves {share:.0%} of this model's linear weights unquantized: "
        f"{'; '.join(causes)}. They stay in the load dtype, and prepare_model_for_kbit_training upcasts them to "
        "fp32 (4 bytes each instead of ~0.53).",
        fix, expert_params=experts, subclass_params=subclass, subclass_classes=classes, quantized_params=converted,
        share=round(share, 3), parameters=names,
    )]
