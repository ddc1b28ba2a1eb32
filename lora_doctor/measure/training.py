"""Run real Hugging Face ``Trainer`` steps on CPU and measure the peak of live tensor memory.

Used by ``benchmarks/accuracy.py`` and the accuracy tests: tiny or small models built from a config
(random weights, no download); LoRA through real peft; QLoRA through real bitsandbytes NF4 (the model
is saved to a temporary directory and reloaded with ``BitsAndBytesConfig``, as users load it).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

from ..plan_types import PlanSettings
from ..torch_dtypes import torch_dtype
from .tracker import StorageTracker



@dataclass
class MeasuredRun:
    peak_bytes: int
    peak_phase: str
    phase_peaks: dict[str, int]
    peak_by_category: dict[str, int]
    trainable_params: int
    total_params: int
    losses: list[float] = field(default_factory=list)


class _RandomTokens(torch.utils.data.Dataset):
    def __init__(self, vocab: int, seq_len: int, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq_len), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def build_model(config: Any, settings: PlanSettings, workdir: str, auto_class: str | None = None,
                task_type: str | None = "CAUSAL_LM") -> Any:
    """The model as a user would have it before ``Trainer``: loaded, wrapped by peft when LoRA/QLoRA."""
    import transformers
    from transformers import BitsAndBytesConfig

    from ..introspect import auto_class_for

    # causal LM by default; masked LM for BERT-style encoders; multimodal classes from lora_doctor.measure.multimodal
    auto = getattr(transformers, auto_class or auto_class_for(config))
    torch.manual_seed(0)
    dtype = torch_dtype(settings.dtype)
    config._attn_implementation = settings.attn_implementation
    if settings.mode == "qlora":
        auto.from_config(config, dtype=dtype).save_pretrained(workdir)
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=settings.quant_type,
                                 bnb_4bit_use_double_quant=settings.double_quant,
                                 bnb_4bit_compute_dtype=torch.bfloat16 if settings.dtype != "fp16" else torch.float16)
        model = auto.from_pretrained(workdir, quantization_config=bnb, dtype=dtype,
                                                     attn_implementation=settings.attn_implementation,
                                                     device_map={"": "cpu"})
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    else:
        model = auto.from_config(config, dtype=dtype)
    if settings.mode in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        targets = settings.target_modules
        lora = LoraConfig(r=settings.r, lora_alpha=settings.lora_alpha, target_modules=targets,
                          use_rslora=settings.use_rslora, lora_dropout=settings.lora_dropout,
                          task_type=task_type if auto.__name__ in ("AutoModelForCausalLM", auto_class) else None)
        model = get_peft_model(model, lora)
    return model


def measure_training(config: Any, settings: PlanSettings, *, steps: int = 2, dataset: Any = None,
                     auto_class: str | None = None, task_type: str | None = "CAUSAL_LM",
                     collator: Any = None) -> MeasuredRun:
    """Build the model, run ``steps`` Trainer steps under a StorageTracker and return the peak.

    ``dataset`` and ``collator`` replace the random-token dataset (multimodal samples with pixel values
    or audio features: lora_doctor.measure.multimodal); ``auto_class`` / ``task_type`` pick the model class.
    """
    from transformers import Trainer, TrainingArguments, TrainerCallback

    with tempfile.TemporaryDirectory() as workdir:
        model = build_model(config, settings, workdir, auto_class, task_type)
        args = TrainingArguments(
            output_dir=workdir, per_device_train_batch_size=settings.batch_size, max_steps=steps,
            optim=settings.optim, learning_rate=1e-4, gradient_checkpointing=settings.gradient_checkpointing,
            bf16=settings.mixed_precision == "bf16", fp16=settings.mixed_precision == "fp16",
            use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, remove_unused_columns=False, seed=0,
        )
        data = dataset if dataset is not None else _RandomTokens(config.vocab_size, settings.seq_len,
                                                                 settings.batch_size * steps)
        tracker = StorageTracker()
        losses: list[float] = []

        class _Phases(TrainerCallback):
            def on_step_begin(self, *a: Any, **k: Any) -> None:
                tracker.phase = "forward"

            def on_pre_optimizer_step(self, *a: Any, **k: Any) -> None:
                tracker.phase = "optimizer_step"

            def on_step_end(self, *a: Any, **k: Any) -> None:
                tracker.phase = "between_steps"

        def after_forward(_module: Any, _inputs: Any, output: Any) -> None:
            tracker.phase = "backward"  # loss computation + backward, until the optimizer step
            loss = getattr(output, "loss", None)
            if loss is not None:
                losses.append(float(loss.detach().float()))

        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[_Phases()], data_collator=collator)
        model.register_forward_hook(after_forward)
        tracker.register(model.parameters(), "weights")
        tracker.register(model.buffers(), "weights")
        with tracker:
            trainer.train()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        return MeasuredRun(tracker.peak_bytes, tracker.peak_phase, dict(tracker.phase_peaks),
                           dict(tracker.peak_by_category), trainable, total, losses)
