"""One real 2-rank run (torchrun, gloo, CPU): every rank's measured peak within 5% of the per-GPU plan.

FSDP2 ``fully_shard`` full fine-tuning of a tiny Llama: the case that exercises the most of the
parallel layer (sharded weights and states, the gathered root, the prefetched layer, DTensor
shards counted by the tracker). The run is bounded by a subprocess timeout, so a hang fails the
test instead of stalling the suite. The other cases (DDP through the Trainer, LoRA, 4 ranks) are in
``benchmarks/distributed_accuracy.py``.
"""

from __future__ import annotations

import subprocess

import pytest

from lora_doctor import plan
from lora_doctor.measure.cases import TINY_CONFIGS
from lora_doctor.measure.distributed import CASES_BY_NAME, run_case

TIMEOUT_S = 240   # ~40-90 s on 2 shared CPU cores; the margin is for a loaded machine


def test_fsdp2_two_ranks_peak_within_5_percent_of_plan():
    case = CASES_BY_NAME["fsdp full fp32 adamw"]
    try:
        ranks = run_case(case, 2, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S} s (hang or overloaded machine)")
    s = case.settings
    predicted = plan(TINY_CONFIGS[case.model], mode=s.mode, dtype=s.dtype, seq_len=s.seq_len,
                     batch_size=s.batch_size, num_gpus=2, strategy="fsdp", device="cpu")
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        error = (predicted.peak_bytes - r["peak_bytes"]) / r["peak_bytes"]
        assert abs(error) <= 0.05, f"rank {r['rank']}: measured {r['peak_bytes']}, planned {predicted.peak_bytes}"
