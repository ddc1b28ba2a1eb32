"""Device-level memory outside PyTorch's tensor accounting (shared by every engine).

* CUDA context: the driver's and runtime's own allocations plus cuBLAS/cuDNN handles and workspaces;
  invisible to ``torch.cuda.memory_allocated`` but counted by NVML / nvidia-smi. Measured as
  NVML peak - ``max_memory_reserved``: 0.73-0.75 GiB on an H200 with CUDA 13 (300-500 MiB is
  typical on consumer GPUs with CUDA 12 lazy loading, so this errs on the safe side there).
* Allocator reserve: PyTorch's caching allocator holds whole segments (2 MiB small-pool blocks,
  larger segments rounded to 2 MiB); fragmentation keeps freed blocks that a new request cannot
  reuse. Measured ``max_memory_reserved - max_memory_allocated`` was 0.5-5.2 GiB, growing with the
  loss tensors (GiB-sized logits freed and re-requested in other sizes every step). Model:
  512 MiB + 1% of the tensor peak + 25% of the logits-and-loss term; on the 9 H200 cases it puts
  the device peak within -7%..+8% of NVML (fitted on those cases, see benchmarks/results).
"""

from __future__ import annotations

from .tables import (
    ALLOCATOR_RESERVE_BASE_BYTES, ALLOCATOR_RESERVE_FRACTION, ALLOCATOR_RESERVE_LOSS_FRACTION, CUDA_CONTEXT_BYTES,
)


def device_terms(tensor_peak: int, loss_bytes: int = 0, vllm_reserve: int = 0) -> dict[str, int]:
    """``cuda_context`` and ``allocator_reserve`` for a tensor peak and its logits-and-loss term, in bytes,
    and ``vllm_reserve``: what vLLM colocated with a GRPO run reserves (0 otherwise; lora_doctor.memory.workload)."""
    reserve = (ALLOCATOR_RESERVE_BASE_BYTES + tensor_peak * ALLOCATOR_RESERVE_FRACTION
               + loss_bytes * ALLOCATOR_RESERVE_LOSS_FRACTION)
    return {"cuda_context": CUDA_CONTEXT_BYTES, "allocator_reserve": int(reserve), "vllm_reserve": int(vllm_reserve)}
