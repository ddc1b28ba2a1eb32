"""Analytic (recipes alone, and with catalog-style derived terms) vs trace on full-size configs.

The models of issue 12's table: Gemma-3 4B text, Qwen3-8B and a small Qwen3-MoE, batch 2, seq 1024,
all-linear, modelling CUDA. The derived terms are what ``scripts/build_catalog.py`` stores
(``derive_terms(config)``: the catalog's setting classes, ``derive.catalog_settings``), so this is the catalog path.

    HF_HUB_OFFLINE=1 python benchmarks/derived_terms_big.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["LORA_DOCTOR_DERIVE"] = "0"  # the catalog path: stored terms only
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_doctor.arch import ArchSpec  # noqa: E402
from lora_doctor.memory.analytic import step_peak  # noqa: E402
from lora_doctor.memory.derive import derive_terms  # noqa: E402
from lora_doctor.memory.tables import CUBLAS_WORKSPACE_BYTES  # noqa: E402
from lora_doctor.models import resolve  # noqa: E402
from lora_doctor.plan_types import PlanSettings  # noqa: E402
from lora_doctor.trace import trace_step  # noqa: E402

MODELS = {
    "Gemma-3 4B text": dict(model_type="gemma3_text", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                            num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208,
                            sliding_window=1024, max_position_embeddings=131072),
    "Qwen3-8B": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936),
    "small Qwen3-MoE": dict(model_type="qwen3_moe", hidden_size=1024, intermediate_size=3072, moe_intermediate_size=512,
                            num_experts=32, num_experts_per_tok=4, num_hidden_layers=8, num_attention_heads=16,
                            num_key_value_heads=4, head_dim=64, vocab_size=151936),
}
SETTINGS = {
    "full": PlanSettings(mode="full", batch_size=2, seq_len=1024),
    "LoRA": PlanSettings(mode="lora", target_modules="all-linear", batch_size=2, seq_len=1024),
    "QLoRA": PlanSettings(mode="qlora", target_modules="all-linear", mixed_precision="bf16", batch_size=2, seq_len=1024),
}


def main() -> int:
    print(f"{'model':18s} {'mode':6s} {'recipes':>9s} {'derived':>9s} {'trace s':>8s}")
    for name, cfg in MODELS.items():
        resolved = resolve(cfg)
        stored = ArchSpec.from_dict(dict(resolved.arch.to_dict(), derived=derive_terms(resolved)))
        for mode, s in SETTINGS.items():
            start = time.perf_counter()
            traced = trace_step(resolved, s).peak_bytes
            seconds = time.perf_counter() - start
            errs = [sum(step_peak(a, s).breakdown.values()) - CUBLAS_WORKSPACE_BYTES for a in (resolved.arch, stored)]
            print(f"{name:18s} {mode:6s} {errs[0] / traced - 1:+9.1%} {errs[1] / traced - 1:+9.1%} {seconds:8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
