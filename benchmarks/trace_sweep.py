"""Analytic vs traced peak over every decoder-only text model type the installed transformers builds.

For each model type with a ``*ForCausalLM`` class (encoders, encoder-decoders and multimodal wrappers
excluded), a tiny config from the config class's defaults (``lora_doctor.measure.tiny``) is planned by
both engines for two settings, modelling a CUDA run. Types transformers cannot build, or whose code
cannot run on fake tensors, are listed with the reason. Goal from issue 12: worst |error| <= 3%.

    HF_HUB_OFFLINE=1 python benchmarks/trace_sweep.py            # the SWEEP_TYPES below
    HF_HUB_OFFLINE=1 python benchmarks/trace_sweep.py --all      # every *ForCausalLM model type
    HF_HUB_OFFLINE=1 python benchmarks/trace_sweep.py qwen3 gpt2 # just these
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_doctor.errors import LoraDoctorError  # noqa: E402
from lora_doctor.linear_probe import UNWRAPPABLE_FIELDS  # noqa: E402
from lora_doctor.measure.tiny import causal_lm_types, tiny_config  # noqa: E402
from lora_doctor.memory.tables import CUBLAS_WORKSPACE_BYTES  # noqa: E402
from lora_doctor.models import resolve  # noqa: E402
from lora_doctor.plan_types import PlanSettings  # noqa: E402

# Families people fine-tune, with their layer patterns (sliding/global, dense/MoE mixes, MLA, parallel
# blocks, config dropouts); ~1 minute per type on a loaded 2-core CPU.
SWEEP_TYPES = (
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
    "phi", "phi3", "phimoe", "gpt2", "gpt_neox", "gptj", "gpt_bigcode", "opt", "bloom", "falcon", "olmo",
    "olmo2", "olmoe", "smollm3", "granite", "granitemoe", "cohere", "cohere2", "starcoder2", "stablelm",
    "deepseek_v3", "gpt_oss", "glm4", "helium", "exaone4", "ernie4_5", "seed_oss", "llama4_text",
)

SETTINGS = {
    "lora all-linear": PlanSettings(mode="lora", target_modules="all-linear", batch_size=2, seq_len=512),
    "full bf16": PlanSettings(mode="full", batch_size=1, seq_len=512),
}


def compare(model_type: str) -> tuple[dict[str, float], str]:
    """Analytic/trace - 1 per setting, or a reason the type was skipped."""
    from lora_doctor.memory.analytic import step_peak
    from lora_doctor.trace import trace_step

    try:
        cfg = tiny_config(model_type)
        if cfg is None:
            return {}, "not a decoder-only text model"
        resolved = resolve(cfg)
    except LoraDoctorError as exc:
        return {}, f"cannot build: {str(exc)[:110]}"
    errors = {}
    notes = ""
    for name, s in SETTINGS.items():
        s, note = _wrappable(resolved.arch, s)
        notes = notes or note
        try:
            try:
                traced = trace_step(resolved, s).peak_bytes
            except RuntimeError as exc:
                if s.mixed_precision or not _MIXED_DTYPES.search(str(exc)):
                    raise
                s = replace(s, mixed_precision="bf16")   # as it must run: Trainer(bf16=True)
                notes = notes or AUTOCAST_NOTE
                traced = trace_step(resolved, s).peak_bytes
        except Exception as exc:  # model code that cannot run on fake tensors
            return errors, f"trace failed ({name}): {type(exc).__name__}: {str(exc).splitlines()[0][:70] if str(exc) else ''}"
        totals = step_peak(resolved.arch, s)
        analytic = sum(totals.breakdown.values()) - CUBLAS_WORKSPACE_BYTES  # a constant both engines add
        errors[name] = analytic / traced - 1
    return errors, notes


# A pure bf16 step (no autocast) that fails on a matmul of fp32 and bf16 operands fails on CUDA too (xLSTM's
# native mLSTM kernels keep fp32 states next to bf16 queries/keys/values); it runs under autocast, which
# casts both to bf16, so it is traced as Trainer(bf16=True) runs it.
_MIXED_DTYPES = re.compile(r"expected scalar type \S+ but found|expected m1 and m2 to have the same dtype")
AUTOCAST_NOTE = "under autocast (Trainer bf16=True): pure bf16 mixes fp32 and bf16 in a matmul"


def _wrappable(arch: Any, s: PlanSettings) -> tuple[PlanSettings, str]:
    """all-linear without the linear layers peft's LoRA cannot wrap (routers returning a tuple: the
    doctor's target-non-tensor-output; DeepSeek-V4's grouped o_a_proj: target-reshaped-output) or refuses (the Mamba mixers' out_proj: target-peft-refused), as a
    user following the doctor's fix would run it."""
    bad = {name for field in UNWRAPPABLE_FIELDS.values() for name in arch.extra.get(field) or ()}
    if s.mode == "full" or not bad or s.target_modules != "all-linear":
        return s, ""
    names = sorted({f.name for f in arch.linear_families if f.scope != "head" and f.name not in bad})
    return replace(s, target_modules=tuple(names)), f"lora on all-linear minus {', '.join(sorted(bad))}"


def _first_line(exc: BaseException, width: int = 90) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:width] if text else ""


def main(argv: list[str]) -> int:
    import transformers

    transformers.logging.set_verbosity_error()
    types = causal_lm_types() if argv == ["--all"] else (argv or list(SWEEP_TYPES))
    print(f"{'model type':28s} " + " ".join(f"{n:>16s}" for n in SETTINGS) + f" {'s':>5s}")
    worst, compared, skipped = 0.0, 0, []
    for model_type in types:
        t0 = time.perf_counter()
        try:
            errors, reason = compare(model_type)
        except Exception as exc:  # noqa: BLE001 - one model type's failure must not end the sweep
            errors, reason = {}, f"cannot build: {type(exc).__name__}: {_first_line(exc)}"
        if reason and not errors:
            skipped.append((model_type, reason))
            print(f"{model_type:28s} skipped: {reason}", file=sys.stderr, flush=True)  # as it happens
            continue
        compared += 1
        worst = max([worst, *(abs(e) for e in errors.values())])
        cells = " ".join(f"{errors[n]:+15.2%} " if n in errors else f"{'-':>16s}" for n in SETTINGS)
        print(f"{model_type:28s} {cells} {time.perf_counter() - t0:5.1f}{'  ' + reason if reason else ''}", flush=True)
    print(f"\n{compared} model types compared, worst |analytic/trace - 1| {worst:.2%} (goal: <= 3%)")
    print(f"{len(skipped)} skipped:")
    for model_type, reason in skipped:
        print(f"  {model_type}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
