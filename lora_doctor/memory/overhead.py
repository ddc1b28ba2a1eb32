"""Device-level memory outside PyTorch's tensor accounting (shared by every engine).

* CUDA context: the driver's and runtime's own allocations plus cuBLAS/cuDNN handles; invisible to
  ``torch.cuda.memory_allocated`` but counted by NVML / nvidia-smi. 300-500 MiB with lazy module
  loading on current CUDA; we assume the upper end.
* Allocator reserve: PyTorch's caching allocator holds whole segments (2 MiB small-pool blocks,
  larger segments rounded to 2 MiB), and fragmentation keeps freed blocks that a new request cannot
  reuse; ``memory_reserved`` runs a few percent to ~15% above ``max_memory_allocated``.
"""

from __future__ import annotations

from .tables import ALLOCATOR_RESERVE_FRACTION, ALLOCATOR_RESERVE_MIN_BYTES, CUDA_CONTEXT_BYTES


def device_terms(tensor_peak: int) -> dict[str, int]:
    """``cuda_context`` and ``allocator_reserve`` for a given tensor peak, in bytes."""
    reserve = max(int(tensor_peak * ALLOCATOR_RESERVE_FRACTION), ALLOCATOR_RESERVE_MIN_BYTES)
    return {"cuda_context": CUDA_CONTEXT_BYTES, "allocator_reserve": reserve}
