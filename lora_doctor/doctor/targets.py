"""Checks on where the adapters go: unmatched patterns, odd matches, coverage, Conv1D, fused layers, MoE."""

from __future__ import annotations

from typing import Callable

from ..findings import Finding
from .inventory import LINEAR_KINDS, SUPPORTED_KINDS, ModuleInventory
from .matching import (ATTENTION_ROLES, FUSED_NAMES, MLP_ROLES, NAME_ROLES, TargetMatch, equivalents, family_names,
                       nearest_names, roles_of)
from .registry import finding
from .settings import LoraSettings
from .wrappable import check_non_tensor_targets, check_peft_refused_targets, check_reshaped_targets


def _some(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _hint(pattern: str, inv: ModuleInventory) -> tuple[list[str], str]:
    roles = NAME_ROLES.get(pattern)
    near = [n for n in nearest_names(pattern, inv.modules)
            if not roles or NAME_ROLES.get(n.rsplit(".", 1)[-1], roles) & roles]
    same_role = [e for e in equivalents(pattern, inv.modules) if e not in near]
    parts = []
    if near:
        parts.append(f"nearest names: {', '.join(near)}")
    if same_role:
        parts.append(f"{inv.model_type} calls this projection {', '.join(same_role)}")
    return near + same_role, "; ".join(parts)


def check_unmatched(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    arch_names = family_names(inv.modules)
    if not s.target_modules and not s.target_parameters:
        return [finding("target-no-match", f"peft has no default target_modules for model_type {inv.model_type!r}, "
                        "so get_peft_model would raise.",
                        f"Pass target_modules, e.g. {arch_names} or 'all-linear'.", architecture_names=arch_names)]
    if m.matched or s.target_parameters:
        out = []
        for p in m.unmatched:
            suggestions, hint = _hint(p, inv)
            out.append(finding(
                "target-partial-match",
                f"target pattern {p!r} matches no module while others do; peft only raises when none match, "
                f"so this pattern is silently ignored{f' ({hint})' if hint else ''}.",
                f"Replace {p!r} with {suggestions[0]!r}." if suggestions else f"Remove {p!r}; this model's linear "
                f"layers are {arch_names}.", pattern=p, suggestions=suggestions))
        return out
    hints = {p: _hint(p, inv) for p in m.per_pattern}
    detail = "; ".join(f"{p!r}: {h}" for p, (_, h) in hints.items() if h)
    regex_tip = ""
    if isinstance(s.target_modules, str) and not s.is_all_linear:
        regex_tip = " A string target is a regex that must match the WHOLE module name (re.fullmatch); start it with '.*'."
    return [finding(
        "target-no-match",
        f"no module matches target_modules={_show(s.target_modules)}, so get_peft_model raises "
        f"'Target modules ... not found in the base model'.{f' {detail}.' if detail else ''}",
        f"Use this {inv.model_type} model's names: {arch_names} (or 'all-linear').{regex_tip}",
        architecture_names=arch_names, suggestions={p: h[0] for p, h in hints.items()})]


def _show(targets: object) -> str:
    return repr(list(targets)) if isinstance(targets, tuple) else repr(targets)


def check_target_parameters(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    out = []
    for t in s.target_parameters:
        if not any(n == t or n.endswith(f".{t}") for n in inv.param_names):
            experts = sorted({".".join(n.split(".")[-3:]) for n, _ in inv.expert_params})
            out.append(finding("target-parameter-no-match", f"target_parameters entry {t!r} matches no parameter.",
                               f"Use parameter name suffixes such as {experts or ['mlp.experts.down_proj']}.",
                               pattern=t))
    return out


def check_unsupported(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    by_name = inv.by_name()
    bad = [by_name[n] for n in m.matched if by_name[n].kind not in SUPPORTED_KINDS]
    if not bad:
        return []
    types = sorted({b.type_name for b in bad})
    inner = sorted({c.name.rsplit(".", 1)[-1] for b in bad for c in inv.modules
                    if c.kind in LINEAR_KINDS and c.name.startswith(b.name + ".")})
    experts = [n for n, _ in inv.expert_params if any(n.startswith(b.name + ".") for b in bad)]
    fix = f"Target the linear layers inside instead: {inner}." if inner else "Target nn.Linear / Conv1D / Embedding layers."
    if experts:
        fix += f" Expert weights are 3-D parameters: use target_parameters={sorted({'.'.join(n.split('.')[-3:]) for n in experts})}."
    return [finding("target-unsupported-type",
                    f"target_modules match {len(bad)} module(s) of a type LoRA cannot wrap ({', '.join(types)}): "
                    f"{_some([b.name for b in bad])}; get_peft_model raises 'Target module ... is not supported'.",
                    fix, modules=[b.name for b in bad], types=types)]


def _names_vision(target_modules: object) -> bool:
    """A regex that names the vision tower itself: adapting it is what the user meant."""
    return isinstance(target_modules, str) and any(t in target_modules.lower() for t in ("vision", "visual"))


def check_unusual(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    by_name = inv.by_name()
    scopes = {by_name[n].scope for n in m.matched}
    hit = lambda scope: [n for n in m.matched if by_name[n].scope == scope]  # noqa: E731
    out = []
    if "head" in scopes:
        out.append(finding("target-output-head", f"the output head {hit('head')[0]!r} is adapted: a vocab-sized "
                           "projection that is rarely what a fine-tune means and costs r x vocab parameters.",
                           "Drop it from target_modules (peft's 'all-linear' leaves it out); to train the head "
                           "fully, use modules_to_save instead.", modules=hit("head")))
        if inv.tied_head and not s.ensure_weight_tying:
            out.append(finding("target-tied-head", f"{hit('head')[0]!r} shares its weight with the input embeddings "
                               "(tie_word_embeddings=True): the adapter changes only the output side, and merging writes "
                               "into the shared weight, changing the embeddings too.",
                               "Drop the head from the targets, set ensure_weight_tying=True, or load the model with "
                               "tie_word_embeddings=False.", modules=hit("head")))
    if "embedding" in scopes:
        out.append(finding("target-embedding", f"embedding layer(s) {_some(hit('embedding'))} are adapted; LoRA on "
                           "embeddings is rarely meant and cannot learn rows for new tokens well.",
                           "Remove them from target_modules; to train new tokens use trainable_token_indices or "
                           "modules_to_save.", modules=hit("embedding")))
    if "vision" in scopes and not _names_vision(s.target_modules):
        out.append(finding("target-vision-tower", f"{len(hit('vision'))} layer(s) of the vision tower are adapted "
                           f"({_some(hit('vision'))}), usually by a bare name or 'all-linear' meant for the language model.",
                           "Anchor the targets to the language model with a regex, e.g. "
                           "r'.*language_model.*\\.(q_proj|v_proj)', or add the vision tower to exclude_modules.",
                           modules=hit("vision")))
    if {"encoder", "decoder"} <= scopes:
        out.append(finding("target-encoder-and-decoder", f"adapters go into both the encoder ({len(hit('encoder'))}) "
                           f"and the decoder ({len(hit('decoder'))}) of this encoder-decoder model.",
                           "Fine if intended (peft's default for T5 does this); otherwise restrict with a regex such as "
                           "r'decoder\\..*\\.(q|v)'.", encoder=len(hit("encoder")), decoder=len(hit("decoder"))))
    return out


def check_coverage(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    families = family_names(inv.modules)
    if not m.matched or not families:
        return []
    covered = {n.rsplit(".", 1)[-1] for n in m.matched}
    uncovered = [f for f in families if f not in covered and NAME_ROLES.get(f, frozenset()) & (ATTENTION_ROLES | MLP_ROLES)]
    if not uncovered:
        return []
    roles = roles_of(sorted(covered))
    attention = [f for f in uncovered if NAME_ROLES[f] & ATTENTION_ROLES and not NAME_ROLES[f] <= roles]
    mlp = [f for f in uncovered if NAME_ROLES[f] & MLP_ROLES and not NAME_ROLES[f] <= roles]
    if not attention and not mlp:
        return []
    said = []
    if attention:
        said.append(f"attention projections {attention} are not adapted")
    if mlp:
        said.append(f"MLP projections {mlp} are not adapted")
    suggested = family_names(inv.modules)
    return [finding("coverage-partial", f"{' and '.join(said)} (adapted: {sorted(covered)}). q and v only is the "
                    "original paper's default and converges slower than adapting every projection.",
                    f"Adapt all attention projections, plus the MLP ones for generation tasks: target_modules={suggested} "
                    "(or 'all-linear').", covered=sorted(covered), uncovered=attention + mlp, suggested=suggested)]


def check_fan_in_fan_out(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    by_name = inv.by_name()
    kinds = {by_name[n].kind for n in m.matched}
    if "conv1d" in kinds and not s.fan_in_fan_out:
        return [finding("fan-in-fan-out", "the targets are GPT-2-style Conv1D layers, whose weight is stored "
                        "transposed (in x out), but fan_in_fan_out=False; peft flips it with a warning, and a merge "
                        "done outside peft would use the wrong orientation.",
                        "Set fan_in_fan_out=True in the LoraConfig.", kind="conv1d")]
    if s.fan_in_fan_out and "linear" in kinds and "conv1d" not in kinds:
        return [finding("fan-in-fan-out", "fan_in_fan_out=True but the targets are nn.Linear layers (weight stored "
                        "out x in); peft resets it with a warning.", "Set fan_in_fan_out=False.", kind="linear")]
    return []


def check_fused(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    fused = sorted({n.rsplit(".", 1)[-1] for n in m.matched} & FUSED_NAMES)
    if not fused:
        return []
    return [finding("target-fused-projection", f"the targets include fused projections {fused}: one adapter spans "
                    "several projections (q, k and v, or gate and up), so it cannot be loaded onto an implementation "
                    "with separate layers, and its rank is shared between them.",
                    "Keep the base model's implementation for inference, or convert the adapter when changing it; "
                    "consider a larger r for fused layers.", fused=fused)]


def check_moe(s: LoraSettings, inv: ModuleInventory, m: TargetMatch) -> list[Finding]:
    if not inv.expert_params or s.target_parameters:
        return []
    suggested = sorted({".".join(n.split(".")[-3:]) for n, _ in inv.expert_params})
    wanted_mlp = s.is_all_linear or bool(roles_of(list(m.per_pattern)) & MLP_ROLES)
    return [finding("moe-experts-not-targeted", f"{len(inv.expert_params)} MoE expert weights are stored as 3-D "
                    "parameters, which target_modules (and 'all-linear') never reach: only attention and other "
                    "nn.Linear layers get adapters, the experts (most of the parameters) stay frozen.",
                    f"Add target_parameters={suggested} to the LoraConfig to adapt the experts.",
                    severity="warning" if wanted_mlp else "info", suggested=suggested)]


TARGET_CHECKS: tuple[Callable[[LoraSettings, ModuleInventory, TargetMatch], list[Finding]], ...] = (
    check_unmatched, check_target_parameters, check_unsupported, check_non_tensor_targets, check_reshaped_targets,
    check_peft_refused_targets, check_unusual,
    check_coverage, check_fan_in_fan_out, check_fused, check_moe,
)
