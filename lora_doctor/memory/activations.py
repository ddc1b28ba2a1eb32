"""Activation memory: what autograd saves for backward, per token, derived op by op.

Rather than a fitted constant (Korthikanti et al.'s ``s*b*h*(34 + 5*a*s/h)`` assumes GPT-3 blocks
in fp16 with dropout), every term below names the op that saves it, for the blocks in use today:

* RMSNorm (Llama family): fp32 copy of its input + the fp32 rsqrt per token; plus the normalized
  output in the stream dtype when the norm weight trains. LayerNorm: input + fp32 mean and rstd.
* A linear layer saves its input only for its own weight gradient: always in full fine-tuning;
  never for a frozen layer. A LoRA-wrapped layer saves the input cast to the adapter dtype (fp32)
  for ``lora_A``, and the r-wide output of ``lora_A`` for ``lora_B``.
* SDPA (flash / memory-efficient kernels) saves q, k, v, the output and an fp32 log-sum-exp per head;
  eager attention also keeps the fp32 softmax and its cast copy: ``heads x seq`` per token, the
  quadratic term. GQA keys/values are saved at kv-head width with SDPA, repeated to full width by eager.
* Gated MLP (SwiGLU/GeGLU): gate and up outputs and the activation output (3 x intermediate);
  plain MLP: the first projection output (1 x intermediate); a dropout keeps its mask (1 byte from
  CUDA's fused kernel, the input's dtype on the CPU).

Validated against live-storage measurements of real Trainer steps (benchmarks/accuracy.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import ArchSpec, LinearFamily


@dataclass(frozen=True)
class Recipe:
    """Per-architecture block facts the formulas need beyond the linear families."""

    norm: str = "rms"             # "rms" | "layer"
    norms_per_layer: int = 2
    mlp: str = "gated"            # "gated" | "plain"
    dropout_sites: tuple[str, ...] = ()   # config keys of hidden dropouts applied per layer
    sdpa: bool = True             # supports attn_implementation="sdpa"
    attn_extra_copies: float = 0  # extra hidden-width tensors SDPA keeps (GPT-2: contiguous k, v
                                  # copies while q's view keeps the fused c_attn output alive)


RECIPES: dict[str, Recipe] = {
    "llama": Recipe(),
    "phi3": Recipe(dropout_sites=("resid_pdrop", "resid_pdrop")),
    "gemma": Recipe(norms_per_layer=4, sdpa=False),  # transformers 5 Gemma-2 has no SDPA path: eager
    "moe": Recipe(),
    "gpt2": Recipe(norm="layer", mlp="plain", dropout_sites=("resid_pdrop", "resid_pdrop"), attn_extra_copies=2),
    "opt": Recipe(norm="layer", mlp="plain", dropout_sites=("dropout", "dropout")),
    "bloom": Recipe(norm="layer", mlp="plain", dropout_sites=("hidden_dropout", "hidden_dropout"), sdpa=False),
    "falcon": Recipe(norm="layer", norms_per_layer=1, mlp="plain"),
    "bert": Recipe(norm="layer", mlp="plain", dropout_sites=("hidden_dropout_prob", "hidden_dropout_prob")),
    "generic": Recipe(),
    # Qwen2-VL / Qwen2.5-VL vision blocks: one fused qkv linear, then 2-D rotary on q and k. SDPA saves the
    # rotated q and k (new tensors) and v, a view that keeps the whole fused qkv output alive: its q and k
    # parts are two hidden-width tensors more than separate projections keep.
    "qwen_vit": Recipe(norm="layer", mlp="plain", attn_extra_copies=2),
    "qwen_vit_gated": Recipe(attn_extra_copies=2),
}

# Tensors of intermediate width an activation saves: gelu_new / gelu_fast are composed in Python
# (x, tanh(...), 0.5*x and 1+tanh(...) are each kept); quick_gelu (CLIP, Qwen2-VL's vision) is
# x * sigmoid(1.702 x): x and the sigmoid's output; fused kernels keep their input only.
ACTIVATION_SAVES: dict[str, int] = {"gelu_new": 4, "gelu_fast": 4, "gelu_pytorch_tanh": 1, "gelu": 1,
                                    "quick_gelu": 2, "relu": 1, "silu": 1, "swish": 1}

# Projections that read the same input tensor (saved once in full fine-tuning).
SHARED_INPUT_GROUPS: dict[str, str] = {
    "q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in",
    "query": "attn_in", "key": "attn_in", "value": "attn_in",
    "gate_proj": "mlp_in", "up_proj": "mlp_in", "w1": "mlp_in", "w3": "mlp_in",
}


@dataclass(frozen=True)
class DtypeContext:
    """Bytes per element of the tensors that flow through a block.

    ``linear_out`` is what a base linear returns: the autocast dtype, else the load dtype; for QLoRA
    bitsandbytes casts its output back to the input's dtype, i.e. the fp32 stream. SDPA runs in the
    autocast dtype when autocast is on. LoRA's ``lora_A`` sees its input cast to the adapter dtype
    (fp32), or to the autocast dtype under autocast.
    """

    stream: int        # residual stream (the load dtype; fp32 after prepare_model_for_kbit_training)
    linear_out: int    # output of a base linear layer (and so of the MLP's elementwise ops)
    autocast: int = 0  # bytes of the autocast dtype, 0 = no autocast
    adapter: int = 4   # LoRA weights (peft keeps them in fp32)

    @property
    def matmul(self) -> int:
        """dtype a trainable linear saves its input in."""
        return self.autocast or self.linear_out

    @property
    def attention(self) -> int:
        return self.autocast or self.linear_out

    @property
    def cast_inputs(self) -> bool:
        """Autocast casts each linear's input on its own (no sharing) when the stream is wider."""
        return bool(self.autocast) and self.stream != self.autocast


