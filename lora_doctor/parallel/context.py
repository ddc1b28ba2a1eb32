"""What every strategy reads: the single-GPU phases and persistent terms, and the model's unit sizes.

A strategy (DDP, FSDP, ZeRO) never recomputes activations or loss tensors: every GPU runs the same
micro-batch, so those stay as the single-GPU engine computed them. It only replaces the terms it
splits (weights, quantization state, adapters, gradients, optimizer states and the optimizer's
scratch) and adds ``parallel_buffers`` (buckets, gathered units, reduce-scatter buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import ArchSpec
from ..memory.persistent import Persistent
from ..memory.tables import DTYPE_BYTES
from ..plan_types import ParallelSettings, PlanSettings


@dataclass(frozen=True)
class Context:
    arch: ArchSpec
    s: PlanSettings
    pers: Persistent
    phases: dict[str, dict[str, int]]   # the single-GPU engine's breakdown of every phase
    device: str

    @property
    def par(self) -> ParallelSettings:
        return self.s.parallel

    @property
    def n(self) -> int:
        return self.s.parallel.num_gpus

    @property
    def full(self) -> bool:
        return self.s.mode == "full"

    @property
    def load_bytes(self) -> int:
        return DTYPE_BYTES[self.s.dtype]

    @property
    def compute_bytes(self) -> int:
        """Bytes of the weights the forward multiplies with (autocast dtype, else the load dtype)."""
        return DTYPE_BYTES[self.s.mixed_precision] if self.s.mixed_precision else self.load_bytes

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (one FSDP unit, one ZeRO-3 gather): linears, experts, norms."""
        decoder = sum(f.params for f in self.arch.linear_families if f.scope not in ("head",))
        layers = max(self.arch.num_layers, 1)
        norms = max(self.arch.other_params - self.arch.hidden_size, 0)   # all but the final norm
        return (decoder + self.arch.expert_params + norms) // layers

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers (embeddings, untied head, final norm): the root unit."""
        return max(self.arch.total_params - self.layer_params * max(self.arch.num_layers, 1), 0)

    def option(self, name: str, default: object = None) -> object:
        return self.par.option(name, default)


GRADIENT_PHASES = ("backward_end", "optimizer_step")


def replace_terms(bd: dict[str, int], phase: str, ctx: Context, *, weights: int, quantization_state: int,
                  adapters: int, gradients: int, optimizer_states: int, scratch: int, buffers: int) -> dict[str, int]:
    """One phase's breakdown with the split terms replaced (gradients only where the phase holds them)."""
    out = dict(bd)
    out.update(weights=int(weights), quantization_state=int(quantization_state), adapters=int(adapters),
               optimizer_states=int(optimizer_states), parallel_buffers=int(buffers))
    if bd.get("gradients", 0) or phase in GRADIENT_PHASES:
        out["gradients"] = int(gradients)
    if phase == "optimizer_step":
        out["temporaries"] = int(bd.get("temporaries", 0) - ctx.pers.optimizer_scratch + scratch)
    return out
