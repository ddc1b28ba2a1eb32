"""Default engine vs trace on catalog models when the adapters are not "all-linear".

The catalog's derived terms used to be traced with all-linear adapters only; this measures the target lists users
actually plan with: peft's default (``target_modules=None``: q,v on Llama-style models, ``c_attn`` on GPT-2,
``query_key_value`` on Falcon; all-linear where peft has no default), the four attention projections, and QLoRA
(bf16 autocast) with peft's default, with and without gradient checkpointing. Both engines model CUDA; the
default engine runs torch-free on what the catalog stores (``LORA_DOCTOR_DERIVE=0``).

    HF_HUB_OFFLINE=1 python benchmarks/target_choices.py [--quick] [--derive-missing] [--cache FILE] [MODEL_ID ...]

``--derive-missing`` first traces the setting classes the committed catalog entry lacks, as
``scripts/build_catalog.py --derive-missing ID`` would store them (and prints how long that took), so the table
shows the catalog after that rebuild. ``--cache FILE`` keeps the traced peaks (JSON) and reuses them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["LORA_DOCTOR_DERIVE"] = "0"  # the catalog path: stored terms only
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lora_doctor  # noqa: E402
from lora_doctor.catalog import lookup  # noqa: E402
from lora_doctor.memory.derive import derive_terms  # noqa: E402

GiB = 2 ** 30
MODELS = ("meta-llama/Llama-2-7b-hf", "Qwen/Qwen3-8B", "google/gemma-3-4b-it:text", "mistralai/Mistral-7B-v0.1",
          "microsoft/Phi-4-mini-instruct", "Qwen/Qwen3-30B-A3B", "openai-community/gpt2", "tiiuae/falcon-7b")
# the four attention projections, as each family spells them (peft matches a name by suffix)
ATTENTION = {"phi3": "qkv_proj,o_proj", "gpt2": "attn.c_attn,attn.c_proj", "falcon": "query_key_value,self_attention.dense"}
ATTENTION_DEFAULT = "q_proj,k_proj,v_proj,o_proj"
# (label, plan keywords, gradient checkpointing); --quick keeps the first three
CASES = (
    ("LoRA default", dict(mode="lora"), False),
    ("LoRA q,k,v,o", dict(mode="lora", target_modules="attention"), False),
    ("QLoRA default", dict(mode="qlora", mixed_precision="bf16"), False),
    ("LoRA default", dict(mode="lora"), True),
    ("QLoRA default", dict(mode="qlora", mixed_precision="bf16"), True),
)
BATCH, SEQ = 1, 1024


def _kwargs(model_type: str, kw: dict) -> dict:
    if kw.get("target_modules") == "attention":
        return dict(kw, target_modules=ATTENTION.get(model_type, ATTENTION_DEFAULT))
    return kw


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    cache_path = Path(argv[argv.index("--cache") + 1]) if "--cache" in argv else None
    cache = json.loads(cache_path.read_text()) if cache_path and cache_path.exists() else {}
    models = [a for a in argv if not a.startswith("--") and (not cache_path or a != str(cache_path))] or list(MODELS)
    cases = CASES[:3] if quick else CASES
    print(f"# batch {BATCH}, seq {SEQ}, r 16; QLoRA with bf16 autocast; error = default engine / trace - 1")
    print(f"{'model':32s} {'setting':14s} {'gc':3s} {'default':>8s} {'trace':>8s} {'error':>7s} "
          f"{'phases (default/trace)':30s} {'trace s':>7s} {'plan s':>6s}")
    worst = 0.0
    for model in models:
        entry = lookup(model)
        model_type = entry.arch.model_type
        if "--derive-missing" in argv:
            start = time.perf_counter()
            terms = derive_terms(dict(entry.config), keep=entry.arch.derived)
            added = len(set(terms["classes"]) - set(entry.arch.derived.get("classes", {})))
            entry.arch.derived.clear()
            entry.arch.derived.update(terms)
            print(f"# {model}: {added} setting classes derived in {time.perf_counter() - start:.0f} s", flush=True)
        for label, kw, gc in cases:
            kw = dict(_kwargs(model_type, kw), batch_size=BATCH, seq_len=SEQ, gradient_checkpointing=gc)
            start = time.perf_counter()
            fast = lora_doctor.plan(model, **kw)
            plan_s = time.perf_counter() - start
            case = f"{model}|{label}|{gc}"
            start = time.perf_counter()
            if case not in cache:   # the trace does not read derived terms: one run serves before and after
                traced = lora_doctor.plan(model, engine="trace", **kw)
                if traced.engine != "trace":
                    print(f"{model:32s} {label:14s} {'on' if gc else '-':3s} trace fell back: {traced.notes[0][:60]}")
                    continue
                cache[case] = [traced.peak_bytes, traced.peak_phase]
                if cache_path:
                    cache_path.write_text(json.dumps(cache, indent=1))
            trace_s = time.perf_counter() - start
            peak, trace_phase = cache[case]
            err = fast.peak_bytes / peak - 1
            worst = max(worst, abs(err))
            phases = f"{fast.peak_phase}/{trace_phase}"
            print(f"{model:32s} {label:14s} {'on' if gc else '-':3s} {fast.peak_bytes / GiB:8.2f} "
                  f"{peak / GiB:8.2f} {err:+7.2%} {phases:30s} {trace_s:7.0f} {plan_s:6.2f}", flush=True)
    print(f"# worst |error| {worst:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
