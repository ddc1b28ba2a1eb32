"""The doctor's inputs, normalized to plain dataclasses (no torch, no peft import).

``lora_config`` may be a peft ``LoraConfig``, a ``dict`` of its fields, or ``None`` (peft's defaults
for the architecture); ``training_args`` a ``transformers.TrainingArguments`` or anything with the
same attributes; ``quantization_config`` a ``BitsAndBytesConfig`` or a dict of its fields.
"""

from __future__ import annotations

import math
import re

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import InvalidSettingError

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraSettings:
    """The LoraConfig fields the checks read, with peft's defaults."""

    target_modules: Any = None             # None | "all-linear" | regex str | tuple of names
    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    use_rslora: bool = False
    init_lora_weights: Any = True
    bias: str = "none"
    fan_in_fan_out: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()
    trainable_token_indices: Any = None
    target_parameters: tuple[str, ...] = ()
    exclude_modules: Any = None
    layers_to_transform: Any = None
    layers_pattern: Any = None
    task_type: str | None = None
    ensure_weight_tying: bool = False
    explicit_targets: bool = True          # False when target_modules came from peft's per-arch defaults

    @classmethod
    def from_any(cls, config: Any, default_targets: tuple[str, ...] = ()) -> "LoraSettings":
        if config is None:
            raw: dict = {}
        elif not isinstance(config, dict) and not hasattr(config, "target_modules"):
            raise InvalidSettingError(f"lora_config must be a peft LoraConfig, a dict of its fields or None, "
                                      f"got {type(config).__name__}")
        elif isinstance(config, dict):
            raw = dict(config)
        else:
            raw = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
            task = getattr(config, "task_type", None)
            raw["task_type"] = getattr(task, "value", task)
        known = {f.name for f in fields(cls)}
        if isinstance(config, dict):
            _reject_unknown(set(raw) - known)
        kwargs = {k: v for k, v in raw.items() if k in known and v is not None}
        _check_types(kwargs)
        targets = kwargs.get("target_modules")
        if isinstance(targets, (list, tuple, set, frozenset)):
            kwargs["target_modules"] = tuple(sorted(targets)) if isinstance(targets, (set, frozenset)) else tuple(targets)
        if targets is not None and len(targets) == 0 and not kwargs.get("target_parameters"):
            raise InvalidSettingError("target_modules is empty; pass names, a regex or 'all-linear' "
                                      "(or leave it out for peft's default)")  # the same rule as plan()
        if targets is None and not kwargs.get("target_parameters"):
            kwargs["target_modules"] = tuple(default_targets)
            kwargs["explicit_targets"] = False
        for key in ("modules_to_save", "target_parameters"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Hard errors for values peft itself rejects (collected, reported together)."""
        problems = []
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            problems.append(f"r must be a positive integer, got {self.r!r}")
        if not _number(self.lora_dropout) or not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not _number(self.lora_alpha) or self.lora_alpha <= 0:
            problems.append(f"lora_alpha must be a positive finite number, got {self.lora_alpha!r}")
        for name in ("target_modules", "exclude_modules"):
            pattern = getattr(self, name)
            if isinstance(pattern, str) and pattern.lower() != ALL_LINEAR:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    problems.append(f"{name} regex {pattern!r} does not compile: {exc}")
        if isinstance(self.target_modules, str) and self.layers_to_transform not in (None, []):
            problems.append("layers_to_transform cannot be used when target_modules is a str (peft raises the same)")
        if self.bias not in ("none", "all", "lora_only"):
            problems.append(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        if problems:
            raise InvalidSettingError("; ".join(problems))

    @property
    def is_all_linear(self) -> bool:
        return isinstance(self.target_modules, str) and self.target_modules.lower() == ALL_LINEAR

    def to_peft(self) -> Any:
        """A real ``peft.LoraConfig`` with these settings (imports peft)."""
        from peft import LoraConfig

        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "explicit_targets"}
        kwargs["target_modules"] = list(self.target_modules) if isinstance(self.target_modules, tuple) else self.target_modules
        kwargs["modules_to_save"] = list(self.modules_to_save) or None
        kwargs["target_parameters"] = list(self.target_parameters) or None
        return LoraConfig(**kwargs)


@dataclass(frozen=True)
class TrainingSettings:
    fp16: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_reentrant: bool | None = None      # None: not said (transformers 5 defaults to non-reentrant)

    @classmethod
    def from_any(cls, args: Any) -> "TrainingSettings":
        if args is None:
            return cls()
        get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
        gc = bool(get("activation_checkpointing", False) or get("gradient_checkpointing", False))
        kwargs = get("activation_checkpointing_kwargs", None) or get("gradient_checkpointing_kwargs", None) or {}
        reentrant = kwargs.get("use_reentrant") if isinstance(kwargs, dict) else None
        return cls(bool(get("fp16", False)), bool(get("bf16", False)), gc, reentrant)


@dataclass(frozen=True)
class QuantSettings:
    bits: int | None = None                # 4, 8 or None (not quantized)
    quant_type: str = "fp4"                # bitsandbytes' default, which is not the QLoRA recipe
    compute_dtype: str = "float32"         # bitsandbytes' default
    double_quant: bool = False

    @classmethod
    def from_any(cls, config: Any) -> "QuantSettings":
        if config is None:
            return cls()
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        bits = 4 if get("load_in_4bit", False) else 8 if get("load_in_8bit", False) else None
        dtype = get("bnb_4bit_compute_dtype", None) or "float32"
        return cls(bits, str(get("bnb_4bit_quant_type", "fp4") or "fp4"), dtype_name(dtype),
                   bool(get("bnb_4bit_use_double_quant", False)))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _names(v: Any) -> bool:
    return isinstance(v, (list, tuple, set, frozenset)) and all(isinstance(x, str) for x in v)


def _pattern_map(value_ok: Any) -> Any:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and value_ok(x) for k, x in v.items())


# LoraConfig field -> (accepts, what it must be): a dict config of the wrong types is one clear error.
_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "target_modules": (lambda v: isinstance(v, str) or _names(v), "a list of module names or a regex string"),
    "r": (_integer, "an integer"),
    "lora_alpha": (_number, "a finite number"),
    "lora_dropout": (_number, "a finite number"),
    "use_rslora": (lambda v: isinstance(v, bool), "True or False"),
    "fan_in_fan_out": (lambda v: isinstance(v, bool), "True or False"),
    "ensure_weight_tying": (lambda v: isinstance(v, bool), "True or False"),
    "init_lora_weights": (lambda v: isinstance(v, (bool, str)), "True, False or an initialization name"),
    "bias": (lambda v: isinstance(v, str), "'none', 'all' or 'lora_only'"),
    "rank_pattern": (_pattern_map(lambda x: _integer(x) and x > 0), "a dict {pattern: positive rank}"),
    "alpha_pattern": (_pattern_map(lambda x: _number(x) and x > 0), "a dict {pattern: positive alpha}"),
    "modules_to_save": (_names, "a list of module names"),
    "target_parameters": (_names, "a list of parameter names"),
    "exclude_modules": (lambda v: isinstance(v, str) or _names(v), "a list of module names or a regex string"),
    "layers_to_transform": (lambda v: _integer(v) or (isinstance(v, (list, tuple)) and all(map(_integer, v))),
                            "a layer index or a list of them"),
    "layers_pattern": (lambda v: isinstance(v, str) or _names(v), "a name or a list of names"),
    "task_type": (lambda v: isinstance(v, str), "a task type name such as 'CAUSAL_LM'"),
    "trainable_token_indices": (lambda v: (isinstance(v, (list, tuple)) and all(map(_integer, v)))
                                or _pattern_map(lambda x: isinstance(x, (list, tuple)) and all(map(_integer, x)))(v),
                                "a list of token ids or a dict {module: token ids}"),
}


def _check_types(kwargs: dict) -> None:
    problems = [f"{name} must be {what}, got {str(kwargs[name])[:40]!r}"
                for name, (accepts, what) in _FIELD_TYPES.items() if name in kwargs and not accepts(kwargs[name])]
    if problems:
        raise InvalidSettingError("; ".join(problems))


def _reject_unknown(keys: set[str]) -> None:
    """Keys that are no LoraConfig field at all (a dict from ``LoraConfig.to_dict()`` passes)."""
    if not keys:
        return
    from dataclasses import fields as dc_fields

    from peft import LoraConfig

    unknown = sorted(keys - {f.name for f in dc_fields(LoraConfig)})
    if unknown:
        raise InvalidSettingError(f"unknown LoRA setting(s) {unknown}: not LoraConfig fields")


_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` / ``"bf16"`` / ``"bfloat16"`` -> ``"bfloat16"``."""
    text = str(dtype).removeprefix("torch.").lower()
    return _DTYPE_ALIASES.get(text, text)
