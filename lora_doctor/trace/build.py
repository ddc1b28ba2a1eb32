"""Build the real model for a plan with every tensor made by a factory (fake or real).

Order matters and follows what a QLoRA/LoRA script does, all of it on the ``meta`` device first
(free), then the tensors are made at once:

1. the ``transformers`` class from the config (``build_meta_model``) built in the load dtype, as
   ``from_pretrained(dtype=...)`` builds it: floating buffers made at init are in that dtype too (a
   buffer left in fp32 promotes bf16 activations it multiplies: GPT-1's causal mask, MiniMax's decays);
2. QLoRA: every ``nn.Linear`` except the output head becomes a ``bitsandbytes`` ``Linear4bit``
   (what ``BitsAndBytesConfig(load_in_4bit=True)`` does), then peft's real
   ``prepare_model_for_kbit_training`` casts the remaining fp16/bf16 parameters to fp32;
3. LoRA/QLoRA: peft's real ``get_peft_model`` with a ``LoraConfig`` (adapters in fp32 by default);
4. every parameter and buffer is replaced by ``make(shape, dtype)``: a fake tensor under
   ``FakeTensorMode`` (nothing allocated) or a real one for the CPU benchmark. 4-bit weights are
   quantized with bitsandbytes' own ``quantize_4bit``, so the packed uint8 weight, absmax and the
   nested double-quantization state have their true sizes;
5. gradient checkpointing the way ``Trainer`` enables it (non-reentrant).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..models import ResolvedModel
from ..plan_types import PlanSettings
from ..torch_dtypes import torch_dtype as dtype_of

TensorFactory = Callable[[tuple, torch.dtype], torch.Tensor]

# Attention kernels the trace can run on CPU; others are traced as their closest stand-in.
ATTN_STAND_INS: dict[str, str] = {"flash_attention_2": "sdpa", "flash_attention_3": "sdpa", "flex_attention": "sdpa"}


@dataclass
class BuiltModel:
    """The model to train plus what the tracker must know about its tensors."""

    model: nn.Module
    base: nn.Module
    weights: list[torch.Tensor] = field(default_factory=list)           # frozen base params + buffers
    trainable: list[torch.Tensor] = field(default_factory=list)
    quant_state: list[torch.Tensor] = field(default_factory=list)       # absmax, nested absmax, codes
    targets: list[str] = field(default_factory=list)                    # adapted module name suffixes
    notes: list[str] = field(default_factory=list)



def build_model(resolved: ResolvedModel, settings: PlanSettings, make: TensorFactory,
                mode: Any = None) -> BuiltModel:
    """Steps 1-5 above; ``make`` runs inside ``mode`` (a ``FakeTensorMode``) when one is given."""
    from ..errors import UnsupportedModelError
    from ..introspect import build_meta_model

    notes: list[str] = []
    config = copy.deepcopy(resolved.config())
    attn = ATTN_STAND_INS.get(settings.attn_implementation, settings.attn_implementation)
    if attn != settings.attn_implementation:
        notes.append(f"{settings.attn_implementation} cannot run on CPU; traced with {attn}, "
                     "which keeps the same O(seq) activations")
    config._attn_implementation = attn
    load_dtype = dtype_of(settings.dtype)
    try:
        model = build_meta_model(config, dtype=load_dtype)
    except UnsupportedModelError as exc:
        if attn != "sdpa" or "attention implementation" not in str(exc):
            raise
        # Gemma-2, BLOOM: no SDPA path in transformers; from_pretrained would pick eager, so trace that
        notes.append(f"{config.model_type} has no SDPA attention in transformers; traced with eager attention")
        config._attn_implementation = "eager"
        model = build_meta_model(config, dtype=load_dtype)
    for p in model.parameters():  # like from_pretrained(dtype=...): parameters only, fp32 buffers stay
        p.data = p.data.to(load_dtype)
    if settings.mode == "qlora":
        _quantize_linears_on_meta(model, settings)
        from peft import prepare_model_for_kbit_training

        model.is_loaded_in_4bit = True
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    wrapped = model
    targets: list[str] = []
    if settings.mode in ("lora", "qlora"):
        wrapped, targets = _apply_lora(model, settings, bool(resolved.arch.towers))
    with mode if mode is not None else nullcontext():
        _materialize(wrapped, make, load_dtype)
    if settings.gradient_checkpointing:
        _enable_checkpointing(model, quantized=settings.mode == "qlora")
    _trainer_finalize(wrapped)
    built = BuiltModel(wrapped, model, targets=targets, notes=notes)
    seen: set[int] = set()
    for p in wrapped.parameters():
        seen.add(id(p))
        (built.trainable if p.requires_grad else built.weights).append(p)
        state = getattr(p, "quant_state", None)
        if state is not None:
            built.quant_state.extend(_quant_state_tensors(state))
    built.weights.extend(b for b in wrapped.buffers() if id(b) not in seen)
    return built


def _quantize_linears_on_meta(model: nn.Module, settings: PlanSettings) -> None:
    """Swap nn.Linear for bnb Linear4bit like transformers' bnb quantizer (head and tied layers kept)."""
    import bitsandbytes as bnb
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    compute = dtype_of(settings.dtype)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not (type(child) is nn.Linear or isinstance(child, Conv1D)) or child is head:
                continue
            in_f, out_f = (child.weight.shape if isinstance(child, Conv1D)  # GPT-2: weight stored [in, out]
                           else (child.in_features, child.out_features))
            q = bnb.nn.Linear4bit(in_f, out_f, bias=child.bias is not None,
                                  compute_dtype=compute, compress_statistics=settings.double_quant,
                                  quant_type=settings.quant_type, quant_storage=torch.uint8, device="meta")
            q.source_cls = type(child)
            if child.bias is not None:
                q.bias = nn.Parameter(torch.empty_like(child.bias, device="meta"), requires_grad=False)
            setattr(parent, name, q)


