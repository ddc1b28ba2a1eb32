"""Shared test set-up: no network, quiet transformers."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Plans of configs use the recipes alone (fast); tests/test_derive.py, test_trace_sweep.py and
# test_accuracy.py turn the trace-derived layer terms on (lora_doctor.memory.derive).
os.environ.setdefault("LORA_DOCTOR_DERIVE", "0")
