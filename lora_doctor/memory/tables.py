"""Lookup tables the formulas read: dtype sizes, optimizers, quantization storage. Pure data."""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}
DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
    "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
}


@dataclass(frozen=True)
class OptimizerSpec:
    """State bytes per trainable parameter, and the scratch one ``step()`` allocates on CUDA.

    ``state_bytes`` is None when the states take the parameter's own dtype (torch AdamW/SGD keep
    ``exp_avg`` etc. in the dtype of the parameter: bf16 parameters get bf16 states).
    ``scratch_copies`` counts full-size temporaries of the states' dtype that the CUDA (foreach)
    implementation holds at once during ``step()``; ``paged`` states live in unified memory and
    are evicted from the GPU under pressure, so they are excluded from the device peak.
    """

    states: float                    # state tensors per parameter (AdamW: exp_avg, exp_avg_sq)
    state_bytes: float | None        # bytes per state element, None = the parameter's dtype
    scratch_copies: float = 0.0
    paged: bool = False
    note: str = ""


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw_torch": OptimizerSpec(2, None, scratch_copies=1.0, note="torch AdamW (foreach on CUDA)"),
    "adamw_torch_fused": OptimizerSpec(2, None, note="torch AdamW fused kernel, no scratch"),
    "adamw_hf": OptimizerSpec(2, None, scratch_copies=1.0),
    "adamw_8bit": OptimizerSpec(2, 1.0 + 4 / 256, note="bitsandbytes 8-bit AdamW: uint8 states + fp32 absmax per 256"),
    "adamw_bnb_8bit": OptimizerSpec(2, 1.0 + 4 / 256, note="bitsandbytes 8-bit AdamW: uint8 states + fp32 absmax per 256"),
    "paged_adamw_8bit": OptimizerSpec(2, 1.0 + 4 / 256, paged=True, note="paged: states in unified memory"),
    "paged_adamw_32bit": OptimizerSpec(2, 4.0, paged=True, note="paged: states in unified memory"),
    "adafactor": OptimizerSpec(0.05, 4.0, note="factored second moment (row + column statistics), no momentum"),
    "sgd": OptimizerSpec(0, None, note="Trainer's SGD has no momentum: no state"),
    "sgd_momentum": OptimizerSpec(1, None, note="one momentum buffer"),
}

# bitsandbytes 4-bit storage per quantized weight element (blocksize 64).
NF4_PACKED_BYTES = 0.5
ABSMAX_FP32_BYTES = 4 / 64                 # one fp32 absmax per 64 weights
ABSMAX_DOUBLE_QUANT_BYTES = 1 / 64 + 4 / (64 * 256)   # uint8 absmax + fp32 absmax-of-absmax per 256 blocks

# Device-level overhead, outside torch's tensor accounting, fitted to benchmarks/results/gpu_h200.md
# (H200, CUDA 13, torch 2.11): NVML peak - max_memory_reserved was 0.73-0.75 GiB in all 9 cases;
# reserved - allocated was 0.5-5.2 GiB, growing with the size of the freed-and-reallocated loss tensors.
CUDA_CONTEXT_BYTES = 768 * 1024**2
# cuBLAS workspaces come from PyTorch's caching allocator, so they count in max_memory_allocated:
# one per handle (forward stream + autograd's backward thread). A 3.3M-parameter LoRA run on the H200
# measured 128.47 MiB against 64.38 MiB of tensors (benchmarks/results/callback_gpu_check_h200.txt).
CUBLAS_WORKSPACE_BYTES = 64 * 1024**2
ALLOCATOR_RESERVE_BASE_BYTES = 512 * 1024**2
ALLOCATOR_RESERVE_FRACTION = 0.01          # of the tensor peak
ALLOCATOR_RESERVE_LOSS_FRACTION = 0.25     # of the logits-and-loss term (large, short-lived blocks)
