"""Which linear families LoRA wraps, following peft's matching rules on ArchSpec data (no torch).

peft: a list of names matches a module whose full path equals a name or ends with ``.name``;
a string is a regular expression matched with ``re.fullmatch`` against the full path;
``"all-linear"`` is every linear layer except the output head. Families share their path
pattern modulo the layer index, so matching one example path decides the whole family.
"""

from __future__ import annotations

import re
from typing import Sequence

from ..arch import ArchSpec, LinearFamily
from ..errors import InvalidSettingError


def normalize_targets(target_modules: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """Accept a list, a comma-separated string of names, a regex string, "all-linear" or None."""
    if target_modules is None:
        return None
    if isinstance(target_modules, str):
        text = target_modules.strip()
        if text.lower() == "all-linear":  # peft compares case-insensitively
            return "all-linear"
        if "," in text or re.fullmatch(r"[A-Za-z0-9_.]+", text):
            names = tuple(part.strip() for part in text.split(",") if part.strip())
            if not names:
                raise InvalidSettingError("target_modules is empty")
            return names
        try:
            re.compile(text)
        except re.error as exc:
            raise InvalidSettingError(f"target_modules regex {text!r} does not compile: {exc}") from None
        return text
    names = tuple(str(t) for t in target_modules)
    if not names:
        raise InvalidSettingError("target_modules is empty")
    return names


def _matches(target: str | tuple[str, ...], family: LinearFamily) -> bool:
    path = family.example or family.name
    if isinstance(target, str):
        return re.fullmatch(target, path) is not None
    return any(path == name or path.endswith("." + name) for name in target)


def targeted_families(arch: ArchSpec, target_modules: str | Sequence[str] | None) -> list[LinearFamily]:
    """The families LoRA would wrap. ``None`` means peft's default for the architecture."""
    target = normalize_targets(target_modules)
    if target is None:
        if not arch.default_targets:
            example = "'all-linear'"
            if arch.towers:   # multimodal: all-linear would also adapt the vision / audio tower
                from ..placement import language_model_regex

                anchored = language_model_regex(arch, ["q_proj", "k_proj", "v_proj", "o_proj"])
                example = f"'{anchored}' for the language model only, or 'all-linear' (towers too)" if anchored \
                    else example
            raise InvalidSettingError(
                f"peft has no default target_modules for model_type {arch.model_type!r}; "
                f"pass target_modules (e.g. {example})"
            )
        target = tuple(arch.default_targets)
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
