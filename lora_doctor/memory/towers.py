"""Memory of the vision / audio towers, the projector and cross-attention (multimodal models).

The language model is planned by :func:`lora_doctor.memory.analytic.step_peak` over its whole
sequence (text + image tokens); this module adds what the towers contribute:

* a tower that trains (full fine-tuning, or adapters on its layers) saves activations for backward
  like any transformer stack: the per-token recipe of :mod:`lora_doctor.memory.activations` applied
  to the tower's own blocks (LayerNorm + plain MLP for CLIP / SigLIP / Qwen2-VL / Whisper,
  RMSNorm + gated MLP for Qwen2.5-VL; Qwen's fused qkv with rotary keeps two hidden-width tensors
  more, :data:`TOWER_BLOCKS`) over ``batch x images x patches`` tokens. Only the layers whose output
  reaches the loss keep theirs: LLaVA takes the features of ``vision_feature_layer`` (-2: the last
  layer's output is dropped after the forward, and with it everything that layer saved);
* a frozen tower saves nothing: its forward leaves only transients (one block's working set; LLaVA
  also keeps every layer's hidden state because it asks for ``output_hidden_states``);
* the projector saves its inputs when it or anything before it trains;
* Gemma-3's image tokens attend to each other both ways, so its attention mask is explicit: every
  layer's SDPA keeps the mask and keys / values repeated to every head (:data:`BIDIRECTIONAL_IMAGES`);
* cross-attention to the encoder's tokens (Whisper's decoder, Llama-3.2-Vision's cross-attention
  layers) keeps keys and values over those tokens in every such layer: :mod:`.cross_attention`;
* the inputs themselves (``pixel_values`` / ``input_features`` as the processor returns them, fp32)
  and Whisper's encoder output stay alive through the step. On the CPU (``device="cpu"``) the next
  batch is there too: accelerate's ``DataLoaderShard`` fetches one batch ahead and only moves the
  current one to the device, so on a GPU the look-ahead batch sits in host memory instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..arch import ArchSpec, LinearFamily
from ..inputs import InputPlan, plan_inputs
from ..plan_types import PlanSettings
from ..towers import TowerSpec, tower
from . import activations, cross_attention
from .analytic import _dtypes
from .targets import targeted_families

PIXEL_BYTES = 4      # image processors and feature extractors return fp32 arrays


@dataclass(frozen=True)
class TowerTerms:
    lm_seq_len: int            # the language model's sequence per sample (text + image tokens)
    saved: int = 0             # kept for backward by the towers, the projector and cross-attention
    forward_transient: int = 0 # the largest working set of the towers' forward
    resident: int = 0          # inputs and encoder output alive through the step
    recompute: int = 0         # gradient checkpointing: one tower block recomputed in the tower's backward
    trains: tuple[str, ...] = ()   # roles of the towers that train
    notes: tuple[str, ...] = ()


# model_type -> activation recipe of its vision blocks, where (norm, mlp) alone does not say it
TOWER_BLOCKS: dict[str, str] = {"qwen2_vl": "qwen_vit", "qwen2_5_vl": "qwen_vit_gated"}


def _tower_arch(arch: ArchSpec, t: TowerSpec, fams: list[LinearFamily]) -> ArchSpec:
    """The tower's blocks as an ArchSpec the activation recipes can read."""
    heads = max(t.num_heads, 1)
    block = "llama" if (t.norm, t.mlp) == ("rms", "gated") else "opt"
    if t.role == "vision":
        block = TOWER_BLOCKS.get(arch.model_type, block)
    return ArchSpec(model_type=f"{arch.model_type}:{t.role}", architecture="", total_params=t.params,
                    linear_families=tuple(replace(f, scope="blocks") for f in fams), embedding_params=0,
                    head_params=0, other_params=0, expert_params=0, hidden_size=t.hidden_size,
                    num_layers=max(t.num_layers, 1), num_heads=heads, num_kv_heads=heads,
                    head_dim=t.hidden_size // heads, intermediate_size=t.intermediate_size, vocab_size=0,
                    tied_embeddings=False, block=block,
                    extra={"hidden_act": t.hidden_act})


_IN_BLOCK = re.compile(r"\.(layers|blocks|layer)\.\d+\.")


def _block_families(arch: ArchSpec, t: TowerSpec) -> list[LinearFamily]:
    """The tower's linear families inside its transformer blocks (not patch embeddings or heads)."""
    return [f for f in arch.linear_families if f.scope == t.role and _IN_BLOCK.search(f.example + ".")]


