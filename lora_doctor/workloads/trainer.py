"""``lora_doctor.plan_trainer``: plan an already-constructed Trainer / SFTTrainer / DPOTrainer / GRPOTrainer.

Reads what the run will really do: the model as the trainer holds it (with the peft adapters TRL
applied, and TRL's fused LM head), the arguments (micro-batch, ``max_length``, packing,
checkpointing, precision, optimizer, the TRL trainer's own fields) and the dataset (the longest row
the collator can build, :mod:`.batch`). Imports torch (through the model); the planner core does not.
"""

from __future__ import annotations

from typing import Any

from ..plan_types import MemoryPlan
from .batch import WorstBatch, worst_batch
from .images import worst_images
from .trl_defaults import TRL_1_16

# Trainer class name (anywhere in the MRO) -> workload; the first match wins.
TRAINER_KINDS = (("GRPOTrainer", "grpo"), ("DPOTrainer", "dpo"), ("SFTTrainer", "sft"))


def trainer_kind(trainer: Any) -> str:
    names = {cls.__name__ for cls in type(trainer).__mro__}
    return next((kind for name, kind in TRAINER_KINDS if name in names), "hf")


def trainer_options(args: Any, kind: str) -> dict[str, Any]:
    """The TRL config fields the workload model takes, read from ``args`` (TRL's names)."""
    out = {}
    for name in TRL_1_16.options.get(kind, {}):
        if hasattr(args, name):
            value = getattr(args, name)
            out[name] = value
    return out


def _parallel_kwargs(args: Any) -> dict:
    """World size / FSDP / DeepSpeed settings of ``args`` for ``plan()`` (:mod:`lora_doctor.parallel.launch`);
    the precision comes from the model and args already (``plan_settings``)."""
    from ..parallel.launch import from_training_args

    kwargs = from_training_args(args)
    kwargs.pop("mixed_precision", None)
    return kwargs


def plan_trainer(trainer: Any, *, gpu: Any = None, engine: str = "analytic", batch: WorstBatch | None = None,
                 fallback_seq_len: int | None = None, inputs: dict | None = None) -> MemoryPlan:
    """Predict the peak memory of ``trainer``'s steps at the worst batch its dataset allows.

    Args:
        trainer: a constructed ``transformers.Trainer`` or TRL ``SFTTrainer``/``DPOTrainer``/``GRPOTrainer``.
        gpu: as for :func:`lora_doctor.plan` (None: no verdict).
        engine: ``"analytic"`` or ``"trace"``.
        batch, fallback_seq_len, inputs: internal (the callback passes what it already knows: the first
            batch's text length and its images / audio as ``plan()``'s input arguments).

    Images (vision-language models): the most images per row of the first batch and the dataset, at the
    largest size the trainer's processor produces (:mod:`.images`), else the first batch's size. The
    plan's first note says which batch was planned and why, the second (with images) which images.
    """
    from ..callback.lora_stats import summarize
    from ..callback.preflight import plan_settings
    from ..planner import plan

    model, args = trainer.model, trainer.args
    kind = trainer_kind(trainer)
    batch = batch or worst_batch(trainer, kind)
    seq_len, why = batch.seq_len, batch.why
    inputs, images = worst_images(trainer, dict(inputs or {}))
    if seq_len is None:
        seq_len = fallback_seq_len or 512
        why += f"; planned at seq_len {seq_len}" + (" (the first batch)" if fallback_seq_len else " (a guess)")
    elif inputs.get("images_per_sample") and inputs.get("image_tokens"):
        # a VLM row's input_ids hold the image tokens; the plan adds them back from the images
        image_tokens = inputs["images_per_sample"] * inputs["image_tokens"]
        seq_len = max(seq_len - image_tokens, 1)
        why += f"; {seq_len} text tokens after the {image_tokens} image tokens, which the images add back"
    settings = plan_settings(model, args, summarize(model), None, seq_len)
    device = settings.pop("device", "cuda")
    options = trainer_options(args, kind) if kind != "hf" else {}
    result = plan(model, gpu=gpu, engine=engine, device=device, trainer=kind, **settings, **options,
                  **_parallel_kwargs(args), **inputs)
    per_device = getattr(args, "per_device_train_batch_size", 1)
    accumulation = getattr(args, "gradient_accumulation_steps", 1)
    result.notes.insert(0, f"planned batch: {per_device} x {seq_len} tokens per micro-step "
                           f"(gradient_accumulation_steps={accumulation}): {why}")
    result.details["batch"] = {"batch_size": per_device, "seq_len": seq_len, "why": why, "trainer": kind}
    if images is not None:
        size = images["image_size"]
        shown = f"{size[1]}x{size[0]}" if size else "the model's default size"
        result.notes.insert(1, f"planned images: {images['images_per_sample']} per row at {shown}: {images['source']}")
        result.details["batch"]["images"] = images
    return result
