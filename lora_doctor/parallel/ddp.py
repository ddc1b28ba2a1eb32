"""DDP: a full replica per GPU, plus the gradient buckets the all-reduce works on.

``torch.nn.parallel.DistributedDataParallel`` builds its ``Reducer`` at construction: every
parameter that requires a gradient gets a slot in a flat bucket (``bucket_cap_mb``, default 25 MiB,
only decides how the slots are grouped; the buckets together always cover every trainable
parameter). Autograd hooks copy each gradient into its bucket, the bucket is all-reduced, and the
result is copied back into ``param.grad``. So the buckets are a second full copy of the
gradients, alive for the whole run, unless ``gradient_as_bucket_view=True`` makes ``param.grad`` a
view into the bucket. accelerate's ``DistributedDataParallelKwargs`` (what the Trainer uses)
defaults to ``gradient_as_bucket_view=False``; the Trainer only forwards ``ddp_bucket_cap_mb``.
"""

from __future__ import annotations

from ..units import format_bytes
from .context import Context, replace_terms
from .result import PerGpu


def ddp(ctx: Context) -> PerGpu:
    p = ctx.pers
    view = bool(ctx.option("gradient_as_bucket_view", False))
    phases = {}
    for phase, bd in ctx.phases.items():
        # with views the buckets *are* the gradients: they count as buffers only before backward fills them
        buckets = (p.gradients - bd.get("gradients", 0)) if view else p.gradients
        phases[phase] = replace_terms(bd, phase, ctx, weights=p.weights, quantization_state=p.quantization_state,
                                      adapters=p.adapters, gradients=bd.get("gradients", 0),
                                      optimizer_states=p.optimizer_states, scratch=p.optimizer_scratch,
                                      buffers=max(buckets, 0))
    note = (f"DDP: every GPU holds a full replica; the gradient buckets add {format_bytes(p.gradients)} "
            "(a second copy of the gradients)" + ("" if view else
            "; DistributedDataParallelKwargs(gradient_as_bucket_view=True) makes them views and saves that"))
    return PerGpu(phases, None, (note,))
