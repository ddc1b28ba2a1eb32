"""Read the parallel settings of a launch: TrainingArguments, a DeepSpeed JSON, an accelerate YAML.

Each reader returns keyword arguments for :func:`lora_doctor.plan` (``num_gpus``, ``strategy``,
``offload``, ``parallel_options``, and ``mixed_precision`` when the config decides it). Nothing is
executed; a config that cannot be planned raises :class:`~lora_doctor.InvalidSettingError` with the
key at fault.

* DeepSpeed: ``zero_optimization.stage`` (0 = DDP), ``offload_optimizer.device`` /
  ``offload_param.device`` (``cpu`` or ``nvme``: off the GPU either way), the bucket sizes
  (``"auto"`` kept, resolved from hidden_size as the Trainer does), ``overlap_comm``.
* TrainingArguments (after ``__post_init__``): ``world_size``, ``fsdp`` + ``fsdp_config``
  (``reshard_after_forward``, ``cpu_offload``; prefixed ``fsdp_`` keys accepted), ``deepspeed``,
  ``ddp_bucket_cap_mb``.
* accelerate ``config.yaml``: ``distributed_type`` (MULTI_GPU, FSDP, DEEPSPEED, NO),
  ``num_processes``, ``num_machines``, ``fsdp_config``, ``deepspeed_config``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import InvalidSettingError

_BUCKET_KEYS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                "stage3_param_persistence_threshold", "stage3_max_live_parameters")
_OFF = (None, "none", "None", "")
_STAGE_STRATEGY = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}
# FSDP1 sharding strategies (names or accelerate's 1-based numbers) -> ours.
_FSDP1 = {"FULL_SHARD": "fsdp", "1": "fsdp", "SHARD_GRAD_OP": "fsdp_grad_op", "2": "fsdp_grad_op",
          "NO_SHARD": "ddp", "3": "ddp", "HYBRID_SHARD": "fsdp", "4": "fsdp", "HYBRID_SHARD_ZERO2": "fsdp_grad_op",
          "5": "fsdp_grad_op"}


def _load(source: str | Path | Mapping[str, Any], kind: str) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSettingError(f"cannot read {kind} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise InvalidSettingError(f"{kind} {str(path)!r} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidSettingError(f"{kind} {str(path)!r} must hold a mapping at the top level")
    return data


def _enabled(section: Any) -> bool | None:
    if not isinstance(section, Mapping):
        return None
    value = section.get("enabled")
    return None if value == "auto" else bool(value) if value is not None else None


def from_deepspeed_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """plan() kwargs from a DeepSpeed config (a path to the JSON or the dict the Trainer takes)."""
    cfg = _load(source, "DeepSpeed config")
    zero = cfg.get("zero_optimization") or {}
    if not isinstance(zero, Mapping):
        raise InvalidSettingError("DeepSpeed config: zero_optimization must be a mapping")
    stage = zero.get("stage", 0)
    if stage not in _STAGE_STRATEGY:
        raise InvalidSettingError(f"DeepSpeed config: zero_optimization.stage must be 0-3, got {stage!r}")
    out: dict[str, Any] = {"strategy": _STAGE_STRATEGY[stage]}
    opt_dev = (zero.get("offload_optimizer") or {}).get("device")
    param_dev = (zero.get("offload_param") or {}).get("device")
    if param_dev not in _OFF:
        if stage != 3:
            raise InvalidSettingError(f"DeepSpeed config: offload_param needs stage 3 (stage is {stage}); "
                                      "use offload_optimizer, or stage 3")
        out["offload"] = "all"
    elif opt_dev not in _OFF:
        if stage == 0:
            raise InvalidSettingError("DeepSpeed config: offload_optimizer needs ZeRO stage 1-3 (stage is 0)")
        out["offload"] = "optimizer"
    options = {k: zero[k] for k in _BUCKET_KEYS if k in zero}
    for key, value in options.items():
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise InvalidSettingError(f"DeepSpeed config: zero_optimization.{key} must be a number or 'auto', "
                                      f"got {value!r}")
        if value != "auto":
            options[key] = int(value)
    if "overlap_comm" in zero and zero["overlap_comm"] != "auto":
        options["overlap_comm"] = bool(zero["overlap_comm"])
    if stage and options:
        out["parallel_options"] = options
    for name in ("bf16", "fp16"):
        if _enabled(cfg.get(name)):
            out["mixed_precision"] = name
    return out


def _fsdp_kwargs(fsdp_config: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in dict(fsdp_config or {}).items()}
    version = int(cfg.get("version", 2))
    reshard = cfg.get("reshard_after_forward", True if version == 2 else "FULL_SHARD")
    if version == 2:
        strategy = "fsdp" if str(reshard).lower() in ("true", "1") else "fsdp_grad_op"
    else:
        strategy = _FSDP1.get(str(cfg.get("sharding_strategy", reshard)).upper())
        if strategy is None:
            raise InvalidSettingError(f"fsdp_config: unknown sharding strategy {reshard!r}; "
                                      "use FULL_SHARD or SHARD_GRAD_OP")
    out: dict[str, Any] = {"strategy": strategy}
    if str(cfg.get("cpu_offload", cfg.get("offload_params", False))).lower() in ("true", "1"):
        out["offload"] = "all"
    return out


def from_training_args(args: Any, *, num_gpus: int | None = None) -> dict[str, Any]:
    """plan() kwargs from a ``transformers.TrainingArguments`` (``num_gpus`` overrides its world size)."""
    world = num_gpus if num_gpus is not None else int(getattr(args, "world_size", 1) or 1)
    out: dict[str, Any] = {"num_gpus": world}
    if getattr(args, "deepspeed", None):
        out.update(from_deepspeed_config(args.deepspeed))   # a path or the dict the Trainer took
    elif getattr(args, "fsdp", None):
        out.update(_fsdp_kwargs(getattr(args, "fsdp_config", None) or {}))
    elif world > 1:
        out["strategy"] = "ddp"
        if getattr(args, "ddp_bucket_cap_mb", None) is not None:
            out["parallel_options"] = {"bucket_cap_mb": args.ddp_bucket_cap_mb}
    for name in ("bf16", "fp16"):
        if getattr(args, name, False):
            out["mixed_precision"] = name
    return out


def from_accelerate_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """plan() kwargs from accelerate's ``config.yaml`` (``accelerate config`` writes it)."""
    cfg = _load(source, "accelerate config")
    kind = str(cfg.get("distributed_type", "NO")).upper()
    processes = cfg.get("num_processes", 1)
    machines = cfg.get("num_machines", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise InvalidSettingError(f"accelerate config: num_processes must be a positive integer, got {processes!r}")
    out: dict[str, Any] = {"num_gpus": processes}
    if kind == "FSDP":
        out.update(_fsdp_kwargs(cfg.get("fsdp_config") or {}))
    elif kind == "DEEPSPEED":
        ds = dict(cfg.get("deepspeed_config") or {})
        if ds.get("deepspeed_config_file"):
            out.update(from_deepspeed_config(ds["deepspeed_config_file"]))
        else:
            zero: dict[str, Any] = {"stage": ds.get("zero_stage", 2)}
            for key, target in (("offload_optimizer_device", "offload_optimizer"),
                                ("offload_param_device", "offload_param")):
                if ds.get(key) not in _OFF:
                    zero[target] = {"device": ds[key]}
            out.update(from_deepspeed_config({"zero_optimization": zero}))
    elif kind in ("MULTI_GPU", "MULTI_CPU"):
        out["strategy"] = "ddp" if processes > 1 else None
    elif kind not in ("NO",):
        raise InvalidSettingError(f"accelerate config: distributed_type {kind!r} is not planned; "
                                  "use MULTI_GPU, FSDP or DEEPSPEED")
    if isinstance(machines, int) and machines > 1:
        out.setdefault("parallel_options", {})["gpus_per_node"] = processes // machines
    mp = str(cfg.get("mixed_precision", "no")).lower()
    if mp in ("bf16", "fp16"):
        out["mixed_precision"] = mp
    if out.get("strategy") is None:
        out.pop("strategy", None)
    return out
