"""Planner accuracy: predicted vs measured peak tensor memory of real Trainer steps on CPU.

Each case builds a small model from a config (random weights, no download), runs two real
``transformers.Trainer`` steps (peft LoRA, bitsandbytes NF4 for QLoRA) under a live-storage tracker,
and compares the peak with ``lora_doctor.plan(..., device="cpu")``. Prints a table and the
median / worst absolute error.

    python benchmarks/accuracy.py            # all cases
    python benchmarks/accuracy.py llama qwen3 # cases whose name contains "llama" or "qwen3"
    python benchmarks/accuracy.py --trl      # TRL cases: real SFTTrainer / DPOTrainer / GRPOTrainer runs,
                                             # measured against plan_trainer and plan(trainer=...)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_doctor import plan  # noqa: E402
from lora_doctor.measure.cases import CASES, TINY_CONFIGS, case_config  # noqa: E402
from lora_doctor.measure.training import measure_training  # noqa: E402

MIB = 1024**2


def predict(case, engine: str = "analytic"):
    s = case.settings
    return plan(TINY_CONFIGS[case.model], mode=s.mode, batch_size=s.batch_size, seq_len=s.seq_len, r=s.r,
                lora_alpha=s.lora_alpha, target_modules=s.target_modules, lora_dropout=s.lora_dropout, dtype=s.dtype,
                mixed_precision=s.mixed_precision, optim=s.optim, gradient_checkpointing=s.gradient_checkpointing,
                attn_implementation=s.attn_implementation, quant_type=s.quant_type, double_quant=s.double_quant,
                engine=engine, device="cpu")


def main(argv: list[str]) -> int:
    import transformers

    transformers.logging.set_verbosity_error()
    patterns = argv or [""]
    rows, errors, trace_errors = [], [], []
    for case in CASES:
        if not any(p in case.name for p in patterns):
            continue
        t0 = time.perf_counter()
        measured = measure_training(case_config(case.model), case.settings)
        predicted = predict(case)
        traced = predict(case, "trace")
        err = (predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes
        terr = (traced.peak_bytes - measured.peak_bytes) / measured.peak_bytes
        errors.append(abs(err))
        trace_errors.append(abs(terr))
        rows.append((case.name, measured.peak_bytes / MIB, measured.peak_phase, predicted.peak_bytes / MIB,
                     predicted.peak_phase, 100 * err, 100 * terr, time.perf_counter() - t0))
    print(f"{'case':38s} {'measured MiB':>12s} {'phase':>14s} {'analytic MiB':>12s} {'phase':>15s} {'error':>8s} "
          f"{'trace err':>9s} {'s':>5s}")
    for name, m, mp, p, pp, e, te, t in rows:
        print(f"{name:38s} {m:12.2f} {mp:>14s} {p:12.2f} {pp:>15s} {e:+7.1f}% {te:+8.2f}% {t:5.1f}")
    if errors:
        print(f"\n{len(errors)} cases: median |error| {100 * statistics.median(errors):.1f}%, "
              f"worst {100 * max(errors):.1f}% (goal: median <= 2%, worst <= 5%)")
        print(f"trace: median |error| {100 * statistics.median(trace_errors):.2f}%, "
              f"worst {100 * max(trace_errors):.2f}% (goal: worst <= 2%)")
    return 0


def trl_main(pattern: str) -> int:
    """TRL cases: live-tensor peak of real TRL runs vs plan_trainer(trainer) and plan(..., trainer=...)."""
    import tempfile

    from lora_doctor import plan_trainer
    from lora_doctor.measure.trl_runs import TINY_LLAMA, TRL_CASES, build_trainer, measure_trainer

    rows, errors = [], []
    for case in TRL_CASES:
        if pattern not in case.name:
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            trainer = build_trainer(case, workdir)
            from_trainer = plan_trainer(trainer)
            batch = from_trainer.details["batch"]
            options = {k: v for k, v in case.config.items() if k != "gradient_checkpointing"}
            direct = plan({**TINY_LLAMA, "vocab_size": case.vocab, **case.model}, mode="lora", r=8, lora_alpha=16,
                          target_modules="all-linear", dtype="fp32", batch_size=case.batch_size,
                          seq_len=batch["seq_len"], device="cpu", trainer=case.trainer,
                          gradient_checkpointing=case.config.get("gradient_checkpointing", True), **options)
            measured = measure_trainer(trainer)
        err = (from_trainer.peak_bytes - measured.peak_bytes) / measured.peak_bytes
        derr = (direct.peak_bytes - measured.peak_bytes) / measured.peak_bytes
        errors += [abs(err), abs(derr)]
        rows.append((case.name, measured.peak_bytes / MIB, from_trainer.peak_bytes / MIB, from_trainer.peak_phase,
                     100 * err, direct.peak_bytes / MIB, 100 * derr, time.perf_counter() - t0))
    print(f"{'TRL case':38s} {'measured MiB':>12s} {'plan_trainer':>12s} {'phase':>15s} {'error':>8s} "
          f"{'plan()':>9s} {'error':>8s} {'s':>5s}")
    for name, m, p, pp, e, d, de, t in rows:
        print(f"{name:38s} {m:12.2f} {p:12.2f} {pp:>15s} {e:+7.2f}% {d:9.2f} {de:+7.2f}% {t:5.1f}")
    if errors:
        print(f"\n{len(rows)} TRL cases: analytic worst |error| {100 * max(errors):.2f}% (goal <= 5%); "
              "trace engine: TRL workloads not traced (analytic only)")
    return 0


if __name__ == "__main__":
    if "--trl" in sys.argv[1:]:
        sys.exit(trl_main(next((a for a in sys.argv[1:] if a != "--trl"), "")))
    sys.exit(main(sys.argv[1:]))
