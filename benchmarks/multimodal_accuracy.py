"""Planner accuracy on multimodal models: tiny LLaVA, Qwen2-VL and Whisper, real Trainer steps on CPU.

Each case builds the model from a config (random weights, no download), feeds random pixel values /
audio features shaped as the processor returns them, runs two ``transformers.Trainer`` steps under the
live-storage tracker and compares the peak with ``lora_doctor.plan(..., device="cpu")``.

    python benchmarks/multimodal_accuracy.py            # all cases
    python benchmarks/multimodal_accuracy.py whisper    # cases whose name contains "whisper"
    python benchmarks/multimodal_accuracy.py --trace    # also plan(..., engine="trace") (fallbacks shown as "-")
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
from lora_doctor.measure.multimodal import MM_CASES, MM_CONFIGS, measure_case  # noqa: E402

MIB = 1024**2


def predict(case, engine: str = "analytic"):
    s, i = case.settings, case.settings.inputs
    return plan(MM_CONFIGS[case.model], mode=s.mode, batch_size=s.batch_size, seq_len=s.seq_len, r=s.r,
                lora_alpha=s.lora_alpha, target_modules=s.target_modules, lora_dropout=s.lora_dropout, dtype=s.dtype,
                mixed_precision=s.mixed_precision, optim=s.optim, gradient_checkpointing=s.gradient_checkpointing,
                attn_implementation=s.attn_implementation, engine=engine, device="cpu",
                images_per_sample=i.images_per_sample, image_size=i.image_size, audio_seconds=i.audio_seconds)


def main(argv: list[str]) -> int:
    import transformers

    transformers.logging.set_verbosity_error()
    pattern = argv[0] if argv else ""
    engines = ("analytic", "trace") if "--trace" in argv else ("analytic",)
    pattern = "" if pattern.startswith("--") else pattern
    rows, errors = [], {e: [] for e in engines}
    for case in MM_CASES:
        if pattern not in case.name:
            continue
        t0 = time.perf_counter()
        measured = measure_case(case)
        row = [case.name, measured.peak_bytes / MIB, measured.peak_phase]
        for engine in engines:
            predicted = predict(case, engine)
            if predicted.engine != engine:   # the trace fell back to the analytic engine (see its note)
                row += [None, "fallback", None]
                continue
            err = (predicted.peak_bytes - measured.peak_bytes) / measured.peak_bytes
            errors[engine].append(abs(err))
            row += [predicted.peak_bytes / MIB, predicted.peak_phase, 100 * err]
        rows.append(row + [time.perf_counter() - t0])
    head = f"{'case':40s} {'measured MiB':>12s} {'phase':>14s}"
    for engine in engines:
        head += f" {engine + ' MiB':>12s} {'phase':>14s} {'error':>8s}"
    print(head + f" {'s':>5s}")
    for row in rows:
        line = f"{row[0]:40s} {row[1]:12.2f} {row[2]:>14s}"
        for k in range(len(engines)):
            p, ph, e = row[3 + 3 * k: 6 + 3 * k]
            line += f" {p:12.2f} {ph:>14s} {e:+7.2f}%" if p is not None else f" {'-':>12s} {ph:>14s} {'-':>8s}"
        print(line + f" {row[-1]:5.1f}")
    for engine, errs in errors.items():
        if errs:
            print(f"{engine}: {len(errs)} cases, median |error| {100 * statistics.median(errs):.2f}%, "
                  f"worst {100 * max(errs):.2f}% (goal: analytic worst <= 5%, trace worst <= 2%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
