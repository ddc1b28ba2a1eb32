"""``diagnose``: gather facts about the model and the configs once, run every check, return a DoctorReport.

This is the only glue module: it resolves the model (meta device for hub ids and configs, the real
tensors for a loaded model), normalizes the settings, and hands plain data to the pure checks.
"""

from __future__ import annotations

import dataclasses

from typing import Any

from ..errors import InvalidSettingError
from ..findings import Finding
from ..models import ResolvedModel, resolve
from .adapters import ModelFacts, gather_facts
from .dry_run import DEFAULT_MAX_PARAMS, dry_run as run_dry
from .dtypes import check_adapter_dtypes, check_fp16_trainable, check_quantization
from .moe_quant import check_moe_quantization
from .init import check_init_setting, check_init_tensors
from .inventory import LINEAR_KINDS, ModuleInventory, gather
from .matching import TargetMatch, family_names, match_targets
from .multimodal import check_projector_new_tokens
from .report import DoctorReport
from .scaling import check_capacity, check_scale, scale_summary
from .settings import LoraSettings, QuantSettings, TrainingSettings
from .targets import TARGET_CHECKS
from .tokenizer import TokenizerFacts, check_tokenizer, masks_padding_by_length
from .training import check_checkpointing, check_trainable


def _active_peft_config(module: Any) -> Any:
    configs = getattr(module, "peft_config", None)
    if not configs:
        return None
    active = getattr(module, "active_adapter", None)
    active = active[0] if isinstance(active, (list, tuple)) else active
    return configs.get(active) or next(iter(configs.values()))


def _bf16_available(t: TrainingSettings) -> bool | None:
    if t.bf16:
        return True
    try:
        import torch

        return bool(torch.cuda.is_bf16_supported()) if torch.cuda.is_available() else None
    except Exception:  # pragma: no cover - a broken CUDA setup is not the doctor's business
        return None


def checkpointing_adds_input_hook(module: Any = None) -> bool:
    """Whether enabling checkpointing through transformers calls enable_input_require_grads() by itself.

    transformers 5 does so for models whose main input is ``input_ids``; older releases only for adapters
    loaded through its own peft integration. Read from the installed source, so it follows upgrades.
    """
    import inspect

    from transformers import PreTrainedModel

    method = getattr(PreTrainedModel, "_activation_checkpointing_enable", None) or PreTrainedModel.gradient_checkpointing_enable
    try:
        adds = "needs_embedding_grads" in inspect.getsource(method) and "enable_input_require_grads" in inspect.getsource(method)
    except (OSError, TypeError):  # pragma: no cover - source not available
        adds = False
    if module is not None:
        base = module.get_base_model() if callable(getattr(module, "get_base_model", None)) else module
        adds = adds and isinstance(base, PreTrainedModel) and getattr(base, "main_input_name", "") == "input_ids"
    return adds


def _quant(quantization_config: Any, resolved: ResolvedModel, facts: ModelFacts | None) -> QuantSettings:
    if quantization_config is None:
        quantization_config = getattr(resolved.config(), "quantization_config", None)
    q = QuantSettings.from_any(quantization_config)
    if q.bits is None and facts is not None and facts.quant_bits:
        return QuantSettings(facts.quant_bits, q.quant_type, q.compute_dtype, q.double_quant)
    return q


def _summary(s: LoraSettings, inv: ModuleInventory, match: TargetMatch) -> dict:
    by_name = inv.by_name()
    covered = {n.rsplit(".", 1)[-1] for n in match.matched}
    adapter_params = sum(s.r * (by_name[n].in_features + by_name[n].out_features)
                         for n in match.matched if by_name[n].kind in LINEAR_KINDS)
    targets = list(s.target_modules) if isinstance(s.target_modules, tuple) else s.target_modules
    return {
        "model_type": inv.model_type,
        "targets": targets,
        "targets_from_peft_defaults": not s.explicit_targets,
        "target_parameters": list(s.target_parameters),
        "matched_per_pattern": {p: len(names) for p, names in match.per_pattern.items()},
        "matched_modules": len(match.matched),
        "coverage": {f: f in covered for f in family_names(inv.modules)},
        "scale": scale_summary(s, match.matched),
        "r": s.r, "lora_alpha": s.lora_alpha, "use_rslora": s.use_rslora,
        "adapter_params": adapter_params,
        "moe_expert_params": len(inv.expert_params),
    }


