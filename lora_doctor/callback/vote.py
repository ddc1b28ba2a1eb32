"""The one collective of the callback: every rank's verdict and latest values, gathered by every rank.

At each check point every rank sends one fixed-size row (:class:`RankReport`, ``ROW`` floats) and
receives all of them (``all_gather`` over the default process group; on NCCL the tensor lives on
the rank's device). What a rank sends is decided locally and may be "absent" (its own checks
failed); *whether* it sends is decided only from the Trainer's arguments, state and step, so every
rank joins. Everything after the gather (:func:`settle`) is pure: the same rows give the same
outcome on every rank.

Row layout (float64): present, stop, code index (-1: none), step, value, local value known, local
value, gradient sum of squares of the latest step (-1: unknown), its kind (:data:`GRAD_KINDS`), loss
known, loss of the latest step (NaN/inf travel as themselves).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..findings import Finding
from .health import GRAD_NORM, LOSS

# finding codes a rank can report, most urgent first (the index is what travels)
VOTE_CODES = ("grad-norm-non-finite", "loss-non-finite", "grad-norm-spike", "loss-spike")
SEVERITY = {"grad-norm-non-finite": "error", "loss-non-finite": "error",
            "grad-norm-spike": "warning", "loss-spike": "warning"}
FIXES = {GRAD_NORM.nonfinite_code: GRAD_NORM.nonfinite_fix, LOSS.nonfinite_code: LOSS.nonfinite_fix,
         GRAD_NORM.spike_code: GRAD_NORM.spike_fix, LOSS.spike_code: LOSS.spike_fix}
# how the latest gradient sum of squares combines across ranks
GRAD_KINDS = ("none", "global", "shard", "local")   # global: already reduced (DDP); shard: sum over ranks
ROW = 11


@dataclass(frozen=True)
class RankReport:
    """What one rank saw at one check point (None: unknown)."""

    rank: int = 0
    present: bool = False           # False: this rank's checks failed; its row carries nothing
    stop: bool = False              # its finding asks to stop (on_explosion / on_nonfinite = "stop")
    code: str | None = None         # its most urgent new finding at this check point
    step: int | None = None
    value: float | None = None      # the value judged (global where the rank could see it)
    local_value: float | None = None   # this rank's own, before any reduction (NaN/inf: it started here)
    grad_sq: float | None = None    # squared gradient norm of the latest step
    grad_kind: str = "none"
    loss: float | None = None       # loss of the latest step as the Trainer counts it on this rank

    def encode(self) -> list[float]:
        nan = math.nan
        return [float(self.present), float(self.stop),
                float(VOTE_CODES.index(self.code)) if self.code in VOTE_CODES else -1.0,
                float(self.step) if self.step is not None else -1.0,
                nan if self.value is None else float(self.value),
                float(self.local_value is not None),
                0.0 if self.local_value is None else float(self.local_value),
                -1.0 if self.grad_sq is None else float(self.grad_sq),
                float(GRAD_KINDS.index(self.grad_kind)) if self.grad_kind in GRAD_KINDS else 0.0,
                float(self.loss is not None), 0.0 if self.loss is None else float(self.loss)]

    @classmethod
    def decode(cls, rank: int, row: list[float]) -> "RankReport":
        if len(row) != ROW or row[0] != 1.0:
            return cls(rank)
        code = VOTE_CODES[int(row[2])] if 0 <= row[2] < len(VOTE_CODES) else None
        return cls(rank, True, row[1] == 1.0, code, int(row[3]) if row[3] >= 0 else None,
                   row[4] if code else None, row[6] if row[5] == 1.0 else None,
                   row[7] if row[7] >= 0 or math.isnan(row[7]) else None,
                   GRAD_KINDS[int(row[8])] if 0 <= row[8] < len(GRAD_KINDS) else "none",
                   row[10] if row[9] == 1.0 else None)


ABSENT = [0.0] * ROW


def _number(value: Any) -> float | None:
    """A finding's value as a float ("nan" and "inf" included); None when absent or not a number."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def rank_report(rank: int, new: list[Finding], stops: Callable[[Finding], bool],
                **latest: Any) -> tuple[RankReport, Finding | None]:
    """This rank's row (its most urgent new finding, a stopping one first, and its latest values), and that finding."""
    votable = sorted((f for f in new if f.code in VOTE_CODES), key=lambda f: (not stops(f), VOTE_CODES.index(f.code)))
    top = votable[0] if votable else None
    if top is None:
        return RankReport(rank, True, **latest), None
    return RankReport(rank, True, stops(top), top.code, top.data.get("step"), _number(top.data.get("value")),
                      _number(top.data.get("local_value")), **latest), top


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:
        pass
    return 0, 1


def _device(args: Any) -> Any:
    import torch.distributed as dist

    if dist.get_backend() != "nccl":
        return "cpu"
    device = getattr(args, "device", None)   # cuda:LOCAL_RANK under torchrun
    if getattr(device, "type", None) == "cuda":
        return device
    import torch

    return torch.device("cuda", torch.cuda.current_device())


