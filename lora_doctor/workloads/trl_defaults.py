"""The TRL defaults the workload models assume, keyed on the TRL version they were read from.

Each TRL release changes what its trainers do per step (the fused LM head arrived in 1.x, GRPO's
default ``beta`` went from 0.04 to 0.0, ``max_seq_length`` became ``max_length``), so the planner
says which version's defaults it used. The installed version is read from the package metadata
(``importlib.metadata``: no ``import trl``, no torch). Versions we have not read are planned with
the newest defaults we know, and the plan says so in a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class TrlDefaults:
    """What one TRL minor version does by default (read from its ``*_config.py`` and ``*_trainer.py``)."""

    version: str
    fused_lm_head: bool               # SFT/DPO/GRPO patch trl.trainer.utils.add_fused_lm_head
    head_vocab_chunk: int             # _CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary columns per tile
    head_token_chunk: int             # kernels.chunked_logprob.TOKEN_CHUNK_SIZE: tokens per tile
    gradient_checkpointing: bool      # TRL's configs turn it on by default
    bf16: bool                        # TRL's configs turn bf16 autocast on unless fp16 is set
    options: dict[str, dict[str, Any]]   # trainer -> {option: default}, as the config spells them


# TRL 1.16.0: trl/trainer/{sft,dpo,grpo}_config.py and base_config.py.
TRL_1_16 = TrlDefaults(
    version="1.16", fused_lm_head=True, head_vocab_chunk=32768, head_token_chunk=4096,
    gradient_checkpointing=True, bf16=True,
    options={
        "hf": {},
        "sft": {"max_length": 1024, "packing": False, "padding_free": False, "activation_offloading": False,
                "use_liger_kernel": False},
        "dpo": {"max_length": 1024, "padding_free": False, "precompute_ref_log_probs": False, "beta": 0.1,
                "disable_dropout": True, "activation_offloading": False, "use_liger_kernel": False},
        "grpo": {"max_completion_length": 512, "num_generations": 8, "generation_batch_size": None,
                 "steps_per_generation": None, "beta": 0.0, "use_vllm": False, "vllm_mode": "colocate",
                 "vllm_gpu_memory_utilization": 0.3, "use_liger_kernel": False,
                 "disable_dropout": False},
    },
)

KNOWN: dict[str, TrlDefaults] = {"1.16": TRL_1_16}
NEWEST = TRL_1_16


def installed_trl_version() -> str | None:
    """The installed TRL version string, or None when TRL is not installed."""
    try:
        return metadata.version("trl")
    except metadata.PackageNotFoundError:
        return None


def defaults_for(version: str | None) -> tuple[TrlDefaults, str]:
    """The defaults to plan with for an installed TRL ``version``, and the note that says so."""
    if version is None:
        return NEWEST, (f"TRL is not installed: planned with TRL {NEWEST.version}'s defaults "
                        "(pip install lora-doctor[trl] to plan against your own version)")
    try:
        parsed = Version(version)
    except InvalidVersion:
        return NEWEST, f"TRL version {version!r} is unreadable: planned with TRL {NEWEST.version}'s defaults"
    key = f"{parsed.major}.{parsed.minor}"
    if key in KNOWN:
        return KNOWN[key], f"planned with TRL {version}'s defaults"
    return NEWEST, (f"TRL {version} is installed, but lora-doctor models TRL {NEWEST.version}: planned with "
                    f"{NEWEST.version}'s defaults; check your version's *_config.py if the numbers look off")
