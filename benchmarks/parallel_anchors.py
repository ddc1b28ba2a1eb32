"""Anchors for the parallel planner: DeepSpeed's own ZeRO estimators, and torch's FSDPMemTracker.

* Llama-2-7B and 70B are built on the ``meta`` device (no weights). Their parameter count and
  largest module (what ``estimate_zero3_model_states_mem_needs_all_live`` takes as the largest
  layer) go into DeepSpeed's real ``estimate_zero2/3_model_states_mem_needs`` functions (the
  ``_all_live`` wrappers count parameters by ``data_ptr()``, which is 0 for every meta tensor, so
  they cannot take a meta model directly). Next to them: our model-state terms per GPU
  (``zero_model_states``) and the full per-GPU plan (weights + gradients + optimizer states at the
  optimizer step, and the peak).
* ``--fsdp-tracker``: the tiny FSDP2 case on 2 CPU ranks measured by torch's ``FSDPMemTracker``
  and by our ``StorageTracker``, against ``plan(num_gpus=2, strategy="fsdp", device="cpu")``.

    python benchmarks/parallel_anchors.py [--fsdp-tracker]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_doctor import plan  # noqa: E402
from lora_doctor.parallel.zero import zero_model_states  # noqa: E402

GIB = 1024**3
MODELS = {
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "meta-llama/Llama-2-70b-hf": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                      num_attention_heads=64, num_key_value_heads=8, vocab_size=32000),
}
ROWS = (("zero2", None), ("zero2", "optimizer"), ("zero3", None), ("zero3", "optimizer"), ("zero3", "all"))


def meta_counts(dims: dict) -> tuple[int, int]:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(LlamaConfig(**dims))
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def deepspeed_gpu(stage: int, offload: str | None, total: int, largest: int, n: int) -> int:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 2:
        return estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=n, cpu_offload=offload is not None)[1]
    return estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=n, cpu_offload=offload is not None,
                                                 cpu_offload_params=offload == "all")[1]


def anchors(n: int = 8) -> None:
    print("| model | strategy | DeepSpeed estimate GiB/GPU | ours: model states GiB/GPU | plan: states at step | "
          "plan: peak (seq 512) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, dims in MODELS.items():
        total, largest = meta_counts(dims)
        for strategy, offload in ROWS:
            stage = int(strategy[-1])
            ds = deepspeed_gpu(stage, offload, total, largest, n)
            ours = zero_model_states(total, n, stage, largest_layer=largest, offload=offload).gpu
            p = plan(name, mode="full", num_gpus=n, strategy=strategy, offload=offload, mixed_precision="bf16")
            step = p.details["phase_breakdowns"]["optimizer_step"] if "phase_breakdowns" in p.details else None
            states = sum(step[t] for t in ("weights", "gradients", "optimizer_states")) if step else 0
            label = strategy + (f" + offload {offload}" if offload else "")
            print(f"| {name.split('/')[-1]} ({total / 1e9:.2f}B, largest module {largest / 1e6:.0f}M) | {label} | "
                  f"{ds / GIB:.2f} | {ours / GIB:.2f} | {states / GIB:.2f} | {p.peak_bytes / GIB:.2f} |")


def fsdp_tracker() -> None:
    from lora_doctor.measure.cases import TINY_CONFIGS
    from lora_doctor.measure.distributed import CASES_BY_NAME, run_case

    for name in ("fsdp full fp32 adamw", "fsdp lora all-linear fp32"):
        case = CASES_BY_NAME[name]
        s = case.settings
        ours = max(r["peak_bytes"] for r in run_case(case, 2))
        torch_ranks = run_case(case, 2, runner="fsdp-torch-tracker")
        theirs = max(r["peak_bytes"] for r in torch_ranks)
        p = plan(TINY_CONFIGS[case.model], mode=s.mode, dtype=s.dtype, seq_len=s.seq_len, batch_size=s.batch_size,
                 target_modules=s.target_modules, num_gpus=2, strategy="fsdp", device="cpu")
        print(f"{name}: FSDPMemTracker {theirs / 2**20:.2f} MiB, StorageTracker {ours / 2**20:.2f} MiB, "
              f"plan {p.peak_bytes / 2**20:.2f} MiB; torch snapshot {torch_ranks[0]['torch_snapshot']}")


if __name__ == "__main__":
    fsdp_tracker() if "--fsdp-tracker" in sys.argv else anchors()
