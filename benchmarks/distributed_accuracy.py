"""Per-rank planner accuracy for several GPUs: real torchrun runs on CPU (gloo) against plan(num_gpus=N, ...).

Each case starts ``torchrun --nproc_per_node N`` (N = 2 and 4): DDP through the real
``transformers.Trainer``, FSDP2 through ``fully_shard`` (see ``lora_doctor/measure/distributed.py``).
Every rank measures its live tensors; the table compares the largest rank peak with
``lora_doctor.plan(..., num_gpus=N, strategy=..., device="cpu")``, and with the single-GPU plan
(what the planner said before it knew the world size).

    python benchmarks/distributed_accuracy.py            # all cases, 2 and 4 ranks
    python benchmarks/distributed_accuracy.py ddp 2      # cases whose name contains "ddp", 2 ranks only
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_doctor import plan  # noqa: E402
from lora_doctor.measure.cases import TINY_CONFIGS  # noqa: E402
from lora_doctor.measure.distributed import DIST_CASES, DistCase, run_case  # noqa: E402

MIB = 1024**2


def predict(case: DistCase, nproc: int | None):
    s = case.settings
    parallel = {} if nproc is None else {"num_gpus": nproc, "strategy": s.parallel.strategy}
    return plan(TINY_CONFIGS[case.model], mode=s.mode, batch_size=s.batch_size, seq_len=s.seq_len, r=s.r,
                lora_alpha=s.lora_alpha, target_modules=s.target_modules, dtype=s.dtype,
                mixed_precision=s.mixed_precision, optim=s.optim, device="cpu", **parallel)


def main(argv: list[str]) -> int:
    pattern = argv[0] if argv else ""
    sizes = [int(argv[1])] if len(argv) > 1 else [2, 4]
    rows, errors = [], []
    for case in DIST_CASES:
        if pattern not in case.name:
            continue
        for nproc in sizes:
            t0 = time.perf_counter()
            ranks = run_case(case, nproc)
            measured = max(r["peak_bytes"] for r in ranks)
            spread = (measured - min(r["peak_bytes"] for r in ranks)) / MIB
            planned, single = predict(case, nproc), predict(case, None)
            err = (planned.peak_bytes - measured) / measured
            single_err = (single.peak_bytes - measured) / measured
            errors.append(abs(err))
            rows.append((case.name, nproc, measured / MIB, spread, planned.peak_bytes / MIB, planned.peak_phase,
                         100 * err, 100 * single_err, time.perf_counter() - t0))
    print(f"{'case':28s} {'ranks':>5s} {'measured MiB':>12s} {'rank spread':>11s} {'plan MiB':>9s} "
          f"{'plan phase':>15s} {'error':>7s} {'1-GPU plan err':>14s} {'s':>5s}")
    for name, n, m, sp, p, ph, e, se, t in rows:
        print(f"{name:28s} {n:5d} {m:12.2f} {sp:11.2f} {p:9.2f} {ph:>15s} {e:+6.1f}% {se:+13.1f}% {t:5.0f}")
    if errors:
        print(f"\n{len(errors)} runs: worst |error| {100 * max(errors):.1f}% (goal: worst <= 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
