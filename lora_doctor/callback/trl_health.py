"""Failures of preference and RL training that TRL's own logged metrics show (DPO, GRPO).

TRL merges its per-step metrics into the Trainer's ``logs`` (``rewards/chosen``, ``logps/rejected``,
``reward_std``, ``frac_reward_zero_std``, ``kl``, ...). Two failures users hit most:

* a non-finite reward or log-ratio: the policy's or the reference's log-probs overflowed (fp16,
  a too-large learning rate, an adapter scale that blew up); the DPO loss then trains on garbage;
* GRPO groups whose rewards all tie: every completion of a prompt got the same reward, so every
  advantage is 0 and the step has no learning signal (``frac_reward_zero_std == 1``).
"""

from __future__ import annotations

import math
from typing import Any

from ..findings import Finding

# Logged keys whose non-finite value means the preference / RL signal is broken.
WATCHED_PREFIXES = ("rewards/", "logps/", "logits/", "reward", "kl", "sampling/")
TIE_KEY = "frac_reward_zero_std"


def _non_finite(logs: dict) -> dict[str, float]:
    return {k: v for k, v in logs.items()
            if isinstance(v, (int, float)) and k.startswith(WATCHED_PREFIXES) and not math.isfinite(v)}


def trl_log_findings(logs: dict[str, Any] | None, step: int) -> list[Finding]:
    """Findings from one ``on_log`` dict (empty for logs without TRL's DPO/GRPO metrics)."""
    if not logs:
        return []
    found = []
    bad = _non_finite(logs)
    if bad:
        names = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        found.append(Finding(
            "trl-non-finite-reward", "error",
            f"step {step}: non-finite {names}: the policy's or the reference's log-probs overflowed, so the "
            "rewards / log-ratios the loss is built from are not numbers",
            "lower the learning rate, train in bf16 rather than fp16, check the LoRA scale (lora_alpha / r) and "
            "the reward functions, and resume from the last finite checkpoint",
            {"step": step, "values": bad}))
    tie = logs.get(TIE_KEY)
    if isinstance(tie, (int, float)) and math.isfinite(tie) and tie >= 1.0:
        found.append(Finding(
            "grpo-rewards-tie", "warning",
            f"step {step}: frac_reward_zero_std = 1: every group of num_generations completions got the same "
            "reward, so every advantage is 0 and this step had no learning signal",
            "make the reward discriminate between completions (graded or partial credit instead of pass/fail), "
            "raise num_generations or the sampling temperature, and check the reward function is not constant "
            "or failing silently",
            {"step": step, "reward_std": logs.get("reward_std")}))
    return found
