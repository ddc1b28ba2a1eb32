"""Where LoRA adapters land on a multimodal model: language model, vision / audio tower, projector.

Pure data on the :class:`~lora_doctor.arch.ArchSpec`, following peft's matching rules
(:mod:`lora_doctor.memory.targets`). In peft 0.21, ``"all-linear"`` is every ``nn.Linear`` except
the output head, so on a vision-language model it reaches the vision tower and the projector as well
as the language model; a bare list such as ``["q_proj", "v_proj"]`` reaches every module with that
name, which includes CLIP / SigLIP attention (LLaVA, Gemma-3, Idefics3, Llama-3.2-Vision) but not
Qwen2-VL's vision blocks (named ``qkv`` / ``proj``).
"""

from __future__ import annotations

import re
from typing import Any

from .arch import ArchSpec

PART_NAMES = {"blocks": "language model", "cross": "cross-attention", "vision": "vision tower",
              "projector": "projector", "audio": "audio encoder", "encoder": "encoder", "decoder": "decoder",
              "other": "other layers"}


def part_name(arch: ArchSpec, scope: str) -> str:
    """What a scope is called on this model (Whisper's language model is its decoder)."""
    if scope == "blocks" and any(t.role == "audio" for t in arch.towers):
        return "decoder"
    return PART_NAMES.get(scope, scope)


def placement(arch: ArchSpec, target_modules: Any) -> dict[str, int]:
    """Wrapped linear layers per part of the model (scope -> count), as peft would wrap them."""
    from .memory.targets import targeted_families

    out: dict[str, int] = {}
    for fam in targeted_families(arch, target_modules):
        out[fam.scope] = out.get(fam.scope, 0) + fam.count
    return out


def placement_note(arch: ArchSpec, target_modules: Any) -> str | None:
    """One sentence on what the targets reach, for models with towers (None for text-only models)."""
    if not arch.towers:
        return None
    try:
        where = placement(arch, target_modules)
    except Exception:   # no match / no default targets: the engine raises its own clear error
        return None
    reached = ", ".join(f"{part_name(arch, k)} ({n} layers)" for k, n in where.items())
    untouched = [PART_NAMES[t.role] for t in arch.towers if t.role not in where]
    shown = f"'{target_modules}'" if isinstance(target_modules, str) else str(list(target_modules))
    text = f"target_modules {shown} reaches: {reached}"
    if untouched:
        text += f"; not adapted: {', '.join(untouched)}"
    example = _lm_example_regex(arch)
    if ("vision" in where or "audio" in where) and example:
        text += (f" (to adapt the {part_name(arch, 'blocks')} only, anchor the targets with a regex such as "
                 f"r'{example}' or use exclude_modules)")
    return text


def _lm_prefix(arch: ArchSpec) -> str | None:
    """The module path of the language model's layer stack, e.g. ``model.language_model``."""
    example = next((f.example for f in arch.linear_families if f.scope == "blocks"), "")
    prefix = re.split(r"\.(?:layers|blocks|h)\.\d+\.", example)[0]
    return prefix if prefix and prefix != example else None


def _lm_regex(arch: ArchSpec, names: list[str]) -> str | None:
    """A target_modules regex for ``names`` under the language model's layer stack (None: no such path)."""
    prefix = _lm_prefix(arch)
    return rf"{re.escape(prefix)}\..*\.({'|'.join(names)})" if prefix and names else None


def _lm_example_regex(arch: ArchSpec) -> str | None:
    """A regex for two attention projections of the language model only (q/v where they exist)."""
    names = [f.name for f in arch.linear_families if f.scope == "blocks"]
    return _lm_regex(arch, [n for n in ("q_proj", "v_proj") if n in names] or names[:2])


def language_model_regex(arch: ArchSpec, names: list[str]) -> str | None:
    """A target_modules regex that reaches ``names`` in the language model only (None: not needed)."""
    tower_names = {f.name for f in arch.linear_families if f.scope in ("vision", "audio", "projector")}
    if not arch.towers or not (set(names) & tower_names):
        return None
    return _lm_regex(arch, names)
