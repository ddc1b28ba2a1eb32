"""Quantize the frozen base linears of an already loaded ``PeftModel`` to bitsandbytes 4-bit, in place.

What is converted: every plain ``torch.nn.Linear`` whose parameters are all frozen, i.e. the
``base_layer`` inside each peft LoRA wrapper and the linears LoRA does not target. What is never
touched: adapter layers (``lora_A`` / ``lora_B`` ...), ``modules_to_save`` copies, the output head
and embeddings, anything trainable. peft's wrappers stay the same objects and their adapter
``Parameter`` objects keep their identity, so an optimizer that already holds them stays valid.

Each new ``bnb.nn.Linear4bit`` is quantized on the device the old weight lives on (NF4, double
quantization by default) and the old weight is dropped, freeing its memory. The matmul runs in
``compute_dtype`` (bf16 where the GPU supports it); outputs are cast back to the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

_SKIP_PARTS = ("lora_", "modules_to_save", "original_module")


@dataclass
class Conversion:
    """What :func:`quantize_base_linears` changed."""

    converted: list[str] = field(default_factory=list)   # module names now 4-bit
    bytes_before: int = 0                                # weight + bias bytes of those layers before
    bytes_after: int = 0                                 # packed weights + quantization state + bias after

    @property
    def freed_bytes(self) -> int:
        return self.bytes_before - self.bytes_after


def _protected(model: nn.Module) -> set[int]:
    """ids of modules never to quantize: output head and input embeddings."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = set()
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        module = getattr(inner, getter, lambda: None)()
        if module is not None:
            ids.add(id(module))
            ids.update(id(m) for m in module.modules())
    return ids


def convertible_linears(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(name, parent, attribute, linear) for each frozen plain ``nn.Linear`` that may be quantized."""
    protected = _protected(model)
    found = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            name = f"{parent_name}.{attr}" if parent_name else attr
            if type(child) is not nn.Linear or id(child) in protected:
                continue
            if any(part.startswith(_SKIP_PARTS) for part in name.split(".")):
                continue
            if any(p.requires_grad for p in child.parameters()) or child.weight.device.type == "meta":
                continue
            found.append((name, parent, attr, child))
    return found


def _quantized_bytes(layer: nn.Module) -> int:
    total = layer.weight.numel() * layer.weight.element_size()
    state = getattr(layer.weight, "quant_state", None)
    for tensor in (getattr(state, "absmax", None), getattr(getattr(state, "state2", None), "absmax", None)):
        if tensor is not None:
            total += tensor.numel() * tensor.element_size()
    if layer.bias is not None:
        total += layer.bias.numel() * layer.bias.element_size()
    return total


def to_linear4bit(linear: nn.Linear, *, compute_dtype: torch.dtype = torch.bfloat16, quant_type: str = "nf4",
                  double_quant: bool = True) -> nn.Module:
    """A ``bnb.nn.Linear4bit`` holding ``linear``'s weight quantized on the weight's device."""
    import bitsandbytes as bnb

    device = linear.weight.device
    new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            compute_dtype=compute_dtype, compress_statistics=double_quant,
                            quant_type=quant_type, device="meta")
    new.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type=quant_type,
                                   compress_statistics=double_quant).to(device)
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    new.train(linear.training)
    return new


def quantize_base_linears(model: nn.Module, *, compute_dtype: torch.dtype = torch.bfloat16,
                          quant_type: str = "nf4", double_quant: bool = True) -> Conversion:
    """Replace the frozen base linears of ``model`` by 4-bit ones, in place. Returns what changed."""
    result = Conversion()
    for name, parent, attr, linear in convertible_linears(model):
        result.bytes_before += sum(p.numel() * p.element_size() for p in linear.parameters())
        new = to_linear4bit(linear, compute_dtype=compute_dtype, quant_type=quant_type, double_quant=double_quant)
        setattr(parent, attr, new)
        result.bytes_after += _quantized_bytes(new)
        result.converted.append(name)
    return result