def _as_peft_converts(settings: LoraSettings, model: Any) -> LoraSettings:
    """peft (with transformers 5) rewrites targets of MoE models whose experts became fused 3-D parameters
    (Mixtral's w1/w2/w3 -> target_parameters); check the config peft will actually use."""
    try:
        from peft.utils.transformers_weight_conversion import (
            convert_peft_config_for_transformers, get_model_conversion_mapping,
        )

        config = settings.to_peft()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        convert_peft_config_for_transformers(config, model=base, conversions=get_model_conversion_mapping(base))
        converted = LoraSettings.from_any(config)
    except Exception:  # an older peft without the conversion, or a config it cannot take: check as given
        return settings
    return dataclasses.replace(converted, explicit_targets=settings.explicit_targets)


def _check_arguments(num_examples: Any, dry_run: Any, max_params: Any) -> None:
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    problems = [msg for ok, msg in (
        (num_examples is None or count(num_examples), f"num_examples must be None or a count, got {num_examples!r}"),
        (isinstance(dry_run, bool), f"dry_run must be True or False, got {dry_run!r}"),
        (count(max_params), f"dry_run_max_params must be a count, got {max_params!r}"),
    ) if not ok]
    if problems:
        raise InvalidSettingError("; ".join(problems))


def diagnose(model: Any, lora_config: Any = None, *, training_args: Any = None, tokenizer: Any = None,
             quantization_config: Any = None, dry_run: bool = False, num_examples: int | None = None,
             dry_run_max_params: int = DEFAULT_MAX_PARAMS, data_collator: Any = None) -> DoctorReport:
    """Pre-flight checks of a LoRA setup; every finding names its cause and its fix.

    ``model``: a hub id, path, config or dict (built on the meta device), a loaded model, or a ``PeftModel``
    (then its real adapter tensors are inspected and, without ``lora_config``, its active adapter's config is
    used). ``lora_config``: a ``LoraConfig``, a dict of its fields, or None for peft's defaults.
    ``dry_run=True`` runs one forward and backward on a tiny synthetic batch. ``data_collator``: the
    Trainer's collator; TRL's mask padding by position, so pad == eos is no problem there. Raises LoraDoctorError
    subclasses for inputs it cannot use (unknown model, invalid setting).
    """
    _check_arguments(num_examples, dry_run, dry_run_max_params)
    resolved = resolve(model)
    module = resolved.module
    settings = LoraSettings.from_any(lora_config if lora_config is not None else _active_peft_config(module),
                                     resolved.arch.default_targets)
    training = TrainingSettings.from_any(training_args)
    facts = gather_facts(module) if module is not None else None
    model_obj = module if module is not None else resolved.meta_model()
    inv = gather(model_obj)
    if inv.expert_params and not (facts is not None and facts.is_peft):
        settings = _as_peft_converts(settings, model_obj)
    match = match_targets(settings, inv.modules)

    findings: list[Finding] = []
    for check in TARGET_CHECKS:
        findings += check(settings, inv, match)
    findings += check_scale(settings, match.matched)
    findings += check_capacity(settings, num_examples)
    findings += check_init_setting(settings.init_lora_weights)
    if facts is not None and not facts.meta:
        if facts.adapters:
            findings += check_init_tensors(facts.adapters, settings.init_lora_weights)
        if facts.is_peft:
            findings += check_trainable(facts, settings)
        findings += check_fp16_trainable(training, facts)
        findings += check_adapter_dtypes(facts)
    if training.gradient_checkpointing or (facts is not None and facts.checkpointing):
        peft_facts = facts if facts is not None and facts.is_peft else None
        findings += check_checkpointing(training, peft_facts, checkpointing_adds_input_hook(module))
    quant = _quant(quantization_config, resolved, facts)
    findings += check_quantization(quant, _bf16_available(training))
    findings += check_moe_quantization(quant, inv)
    if tokenizer is not None:
        rows = next((m.in_features for m in inv.modules if m.name == inv.input_embedding), resolved.arch.vocab_size)
        emb_names = [m.name.rsplit(".", 1)[-1] for m in inv.modules if m.scope in ("embedding", "head")]
        tok_facts = TokenizerFacts.from_tokenizer(tokenizer)
        findings += check_tokenizer(tok_facts, settings, rows, emb_names, masks_padding_by_length(data_collator))
        findings += check_projector_new_tokens(tok_facts, settings, inv, match)
    if dry_run:
        findings += run_dry(resolved, settings, training, dry_run_max_params)
    return DoctorReport(resolved.name, findings, _summary(settings, inv, match))
