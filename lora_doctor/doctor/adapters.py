"""Facts about the real adapter tensors and trainable parameters of a loaded model (needs torch).

Everything is reduced to plain data here so that :mod:`.init`, :mod:`.training` and :mod:`.dtypes` stay pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AdapterFacts:
    module: str
    adapter: str
    a_zero: bool
    b_zero: bool
    a_dtype: str
    b_dtype: str
    a_type: str                 # parameter class name (Parameter, Params4bit, ...)
    b_type: str
    a_trainable: bool
    b_trainable: bool


@dataclass
class ModelFacts:
    """What the doctor learns from a real (non-meta) model."""

    is_peft: bool
    adapters: list[AdapterFacts] = field(default_factory=list)
    trainable: dict[str, str] = field(default_factory=dict)     # name -> dtype of each trainable parameter
    embeddings_trainable: bool = False
    input_grads_hook: bool = False                              # enable_input_require_grads() was called
    checkpointing: bool = False                                 # gradient checkpointing already enabled
    checkpointing_reentrant: bool | None = None
    quant_bits: int | None = None
    meta: bool = False


def _zero(t: Any) -> bool:
    """All zero? For a sharded DTensor (FSDP2) this rank's shard is read: no collective, so a rank that
    skips this never leaves the others waiting."""
    t = t.to_local() if callable(getattr(t, "to_local", None)) else t
    return bool((t == 0).all()) if t.numel() else True


def _pairs(module: Any) -> list[tuple[str, Any, Any]]:
    """(adapter name, A weight, B weight) of one peft LoRA layer (linear, conv, embedding, parameter wrappers)."""
    out = []
    for a_attr, b_attr in (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B")):
        a_all, b_all = getattr(module, a_attr, None), getattr(module, b_attr, None)
        if a_all is None or b_all is None or not hasattr(a_all, "keys"):
            continue
        for name in a_all.keys():
            if name not in b_all:
                continue
            a, b = a_all[name], b_all[name]
            out.append((name, getattr(a, "weight", a), getattr(b, "weight", b)))
    return out


def _checkpointing(base: Any) -> tuple[bool, bool | None]:
    for module in base.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            func = getattr(module, "_gradient_checkpointing_func", None)
            keywords = getattr(func, "keywords", {}) or {}
            return True, keywords.get("use_reentrant")
    return False, None


def gather_facts(model: Any) -> ModelFacts:
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    meta = any(p.is_meta for p in model.parameters())
    facts = ModelFacts(is_peft=hasattr(model, "peft_config"), meta=meta)
    facts.trainable = {n: str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters() if p.requires_grad}
    if not meta:
        for path, module in base.named_modules():
            for adapter, a, b in _pairs(module):
                facts.adapters.append(AdapterFacts(
                    path, adapter, _zero(a), _zero(b), str(a.dtype).removeprefix("torch."),
                    str(b.dtype).removeprefix("torch."), type(a).__name__, type(b).__name__,
                    bool(a.requires_grad), bool(b.requires_grad)))
    emb = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    facts.embeddings_trainable = bool(emb is not None and any(p.requires_grad for p in emb.parameters()))
    facts.input_grads_hook = bool(getattr(base, "_require_grads_hooks", None) or getattr(base, "_require_grads_hook", None))
    facts.checkpointing, facts.checkpointing_reentrant = _checkpointing(base)
    facts.quant_bits = 4 if getattr(base, "is_loaded_in_4bit", False) else 8 if getattr(base, "is_loaded_in_8bit", False) else None
    if facts.quant_bits is None and any(type(p).__name__ == "Params4bit" for p in base.parameters()):
        facts.quant_bits = 4
    return facts