@dataclass(frozen=True)
class ActivationEstimate:
    per_layer_tokens: float      # bytes per token saved by one transformer block
    first_layer_discount: float  # bytes per token the first block does not save (nothing upstream trains)
    outside_tokens: float        # bytes per token outside the blocks (final norm)
    quadratic_per_layer: float   # bytes per token per key position (eager attention)
    transient_tokens: float      # largest per-token scratch inside one block's backward
    shared_bytes: int            # per-sequence tensors shared by all layers (rope tables, masks)


def _linear_saves(fam: LinearFamily, *, per_layer: float, full: bool, lora: bool, r: int,
                  dt: DtypeContext, dropout: float, mask_bytes: int | None) -> float:
    """Bytes per token one family saves per layer for its own weight / adapter gradients."""
    if full:
        return fam.in_features * dt.matmul * per_layer if dt.cast_inputs else 0.0  # shared inputs added separately
    if not lora:
        return 0.0
    lora_dtype = dt.autocast or dt.adapter  # autocast runs lora_A in half precision
    # The cast to the adapter dtype is a no-op on an fp32 stream: siblings then share the input (below).
    saved = (0 if _lora_input_shared(dt, dropout) else fam.in_features * lora_dtype) + r * lora_dtype
    if dropout > 0:  # the dropout mask: bool from CUDA's fused kernel, the input's dtype on the CPU
        saved += fam.in_features * (mask_bytes or lora_dtype)
    return saved * per_layer


def _lora_input_shared(dt: DtypeContext, dropout: float) -> bool:
    """No cast (fp32 stream, no autocast) and no dropout: sibling adapters read one saved tensor."""
    return not dt.autocast and dt.linear_out == dt.adapter and dropout == 0


def _norm_saves(recipe: Recipe, hidden: int, dt: DtypeContext, weight_trains: bool) -> float:
    if recipe.norm == "rms":
        return 4 * hidden + 4 + (dt.stream * hidden if weight_trains else 0)
    return dt.stream * hidden + 8


def estimate(arch: ArchSpec, *, seq_len: int, full: bool, targeted: set[str], r: int, dt: DtypeContext,
             attn: str, lora_dropout: float = 0.0, device: str = "cuda") -> ActivationEstimate:
    """Per-token activation bytes for ``arch`` (see the module docstring for each term)."""
    mask_bytes = 1 if device == "cuda" else None
    recipe = RECIPES.get(arch.block, RECIPES["generic"])
    h, L = arch.hidden_size, max(arch.num_layers, 1)
    H, K, d = arch.num_heads, arch.num_kv_heads, arch.head_dim
    inter = arch.intermediate_size
    p, pa = dt.linear_out, dt.attention
    block_fams = [f for f in arch.linear_families if f.scope in ("blocks", "encoder")]

    per_layer = recipe.norms_per_layer * _norm_saves(recipe, h, dt, full)
    shared_inputs: dict[str, int] = {}
    for fam in block_fams:
        per = fam.count / L
        per_layer += _linear_saves(fam, per_layer=per, full=full, lora=fam.example in targeted, r=r,
                                   dt=dt, dropout=lora_dropout, mask_bytes=mask_bytes)
        lora_shared = fam.example in targeted and _lora_input_shared(dt, lora_dropout)
        if (full and not dt.cast_inputs) or lora_shared:
            group = SHARED_INPUT_GROUPS.get(fam.name, fam.name)
            key = f"{group}:{fam.in_features}"
            shared_inputs[key] = max(shared_inputs.get(key, 0), int(fam.in_features * dt.matmul * per))
    per_layer += sum(shared_inputs.values())

    # Attention core.
    quadratic = 0.0
    if attn == "eager" or not recipe.sdpa:
        kv_width = H if K < H else K
        per_layer += (H * d + 2 * kv_width * d) * pa
        quadratic = H * (4 + (pa if pa != 4 else 0))
        if arch.extra.get("attn_logit_softcapping"):  # Gemma-2: tanh(scores / cap) keeps its output
            quadratic += H * pa
    else:
        per_layer += (2 * H * d + 2 * K * d + recipe.attn_extra_copies * h) * pa + 4 * H

    # MLP core (experts: each token visits experts_per_token of them).
    width = inter * max(arch.experts_per_token, 1) if arch.num_experts else inter
    act = str(arch.extra.get("hidden_act") or arch.extra.get("activation_function") or "silu")
    act_saves = ACTIVATION_SAVES.get(act, 1)
    per_layer += (act_saves + 2 if recipe.mlp == "gated" else act_saves) * width * p
    if arch.num_experts:
        per_layer += arch.num_experts * 4 + h * p  # router logits (fp32) + the expert-sorted input copy

    # Hidden dropouts keep a 1-byte mask each.
    for key in recipe.dropout_sites:
        if float(arch.extra.get(key, 0) or 0) > 0:
            per_layer += h * (mask_bytes or dt.stream)

    first_discount = _norm_saves(recipe, h, dt, full) if not full else 0.0
    outside = _norm_saves(recipe, h, dt, full)
    transient = 2 * width * p + 2 * h * max(dt.stream, p)
    shared = 2 * seq_len * d * p   # rope cos/sin
    return ActivationEstimate(per_layer, first_discount, outside, quadratic, transient, shared)
