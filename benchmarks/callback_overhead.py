"""Step time with and without LoraDoctorCallback, side by side in one run, on a ~50M-parameter Llama.

    python benchmarks/callback_overhead.py                 # LoRA on CPU (or the GPU when there is one)
    python benchmarks/callback_overhead.py --mode full --steps 40 --rounds 3

Each round trains a fresh copy of the same random model twice, once plain and once with the callback
(order alternating between rounds so drift in machine load hits both), and records the wall time of
every optimizer step (``on_step_begin`` to the next ``on_step_begin``: forward, backward, clipping,
optimizer, every callback, logging). The first ``--warmup`` steps of each run are dropped (pre-flight
runs before step 1; allocator and kernel warm-up). The table shows the median and mean step time per
variant and the overhead of the median. Goal: 3% or less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainerCallback, TrainingArguments

try:
    from lora_doctor import LoraDoctorCallback
except ImportError:   # running from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lora_doctor import LoraDoctorCallback

# ~48.6M parameters: 10 layers x 3.2M + embeddings and head 2 x 8.2M
CONFIG = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=10, num_attention_heads=8,
              num_key_value_heads=8, vocab_size=16000, max_position_embeddings=1024, tie_word_embeddings=False)


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        now = self._now()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    def on_train_end(self, args, state, control, **kwargs):
        self.times.append(self._now() - self._last)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int) -> None:
        self.n, self.seq, self.vocab = n, seq, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        x = torch.randint(0, self.vocab, (self.seq,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": x, "labels": x.clone()}


def build(mode: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG), dtype=dtype)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    return model


def run(opts: argparse.Namespace, with_doctor: bool) -> list[float]:
    gpu = torch.cuda.is_available()
    model = build(opts.mode, torch.bfloat16 if gpu and opts.mode == "lora" else torch.float32)
    timer = StepTimer()
    callbacks = [timer] + ([LoraDoctorCallback(console=False)] if with_doctor else [])
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="doctor-bench-"), max_steps=opts.steps, per_device_train_batch_size=opts.batch,
        logging_steps=opts.logging_steps, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=not gpu, bf16=gpu, seed=0, learning_rate=1e-4)
    Trainer(model=model, args=args, train_dataset=Tokens(opts.steps * opts.batch, opts.seq_len, CONFIG["vocab_size"]),
            callbacks=callbacks).train()
    return timer.times[opts.warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--logging-steps", type=int, default=10)
    opts = parser.parse_args()

    params = sum(p.numel() for p in build("full", torch.float32).parameters())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    times: dict[str, list[float]] = {"plain": [], "doctor": []}
    for r in range(opts.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for with_doctor in order:
            times["doctor" if with_doctor else "plain"] += run(opts, with_doctor)

    base = statistics.median(times["plain"])
    print(f"\ncallback overhead: {params / 1e6:.1f}M-parameter Llama, {opts.mode}, {device}, batch {opts.batch} x "
          f"{opts.seq_len} tokens, logging every {opts.logging_steps} steps, {opts.rounds} rounds x {opts.steps} steps")
    print(f"{'variant':<10}{'steps':>7}{'median s':>11}{'mean s':>10}{'overhead':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<10}{len(values):>7}{median:>11.4f}{statistics.mean(values):>10.4f}{median / base - 1:>+10.1%}")


if __name__ == "__main__":
    main()