def _apply_lora(model: nn.Module, settings: PlanSettings,
                multimodal: bool = False) -> tuple[nn.Module, list[str]]:
    from peft import LoraConfig, get_peft_model

    task = "SEQ_2_SEQ_LM" if getattr(model.config, "is_encoder_decoder", False) else "CAUSAL_LM"
    if multimodal:   # multimodal: peft's task wrappers pass text-only kwargs (Whisper has no input_ids)
        task = None
    config = LoraConfig(r=settings.r, lora_alpha=settings.lora_alpha, target_modules=settings.target_modules,
                        use_rslora=settings.use_rslora, lora_dropout=settings.lora_dropout, task_type=task)
    peft_model = get_peft_model(model, config)
    targets = sorted(peft_model.peft_config["default"].target_modules or [])
    return peft_model, [str(t) for t in targets]


def _materialize(model: nn.Module, make: TensorFactory, load_dtype: torch.dtype) -> None:
    """Replace every meta parameter/buffer by ``make(...)``, keeping dtype, requires_grad and ties."""
    import bitsandbytes as bnb

    done: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in done:
                if isinstance(p, bnb.nn.Params4bit):
                    done[id(p)] = _quantized(p, module, make, load_dtype)
                else:
                    done[id(p)] = nn.Parameter(make(tuple(p.shape), p.dtype), requires_grad=p.requires_grad)
            module._parameters[name] = done[id(p)]
            if isinstance(module, bnb.nn.Linear4bit) and name == "weight":
                module.quant_state = done[id(p)].quant_state
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = done.setdefault(id(b), make(tuple(b.shape), b.dtype))


def _quantized(p: Any, module: nn.Module, make: TensorFactory, load_dtype: torch.dtype) -> torch.Tensor:
    """Quantize a stand-in weight with bitsandbytes' own code: true packed and absmax sizes."""
    import bitsandbytes.functional as F

    F.name2qmap.setdefault("dynamic", _dynamic_map())
    out_f, in_f = module.out_features, module.in_features
    packed, state = F.quantize_4bit(make((out_f, in_f), load_dtype), blocksize=p.blocksize,
                                    compress_statistics=p.compress_statistics, quant_type=p.quant_type,
                                    quant_storage=p.quant_storage)
    packed.requires_grad_(False)
    packed.quant_state = state  # what bnb's Linear4bit.forward reads; a FakeTensor can't be a Params4bit
    return packed


def _dynamic_map() -> torch.Tensor:
    """bnb's 8-bit code for double quantization, computed outside fake mode (it reads values)."""
    import bitsandbytes.functional as F
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return F.create_dynamic_map()


def _quant_state_tensors(state: Any) -> list[torch.Tensor]:
    tensors = [state.absmax, state.code, state.offset]
    if getattr(state, "state2", None) is not None:
        tensors += [state.state2.absmax, state.state2.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def _enable_checkpointing(model: nn.Module, *, quantized: bool) -> None:
    """What ``Trainer(gradient_checkpointing=True)`` calls: non-reentrant checkpointing per layer."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    if quantized and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # prepare_model_for_kbit_training(use_gradient_checkpointing=True)


def _trainer_finalize(model: nn.Module) -> None:
    """What ``Trainer.__init__`` ends with: ``model.config.use_cache = args.use_cache`` (False by default).

    Left at the config's True, the forward builds a DynamicCache that copies every layer's keys and values
    and holds them until the output is dropped, which no Trainer run has. Measured (batch 2, seq 512, QLoRA,
    bf16 autocast): a tiny Llama's real Trainer step peaks at 35.42 MiB; the trace said 36.01 MiB in forward
    with the cache, 35.49 MiB without. Llama-2-7B at batch 1, seq 1024: 12.36 GiB in forward with it, 11.41 GiB
    (backward) without. Where k/v are views of a fused projection (GPT-2's c_attn) the copies are also what
    attention saves, so they inflated the saved activations too.
    """
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False
