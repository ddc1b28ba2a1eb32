"""Traced engine vs a real CPU training step: is the trace within 2% of the measured peak?

Reference: ``lora_doctor.measure.training.measure_training`` runs real Hugging Face ``Trainer`` steps
on CPU (random weights; QLoRA through a real bitsandbytes 4-bit load) under a StorageTracker. The
trace is asked for the CPU's optimizer and SDPA behaviour (``device="cpu"``) so both run the same
code. Usage::

    HF_HUB_OFFLINE=1 python benchmarks/trace_accuracy.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lora_doctor.measure.training import measure_training  # noqa: E402
from lora_doctor.models import resolve  # noqa: E402
from lora_doctor.plan_types import PlanSettings  # noqa: E402
from lora_doctor.trace import trace_plan  # noqa: E402

MODELS = {
    "llama-gqa": dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=4000),
    "qwen2": dict(model_type="qwen2", hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=6000),
    "gpt2": dict(model_type="gpt2", n_embd=256, n_layer=2, n_head=4, vocab_size=4000, n_positions=1024,
                 bos_token_id=0, eos_token_id=0),
}
CASES = [  # (model, mode, batch, seq, gradient checkpointing, mixed precision, dtype)
    ("llama-gqa", "lora", 2, 256, False, None, "bf16"),
    ("llama-gqa", "lora", 2, 256, True, None, "bf16"),
    ("llama-gqa", "qlora", 2, 256, False, None, "bf16"),
    ("llama-gqa", "qlora", 2, 256, True, None, "bf16"),
    ("llama-gqa", "full", 2, 256, False, None, "bf16"),
    ("llama-gqa", "full", 1, 256, False, "bf16", "fp32"),
    ("qwen2", "lora", 1, 512, False, None, "bf16"),
    ("qwen2", "full", 1, 512, True, None, "bf16"),
    ("gpt2", "lora", 2, 256, False, None, "bf16"),
    ("gpt2", "full", 2, 256, False, None, "fp32"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="first four cases only")
    args = parser.parse_args()
    cases = CASES[:4] if args.quick else CASES
    print(f"{'model':10s} {'mode':5s} {'b':>2s} {'seq':>5s} {'gc':>3s} {'amp':>4s} {'dtype':>5s} "
          f"{'measured':>11s} {'traced':>11s} {'error':>7s} {'trace s':>8s}")
    worst = 0.0
    for name, mode, b, seq, gc, amp, dtype in cases:
        resolved = resolve(dict(MODELS[name]))
        s = PlanSettings(mode=mode, batch_size=b, seq_len=seq, gradient_checkpointing=gc, mixed_precision=amp,
                         dtype=dtype)
        measured = measure_training(resolve(dict(MODELS[name])).config(), s).peak_bytes  # own config: it mutates it
        start = time.perf_counter()
        traced = trace_plan(resolved, s, device="cpu")
        seconds = time.perf_counter() - start
        err = traced.peak_bytes / measured - 1
        worst = max(worst, abs(err))
        flag = "" if traced.engine == "trace" else f"  ({traced.engine}: {traced.notes[0]})"
        print(f"{name:10s} {mode:5s} {b:2d} {seq:5d} {'y' if gc else 'n':>3s} {amp or '-':>4s} {dtype:>5s} "
              f"{measured / 2**20:9.2f}Mi {traced.peak_bytes / 2**20:9.2f}Mi {err:+7.2%} {seconds:8.1f}{flag}",
              flush=True)
    print(f"worst |error| {worst:.2%} (goal: within 2%)")
    return 0 if worst <= 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
