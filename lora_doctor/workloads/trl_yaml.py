"""Read the YAML that ``trl sft|dpo|grpo --config`` takes and turn it into ``plan()`` arguments.

The keys are the fields of TRL's ``ScriptArguments``, ``ModelConfig`` and the trainer's config
(``SFTConfig``, ``DPOConfig``, ``GRPOConfig``, which extend ``TrainingArguments``). With TRL installed
the field names are read from those dataclasses at run time; without it only the keys below are
recognized (and a note says so). A key that is no field at all is an error (one line, exit 2); a field
that changes memory but that the planner does not model is listed in a note, never silently dropped.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidSettingError
from .trl_defaults import TRL_1_16

CONFIG_CLASSES = {"sft": "SFTConfig", "dpo": "DPOConfig", "grpo": "GRPOConfig"}
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
# TrainingArguments and ModelConfig defaults the planner needs when a key is absent.
TRAINING_DEFAULTS = {"per_device_train_batch_size": 8, "optim": "adamw_torch_fused", "gradient_accumulation_steps": 1,
                     "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}   # TrainingArguments / ModelConfig
# YAML key -> plan() keyword, where the meaning is the same.
DIRECT = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout", "use_rslora": "use_rslora",
          "lora_target_modules": "target_modules", "bnb_4bit_quant_type": "quant_type",
          "use_bnb_nested_quant": "double_quant", "attn_implementation": "attn_implementation", "optim": "optim",
          "per_device_train_batch_size": "batch_size", "gradient_checkpointing": "gradient_checkpointing"}
# Fields read by the mapping below besides DIRECT and the trainer options.
READ = {"model_name_or_path", "dtype", "use_peft", "load_in_4bit", "bf16", "fp16", "max_length",
        "gradient_accumulation_steps"}
# Fields that change memory but are not modelled: named in a note when set.
NOT_MODELLED = {"use_dora", "load_in_8bit", "lora_modules_to_save", "lora_target_parameters", "fsdp", "deepspeed",
                "torch_compile", "gradient_checkpointing_kwargs", "model_init_kwargs", "liger_kernel_config",
                "vllm_tensor_parallel_size", "cast_lm_head_to_fp32", "num_iterations"}


def trl_field_names(trainer: str) -> set[str] | None:
    """Every key ``trl <trainer> --config`` accepts, from the installed TRL (None without TRL)."""
    try:
        import dataclasses

        import trl
    except ImportError:
        return None
    classes = (trl.ScriptArguments, trl.ModelConfig, getattr(trl, CONFIG_CLASSES[trainer]))
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def plan_kwargs(data: dict[str, Any], trainer: str, known: set[str] | None) -> tuple[dict[str, Any], list[str]]:
    """``plan()`` keyword arguments (model included) and notes for a ``trl --config`` YAML mapping."""
    if trainer not in CONFIG_CLASSES:
        raise InvalidSettingError(f"--config reads TRL trainer configs: --trainer must be sft, dpo or grpo, got {trainer!r}")
    if not isinstance(data, dict):
        raise InvalidSettingError("the --config file must be a YAML mapping of TRL argument names to values")
    options = TRL_1_16.options[trainer]
    notes: list[str] = []
    if known is None:
        known = set(DIRECT) | READ | set(options) | NOT_MODELLED
        notes.append("TRL is not installed: only the keys lora-doctor reads were recognized")
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidSettingError(f"unknown keys in the {CONFIG_CLASSES[trainer]} YAML: {', '.join(unknown)} "
                                  f"(not fields of TRL's ScriptArguments, ModelConfig or {CONFIG_CLASSES[trainer]})")
    if not data.get("model_name_or_path"):
        raise InvalidSettingError("the --config file has no model_name_or_path (or pass MODEL on the command line)")
    get = lambda k: data.get(k, TRAINING_DEFAULTS.get(k))  # noqa: E731
    kw: dict[str, Any] = {"model": data["model_name_or_path"], "trainer": trainer}
    for key, name in DIRECT.items():
        if get(key) is not None:
            kw[name] = get(key)
    kw.setdefault("gradient_checkpointing", TRL_1_16.gradient_checkpointing)
    if isinstance(kw.get("target_modules"), list) and len(kw["target_modules"]) == 1 and kw["target_modules"][0] == "all-linear":
        kw["target_modules"] = "all-linear"
    if data.get("load_in_4bit") and not data.get("use_peft"):
        raise InvalidSettingError("load_in_4bit: true needs use_peft: true (a 4-bit base only trains adapters)")
    kw["mode"] = "qlora" if data.get("load_in_4bit") else "lora" if data.get("use_peft") else "full"
    dtype = data.get("dtype", "float32")
    if dtype in (None, "auto"):
        dtype = "bfloat16"
        notes.append("dtype: auto planned as bf16 weights")
    if dtype not in DTYPES:
        raise InvalidSettingError(f"dtype must be one of {', '.join(DTYPES)} or auto, got {dtype!r}")
    kw["dtype"] = DTYPES[dtype]
    fp16 = bool(data.get("fp16", False))
    bf16 = data.get("bf16")
    kw["mixed_precision"] = "fp16" if fp16 else "bf16" if (bf16 is None and TRL_1_16.bf16) or bf16 else None
    max_length = data.get("max_length", options.get("max_length"))
    if trainer != "grpo" and max_length is not None:
        kw["seq_len"] = max_length
        notes.append(f"planned at max_length={max_length} tokens per row: the longest example is unknown "
                     "from the config (lora_doctor.plan_trainer reads it from the dataset)")
    for name in options:
        if name in data:
            kw[name] = data[name]
    if trainer == "grpo" and "steps_per_generation" not in data and "generation_batch_size" not in data:
        kw["steps_per_generation"] = get("gradient_accumulation_steps")
    ignored = sorted(k for k in NOT_MODELLED if data.get(k) not in (None, False, [], {}))
    if ignored:
        notes.append(f"not modelled, ignored: {', '.join(ignored)}")
    return kw, notes


def read_yaml(path: str) -> Any:
    """The YAML file's content; unreadable or invalid files are one-line errors."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except OSError as exc:
        raise InvalidSettingError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidSettingError(f"--config {path} is not valid YAML{where}") from None
