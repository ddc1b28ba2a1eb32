"""Per-rank peaks of real multi-process training on CPU (torchrun, gloo), for the planner's parallel layer.

Two runs, each rank measuring its own live tensors with a :class:`StorageTracker`:

* ``ddp``: the real ``transformers.Trainer`` (it wraps the model in ``DistributedDataParallel`` under
  torchrun), exactly as :func:`~lora_doctor.measure.training.measure_training` runs one process;
* ``fsdp``: FSDP2 ``fully_shard`` on every decoder layer and on the root (the layout the Trainer's
  accelerate FSDP2 path builds), with a plain AdamW loop (the Trainer's FSDP path needs a GPU).

Run a case with :func:`run_case` (starts ``torchrun --nproc_per_node N`` on this module and reads
one JSON per rank), or directly::

    torchrun --standalone --nproc_per_node 2 -m lora_doctor.measure.distributed CASE OUTDIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..plan_types import ParallelSettings, PlanSettings
from .cases import case_config

_LLAMA = "llama"


@dataclass(frozen=True)
class DistCase:
    name: str
    model: str
    settings: PlanSettings        # settings.parallel.strategy: "ddp" or "fsdp" (num_gpus set per run)


def _s(**kw: Any) -> PlanSettings:
    return PlanSettings(seq_len=256, batch_size=2, **kw)


DIST_CASES: tuple[DistCase, ...] = (
    DistCase("ddp full fp32 adamw", _LLAMA, _s(mode="full", dtype="fp32", parallel=ParallelSettings(2, "ddp"))),
    DistCase("ddp lora all-linear bf16", _LLAMA, _s(mode="lora", target_modules="all-linear",
                                                     parallel=ParallelSettings(2, "ddp"))),
    DistCase("fsdp full fp32 adamw", _LLAMA, _s(mode="full", dtype="fp32", parallel=ParallelSettings(2, "fsdp"))),
    DistCase("fsdp lora all-linear fp32", _LLAMA, _s(mode="lora", dtype="fp32", target_modules="all-linear",
                                                      parallel=ParallelSettings(2, "fsdp"))),
)
CASES_BY_NAME = {c.name: c for c in DIST_CASES}


def run_case(case: DistCase, nproc: int, *, timeout: float = 300, runner: str | None = None) -> list[dict[str, Any]]:
    """Run ``case`` on ``nproc`` CPU ranks under torchrun; one result dict per rank (peak_bytes, ...)."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lora_doctor.measure.distributed", case.name, out] + ([runner] if runner else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(nproc)]


def _ddp(case: DistCase) -> dict[str, Any]:
    from .training import measure_training

    run = measure_training(case_config(case.model), case.settings)
    return {"peak_bytes": run.peak_bytes, "peak_phase": run.peak_phase, "phase_peaks": run.phase_peaks}


def _fsdp(case: DistCase, steps: int = 2, *, torch_tracker: bool = False) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from .tracker import StorageTracker
    from .training import build_model

    s = case.settings
    config = case_config(case.model)
    with tempfile.TemporaryDirectory() as workdir:
        model = build_model(config, s, workdir)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(dist.get_rank())
    if torch_tracker:
        return _fsdp_mem_tracker(model, optimizer, config, s, g, steps)
    tracker = StorageTracker(keep_top=int(os.environ.get("LORA_DOCTOR_KEEP_TOP", "0")))
    tracker.register(model.parameters(), "weights")
    tracker.register(model.buffers(), "weights")
    with tracker:
        for _ in range(steps):
            ids = torch.randint(0, config.vocab_size, (s.batch_size, s.seq_len), generator=g)
            tracker.phase = "forward"
            loss = model(input_ids=ids, labels=ids).loss
            tracker.phase = "backward"
            loss.backward()
            tracker.phase = "optimizer_step"
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.phase = "between_steps"
    top = [(r.nbytes, r.op, r.phase, r.category, list(r.shape)) for r in tracker.peak_top]
    return {"peak_bytes": tracker.peak_bytes, "peak_phase": tracker.peak_phase, "phase_peaks": tracker.phase_peaks,
            "peak_by_category": tracker.peak_by_category, "top": top}


def _fsdp_mem_tracker(model: Any, optimizer: Any, config: Any, s: PlanSettings, g: Any, steps: int) -> dict[str, Any]:
    """The same FSDP2 loop under torch's own ``FSDPMemTracker`` (an anchor for our tracker)."""
    import torch
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    tracker = FSDPMemTracker(model, optimizer)
    with tracker:
        for step in range(steps):
            ids = torch.randint(0, config.vocab_size, (s.batch_size, s.seq_len), generator=g)
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step == 0:
                tracker.reset_mod_stats()   # it refuses a second iteration otherwise (torch's own example)
    peak = tracker.get_tracker_snapshot("peak")
    by_device = {str(dev): {str(k): int(v) for k, v in stats.items()} for dev, stats in peak.items()}
    total = max(stats.get("Total", 0) for stats in by_device.values())
    return {"peak_bytes": total, "peak_phase": "", "phase_peaks": {}, "torch_snapshot": by_device}


_RUNNERS = {"ddp": _ddp, "fsdp": _fsdp,
            "fsdp-torch-tracker": lambda case: _fsdp(case, torch_tracker=True)}


def main(argv: list[str]) -> int:
    import torch.distributed as dist

    name, out = argv[:2]
    runner = argv[2] if len(argv) > 2 else None   # "fsdp-torch-tracker": measure with torch's FSDPMemTracker
    case = CASES_BY_NAME[name]
    world = int(os.environ["WORLD_SIZE"])
    case = replace(case, settings=replace(case.settings, parallel=replace(case.settings.parallel, num_gpus=world)))
    if not dist.is_initialized() and case.settings.parallel.strategy != "ddp":
        dist.init_process_group("gloo")
    result = _RUNNERS[runner or case.settings.parallel.strategy](case)
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))
    Path(out, f"rank{rank}.json").write_text(json.dumps(dict(result, rank=rank, world_size=world)))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
