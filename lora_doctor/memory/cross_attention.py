"""Cross-attention to an encoder's tokens: what each cross-attention layer saves for backward.

The language model's per-layer recipe (:mod:`lora_doctor.memory.activations`) covers self-attention
over the text; a cross-attention layer instead reads keys and values computed from the encoder's
output, so they scale with the encoder's tokens, once per cross-attention layer:

* Whisper's decoder: every decoder layer cross-attends to the 1500 encoder frames (LayerNorm, q and
  out over the decoder tokens, k and v over the frames);
* Llama-3.2-Vision (mllama): the layers in ``cross_attention_layers`` attend to every vision token
  (``max_num_tiles x (patches + 1)`` per image). Keys go through ``k_norm`` (an RMSNorm over the head
  dimension: an fp32 copy and the rsqrt are kept), and the attention is masked (the processor's
  cross-attention mask), so transformers hands SDPA keys and values repeated to every query head
  (``use_gqa_in_sdpa`` is off with a mask): ``2 x heads x head_dim`` per vision token and layer.
  The mask itself, ``[batch, 1, text, vision]`` in the model dtype, is built once and kept by
  every layer's SDPA; on the text side a cross layer has ``q_norm`` but no keys / values, and its
  q / o projections are not in the language model's block families.
"""

from __future__ import annotations

from ..arch import ArchSpec
from ..plan_types import PlanSettings
from .analytic import _dtypes


def _lora_shares_input(s: PlanSettings) -> bool:
    dt = _dtypes(s)
    return not dt.autocast and dt.linear_out == dt.adapter and s.lora_dropout == 0


def audio_cross_saved(arch: ArchSpec, s: PlanSettings, dec_tokens: int, enc_tokens: int, targeted: set[str]) -> int:
    """Whisper's decoder cross-attention per layer: LayerNorm, q/out over decoder tokens, k/v over frames."""
    dt = _dtypes(s)
    h, H, L = arch.hidden_size, arch.num_heads, max(arch.num_layers, 1)
    pa = dt.attention
    per_layer = dec_tokens * (dt.stream * h + 8 + 2 * h * pa + 4 * H) + enc_tokens * 2 * h * pa
    lora_dtype = dt.autocast or dt.adapter
    shared = _lora_shares_input(s)
    for f in arch.linear_families:
        if f.scope != "cross":
            continue
        on_frames = f.name in ("k_proj", "v_proj")
        tokens = enc_tokens if on_frames else dec_tokens
        per = f.count / L
        if s.mode == "full" and not on_frames:
            per_layer += tokens * f.in_features * dt.matmul * per
        elif f.example in targeted:
            per_layer += tokens * ((0 if shared and on_frames else f.in_features) + s.r) * lora_dtype * per
    return int(per_layer * L)


def vision_cross_saved(arch: ArchSpec, s: PlanSettings, text_tokens: int, vision_tokens: int,
                       targeted: set[str]) -> int:
    """mllama's cross-attention layers (module docstring); tokens are summed over the batch."""
    fams = [f for f in arch.linear_families if f.scope == "cross"]
    if not fams or not vision_tokens:
        return 0
    dt = _dtypes(s)
    layers = max(f.count for f in fams)
    H, K, d, h = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.hidden_size
    pa, p, full = dt.attention, dt.linear_out, s.mode == "full"
    lora_dtype, shared = dt.autocast or dt.adapter, _lora_shares_input(s)
    # per vision token and layer: k_norm's fp32 input and rsqrt, SDPA's repeated keys and values
    per_vision = 4 * K * d + 4 * K + 2 * H * d * pa + (K * d * p if full else 0)
    # per text token and layer: q_norm's fp32 input and rsqrt, no self-attention keys / values;
    # full fine-tuning: the two tanh gates keep the attention and MLP outputs they scale
    per_text = 4 * H * d + 4 * H - 2 * K * d * pa + ((H * d + 2 * h) * p if full else 0)
    reads_states = full
    for f in fams:
        on_vision = f.name in ("k_proj", "v_proj")
        if full and not on_vision:       # q_proj / o_proj keep their inputs for the weight gradient
            per_text += f.in_features * dt.matmul
        elif f.example in targeted:
            reads_states |= on_vision and shared
            saved = (0 if shared and on_vision else f.in_features) + s.r
            if on_vision:
                per_vision += saved * lora_dtype
            else:
                per_text += saved * lora_dtype
    once = text_tokens * vision_tokens // max(s.batch_size, 1) * dt.stream      # the mask
    if reads_states:   # the projected vision states themselves, read by every layer's k/v projections
        once += vision_tokens * h * p
    return int(layers * (vision_tokens * per_vision + text_tokens * per_text) + once)
