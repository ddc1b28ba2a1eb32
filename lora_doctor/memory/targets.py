"""Which linear families LoRA wraps, following peft's matching rules on ArchSpec data (no torch).

peft: a list of names matches a module whose full path equals a name or ends with ``.name``;
a string is a regular expression matched with ``re.fullmatch`` against the full path;
``"all-linear"`` is every linear layer except the output head. Families share their path
pattern modulo the layer index, so matching one example path decides the whole family.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from ..arch import ArchSpec, LinearFamily
from ..errors import InvalidSettingError


def normalize_targets(target_modules: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """Accept a list, a comma-separated string of names, a regex string, "all-linear" or None.

    The one rule for the API, ``plan`` and ``check``: an empty list (or ``","``) is an error, not the default.
    """
    if target_modules is None:
        return None
    if isinstance(target_modules, str):
        text = target_modules.strip()
        if text.lower() == "all-linear":  # peft compares case-insensitively
            return "all-linear"
        if not text or "," in text or re.fullmatch(r"[A-Za-z0-9_.]+", text):
            names = tuple(part.strip() for part in text.split(",") if part.strip())
            if not names:
                raise InvalidSettingError(f"target_modules {target_modules!r} names no module; pass names, a regex "
                                          "or 'all-linear' (or leave it out for peft's default)")
            return names
        try:
            re.compile(text)
        except (re.error, RecursionError, OverflowError) as exc:
            raise InvalidSettingError(f"target_modules regex {text!r} does not compile: {exc}") from None
        return text
    if isinstance(target_modules, (bytes, dict)) or not isinstance(target_modules, Iterable):
        raise InvalidSettingError(f"target_modules must be a list of names, a regex string, 'all-linear' or None, "
                                  f"got {type(target_modules).__name__} {str(target_modules)[:40]!r}")
    names = tuple(target_modules)
    bad = [t for t in names if not isinstance(t, str) or not t.strip()]
    if bad:
        raise InvalidSettingError(f"target_modules must hold non-empty module names (strings), got {bad[0]!r}")
    if not names:
        raise InvalidSettingError("target_modules is empty; pass names, a regex or 'all-linear' "
                                  "(or leave it out for peft's default)")
    return names


# What the planner adapts when peft has no default target_modules for the architecture (Phi-3, ...):
# every linear layer except the output head, as peft's "all-linear" (the QLoRA paper's recipe). It names
# the same layers on every architecture, where the attention projections are spelled differently.
FALLBACK_TARGETS = "all-linear"


def fallback_targets_note(arch: ArchSpec, target_modules: object) -> str | None:
    """The note a plan carries when it used :data:`FALLBACK_TARGETS` because peft has no default."""
    if target_modules is not None or arch.default_targets:
        return None
    return (f"peft has no default target_modules for model_type {arch.model_type!r}: planned with "
            f"target_modules={FALLBACK_TARGETS!r}; get_peft_model needs them passed explicitly")


def _matches(target: str | tuple[str, ...], family: LinearFamily) -> bool:
    path = family.example or family.name
    if isinstance(target, str):
        return re.fullmatch(target, path) is not None
    return any(path == name or path.endswith("." + name) for name in target)


def targeted_families(arch: ArchSpec, target_modules: str | Sequence[str] | None) -> list[LinearFamily]:
    """The families LoRA would wrap. ``None`` means peft's default for the architecture (or
    :data:`FALLBACK_TARGETS` when peft has none)."""
    target = normalize_targets(target_modules)
    if target is None:  # peft's default, or the documented fallback (see fallback_targets_note)
        target = tuple(arch.default_targets) or FALLBACK_TARGETS
    if target == "all-linear":
        return [f for f in arch.linear_families if f.scope != "head"]
    found = [f for f in arch.linear_families if _matches(target, f)]
    if not found:  # peft's get_peft_model raises here too
        names = sorted({f.name for f in arch.linear_families})
        raise InvalidSettingError(
            f"target_modules {target_modules!r} matches no linear layer of this {arch.model_type} model; "
            f"its linear layers are {', '.join(names)} (see `lora-doctor modules` / `lora-doctor check`)"
        )
    return found


def non_tensor_targets_note(arch: ArchSpec, target_modules: str | Sequence[str] | None) -> str | None:
    """The note a plan carries when the targets reach linear layers peft's LoRA cannot wrap: ``nn.Linear``
    subclasses whose forward returns a tuple (MoE routers of PhiMoE and Llama-4), which ``"all-linear"``
    selects by class. peft's LoRA layer reads the output's ``.dtype``, so the first forward raises."""
    def say(hit: list[str], ok: list[str]) -> str:
        return (f"target_modules={_show(target_modules)} wraps {', '.join(hit)}: a linear layer whose forward returns a "
                "tuple (an MoE router), so peft's LoRA layer fails at the first forward ('tuple' object has no attribute "
                f"'dtype'); add exclude_modules={hit} or pass target_modules={ok}. Planned as given")

    return _note(arch, target_modules, "non_tensor_linears", say)


def reshaped_targets_note(arch: ArchSpec, target_modules: str | Sequence[str] | None) -> str | None:
    """The note a plan carries when the targets reach linear layers whose forward does not return
    ``[..., out_features]`` (DeepSeek-V4's grouped ``o_a_proj``): peft adds LoRA's ``[..., out_features]``
    output to it, so the first forward raises."""
    def say(hit: list[str], ok: list[str]) -> str:
        return (f"target_modules={_show(target_modules)} wraps {', '.join(hit)}: a grouped linear layer whose output is "
                "not [..., out_features], so adding peft's LoRA output fails at the first forward (RuntimeError: the size "
                f"of tensor a must match the size of tensor b); add exclude_modules={hit} or pass target_modules={ok}. "
                "Planned as given")

    return _note(arch, target_modules, "reshaping_linears", say)


def peft_refused_note(arch: ArchSpec, target_modules: str | Sequence[str] | None) -> str | None:
    """The note a plan carries when the targets reach linear layers peft's LoRA refuses for this model type
    (the Mamba mixers' ``out_proj``: ``get_peft_model`` raises before training starts)."""
    def say(hit: list[str], ok: list[str]) -> str:
        return (f"target_modules={_show(target_modules)} includes {', '.join(hit)}, which peft refuses for "
                f"{arch.model_type} models (get_peft_model raises \"Module '{hit[0]}' is incompatible with Mamba-based "
                f"models\"); add exclude_modules={hit} or pass target_modules={ok}. Planned as given")

    return _note(arch, target_modules, "peft_refused_linears", say)


def _note(arch: ArchSpec, target_modules: str | Sequence[str] | None, field: str,
          say: Callable[[list[str], list[str]], str]) -> str | None:
    """``say(hit, ok)`` when the targets reach families listed in ``arch.extra[field]`` (:func:`_unwrappable`)."""
    split = _unwrappable(arch, target_modules, field)
    return None if split is None else say(*split)


def _unwrappable(arch: ArchSpec, target_modules: str | Sequence[str] | None,
                 field: str) -> tuple[list[str], list[str]] | None:
    """(targeted families listed in ``arch.extra[field]``, the non-head families outside it), or None when the
    targets reach none of them (or cannot be resolved: the plan says so elsewhere)."""
    bad = set(arch.extra.get(field) or ())
    if not bad:
        return None
    try:
        hit = sorted({f.name for f in targeted_families(arch, target_modules) if f.name in bad})
    except InvalidSettingError:
        return None
    if not hit:
        return None
    return hit, sorted({f.name for f in arch.linear_families if f.scope != "head" and f.name not in bad})


def _show(target_modules: object) -> str:
    return repr(list(target_modules)) if isinstance(target_modules, tuple) else repr(target_modules)
