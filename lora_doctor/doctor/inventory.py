"""What the checks need to know about a model's modules, gathered once into plain data.

:func:`gather` walks a meta or real model (or the base model inside a ``PeftModel``) and records each
module's path as peft sees it (adapter wrappers and their ``lora_A`` / ``lora_B`` children folded away),
the kind of layer, its shape and where it sits (decoder blocks, encoder, output head, ...). Everything
downstream is pure and runs on this record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Kinds LoRA can wrap; anything else a pattern matches makes peft raise "Target module ... is not supported".
SUPPORTED_KINDS = frozenset({"linear", "conv1d", "embedding", "conv", "mha"})
LINEAR_KINDS = frozenset({"linear", "conv1d"})
_ADAPTER_PART = re.compile(r"\.(lora_[A-Za-z_]+|lora_magnitude_vector|modules_to_save|original_module|base_layer)(\.|$)")
_VISION_TAGS = ("vision", "visual", "image_encoder", "vit.")
# Projectors from the vision tower into the language model (checked before the vision tags: Qwen2-VL's
# merger sits inside ``visual``).
_PROJECTOR_TAGS = ("multi_modal_projector", "mm_projector", "visual.merger", ".connector")


@dataclass(frozen=True)
class ModuleEntry:
    name: str
    kind: str                  # linear | conv1d | embedding | conv | mha | other
    type_name: str
    in_features: int = 0
    out_features: int = 0
    scope: str = "other"       # blocks | encoder | decoder | head | embedding | vision | projector | other
    quantized: bool = False
    bnb_converts: bool = False # a 4-bit / 8-bit load would quantize it (exact nn.Linear or Conv1D, or already done)
    returns_tensor: bool = True    # False: its forward returns a tuple (an MoE router)
    reshapes_output: bool = False  # its forward returns a tensor not shaped [..., out_features] (a grouped projection)
    peft_refuses: bool = False  # peft's LoRA refuses it for this model type (the Mamba mixers' out_proj)


@dataclass
class ModuleInventory:
    model_type: str
    modules: list[ModuleEntry]
    tied_head: bool = False
    encoder_decoder: bool = False
    expert_params: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # 3-D parameters
    param_names: list[str] = field(default_factory=list)
    input_embedding: str | None = None     # path of the token embedding (get_input_embeddings())

    def by_name(self) -> dict[str, ModuleEntry]:
        return {m.name: m for m in self.modules}

    @property
    def head(self) -> ModuleEntry | None:
        return next((m for m in self.modules if m.scope == "head"), None)


def _kind_table() -> list[tuple[type, str]]:
    """(class, kind) in match order: Conv1D before nn.Linear-like checks, bitsandbytes layers are nn.Linear."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    return [(Conv1D, "conv1d"), (nn.Linear, "linear"), (nn.Embedding, "embedding"),
            (nn.Conv1d, "conv"), (nn.Conv2d, "conv"), (nn.Conv3d, "conv"), (nn.MultiheadAttention, "mha")]


def module_kind(module: Any, table: list[tuple[type, str]] | None = None) -> str:
    base = getattr(module, "base_layer", None)   # a peft wrapper: what it wraps decides
    target = base if base is not None and hasattr(module, "lora_A") else module
    for cls, kind in table or _kind_table():
        if isinstance(target, cls):
            return kind
    return "other"


def scope_of(path: str, kind: str, head_path: str | None, encoder_decoder: bool) -> str:
    lowered = path.lower()
    if head_path is not None and path == head_path:
        return "head"
    if any(tag in lowered for tag in _PROJECTOR_TAGS):
        return "projector"
    if any(tag in lowered for tag in _VISION_TAGS):
        return "vision"
    if kind == "embedding":
        return "embedding"
    if encoder_decoder:
        for part in ("encoder", "decoder"):
            if re.search(rf"(^|\.){part}(\.|$)", lowered):
                return part
    return "blocks" if re.search(r"\.\d+(\.|$)", path) else "other"


def _shape(module: Any, kind: str) -> tuple[int, int]:
    target = getattr(module, "base_layer", module)
    if kind == "conv1d":
        w = target.weight
        return int(w.shape[0]), int(w.shape[1])
    if kind == "linear":
        return int(target.in_features), int(target.out_features)
    if kind == "embedding":
        return int(target.num_embeddings), int(target.embedding_dim)
    return 0, 0


def gather(model: Any) -> ModuleInventory:
    """Record every module of ``model`` (a transformers model, or a PeftModel's base model)."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = getattr(base, "config", None)
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    head = getattr(head, "base_layer", head) if head is not None and hasattr(head, "lora_A") else head
    inputs = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    from ..introspect import bnb_converts

    table = _kind_table()
    head_path = None
    input_path = None
    for path, module in base.named_modules():
        unwrapped = path[: -len(".base_layer")] if path.endswith(".base_layer") else path
        if head is not None and head_path is None and (module is head or getattr(module, "base_layer", None) is head):
            head_path = unwrapped
        if inputs is not None and input_path is None and (module is inputs or getattr(module, "base_layer", None) is inputs):
            input_path = unwrapped
    from ..linear_probe import RESHAPED, TUPLE, linear_output, peft_refused_linears

    refused = set(peft_refused_linears(base))

    entries: list[ModuleEntry] = []
    experts: list[tuple[str, tuple[int, ...]]] = []
    output_kind: dict[type, str | None] = {}   # probed once per class
    for path, module in base.named_modules():
        if not path or _ADAPTER_PART.search(path):
            continue
        kind = module_kind(module, table)
        in_f, out_f = _shape(module, kind)
        weight = getattr(getattr(module, "base_layer", module), "weight", None)
        quantized = type(weight).__name__ in ("Params4bit", "Int8Params")
        layer = getattr(module, "base_layer", module)
        if kind == "linear" and type(layer) not in output_kind:
            output_kind[type(layer)] = linear_output(layer)
        entries.append(ModuleEntry(path, kind, type(layer).__name__, in_f, out_f,
                                   scope_of(path, kind, head_path, enc_dec), quantized,
                                   bnb_converts=kind in LINEAR_KINDS and (quantized or bnb_converts(layer)),
                                   returns_tensor=kind != "linear" or output_kind[type(layer)] != TUPLE,
                                   reshapes_output=kind == "linear" and output_kind[type(layer)] == RESHAPED,
                                   peft_refuses=kind == "linear" and path.rsplit(".", 1)[-1] in refused))
    params: list[str] = []
    for raw_name, param in base.named_parameters():
        name = raw_name.replace(".base_layer.", ".")   # peft wrappers (layers and target_parameters) fold away
        if _ADAPTER_PART.search(name):
            continue
        params.append(name)
        if param.dim() == 3 and "expert" in name.lower():   # Mamba's 3-D conv1d weight is not an expert
            experts.append((name, tuple(param.shape)))
    tied = bool(head is not None and inputs is not None and getattr(head, "weight", None) is not None
                and head.weight is getattr(inputs, "weight", None))
    return ModuleInventory(getattr(config, "model_type", type(base).__name__), entries, tied, enc_dec, experts, params,
                           input_path)

