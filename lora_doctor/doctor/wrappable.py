"""Targets peft selects but its LoRA layer cannot run or refuses (pure).

Linear layers whose forward returns a tuple:

peft's ``"all-linear"`` takes every ``nn.Linear`` instance except the output head, by class. Some
models subclass ``nn.Linear`` for their MoE router and return ``(scores, indices)`` from ``forward``
(transformers 5.24: PhiMoE's ``PhimoeTopKRouter``, Llama-4's ``Llama4Router``). peft 0.21's
``lora.Linear.forward`` calls the wrapped layer and reads ``result.dtype``, so the first forward raises
``AttributeError: 'tuple' object has no attribute 'dtype'`` (verified on CPU with tiny PhiMoE and
Llama-4 text models, one forward and backward; ``exclude_modules=["router"]`` makes both train).
Which layers return a tuple is measured, not listed: :func:`lora_doctor.linear_probe.linear_output`
calls each such class once (on the meta device for a config).

Linear layers whose forward returns a tensor not shaped ``[..., out_features]``: DeepSeek-V4's grouped output
projection ``DeepseekV4GroupedLinear`` (``o_a_proj``) maps ``[..., groups, in/groups]`` to ``[..., groups,
out/groups]``; peft adds LoRA's ``[..., groups, out_features]`` to it, so the first forward raises
``RuntimeError: The size of tensor a (1024) must match the size of tensor b (8192)`` (verified on CPU with a
tiny DeepSeek-V4, one forward; ``exclude_modules=["o_a_proj"]`` makes it train). Measured by the same probe
(:func:`lora_doctor.linear_probe.linear_output`).

Linear layers peft refuses for the model type: peft 0.21 raises "Module 'out_proj' is incompatible with
Mamba-based models" in ``get_peft_model`` for the Mamba mixers' ``out_proj`` of mamba, mamba2,
falcon_mamba, falcon_h1 and nemotron_h, and its ``"all-linear"`` selects that layer. Asked of peft itself
(:func:`lora_doctor.linear_probe.peft_refused_linears`); ``exclude_modules=["out_proj"]`` makes all four
installed types train (checked on CPU with tiny models, one forward and backward).
"""

from __future__ import annotations

from typing import Callable

from ..findings import Finding
from .inventory import ModuleEntry, ModuleInventory
from .matching import TargetMatch
from .registry import finding
from .settings import LoraSettings


def check_non_tensor_targets(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    hit = _targeted(inv, m, lambda e: e.returns_tensor is False)
    if not hit:
        return []
    names, types = _names(hit), _types(hit)
    return [finding(
        "target-non-tensor-output",
        f"{len(hit)} targeted layers ({', '.join(names)}: {', '.join(types)}) are nn.Linear subclasses whose forward "
        f"returns a tuple (an MoE router's scores and indices); {_how(s)}, but peft's LoRA layer reads the output's "
        ".dtype, so the first forward raises AttributeError: 'tuple' object has no attribute 'dtype'.",
        _fix(names, m), modules=names, classes=types, count=len(hit))]


def check_reshaped_targets(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    hit = _targeted(inv, m, lambda e: e.reshapes_output)
    if not hit:
        return []
    names, types, first = _names(hit), _types(hit), hit[0]
    return [finding(
        "target-reshaped-output",
        f"{len(hit)} targeted layers ({', '.join(names)}: {', '.join(types)}) are nn.Linear subclasses whose forward "
        f"does not return [..., out_features] (a grouped projection: {first.in_features} -> {first.out_features} "
        f"features split over groups); {_how(s)}, but peft's LoRA layer adds its own [..., {first.out_features}] "
        "output to it, so the first forward raises RuntimeError: The size of tensor a must match the size of tensor b.",
        _fix(names, m), modules=names, classes=types, count=len(hit))]


def check_peft_refused_targets(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    hit = _targeted(inv, m, lambda e: e.peft_refuses)
    if not hit:
        return []
    names = _names(hit)
    return [finding(
        "target-peft-refused",
        f"{len(hit)} targeted layers ({', '.join(names)}) are ones peft's LoRA refuses for {inv.model_type} models; "
        f"{_how(s)}, so get_peft_model raises ValueError: Module '{names[0]}' is incompatible with Mamba-based models.",
        _fix(names, m), modules=names, count=len(hit))]


def _targeted(inv: ModuleInventory, m: TargetMatch, bad: Callable[[ModuleEntry], bool]) -> list[ModuleEntry]:
    """The matched modules that ``bad`` flags, in match order."""
    by_name = inv.by_name()
    return [by_name[n] for n in m.matched if n in by_name and bad(by_name[n])]


def _names(hit: list[ModuleEntry]) -> list[str]:
    return sorted({e.name.rsplit(".", 1)[-1] for e in hit})


def _types(hit: list[ModuleEntry]) -> list[str]:
    return sorted({e.type_name for e in hit})


def _how(s: LoraSettings) -> str:
    return "'all-linear' selects every nn.Linear by class" if s.is_all_linear else "the target patterns match them"


def _fix(names: list[str], m: TargetMatch) -> str:
    """Exclude the named layers, or target the rest explicitly."""
    keep = sorted({n.rsplit(".", 1)[-1] for n in m.matched} - set(names))
    return f"Add exclude_modules={names} to the LoraConfig" + (f", or pass target_modules={keep}" if keep else "") + "."
