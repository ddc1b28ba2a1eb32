"""Rich renderables for plans. The core never imports this module; the CLI and callback do."""

from __future__ import annotations

from typing import Sequence

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .gpus import COMMON_GPUS, gpu_by_name
from .plan_types import DEVICE_TERMS, TENSOR_TERMS, MemoryPlan
from .units import format_bytes

MODE_TITLES = {"full": "Full", "lora": "LoRA", "qlora": "QLoRA"}


def _gib(n: int | None) -> str:
    return "-" if n is None else format_bytes(n)


def plan_table(plans: Sequence[MemoryPlan], *, ascii_only: bool = False) -> Table:
    """One column per plan (Full / LoRA / QLoRA), one row per memory term, then totals and verdicts."""
    first = plans[0]
    s = first.settings
    trainer = s.workload.trainer
    title = (f"{first.model}  {trainer.upper() + ' trainer, ' if trainer != 'hf' else ''}batch {s.batch_size} x seq {s.seq_len}, {s.dtype} weights"
             f"{', ' + s.mixed_precision + ' autocast' if s.mixed_precision else ''}, {s.optim}"
             f"{', grad. checkpointing' if s.gradient_checkpointing else ''}, {s.attn_implementation}"
             f"{_parallel_title(s)}")
    table = Table(title=title, box=box.ASCII if ascii_only else box.SIMPLE_HEAVY, title_justify="left")
    table.add_column("term")
    for p in plans:
        table.add_column(MODE_TITLES[p.mode], justify="right")
    table.add_row("parameters (trainable)", *[f"{p.trainable_params / 1e6:,.1f}M" for p in plans])
    for term in TENSOR_TERMS:
        if any(p.breakdown.get(term, 0) for p in plans):
            table.add_row(term.replace("_", " "), *[_gib(p.breakdown.get(term, 0)) for p in plans])
    table.add_row(Text("tensor peak (max_memory_allocated)", style="bold"),
                  *[Text(_gib(p.peak_bytes), style="bold") for p in plans], end_section=True)
    for term in DEVICE_TERMS:
        if term == "vllm_reserve" and not any(p.breakdown.get(term, 0) for p in plans):
            continue
        table.add_row(term.replace("_", " "), *[_gib(p.breakdown.get(term, 0)) for p in plans])
    table.add_row(Text("device peak (nvidia-smi)", style="bold"),
                  *[Text(_gib(p.device_peak_bytes), style="bold") for p in plans], end_section=True)
    table.add_row("peak phase", *[p.peak_phase.replace("_", " ") for p in plans])
    if any(p.host_peak_bytes for p in plans):
        table.add_row("CPU RAM per node (offload)", *[_gib(p.host_peak_bytes or 0) for p in plans])
    if trainer != "hf":   # a TRL step has more phases (generation, reference forward): show each
        for phase in first.details.get("phases", {}):
            table.add_row(f"  {phase.replace('_', ' ')} (tensors)",
                          *[_gib(p.details.get("phases", {}).get(phase)) for p in plans])
    if first.gpu is not None:
        table.add_row(f"fits on {first.gpu.name} ({_gib(first.gpu.memory_bytes)})",
                      *[Text("yes", style="green") if p.fits else Text("NO", style="bold red") for p in plans])
        table.add_row("headroom", *[_gib(p.headroom_bytes) for p in plans])
        table.add_row(f"max micro-batch at seq {s.seq_len}", *[str(p.max_batch_size) for p in plans])
        table.add_row(f"max seq len at batch {s.batch_size}", *[str(p.max_seq_len) for p in plans])
    return table


def _parallel_title(s) -> str:  # noqa: ANN001
    par = s.parallel
    if par.strategy is None:
        return ""
    return f"; per GPU of {par.num_gpus}, {par.strategy}" + (f" + offload {par.offload}" if par.offload else "")


def gpu_ladder(plans: Sequence[MemoryPlan], *, ascii_only: bool = False) -> Table:
    """Which modes fit on common GPUs (shown when no --gpu is given)."""
    table = Table(title="Fits on common GPUs (device peak vs. GPU memory)",
                  box=box.ASCII if ascii_only else box.SIMPLE_HEAVY, title_justify="left")
    table.add_column("GPU")
    table.add_column("memory", justify="right")
    for p in plans:
        table.add_column(MODE_TITLES[p.mode], justify="center")
    for name in COMMON_GPUS:
        gpu = gpu_by_name(name)
        assert gpu is not None
        cells = [Text("fits", style="green") if p.device_peak_bytes <= gpu.memory_bytes else Text("-", style="dim")
                 for p in plans]
        table.add_row(gpu.name, _gib(gpu.memory_bytes), *cells)
    return table


def plan_notes(plans: Sequence[MemoryPlan]) -> Group:
    lines: list[Text] = []
    for p in plans:
        prefix = f"{MODE_TITLES[p.mode]}: "
        if p.recommendation:
            lines.append(Text(prefix + p.recommendation))
        for note in p.notes:
            lines.append(Text(f"  note: {note}", style="dim"))
    targets = next((p.targets for p in plans if p.targets), None)
    if targets:
        scale = next(p.lora_scale for p in plans if p.lora_scale is not None)
        lines.append(Text(f"LoRA targets: {', '.join(targets)}; r={plans[0].settings.r}, "
                          f"scale alpha/r = {scale:g}", style="dim"))
    return Group(*lines)


def top_tensors_table(plan: MemoryPlan, *, ascii_only: bool = False) -> Table | None:
    """The largest tensors alive at the traced peak (``engine="trace"`` plans only)."""
    top = plan.details.get("top_tensors") or []
    if not top:
        return None
    table = Table(title=f"{MODE_TITLES[plan.mode]}: largest tensors alive at the traced peak ({plan.peak_phase})",
                  box=box.ASCII if ascii_only else box.SIMPLE_HEAVY, title_justify="left")
    for column in ("size", "shape", "dtype", "made by", "term"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for t in top:
        made_by = t.get("op", "")
        if t.get("module"):
            made_by = f"{made_by} in {t['module']}"
        table.add_row(_gib(t["nbytes"]), str(list(t["shape"])), t["dtype"], made_by, t["term"].replace("_", " "))
    return table
