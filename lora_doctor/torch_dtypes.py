"""Our dtype names (``fp32``, ``bf16``, ``fp16``, and torch's spellings) to ``torch.dtype`` (imports torch)."""

from __future__ import annotations

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def torch_dtype(name: str) -> torch.dtype:
    """``torch_dtype("bf16") is torch.bfloat16``; raises KeyError for an unknown name."""
    return TORCH_DTYPES[name.lower()]
