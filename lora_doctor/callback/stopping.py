"""What the callback says when it stops a run, or cannot stop a bad update in time (pure)."""

from __future__ import annotations

from ..findings import Finding

# finding code -> which option decides what happens
ACTION_OPTION = {
    "grad-norm-spike": "on_explosion",
    "loss-spike": "on_explosion",
    "grad-norm-non-finite": "on_nonfinite",
    "loss-non-finite": "on_nonfinite",
}
NONFINITE_CODES = {code for code, option in ACTION_OPTION.items() if option == "on_nonfinite"}


def stop_finding(trigger: Finding, step: int, checkpoint: str | None, skipped_update: bool) -> Finding:
    """``training-stopped``: why, on which rank, where the checkpoint is, whether its weights are finite."""
    where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (save_on_stop=False)"
    option = ACTION_OPTION.get(trigger.code)
    why = f"{option}='stop'" if option else "asked by another rank"
    seen_on = f" on rank {trigger.data['rank']}" if "rank" in trigger.data else ""
    caveat = ""
    if trigger.code in NONFINITE_CODES:
        caveat = (" The non-finite update was skipped on every rank, so the saved weights are the last finite ones."
                  if skipped_update else
                  " It was noticed after the bad step, so the saved weights may hold NaN/inf: "
                  "resume from an earlier checkpoint if they do (check_every=1 catches it in time).")
    return Finding(
        "training-stopped", trigger.severity,
        f"training stopped at step {step} ({why}) because of {trigger.code}{seen_on}; {where}.{caveat}",
        f"fix the cause ({trigger.fix}), then resume with "
        f"trainer.train(resume_from_checkpoint={checkpoint!r})" if checkpoint else trigger.fix,
        {"step": step, "trigger": trigger.code, "checkpoint": checkpoint,
         **{k: trigger.data[k] for k in ("rank",) if k in trigger.data}},
    )


def model_only_finding(checkpoint: str) -> Finding:
    """The Trainer did not write the stop checkpoint, so the callback saved the weights there itself."""
    return Finding(
        "stop-checkpoint-model-only", "warning",
        f"the Trainer did not write the stop checkpoint {checkpoint} (its save strategy overrode the "
        "request), so lora-doctor saved the model weights there (adapters for a PeftModel), without "
        "optimizer, scheduler or RNG state",
        f"reload the weights from {checkpoint} (PeftModel.from_pretrained for adapters) and start a new "
        "run; resume_from_checkpoint needs a full Trainer checkpoint",
        {"checkpoint": checkpoint})


DEEPSPEED_LIMITS = Finding(
    "deepspeed-checks-limited", "info",
    "DeepSpeed owns the gradients (ZeRO reduces and partitions them inside its engine), so the callback does not "
    "hook them: the gradient checks judge the engine's global gradient norm that the Trainer logs, at logging "
    "steps only, without the per-module breakdown, and a non-finite update cannot be dropped before "
    "optimizer.step(); under ZeRO-3 the adapter weight checks are skipped too (the weights are partitioned)",
    "log every step (logging_steps=1) for per-step gradient checks; to run every check, train a few steps "
    "without DeepSpeed (one GPU or DDP) with the same config",
    {})
