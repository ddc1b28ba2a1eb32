"""Quickstart: LoRA fine-tuning of a tiny random Llama on CPU with LoraDoctorCallback (offline, < 1 minute).

    python examples/quickstart_cpu.py

Everything is local: the model is built from a config with random weights and the data are random
token sequences, so the loss barely moves; the point is what the callback prints. You should see the
pre-flight panel, a `doctor step N | ...` status line at each logging step next to the Trainer's
progress bar, and, from step 40, an alarm: the script makes the gradients explode on purpose
(``--no-explosion`` turns that off) and stops the run with a checkpoint (``--on-explosion stop``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainerCallback, TrainingArguments

try:
    from lora_doctor import LoraDoctorCallback
except ImportError:   # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lora_doctor import LoraDoctorCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seq_len: int, vocab: int) -> None:
        self.n, self.seq_len, self.vocab = n, seq_len, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        x = torch.randint(0, self.vocab, (self.seq_len,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": x, "labels": x.clone()}


class ExplodeAt(TrainerCallback):
    """Demo only: multiplies the adapter gradients by 1000 during one optimizer step."""

    def __init__(self, model: torch.nn.Module, step: int) -> None:
        self.step, self.active = step, False
        for p in model.parameters():
            if p.requires_grad:
                p.register_hook(lambda g: g * 1000 if self.active else g)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 == self.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--on-explosion", choices=("warn", "stop"), default="warn")
    parser.add_argument("--no-explosion", action="store_true", help="a healthy run: no alarm")
    opts = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
    model = AutoModelForCausalLM.from_config(config)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    out = tempfile.mkdtemp(prefix="lora-doctor-quickstart-")
    args = TrainingArguments(output_dir=out, max_steps=opts.steps, per_device_train_batch_size=8,
                             learning_rate=1e-3, logging_steps=10, save_strategy="no", report_to="none",
                             use_cpu=True, seed=0)
    doctor = LoraDoctorCallback(on_explosion=opts.on_explosion)
    extra = [] if opts.no_explosion else [ExplodeAt(model, 40)]
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(1024, 64, config.vocab_size),
                      callbacks=[*extra, doctor])
    trainer.train()

    print(f"\n{len(doctor.findings)} findings kept in callback.findings:")
    for f in doctor.findings:
        print(f"  {f.severity:<8}{f.code}  (step {f.data.get('step', '-')})")
    if doctor.checkpoint:
        print(f"checkpoint before stopping: {doctor.checkpoint}")


if __name__ == "__main__":
    main()