def layers_to_loss(t: TowerSpec) -> int:
    """How many of the tower's layers feed the language model: LLaVA's ``vision_feature_layer`` indexes
    ``hidden_states`` (the embeddings, then every layer's output), so -2 leaves the last layer out."""
    layer = t.extra.get("vision_feature_layer")
    L = max(t.num_layers, 1)
    if t.role != "vision" or isinstance(layer, bool) or not isinstance(layer, int):
        return L
    return max(1, min(L, L + 1 + layer if layer < 0 else layer))


def _stack_saved(arch: ArchSpec, t: TowerSpec, s: PlanSettings, tokens: int, targeted: set[str],
                 device: str) -> tuple[int, int]:
    """Bytes a trained tower saves for backward (the language model's formula on the tower's blocks), and,
    with gradient checkpointing, the one block recomputed during the tower's backward."""
    dt = _dtypes(s)
    sub = _tower_arch(arch, t, _block_families(arch, t))
    est = activations.estimate(sub, seq_len=max(tokens // max(s.batch_size, 1), 1), full=s.mode == "full",
                               targeted=targeted, r=s.r, dt=dt, attn=s.attn_implementation,
                               lora_dropout=s.lora_dropout, device=device)
    L = layers_to_loss(t)
    # the final norm (post_layernorm) keeps its input only when the last layer's output is used
    outside = est.outside_tokens if L == sub.num_layers else 0
    if s.gradient_checkpointing:   # each block's input; one block's activations while it is recomputed
        return int(tokens * L * t.hidden_size * dt.stream), int(tokens * est.per_layer_tokens)
    return int(tokens * (L * est.per_layer_tokens - est.first_layer_discount + outside)
               + est.shared_bytes * s.batch_size), 0


def _forward_working_set(t: TowerSpec, tokens: int, s: PlanSettings, keeps_hidden_states: bool) -> int:
    """One block's transients in a frozen tower's forward: stream, q/k/v, the MLP's wide tensors."""
    p = _dtypes(s).linear_out
    work = tokens * (4 * t.hidden_size + 2 * t.intermediate_size) * p
    if keeps_hidden_states:
        work += (t.num_layers + 1) * tokens * t.hidden_size * _dtypes(s).stream
    return int(work)


def _projector_saved(arch: ArchSpec, proj: TowerSpec | None, tokens: int, s: PlanSettings, trains: bool,
                     targeted: set[str]) -> int:
    if proj is None:
        return 0
    dt = _dtypes(s)
    fams = [f for f in arch.linear_families if f.scope == "projector"]
    saved = 0
    for f in fams:
        if s.mode == "full":
            saved += f.in_features * dt.matmul * f.count
        elif f.example in targeted:
            saved += (f.in_features + s.r) * (dt.autocast or dt.adapter) * f.count
    if len(fams) > 1 and trains:   # the activation between the two linears keeps its input for the gradient
        saved += fams[0].out_features * dt.linear_out
    return int(tokens * saved)


# model_types whose image tokens attend to each other both ways (token_type_ids): the language model's
# attention mask is explicit instead of SDPA's causal flag
BIDIRECTIONAL_IMAGES = frozenset({"gemma3"})


def _explicit_mask_saved(arch: ArchSpec, s: PlanSettings, lm_seq: int) -> int:
    """With an explicit mask SDPA keeps, in every layer, the mask as floats ``[b, 1, s, s]`` and keys and
    values repeated to every query head (transformers' ``use_gqa_in_sdpa`` is off with a mask); the
    language model's recipe counted keys and values at the kv-head width."""
    pa = _dtypes(s).attention
    repeat = 2 * (arch.num_heads - arch.num_kv_heads) * arch.head_dim * pa
    return int(arch.num_layers * s.batch_size * lm_seq * (repeat + lm_seq * pa))


def _input_bytes(arch: ArchSpec, ip: InputPlan, s: PlanSettings) -> int:
    """One batch of pixel values (fp32, as image processors return them) or audio features (cast by the
    collator to the model dtype: Whisper's conv front-end rejects fp32 features on a bf16 model)."""
    vision, audio = tower(arch.towers, "vision"), tower(arch.towers, "audio")
    if audio is not None:
        return int(s.batch_size * ip.mel_frames * int(audio.extra.get("num_mel_bins", 80)) * _dtypes(s).stream)
    if vision is None or not ip.images:
        return 0
    channels = int(vision.extra.get("num_channels", 3) or 3)
    return int(s.batch_size * ip.images * ip.pixels_per_image * channels * PIXEL_BYTES)


def tower_terms(arch: ArchSpec, s: PlanSettings, device: str = "cuda") -> tuple[TowerTerms, InputPlan]:
    """What the towers add to one step of ``arch`` under ``s`` (nothing for a text-only model), and the
    token counts of the inputs."""
    ip = plan_inputs(arch, s.inputs)
    if not arch.towers:
        return TowerTerms(s.seq_len), ip
    b = s.batch_size
    full = s.mode == "full"
    targeted = set() if full else {f.example for f in targeted_families(arch, s.target_modules)}
    trains = tuple(t.role for t in arch.towers
                   if full or any(f.example in targeted for f in arch.linear_families if f.scope == t.role))
    vision, proj, audio = (tower(arch.towers, r) for r in ("vision", "projector", "audio"))
    saved = transient = resident = recompute = 0
    notes: list[str] = []
    if vision is not None and ip.images:
        v_tokens = b * ip.images * ip.vision_seq_per_image
        resident += _input_bytes(arch, ip, s)
        if "vision" in trains:
            kept, again = _stack_saved(arch, vision, s, v_tokens, targeted, device)
            saved, recompute = saved + kept, recompute + again
            notes.append(f"the vision tower trains ({'full fine-tuning' if full else 'adapters on its layers'}): "
                         f"its activations over {ip.vision_seq_per_image} patches per image are saved for backward")
        else:
            notes.append("the vision tower is frozen: its forward keeps nothing for backward")
        transient = _forward_working_set(vision, v_tokens, s, keeps_hidden_states=arch.model_type == "llava")
        # the projector maps every vision token the text reads: merged tokens, or mllama's cross-attended ones
        p_tokens = b * ip.images * (ip.cross_tokens_per_image or ip.lm_tokens_per_image)
        saved += _projector_saved(arch, proj, p_tokens, s, bool({"vision", "projector"} & set(trains)), targeted)
        if ip.cross_tokens_per_image:
            saved += cross_attention.vision_cross_saved(arch, s, b * (s.seq_len + ip.lm_image_tokens),
                                                        b * ip.images * ip.cross_tokens_per_image, targeted)
            notes.append(f"cross-attention over {ip.images * ip.cross_tokens_per_image} vision tokens per sample: "
                         "every cross-attention layer saves its keys and values over them, and the mask")
    if audio is not None:
        a_tokens = b * ip.audio_frames
        resident += _input_bytes(arch, ip, s)
        resident += a_tokens * audio.hidden_size * _dtypes(s).stream    # encoder output, read by every layer
        if "audio" in trains:
            kept, again = _stack_saved(arch, audio, s, a_tokens, targeted, device)
            saved, recompute = saved + kept, recompute + again
            if full:   # conv front-end: conv1 input, gelu/conv2 inputs at 3000 frames, gelu at 1500
                saved += int(b * ip.mel_frames * (audio.hidden_size * 2 * _dtypes(s).linear_out))
        transient = _forward_working_set(audio, a_tokens, s, keeps_hidden_states=False)
        saved += cross_attention.audio_cross_saved(arch, s, b * s.seq_len, a_tokens, targeted)
    if device == "cpu":   # the look-ahead batch of accelerate's DataLoaderShard lives on the same device
        resident += _input_bytes(arch, ip, s)
    lm_seq = s.seq_len + ip.lm_image_tokens
    if arch.model_type in BIDIRECTIONAL_IMAGES and ip.images:
        saved += _explicit_mask_saved(arch, s, lm_seq)
        notes.append("image tokens attend to each other both ways: the attention mask is explicit, so every layer "
                     "keeps it and keys / values repeated to every head")
    return TowerTerms(lm_seq, saved, transient, resident, recompute, trains, tuple(notes)), ip


def phase_hooks(terms: TowerTerms) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """The tower terms as step_peak's hook: activations added per phase, and the towers' forward phase."""
    if not (terms.saved or terms.forward_transient or terms.resident):
        return {}, {}
    kept = terms.saved + terms.resident
    return ({"backward_start": kept, "backward_end": kept + terms.recompute},
            {"tower_forward": {"gradients": 0, "activations": terms.resident, "logits_and_loss": 0,
                               "temporaries": terms.forward_transient}})
