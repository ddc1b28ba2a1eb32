"""What a strategy returns: every phase's breakdown per GPU, the CPU RAM per rank, and its notes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PerGpu:
    phases: dict[str, dict[str, int]]     # phase -> TENSOR_TERMS bytes on one GPU
    host_bytes_per_rank: int | None       # CPU RAM one rank keeps for offloaded states; None without offload
    notes: tuple[str, ...] = ()