def exchange(row: list[float], args: Any) -> list[list[float]]:
    """Every rank's row, on every rank (one ``all_gather``). Without a process group: ``[row]``.

    Never raises: if the collective itself fails, only this rank's row comes back (the other ranks
    then see this one as whatever the failed collective left, and decide the same way on what they have).
    """
    rank, size = world()
    if size == 1:
        return [row]
    try:
        import torch
        import torch.distributed as dist

        device = _device(args)
        mine = torch.tensor(row if len(row) == ROW else ABSENT, dtype=torch.float64, device=device)
        rows = [torch.empty(ROW, dtype=torch.float64, device=device) for _ in range(size)]
        dist.all_gather(rows, mine)
        return torch.stack(rows).cpu().tolist()
    except Exception:
        return [ABSENT] * rank + [row] + [ABSENT] * (size - rank - 1)


@dataclass(frozen=True)
class Outcome:
    """What every rank concludes from the same rows."""

    reports: list[RankReport]
    trigger: RankReport | None      # the finding that stops every rank, with the rank that saw it
    alarms: list[RankReport]        # every rank's finding (trigger included), in rank order
    grad_norm: float | None         # global gradient norm of the latest step
    loss: float | None              # mean over ranks of the latest step's loss (the Trainer's logged loss)

    def nonfinite_at(self, step: int) -> bool:
        """A stopping non-finite finding on some rank at ``step``: every rank must drop this update."""
        t = self.trigger
        return t is not None and t.code in ("grad-norm-non-finite", "loss-non-finite") and t.step == step


def _urgency(r: RankReport) -> tuple:
    """Most urgent code first; then the rank whose own value was non-finite (it started there), then the
    largest own value (the rank that pushed a spike), then the lowest rank."""
    local = r.local_value
    started_here = local is not None and not math.isfinite(local)
    size = local if local is not None and math.isfinite(local) else 0.0
    return (VOTE_CODES.index(r.code), not started_here, -size, r.rank)


def _global_grad(present: list[RankReport]) -> float | None:
    kinds = {r.grad_kind for r in present if r.grad_sq is not None}
    if kinds == {"global"}:
        return math.sqrt(present[0].grad_sq) if present[0].grad_sq is not None else None
    if kinds == {"shard"} and all(r.grad_sq is not None for r in present):
        total = sum(r.grad_sq for r in present)
        return math.sqrt(total) if total >= 0 or math.isnan(total) else None
    return None


def settle(rows: list[list[float]]) -> Outcome:
    """The agreed outcome of one check point (pure)."""
    reports = [RankReport.decode(i, row) for i, row in enumerate(rows)]
    present = [r for r in reports if r.present]
    alarms = [r for r in present if r.code is not None]
    stopping = sorted((r for r in alarms if r.stop), key=_urgency)
    losses = [r.loss for r in present if r.loss is not None]
    complete = len(present) == len(reports)
    return Outcome(reports, stopping[0] if stopping else None, alarms,
                   _global_grad(present) if complete else None,
                   sum(losses) / len(losses) if losses and len(losses) == len(reports) else None)


def _show(value: float | None) -> str:
    return "?" if value is None else (f"{value}" if not math.isfinite(value) else f"{value:.4g}")


def describe(r: RankReport) -> str:
    """``grad-norm-non-finite on rank 1 at step 7 (value nan)``."""
    own = ""
    if r.local_value is not None and r.value is not None and r.local_value != r.value and not (
            math.isnan(r.local_value) and math.isnan(r.value)):
        own = f", {_show(r.local_value)} on that rank alone"
    return f"{r.code} on rank {r.rank} at step {r.step} (value {_show(r.value)}{own})"


def peer_finding(r: RankReport) -> Finding:
    """Another rank's finding, as this rank reports it (same code, so the same action applies)."""
    then = "every rank stops" if r.stop else "training goes on"
    return Finding(r.code, SEVERITY[r.code], f"{describe(r)}: seen by rank {r.rank}; {then}", FIXES[r.code],
                   {"rank": r.rank, "step": r.step, "value": r.value, "local_value": r.local_value})


@dataclass(frozen=True)
class Verdict:
    """What one rank does after a vote."""

    drop_update: bool = False       # a non-finite stop at this very step: drop the gradients before optimizer.step()
    stop: Finding | None = None     # the trigger, when this vote decided to stop
    findings: list[Finding] = field(default_factory=list)   # other ranks' findings this rank did not have


def conclude(outcome: Outcome, step: int, rank: int, world_size: int, mine: Finding | None,
             known: set[tuple], stopping: bool) -> Verdict:
    """This rank's part of the agreed outcome (pure). ``mine``: the finding this rank sent; ``known``: the
    (code, step) of findings it holds; ``stopping``: a stop was already decided."""
    trigger, stop, added = outcome.trigger, None, []
    if trigger is not None and not stopping:
        own = trigger.rank == rank and mine is not None
        stop = mine if own else peer_finding(trigger)
        if own and world_size > 1:
            stop = dataclasses.replace(stop, data={**stop.data, "rank": rank})
        added += [] if own else [stop]
    added += [peer_finding(r) for r in outcome.alarms
              if r.rank != rank and r is not trigger and (r.code, r.step) not in known]
    return Verdict(outcome.nonfinite_at(step), stop, added)
